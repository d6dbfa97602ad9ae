"""The identity audit's attackers: they find a planted signal, sit at chance on noise, and never
tune on the test fold."""

import warnings

import pytest
import torch
from torch import nn

from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from anonemo.audit.suite import audit_emotion_output, audit_features, gallery_audit
from anonemo.audit.saved_run import reaudit_run
from anonemo.audit.attackers import CosineKnnAttacker
from anonemo.data.datamodule import TensorBatches
from anonemo.errors import ConfigError, ModelFileError
from anonemo.evaluation import accuracy
from anonemo.models.networks import ConvBase, load_base, save_network
from anonemo.probes import Split
from anonemo.tracking.store import tracking_uri
from anonemo.job import run
from conftest import configured_attackers
from test_bad_input import cli

CLASSES = 5


def planted(n, seed, signal):
    """Features of 24 noise dimensions; the label shifts 4 of them by ``signal``."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (n,), generator=generator)
    features = torch.randn(n, 24, generator=generator)
    features[:, :4] += signal * torch.nn.functional.one_hot(labels, CLASSES)[:, :4].float() * 3
    features[:, 4] += signal * 3 * (labels == 4).float()
    return Split(features, labels)


@pytest.mark.parametrize("attacker", configured_attackers(), ids=lambda a: a.name)
def test_each_attacker_learns_a_planted_signal(attacker):
    train, val, test = planted(600, 0, 1.0), planted(150, 1, 1.0), planted(300, 2, 1.0)
    attacker.fit(train, val, CLASSES, seed=0)
    assert accuracy(attacker.predict(test.features), test.labels) > 85


@pytest.mark.parametrize("attacker", configured_attackers(), ids=lambda a: a.name)
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
                       attackers=[*configured_attackers()[:1], knn_real])
    b = audit_features(scrambled, {"identity": CLASSES, "emotion": 2}, seed=0,
                       attackers=[*configured_attackers()[:1], knn_scrambled])
    assert knn_real.k == knn_scrambled.k
    assert {k: v for k, v in a.items() if k.endswith("/val")} == {k: v for k, v in b.items() if k.endswith("/val")}
    assert a["audit/identity/max"] > 85 > b["audit/identity/max"]
    assert a["audit/identity/chance"] == 100 / CLASSES and a["audit/emotion/chance"] == 50
    assert a["audit/identity/max"] == max(a["audit/identity/logistic"], a["audit/identity/knn"])
    assert a["audit/identity/max/val"] == max(a["audit/identity/logistic/val"], a["audit/identity/knn/val"])


def test_gallery_audit_sees_identity_that_training_side_attackers_miss():
    """Features that put new images of each class where *another* class's training images lie
    (what adversarial bases were measured to do): training-side attackers read about chance at best
    (early stopping on validation keeps them near their initialisation), while the gallery attacker,
    fitted on images the base never trained on, reads the classes."""
    train, val, test = planted(600, 0, 1.0), planted(150, 1, 1.0), planted(300, 2, 1.0)
    shifted = Split(train.features, (train.labels + 1) % CLASSES)  # training images of c look like c+1
    sides = {name: TensorBatches(features=split.features, identity=split.labels, emotion=split.labels % 2)
             for name, split in (("train", shifted), ("val", val), ("test", test))}
    metrics = audit_features(sides, {"identity": CLASSES, "emotion": 2}, seed=0, attackers=configured_attackers())
    assert metrics["audit/identity/max"] < 30
    assert metrics["audit/identity/centroid"] < metrics["audit/identity/chance"] / 2
    assert metrics["audit/identity/gallery"] > 85
    assert metrics["audit/identity/gallery/chance"] == 100 / CLASSES
    assert metrics["audit/identity/gallery/coverage"] == 100


def test_gallery_audit_scores_only_the_classes_its_gallery_holds():
    val, test = planted(150, 1, 1.0), planted(300, 2, 1.0)
    partial = Split(val.features[val.labels != 4], val.labels[val.labels != 4])
    metrics = gallery_audit(partial, test, "identity")
    assert metrics["audit/identity/gallery/chance"] == 25
    assert metrics["audit/identity/gallery/coverage"] == pytest.approx(100 * (test.labels != 4).float().mean().item())
    assert metrics["audit/identity/gallery"] > 85
    noise = gallery_audit(planted(150, 1, 0.0), planted(1000, 2, 0.0), "identity")
    assert abs(noise["audit/identity/gallery"] - 100 / CLASSES) < 6


def linear_head(reads):
    """An emotion head whose CLASSES outputs copy the feature dimensions ``reads``."""
    head = nn.Linear(24, CLASSES)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.weight[torch.arange(CLASSES), torch.as_tensor(reads)] = 3.0
    return head


def test_emotion_output_audit_reads_identity_only_where_the_emotion_head_passes_it_on():
    """Identity lies in feature dimensions 0-4. A head whose output copies them gives identity
    away through its output; a head that reads other dimensions gives nothing, though the
    features it reads from still carry identity."""
    data, attackers = sides(False), [configured_attackers()[0], CosineKnnAttacker()]
    passes_on = audit_emotion_output(data, linear_head(range(5)), CLASSES, seed=0, attackers=attackers)
    ignores = audit_emotion_output(data, linear_head(range(10, 15)), CLASSES, seed=0, attackers=attackers)
    assert passes_on["audit/emotion_output/identity/max"] > 85
    assert ignores["audit/emotion_output/identity/chance"] == 100 / CLASSES
    assert ignores["audit/emotion_output/identity/max"] < 100 / CLASSES + 12
    assert ignores["audit/emotion_output/identity/max"] == max(ignores["audit/emotion_output/identity/logistic"],
                                                               ignores["audit/emotion_output/identity/knn"])


def few_originals(identity_signal, seed=0):
    """A Yale-like fold: 15 subjects, 4 originals each, 10 noisy copies of every original; the
    test side holds 6 originals. Each original has its own random look, plus (if given) a
    look per subject scaled by ``identity_signal``."""
    generator = torch.Generator().manual_seed(seed)
    subjects = torch.arange(15).repeat_interleave(4)
    looks = torch.randn(60, 16, generator=generator) + identity_signal * torch.randn(15, 16, generator=generator)[subjects]
    order = torch.randperm(60, generator=generator)
    sides = {}
    for name, originals in (("test", order[:6]), ("val", order[6:15]), ("train", order[15:])):
        source = originals.repeat_interleave(10)
        features = looks[source] + 0.1 * torch.randn(len(source), 16, generator=generator)
        sides[name] = TensorBatches(features=features, identity=subjects[source], emotion=source % 2, source=source)
    return sides


def test_permutation_null_separates_identity_from_none():
    """Features without identity score like their permuted-label null (a large p-value); features
    with identity beat the null on every permutation (the smallest p-value 5 permutations give)."""
    attackers = [configured_attackers()[0], CosineKnnAttacker()]
    blind = audit_features(few_originals(0.0), {"identity": 15, "emotion": 2}, seed=0, attackers=attackers,
                           null_permutations=5)
    assert blind["audit/identity/max/p_value"] > 0.3
    assert blind["audit/identity/max/null"] < blind["audit/identity/chance"] + 10
    telling = audit_features(few_originals(3.0), {"identity": 15, "emotion": 2}, seed=0, attackers=attackers,
                             null_permutations=5)
    assert telling["audit/identity/max"] > telling["audit/identity/max/null"] + 40
    assert telling["audit/identity/max/p_value"] == pytest.approx(1 / 6)


def test_reaudit_of_a_saved_run_reproduces_its_audit_and_fresh_heads(tiny_config):
    """The logged base and config rebuild the same fold: re-auditing, and re-fitting the fresh
    head with the same fresh-head settings, give the run's numbers; other settings replace them."""
    cfg = tiny_config("model=emotion2face", "fresh_head.max_epochs=3")
    metrics = run(cfg)
    client = MlflowClient(tracking_uri(cfg))
    (logged,) = client.search_runs([client.get_experiment_by_name(cfg.logger.experiment_name).experiment_id])
    # the model's headline, as its recipe declares it: the Emotion CNN's own metric and its fresh head's
    assert logged.data.tags["anonemo.headline"] == "Emotion,Emotion2Face"
    assert logged.data.tags["anonemo.emotion_metric"] == "Emotion"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = reaudit_run(client, logged.info.run_id, cfg.audit.attackers, fresh_head=cfg.fresh_head, emotion_output=True)
    assert not [w for w in caught if "eval mode" in str(w.message)]  # the reloaded base's mode is no concern of the head's
    audited = {k: v for k, v in metrics.items() if k.startswith("audit/")}
    assert {k: v for k, v in again.items() if k.startswith("audit/")} == pytest.approx(audited)
    assert len(audited) >= 10 and again["Emotion2Face"] == pytest.approx(metrics["Emotion2Face"])
    assert "audit/emotion_output/identity/max" in audited  # the Emotion CNN's head, saved and reloaded
    assert 0 <= audited["audit/linkage/auc"] <= 1 and audited["audit/linkage/pairs"] > 0  # the linkage audit, in every job
    raw = OmegaConf.merge(cfg.fresh_head, {"standardise": False, "max_epochs": 1})
    refitted = reaudit_run(client, logged.info.run_id, cfg.audit.attackers, fresh_head=raw)
    logged_now = client.get_run(logged.info.run_id).data
    assert logged_now.metrics["Emotion2Face"] == refitted["Emotion2Face"]
    # Each re-fit logs its number once, after the training run's own: three entries, newest last.
    history = sorted(client.get_metric_history(logged.info.run_id, "Emotion2Face"), key=lambda m: m.timestamp)
    assert len(history) == 3 and history[-1].value == refitted["Emotion2Face"]
    assert "standardise: false" in logged_now.tags["fresh_head.refit"]
    assert "audit.reaudited_s" in client.get_run(logged.info.run_id).data.tags
    with_null = reaudit_run(client, logged.info.run_id, cfg.audit.attackers, null_permutations=2)
    assert round(3 * with_null["audit/identity/max/p_value"], 6) in (1, 2, 3)  # (1 + k) / (1 + 2)
    assert 0 <= with_null["audit/identity/max/null"] <= 100


