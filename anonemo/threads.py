"""A job's CPU settings: its torch threads (a parallel sweep's jobs share the machine's cores),
subnormal numbers flushed and freed memory kept."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from hydra.core.hydra_config import HydraConfig

from anonemo.cli import in_multirun
from anonemo.memory import keep_freed_memory

log = logging.getLogger(__name__)


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (set by taskset, cgroups, SLURM), not
    every core of the machine."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def parallel_jobs() -> int:
    """How many jobs of this sweep share the machine's cores (1 outside a parallel launcher)."""
    if not in_multirun():
        return 1
    launcher = HydraConfig.get().launcher
    n_jobs = launcher.get("n_jobs")  # joblib
    if n_jobs is not None:
        return usable_cores() if n_jobs < 0 else max(1, int(n_jobs))
    return 1


def configure_cpu(threads: int | None) -> int:
    """The process's CPU settings for a job or the benchmark; returns its torch thread count."""
    import torch

    # Weights and activations that decay into the subnormal range make CPU arithmetic several
    # times slower (an adversarial base that collapsed); flush them to 0.
    torch.set_flush_denormal(True)
    keep_freed_memory()
    return configure_threads(threads)


def configure_threads(threads: int | None) -> int:
    """Torch CPU threads for this job: ``threads`` if set, else the cores divided among parallel
    jobs, so that a joblib sweep does not oversubscribe the machine."""
    import torch

    if threads is None:
        launcher = HydraConfig.get().launcher if in_multirun() else {}
        threads = launcher.get("cpus_per_task") or max(1, usable_cores() // parallel_jobs())
    torch.set_num_threads(int(threads))
    warn_if_cores_are_taken(int(threads))
    return int(threads)


def other_runnable_threads(samples: int = 5, interval_s: float = 0.02) -> int | None:
    """Threads of other processes running or waiting for a core now: the fewest over a few readings
    of Linux's runnable count (``/proc/loadavg``), less the thread reading it; None where there is none."""
    counts = []
    for _ in range(samples):
        try:
            with open("/proc/loadavg") as loadavg:
                counts.append(int(loadavg.read().split()[3].split("/")[0]))
        except (OSError, ValueError, IndexError):
            return None
        time.sleep(interval_s)
    return max(0, min(counts) - 1)


def warn_if_cores_are_taken(threads: int) -> None:
    """A job of several threads beside busy processes waits, at every parallel region, for the thread
    that shares its core; the thread count is part of what a job computes, so it is only named here."""
    cores = usable_cores()
    if threads < 2 or cores != os.cpu_count():  # given a share of a larger machine (taskset, SLURM): its own cores
        return
    others = other_runnable_threads()
    if others and threads + others > cores:
        log.warning(
            "%d thread(s) of other processes are running on this machine's %d cores: this job's %d torch threads "
            "will wait, at every parallel step, for those sharing a core with them (docs/performance.md, \"Busy "
            "machines\"). threads=%d fits the free cores, and is usually faster; its numbers differ from threads=%d's "
            "(each deterministic).",
            others, cores, threads, max(1, cores - others), threads)


@contextmanager
def one_thread() -> Iterator[int]:
    """Torch on one thread inside, the job's count again after; yields the job's count. For heads
    trained and scored on cached features: their small kernels each open a parallel region, and
    waking a second thread for each costs more than it saves (docs/performance.md, "Frozen-feature
    phases"); a job of several threads may give a helper thread their dropout masks instead."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)
