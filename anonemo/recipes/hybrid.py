"""A model trained by Algorithm 1 with a method's privacy term, then fresh emotion and identity
heads on its final base (the paper's Hybrid2Emotion and Hybrid2Face)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

from anonemo.errors import ConfigError
from anonemo.metrics import BUDGET_INIT_EPOCHS, BUDGET_SHIPPED_ROUND, own_head_metric
from anonemo.models.hybrid import HybridModule, HybridSettings
from anonemo.models.rounds import RoundRecorder, round_curves_figure
from anonemo.recipes.base import JobContext, Recipe, Trained
from anonemo.resume import resumable_callbacks

log = logging.getLogger(__name__)


class Hybrid(Recipe):
    """Algorithm 1 (:class:`~anonemo.models.hybrid.HybridModule`) with the model config's privacy
    term (``privacy``, :mod:`anonemo.models.privacy`) and weight (``beta``, ``emotion_guard``,
    ``max_emotion_loss``: :mod:`anonemo.models.weight`). Built from the model config, which holds
    every default (``model=hybrid``: the paper's recipe); docs/algorithm.md says what each option
    changes. ``label`` names the trained base in metric names (``Hybrid``: ``Hybrid2Emotion``,
    ``Hybrid2Face``; ``HSIC``: ``HSIC2Emotion``, ...).

    The job then trains fresh emotion and identity heads on the final, frozen base; the fresh
    emotion head is the one shipped with the base. The model's own heads are scored too
    (``<label>/emotion_head``, ``<label>/identity_head`` for a term with identity heads).
    """

    weighted = True

    def __init__(self, name: str, label: str, fresh_heads: Sequence[str], **settings):
        super().__init__(name, fresh_heads)
        if not label.isidentifier():
            raise ConfigError(f"model.label={label!r} names metrics ({label}2Emotion): use letters, digits and _ only.")
        self.label = label
        self.settings = HybridSettings(**settings)  # the model config's other keys, checked before any work

    @property
    def hands_on_emotion_head(self) -> bool:
        return True

    def module(self, job: JobContext) -> HybridModule:
        """W_c, W_e and the privacy term's identity heads (of the network config's shapes), wired by
        Algorithm 1."""
        networks, data = job.networks, job.data
        base = networks.base()
        emotion_head = networks.head(base.out_features, data.num_emotions)
        identity_heads = self.settings.privacy.identity_heads(networks, base.out_features, data.num_classes("identity"))
        rounds = RoundRecorder(data.side("train"), data.side("val"), job.clock,
                               identity_on_val="identity" in data.testable_tasks)
        return HybridModule(base, emotion_head, identity_heads, self.settings, rounds, refit_batch_size=data.batch_size,
                            seed=job.cfg.seed)

    def train(self, job: JobContext) -> Trained:
        hybrid = self.module(job)
        metrics = {}
        schedule = hybrid.schedule
        init = (f"{schedule.init_epochs} to {schedule.max_init_epochs} epochs of multi-task initialisation (until its "
                "validation emotion stops rising)" if schedule.max_init_epochs else
                f"{schedule.init_epochs} epochs of multi-task initialisation")
        log.info("%s (%s): %s, then %d rounds (alpha=%g, %s, privacy term: %s)", self.label, self.name, init,
                 schedule.rounds, self.settings.alpha, hybrid.weight, self.settings.privacy)
        # No validation loop or checkpoint selection: the module scores each round on both sides.
        trainer = job.trainer(resumable_callbacks(job.checkpoints("hybrid")), max_epochs=schedule.total_epochs,
                              limit_val_batches=0)
        try:
            with warnings.catch_warnings():
                # The datamodule offers a val loader; the Hybrid scores rounds itself and needs none.
                warnings.filterwarnings("ignore", message=".*no `validation_step`.*")
                with job.clock.phase("base_training"):
                    job.fit(trainer, hybrid, job.data, "hybrid")
            if hybrid.weight.constrained:
                budget = {BUDGET_SHIPPED_ROUND: hybrid.restore_last_kept_round(), BUDGET_INIT_EPOCHS: hybrid.init_end}
                metrics |= budget
                job.logger.log_metrics(budget)
        finally:
            if hybrid.rounds.history:  # partial curves too, when training stopped early
                title = f"{self.label} ({self.name}) on {job.cfg.dataset.name}, fold {job.cfg.fold}"
                job.logger.log_figure(round_curves_figure(hybrid.rounds.history, title), "hybrid_rounds.png")
        own_heads = {own_head_metric(self.label, "emotion"): ("emotion", hybrid.emotion_head)}
        if len(hybrid.identity_heads):
            own_heads[own_head_metric(self.label, "identity")] = ("identity", hybrid.identity_heads[0])  # W_i
        return Trained(hybrid.base, metrics, emotion_head=hybrid.emotion_head, own_heads=own_heads)
