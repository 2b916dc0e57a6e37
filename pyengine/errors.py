"""Errors a user sees as one line (the CLI prints ``pyengine: error: <message>``)."""


class PyEngineError(Exception):
    """Any error pyengine reports to a user: the message is complete and fits one line."""


class ModelFileError(PyEngineError):
    """A model file is missing, truncated, corrupt or uses something we do not support."""


class PromptTooLongError(PyEngineError):
    """The prompt (plus requested tokens) does not fit the context window."""


class BackendUnavailableError(PyEngineError):
    """The requested backend cannot run here (not built, no GPU, missing package)."""
