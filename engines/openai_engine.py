"""OpenAI API (or any OpenAI-compatible server, e.g. ``vllm serve``) behind the batch contract.

``openai:<model>``. One ``generate(list)`` runs every request concurrently on an
``AsyncOpenAI`` client inside the engine's own event loop thread, so it can be
called from plain code, from worker threads, and from code that already runs
an event loop. At most ``max_concurrency`` requests are in flight **per
engine object**: concurrent ``generate()`` calls (the cells of ``mtg grid``)
share one limit, as they share one API quota. Results come back in input
order.

Before the first phase, commands call ``probe()``: one ``GET /models`` (a few
quick tries) that turns a refused connection or a model the server does not
list into ``EngineUnreachableError`` within seconds, instead of every
request's retries and back-off (minutes). It also settles ``prefill=auto``.

Failures stay per request. Rate limits (429), server errors (5xx, 408, 409),
timeouts, connection errors and malformed responses are retried with
exponential backoff and jitter (tenacity), waiting at least what the server's
``Retry-After`` / ``retry-after-ms`` asks; the client's own retries are off so
every retry is counted once, in ``usage.retries``. A request stops after
``max_retries`` retries or when the next wait would pass its ``deadline_s``
(counted from when it got a concurrency slot), and then carries an error
result; the rest of the batch is unaffected.

Response prefix (the inference template the answer must start with):

* ``prefill=true``: the prefix is sent as a trailing assistant message with
  ``continue_final_message=True, add_generation_prompt=False`` (vLLM's chat
  API), so the model continues it exactly; ``text`` is the continuation.
* ``prefill=false``: the last user message gets an instruction to begin the
  answer with the prefix, and a repeated prefix at the start of the answer is
  stripped (case-insensitive, surrounding whitespace ignored). Approximate: a
  model may not comply, then ``text`` is its whole answer.
* default ``auto``: prefill if ``GET /models`` says ``owned_by: "vllm"``,
  otherwise (api.openai.com included) the instruction.

Raw ``prompt=`` requests use the completions endpoint, with the prefix
appended to the prompt.

The API key comes from the ``api_key`` argument or the environment variable
named by ``api_key_env`` (``OPENAI_API_KEY``); ``base_url`` from the option or
``OPENAI_BASE_URL``. The key is kept out of the config, ``identity()``,
``repr`` and logs, and scrubbed from every error text.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import random
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import openai
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, stop_before_delay

from engines.base import Capabilities, Engine, GenRequest, GenResult, context_finish_reason
from engines.errors import EngineError, EngineSpecError, UserError
from engines.loop_thread import BackgroundLoop, CallerTasks
from engines.openai_support import (
    MalformedResponse,
    Redactor,
    prefilled_chat,
    probe_models,
    retry_after_s,
    retryable,
    safe_url,
    strip_repeated_prefix,
    with_prefix_instruction,
)
from engines.pricing import estimate_cost, load_prices

log = logging.getLogger(__name__)

OPENAI_API_BASE_URL = "https://api.openai.com/v1"


class OpenAIAuthError(UserError):
    """Every request of a batch was refused with 401/403: the API key is missing or wrong."""


class OpenAIModelNotFoundError(UserError):
    """Every request of a batch got 404: the model (or base_url path) does not exist there."""


class MissingAPIKeyError(UserError):
    """The OpenAI API itself was asked for without an API key."""


@dataclasses.dataclass(frozen=True)
class OpenAIConfig:
    """Settings of an ``OpenAIEngine`` (safe to write to a run dir: no secrets).

    Attributes:
        model: model name on the server, e.g. ``gpt-4o-mini``.
        base_url: API root (``.../v1``); None = ``$OPENAI_BASE_URL`` or the OpenAI API.
        api_key_env: environment variable holding the API key.
        max_concurrency: requests in flight at once on one engine object (shared by
            concurrent ``generate()`` calls, e.g. the cells of ``mtg grid``), >= 1. Default
            64, sized for a vLLM server: the server batches only what is in
            flight, so a low cap starves its batch (measured against a vLLM
            server on 2 CPU cores: 16 in flight took 15 % longer than 32 on
            the inner-loop workload; a GPU server batches hundreds), while 64
            stays below vLLM's default ``max_num_seqs`` (128 for a CPU server,
            256-1024 on GPUs), so the server still schedules all of it at once. Against the OpenAI
            API a 429 is retried with backoff; lower it for tight rate
            limits. With more in flight, each request waits longer inside a
            slow server: raise ``timeout_s`` there (it bounds one attempt,
            queueing included).
        timeout_s: limit of one attempt in seconds, > 0.
        deadline_s: limit of one request including retries and waits, > 0.
        max_retries: retries per request after the first attempt, >= 0.
        backoff_initial_s: first backoff wait, > 0; doubles per retry.
        backoff_max_s: longest backoff wait (a longer ``Retry-After`` still wins).
        prefill: True/False, or None = auto-detect vLLM (see module docstring).
        send_seed: pass per-request seeds (False for servers that crash on them).
        pricing_file: JSON price overrides for ``cost_usd`` (see ``engines.pricing``).
    """

    model: str
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = 64
    timeout_s: float = 60.0
    deadline_s: float = 600.0
    max_retries: int = 6
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    prefill: bool | None = None
    send_seed: bool = True
    pricing_file: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(f"model must be a non-empty string, got {self.model!r}")
        if self.base_url is not None and not str(self.base_url).startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {safe_url(str(self.base_url))!r}")
        if not isinstance(self.api_key_env, str) or not self.api_key_env:
            raise ValueError(f"api_key_env must name an environment variable, got {self.api_key_env!r}")
        for name, low in (("max_concurrency", 1), ("max_retries", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
        for name in ("timeout_s", "deadline_s", "backoff_initial_s", "backoff_max_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name} must be a finite number of seconds > 0, got {v!r}")
        if self.prefill not in (None, True, False):
            raise ValueError(f"prefill must be true, false or auto, got {self.prefill!r}")
        if not isinstance(self.send_seed, bool):
            raise ValueError(f"send_seed must be true or false, got {self.send_seed!r}")


class OpenAIEngine(Engine):
    """Batch engine on the OpenAI API or a compatible server. See the module docstring."""

    capabilities = Capabilities(per_request_seed=True, response_prefix=True)

    def __init__(self, config: OpenAIConfig, *, api_key: str | None = None) -> None:
        """Creates the engine (no network call yet).

        Args:
            config: settings; ``base_url`` None is resolved from the environment.
            api_key: the key; None reads ``os.environ[config.api_key_env]``.

        Raises:
            MissingAPIKeyError: no key for the OpenAI API itself.
        """
        super().__init__()
        base_url = (config.base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_API_BASE_URL).rstrip("/")
        parts = urlsplit(base_url)
        # The client gets the URL as given; the config (written to run dirs) never
        # holds a password or query string from it.
        self._base_url = base_url
        public_url = safe_url(base_url) if parts.password or parts.query else base_url
        self.config = dataclasses.replace(config, base_url=public_url)
        self.spec = f"openai:{config.model}"
        key = api_key if api_key is not None else os.environ.get(config.api_key_env, "")
        self._official = parts.hostname == "api.openai.com"
        if not key:
            if self._official:
                raise MissingAPIKeyError(
                    f"openai:{config.model} needs an API key: set {config.api_key_env} "
                    "(or point base_url at an OpenAI-compatible server)"
                )
            key = "EMPTY"  # servers started without --api-key ignore it, the client needs one
        self._secret = key
        self._scrub = Redactor(key, parts.password)
        if not config.send_seed:
            self.capabilities = Capabilities(
                per_request_seed=False,
                response_prefix=True,
                seed_fallback="send_seed=false: seeds are not sent; samples differ by server-side randomness only",
            )
        self._prices = load_prices(config.pricing_file)
        self._prefill_detected: bool | None = None
        self._probed = False
        self._probe_lock = threading.Lock()
        self._callers = CallerTasks()  # each caller's batches in flight, for cancel(tag)
        self._lock = threading.Lock()
        # One loop for the engine's lifetime: every caller's requests wait on one semaphore.
        self._loop: BackgroundLoop | None = None
        self._slots: asyncio.Semaphore | None = None

    #: concurrent generate() calls share the loop and the concurrency limit (see engines.shared).
    serves_concurrent_calls = True
    #: ``generate(..., tag=...)`` names the caller, whose requests ``cancel(tag)`` can drop.
    accepts_caller_tag = True

    def probe(self) -> None:
        """One ``GET /models`` before the first phase (see the module docstring); once per engine.

        Raises:
            EngineUnreachableError: refused / unreachable server, or a model it does not list.
            OpenAIAuthError: the server refused the API key.
        """
        with self._probe_lock:
            if self._probed:
                return

            async def _probe() -> list[Any] | None:
                client = openai.AsyncOpenAI(api_key=self._secret, base_url=self._base_url, max_retries=0)
                try:
                    return await probe_models(client, self.config.model, self._safe_base())
                finally:
                    await client.close()

            try:
                models = self._background_loop().run(_probe())
            except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
                raise OpenAIAuthError(f"{self._safe_base()} refused the API key (HTTP {e.status_code}); "
                                      f"check {self.config.api_key_env}") from None
            if models is not None and self.config.prefill is None and not self._official:
                with self._lock:
                    self._prefill_detected = any(getattr(m, "owned_by", None) == "vllm" for m in models)
            self._probed = True

    def cancel(self, tag: str) -> int:
        """Drops every request of caller ``tag`` in flight or waiting for a slot; returns its batches cancelled."""
        with self._lock:
            loop = self._loop
        return self._callers.cancel(loop, tag)

    def _background_loop(self) -> BackgroundLoop:
        with self._lock:
            if self._loop is None:
                self._loop = BackgroundLoop(name="openai-engine")
            return self._loop

    def close(self) -> None:
        """Stops the engine's event loop thread. Safe to call twice."""
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            loop.close()

    @classmethod
    def from_spec(cls, model: str | None, **options: Any) -> OpenAIEngine:
        """Builds the engine from ``openai:<model>`` and ``--engine-opt`` values.

        ``api_key`` is accepted for programmatic use; prefer ``api_key_env`` in
        configs, which names the variable instead of holding the secret.
        """
        api_key = options.pop("api_key", None)
        if options.get("prefill") in ("auto", "", None):
            options["prefill"] = None
        known = {f.name for f in dataclasses.fields(OpenAIConfig)} - {"model"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise EngineSpecError(
                f"unknown option(s) for the openai engine: {', '.join(unknown)}; known: {', '.join(sorted(known))}, api_key"
            )
        try:
            config = OpenAIConfig(model=model or "", **options)
        except ValueError as e:
            raise EngineSpecError(f"bad option for the openai engine: {e}") from None
        return cls(config, api_key=api_key)

    def identity(self) -> dict[str, Any]:
        # The server (not only the model name) decides the outputs; prefill mode changes the prompt.
        prefill = "auto" if self.config.prefill is None else self.config.prefill
        return {"backend": "openai", "model": self.config.model, "base_url": safe_url(self.config.base_url or ""), "prefill": prefill}

    def __repr__(self) -> str:
        return f"OpenAIEngine(spec={self.spec!r}, base_url={safe_url(self.config.base_url or '')!r})"

    def cost_usd(self) -> float | None:
        """Estimated cost of the usage so far (USD), or None if the model has no known price."""
        u = self.usage
        return estimate_cost(self.config.model, u.prompt_tokens, u.completion_tokens, prices=self._prices)

    # -- secrets --------------------------------------------------------------
    def _describe(self, exc: BaseException, attempts: int) -> str:
        msg = str(exc) or type(exc).__name__
        return self._scrub(f"{type(exc).__name__}: {msg[:500]} (gave up after {attempts} attempt(s))")

    # -- batch ----------------------------------------------------------------
    def _generate(self, requests: list[GenRequest], **kwargs: Any) -> list[GenResult]:
        tag = str(kwargs.pop("tag", "") or "")
        kwargs.pop("progress", None)
        # The engine's loop thread runs the batch: works whether or not the caller runs a loop.
        try:
            outcomes = self._background_loop().run(self._run_batch(requests, tag))
        except UserError:
            raise
        except Exception as e:  # a bug or a client failure outside any one request
            raise EngineError(self._scrub(f"openai engine failed: {type(e).__name__}: {e}")) from None
        results = [r for r, _ in outcomes]
        statuses = {s for _, s in outcomes}
        if all(not r.ok for r in results) and len(statuses) == 1:
            status = statuses.pop()
            if status in (401, 403):
                raise OpenAIAuthError(
                    f"{self._safe_base()} refused the API key (HTTP {status}) for every request; "
                    f"check {self.config.api_key_env}. First error: {results[0].error}"
                )
            if status == 404:
                raise OpenAIModelNotFoundError(
                    f"model {self.config.model!r} not found at {self._safe_base()} (HTTP 404); "
                    f"check the model name and base_url. First error: {results[0].error}"
                )
        return results

    def _safe_base(self) -> str:
        return safe_url(self.config.base_url or "")

    async def _run_batch(self, requests: list[GenRequest], tag: str = "") -> list[tuple[GenResult, int | None]]:
        client = openai.AsyncOpenAI(
            api_key=self._secret, base_url=self._base_url, max_retries=0, timeout=self.config.timeout_s
        )
        try:
            needs_prefix = any(r.response_prefix and r.messages is not None for r in requests)
            prefill = await self._resolve_prefill(client) if needs_prefix else False
            if self._slots is None:  # created on the loop thread, shared by every batch
                self._slots = asyncio.Semaphore(self.config.max_concurrency)
            slots = self._slots

            async def run_one(req: GenRequest) -> tuple[GenResult, int | None]:
                async with slots:
                    return await self._one(client, req, prefill)

            with self._callers.track(tag):
                return list(await asyncio.gather(*(run_one(r) for r in requests)))
        finally:
            await client.close()

    async def _resolve_prefill(self, client: openai.AsyncOpenAI) -> bool:
        if self.config.prefill is not None:
            return self.config.prefill
        with self._lock:
            if self._prefill_detected is not None:
                return self._prefill_detected
        detected = False
        if not self._official:
            try:
                page = await client.models.list(timeout=min(self.config.timeout_s, 30.0))
                detected = any(getattr(m, "owned_by", None) == "vllm" for m in page.data)
            except Exception as e:  # best effort: this batch uses the instruction, the next asks again
                log.debug("prefill auto-detection failed (%s); using the prefix instruction", self._scrub(str(e)))
                return False
        log.debug("prefill auto-detected for %s: %s", self._safe_base(), detected)
        with self._lock:
            self._prefill_detected = detected
        return detected

    def _build_call(self, req: GenRequest, prefill: bool) -> tuple[str, dict[str, Any]]:
        s = req.sampling
        kw: dict[str, Any] = {"model": self.config.model, "temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_tokens}
        if s.stop:
            kw["stop"] = list(s.stop)
        if s.seed is not None and self.config.send_seed:
            kw["seed"] = s.seed
        if req.prompt is not None:
            kw["prompt"] = req.prompt + req.response_prefix
            return "completions", kw
        messages = req.messages_as_dicts()
        if req.response_prefix:
            if prefill:
                messages, kw["extra_body"] = prefilled_chat(messages, req.response_prefix)
            else:
                messages = with_prefix_instruction(messages, req.response_prefix)
        kw["messages"] = messages
        return "chat", kw

    def _wait_s(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        backoff = min(self.config.backoff_max_s, self.config.backoff_initial_s * 2 ** (state.attempt_number - 1))
        backoff *= random.uniform(0.5, 1.0)  # jitter: concurrent retries do not move in lockstep
        asked = retry_after_s(exc)
        return backoff if asked is None else max(backoff, asked)

    def _before_sleep(self, state: RetryCallState) -> None:
        self._add_retries(1)
        if log.isEnabledFor(logging.DEBUG):
            exc = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0.0
            log.debug(
                "retry %d after %s; waiting %.2fs",
                state.attempt_number,
                self._scrub(f"{type(exc).__name__}: {exc}")[:300],
                wait,
            )

    async def _one(self, client: openai.AsyncOpenAI, req: GenRequest, prefill: bool) -> tuple[GenResult, int | None]:
        """One request with retries; returns its result and the last HTTP status of a failure."""
        cfg = self.config
        kind, kw = self._build_call(req, prefill)
        deadline = time.monotonic() + cfg.deadline_s
        attempts = 0
        result: GenResult | None = None
        retrying = AsyncRetrying(
            stop=stop_after_attempt(cfg.max_retries + 1) | stop_before_delay(cfg.deadline_s),
            wait=self._wait_s,
            retry=retry_if_exception(retryable),
            before_sleep=self._before_sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    budget = min(cfg.timeout_s, deadline - time.monotonic())
                    if budget <= 0:
                        raise TimeoutError(f"request deadline of {cfg.deadline_s}s passed")
                    # asyncio.timeout bounds the whole attempt (the client's timeout is per read).
                    async with asyncio.timeout(budget + 1.0):
                        if kind == "chat":
                            resp = await client.chat.completions.create(**kw, timeout=budget)
                        else:
                            resp = await client.completions.create(**kw, timeout=budget)
                    result = self._parse(req, resp, kind, prefill)
        except (openai.OpenAIError, MalformedResponse, ValueError, TimeoutError) as e:
            return GenResult.failed(req.id, self._describe(e, attempts)), getattr(e, "status_code", None)
        assert result is not None
        return result, None

    def _parse(self, req: GenRequest, resp: Any, kind: str, prefill: bool) -> GenResult:
        try:
            choice = resp.choices[0]
            text = choice.message.content if kind == "chat" else choice.text
            finish = choice.finish_reason or "stop"
            usage = getattr(resp, "usage", None)
            prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
            completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
            # OpenAI reports prompt-cache hits here; vLLM's server only with --enable-prompt-tokens-details.
            details = getattr(usage, "prompt_tokens_details", None)
            cached_tokens = int(getattr(details, "cached_tokens", 0) or 0)
        except (AttributeError, IndexError, TypeError, KeyError, ValueError) as e:
            raise MalformedResponse(f"response is not a {kind} completion ({type(e).__name__}: {e})") from None
        if text is None:
            text = ""  # e.g. a refusal or a tool call: no text content
        if not isinstance(text, str):
            raise MalformedResponse(f"completion text is {type(text).__name__}, not a string")
        if kind == "chat" and req.response_prefix and not prefill:
            text = strip_repeated_prefix(text, req.response_prefix)
        # A vLLM server lowers max_tokens to the room left in its context and then says "length";
        # the token count tells the two apart (the OpenAI API refuses such a request instead).
        finish = context_finish_reason(finish, completion_tokens, req.sampling.max_tokens)
        return GenResult(
            id=req.id, text=text, finish_reason=finish, prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens, cached_tokens=cached_tokens,
        )
