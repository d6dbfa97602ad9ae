"""Algorithm 1 (the Hybrid model), fresh heads, and the jobs that use them."""

import copy
import functools

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from conftest import make_config
from mlflow.tracking import MlflowClient

from anonemo.audit.saved_run import reaudit_run
from anonemo.config import build
from anonemo.data.augment import Augmentation
from anonemo.data.datamodule import GroupedFoldDataModule
from anonemo.data.features import FeatureDataModule, extract_features
from anonemo.data.preprocess import FaceCropper, preprocess
from anonemo.data.synthetic import SyntheticFaces
from anonemo.errors import ConfigError
from anonemo.models.classifiers import SingleTaskModule, FreshHeadModule
from anonemo.metrics import ROUND_TIMES
from anonemo.models.hybrid import HybridModule, HybridSchedule, HybridSettings, Phase, TrainingDivergedError
from anonemo.models.networks import ClassifierHead, Networks, load_base, load_network
from anonemo.models.privacy.refitted_adversary import RefittedAdversary
from anonemo.models.rounds import RoundRecorder
from anonemo.models.weight import guarded_beta
from anonemo.optim import adam
from anonemo.tracking.artifacts import BASE_ARTIFACT, EMOTION_HEAD_ARTIFACT
from anonemo.tracking.store import tracking_uri
from anonemo.job import run

SMALL_NET = Networks(image_size=32, conv_channels=(4, 8, 8), fc_hidden=(32, 16), dropout=0.0)


@pytest.fixture(scope="module")
def data():
    originals = preprocess(SyntheticFaces(num_subjects=4, num_emotions=3, images_per_cell=4).load(), FaceCropper("none"), 32)
    faces = Augmentation(total=160, seed=0).apply(originals)
    return GroupedFoldDataModule(faces, fold=0, n_splits=4, val_fraction=0.25, batch_size=32)


ADAM = functools.partial(adam, lr=1e-3, weight_decay=1e-4)


# conf/model/hybrid.yaml's values (and refit_batch_size and seed), which these tests change one at a time
PAPER_SETTINGS = dict(optimizer=ADAM, identity_optimizer=ADAM, alpha=0.5, beta=1.0, emotion_guard=0.0,
                      max_emotion_loss=None, max_feature_growth=1000.0, max_init_epochs=60)


def settings(init_epochs, rounds, privacy=RefittedAdversary(), **changes):
    """The paper's HybridSettings with ``init_epochs`` and ``rounds`` and ``changes``."""
    return HybridSettings(privacy=privacy, **PAPER_SETTINGS | dict(init_epochs=init_epochs, rounds=rounds) | changes)


def hybrid(data, init_epochs, rounds, privacy=RefittedAdversary(), net=SMALL_NET, **changes):
    """A Hybrid of small networks for 3 emotions and 4 subjects, built as the recipe builds it."""
    base = net.base()
    emotion_head = net.head(base.out_features, 3)
    identity_heads = privacy.identity_heads(net, base.out_features, 4)
    return HybridModule(base, emotion_head, identity_heads, settings(init_epochs, rounds, privacy, **changes),
                        RoundRecorder(data.side("train"), data.side("val")), refit_batch_size=64, seed=0)


def fit_with_rounds(module, data, callbacks=()):
    """Algorithm 1 in full: the training steps and, at each round's end, the re-fit and scores."""
    quiet_trainer(module.schedule.total_epochs, callbacks).fit(module, datamodule=data)
    return module.rounds.history


def quiet_trainer(epochs, callbacks=()):
    return pl.Trainer(
        max_epochs=epochs, limit_val_batches=0, enable_checkpointing=False, logger=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks),
    )


def test_schedule_says_which_phase_each_epoch_is_in():
    schedule = HybridSchedule(init_epochs=2, rounds=3)
    assert schedule.total_epochs == 2 + 3
    phases = [schedule.phase(e, init_end=2) for e in range(schedule.total_epochs)]
    assert [(p.kind, p.round, p.ends_round) for p in phases] == [
        ("init", 0, False), ("init", 0, True), ("adversarial", 1, True), ("adversarial", 2, True), ("adversarial", 3, True),
    ]


