"""The load a measurement runs beside: busy single-threaded processes, started and stopped here."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from omegaconf import DictConfig


@contextmanager
def busy_processes(count: int) -> Iterator[None]:
    """``count`` CPU-bound single-threaded processes running for the duration (none for 0)."""
    processes = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for process in processes:
            process.kill()
            process.wait()


def load_conditions(cfg: DictConfig) -> list[tuple[str, int]]:
    """(label, busy processes): alone, and beside ``bench.contention`` busy processes if set."""
    return [("alone", 0)] + ([(f"beside {cfg.bench.contention} busy", cfg.bench.contention)] if cfg.bench.contention else [])
