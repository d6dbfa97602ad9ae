"""Shared behaviour of the command-line entry points."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console

from anonemo.errors import AnonemoError


@contextmanager
def user_errors_reported() -> Iterator[None]:
    """Print an :class:`AnonemoError` as one paragraph on stderr and exit with status 2."""
    try:
        yield
    except AnonemoError as error:
        Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {error}", soft_wrap=True)
        sys.exit(2)