def test_an_initialisation_of_variable_length_ends_where_it_is_told_and_the_rounds_follow():
    schedule = HybridSchedule(init_epochs=2, rounds=2, max_init_epochs=6)
    assert schedule.total_epochs == 6 + 2 and schedule.phase(5, init_end=6) == Phase("init", 0, True)
    assert not schedule.may_end_initialisation(0, init_end=6)  # before init_epochs
    assert schedule.may_end_initialisation(2, init_end=6)
    assert [(p.kind, p.round, p.ends_round) for p in (schedule.phase(e, init_end=3) for e in range(5))] == [
        ("init", 0, False), ("init", 0, False), ("init", 0, True), ("adversarial", 1, True), ("adversarial", 2, True),
    ]
    assert not schedule.may_end_initialisation(3, init_end=3)
    with pytest.raises(ConfigError, match="model.max_init_epochs=1 must be at least 2"):
        HybridSchedule(init_epochs=2, rounds=1, max_init_epochs=1)


def test_only_a_controller_that_reads_the_initialisation_lengthens_it(data):
    """max_init_epochs is the budget's: under a fixed beta or the guard the initialisation is init_epochs long."""
    assert hybrid(data, 2, 2, max_init_epochs=40).schedule.total_epochs == 2 + 2
    assert hybrid(data, 2, 2, max_init_epochs=40, emotion_guard=30).schedule.total_epochs == 2 + 2
    assert hybrid(data, 2, 2, max_init_epochs=40, max_emotion_loss=2).schedule.total_epochs == 40 + 2


def test_a_budget_ends_the_initialisation_on_its_plateau_and_training_stops_after_the_last_round(data):
    torch.manual_seed(0)
    module = hybrid(data, 2, 2, RefittedAdversary(refit_epochs=1), max_init_epochs=40, max_emotion_loss=2)
    trainer = quiet_trainer(module.schedule.total_epochs)
    trainer.fit(module, datamodule=data)
    init_end = module.init_end
    assert 2 <= init_end < 40, "a 3-emotion toy plateaus well before 40 epochs"
    assert module.weight.plateaued() and len(module.weight.readings["val"]) == init_end  # read after every epoch
    assert trainer.current_epoch == init_end + 2  # the rounds, then no more epochs
    assert [row["round"] for row in module.rounds.history] == [0, 1, 2]


def test_the_refit_with_its_masks_on_a_helper_thread_fits_the_same_identity_heads(data):
    """HybridModule.refit_identity_heads, as a round's end calls it in a job of several threads, against
    the same re-fit with the masks drawn inline: the same heads, the generator left in the same state."""
    torch.manual_seed(0)
    net = Networks(image_size=32, conv_channels=(4, 8, 8), fc_hidden=(32, 16), dropout=0.3)
    module = hybrid(data, 1, 1, RefittedAdversary(heads=("paper", "mlp_1024_512"), refit_epochs=3), net=net)
    quiet_trainer(1).fit(module, datamodule=data)  # attaches the trainer and its optimizers
    features, identities = extract_features(module.base, data.side("train").tensors["image"]), data.labels("train", "identity")
    optimizer = module.optimizers()[1].optimizer
    start, optimizer_start = copy.deepcopy(module.identity_heads.state_dict()), copy.deepcopy(optimizer.state_dict())
    fitted = []
    for helper_thread in (False, True):
        module.identity_heads.load_state_dict(start)
        optimizer.load_state_dict(copy.deepcopy(optimizer_start))  # it keeps (and updates) the tensors it is given
        torch.manual_seed(5)
        module.refit_identity_heads(features, identities, 1, helper_thread)
        fitted.append((copy.deepcopy(module.identity_heads.state_dict()), torch.random.get_rng_state()))
    (inline, inline_state), (helper, helper_state) = fitted
    assert torch.equal(inline_state, helper_state)
    assert all(torch.equal(inline[key], helper[key]) for key in inline)
    assert not torch.equal(inline["0.layers.0.weight"], start["0.layers.0.weight"])  # it did fit


@pytest.mark.parametrize("option", ["init_epochs", "rounds"])
def test_schedule_rejects_empty_phases(option):
    arguments = {"init_epochs": 1, "rounds": 1, option: 0}
    with pytest.raises(ConfigError, match=f"model.{option}=0 must be at least 1"):
        HybridSchedule(**arguments)


@pytest.mark.parametrize("option", ["alpha", "beta"])
def test_negative_weights_are_refused(option, tmp_path):
    with pytest.raises(ConfigError, match=f"model.{option}=-1 must be non-negative"):
        build(make_config(tmp_path, "model=hybrid", f"model.{option}=-1").model, "model")


