"""The paper's Emotion and Face CNNs: a conv base and a head trained end to end on one task."""

from __future__ import annotations

from collections.abc import Sequence

from anonemo.data.datamodule import check_task
from anonemo.errors import ConfigError
from anonemo.metrics import TASK_METRIC
from anonemo.models.classifiers import SingleTaskModule
from anonemo.optim import Optimizer
from anonemo.recipes.base import JobContext, Recipe, Trained


class SingleTask(Recipe):
    """``task: emotion`` is the Emotion CNN (metric ``Emotion``), ``task: identity`` the Face CNN
    (``Face``). Early stopping and the checkpoint come from the validation side; the selected
    checkpoint is scored once on the test fold. With ``fresh_heads: [identity]`` the job then
    trains Emotion2Face on the frozen base (``model=emotion2face``)."""

    def __init__(self, name: str, task: str, optimizer: Optimizer, fresh_heads: Sequence[str] = ()):
        super().__init__(name, fresh_heads)
        check_task(task)
        self.task, self.optimizer = task, optimizer
        self.label = TASK_METRIC[task]

    @property
    def own_metrics(self) -> dict[str, str]:
        return {self.task: self.label}

    @property
    def hands_on_emotion_head(self) -> bool:
        return self.task == "emotion" or super().hands_on_emotion_head

    def check_testable(self, testable_tasks: Sequence[str]) -> None:
        if self.task not in testable_tasks:
            raise ConfigError(
                f"model={self.name} classifies the training subjects, and under this cv.protocol no test subject is "
                "one of them: use cv.protocol=paper for it, or model=emotion (the linkage audit measures identity "
                "for unseen people)."
            )

    def train(self, job: JobContext) -> Trained:
        data, metric = job.data, self.label
        base = job.networks.base()
        module = SingleTaskModule(base, job.networks.head(base.out_features, data.num_classes(self.task)), self.task,
                                  self.optimizer)
        trainer = job.selecting_trainer(phase=metric, monitor="val/acc", patience=job.cfg.callbacks.patience)
        with job.clock.phase("base_training"):
            job.fit(trainer, module, data, metric)
        with job.clock.phase("evaluation"):
            result = job.test_once(trainer, module, data.test_dataloader(), self.task,
                                   job.checkpoints(metric) / "best.ckpt")
        metrics = job.log_result(result, metric, trainer)
        # the selected checkpoint's head, which test_once loaded
        return Trained(base, metrics, emotion_head=module.head if self.task == "emotion" else None)
