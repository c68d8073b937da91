"""Errors raised by the engine. Each says what was wrong and what would be accepted."""

from __future__ import annotations


class RStitchError(Exception):
    """Base class of every error the engine raises on purpose."""


class InvalidSettingError(RStitchError, ValueError):
    """A threshold, sampling setting or limit is out of its valid range."""


def require_int_at_least(name: str, value: object, minimum: int) -> None:
    """Raise ``InvalidSettingError`` unless ``value`` is an int (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidSettingError(f"{name} must be an integer >= {minimum}, got {value!r}")


class TokenizerMismatchError(RStitchError, ValueError):
    """The two models of a pair do not share one tokenizer."""


class PromptTooLongError(RStitchError, ValueError):
    """Prompt plus max new tokens do not fit a model's context window."""


class EmptyPromptError(RStitchError, ValueError):
    """The prompt has no tokens (an empty string or an empty message list)."""


class ModelLoadError(RStitchError, RuntimeError):
    """A model or tokenizer could not be found or loaded."""
