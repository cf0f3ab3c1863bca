"""Generation backends with one batch contract (see ``engines.base``).

Importing this package never imports vllm or torch: backends load lazily
through ``engines.registry.create_engine("vllm:bundled")`` and friends.
"""

from engines.base import Capabilities, Engine, GenRequest, GenResult, Message, SamplingConfig, Usage
from engines.errors import (
    BackendUnavailableError,
    EngineError,
    EngineSpecError,
    ModelNotFoundError,
    RequestError,
    UserError,
)
from engines.registry import create_engine, parse_spec, register

__all__ = [
    "BackendUnavailableError",
    "Capabilities",
    "Engine",
    "EngineError",
    "EngineSpecError",
    "GenRequest",
    "GenResult",
    "Message",
    "ModelNotFoundError",
    "RequestError",
    "SamplingConfig",
    "Usage",
    "UserError",
    "create_engine",
    "parse_spec",
    "register",
]