class PhaseSnapshots(pl.Callback):
    """Records which parts of the Hybrid each phase changed.

    A callback's epoch end runs before the module's, which re-fits W_i: epoch start -> this
    callback's epoch end is the training steps, and its epoch end -> next epoch start (or train
    end) is the re-fit.
    """

    def __init__(self):
        self.changes = []  # (phase kind or "refit", round, {part: changed})

    @staticmethod
    def state(module):
        return {part: copy.deepcopy(getattr(module, part).state_dict()) for part in ("base", "emotion_head", "identity_heads")}

    @staticmethod
    def changed(before, after):
        return {part: any(not torch.equal(before[part][k], after[part][k]) for k in before[part]) for part in before}

    def on_train_epoch_start(self, trainer, module):
        if getattr(self, "pending_refit", None):
            self._close_refit(module)
        self.start = self.state(module)

    def on_train_epoch_end(self, trainer, module):
        phase = module.phase(trainer.current_epoch)
        self.end = self.state(module)
        self.changes.append((phase.kind, phase.round, self.changed(self.start, self.end)))
        self.pending_refit = phase.ends_round and phase.kind == "adversarial" and phase.round

    def on_train_end(self, trainer, module):
        if self.pending_refit:
            self._close_refit(module)

    def _close_refit(self, module):
        self.changes.append(("refit", self.pending_refit, self.changed(self.end, self.state(module))))
        self.pending_refit = None


def test_algorithm_1_alternates(data):
    """Adversarial steps never touch W_i; re-fits never touch W_c or W_e; the init trains all."""
    torch.manual_seed(0)
    snapshots = PhaseSnapshots()
    module = hybrid(data, 1, 2, RefittedAdversary(refit_epochs=1))
    history = fit_with_rounds(module, data, [snapshots])
    assert [(kind, t) for kind, t, _ in snapshots.changes] == [
        ("init", 0), ("adversarial", 1), ("refit", 1), ("adversarial", 2), ("refit", 2),
    ]
    for kind, _, changed in snapshots.changes:
        expected = {
            "init": {"base": True, "emotion_head": True, "identity_heads": True},
            "adversarial": {"base": True, "emotion_head": True, "identity_heads": False},
            "refit": {"base": False, "emotion_head": False, "identity_heads": True},
        }[kind]
        assert changed == expected, kind
    assert [row["round"] for row in history] == [0, 1, 2]
    assert "round/refit_identity_acc/val" in history[1]
    # each round's time by part; round 0 (the initialisation) has no re-fit
    assert all(row[key] > 0 for row in history for key in ROUND_TIMES if key != "round/time/refit_s")
    assert [row["round/time/refit_s"] > 0 for row in history] == [False, True, True]


def base_gradient(module, loss_of_batch, batch):
    module.zero_grad()
    loss_of_batch(batch).backward()
    return torch.cat([p.grad.flatten() for p in module.base.parameters()])


def losses(module, batch):
    """(Le, Li) of a batch through the module's base, emotion head and identity heads."""
    features = module.base(batch["image"])
    return F.cross_entropy(module.emotion_head(features), batch["emotion"]), module.identity_loss(features, batch["identity"])


def adversarial_loss(module, batch, progress=0.0):
    """The base's loss in an adversarial step (HybridModule.training_step): Le plus the privacy term."""
    features = module.base(batch["image"])
    emotion_loss = F.cross_entropy(module.emotion_head(features), batch["emotion"])
    return emotion_loss + module.privacy_loss(features, batch["identity"], progress)


def test_adversarial_objective_subtracts_beta_times_identity_loss(data):
    """The paper's step: the base's gradient is grad(Le) - beta * grad(Li), identity pushed out."""
    torch.manual_seed(0)
    module = hybrid(data, 1, 1, beta=2.5)
    batch = next(iter(data.train_dataloader()))
    combined = base_gradient(module, lambda b: adversarial_loss(module, b), batch)
    emotion_only = base_gradient(module, lambda b: losses(module, b)[0], batch)
    identity_only = base_gradient(module, lambda b: losses(module, b)[1], batch)
    assert torch.allclose(combined, emotion_only - 2.5 * identity_only, atol=1e-6)


