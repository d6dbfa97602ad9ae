"""Shared behaviour of the command-line entry points."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

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
