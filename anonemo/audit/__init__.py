"""The identity audit: how much identity (and emotion) a frozen base's features still give away.

The paper's Hybrid2Face is one fresh FC head; a base can fool the head it was trained against
while other attackers still read identity off it. The audit trains a suite of attackers
(:func:`~anonemo.audit.attackers.default_attackers`) on the training side's features, tunes them
on the validation side and scores each once on the test fold. ``audit/identity/max``, the
strongest attacker, is the leakage number to report; ``audit/emotion/max`` is the utility an
honest user can recover from the same features.
"""

from __future__ import annotations

import logging
import time

from anonemo.audit.attackers import Attacker, as_split, default_attackers
from anonemo.data.datamodule import TASKS, TensorBatches
from anonemo.evaluation import accuracy

log = logging.getLogger(__name__)


def audit_features(
    sides: dict[str, TensorBatches], num_classes: dict[str, int], seed: int, attackers: list[Attacker] | None = None
) -> dict[str, float]:
    """``audit/<task>/<attacker>`` test accuracies (%), with ``max`` and ``chance`` per task.

    ``sides`` holds ``features`` and labels for ``train``, ``val`` and ``test``; only ``train``
    and ``val`` are used for fitting and every choice, ``test`` only for the final scores.
    """
    metrics: dict[str, float] = {}
    for task in TASKS:
        train, val, test = (as_split(sides[s].tensors["features"], sides[s].tensors[task]) for s in ("train", "val", "test"))
        scores = {}
        for attacker in attackers if attackers is not None else default_attackers():
            started = time.perf_counter()
            attacker.fit(train, val, num_classes[task], seed)
            scores[attacker.name] = accuracy(attacker.predict(test.features), test.labels)
            metrics[f"audit/{task}/{attacker.name}/val"] = attacker.val_accuracy
            log.info("audit %s/%s: %.1f%% on the test fold (%.1f%% validation, %.1f s)", task, attacker.name,
                     scores[attacker.name], attacker.val_accuracy, time.perf_counter() - started)
        metrics |= {f"audit/{task}/{name}": score for name, score in scores.items()}
        metrics[f"audit/{task}/max"] = max(scores.values())
        metrics[f"audit/{task}/chance"] = 100 / num_classes[task]
    return metrics