@pytest.fixture(scope="module")
def multitask_start(data):
    """As in Algorithm 1, a multi-task start (two identity heads) that identifies the batch."""
    batch = next(iter(data.train_dataloader()))
    torch.manual_seed(0)
    start = hybrid(data, 1, 1, RefittedAdversary(heads=("paper", "linear")))
    everything = torch.optim.Adam(start.parameters(), lr=1e-2)
    for _ in range(80):  # until identified, not to saturation (where every gradient vanishes)
        emotion_loss, identity_loss = losses(start, batch)
        if identity_loss.item() < 0.3:
            break
        everything.zero_grad()
        (emotion_loss + 0.5 * identity_loss).backward()
        everything.step()
    assert losses(start, batch)[1].item() < 0.3
    return start, batch


def identity_posteriors(module, batch):
    """(true-class probability, posterior entropy) of every identity head, averaged over the batch."""
    module.eval()
    with torch.no_grad():
        features = module.base(batch["image"])
        p = torch.stack([head(features).softmax(1) for head in module.identity_heads])
    module.train()
    true_class = p.gather(2, batch["identity"].expand(len(p), -1).unsqueeze(2)).mean().item()
    entropy = -(p * p.clamp_min(1e-12).log()).sum(2).mean().item()
    return true_class, entropy


def after_adversarial_steps(start, batch, steps=20, beta=1.0, **adversary):
    module = copy.deepcopy(start)
    module.privacy = RefittedAdversary(heads=("paper", "linear"), **adversary)
    module.weight.beta = beta
    main = torch.optim.Adam([*module.base.parameters(), *module.emotion_head.parameters()], lr=1e-2)
    for _ in range(steps):
        main.zero_grad()
        adversarial_loss(module, batch).backward()
        main.step()
    return module


def test_paper_steps_raise_the_frozen_identity_heads_loss(multitask_start):
    """From the multi-task start, steps with beta=1 make the frozen heads worse than they were,
    and worse than steps on emotion alone (beta=0)."""
    start, batch = multitask_start
    trained = losses(start, batch)[1].item()
    adversarial = after_adversarial_steps(start, batch)
    emotion_only = after_adversarial_steps(start, batch, beta=0.0)
    assert losses(adversarial, batch)[1].item() > trained + 1.0
    assert losses(adversarial, batch)[1].item() > losses(emotion_only, batch)[1].item() + 1.0
    assert identity_posteriors(adversarial, batch)[0] < identity_posteriors(start, batch)[0] - 0.3


def test_the_confusion_objective_pushes_the_identity_posterior_towards_uniform(multitask_start):
    start, batch = multitask_start
    true_before, entropy_before = identity_posteriors(start, batch)
    true_after, entropy_after = identity_posteriors(after_adversarial_steps(start, batch, objective="confusion"), batch)
    uniform_entropy = torch.log(torch.tensor(4.0)).item()
    assert entropy_after > entropy_before + 0.5 and entropy_after > 0.8 * uniform_entropy
    assert true_after < true_before - 0.3
    # bounded: the penalty cannot go below zero, unlike -CE
    module = after_adversarial_steps(start, batch, objective="confusion")
    features = module.base(batch["image"])
    assert module.privacy.ensemble_penalty(module.identity_logits(features), batch["identity"]).item() >= -1e-6


def test_an_ensemble_is_aimed_at_through_the_mean_of_its_heads_penalties():
    identities = torch.tensor([0, 1, 2, 0])
    good = torch.nn.functional.one_hot(identities, 3).float() * 5
    poor = torch.zeros(4, 3)
    adversary = RefittedAdversary(objective="neg_ce", heads=("paper", "linear"))
    assert adversary.ensemble_penalty([poor, good], identities) == pytest.approx(
        (adversary.head_penalty(good, identities) + adversary.head_penalty(poor, identities)).item() / 2
    )


