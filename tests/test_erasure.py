"""Post-hoc erasure of identity (LEACE, INLP): what it guarantees, what it is fitted on, and that
it ships with the base."""

from types import SimpleNamespace

import mlflow
import pytest
import torch

from anonemo.probes import Split, logistic_probe
from conftest import attackers_config
from anonemo.data.datamodule import TensorBatches
from anonemo.data.features import FeatureDataModule
from anonemo.data.pipeline import fold_data
from anonemo.evaluation import accuracy
from anonemo.export import MODEL_FILE
from anonemo.audit.saved_run import reaudit_run
from anonemo.job import run
from anonemo.erasure import Inlp, Leace, chance_bound, erase, leaves_nothing
from anonemo.models.networks import ConvBase, load_base


def identity_features(people: int, per_person: int, dims: int, seed: int, code_scale: float = 3.0) -> Split:
    """Features whose mean depends on the person (a linear identity code) plus unit noise."""
    generator = torch.Generator().manual_seed(seed)
    codes = code_scale * torch.randn(people, dims, generator=torch.Generator().manual_seed(99))
    labels = torch.arange(people).repeat_interleave(per_person)
    return Split(codes[labels] + torch.randn(len(labels), dims, generator=generator), labels)


def held_out_logistic_accuracy(train: Split, test: Split, num_classes: int) -> float:
    """The audit's logistic attacker fitted on ``train`` (the test side as its validation, as a
    worst case for the eraser), scored on ``test``."""
    return logistic_probe().fit(train, test, num_classes, seed=0).val_accuracy


def test_after_leace_the_audits_logistic_attacker_reads_training_side_identity_at_chance():
    # Two halves of one training side: the eraser fitted on both, the attacker fitted on one and scored on the other.
    train = identity_features(people=6, per_person=100, dims=24, seed=0)
    halves = [Split(train.features[part::2], train.labels[part::2]) for part in (0, 1)]
    assert held_out_logistic_accuracy(*halves, 6) > 95  # identity is linear in these features
    erasure = Leace().fit(train, train, 6, seed=0)
    erased = [Split(erasure(half.features), half.labels) for half in halves]
    # chance: 1 in 6 (16.7%), plus two binomial standard errors of the 300 scored faces (4.3 points)
    assert held_out_logistic_accuracy(*erased, 6) <= chance_bound(halves[1].labels)
    assert erasure.rank <= 5  # one direction per class, less one: the class means' span
    assert torch.allclose(erasure(train.features).mean(0), train.features.mean(0), atol=1e-3)  # nothing else moved on average


def test_inlp_projects_until_its_linear_probe_is_at_chance_on_validation():
    train, val = identity_features(6, 100, 64, 0, code_scale=0.5), identity_features(6, 40, 64, 1, code_scale=0.5)
    assert held_out_logistic_accuracy(train, val, 6) > 95
    inlp = Inlp(max_iterations=10)
    erasure = inlp.fit(train, val, 6, seed=0)
    assert 1 <= inlp.iterations < 10 and erasure.rank >= 6  # one probe's row space did not suffice
    assert inlp.fit_metrics()["erasure/probe/val"] <= chance_bound(val.labels)
    # a fresh probe (another seed), selected on validation, reads faces of a third side at chance
    test = identity_features(6, 40, 64, 2, code_scale=0.5)
    fresh = logistic_probe().fit(Split(erasure(train.features), train.labels), Split(erasure(val.features), val.labels),
                                    6, seed=7)
    assert accuracy(fresh.predict(erasure(test.features)), test.labels) <= chance_bound(test.labels)


def test_inlp_on_features_without_linear_identity_erases_nothing_and_the_base_stays_as_it_was():
    """The Hybrid's base on Yale: the first probe is at chance on validation, so the erasure has
    rank 0 and the erased base is the base (it once failed to build)."""
    train, val = identity_features(6, 100, 16, 0, code_scale=0.0), identity_features(6, 40, 16, 1, code_scale=0.0)
    inlp = Inlp()
    erasure = inlp.fit(train, val, 6, seed=0)
    assert (inlp.iterations, erasure.rank) == (0, 0) and torch.equal(erasure(val.features), val.features)
    base = ConvBase(32, (4, 8, 8)).eval()
    erased = base.with_erasure(erasure)
    images = torch.rand(3, 1, 32, 32)
    assert not erased.erases and erased is not base and torch.equal(erased(images), base(images))


def feature_sides(train: Split, val: Split) -> FeatureDataModule:
    """A fold's feature sides without a base to extract them (``val`` doubles as the test side)."""
    features = FeatureDataModule.__new__(FeatureDataModule)
    features.sides = {name: TensorBatches(features=side.features, identity=side.labels)
                      for name, side in (("train", train), ("val", val), ("test", val))}
    return features


