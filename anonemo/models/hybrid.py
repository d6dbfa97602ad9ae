"""The paper's Hybrid model, trained by Algorithm 1 (adversarial learning for anonymity)."""

from __future__ import annotations

from collections.abc import Sequence
import logging
import time
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from anonemo.data.features import extract_features
from anonemo.errors import AnonemoError, ConfigError
from anonemo.evaluation import accuracy
from anonemo.models.adversary import Adversary, head_widths, reverse_gradient
from anonemo.models.classifiers import EpochMean
from anonemo.models.networks import ClassifierHead, ConvBase, adam

log = logging.getLogger(__name__)


class TrainingDivergedError(AnonemoError):
    """The adversarial objective ran away (non-finite loss or exploding activations)."""


@dataclass(frozen=True)
class Phase:
    kind: str  # "init" (multi-task, eq. 1) or "adversarial" (eq. 2, W_i frozen)
    round: int  # 0 during initialisation, t during round t
    ends_round: bool  # last epoch of the block: the re-fit of W_i (t >= 1) and evaluation follow


@dataclass(frozen=True)
class HybridSchedule:
    """Algorithm 1 laid out over training epochs: the one place that says which phase is when.

    ========================================  =============================================
    epochs                                    what runs
    ========================================  =============================================
    0 .. init_epochs-1                        multi-task init: min over W_c, W_e, W_i of
                                              Le + alpha*Li; round 0 is evaluated after it
    then, for round t = 1 .. rounds:
      adversarial_epochs epochs               W_i frozen: min over W_c, W_e of Le - beta*Li
      at the end of the last of them          W_c, W_e frozen: W_i re-fitted on Li for
                                              refit_epochs passes over cached features;
                                              round t is evaluated
    ========================================  =============================================
    """

    init_epochs: int
    rounds: int
    adversarial_epochs: int = 1
    refit_epochs: int = 5

    def __post_init__(self) -> None:
        for option, minimum in (("init_epochs", 1), ("rounds", 1), ("adversarial_epochs", 1), ("refit_epochs", 1)):
            if getattr(self, option) < minimum:
                raise ConfigError(f"model.{option}={getattr(self, option)} must be at least {minimum}.")

    @property
    def total_epochs(self) -> int:
        return self.init_epochs + self.rounds * self.adversarial_epochs

    def phase(self, epoch: int) -> Phase:
        if epoch < self.init_epochs:
            return Phase("init", 0, epoch == self.init_epochs - 1)
        t, k = divmod(epoch - self.init_epochs, self.adversarial_epochs)
        return Phase("adversarial", t + 1, k == self.adversarial_epochs - 1)


def guarded_beta(beta: float, ceiling: float, emotion_acc: float, floor: float) -> float:
    """The emotion guard's step: the adversarial weight for the next round. Halved when the emotion
    head's training-side accuracy (%) fell below ``floor``, else grown by a quarter, up to
    ``ceiling`` (model.beta): the adversary backs off while emotion is being lost, not for good."""
    return beta / 2 if emotion_acc < floor else min(ceiling, beta * 1.25)


