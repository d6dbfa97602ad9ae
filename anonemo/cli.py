"""Shared behaviour of the command-line entry points: errors a user can fix, and signals."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from rich.console import Console

from anonemo.errors import AnonemoError


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@contextmanager
def user_errors_reported() -> Iterator[None]:
    """Print an :class:`AnonemoError` as one paragraph on stderr and exit with status 2.

    Inside a Hydra multirun the job just ends there: its MLflow run is already marked FAILED
    with the error, and the sweep goes on with the other jobs (an exit would end it) and exits
    non-zero at the end (see :mod:`anonemo.sweep`). Ctrl-C or SIGTERM exits with status 130.
    """
    try:
        yield
    except AnonemoError as error:
        Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {error}", soft_wrap=True)
        if not in_multirun():
            sys.exit(2)
    except KeyboardInterrupt as interrupt:
        if in_multirun():
            raise
        reason = f" ({interrupt})" if str(interrupt) else ""
        Console(stderr=True, highlight=False).print(f"interrupted{reason}: the MLflow run is marked KILLED.")
        sys.exit(130)


_received_signal: str | None = None  # set by _interrupt: the job was stopped, not broken


def _interrupt(signum: int, frame: Any) -> None:
    global _received_signal
    _received_signal = signal.Signals(signum).name
    raise KeyboardInterrupt(f"terminated by signal {_received_signal}")


def received_signal() -> str | None:
    """The name of the signal that stopped this process (SIGTERM, SIGINT), if one did."""
    return _received_signal


def terminate_as_interrupt() -> None:
    """Make SIGTERM (what ``kill``, job schedulers and joblib's shutdown send) and SIGINT (Ctrl-C)
    raise KeyboardInterrupt and be remembered, so that open runs are closed as KILLED instead of
    being left RUNNING, even where a library turns the interrupt into an exit (Lightning's
    Trainer exits with status 1 after a graceful shutdown)."""
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, _interrupt)
