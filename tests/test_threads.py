"""Torch threads per job, and the warning a job of several threads gives on a machine others keep busy."""

import logging
import time

import pytest

from anonemo import threads
from benchmarks.load import busy_processes


def test_busy_processes_are_counted_as_other_runnable_threads():
    with busy_processes(3):
        time.sleep(0.3)
        assert threads.other_runnable_threads() >= 3


@pytest.mark.parametrize(("job_threads", "others", "usable", "cpu_count", "advice"), [
    (2, 1, 2, 2, "threads=1 fits the free cores, and is usually faster; its numbers differ from threads=2's"),
    (4, 2, 4, 4, "threads=2 fits the free cores, and is usually faster; its numbers differ from threads=4's"),
    (2, 0, 2, 2, None),   # a quiet machine
    (1, 3, 2, 2, None),   # one thread has nothing to wait for
    (2, 9, 2, 64, None),  # the job was given 2 of 64 cores (taskset, SLURM): the others' load is elsewhere
])
def test_a_job_of_more_threads_than_free_cores_is_told_the_count_that_fits(monkeypatch, caplog, job_threads, others,
                                                                            usable, cpu_count, advice):
    monkeypatch.setattr(threads, "other_runnable_threads", lambda: others)
    monkeypatch.setattr(threads, "usable_cores", lambda: usable)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: cpu_count)
    with caplog.at_level(logging.WARNING, logger="anonemo.threads"):
        threads.warn_if_cores_are_taken(job_threads)
    if advice is None:
        assert not caplog.records
    else:
        (record,) = caplog.records
        assert f"{others} thread(s) of other processes" in record.getMessage() and advice in record.getMessage()
