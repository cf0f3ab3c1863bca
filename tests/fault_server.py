"""A fault-injecting OpenAI-compatible HTTP server for tests (aiohttp, 127.0.0.1).

It answers ``POST /v1/chat/completions``, ``POST /v1/completions`` and
``GET /v1/models`` with well-formed responses whose text is derived from the
request (so a test can tell which answer belongs to which request), with
``usage`` fields (whitespace word counts). On a seeded share of calls it
injects a fault instead:

* ``429`` with ``Retry-After`` (whole seconds, as HTTP allows);
* ``500`` with an error body;
* ``slow``: sleeps ``slow_s`` (longer than the client's timeout) before answering;
* ``malformed``: a 200 whose body is truncated JSON, or JSON without ``choices``.

Whether attempt *k* of a given request content is faulted is a hash of
(seed, content, k), not of arrival order, so a run is reproducible under any
concurrency. Every call is recorded (path, body, fault, time) for checks that
no request was lost or duplicated.

Run it in a thread (``with FaultServer(...) as srv: srv.base_url``) or as a
process: ``python tests/fault_server.py --port 0 --fault-rate 0.35``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

FAULT_KINDS = ("429", "500", "slow", "malformed")
#: a request whose text contains this marker fails with 500 on every attempt
ALWAYS_FAIL_MARKER = "FAULT-ALWAYS"
#: ... gets 401 / 400 whose error message echoes the Authorization header it
#: received (as careless gateways do), to test that clients scrub error texts
ECHO_AUTH_401_MARKER = "FAULT-401-ECHO"
ECHO_AUTH_400_MARKER = "FAULT-400-ECHO"


def request_digest(body: dict[str, Any]) -> str:
    """A short hash of what determines the answer (messages/prompt and sampling)."""
    keep = {k: body.get(k) for k in ("model", "messages", "prompt", "temperature", "top_p", "max_tokens", "seed")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:10]


def default_answer(body: dict[str, Any]) -> str:
    """``[digest] <last user message or prompt>``: unique per request content."""
    if "messages" in body:
        users = [m["content"] for m in body["messages"] if m.get("role") == "user"]
        tail = users[-1] if users else ""
    else:
        tail = body.get("prompt", "")
    return f"[{request_digest(body)}] {tail}"


@dataclasses.dataclass
class Call:
    """One HTTP call the server received."""

    path: str
    body: dict[str, Any] | None
    fault: str  # "ok", one of FAULT_KINDS, "bad-request", or an echoed-auth status
    attempt: int  # 0 for the first call with this content
    t: float  # time.monotonic() on arrival


class FaultServer:
    """The server; see the module docstring.

    Args:
        fault_rate: share of calls that get a fault, in [0, 1).
        seed: seeds the fault choice.
        kinds: which fault kinds to draw from (uniformly).
        retry_after_s: the ``Retry-After`` value sent with 429s (whole seconds).
        slow_s: how long a slow call sleeps before answering.
        owned_by: ``owned_by`` of the model in ``/v1/models`` ("vllm" makes it
            look like ``vllm serve``).
        answer: maps a request body to the answer text (default: ``default_answer``).
        port: 0 picks a free port.
    """

    def __init__(
        self,
        *,
        fault_rate: float = 0.35,
        seed: int = 0,
        kinds: tuple[str, ...] = FAULT_KINDS,
        retry_after_s: int = 1,
        slow_s: float = 2.0,
        owned_by: str = "fault-server",
        answer: Callable[[dict[str, Any]], str] | None = None,
        port: int = 0,
        max_model_len: int | None = None,
    ) -> None:
        if not 0 <= fault_rate < 1:
            raise ValueError(f"fault_rate must be in [0, 1), got {fault_rate!r}")
        if not kinds or any(k not in FAULT_KINDS for k in kinds):
            raise ValueError(f"kinds must be a non-empty subset of {FAULT_KINDS}, got {kinds!r}")
        self.fault_rate, self.seed, self.kinds = fault_rate, seed, tuple(kinds)
        self.retry_after_s, self.slow_s, self.owned_by = int(retry_after_s), slow_s, owned_by
        self.answer = answer or default_answer
        self.port = port
        #: a context, handled as vLLM's server does: max_tokens lowered to the room left (in words)
        self.max_model_len = max_model_len
        self.calls: list[Call] = []
        self._attempts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    # -- fault choice -------------------------------------------------------
    def _fault_for(self, body: dict[str, Any]) -> tuple[str, int]:
        content = json.dumps(body, sort_keys=True)
        with self._lock:
            attempt = self._attempts.get(content, 0)
            self._attempts[content] = attempt + 1
        if ALWAYS_FAIL_MARKER in content:
            return "500", attempt
        h = hashlib.sha256(f"{self.seed}|{attempt}|{content}".encode()).digest()
        u = int.from_bytes(h[:8], "big") / 2**64
        if u >= self.fault_rate:
            return "ok", attempt
        return self.kinds[h[8] % len(self.kinds)], attempt

    # -- handlers -----------------------------------------------------------
    def _record(self, path: str, body: dict[str, Any] | None, fault: str, attempt: int) -> None:
        with self._lock:
            self.calls.append(Call(path, body, fault, attempt, time.monotonic()))

    async def _models(self, request: web.Request) -> web.Response:
        self._record(request.path, None, "ok", 0)
        data = [{"id": "fault-model", "object": "model", "owned_by": self.owned_by, "created": 0}]
        return web.json_response({"object": "list", "data": data})

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        chat = request.path.endswith("/chat/completions")
        try:
            body = await request.json()
            if not isinstance(body, dict) or ("messages" if chat else "prompt") not in body:
                raise ValueError("missing messages/prompt")
        except ValueError as e:
            self._record(request.path, None, "bad-request", 0)
            return web.json_response({"error": {"message": f"bad request: {e}", "type": "invalid"}}, status=400)
        raw = json.dumps(body)
        for marker, status in ((ECHO_AUTH_401_MARKER, 401), (ECHO_AUTH_400_MARKER, 400)):
            if marker in raw:
                self._record(request.path, body, str(status), 0)
                echoed = f"rejected; Authorization: {request.headers.get('Authorization', '')}"
                return web.json_response({"error": {"message": echoed, "type": "invalid"}}, status=status)
        fault, attempt = self._fault_for(body)
        self._record(request.path, body, fault, attempt)
        if fault == "429":
            return web.json_response(
                {"error": {"message": "rate limited", "type": "rate_limit"}},
                status=429,
                headers={"Retry-After": str(self.retry_after_s)},
            )
        if fault == "500":
            return web.json_response({"error": {"message": "injected server error", "type": "server"}}, status=500)
        if fault == "malformed":
            # Two flavours: invalid JSON, and valid JSON that is not a completion.
            text = '{"id": "cmpl-x", "choices": [{"index": 0, "mess' if attempt % 2 == 0 else '{"object": "?"}'
            return web.Response(text=text, content_type="application/json")
        if fault == "slow":
            await asyncio.sleep(self.slow_s)
        return web.json_response(self._completion(body, chat))

    def _completion(self, body: dict[str, Any], chat: bool) -> dict[str, Any]:
        text = self.answer(body)
        finish = "stop"
        words = text.split(" ")
        if chat:
            prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
        else:
            prompt_tokens = len(str(body["prompt"]).split())
        limit = body.get("max_tokens")
        if self.max_model_len is not None and isinstance(limit, int):
            limit = min(limit, self.max_model_len - prompt_tokens)  # vLLM's get_max_tokens
        if isinstance(limit, int) and len(words) > limit:
            text, finish = " ".join(words[:limit]), "length"
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        completion_tokens = len(text.split())
        return {
            "id": f"cmpl-{request_digest(body)}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": body.get("model", ""),
            "choices": [choice],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._complete)
        app.router.add_post("/v1/completions", self._complete)
        return app

    # -- lifecycle ----------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FaultServer:
        """Starts serving in a daemon thread; returns once the port is bound."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                self._runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=1.0)
                loop.run_until_complete(self._runner.setup())
                site = web.TCPSite(self._runner, "127.0.0.1", self.port)
                loop.run_until_complete(site.start())
                self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            except BaseException as e:  # reported to the starting thread
                failure.append(e)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            # Slow handlers still sleeping would be destroyed pending: cancel them first.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

        self._thread = threading.Thread(target=serve, name="fault-server", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- summaries ----------------------------------------------------------
    def fault_counts(self) -> dict[str, int]:
        """How many calls got each outcome ("ok", "429", ...)."""
        counts: dict[str, int] = {}
        with self._lock:
            for c in self.calls:
                counts[c.fault] = counts.get(c.fault, 0) + 1
        return counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--fault-rate", type=float, default=0.35)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slow-s", type=float, default=2.0)
    p.add_argument("--owned-by", default="fault-server")
    args = p.parse_args()
    srv = FaultServer(
        fault_rate=args.fault_rate, seed=args.seed, slow_s=args.slow_s, owned_by=args.owned_by, port=args.port
    ).start()
    print(json.dumps({"base_url": srv.base_url}), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        srv.stop()


if __name__ == "__main__":
    main()
