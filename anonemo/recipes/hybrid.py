"""The Hybrid model trained by Algorithm 1, then Hybrid2Emotion and Hybrid2Face on its final base."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

from anonemo.evaluation import round_curves_figure
from anonemo.metrics import BUDGET_INIT_EPOCHS, BUDGET_SHIPPED_ROUND, HYBRID, own_head_metric
from anonemo.models.adversary import head_widths
from anonemo.models.hybrid import HybridModule, HybridSettings
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

    def __init__(self, name: str, fresh_heads: Sequence[str], **settings):
        super().__init__(name, fresh_heads)
        self.settings = HybridSettings(**settings)  # the model config's other keys, checked before any work

    @property
    def hands_on_emotion_head(self) -> bool:
        return True

    def module(self, job: Job) -> HybridModule:
        """W_c, W_e and the adversary's identity heads (of the network config's shapes), wired by
        Algorithm 1."""
        networks, data, adversary = job.networks, job.data, self.settings.adversary
        base = networks.base()
        emotion_head = networks.head(base.out_features, data.num_emotions)
        identity_heads = [
            networks.head(base.out_features, data.num_classes("identity"), hidden=head_widths(name, networks.fc_hidden),
                          standardise=adversary.standardise)
            for name in adversary.heads
        ]
        return HybridModule(base, emotion_head, identity_heads, self.settings, refit_batch_size=data.batch_size,
                            seed=job.cfg.seed)

    def train(self, job: Job) -> Trained:
        hybrid = self.module(job)
        metrics = {}
        settings, schedule = self.settings, hybrid.schedule
        unused_guard = f"; model.emotion_guard={settings.emotion_guard:g} is not used" if settings.emotion_guard else ""
        weight = (f"beta from {settings.beta:g} within an emotion budget of {settings.max_emotion_loss:g} points{unused_guard}"
                  if settings.max_emotion_loss is not None else
                  f"beta={settings.beta:g}, emotion guard {settings.emotion_guard:g}")
        init = (f"{schedule.init_epochs} to {schedule.max_init_epochs} epochs of multi-task initialisation (until its "
                "validation emotion stops rising)" if schedule.max_init_epochs else
                f"{schedule.init_epochs} epochs of multi-task initialisation")
        log.info(
            "Algorithm 1: %s, then %d rounds of an adversarial epoch and a %d-pass identity re-fit "
            "(alpha=%g, %s, adversary: %s)",
            init, schedule.rounds, schedule.refit_epochs, settings.alpha, weight, settings.adversary,
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
            if hybrid.budget is not None:
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
