"""The Hybrid model trained by Algorithm 1, then Hybrid2Emotion and Hybrid2Face on its final base."""

from __future__ import annotations

import logging
import warnings
from dataclasses import replace
from collections.abc import Sequence

from anonemo.errors import ConfigError
from anonemo.evaluation import round_curves_figure
from anonemo.metrics import BUDGET_INIT_EPOCHS, BUDGET_SHIPPED_ROUND, HYBRID, own_head_metric
from anonemo.models.adversary import Adversary, head_widths
from anonemo.models.budget import EmotionBudget
from anonemo.models.hybrid import HybridModule, HybridSchedule
from anonemo.optim import Optimizer
from anonemo.models.rounds import RoundEnd
from anonemo.recipes.base import Job, Recipe, Trained
from anonemo.resume import resumable_callbacks

log = logging.getLogger(__name__)


class Hybrid(Recipe):
    """Algorithm 1 (:class:`~anonemo.models.hybrid.HybridModule`, schedule in
    :class:`~anonemo.models.hybrid.HybridSchedule`) against the configured
    :class:`~anonemo.models.adversary.Adversary`. Built from the model config, which holds every
    default (``model=hybrid``: the paper's recipe); docs/algorithm.md says what each option changes.

    The job then trains fresh emotion and identity heads on the final, frozen base
    (``Hybrid2Emotion``, ``Hybrid2Face``); Hybrid2Emotion's head is the one shipped with the base.
    The Hybrid's own heads are scored too (``Hybrid/emotion_head``, ``Hybrid/identity_head``).

    With ``max_emotion_loss`` (points) beta is set round by round so that validation emotion stays
    within that many points of the initialisation's (:class:`~anonemo.models.budget.EmotionBudget`),
    starting at ``beta``; ``emotion_guard`` is then not used. The initialisation then runs from
    ``init_epochs`` up to ``max_init_epochs`` epochs, until its validation emotion stops rising.
    """

    label = HYBRID

    def __init__(
        self,
        name: str,
        adversary: Adversary,
        optimizer: Optimizer,
        identity_optimizer: Optimizer,
        alpha: float,
        beta: float,
        init_epochs: int,
        max_init_epochs: int,
        rounds: int,
        refit_epochs: int,
        emotion_guard: float,
        max_emotion_loss: float | None,
        max_feature_growth: float,
        fresh_heads: Sequence[str],
    ):
        super().__init__(name, fresh_heads)
        for option, value in (("alpha", alpha), ("beta", beta)):
            if value < 0:
                raise ConfigError(f"model.{option}={value} must be non-negative (the paper uses alpha=0.5, beta=1).")
        if not 0 <= emotion_guard <= 100:
            raise ConfigError(f"model.emotion_guard={emotion_guard} must be between 0 (off) and 100 accuracy points.")
        if max_feature_growth <= 0:
            raise ConfigError(f"model.max_feature_growth={max_feature_growth} must be positive (default 1000).")
        self.schedule = HybridSchedule(init_epochs, rounds, refit_epochs,
                                       max_init_epochs=None if max_emotion_loss is None else max_init_epochs)
        self.adversary, self.optimizer, self.identity_optimizer = adversary, optimizer, identity_optimizer
        self.alpha, self.beta, self.emotion_guard, self.max_feature_growth = alpha, beta, emotion_guard, max_feature_growth
        self.max_emotion_loss = max_emotion_loss
        if max_emotion_loss is not None:
            EmotionBudget(max_emotion_loss)  # checks the option before any work

    @property
    def hands_on_emotion_head(self) -> bool:
        return True

    def module(self, job: Job) -> HybridModule:
        """W_c, W_e and the adversary's identity heads (of the network config's shapes), wired by
        Algorithm 1."""
        networks, data = job.networks, job.data
        base = networks.base()
        emotion_head = networks.head(base.out_features, data.num_emotions)
        identity_heads = [
            networks.head(base.out_features, data.num_classes("identity"), hidden=head_widths(name, networks.fc_hidden),
                          standardise=self.adversary.standardise)
            for name in self.adversary.heads
        ]
        return HybridModule(
            base, emotion_head, identity_heads, replace(self.schedule), self.optimizer, self.identity_optimizer, self.adversary,
            alpha=self.alpha, beta=self.beta, emotion_guard=0.0 if self.max_emotion_loss is not None else self.emotion_guard,
            budget=None if self.max_emotion_loss is None else EmotionBudget(self.max_emotion_loss),
            max_feature_growth=self.max_feature_growth, refit_batch_size=data.batch_size, seed=job.cfg.seed,
        )

    def train(self, job: Job) -> Trained:
        hybrid = self.module(job)
        metrics = {}
        schedule = hybrid.schedule
        unused_guard = f"; model.emotion_guard={self.emotion_guard:g} is not used" if self.emotion_guard else ""
        weight = (f"beta from {self.beta:g} within an emotion budget of {self.max_emotion_loss:g} points{unused_guard}"
                  if self.max_emotion_loss is not None else f"beta={self.beta:g}, emotion guard {self.emotion_guard:g}")
        init = (f"{schedule.init_epochs} to {schedule.max_init_epochs} epochs of multi-task initialisation (until its "
                "validation emotion stops rising)" if schedule.max_init_epochs else
                f"{schedule.init_epochs} epochs of multi-task initialisation")
        log.info(
            "Algorithm 1: %s, then %d rounds of an adversarial epoch and a %d-pass identity re-fit "
            "(alpha=%g, %s, adversary: %s)",
            init, schedule.rounds, schedule.refit_epochs,
            self.alpha, weight, self.adversary,
        )
        rounds = RoundEnd(job.data.side("train"), job.data.side("val"), job.clock,
                          identity_on_val="identity" in job.data.testable_tasks)
        # No validation loop or checkpoint selection: RoundEnd scores each round on both sides.
        trainer = job.trainer([rounds, *resumable_callbacks(job.checkpoints("hybrid"))],
                              max_epochs=schedule.total_epochs, limit_val_batches=0)
        try:
            with warnings.catch_warnings():
                # The datamodule offers a val loader; the Hybrid scores rounds itself and needs none.
                warnings.filterwarnings("ignore", message=".*no `validation_step`.*")
                with job.clock.phase("base_training"):
                    job.fit(trainer, hybrid, job.data, "hybrid")
            if self.max_emotion_loss is not None:
                budget = {BUDGET_SHIPPED_ROUND: hybrid.restore_within_budget(), BUDGET_INIT_EPOCHS: hybrid.schedule.init_end}
                metrics |= budget
                job.logger.log_metrics(budget)
        finally:
            if rounds.history:  # partial curves too, when training stopped early
                title = f"Hybrid on {job.cfg.dataset.name}, fold {job.cfg.fold}"
                job.logger.log_figure(round_curves_figure(rounds.history, title), "hybrid_rounds.png")
        own_heads = {
            own_head_metric(HYBRID, "emotion"): ("emotion", hybrid.emotion_head),
            own_head_metric(HYBRID, "identity"): ("identity", hybrid.identity_heads[0]),  # W_i
        }
        return Trained(hybrid.base, metrics, emotion_head=hybrid.emotion_head, own_heads=own_heads)
