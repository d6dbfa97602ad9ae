"""The paper's Hybrid model, trained by Algorithm 1 (adversarial learning for anonymity)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from anonemo.data.features import extract_features
from anonemo.errors import AnonemoError, ConfigError
from anonemo.evaluation import accuracy
from anonemo.models.networks import ClassifierHead, ConvBase


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


class HybridModule(pl.LightningModule):
    """Shared base W_c, emotion head W_e and identity head W_i, trained by Algorithm 1.

    Manual optimisation with two optimizers: ``main`` over W_c and W_e, ``identity`` over W_i.
    The identity head is "frozen" during adversarial steps by toggling the ``main`` optimizer,
    which stops its weights from changing while it still passes gradients back to W_c.

    After every round the current heads are scored on the training and validation sides, the
    re-fitted W_i too, and logged with the round as the MLflow step; ``history`` keeps them.
    """

    def __init__(
        self,
        num_emotions: int,
        num_subjects: int,
        image_size: int,
        schedule: HybridSchedule,
        alpha: float = 0.5,
        beta: float = 1.0,
        conv_channels: Sequence[int] = (16, 32, 64),
        fc_hidden: Sequence[int] = (256, 128),
        dropout: float = 0.3,
        lr: float = 1e-3,
        identity_lr: float = 1e-3,
        weight_decay: float = 1e-4,
        channels_last: bool = True,
        max_feature_growth: float = 1000.0,
        seed: int = 0,
    ):
        super().__init__()
        for option, value in (("alpha", alpha), ("beta", beta)):
            if value < 0:
                raise ConfigError(f"model.{option}={value} must be non-negative (the paper uses alpha=0.5, beta=1).")
        if max_feature_growth <= 0:
            raise ConfigError(f"model.max_feature_growth={max_feature_growth} must be positive (default 1000).")
        self.save_hyperparameters(ignore=["schedule"], logger=False)
        self.automatic_optimization = False
        self.schedule = schedule
        self.alpha, self.beta = alpha, beta
        self.base = ConvBase(image_size, conv_channels, channels_last=channels_last)
        self.emotion_head = ClassifierHead(self.base.out_features, num_emotions, fc_hidden, dropout)
        self.identity_head = ClassifierHead(self.base.out_features, num_subjects, fc_hidden, dropout)
        self.history: list[dict[str, float]] = []
        self.reference_scale: float | None = None  # mean |W_c features| after initialisation
        self._reset_watch()

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        hp = self.hparams
        main = torch.optim.Adam(
            [*self.base.parameters(), *self.emotion_head.parameters()], lr=hp.lr, weight_decay=hp.weight_decay
        )
        identity = torch.optim.Adam(self.identity_head.parameters(), lr=hp.identity_lr, weight_decay=hp.weight_decay)
        return [main, identity]

    def losses(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Le, Li, features) of one batch through the current W_c, W_e and W_i."""
        features = self.base(batch["image"])
        emotion_loss = F.cross_entropy(self.emotion_head(features), batch["emotion"])
        identity_loss = F.cross_entropy(self.identity_head(features), batch["identity"])
        return emotion_loss, identity_loss, features

    def adversarial_objective(self, emotion_loss: torch.Tensor, identity_loss: torch.Tensor) -> torch.Tensor:
        """Eq. (2): W_c and W_e keep emotion and push the frozen identity head's loss up."""
        return emotion_loss - self.beta * identity_loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        phase = self.schedule.phase(self.current_epoch)
        main, identity = self.optimizers()
        if phase.kind == "init":
            emotion_loss, identity_loss, features = self.losses(batch)
            loss = emotion_loss + self.alpha * identity_loss  # eq. (1)
            main.zero_grad()
            identity.zero_grad()
            self.manual_backward(loss)
            main.step()
            identity.step()
        else:
            with self.toggled_optimizer(main):  # W_i frozen
                emotion_loss, identity_loss, features = self.losses(batch)
                loss = self.adversarial_objective(emotion_loss, identity_loss)
                main.zero_grad()
                self.manual_backward(loss)
                main.step()
        self._watch(loss, features)
        size = len(batch["emotion"])
        self.log("train/emotion_loss", emotion_loss, on_step=False, on_epoch=True, batch_size=size)
        self.log("train/identity_loss", identity_loss, on_step=False, on_epoch=True, batch_size=size)

    def refit_identity_head(self, features: torch.Tensor, identities: torch.Tensor, round_: int) -> None:
        """Step 6 of Algorithm 1: W_c and W_e frozen, W_i fitted to Li on cached features."""
        _, identity = self.optimizers()
        generator = torch.Generator().manual_seed(self.hparams.seed * 100_003 + round_)
        batch_size = self.trainer.datamodule.batch_size
        with self.toggled_optimizer(identity):
            for _ in range(self.schedule.refit_epochs):
                for batch in torch.randperm(len(features), generator=generator).split(batch_size):
                    loss = F.cross_entropy(self.identity_head(features[batch]), identities[batch])
                    identity.zero_grad()
                    self.manual_backward(loss)
                    identity.step()

    def on_train_epoch_end(self) -> None:
        phase = self.schedule.phase(self.current_epoch)
        self._check_divergence(phase)
        if not phase.ends_round:
            return
        data = self.trainer.datamodule
        bf16 = str(self.trainer.precision).startswith("bf16")
        sides = {
            name: (extract_features(self.base, data.side(name).tensors["image"], bf16), data.side(name).tensors)
            for name in ("train", "val")
        }
        metrics = {}
        for name, (features, labels) in sides.items():
            logits = self.head_logits(features)
            for task in ("emotion", "identity"):
                metrics[f"round/{task}_acc/{name}"] = accuracy(logits[task].argmax(1), labels[task])
        train_features, train_labels = sides["train"]
        metrics["round/feature_scale"] = train_features.abs().mean().item()
        if phase.kind == "init":
            self.reference_scale = metrics["round/feature_scale"]
        else:
            self.refit_identity_head(train_features, train_labels["identity"].to(self.device), phase.round)
            for name, (features, labels) in sides.items():
                refitted = self.head_logits(features)["identity"]
                metrics[f"round/refit_identity_acc/{name}"] = accuracy(refitted.argmax(1), labels["identity"])
        self.history.append({"round": phase.round, **metrics})
        if self.logger is not None:
            self.logger.log_metrics(metrics, step=phase.round)

    @torch.no_grad()
    def head_logits(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """The current heads' logits (eval mode) on cached features."""
        was_training = self.training
        self.eval()
        logits = {"emotion": self.emotion_head(features), "identity": self.identity_head(features)}
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
