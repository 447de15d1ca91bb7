"""Errors a user can cause. Each message names the file, line, field or option and what to do."""


class RlhfkitError(Exception):
    """Base class: the CLI prints the message on one line and exits non-zero, without a traceback."""

    exit_code = 2


class ConfigError(RlhfkitError):
    """A config file, key or command-line override is wrong."""


class DataError(RlhfkitError):
    """A data file is missing, malformed or fails validation."""


class ModelError(RlhfkitError):
    """A model directory is missing or cannot be loaded."""


class TrainingError(RlhfkitError):
    """A run stopped for a reason the user must act on (NaN loss, empty data after truncation)."""


class JudgeError(RlhfkitError):
    """An AI judge's endpoint refused a request or kept failing (names the URL and the status)."""
