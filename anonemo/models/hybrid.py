"""The Hybrid model and Algorithm 1, for every in-training privacy method.

The paper's Hybrid is a shared conv base W_c with an emotion head W_e and an identity head W_i,
trained by Algorithm 1: a multi-task initialisation, then rounds of adversarial steps that make
the base pay for identity, each followed by a re-fit of W_i on the frozen base. Here what the base
pays is a method's privacy term (:mod:`anonemo.models.privacy`: the paper's adversary, gradient
reversal, MaxEnt-ARL, HSIC), and its weight β is set by a controller (:mod:`anonemo.models.weight`:
fixed, the emotion guard, the emotion budget). Both players' steps are in
:meth:`HybridModule.training_step`; everything at a round's boundary (the re-fit, the controller's
step, keeping the last round within a budget) in :meth:`HybridModule.end_epoch`, top to bottom.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from anonemo.data.features import is_bf16
from anonemo.dropout_ahead import fit_with_masks_ahead
from anonemo.errors import AnonemoError, ConfigError
from anonemo.metrics import ROUND_BETA, ROUND_FEATURE_SCALE, ROUND_TIMES
from anonemo.models.classifiers import EpochMean
from anonemo.models.networks import ClassifierHead, ConvBase
from anonemo.models.privacy.term import HeadTraining, PrivacyTerm, identity_loss
from anonemo.models.rounds import RoundRecorder
from anonemo.models.weight import REFERENCE_EPOCHS, Weight, check_weight, weight_controller
from anonemo.optim import Optimizer
from anonemo.threads import one_thread

log = logging.getLogger(__name__)


class TrainingDivergedError(AnonemoError):
    """The adversarial objective ran away (non-finite loss or exploding activations)."""


@dataclass(frozen=True)
class Phase:
    kind: str  # "init" (multi-task, eq. 1) or "adversarial" (eq. 2)
    round: int  # 0 during initialisation, t during round t
    ends_round: bool  # last epoch of the block: the round's end follows (end_epoch)


@dataclass(frozen=True)
class HybridSchedule:
    """Algorithm 1 laid out over training epochs.

    ========================================  =============================================
    epochs                                    what runs
    ========================================  =============================================
    0 .. init_end-1                           multi-task init: min over W_c, W_e, W_i of
                                              Le + alpha*Li; round 0 is evaluated after it
    then, for round t = 1 .. rounds:
      one epoch                               min over W_c, W_e of Le + beta*(privacy term)
      at its end                              the re-fit of W_i (a refitted adversary), the
                                              weight's step; round t is evaluated
    ========================================  =============================================

    The initialisation runs ``init_epochs`` epochs, or, with ``max_init_epochs`` (a controller
    that reads the initialisation), from ``init_epochs`` up to ``max_init_epochs``: ``init_end``,
    the module's, says where it ended.
    """

    init_epochs: int
    rounds: int
    max_init_epochs: int | None = None

    def __post_init__(self) -> None:
        for option, minimum in (("init_epochs", 1), ("rounds", 1), ("max_init_epochs", self.init_epochs)):
            value = getattr(self, option)
            if value is not None and value < minimum:
                raise ConfigError(f"model.{option}={value} must be at least {minimum}.")

    @property
    def longest_initialisation(self) -> int:
        return self.max_init_epochs or self.init_epochs

    @property
    def total_epochs(self) -> int:
        """The most epochs training may take (fewer when the initialisation ends early)."""
        return self.longest_initialisation + self.rounds

    def may_end_initialisation(self, epoch: int, init_end: int) -> bool:
        """Whether the initialisation may end after ``epoch``: it ran its ``init_epochs`` and is still running."""
        return self.init_epochs - 1 <= epoch < init_end - 1

    @staticmethod
    def phase(epoch: int, init_end: int) -> Phase:
        if epoch < init_end:
            return Phase("init", 0, epoch == init_end - 1)
        return Phase("adversarial", epoch - init_end + 1, True)


@dataclass(frozen=True)
class HybridSettings:
    """A method's options as the model config states them (``conf/model/hybrid.yaml`` holds every
    default): what the Hybrid recipe receives and its module is built with, checked here once."""

    privacy: PrivacyTerm  # what the base pays for identity (model.privacy)
    optimizer: Optimizer  # W_c and W_e
    identity_optimizer: Optimizer  # the privacy term's identity heads, if any
    alpha: float  # weight of Li in the multi-task initialisation (eq. 1)
    beta: float  # weight of the privacy term; the first round's under a budget
    init_epochs: int
    max_init_epochs: int  # with max_emotion_loss: the initialisation goes on while its validation emotion rises
    rounds: int
    emotion_guard: float  # points; 0: off (not used under a budget)
    max_emotion_loss: float | None  # points of emotion beta may cost; None: no budget
    max_feature_growth: float

    def __post_init__(self) -> None:
        if self.alpha < 0:
            raise ConfigError(f"model.alpha={self.alpha} must be non-negative (the paper uses alpha=0.5).")
        if self.max_feature_growth <= 0:
            raise ConfigError(f"model.max_feature_growth={self.max_feature_growth} must be positive (default 1000).")
        check_weight(self.beta, self.emotion_guard, self.max_emotion_loss)
        HybridSchedule(self.init_epochs, self.rounds, self.max_init_epochs)

    def weight(self) -> Weight:
        """A fresh controller of β: the one object that carries it from the config to every step."""
        return weight_controller(self.beta, self.emotion_guard, self.max_emotion_loss)

    def schedule(self, weight: Weight) -> HybridSchedule:
        """The epochs: the initialisation runs until its plateau only for a controller that reads it."""
        return HybridSchedule(self.init_epochs, self.rounds,
                              self.max_init_epochs if weight.reads_initialisation else None)


class HybridModule(pl.LightningModule):
    """Shared base W_c, emotion head W_e and the privacy term's identity heads W_i (none for a
    dependence penalty), trained by Algorithm 1.

    Manual optimisation with two optimizers, as in Lightning's GAN example: ``main`` over W_c and
    W_e, ``identity`` over the identity heads. What the base pays for identity is ``settings.privacy``,
    weighted by ``self.weight.beta``; how the heads learn identity in the rounds is the term's
    :class:`~anonemo.models.privacy.term.HeadTraining`. A head that is "frozen" during the base's
    step still passes gradients back to W_c: the ``main`` optimizer is toggled, which stops only
    their weights from changing.

    ``rounds`` extracts and scores each round's features and keeps the curves
    (:class:`~anonemo.models.rounds.RoundRecorder`); it measures, it decides nothing.
    """

    def __init__(
        self,
        base: ConvBase,
        emotion_head: ClassifierHead,
        identity_heads: list[ClassifierHead],
        settings: HybridSettings,
        rounds: RoundRecorder,
        refit_batch_size: int,
        seed: int,
    ):
        super().__init__()
        self.automatic_optimization = False
        self.base, self.emotion_head = base, emotion_head
        self.identity_heads = nn.ModuleList(identity_heads)
        self.privacy, self.weight = settings.privacy, settings.weight()
        self.schedule = settings.schedule(self.weight)
        self.init_end = self.schedule.longest_initialisation  # where the initialisation ends, once known
        self.make_optimizer, self.make_identity_optimizer = settings.optimizer, settings.identity_optimizer
        self.alpha, self.max_feature_growth = settings.alpha, settings.max_feature_growth
        self.rounds, self.refit_batch_size, self.seed = rounds, refit_batch_size, seed
        self.train_emotion_loss, self.train_loss = EpochMean(), EpochMean()
        self.reference_scale: float | None = None  # mean |W_c features| after initialisation
        self.kept_round: tuple[int, dict[str, torch.Tensor]] | None = None  # a constrained weight's last kept round
        self._reset_watch()

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        main = self.make_optimizer([*self.base.parameters(), *self.emotion_head.parameters()])
        if not len(self.identity_heads):
            return [main]
        return [main, self.make_identity_optimizer(self.identity_heads.parameters())]

    def main_and_identity_optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer | None]:
        optimizers = self.optimizers()
        return tuple(optimizers) if isinstance(optimizers, list) else (optimizers, None)

    def phase(self, epoch: int) -> Phase:
        return self.schedule.phase(epoch, self.init_end)

    def identity_logits(self, features: torch.Tensor) -> list[torch.Tensor]:
        """Every identity head's logits (a standardising head standardises them itself)."""
        return [head(features) for head in self.identity_heads]

    def identity_loss(self, features: torch.Tensor, identities: torch.Tensor) -> torch.Tensor:
        """Li: the identity heads' mean cross-entropy."""
        return identity_loss(self.identity_logits(features), identities)

    def privacy_loss(self, features: torch.Tensor, identities: torch.Tensor, progress: float) -> torch.Tensor:
        """What the base pays for identity on a batch: the privacy term at this round's beta."""
        return self.privacy.penalty(features, identities, self.identity_logits, self.weight.beta, progress)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        main, identity = self.main_and_identity_optimizers()
        phase, identities = self.phase(self.current_epoch), batch["identity"]
        features = self.base(batch["image"])
        emotion_loss = F.cross_entropy(self.emotion_head(features), batch["emotion"])
        heads = self.privacy.head_training
        if phase.kind == "init" and identity is None:  # a term without heads: the base learns emotion
            loss = emotion_loss
            self._step(loss, main)
        elif phase.kind == "init":  # eq. (1): every head learns its task with the base
            loss = emotion_loss + self.alpha * self.identity_loss(features, identities)
            self._step(loss, main, identity)
        else:  # eq. (2), generalised: the base pays beta times the privacy term
            if heads is HeadTraining.ALTERNATELY:  # the adversary's own step on this batch first
                with self.toggled_optimizer(identity):
                    self._step(self.identity_loss(features.detach(), identities), identity)
            progress = (phase.round - 1 + batch_idx / max(1, self.trainer.num_training_batches)) / self.schedule.rounds
            if heads is HeadTraining.JOINTLY:  # one backward pass trains the heads and turns the base against them
                loss = emotion_loss + self.privacy_loss(features, identities, progress)
                self._step(loss, main, identity)
            else:
                with self.toggled_optimizer(main):  # the identity heads, if any, frozen
                    loss = emotion_loss + self.privacy_loss(features, identities, progress)
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

    def on_train_start(self) -> None:
        self.rounds.start_round()

    def on_train_epoch_end(self) -> None:
        self.log_dict({"train/emotion_loss": self.train_emotion_loss.compute(), "train/loss": self.train_loss.compute()})
        self.train_emotion_loss.reset()
        self.train_loss.reset()
        self.end_epoch()

    def end_epoch(self) -> None:
        """After every epoch: the divergence check; under a controller that reads the initialisation,
        its reading (which may end the initialisation); at a round's end (round 0: after the
        initialisation), the round's scores, the re-fit of a refitted adversary's heads (step 6 of
        Algorithm 1), the weight's step, and for a constrained weight a copy of a round that kept it."""
        epoch, started = self.current_epoch, time.perf_counter()
        phase = self.phase(epoch)
        self.check_divergence(phase)  # a run-away epoch stops here, unscored
        bf16, sides = is_bf16(self.trainer.precision), None
        if phase.kind == "init" and self.weight.reads_initialisation and epoch >= self.schedule.init_epochs - REFERENCE_EPOCHS:
            sides = self.rounds.features(self.base, bf16)  # the round end below scores the same features
            plateaued = self.weight.read_initialisation(self.rounds.emotion_readings(self, sides))
            if plateaued and self.schedule.may_end_initialisation(epoch, self.init_end):
                self.init_end = epoch + 1
                log.info("The initialisation ends after %d epochs: its validation emotion stopped rising", epoch + 1)
                phase = self.phase(epoch)
        if not phase.ends_round:
            return
        training_s = started - self.rounds.round_started
        if sides is None:
            sides = self.rounds.features(self.base, bf16)
        extracted = time.perf_counter()
        refit_s = 0.0
        with one_thread() as job_threads:
            metrics = self.rounds.scores(self, sides)
            if phase.kind == "adversarial":
                if self.privacy.head_training is HeadTraining.REFITTED:
                    refit_started = time.perf_counter()
                    train_features, train_labels = sides["train"]
                    self.refit_identity_heads(train_features, train_labels["identity"], phase.round, job_threads > 1)
                    refit_s = time.perf_counter() - refit_started
                    metrics |= self.rounds.scores(self, sides, refitted=True)
                metrics[ROUND_BETA] = self.weight.beta
        metrics |= dict(zip(ROUND_TIMES, (training_s, extracted - started, refit_s, time.perf_counter() - extracted - refit_s)))
        if phase.round == 0:
            self.reference_scale = metrics[ROUND_FEATURE_SCALE]
        metrics |= self.weight.after_round(phase.round, self.rounds.readings(metrics))
        if self.weight.constrained and self.weight.kept_its_promise:
            self.kept_round = (phase.round, {k: v.detach().clone() for k, v in self.state_dict().items()})
        self.rounds.record(phase.round, self.schedule.rounds, metrics, self.logger, started)
        if phase.round == self.schedule.rounds:  # before max_epochs when the initialisation ended early
            self.trainer.should_stop = True

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
        restarted (``privacy.restart_every``) and given the features' statistics
        (``privacy.standardise``). The heads' dropout masks are drawn ahead, on a helper thread
        if ``helper_thread`` (:func:`~anonemo.dropout_ahead.fit_with_masks_ahead`: the same masks)."""
        _, identity = self.main_and_identity_optimizers()
        if self.privacy.restarts_before_refit(round_):
            self.restart_identity_heads(identity.optimizer)
        if self.privacy.standardise:
            for head in self.identity_heads:
                head.set_input_statistics(features)
        generator = torch.Generator().manual_seed(self.seed * 100_003 + round_)
        identities = identities.to(self.device)
        batches = [batch for _ in range(self.privacy.refit_epochs)
                   for batch in torch.randperm(len(features), generator=generator).split(self.refit_batch_size)]

        def loss_of(batch: torch.Tensor) -> torch.Tensor:
            with self.trainer.precision_plugin.forward_context():
                return self.identity_loss(features[batch], identities[batch])

        # The torch optimizer itself: Lightning's per-step hooks cost more than a step of these heads.
        with self.toggled_optimizer(identity):
            fit_with_masks_ahead(self.identity_heads, loss_of, batches, identity.optimizer, helper_thread)

    def restore_last_kept_round(self) -> int:
        """For a constrained weight: the round whose weights the model ends with. When the last round
        broke the constraint, the weights go back to those of the last round that kept it."""
        rounds = self.schedule.rounds
        if self.weight.kept_its_promise or self.kept_round is None:
            return rounds
        round_, state = self.kept_round
        self.load_state_dict(state)
        log.info("The last round overspent the emotion budget: the model is that of round %d of %d, the last within "
                 "it", round_, rounds)
        return round_

    # What a resumed run needs besides weights and optimizer states (see anonemo.resume).
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["hybrid"] = {"reference_scale": self.reference_scale, "init_end": self.init_end,
                                "weight": self.weight.state_dict(), "kept_round": self.kept_round,
                                "history": self.rounds.history}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["hybrid"]
        self.reference_scale, self.init_end, self.kept_round = state["reference_scale"], state["init_end"], state["kept_round"]
        self.weight.load_state_dict(state["weight"])
        self.rounds.history = list(state["history"])

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
    # and is checked once per epoch, by end_epoch, before it scores the epoch.
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
            f"Hybrid training diverged in {where} (model.alpha={self.alpha}, {self.weight}): {reason}. "
            "An adversarial term such as -beta*Li is unbounded below, so the base can inflate the identity logits "
            "instead of removing identity. Lower model.beta or model.optimizer.lr, or use fewer model.rounds. Metrics "
            "of the rounds before are kept in the MLflow run, which is marked FAILED."
        )
