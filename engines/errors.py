"""Exception types of the engine layer.

User mistakes (bad spec, missing model, bad sampling value) raise subclasses of
``UserError`` so the CLI can print one line instead of a traceback.
"""


class UserError(Exception):
    """A mistake the user can fix from the message alone (printed without traceback)."""


class EngineSpecError(UserError, ValueError):
    """An engine spec such as ``vllm:bundled`` is malformed or names no engine."""


class ModelNotFoundError(UserError, FileNotFoundError):
    """A model path or name does not resolve to a model."""


class RequestError(UserError, ValueError):
    """A request is malformed (raised before any backend call)."""


class EngineError(RuntimeError):
    """The backend failed as a whole (not one request)."""


class BackendUnavailableError(UserError, ImportError):
    """The package a backend needs is not installed (names the extra to install)."""


class EngineStartError(EngineError):
    """The backend could not start (no usable device, not enough memory, a model it cannot load).

    Nothing was run. The CLI prints the one line and exits 3 (a run that could
    not be done), as for ``EngineUnreachableError``.
    """


class NoUsableGPUError(EngineStartError):
    """The installed vLLM is a GPU build and finds no GPU it can use here.

    Raised before a model is loaded; the message names what was found (vLLM,
    torch and CUDA versions, devices visible, the driver) and the ways out.
    """


class EngineUnreachableError(EngineError):
    """The backend is not there (a refused connection, a model the server does not serve).

    Raised by ``Engine.probe()`` before the first phase, so a run learns it in
    seconds instead of after every request's retries. The CLI prints the one
    line and exits 3 (a run that could not be done), not 2 (a user error): the
    spec may be right and the server merely down.
    """