def test_an_attacker_added_from_the_command_line_audits_the_job_and_its_reaudit(tiny_config):
    """audit.attackers is a config group: an entry added or dropped on the command line changes
    the job's audit, and the re-audit given the same entries reproduces it."""
    cfg = tiny_config("model=emotion", "audit.attackers.knn=null", "audit.attackers.wide_mlp=null",
                      "+audit.attackers.knn7._target_=anonemo.audit.attackers.CosineKnnAttacker",
                      "+audit.attackers.knn7.ks=[7]")
    metrics = run(cfg)
    assert "audit/identity/knn7" in metrics and "audit/identity/knn" not in metrics
    assert "audit/identity/wide_mlp" not in metrics
    suite = ("logistic", "paper_head", "knn7", "centroid")
    assert metrics["audit/identity/max"] == max(metrics[f"audit/identity/{name}"] for name in suite)
    client = MlflowClient(tracking_uri(cfg))
    (logged,) = client.search_runs([client.get_experiment_by_name(cfg.logger.experiment_name).experiment_id])
    again = reaudit_run(client, logged.info.run_id, cfg.audit.attackers)
    assert again["audit/identity/knn7"] == metrics["audit/identity/knn7"]


def test_an_attacker_entry_that_builds_no_attacker_is_named(tiny_config):
    with pytest.raises(ConfigError, match=r"audit.attackers.probe: torch.nn.Identity built a Identity, not an anonemo.probes.Attacker"):
        run(tiny_config("+audit.attackers.probe._target_=torch.nn.Identity"))
    with pytest.raises(ConfigError, match=r"audit.attackers.probe has no _target_"):
        run(tiny_config("+audit.attackers.probe.ks=[3]"))