def test_an_erasure_that_removes_every_direction_of_a_small_base_says_so(caplog):
    """One INLP probe of 6 identities removes up to 6 directions: on a 4-feature base (the Hybrid's
    compact base has 8, and the synthetic set 10 people) that is all of them, and the job warns."""
    fold = SimpleNamespace(num_classes=lambda task: 6, seed=0)
    features = feature_sides(identity_features(6, 100, 4, 0), identity_features(6, 40, 4, 1))
    _, erased, metrics = erase(Inlp(), ConvBase(32, (4, 8, 8), bottleneck=4), features, fold)
    assert metrics["erasure/rank"] == 4 and leaves_nothing(features.sides["test"].tensors["features"], erased.sides["test"].tensors["features"])
    assert "erasure=inlp removed every direction the base's 4 features vary in (rank 4)" in caplog.text
    caplog.clear()
    without_identity = feature_sides(identity_features(6, 100, 4, 0, code_scale=0.0),
                                     identity_features(6, 40, 4, 1, code_scale=0.0))
    _, _, metrics = erase(Inlp(), ConvBase(32, (4, 8, 8), bottleneck=4), without_identity, fold)
    assert metrics["erasure/rank"] == 0 and "removed every direction" not in caplog.text  # nothing erased, no warning


@pytest.mark.parametrize("scrambled", ["val", "test"])
def test_leace_is_fitted_on_the_training_side_only(tiny_config, scrambled):
    data = fold_data(tiny_config())
    torch.manual_seed(0)
    base = ConvBase(32).eval()
    features = FeatureDataModule(base, data)
    _, erased, _ = erase(Leace(), base, features, data)
    labels = features.sides[scrambled].tensors["identity"]
    features.sides[scrambled].tensors["identity"] = labels[torch.randperm(len(labels))].flip(0)
    _, again, _ = erase(Leace(), base, features, data)
    for side in ("train", "val", "test"):
        assert torch.equal(erased.sides[side].tensors["features"], again.sides[side].tensors["features"])


@pytest.fixture(scope="module")
def leace_run(tmp_path_factory):
    """A tiny model=emotion_leace job, exported."""
    from conftest import run_and_export

    return run_and_export(tmp_path_factory.mktemp("leace"), "model=emotion_leace", "fresh_head.max_epochs=3")


def test_an_erasure_run_logs_erased_heads_and_audits_the_erased_base(leace_run):
    _, client, run_id, metrics, _ = leace_run
    assert {"Emotion", "Erased2Emotion", "Erased2Face", "audit/identity/logistic", "audit/identity/max",
            "audit/emotion_output/identity/max", "erasure/rank"} <= metrics.keys()
    assert "Emotion2Face" not in metrics and metrics["erasure/rank"] == 3  # 4 training people: 3 directions
    assert client.get_run(run_id).data.metrics["Erased2Face"] == pytest.approx(metrics["Erased2Face"])


def test_the_saved_and_exported_base_carries_its_erasure(leace_run):
    tmp_path, client, run_id, metrics, exported = leace_run
    # the exported model reproduces the run's Erased2Emotion evaluation (its encoder erases)
    assert exported["export/agreement"] >= 95
    assert exported["export/run_path_test_acc"] == pytest.approx(metrics["Erased2Emotion"])
    scripted = torch.jit.load(str(tmp_path / "model" / MODEL_FILE))
    base = load_base(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model/conv_base.pt",
                                                         dst_path=str(tmp_path / "download")))
    assert base.architecture["erasure_rank"] == 3
    unerased = ConvBase(32)
    unerased.load_state_dict({k: v for k, v in base.state_dict().items() if not k.startswith("erasure_")})
    images = torch.rand(5, 1, 32, 32)
    with torch.no_grad():
        encoded = scripted.encode(images)
        assert torch.allclose(encoded, base(images), atol=1e-5)
        assert not torch.allclose(encoded, unerased(images), atol=1e-3)  # the erasure is in the shipped encoder


def test_any_models_final_base_can_be_erased_the_hybrid_included(tiny_config):
    metrics = run(tiny_config("model=hybrid", "erasure=leace", "model.init_epochs=2", "model.rounds=1",
                              "model.privacy.refit_epochs=1", "fresh_head.max_epochs=3", "audit.enabled=false"))
    # the Hybrid's own heads are scored on its base as trained; the fresh heads read the erased base
    assert {"Hybrid/emotion_head", "Erased2Emotion", "Erased2Face"} <= metrics.keys()
    assert "Hybrid2Emotion" not in metrics and metrics["erasure/rank"] == 3


def test_the_reaudit_reads_the_saved_erased_base(leace_run):
    _, client, run_id, metrics, _ = leace_run
    audited = reaudit_run(client, run_id, attackers_config())
    for name in ("audit/identity/logistic", "audit/identity/max", "audit/emotion/max"):
        assert audited[name] == pytest.approx(metrics[name])  # the same erased features as the job's
