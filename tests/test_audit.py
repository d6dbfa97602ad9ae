"""The identity audit's attackers: they find a planted signal, sit at chance on noise, and never
tune on the test fold."""

import pytest
import torch

from anonemo.audit import audit_features
from anonemo.audit.attackers import CosineKnnAttacker, Split, default_attackers
from anonemo.data.datamodule import TensorBatches
from anonemo.evaluation import accuracy

CLASSES = 5


def planted(n, seed, signal):
    """Features of 24 noise dimensions; the label shifts 4 of them by ``signal``."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (n,), generator=generator)
    features = torch.randn(n, 24, generator=generator)
    features[:, :4] += signal * torch.nn.functional.one_hot(labels, CLASSES)[:, :4].float() * 3
    features[:, 4] += signal * 3 * (labels == 4).float()
    return Split(features, labels)


@pytest.mark.parametrize("attacker", default_attackers((32, 16)), ids=lambda a: a.name)
def test_each_attacker_learns_a_planted_signal(attacker):
    train, val, test = planted(600, 0, 1.0), planted(150, 1, 1.0), planted(300, 2, 1.0)
    attacker.fit(train, val, CLASSES, seed=0)
    assert accuracy(attacker.predict(test.features), test.labels) > 85


@pytest.mark.parametrize("attacker", default_attackers((32, 16)), ids=lambda a: a.name)
def test_each_attacker_sits_at_chance_on_noise(attacker):
    train, val, test = planted(600, 0, 0.0), planted(150, 1, 0.0), planted(1000, 2, 0.0)
    attacker.fit(train, val, CLASSES, seed=0)
    assert abs(accuracy(attacker.predict(test.features), test.labels) - 100 / CLASSES) < 6


def sides(scramble_test_labels):
    train, val, test = planted(300, 0, 1.0), planted(100, 1, 1.0), planted(200, 2, 1.0)
    if scramble_test_labels:
        test = Split(test.features, test.labels[torch.randperm(len(test.labels), generator=torch.Generator().manual_seed(9))])
    return {name: TensorBatches(features=split.features, identity=split.labels, emotion=split.labels % 2)
            for name, split in (("train", train), ("val", val), ("test", test))}


def test_audit_never_tunes_on_the_test_fold():
    """Scrambling the test labels changes the test scores and nothing else: every choice (kNN's
    k, each network's stopping epoch, hence its validation score) comes from train and val."""
    real, scrambled = sides(False), sides(True)
    knn_real, knn_scrambled = CosineKnnAttacker(), CosineKnnAttacker()
    a = audit_features(real, {"identity": CLASSES, "emotion": 2}, seed=0,
                       attackers=[*default_attackers((32, 16))[:1], knn_real])
    b = audit_features(scrambled, {"identity": CLASSES, "emotion": 2}, seed=0,
                       attackers=[*default_attackers((32, 16))[:1], knn_scrambled])
    assert knn_real.k == knn_scrambled.k
    assert {k: v for k, v in a.items() if k.endswith("/val")} == {k: v for k, v in b.items() if k.endswith("/val")}
    assert a["audit/identity/max"] > 85 > b["audit/identity/max"]
    assert a["audit/identity/chance"] == 100 / CLASSES and a["audit/emotion/chance"] == 50
    assert a["audit/identity/max"] == max(a["audit/identity/logistic"], a["audit/identity/knn"])