def test_restart_gives_every_identity_head_fresh_weights_and_optimizer_state(multitask_start):
    start, batch = multitask_start
    module = copy.deepcopy(start)
    identity = torch.optim.Adam(module.identity_heads.parameters())
    losses(module, batch)[1].backward()
    identity.step()
    before = copy.deepcopy(module.identity_heads.state_dict())
    module.restart_identity_heads(identity)
    assert all(not torch.equal(before[k], v) for k, v in module.identity_heads.state_dict().items())
    assert not identity.state
    assert losses(module, batch)[1].item() > losses(start, batch)[1].item() + 0.5  # forgot who is who


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"objective": "neg_kl"}, "model.privacy.objective='neg_kl' is not known"),
        ({"objective": "grl"}, "gradient reversal is model=grl"),
        ({"heads": ()}, "model.privacy.heads is empty"),
        ({"restart_every": -1}, "model.privacy.restart_every=-1 must be 0"),
        ({"refit_epochs": 0}, "model.privacy.refit_epochs=0 must be at least 1"),
    ],
)
def test_bad_adversary_options_are_named(option, message):
    with pytest.raises(ConfigError, match=message):
        RefittedAdversary(**option)


def test_unknown_identity_head_and_feature_norm_are_named():
    with pytest.raises(ConfigError, match="model.privacy.heads: 'huge' is not a known identity head"):
        RefittedAdversary(heads=("paper", "huge"))
    with pytest.raises(ConfigError, match="network.feature_norm='group' is not known"):
        Networks(image_size=32, feature_norm="group")


def test_fresh_heads_start_fresh_on_a_frozen_base(data):
    torch.manual_seed(0)
    base = SMALL_NET.base()
    source = SingleTaskModule(base, SMALL_NET.head(base.out_features, 3), "emotion", ADAM)
    base_before = copy.deepcopy(source.base.state_dict())
    fresh = FreshHeadModule(source.base, SMALL_NET.head(base.out_features, 4), "identity", ADAM, metric_prefix="T/")
    assert fresh.base is source.base
    assert not any(p.requires_grad for p in fresh.base.parameters())
    assert not any(p is q for p in fresh.head.parameters() for q in source.head.parameters())
    source_first = next(source.head.parameters())
    fresh_first = next(fresh.head.parameters())
    assert source_first.shape[1] == fresh_first.shape[1] and not torch.equal(source_first, fresh_first)

    features = FeatureDataModule(source.base, data)
    head_before = copy.deepcopy(fresh.head.state_dict())
    quiet_trainer(3).fit(fresh, datamodule=features)
    assert all(torch.equal(v, source.base.state_dict()[k]) for k, v in base_before.items())
    assert any(not torch.equal(v, fresh.head.state_dict()[k]) for k, v in head_before.items())
    # the cached features are exactly what the frozen base computes from the images
    images = data.side("train").tensors["image"][:5]
    with torch.no_grad():
        assert torch.allclose(features.sides["train"].tensors["features"][:5], source.base.eval()(images), atol=1e-5)


def test_standardised_head_reads_a_low_spread_signal_that_a_raw_head_misses():
    """fresh_head.standardise: the label sits in a feature of tiny spread beside loud uninformative
    ones (as emotion did in adversarially trained bases). The raw head cannot learn it in the
    steps given, the head on training-side standardised inputs does; both see the same data."""
    torch.manual_seed(0)
    labels = torch.arange(512) % 2
    features = 10 * torch.randn(512, 8)
    features[:, 0] = 5 + 1e-3 * (2 * labels - 1)
    accuracies = {}
    for standardise in (False, True):
        torch.manual_seed(1)
        head = ClassifierHead(8, 2, (16,), standardise=standardise)
        if standardise:
            head.set_input_statistics(features)
        optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
        for _ in range(200):
            optimizer.zero_grad()
            F.cross_entropy(head(features), labels).backward()
            optimizer.step()
        accuracies[standardise] = (head(features).argmax(1) == labels).float().mean().item()
    assert accuracies[True] > 0.95 and accuracies[False] < 0.7
    with pytest.raises(ValueError, match="standardise=True"):
        ClassifierHead(8, 2).set_input_statistics(features)


def test_divergence_message_names_the_round_and_settings(data):
    module = hybrid(data, 1, 3, beta=4.0)
    module._nonfinite = torch.tensor(True)
    with pytest.raises(TrainingDivergedError) as raised:
        module.check_divergence(module.phase(2))
    message = str(raised.value)
    assert "round 2 of 3" in message and "beta=4" in message and "NaN or infinite" in message


def run_history(cfg, key):
    client = MlflowClient(tracking_uri(cfg))
    experiment = client.get_experiment_by_name(cfg.logger.experiment_name)
    (logged,) = client.search_runs([experiment.experiment_id])
    return client, logged, [m.step for m in client.get_metric_history(logged.info.run_id, key)]


