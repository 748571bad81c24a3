"""Errors raised on bad input. Each names the problem; none is raised after the user's model was changed."""


class InitError(ValueError):
    """The model, config or options cannot be initialized as asked."""


class AdapterLoadError(ValueError):
    """A saved IniLoRA adapter cannot be loaded: missing or corrupted files, or a different base model."""
