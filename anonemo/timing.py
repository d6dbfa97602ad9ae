"""Where a job's wall time goes, by phase, so that the benchmark can say what is not training.

Phases: ``data`` (loading, cropping, augmenting or reading the cache, folds), ``base_training``
(the steps that train a conv base: the Emotion/Face CNN, the Hybrid's init and adversarial
steps), ``frozen_base`` (everything on a frozen base's cached features: feature extraction,
Emotion2Face/Hybrid2X heads, the Hybrid's per-round re-fits and scoring, the audit) and
``evaluation`` (the test-fold predictions). What is left of the wall time is set-up and logging.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

PHASES = ("data", "base_training", "frozen_base", "evaluation")


class PhaseClock:
    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if name not in PHASES:
            raise ValueError(f"unknown phase {name!r}; phases are {PHASES}")
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - started

    def move(self, seconds: float, source: str, target: str) -> None:
        """Re-attribute ``seconds`` measured inside ``source`` (e.g. round-end re-fits inside the
        Hybrid's fit) to ``target``."""
        self.seconds[source] -= seconds
        self.seconds[target] += seconds

    def metrics(self) -> dict[str, float]:
        """``time/<phase>_s``, ``wall_time_s`` and ``time/outside_base_training_share``."""
        wall = time.perf_counter() - self.started
        metrics = {f"time/{name}_s": self.seconds[name] for name in PHASES}
        metrics["time/other_s"] = wall - sum(self.seconds.values())
        metrics["wall_time_s"] = wall
        metrics["time/outside_base_training_share"] = 1 - self.seconds["base_training"] / wall
        metrics["time/frozen_base_share"] = self.seconds["frozen_base"] / wall
        return metrics