class HybridModule(pl.LightningModule):
    """Shared base W_c, emotion head W_e and identity head(s) W_i, trained by Algorithm 1.

    Manual optimisation with two optimizers: ``main`` over W_c and W_e, ``identity`` over W_i.
    The identity heads are "frozen" during adversarial steps by toggling the ``main`` optimizer,
    which stops their weights from changing while they still pass gradients back to W_c. What
    the base is trained against is :class:`~anonemo.models.adversary.Adversary`; its defaults
    are the paper's (one head, ``Le - beta * Li``). With ``objective="grl"`` the adversarial
    epochs update both optimizers in one pass instead.

    After every round the current heads are scored on the training and validation sides, the
    re-fitted W_i too (the strongest head, for an ensemble), and logged with the round as the
    MLflow step; ``history`` keeps them.

    With ``emotion_guard`` > 0 the adversarial weight of each round is ``guarded_beta`` of the one
    before: it backs off while the emotion head's training-side accuracy is more than
    ``emotion_guard`` points below its value after initialisation (``round/beta`` logs it). Until
    that happens, training is exactly that of a fixed ``beta``.
    """

    def __init__(
        self,
        num_emotions: int,
        num_subjects: int,
        image_size: int,
        schedule: HybridSchedule,
        alpha: float = 0.5,
        beta: float = 1.0,
        adversary: Adversary = Adversary(),
        conv_channels: Sequence[int] = (16, 32, 64),
        fc_hidden: Sequence[int] = (256, 128),
        dropout: float = 0.3,
        bottleneck: int = 0,
        feature_norm: str = "none",
        lr: float = 1e-3,
        identity_lr: float = 1e-3,
        weight_decay: float = 1e-4,
        channels_last: bool = True,
        max_feature_growth: float = 1000.0,
        emotion_guard: float = 0.0,
        seed: int = 0,
    ):
        super().__init__()
        for option, value in (("alpha", alpha), ("beta", beta)):
            if value < 0:
                raise ConfigError(f"model.{option}={value} must be non-negative (the paper uses alpha=0.5, beta=1).")
        if not 0 <= emotion_guard <= 100:
            raise ConfigError(f"model.emotion_guard={emotion_guard} must be between 0 (off) and 100 accuracy points.")
        if max_feature_growth <= 0:
            raise ConfigError(f"model.max_feature_growth={max_feature_growth} must be positive (default 1000).")
        self.save_hyperparameters(ignore=["schedule", "adversary"], logger=False)
        self.automatic_optimization = False
        self.schedule = schedule
        self.adversary = adversary
        self.alpha, self.beta = alpha, beta
        self.round_beta = beta  # the adversarial weight of the current round (see emotion_guard)
        self.base = ConvBase(
            image_size, conv_channels, channels_last=channels_last, bottleneck=bottleneck, feature_norm=feature_norm
        )
        self.emotion_head = ClassifierHead(self.base.out_features, num_emotions, fc_hidden, dropout)
        self.identity_heads = nn.ModuleList(
            # With adversary.standardise their input statistics are set at every re-fit; with
            # adversary.cross_fit there is one set of adversary.heads per half of the originals.
            ClassifierHead(self.base.out_features, num_subjects, head_widths(name, fc_hidden), dropout,
                           standardise=adversary.standardise)
            for _ in range(2 if adversary.cross_fit else 1)
            for name in adversary.heads
        )
        self.train_emotion_loss, self.train_loss = EpochMean(), EpochMean()
        self.history: list[dict[str, float]] = []
        self.round_end_seconds = 0.0  # time on frozen-base work (extraction, re-fits, scoring)
        self.reference_scale: float | None = None  # mean |W_c features| after initialisation
        self._reset_watch()

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        hp = self.hparams
        main = adam([*self.base.parameters(), *self.emotion_head.parameters()], lr=hp.lr, weight_decay=hp.weight_decay)
        identity = adam(self.identity_heads.parameters(), lr=hp.identity_lr, weight_decay=hp.weight_decay)
        return [main, identity]

    def identity_logits(self, features: torch.Tensor) -> list[torch.Tensor]:
        """Every identity head's logits. With ``adversary.standardise`` the heads read the features
        standardised per feature with the training side's statistics of the last re-fit, as the
        audit's attackers read them; the base's gradient passes through the standardisation."""
        return [head(features) for head in self.identity_heads]

    def half_sets(self, sources: torch.Tensor) -> list[tuple[nn.ModuleList, torch.Tensor, torch.Tensor]]:
        """With ``adversary.cross_fit``: (heads, learns, attacks) per set of identity heads, the
        masks (by ``sources``) of the batch images the set learns from and of those it attacks."""
        per_set = len(self.adversary.heads)
        even = sources % 2 == 0
        return [(self.identity_heads[:per_set], even, ~even), (self.identity_heads[per_set:], ~even, even)]

    def identity_loss(self, features: torch.Tensor, identities: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        """Li: the identity heads' mean cross-entropy (with ``adversary.cross_fit``, each head's on
        the images its set learns from)."""
        if not self.adversary.cross_fit:
            return torch.stack([F.cross_entropy(logits, identities) for logits in self.identity_logits(features)]).mean()
        return torch.stack([
            F.cross_entropy(head(features[learns]), identities[learns])
            for heads, learns, _ in self.half_sets(sources) if learns.any()
            for head in heads
        ]).mean()

    def losses(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Le, Li, features) of one batch through the current W_c, W_e and W_i."""
        features = self.base(batch["image"])
        emotion_loss = F.cross_entropy(self.emotion_head(features), batch["emotion"])
        return emotion_loss, self.identity_loss(features, batch["identity"], batch["source"]), features

    def identity_penalty(self, features: torch.Tensor, identities: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        """The adversary's term for a batch (with ``adversary.cross_fit``, each set's on the images it
        attacks, weighted by their share of the batch)."""
        if not self.adversary.cross_fit:
            return self.adversary.penalty(self.identity_logits(features), identities)
        return torch.stack([
            attacks.float().mean() * self.adversary.penalty([head(features[attacks]) for head in heads], identities[attacks])
            for heads, _, attacks in self.half_sets(sources) if attacks.any()
        ]).sum()

    def adversarial_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, Le, features) of an adversarial step: eq. (2) with the configured adversary.

        For ``grl`` the loss also trains the identity heads: their input passes through a
        gradient reversal, so the base receives ``-beta`` times the heads' gradient. The soft kNN
        adversary (``neighbour_weight``) votes within the batch, so it needs the batch's sources.
        """
        features = self.base(batch["image"])
        emotion_loss = F.cross_entropy(self.emotion_head(features), batch["emotion"])
        adversary, identities = self.adversary, batch["identity"]
        if adversary.objective == "grl":
            reversed_features = reverse_gradient(features, self.round_beta)
            loss = emotion_loss + adversary.penalty(self.identity_logits(reversed_features), identities)
        else:
            loss = emotion_loss + self.round_beta * self.identity_penalty(features, identities, batch["source"])
        if adversary.neighbour_weight:
            penalty = adversary.neighbour_penalty(features, identities, batch["source"], self.hparams.num_subjects)
            loss = loss + self.round_beta * adversary.neighbour_weight * penalty
        return loss, emotion_loss, features

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        phase = self.schedule.phase(self.current_epoch)
        main, identity = self.optimizers()
        if phase.kind == "init":
            emotion_loss, identity_loss, features = self.losses(batch)
            loss = emotion_loss + self.alpha * identity_loss  # eq. (1)
            self._step(loss, main, identity)
        elif self.adversary.objective == "grl":  # W_c, W_e and W_i in one pass
            loss, emotion_loss, features = self.adversarial_loss(batch)
            self._step(loss, main, identity)
        else:
            with self.toggled_optimizer(main):  # W_i frozen
                loss, emotion_loss, features = self.adversarial_loss(batch)
                self._step(loss, main)
        self._watch(loss, features)
        # Logged once per epoch (on_train_epoch_end): a self.log call per step costs ~1.7 ms on CPU.
        self.train_emotion_loss.update(emotion_loss.detach(), len(batch["emotion"]))
        self.train_loss.update(loss.detach(), len(batch["emotion"]))

    def _step(self, loss: torch.Tensor, *optimizers: torch.optim.Optimizer) -> None:
        for optimizer in optimizers:
            optimizer.zero_grad()
        self.manual_backward(loss)
        for optimizer in optimizers:
            optimizer.step()

    def restart_identity_heads(self, optimizer: torch.optim.Optimizer) -> None:
        """Fresh weights for every identity head, and a fresh state in their ``optimizer``."""
        for module in self.identity_heads.modules():
            if isinstance(module, nn.Linear):
                module.reset_parameters()
        optimizer.state.clear()

    def refit_identity_head(self, features: torch.Tensor, labels: dict[str, torch.Tensor], round_: int) -> None:
        """Step 6 of Algorithm 1: W_c and W_e frozen, W_i fitted to Li on cached features (with
        their ``identity`` and ``source`` labels), under the Trainer's precision (its autocast, as
        in the training steps)."""
        _, identity = self.optimizers()
        generator = torch.Generator().manual_seed(self.hparams.seed * 100_003 + round_)
        batch_size = self.trainer.datamodule.batch_size
        identities, sources = labels["identity"].to(self.device), labels["source"].to(self.device)
        with self.toggled_optimizer(identity):
            for _ in range(self.schedule.refit_epochs):
                for batch in torch.randperm(len(features), generator=generator).split(batch_size):
                    with self.trainer.precision_plugin.forward_context():
                        loss = self.identity_loss(features[batch], identities[batch], sources[batch])
                    self._step(loss, identity)

    def on_train_epoch_end(self) -> None:
        self.log_dict({"train/emotion_loss": self.train_emotion_loss.compute(), "train/loss": self.train_loss.compute()})
        self.train_emotion_loss.reset()
        self.train_loss.reset()
        phase = self.schedule.phase(self.current_epoch)
        self._check_divergence(phase)
        if not phase.ends_round:
            return
        started = time.perf_counter()
        data = self.trainer.datamodule
        bf16 = str(self.trainer.precision).startswith("bf16")
        sides = {
            name: (extract_features(self.base, data.side(name).tensors["image"], bf16), data.side(name).tensors)
            for name in ("train", "val")
        }
        metrics = {}
        for name, (features, labels) in sides.items():
            metrics |= self.round_accuracies(features, labels, name)
        train_features, train_labels = sides["train"]
        metrics["round/feature_scale"] = train_features.abs().mean().item()
        if phase.kind == "init":
            self.reference_scale = metrics["round/feature_scale"]
        else:
            if self.adversary.restarts_before_refit(phase.round):
                self.restart_identity_heads(self.optimizers()[1].optimizer)
            if self.adversary.standardise:
                sets = (self.half_sets(train_labels["source"].to(self.device)) if self.adversary.cross_fit
                        else [(self.identity_heads, slice(None), None)])
                for heads, learns, _ in sets:
                    for head in heads:
                        head.set_input_statistics(train_features[learns])
            self.refit_identity_head(train_features, train_labels, phase.round)
            for name, (features, labels) in sides.items():
                refitted = self.round_accuracies(features, labels, name)[f"round/identity_acc/{name}"]
                metrics[f"round/refit_identity_acc/{name}"] = refitted
        if phase.round:
            metrics["round/beta"] = self.round_beta
            self._guard_emotion(metrics["round/emotion_acc/train"], phase.round)
        self.history.append({"round": phase.round, **metrics})
        self.round_end_seconds += time.perf_counter() - started
        log.info(
            "round %d/%d: emotion head %.1f%% val, identity %.1f%% val (strongest head%s), feature scale %.3g",
            phase.round, self.schedule.rounds, metrics["round/emotion_acc/val"],
            metrics.get("round/refit_identity_acc/val", metrics["round/identity_acc/val"]),
            ", re-fitted" if phase.round else "", metrics["round/feature_scale"],
        )
        if self.logger is not None:
            self.logger.log_metrics(metrics, step=phase.round)

    def _guard_emotion(self, emotion_acc: float, round_: int) -> None:
        """Set the next round's adversarial weight (``emotion_guard``). At a large beta the
        adversary can take emotion with identity: on some folds the emotion head's training
        accuracy fell from ~88% to ~35% within three rounds and never came back."""
        guard = self.hparams.emotion_guard
        if not guard:
            return
        floor = self.history[0]["round/emotion_acc/train"] - guard
        beta = guarded_beta(self.round_beta, self.beta, emotion_acc, floor)
        if beta < self.round_beta:
            log.info("round %d: emotion head %.1f%% on the training side, under its floor of %.1f%% "
                     "(model.emotion_guard=%g): beta %.3g -> %.3g", round_, emotion_acc, floor, guard, self.round_beta, beta)
        self.round_beta = beta

    # What a resumed run needs besides weights and optimizer states (see anonemo.resume).
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["hybrid"] = {"history": self.history, "reference_scale": self.reference_scale, "round_beta": self.round_beta}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint["hybrid"]["history"])
        self.reference_scale = checkpoint["hybrid"]["reference_scale"]
        self.round_beta = checkpoint["hybrid"]["round_beta"]

    def round_accuracies(self, features: torch.Tensor, labels: dict[str, torch.Tensor], side: str) -> dict[str, float]:
        """Accuracy of the emotion head and of the strongest identity head on one side."""
        logits = self.head_logits(features)
        return {
            f"round/emotion_acc/{side}": accuracy(logits["emotion"].argmax(1), labels["emotion"]),
            f"round/identity_acc/{side}": max(
                accuracy(head.argmax(1), labels["identity"]) for head in logits["identity_heads"]
            ),
        }

    @torch.no_grad()
    def head_logits(self, features: torch.Tensor) -> dict:
        """The current heads' logits (eval mode) on cached features: ``emotion``, ``identity``
        (W_i, the first identity head) and ``identity_heads`` (all of them)."""
        was_training = self.training
        self.eval()
        logits = {
            "emotion": self.emotion_head(features),
            "identity_heads": self.identity_logits(features),
        }
        logits["identity"] = logits["identity_heads"][0]  # W_i: the first configured head
        self.train(was_training)
        return logits

    # Divergence guard. -beta*Li is unbounded below: the base can "win" by inflating the identity
    # logits instead of removing identity. The watch accumulates on-device (no per-step host sync)
    # and is checked once per epoch.
    def _reset_watch(self) -> None:
        self._nonfinite = torch.zeros((), dtype=torch.bool)
        self._max_scale = torch.zeros(())

    def _watch(self, loss: torch.Tensor, features: torch.Tensor) -> None:
        self._nonfinite = self._nonfinite.to(loss.device) | ~torch.isfinite(loss.detach())
        self._max_scale = torch.maximum(self._max_scale.to(loss.device), features.detach().abs().mean().float())

    def _check_divergence(self, phase: Phase) -> None:
        nonfinite, scale = bool(self._nonfinite), float(self._max_scale)
        self._reset_watch()
        limit = self.hparams.max_feature_growth
        if nonfinite or not torch.isfinite(torch.tensor(scale)):
            reason = "the loss became NaN or infinite"
        elif self.reference_scale and scale > limit * self.reference_scale:
            reason = (
                f"the base's mean activation grew to {scale:.3g}, over model.max_feature_growth={limit:g} "
                f"times its {self.reference_scale:.3g} after initialisation"
            )
        else:
            return
        where = "the multi-task initialisation" if phase.kind == "init" else f"round {phase.round} of {self.schedule.rounds}"
        hp = self.hparams
        raise TrainingDivergedError(
            f"Hybrid training diverged in {where} (model.alpha={hp.alpha}, model.beta={hp.beta}, "
            f"model.lr={hp.lr}, model.identity_lr={hp.identity_lr}): {reason}. The adversarial term "
            "-beta*Li is unbounded below, so the base can inflate the identity logits instead of "
            "removing identity. Lower model.beta or model.lr, or use fewer model.rounds. Metrics of "
            "the rounds before are kept in the MLflow run, which is marked FAILED."
        )