TINY_HYBRID = ("model=hybrid", "model.init_epochs=2", "model.rounds=3", "model.privacy.refit_epochs=2", "fresh_head.max_epochs=3")


def test_hybrid_job_logs_the_papers_numbers_and_round_curves(tiny_config):
    cfg = tiny_config(*TINY_HYBRID)
    metrics = run(cfg)
    client, logged, rounds = run_history(cfg, "round/emotion_acc/val")
    assert logged.info.status == "FINISHED"
    for name in ("Hybrid2Emotion", "Hybrid2Face", "Hybrid/emotion_head", "Hybrid/identity_head"):
        assert logged.data.metrics[name] == pytest.approx(metrics[name])
    assert logged.data.metrics["Hybrid2Face/chance"] == pytest.approx(25.0)
    assert rounds == [0, 1, 2, 3]
    assert [m.step for m in client.get_metric_history(logged.info.run_id, "round/refit_identity_acc/train")] == [1, 2, 3]
    artifacts = {a.path for a in client.list_artifacts(logged.info.run_id)}
    assert {"hybrid_rounds.png", "confusion_Hybrid2Emotion.png", "confusion_Hybrid2Face.png"} <= artifacts
    assert logged.data.params["model.beta"] == "1.0" and logged.data.params["model.rounds"] == "3"
    # the final base is audited by every attacker, for identity and emotion
    for task, chance in (("identity", 25.0), ("emotion", 100 / 3)):
        for attacker in ("logistic", "paper_head", "wide_mlp", "knn"):
            assert 0 <= logged.data.metrics[f"audit/{task}/{attacker}"] <= logged.data.metrics[f"audit/{task}/max"]
        assert logged.data.metrics[f"audit/{task}/chance"] == pytest.approx(chance)


def test_emotion2face_job_logs_both_numbers(tiny_config):
    cfg = tiny_config("model=emotion2face", "fresh_head.max_epochs=3")
    metrics = run(cfg)
    _, logged, _ = run_history(cfg, "Emotion2Face")
    assert {"Emotion", "Emotion2Face", "Emotion2Face/chance"} <= set(logged.data.metrics)
    assert logged.data.metrics["Emotion2Face"] == pytest.approx(metrics["Emotion2Face"])


def test_diverged_hybrid_stops_and_keeps_partial_metrics(tiny_config):
    # A growth limit of one millionth trips on the first adversarial round: the guard's full path runs.
    cfg = tiny_config(*TINY_HYBRID, "model.max_feature_growth=1e-6")
    with pytest.raises(TrainingDivergedError, match="round 1 of 3"):
        run(cfg)
    client, logged, rounds = run_history(cfg, "round/emotion_acc/val")
    assert logged.info.status == "FAILED"
    assert "TrainingDivergedError" in logged.data.tags["error"]
    assert rounds == [0]
    assert "hybrid_rounds.png" in {a.path for a in client.list_artifacts(logged.info.run_id)}


def test_recommended_hybrid_runs_and_saves_its_bottleneck_base_and_standardising_head(tiny_config, tmp_path):
    cfg = tiny_config("model=hybrid_standardised", "model.init_epochs=2", "model.rounds=2", "model.privacy.refit_epochs=2",
                      "fresh_head.max_epochs=3")
    assert cfg.model._target_ == "anonemo.recipes.hybrid.Hybrid" and cfg.model.privacy.objective == "confusion"
    assert cfg.model.privacy.standardise and cfg.fresh_head.standardise
    metrics = run(cfg)
    client, logged, rounds = run_history(cfg, "round/refit_identity_acc/val")
    assert logged.info.status == "FINISHED" and rounds == [1, 2]
    assert logged.data.params["model.privacy.heads"] == "['paper', 'linear', 'mlp_1024_512']"
    assert 0 <= metrics["audit/identity/max"] <= 100
    base = load_base(client.download_artifacts(logged.info.run_id, BASE_ARTIFACT.as_posix(), str(tmp_path)))
    with torch.no_grad():
        features = base(torch.rand(5, 1, 32, 32))
    assert features.shape == (5, 8)  # the bottleneck, layer-normalised: every image's features at one scale
    assert torch.allclose(features.mean(1), torch.zeros(5), atol=1e-5)
    assert torch.allclose(features.var(1, unbiased=False), torch.ones(5), atol=1e-3)
    # Hybrid2Emotion's head, as shipped, carries the training side's feature statistics
    head, _ = load_network(client.download_artifacts(logged.info.run_id, EMOTION_HEAD_ARTIFACT.as_posix(), str(tmp_path)),
                           ClassifierHead)
    assert head.standardise and not torch.equal(head.input_std, torch.ones(8))
    # The job attacked that head's output (not the Hybrid's own W_e): re-auditing the saved head reproduces it
    again = reaudit_run(client, logged.info.run_id, cfg.audit.attackers, audit=False, emotion_output=True)
    assert again == pytest.approx({k: v for k, v in metrics.items() if k.startswith("audit/emotion_output/")})
    assert set(again) >= {"audit/emotion_output/identity/max", "audit/emotion_output/identity/chance"}


