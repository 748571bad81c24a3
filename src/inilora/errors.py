"""Errors raised on bad input, one hierarchy: each names the problem; none is raised after the user's
model was changed. All are ``ValueError``s, so a caller can catch bad input in one clause."""


class IniloraError(ValueError):
    """Bad input to inilora: the message names the argument, file or layer and what is allowed."""


class InitError(IniloraError):
    """The model, config or options cannot be initialized as asked."""


class UnknownOptionError(InitError, TypeError):
    """A keyword argument inilora does not know (a ``TypeError`` too, as Python's own would be)."""


class AdapterLoadError(IniloraError):
    """A saved IniLoRA adapter cannot be loaded: missing or corrupted files, or a different base model."""


class DataError(IniloraError):
    """A task name or data file that cannot be used; the message names the file, line and problem."""


class ModelError(IniloraError):
    """A model name or folder cannot be resolved or loaded."""
