"""The batch contract every generation backend implements.

An engine takes a *list* of requests and returns a list of results in the same
order. One ``generate()`` call is meant to be one backend call (one
``vllm.LLM.generate``, one HF ``generate`` per batch, one gather of async API
calls), so algorithm code never loops over items calling an engine.

Nothing here imports torch or vllm: ``import engines`` stays cheap.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import threading
import time
from collections.abc import Sequence
from typing import Any

from engines.dedup import collapse, fan_out
from engines.errors import EngineError, RequestError

_ROLES = ("system", "user", "assistant")

#: finish_reason of a completion cut off by the context: its prompt left less room than its
#: ``max_tokens``, the backend lowered the cap to the room left (vLLM does, in process and as a
#: server) and the completion ran into it. Cut off like "length", but a larger ``max_tokens``
#: cannot help: the prompt must be shorter or the context (``max_model_len``) longer.
FINISH_CONTEXT = "context_length"
#: finish reasons of a completion that stopped before its end: at ``max_tokens``, or at the context.
CUT_OFF_REASONS = ("length", FINISH_CONTEXT)


def is_cut_off(finish_reason: str | None) -> bool:
    """Whether a completion with ``finish_reason`` was cut off (at max_tokens or by the context)."""
    return finish_reason in CUT_OFF_REASONS


def context_finish_reason(finish_reason: str, completion_tokens: int, max_tokens: int) -> str:
    """The finish reason to report for a completion whose cap a backend may have lowered.

    A backend that stops at the context reports "length" like one that stops at
    ``max_tokens``; the two differ in the count: a completion that stopped at "length"
    with fewer tokens than the request's ``max_tokens`` ran into the context. Every
    engine that can know the count builds its results' finish reason here.

    Args:
        finish_reason: the backend's reason.
        completion_tokens: tokens generated (0: unknown, the reason is kept).
        max_tokens: the request's cap.

    Returns:
        ``FINISH_CONTEXT`` for such a completion, else ``finish_reason``.
    """
    if finish_reason == "length" and 0 < completion_tokens < max_tokens:
        return FINISH_CONTEXT
    return finish_reason


def context_room(request: GenRequest, prompt_tokens: int, max_model_len: int) -> tuple[int, GenResult | None]:
    """The ``max_tokens`` a request can get in a context of ``max_model_len``, or its error result.

    Returns:
        ``(min(max_tokens, room left), None)``, or ``(0, error result)`` when the prompt
        leaves no token for the answer (the request is then not submitted).
    """
    room = max_model_len - prompt_tokens
    if room < 1:
        return 0, GenResult.failed(
            request.id,
            f"prompt has {prompt_tokens} tokens; the context (max_model_len) is {max_model_len} "
            "and must leave at least 1 token for the answer",
            prompt_tokens=prompt_tokens,
        )
    return min(request.sampling.max_tokens, room), None


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Sampling settings of one request.

    Attributes:
        temperature: >= 0; 0 means greedy.
        top_p: nucleus mass in (0, 1].
        max_tokens: most new tokens to generate, >= 1.
        stop: strings that end generation (not included in the text).
        seed: per-request sampling seed, or None. Part of the request's
            identity (and cache key) even where the backend cannot honour it.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif not isinstance(self.stop, tuple):
            object.__setattr__(self, "stop", tuple(self.stop))
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {t!r}")
        p = self.top_p
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not (0 < p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {p!r}")
        m = self.max_tokens
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {m!r}")
        if not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop must be a list of non-empty strings, got {self.stop!r}")
        s = self.seed
        if s is not None and (isinstance(s, bool) or not isinstance(s, int) or s < 0):
            raise ValueError(f"seed must be None or an integer >= 0, got {s!r}")

    def replace(self, **changes: Any) -> SamplingConfig:
        """Returns a copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stop"] = list(self.stop)
        return d


@dataclasses.dataclass(frozen=True)
class Message:
    """One chat message."""

    role: str
    content: str

    def __post_init__(self) -> None:
        if self.role not in _ROLES:
            raise ValueError(f"message role must be one of {_ROLES}, got {self.role!r}")
        if not isinstance(self.content, str):
            raise ValueError(f"message content must be a string, got {type(self.content).__name__}")


