"""The paper's Hybrid model, trained by Algorithm 1 (adversarial learning for anonymity)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from anonemo.dropout_ahead import fit_steps
from anonemo.errors import AnonemoError, ConfigError
from anonemo.evaluation import accuracy
from anonemo.metrics import EMOTION_ACC, EXPECTED_EMOTION, IDENTITY_ACC, ROUND_BUDGET_SLACK, round_curve
from anonemo.models.adversary import Adversary, reverse_gradient
from anonemo.models.budget import EmotionBudget, expected_accuracy
from anonemo.models.classifiers import EpochMean
from anonemo.models.networks import ClassifierHead, ConvBase
from anonemo.optim import Optimizer

log = logging.getLogger(__name__)


class TrainingDivergedError(AnonemoError):
    """The adversarial objective ran away (non-finite loss or exploding activations)."""


@dataclass(frozen=True)
class Phase:
    kind: str  # "init" (multi-task, eq. 1) or "adversarial" (eq. 2, W_i frozen)
    round: int  # 0 during initialisation, t during round t
    ends_round: bool  # last epoch of the block: the re-fit of W_i (t >= 1) and evaluation follow


@dataclass
class HybridSchedule:
    """Algorithm 1 laid out over training epochs: the one place that says which phase is when.

    ========================================  =============================================
    epochs                                    what runs
    ========================================  =============================================
    0 .. init_end-1                           multi-task init: min over W_c, W_e, W_i of
                                              Le + alpha*Li; round 0 is evaluated after it
    then, for round t = 1 .. rounds:
      one epoch                               W_i frozen: min over W_c, W_e of Le - beta*Li
      at its end                              W_c, W_e frozen: W_i re-fitted on Li for
                                              refit_epochs passes over cached features;
                                              round t is evaluated
    ========================================  =============================================

    The initialisation runs ``init_epochs`` epochs, or, with ``max_init_epochs``, from
    ``init_epochs`` up to ``max_init_epochs`` until :meth:`end_initialisation` ends it.
    """

    init_epochs: int
    rounds: int
    refit_epochs: int = 5
    max_init_epochs: int | None = None
    init_end: int = field(init=False)  # the number of initialisation epochs, once known

    def __post_init__(self) -> None:
        for option, minimum in (("init_epochs", 1), ("rounds", 1), ("refit_epochs", 1),
                                ("max_init_epochs", self.init_epochs)):
            value = getattr(self, option)
            if value is not None and value < minimum:
                raise ConfigError(f"model.{option}={value} must be at least {minimum}.")
        self.init_end = self.max_init_epochs or self.init_epochs

    @property
    def total_epochs(self) -> int:
        """The most epochs training may take (fewer when the initialisation ends early)."""
        return (self.max_init_epochs or self.init_epochs) + self.rounds

    def may_end_initialisation(self, epoch: int) -> bool:
        """Whether the initialisation may end after ``epoch``: it ran its ``init_epochs`` and is still running."""
        return self.init_epochs - 1 <= epoch < self.init_end - 1

    def end_initialisation(self, epoch: int) -> None:
        """The initialisation ends after ``epoch``; the rounds follow."""
        if not self.may_end_initialisation(epoch):
            raise ValueError(f"the initialisation cannot end after epoch {epoch} (init_epochs={self.init_epochs}, "
                             f"ends after {self.init_end - 1})")
        self.init_end = epoch + 1

    def phase(self, epoch: int) -> Phase:
        if epoch < self.init_end:
            return Phase("init", 0, epoch == self.init_end - 1)
        return Phase("adversarial", epoch - self.init_end + 1, True)


@dataclass(frozen=True)
class HybridSettings:
    """Algorithm 1's options as the model config states them (``conf/model/hybrid.yaml`` holds
    every default): what the Hybrid recipe receives and its module is built with, checked here once."""

    adversary: Adversary
    optimizer: Optimizer  # W_c and W_e
    identity_optimizer: Optimizer  # W_i
    alpha: float  # weight of Li in the multi-task initialisation (eq. 1)
    beta: float  # weight of the adversarial identity term (eq. 2); the first round's under a budget
    init_epochs: int
    max_init_epochs: int  # with max_emotion_loss: the initialisation goes on while its validation emotion rises
    rounds: int
    refit_epochs: int
    emotion_guard: float  # not used under a budget
    max_emotion_loss: float | None  # points of emotion beta may cost; None: fixed beta
    max_feature_growth: float

    def __post_init__(self) -> None:
        for option in ("alpha", "beta"):
            if getattr(self, option) < 0:
                raise ConfigError(f"model.{option}={getattr(self, option)} must be non-negative (the paper uses alpha=0.5, beta=1).")
        if not 0 <= self.emotion_guard <= 100:
            raise ConfigError(f"model.emotion_guard={self.emotion_guard} must be between 0 (off) and 100 accuracy points.")
        if self.max_feature_growth <= 0:
            raise ConfigError(f"model.max_feature_growth={self.max_feature_growth} must be positive (default 1000).")
        self.schedule()
        self.budget()

    def schedule(self) -> HybridSchedule:
        """A fresh schedule: the initialisation's length is decided during training."""
        return HybridSchedule(self.init_epochs, self.rounds, self.refit_epochs,
                              max_init_epochs=None if self.max_emotion_loss is None else self.max_init_epochs)

    def budget(self) -> EmotionBudget | None:
        return None if self.max_emotion_loss is None else EmotionBudget(self.max_emotion_loss)


