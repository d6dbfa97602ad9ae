"""Shared behaviour of the command-line entry points: errors a user can fix, and signals."""

from __future__ import annotations

import difflib
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from rich.console import Console

from anonemo.errors import AnonemoError


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@contextmanager
def user_errors_reported(discard_run_dir: bool = False) -> Iterator[None]:
    """Print an :class:`AnonemoError` as one paragraph on stderr and exit with status 2.

    ``discard_run_dir``: the error came before any work (a mistyped option, a dataset that does not
    load), so the folder Hydra made for this command, holding only its config and log, is removed:
    a mistake leaves nothing behind.

    Inside a Hydra multirun the job just ends there: the sweep goes on with the other jobs (an exit
    would end it) and exits non-zero at the end (see :mod:`anonemo.sweep`). Ctrl-C or
    SIGTERM exits with status 130.
    """
    try:
        yield
    except AnonemoError as error:
        Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {error}", soft_wrap=True)
        if discard_run_dir:
            discard_hydra_run_dir()
        if not in_multirun():
            sys.exit(2)
    except KeyboardInterrupt as interrupt:
        if in_multirun():
            raise
        reason = f" ({interrupt})" if str(interrupt) else ""
        Console(stderr=True, highlight=False).print(f"interrupted{reason}: the MLflow run is marked KILLED.")
        sys.exit(130)


def discard_hydra_run_dir() -> None:
    """Remove this command's Hydra output folder if it holds nothing but Hydra's own config and log."""
    if not HydraConfig.initialized():
        return
    folder = Path(HydraConfig.get().runtime.output_dir)
    own = {".hydra", f"{HydraConfig.get().job.name}.log"}
    if folder.is_dir() and {entry.name for entry in folder.iterdir()} <= own:
        shutil.rmtree(folder, ignore_errors=True)
        for parent in (folder.parent, folder.parent.parent):  # runs/ and the output folder, when left empty
            try:
                parent.rmdir()
            except OSError:
                break

_received_signal: str | None = None  # set by _interrupt: the job was stopped, not broken


# Code a signal must not cut short: an interrupt inside an MLflow store write can leave the SQLite
# file locked, so that closing the run as KILLED fails after the store's 20 s busy timeout.
UNINTERRUPTIBLE_MODULES = ("sqlalchemy.", "mlflow.store.")


def _interrupt(signum: int, frame: Any) -> None:
    global _received_signal
    _received_signal = signal.Signals(signum).name
    caller = first_caller_outside(frame, UNINTERRUPTIBLE_MODULES)
    if caller is frame:
        raise KeyboardInterrupt(f"terminated by signal {_received_signal}")
    interrupt_on_return_to(caller, f"terminated by signal {_received_signal}")


def first_caller_outside(frame: Any, prefixes: tuple[str, ...]) -> Any:
    """``frame`` itself if no frame on its stack runs code of a module named ``prefixes``; else the
    frame that called the outermost such code."""
    caller, current = frame, frame
    while current is not None:
        if current.f_globals.get("__name__", "").startswith(prefixes):
            caller = current.f_back
        current = current.f_back
    return caller


def interrupt_on_return_to(frame: Any, reason: str) -> None:
    """Raise KeyboardInterrupt in ``frame`` at its next line, that is once the call it is waiting
    on has returned, by tracing that one frame (as a debugger's quit does)."""
    previous = sys.gettrace()

    def raise_interrupt(traced: Any, event: str, arg: Any) -> None:
        traced.f_trace = None
        sys.settrace(previous)
        raise KeyboardInterrupt(reason)

    frame.f_trace_lines = True
    frame.f_trace = raise_interrupt
    sys.settrace(previous or untraced)


def untraced(frame: Any, event: str, arg: Any) -> None:
    """A global trace function that traces no new frame: it only turns on tracing of one frame."""
    return None


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


CONF = Path(__file__).resolve().parent.parent / "conf"


def check_override_keys(config_name: str, arguments: list[str]) -> None:
    """Refuse a command-line ``key=value`` whose key is not in the composed config, naming the
    nearest key that is (``dataset.rot`` -> ``dataset.root``). Hydra's own advice for an unknown
    key is to add it with ``+``, which adds a key nothing reads. Group selections (``model=hybrid``,
    each of ``model=face,hybrid``) are composed first, as the keys they bring are valid."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    pairs = [arg.split("=", 1) for arg in arguments if "=" in arg and not arg.startswith(("-", "+", "~"))]
    # a group chosen at another package (attackers@audit.attackers=...) is a group too
    groups = {key: value.split(",") for key, value in pairs if (CONF / key.split("@")[0]).is_dir()}
    keys = [key for key, _ in pairs if key not in groups and not key.startswith("hydra") and "/" not in key]
    if not keys:
        return
    selections = [[f"{group}={value}" for group, values in groups.items() for value in values[:1]]]
    selections += [[f"{group}={value}" if g == group else f"{g}={vs[0]}" for g, vs in groups.items()]
                   for group, values in groups.items() for value in values[1:]]
    known: set[str] = set()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for selection in selections:
            try:
                cfg = compose(config_name, overrides=selection)
            except Exception:  # an unknown group option: Hydra names it, with the options there are
                return
            known |= set(_dotted_keys(OmegaConf.to_container(cfg, resolve=False)))
        if {"-m", "--multirun"} & set(arguments) and any(len(values) > 1 for values in groups.values()):
            refuse_keys_of_swept_options(config_name, groups, [g for g, vs in groups.items() if len(vs) > 1],
                                         [key for key in keys if key in known])
    for key in keys:
        if key not in known:
            parent, _, name = key.rpartition(".")
            siblings = sorted(k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == parent)
            nearest = difflib.get_close_matches(name, siblings, n=1, cutoff=0.6)
            hint = f" Did you mean {parent + '.' if parent else ''}{nearest[0]}?" if nearest else ""
            Console(stderr=True, highlight=False).print(
                f"[bold red]error:[/] {key} is not an option of {config_name}.yaml or its groups.{hint} "
                f"(A + prefix would add {key} as a new key, which nothing reads.)", soft_wrap=True)
            sys.exit(2)


def refuse_keys_of_swept_options(config_name: str, groups: dict[str, list[str]], swept: list[str],
                                 keys: list[str]) -> None:
    """A multirun composes its config once before the sweep, with each swept group at its default
    (``model=emotion`` for ``-m model=grl,hsic``): a key that only the swept options bring
    (``model.max_emotion_loss``) fails there with Hydra's advice to add it with ``+``. Say what works."""
    from hydra import compose
    from omegaconf import OmegaConf

    fixed = [f"{group}={values[0]}" for group, values in groups.items() if group not in swept]
    cfg = compose(config_name, overrides=fixed, return_hydra_config=True)
    missing = [key for key in keys if key not in set(_dotted_keys(OmegaConf.to_container(cfg, resolve=False)))]
    if missing:
        sweeps = " ".join(f"{group}={','.join(groups[group])}" for group in swept)
        defaults = " ".join(f"{group}={cfg.hydra.runtime.choices.get(group.split('@')[0])}" for group in swept)
        Console(stderr=True, highlight=False).print(
            f"[bold red]error:[/] {', '.join(missing)}: an option of {sweeps}, not of the default {defaults} that Hydra "
            f"composes a multirun with before its sweep. Write ++{missing[0]}=... (set where the option exists, added "
            "where not), or run one sweep per option.", soft_wrap=True)
        sys.exit(2)


def _dotted_keys(tree: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield f"{prefix}{key}"
            yield from _dotted_keys(value, f"{prefix}{key}.")
