"""From configuration to objects: every ``_target_`` node is built here, so that an option's
error reaches the user as anonemo's own message, not as Hydra's wrapper around it."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from anonemo.errors import AnonemoError, ConfigError


def build(node: DictConfig, option: str) -> Any:
    """``instantiate(node)`` with lists and dicts as plain Python; ``option`` names the config
    group in errors (``model``, ``network``)."""
    try:
        return instantiate(node, _convert_="all")
    except InstantiationException as error:
        cause: BaseException | None = error
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, AnonemoError):
            raise cause from None
        raise ConfigError(f"{option}: {cause}") from error
