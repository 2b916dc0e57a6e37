"""Errors a user sees as one line (the CLI prints ``pyengine: error: <message>``)."""


class PyEngineError(Exception):
    """Any error pyengine reports to a user: the message is complete and fits one line."""


class ModelFileError(PyEngineError):
    """A model file is missing, truncated, corrupt or uses something we do not support."""


class PromptTooLongError(PyEngineError):
    """The prompt (plus requested tokens) does not fit the context window."""


class BackendUnavailableError(PyEngineError):
    """The requested backend cannot run here (not built, no GPU, missing package)."""


class NonFiniteError(PyEngineError):
    """The model computed NaN or Inf: its weights (or header values) are broken."""


def check_finite_logits(logits):
    """``logits`` (``(n_vocab,)`` float32) unchanged, or NonFiniteError when any is NaN/Inf.

    Called once per forward step by the engine: a broken file must fail loudly rather
    than sample fluent-looking text from garbage (costs one pass over n_vocab floats).
    """
    import numpy as np

    finite = np.isfinite(logits)
    if not finite.all():
        n_bad = int(logits.size - np.count_nonzero(finite))
        raise NonFiniteError(
            f"the model computed non-finite logits ({n_bad} of {logits.size} are NaN or Inf): the model file "
            "holds non-finite or out-of-range weights (corrupt or badly converted); re-download or re-convert it")
    return logits


def check_n_ctx(n_ctx):
    """``n_ctx`` as given (None: the default), or PyEngineError unless it is a positive integer."""
    if n_ctx is None:
        return None
    if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) and not hasattr(n_ctx, "__index__"):
        raise PyEngineError(f"n_ctx must be a positive integer, got {n_ctx!r}")
    if int(n_ctx) <= 0:
        raise PyEngineError(f"n_ctx must be a positive integer (context size in tokens), got {int(n_ctx)}")
    return int(n_ctx)


def check_max_tokens(max_tokens) -> int:
    """``max_tokens`` as an int, or PyEngineError unless it is an integer (<= 0 generates nothing)."""
    if isinstance(max_tokens, bool) or not hasattr(max_tokens, "__index__"):
        raise PyEngineError(f"max_tokens must be an integer number of tokens, got {max_tokens!r}")
    return int(max_tokens)
