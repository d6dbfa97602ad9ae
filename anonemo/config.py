"""From configuration to objects: every ``_target_`` node is built here, so that an option's
error reaches the user as anonemo's own message, not as Hydra's wrapper around it."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from anonemo.errors import AnonemoError, ConfigError
from anonemo.precision import fastest_precision


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


def source_default(key: str, *, _root_: DictConfig) -> Any:
    """``${anonemo.source_default:image_size}``: the value the dataset's loader says fits the data
    under ``dataset.root`` (CK+'s pre-cropped copy: 48 pixels, no face crop)."""
    dataset = _root_.dataset
    defaults = get_class(dataset.loader).layout_defaults(dataset.root)
    if key not in defaults:
        raise ConfigError(f"${{anonemo.source_default:{key}}}: {dataset.loader} has no default for {key}.")
    return defaults[key]


def register_resolvers() -> None:
    """The configs' own interpolations: ``${anonemo.fastest_precision:}`` and ``${anonemo.source_default:KEY}``."""
    OmegaConf.register_new_resolver("anonemo.fastest_precision", fastest_precision, replace=True)
    OmegaConf.register_new_resolver("anonemo.source_default", source_default, replace=True)