def guarded_beta(beta: float, ceiling: float, emotion_acc: float, floor: float) -> float:
    """The emotion guard's step: the adversarial weight for the next round. Halved when the emotion
    head's training-side accuracy (%) fell below ``floor``, else grown by a quarter, up to
    ``ceiling`` (model.beta): the adversary backs off while emotion is being lost, not for good."""
    return beta / 2 if emotion_acc < floor else min(ceiling, beta * 1.25)


class HybridModule(pl.LightningModule):
    """Shared base W_c, emotion head W_e and identity head(s) W_i, trained by Algorithm 1.

    Manual optimisation with two optimizers: ``main`` over W_c and W_e (built by ``optimizer``),
    ``identity`` over W_i (``identity_optimizer``). The identity heads are "frozen" during
    adversarial steps by toggling the ``main`` optimizer, which stops their weights from changing
    while they still pass gradients back to W_c. What the base is trained against is
    :class:`~anonemo.models.adversary.Adversary`. With ``objective="grl"`` the adversarial epochs
    update both optimizers in one pass instead.

    Step 6 of Algorithm 1, the re-fit of W_i on the frozen base's features after each round, is
    :meth:`refit_identity_heads`; :class:`~anonemo.models.rounds.RoundEnd` calls it with the
    features it extracts, and hands back what the module keeps of each round (:meth:`end_round`).

    With ``emotion_guard`` > 0 the adversarial weight of each round is ``guarded_beta`` of the one
    before: it backs off while the emotion head's training-side accuracy is more than
    ``emotion_guard`` points below its value after initialisation (``round/beta`` logs it). Until
    that happens, training is exactly that of a fixed ``beta``.

    With ``max_emotion_loss`` set, after each round its budget sets the next round's beta from the
    validation emotion against the initialisation's (:class:`~anonemo.models.budget.EmotionBudget`);
    ``beta`` is the first round's and the guard is not used. Every option comes from
    :class:`HybridSettings`, as the recipe received them from the model config.
    """

    def __init__(
        self,
        base: ConvBase,
        emotion_head: ClassifierHead,
        identity_heads: Sequence[ClassifierHead],
        settings: HybridSettings,
        refit_batch_size: int,
        seed: int,
    ):
        super().__init__()
        self.automatic_optimization = False
        self.base, self.emotion_head = base, emotion_head
        self.identity_heads = nn.ModuleList(identity_heads)
        self.schedule, self.adversary, self.budget = settings.schedule(), settings.adversary, settings.budget()
        self.make_optimizer, self.make_identity_optimizer = settings.optimizer, settings.identity_optimizer
        self.alpha, self.beta = settings.alpha, settings.beta
        self.emotion_guard = 0.0 if self.budget is not None else settings.emotion_guard
        self.max_feature_growth = settings.max_feature_growth
        self.refit_batch_size, self.seed = refit_batch_size, seed
        self.round_beta = self.beta  # the adversarial weight of the current round (see emotion_guard)
        self.train_emotion_loss, self.train_loss = EpochMean(), EpochMean()
        self.reference_scale: float | None = None  # mean |W_c features| after initialisation
        self.initial_emotion_acc: float | None = None  # the emotion head's, after initialisation
        self.within_budget: tuple[int, dict[str, torch.Tensor]] | None = None  # the last round within it, its weights
        self.last_slack = 0.0
        self._reset_watch()

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        main = self.make_optimizer([*self.base.parameters(), *self.emotion_head.parameters()])
        return [main, self.make_identity_optimizer(self.identity_heads.parameters())]

    def identity_logits(self, features: torch.Tensor) -> list[torch.Tensor]:
        """Every identity head's logits. With ``adversary.standardise`` the heads read the features
        standardised per feature with the training side's statistics of the last re-fit, as the
        audit's attackers read them; the base's gradient passes through the standardisation."""
        return [head(features) for head in self.identity_heads]

    def identity_loss(self, features: torch.Tensor, identities: torch.Tensor) -> torch.Tensor:
        """Li: the identity heads' mean cross-entropy."""
        return torch.stack([F.cross_entropy(logits, identities) for logits in self.identity_logits(features)]).mean()

    def losses(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Le, Li, features) of one batch through the current W_c, W_e and W_i."""
        features = self.base(batch["image"])
        emotion_loss = F.cross_entropy(self.emotion_head(features), batch["emotion"])
        return emotion_loss, self.identity_loss(features, batch["identity"]), features

    def adversarial_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, Le, features) of an adversarial step: eq. (2) with the configured adversary.

        For ``grl`` the loss also trains the identity heads: their input passes through a
        gradient reversal, so the base receives ``-beta`` times the heads' gradient.
        """
        features = self.base(batch["image"])
        emotion_loss = F.cross_entropy(self.emotion_head(features), batch["emotion"])
        adversary, identities = self.adversary, batch["identity"]
        if adversary.objective == "grl":
            reversed_features = reverse_gradient(features, self.round_beta)
            loss = emotion_loss + adversary.penalty(self.identity_logits(reversed_features), identities)
        else:
            loss = emotion_loss + self.round_beta * adversary.penalty(self.identity_logits(features), identities)
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
        # Logged once per epoch (on_train_epoch_end), as ClassifierModule does (docs/performance.md).
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

    def refit_identity_heads(self, features: torch.Tensor, identities: torch.Tensor, round_: int,
                             helper_thread: bool = False) -> None:
        """Step 6 of Algorithm 1: W_c and W_e frozen, W_i fitted to Li on the training side's cached
        ``features``, under the Trainer's precision (its autocast, as in the training steps); first
        restarted (``adversary.restart_every``) and given the features' statistics
        (``adversary.standardise``). The heads' dropout masks are drawn ahead, on a helper thread
        if ``helper_thread`` (:func:`~anonemo.dropout_ahead.fit_steps`: the same masks)."""
        _, identity = self.optimizers()
        if self.adversary.restarts_before_refit(round_):
            self.restart_identity_heads(identity.optimizer)
        if self.adversary.standardise:
            for head in self.identity_heads:
                head.set_input_statistics(features)
        generator = torch.Generator().manual_seed(self.seed * 100_003 + round_)
        identities = identities.to(self.device)
        batches = [batch for _ in range(self.schedule.refit_epochs)
                   for batch in torch.randperm(len(features), generator=generator).split(self.refit_batch_size)]

        def loss_of(batch: torch.Tensor) -> torch.Tensor:
            with self.trainer.precision_plugin.forward_context():
                return self.identity_loss(features[batch], identities[batch])

        # The torch optimizer itself: Lightning's per-step hooks cost more than a step of these heads.
        with self.toggled_optimizer(identity):
            fit_steps(self.identity_heads, loss_of, batches, identity.optimizer, helper_thread)

    def end_round(self, round_: int, feature_scale: float, emotion: dict[str, float]) -> dict[str, float]:
        """What the algorithm keeps of a round's measurements: after the initialisation (round 0) the
        base's feature scale (for the divergence check) and the emotion head's training-side
        accuracy ``emotion["train"]`` (the guard's reference); after round t >= 1 the guard sets the
        next round's beta. With a budget, the budget sets it from ``emotion`` (its reading of the
        emotion head on each side) after every round; returns what the budget logs of the round."""
        emotion_acc = emotion["train"]
        if round_ == 0:
            self.reference_scale, self.initial_emotion_acc = feature_scale, emotion_acc
        if self.budget is not None:
            self.round_beta, constraint = self.budget.step(round_, self.round_beta, emotion)
            self.last_slack = constraint[ROUND_BUDGET_SLACK]
            if self.last_slack >= 0:
                self.within_budget = (round_, {k: v.detach().clone() for k, v in self.state_dict().items()})
            return constraint
        if round_ == 0 or not self.emotion_guard:
            return {}
        # At a large beta the adversary can take emotion with identity (docs/results.md, "The emotion guard").
        floor = self.initial_emotion_acc - self.emotion_guard
        beta = guarded_beta(self.round_beta, self.beta, emotion_acc, floor)
        if beta < self.round_beta:
            log.info("round %d: emotion head %.1f%% on the training side, under its floor of %.1f%% "
                     "(model.emotion_guard=%g): beta %.3g -> %.3g", round_, emotion_acc, floor, self.emotion_guard,
                     self.round_beta, beta)
        self.round_beta = beta
        return {}

    def restore_within_budget(self) -> int:
        """With a budget: the round whose weights the model ends with. When the last round overspent
        the budget, the weights go back to those of the last round within it."""
        rounds = self.schedule.rounds
        if self.last_slack >= 0 or self.within_budget is None:
            return rounds
        round_, state = self.within_budget
        self.load_state_dict(state)
        log.info("The last round overspent the emotion budget (slack %.2f points): the model is that of round %d "
                 "of %d, the last within it", self.last_slack, round_, rounds)
        return round_

    def on_train_epoch_end(self) -> None:
        self.log_dict({"train/emotion_loss": self.train_emotion_loss.compute(), "train/loss": self.train_loss.compute()})
        self.train_emotion_loss.reset()
        self.train_loss.reset()

    # What a resumed run needs besides weights and optimizer states (see anonemo.resume).
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["hybrid"] = {"reference_scale": self.reference_scale, "initial_emotion_acc": self.initial_emotion_acc,
                                "round_beta": self.round_beta, "init_end": self.schedule.init_end,
                                "budget": None if self.budget is None else self.budget.state_dict(),
                                "within_budget": self.within_budget, "last_slack": self.last_slack}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["hybrid"]
        self.reference_scale, self.initial_emotion_acc = state["reference_scale"], state["initial_emotion_acc"]
        self.round_beta, self.schedule.init_end = state["round_beta"], state["init_end"]
        if self.budget is not None:
            self.budget.load_state_dict(state["budget"])
            self.within_budget, self.last_slack = state["within_budget"], state["last_slack"]

    def round_accuracies(self, features: torch.Tensor, labels: dict[str, torch.Tensor], side: str) -> dict[str, float]:
        """Accuracy (and expected accuracy) of the emotion head and accuracy of the strongest identity
        head on one side."""
        logits = self.head_logits(features)
        return {
            round_curve(EMOTION_ACC, side): accuracy(logits["emotion"].argmax(1), labels["emotion"]),
            round_curve(EXPECTED_EMOTION, side): expected_accuracy(logits["emotion"], labels["emotion"]),
            round_curve(IDENTITY_ACC, side): max(
                accuracy(head.argmax(1), labels["identity"]) for head in logits["identity_heads"]
            ),
        }

    @torch.no_grad()
    def head_logits(self, features: torch.Tensor) -> dict:
        """The current heads' logits (eval mode) on cached features: ``emotion`` and
        ``identity_heads`` (all of them; the first is W_i)."""
        was_training = self.training
        self.eval()
        logits = {"emotion": self.emotion_head(features), "identity_heads": self.identity_logits(features)}
        self.train(was_training)
        return logits

    # Divergence guard. -beta*Li is unbounded below: the base can "win" by inflating the identity
    # logits instead of removing identity. The watch accumulates on-device (no per-step host sync)
    # and is checked once per epoch, by the round end (RoundEnd.on_train_epoch_end), before it scores the epoch.
    def _reset_watch(self) -> None:
        self._nonfinite = torch.zeros((), dtype=torch.bool)
        self._max_scale = torch.zeros(())

    def _watch(self, loss: torch.Tensor, features: torch.Tensor) -> None:
        self._nonfinite = self._nonfinite.to(loss.device) | ~torch.isfinite(loss.detach())
        self._max_scale = torch.maximum(self._max_scale.to(loss.device), features.detach().abs().mean().float())

    def check_divergence(self, phase: Phase) -> None:
        """Raise :class:`TrainingDivergedError` if this epoch's steps ran away; once per epoch (the
        watch starts afresh)."""
        nonfinite, scale = bool(self._nonfinite), float(self._max_scale)
        self._reset_watch()
        limit = self.max_feature_growth
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
        raise TrainingDivergedError(
            f"Hybrid training diverged in {where} (model.alpha={self.alpha}, model.beta={self.beta}): {reason}. "
            "The adversarial term -beta*Li is unbounded below, so the base can inflate the identity logits instead "
            "of removing identity. Lower model.beta or model.optimizer.lr, or use fewer model.rounds. Metrics of "
            "the rounds before are kept in the MLflow run, which is marked FAILED."
        )