def test_restarts_fall_on_every_rth_round():
    assert [t for t in range(1, 7) if RefittedAdversary(restart_every=2).restarts_before_refit(t)] == [2, 4, 6]
    assert not any(RefittedAdversary().restarts_before_refit(t) for t in range(1, 7))


def test_standardised_identity_heads_read_the_training_sides_standardised_features(data):
    """After a re-fit the heads' input statistics are the training side's (as the audit's
    attackers standardise), and every identity head reads features through them."""
    torch.manual_seed(0)
    module = hybrid(data, 1, 1, RefittedAdversary(standardise=True, refit_epochs=1))
    fit_with_rounds(module, data)
    features = extract_features(module.base, data.side("train").tensors["image"])
    for head in module.identity_heads:
        assert torch.allclose(head.input_mean, features.mean(0), atol=1e-5)
        assert torch.allclose(head.input_std, features.std(0).clamp_min(1e-6), atol=1e-5)
    module.eval()
    standardised = (features - features.mean(0)) / features.std(0).clamp_min(1e-6)  # dead features: std 0
    with torch.no_grad():
        assert torch.allclose(module.identity_logits(features)[0], module.identity_heads[0].layers(standardised), atol=1e-4)
        plain = hybrid(data, 1, 1)
        assert torch.equal(plain.identity_logits(features)[0], plain.identity_heads[0].layers(features))


def test_guarded_beta_halves_below_the_floor_and_grows_back_to_model_beta():
    assert guarded_beta(0.8, ceiling=0.8, emotion_acc=40.0, floor=58.0) == 0.4
    assert guarded_beta(0.4, ceiling=0.8, emotion_acc=60.0, floor=58.0) == 0.5
    assert guarded_beta(0.7, ceiling=0.8, emotion_acc=60.0, floor=58.0) == 0.8
    assert guarded_beta(0.8, ceiling=0.8, emotion_acc=58.0, floor=58.0) == 0.8


def test_emotion_guard_backs_the_adversary_off_while_emotion_is_lost_and_is_otherwise_inert(data, tmp_path):
    """A large beta on a tiny set takes the emotion head's training accuracy down; the guard then
    sets each round's beta from the round before by guarded_beta. A guard that never fires
    trains exactly as a fixed beta (so runs where it would not have fired need no re-run)."""
    def fit(guard):
        torch.manual_seed(0)
        module = hybrid(data, 10, 4, RefittedAdversary(refit_epochs=1), beta=20.0,
                        optimizer=functools.partial(adam, lr=0.01, weight_decay=1e-4), emotion_guard=guard)
        return [{k: v for k, v in row.items() if k not in ROUND_TIMES} for row in fit_with_rounds(module, data)]

    fixed, inert, guarded = fit(0), fit(100), fit(1)
    assert inert == fixed and [h["round/beta"] for h in fixed[1:]] == [20.0] * 4
    floor = guarded[0]["round/emotion_acc/train"] - 1
    betas = [h["round/beta"] for h in guarded[1:]]
    accuracies = [h["round/emotion_acc/train"] for h in guarded[1:]]
    assert betas[0] == 20.0 and min(betas) < 20.0  # it fired
    assert betas[1:] == [guarded_beta(b, 20.0, a, floor) for b, a in zip(betas[:-1], accuracies[:-1])]
    with pytest.raises(ConfigError, match="model.emotion_guard=-1 must be between 0"):
        build(make_config(tmp_path, "model=hybrid_standardised", "model.emotion_guard=-1").model, "model")
