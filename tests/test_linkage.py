"""The linkage audit: same-person decisions between original images, for any person."""

import math

import pytest
import torch

from anonemo.audit.linkage import linkage_audit
from anonemo.data.datamodule import TensorBatches
from anonemo.metrics import LINKAGE

DIMENSIONS = 16


def side(subjects, originals_per_subject, identity_signal, seed, copies=0):
    """Originals of ``subjects`` whose features are a per-subject direction times ``identity_signal``
    plus unit noise, each followed by ``copies`` exact duplicates (what augmentation would make,
    at its most telling)."""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(max(subjects) + 1, DIMENSIONS, generator=torch.Generator().manual_seed(99))
    identity = torch.tensor([s for s in subjects for _ in range(originals_per_subject)])
    features = identity_signal * directions[identity] + torch.randn(len(identity), DIMENSIONS, generator=generator)
    source = torch.arange(len(identity))
    repeat = torch.arange(len(identity)).repeat_interleave(1 + copies)
    original = torch.zeros(len(repeat), dtype=torch.bool)
    original[torch.arange(len(identity)) * (1 + copies)] = True
    return TensorBatches(features=features[repeat], identity=identity[repeat], emotion=identity[repeat] % 2,
                         source=source[repeat], group=source[repeat], original=original)


def sides(train_subjects, test_subjects, signal, copies=0):
    return {"train": side(train_subjects, 8, signal, 0), "val": side(train_subjects, 3, signal, 1),
            "test": side(test_subjects, 10, signal, 2, copies)}


def test_features_without_identity_sit_at_chance():
    # 10 people x 10 originals: 4,950 pairs, 450 same-person. Under no identity the AUC's standard
    # error is about sqrt((1/450 + 1/4500) / 12) ~ 0.014, so 0.07 is five of them.
    metrics = linkage_audit(sides(range(10), range(10), signal=0.0), seed=0)
    assert metrics[f"{LINKAGE}/pairs"] == 4950
    assert abs(metrics[f"{LINKAGE}/cosine/auc"] - 0.5) < 0.07 and abs(metrics[f"{LINKAGE}/lda/auc"] - 0.5) < 0.07
    assert abs(metrics[f"{LINKAGE}/eer"] - 0.5) < 0.1
    assert metrics[f"{LINKAGE}/rank1/chance"] == 10.0 and metrics[f"{LINKAGE}/rank1"] < 30


def test_features_that_encode_identity_link_people_even_unseen_ones():
    seen = linkage_audit(sides(range(10), range(10), signal=3.0), seed=0)
    unseen = linkage_audit(sides(range(10), range(10, 20), signal=3.0), seed=0)  # test people not trained on
    for metrics in (seen, unseen):
        assert metrics[f"{LINKAGE}/auc"] > 0.95 and metrics[f"{LINKAGE}/eer"] < 0.1 and metrics[f"{LINKAGE}/rank1"] > 80
    assert not math.isnan(seen[f"{LINKAGE}/auc/val"])


def test_copies_of_one_original_are_never_paired():
    """Exact copies would be perfect same-person pairs; with identity-free features the AUC stays at
    chance and the pairs are those of the originals alone."""
    plain = linkage_audit(sides(range(10), range(10), signal=0.0), seed=0)
    copied = linkage_audit(sides(range(10), range(10), signal=0.0, copies=4), seed=0)
    assert copied[f"{LINKAGE}/pairs"] == plain[f"{LINKAGE}/pairs"] == 4950
    assert copied[f"{LINKAGE}/auc"] == pytest.approx(plain[f"{LINKAGE}/auc"])


def test_a_fold_without_two_originals_of_one_person_logs_no_linkage_number():
    """A Yale test fold under the paper's protocol: about 6 originals, each of another person."""
    metrics = linkage_audit({"train": side(range(6), 8, 3.0, 0), "val": side(range(6), 3, 3.0, 1),
                             "test": side(range(6), 1, 3.0, 2)}, seed=0)
    assert f"{LINKAGE}/auc" not in metrics and f"{LINKAGE}/rank1" not in metrics
    assert metrics[f"{LINKAGE}/pairs"] == 15 and metrics[f"{LINKAGE}/auc/val"] > 0.9
    assert all(value == value for value in metrics.values())  # no NaN is logged
