"""The Hybrid model trained by Algorithm 1, then Hybrid2Emotion and Hybrid2Face on its final base."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

from anonemo.errors import ConfigError
from anonemo.evaluation import round_curves_figure
from anonemo.metrics import BUDGET_SHIPPED_ROUND, HYBRID, REFERENCE, own_head_metric
from anonemo.models.adversary import Adversary, head_widths
from anonemo.models.budget import EmotionBudget
from anonemo.models.classifiers import MultiTaskModule, Optimizer
from anonemo.models.hybrid import HybridModule, HybridSchedule
from anonemo.models.rounds import RoundEnd
from anonemo.recipes.base import Job, Recipe, Trained
from anonemo.resume import resumable_callbacks

log = logging.getLogger(__name__)


class Hybrid(Recipe):
    """Algorithm 1 (:class:`~anonemo.models.hybrid.HybridModule`, schedule in
    :class:`~anonemo.models.hybrid.HybridSchedule`) against the configured
    :class:`~anonemo.models.adversary.Adversary`. The defaults are the paper's recipe
    (``model=hybrid``); docs/algorithm.md says what each option changes.

    The job then trains fresh emotion and identity heads on the final, frozen base
    (``Hybrid2Emotion``, ``Hybrid2Face``); Hybrid2Emotion's head is the one shipped with the base.
    The Hybrid's own heads are scored too (``Hybrid/emotion_head``, ``Hybrid/identity_head``).

    With ``max_emotion_loss`` (points) the job first trains the Emotion CNN on the same network and
    fold (``Reference``, scored like ``model=emotion``), starts the Hybrid from it instead of the
    multi-task initialisation, and sets beta round by round within that emotion budget
    (:class:`~anonemo.models.budget.EmotionBudget`); ``beta`` is then the first round's.
    """

    label = HYBRID

    def __init__(
        self,
        name: str,
        adversary: Adversary,
        optimizer: Optimizer,
        identity_optimizer: Optimizer,
        alpha: float = 0.5,
        beta: float = 1.0,
        init_epochs: int = 15,
        rounds: int = 20,
        adversarial_epochs: int = 1,
        refit_epochs: int = 5,
        emotion_guard: float = 0.0,
        max_emotion_loss: float | None = None,
        max_feature_growth: float = 1000.0,
        fresh_heads: Sequence[str] = ("emotion", "identity"),
    ):
        super().__init__(name, fresh_heads)
        for option, value in (("alpha", alpha), ("beta", beta)):
            if value < 0:
                raise ConfigError(f"model.{option}={value} must be non-negative (the paper uses alpha=0.5, beta=1).")
        if not 0 <= emotion_guard <= 100:
            raise ConfigError(f"model.emotion_guard={emotion_guard} must be between 0 (off) and 100 accuracy points.")
        if max_feature_growth <= 0:
            raise ConfigError(f"model.max_feature_growth={max_feature_growth} must be positive (default 1000).")
        self.schedule = HybridSchedule(init_epochs, rounds, adversarial_epochs, refit_epochs)
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
            base, emotion_head, identity_heads, self.schedule, self.adversary, self.optimizer, self.identity_optimizer,
            alpha=self.alpha, beta=self.beta, emotion_guard=0.0 if self.max_emotion_loss is not None else self.emotion_guard,
            budget=None if self.max_emotion_loss is None else EmotionBudget(self.max_emotion_loss),
            max_feature_growth=self.max_feature_growth, refit_batch_size=data.batch_size, seed=job.cfg.seed,
        )

    def start_from_reference(self, job: Job, hybrid: HybridModule) -> dict[str, float]:
        """Train ``hybrid``'s base, emotion head and W_i by eq. (1) as the Emotion CNN is trained
        (early stopping and the checkpoint selected on validation emotion) and score the selected
        one once on the test fold: the reference, ``Reference`` and ``Reference/val_acc``."""
        log.info("model.max_emotion_loss=%g: the initialisation is trained until its emotion is at its best on "
                 "validation (Reference); the %d initialisation epochs then fit the identity heads only, and beta "
                 "starts at %g and is set each round to keep validation emotion within %g points of the Reference's%s",
                 self.max_emotion_loss, self.schedule.init_epochs, self.beta, self.max_emotion_loss,
                 f" (model.emotion_guard={self.emotion_guard:g} is not used)" if self.emotion_guard else "")
        reference = MultiTaskModule(hybrid.base, hybrid.emotion_head, hybrid.identity_heads[0], self.alpha,
                                    self.optimizer, metric_prefix=f"{REFERENCE}/")
        trainer = job.selecting_trainer(phase=REFERENCE, monitor=f"{REFERENCE}/val/acc",
                                        patience=job.cfg.callbacks.patience)
        with job.clock.phase("base_training"):
            job.fit(trainer, reference, job.data, REFERENCE)
        hybrid.budget.reference = reference.continued_level()
        with job.clock.phase("evaluation"):  # loads the selected checkpoint into the Hybrid's modules
            result = job.test_once(trainer, reference, job.data.test_dataloader(), "emotion",
                                   job.checkpoints(REFERENCE) / "best.ckpt")
        return job.log_result(result, REFERENCE, trainer)

    def train(self, job: Job) -> Trained:
        hybrid = self.module(job)
        metrics = {} if self.max_emotion_loss is None else self.start_from_reference(job, hybrid)
        schedule = self.schedule
        log.info(
            "Algorithm 1: %d epochs of multi-task initialisation, then %d rounds of %d adversarial epoch(s) "
            "and a %d-pass identity re-fit (alpha=%g, beta=%g, emotion guard %g, adversary: %s)",
            schedule.init_epochs, schedule.rounds, schedule.adversarial_epochs, schedule.refit_epochs, self.alpha,
            self.beta, self.emotion_guard, self.adversary,
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
                metrics[BUDGET_SHIPPED_ROUND] = hybrid.restore_within_budget()
                job.logger.log_metrics({BUDGET_SHIPPED_ROUND: metrics[BUDGET_SHIPPED_ROUND]})
        finally:
            if rounds.history:  # partial curves too, when training stopped early
                title = f"Hybrid on {job.cfg.dataset.name}, fold {job.cfg.fold}"
                job.logger.log_figure(round_curves_figure(rounds.history, title), "hybrid_rounds.png")
        own_heads = {
            own_head_metric(HYBRID, "emotion"): ("emotion", hybrid.emotion_head),
            own_head_metric(HYBRID, "identity"): ("identity", hybrid.identity_heads[0]),  # W_i
        }
        return Trained(hybrid.base, metrics, emotion_head=hybrid.emotion_head, own_heads=own_heads)