@dataclasses.dataclass(frozen=True)
class GenRequest:
    """One generation request.

    Exactly one of ``messages`` (chat, rendered with the model's chat template
    and its generation prompt) or ``prompt`` (raw text, no template) is set.

    Attributes:
        messages: chat messages, as ``Message`` or ``(role, content)`` pairs or
            ``{"role", "content"}`` dicts; normalised to a tuple of ``Message``.
        prompt: raw completion prompt.
        sampling: sampling settings.
        id: caller's id, echoed in the result.
        response_prefix: text the response must start with (the inference
            template). Engines that can prefill the assistant turn do so; the
            result's ``text`` is the continuation *after* the prefix.
    """

    messages: tuple[Message, ...] | None = None
    prompt: str | None = None
    sampling: SamplingConfig = SamplingConfig()
    id: str = ""
    response_prefix: str = ""

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("a request needs exactly one of messages or prompt")
        if self.messages is not None:
            msgs = []
            for m in self.messages:
                if isinstance(m, Message):
                    msgs.append(m)
                elif isinstance(m, dict):
                    msgs.append(Message(m.get("role", ""), m.get("content", "")))
                else:
                    role, content = m
                    msgs.append(Message(role, content))
            if not msgs:
                raise ValueError("messages must not be empty")
            object.__setattr__(self, "messages", tuple(msgs))
        if self.prompt is not None and not isinstance(self.prompt, str):
            raise ValueError(f"prompt must be a string, got {type(self.prompt).__name__}")
        if not isinstance(self.sampling, SamplingConfig):
            raise ValueError("sampling must be a SamplingConfig")
        if not isinstance(self.response_prefix, str):
            raise ValueError("response_prefix must be a string")
        object.__setattr__(self, "id", str(self.id))

    @classmethod
    def chat(
        cls,
        user: str,
        *,
        system: str | None = None,
        sampling: SamplingConfig | None = None,
        id: str = "",
        response_prefix: str = "",
    ) -> GenRequest:
        """Builds a chat request from a user message and optional system prompt."""
        msgs = ([Message("system", system)] if system else []) + [Message("user", user)]
        return cls(
            messages=tuple(msgs),
            sampling=sampling or SamplingConfig(),
            id=id,
            response_prefix=response_prefix,
        )

    def messages_as_dicts(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.content} for m in self.messages or ()]

    def key_dict(self) -> dict[str, Any]:
        """Everything that determines the output (not the id): the cache key."""
        return {
            "messages": self.messages_as_dicts() if self.messages is not None else None,
            "prompt": self.prompt,
            "response_prefix": self.response_prefix,
            "sampling": self.sampling.to_dict(),
        }