def test_reaudit_names_an_unknown_run(tmp_path):
    result = cli("run_id=0123456789abcdef", f"paths.output_dir={tmp_path}", module="anonemo.audit")
    assert result.returncode == 2
    assert "run_id=0123456789abcdef is not a run in the tracking store sqlite:///" in result.stderr
    assert "Traceback" not in result.stderr


def test_reaudit_refuses_a_negative_number_of_permutations_before_any_work(tmp_path):
    result = cli("run_id=0123456789abcdef", "null_permutations=-2", f"paths.output_dir={tmp_path}", module="anonemo.audit")
    assert result.returncode == 2
    assert "null_permutations=-2 must be 0 (no null) or a number of permutations" in result.stderr
    assert "Traceback" not in result.stderr


def test_reaudit_with_every_part_switched_off_says_so_before_any_work(tmp_path):
    result = cli("run_id=0123456789abcdef", "attack_features=false", "emotion_output=false", f"paths.output_dir={tmp_path}",
                 module="anonemo.audit")
    assert result.returncode == 2
    assert "attack_features=false, refit_fresh_heads=false and emotion_output=false leave nothing to do" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("channels_last", [False, True])
def test_saved_base_round_trips_and_bad_files_are_named(tmp_path, channels_last):
    """A loaded base computes its saved self's features bit for bit (in the same memory layout:
    the other one runs other conv kernels), so a re-audit and an export see the job's features."""
    torch.manual_seed(0)
    base = ConvBase(32, (4, 8, 8), bottleneck=6, feature_norm="layer", channels_last=channels_last)
    save_network(base, tmp_path / "base.pt")
    loaded = load_base(tmp_path / "base.pt")
    assert loaded.channels_last == channels_last
    images = torch.rand(64, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(images), base.eval()(images))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelFileError, match="junk.pt is not a readable anonemo model file"):
        load_base(tmp_path / "junk.pt")
    torch.save({"state_dict": base.state_dict()}, tmp_path / "foreign.pt")
    with pytest.raises(ModelFileError, match="foreign.pt is not an anonemo ConvBase file"):
        load_base(tmp_path / "foreign.pt")
    payload = torch.load(tmp_path / "base.pt", weights_only=True)
    payload["architecture"]["channels"] = [4, 8, 16]  # another architecture than its weights
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(ModelFileError, match="mismatch.pt: its weights do not fit the architecture"):
        load_base(tmp_path / "mismatch.pt")
