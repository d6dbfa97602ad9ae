"""Errors a user can fix. Each message names the file or option at fault and says what to do.

The command-line entry points print these as one paragraph and exit with status 2 instead of a
traceback; anything else escaping is a bug in anonemo.
"""


class AnonemoError(Exception):
    """Base class: a problem with the user's input, explained in the message."""


class ConfigError(AnonemoError, ValueError):
    """A configuration value is invalid or inconsistent with the data."""


class DatasetError(AnonemoError):
    """A dataset folder or archive is missing, empty or holds no usable images."""


class ImageReadError(DatasetError):
    """One image file could not be read or decoded."""


class ImageTooLargeError(ImageReadError):
    """One image file declares more pixels than the limit (a possible decompression bomb)."""


class ModelFileError(AnonemoError):
    """A saved model or base file is unreadable, or not what anonemo wrote."""


class TrackingError(AnonemoError):
    """An MLflow run or artifact that a command needs is missing or unreachable."""


def require_permutations(permutations: int, option: str) -> None:
    """The permutation-null count ``option``, checked before any work (the null runs last)."""
    if permutations < 0:
        raise ConfigError(f"{option}={permutations} must be 0 (no null) or a number of permutations.")