@dataclasses.dataclass(frozen=True)
class GenResult:
    """The outcome of one request.

    Attributes:
        id: the request's id.
        text: generated continuation (after any response prefix); "" on error.
        finish_reason: "stop", "length" (cut off at ``max_tokens``), "context_length"
            (cut off by the context: ``FINISH_CONTEXT``), "error", or the backend's reason.
        prompt_tokens: tokens in the rendered prompt (0 if unknown).
        completion_tokens: generated tokens.
        error: None, or why this request alone failed.
        cached: True if served from the cache without a backend call.
        deduplicated: True if this is a copy of the result of an identical
            request earlier in the same batch (``engines.dedup``): no
            backend work of its own.
        cached_tokens: prompt tokens the backend found in its prefix cache
            (vLLM's ``num_cached_tokens``, OpenAI's
            ``usage.prompt_tokens_details.cached_tokens``); 0 if unknown.
    """

    id: str
    text: str = ""
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    cached: bool = False
    deduplicated: bool = False
    cached_tokens: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failed(cls, id: str, error: str, prompt_tokens: int = 0) -> GenResult:
        return cls(id=id, text="", finish_reason="error", prompt_tokens=prompt_tokens, error=error)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Usage:
    """Counters an engine keeps; read with ``engine.usage``, reset with ``reset_usage()``.

    ``calls`` counts backend calls (a fully cached batch makes none).
    ``requests`` counts the requests callers sent; ``deduplicated`` those of
    them answered by an identical request of the same batch (no backend
    work), so prompt/completion tokens count only the work actually done.
    ``cached_prompt_tokens`` is the part of ``prompt_tokens`` the backend
    served from its prefix cache (0 where the backend does not report it).
    ``context_truncated`` counts the results cut off by the context
    (finish_reason ``FINISH_CONTEXT``), not served from the cache.
    ``deduplicated_prompt_tokens`` are the prompt tokens of the deduplicated
    copies: ``prompt_tokens`` plus them is what callers asked for.
    """

    calls: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    wall_s: float = 0.0
    cache_hits: int = 0
    errors: int = 0
    retries: int = 0
    deduplicated: int = 0
    cached_prompt_tokens: int = 0
    context_truncated: int = 0
    deduplicated_prompt_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["wall_s"] = round(d["wall_s"], 4)
        return d

    def add(self, other: Usage) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What a backend can honour natively.

    Attributes:
        per_request_seed: per-request seeds are passed to the sampler.
        response_prefix: the assistant turn can be prefilled.
        seed_fallback: how seeds are handled when not per request (documented).
    """

    per_request_seed: bool = True
    response_prefix: bool = True
    seed_fallback: str = ""


class Engine(abc.ABC):
    """A generation backend with the batch contract.

    Subclasses implement ``_generate`` (one backend call for the whole list)
    and ``identity``. ``generate`` validates input, keeps usage counters,
    and guarantees one result per request, in request order, ids matched.
    Identical requests of one batch reach ``_generate`` once (see
    ``engines.dedup``).
    """

    #: registry spec the engine was built from, e.g. "vllm:bundled"
    spec: str = ""
    capabilities = Capabilities()
    #: identical requests of one batch reach the backend once (``engines.dedup``); False sends
    #: every copy (a benchmark at equal work with a client that sends each: ``mtg bench peer``)
    deduplicate: bool = True

    def __init__(self) -> None:
        self._usage = Usage()
        self._usage_lock = threading.Lock()
        self._first_error: str | None = None

    # -- public -------------------------------------------------------------
    def generate(self, requests: Sequence[GenRequest], /, **kwargs: Any) -> list[GenResult]:
        """Generates one result per request, in input order.

        Args:
            requests: the batch; an empty list makes no backend call.
            **kwargs: keyword-only options for the backend (e.g. ``progress``).

        Returns:
            ``GenResult`` list, ``results[i].id == requests[i].id``. A request
            that failed on its own carries ``error``; the others are unaffected.

        Raises:
            EngineError: the backend as a whole failed (nothing usable came back).
        """
        requests = list(requests)
        for i, r in enumerate(requests):
            if not isinstance(r, GenRequest):
                raise TypeError(f"requests[{i}] must be a GenRequest, got {type(r).__name__}")
        if not requests:
            return []
        unique, index = collapse(requests) if self.deduplicate else (requests, list(range(len(requests))))
        t0 = time.perf_counter()
        results = self._generate(unique, **kwargs)
        wall = time.perf_counter() - t0
        if len(results) != len(unique):
            raise EngineError(
                f"{type(self).__name__} returned {len(results)} results for {len(unique)} requests"
            )
        for req, res in zip(unique, results):
            if res.id != req.id:
                raise EngineError(f"result id {res.id!r} does not match request id {req.id!r}")
        results = fan_out(requests, results, index)
        self._record(results, wall)
        return results

    @property
    def usage(self) -> Usage:
        """A snapshot copy of the counters."""
        with self._usage_lock:
            return dataclasses.replace(self._usage)

    def reset_usage(self) -> Usage:
        """Resets the counters (and ``first_error``) and returns their values before the reset."""
        with self._usage_lock:
            old, self._usage = self._usage, Usage()
            self._first_error = None
        return old

    @property
    def first_error(self) -> str | None:
        """The error text of the first failed request since construction or ``reset_usage``."""
        return getattr(self, "_first_error", None)

    @abc.abstractmethod
    def identity(self) -> dict[str, Any]:
        """What makes outputs of this engine distinct (model, dtype, ...): cache key part.

        Must not contain secrets.
        """

    def probe(self) -> None:
        """Checks once, cheaply, that the backend is there; commands call it before the first phase.

        Raises:
            EngineUnreachableError: it is not (one line naming what to check).
        Engines that load their model in-process are there once built: nothing to check.
        """

    def close(self) -> None:
        """Releases backend resources. Safe to call twice."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(spec={self.spec!r})"

    # -- for subclasses -----------------------------------------------------
    @abc.abstractmethod
    def _generate(self, requests: list[GenRequest], **kwargs: Any) -> list[GenResult]:
        """One backend call for the whole list; results in input order."""

    def _count_backend_calls(self) -> int:
        """Backend calls made by the last ``_generate`` (1 unless overridden)."""
        return 1

    def _record(self, results: list[GenResult], wall: float) -> None:
        with self._usage_lock:
            u = self._usage
            u.calls += self._count_backend_calls()
            u.requests += len(results)
            u.wall_s += wall
            for r in results:
                # Cached results cost no backend work: only hits are counted.
                if r.cached:
                    u.cache_hits += 1
                    continue
                # A failed copy is a failed request of its caller; its tokens were not spent twice.
                u.errors += r.error is not None
                u.context_truncated += r.finish_reason == FINISH_CONTEXT
                if r.error is not None and getattr(self, "_first_error", None) is None:
                    self._first_error = r.error
                if r.deduplicated:
                    u.deduplicated += 1
                    u.deduplicated_prompt_tokens += r.prompt_tokens
                    continue
                u.prompt_tokens += r.prompt_tokens
                u.cached_prompt_tokens += r.cached_tokens
                u.completion_tokens += r.completion_tokens

    def _add_retries(self, n: int) -> None:
        with self._usage_lock:
            self._usage.retries += n


def check_unique_ids(requests: Sequence[GenRequest]) -> None:
    """Raises ValueError if two requests share a non-empty id (helps callers that key by id)."""
    seen: set[str] = set()
    for r in requests:
        if r.id and r.id in seen:
            raise RequestError(f"duplicate request id {r.id!r}")
        seen.add(r.id)
