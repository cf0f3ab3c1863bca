"""A deterministic engine for fast unit tests of algorithm logic.

Registered as ``fake`` like any other backend. It never loads a model:

* ``fake`` / ``fake:echo`` answers with the last message (or prompt) text;
* a ``responder`` callable scripts the answer for each request;
* ``shuffle=True`` processes requests in a shuffled internal order (as a real
  backend that sorts by length would) and still returns them in input order;
* ``fail_if`` marks chosen requests as failed, to test per-item error paths;
* ``delay_s`` (``--engine-opt delay_s=0.5``) sleeps that long per call, standing in
  for a slow backend (a SLURM job's signals then land mid-run); outputs are unchanged.

Token counts are whitespace word counts. Not a substitute for integration
tests on the real vLLM engine.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from engines.base import Capabilities, Engine, GenRequest, GenResult
from engines.errors import EngineSpecError

Responder = Callable[[GenRequest], str]


def echo(request: GenRequest) -> str:
    """The last message's content (or the raw prompt)."""
    if request.messages is not None:
        return request.messages[-1].content
    return request.prompt or ""


class FakeEngine(Engine):
    """Scripted/echo engine. See the module docstring."""

    capabilities = Capabilities(per_request_seed=True, response_prefix=True)
    #: stateless per call (batches are only appended): safe to share between threads
    serves_concurrent_calls = True

    def __init__(
        self,
        responder: Responder | None = None,
        *,
        shuffle: bool = False,
        fail_if: Callable[[GenRequest], str | None] | None = None,
        name: str = "echo",
        delay_s: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(delay_s, bool) or not isinstance(delay_s, (int, float)) or delay_s < 0:
            raise EngineSpecError(f"delay_s must be a number of seconds >= 0, got {delay_s!r}")
        self.delay_s = float(delay_s)
        self.responder = responder or echo
        self.shuffle = shuffle
        self.fail_if = fail_if
        self.name = name
        self.spec = "fake" if name == "echo" else f"fake:{name}"
        #: every batch this engine received, for tests that inspect calls
        self.batches: list[list[GenRequest]] = []

    @classmethod
    def from_spec(cls, model: str | None, **options: Any) -> FakeEngine:
        if model not in (None, "echo"):
            raise EngineSpecError(f"fake engine has only the 'echo' mode by spec, got 'fake:{model}'")
        try:
            return cls(**options)
        except TypeError as e:
            raise EngineSpecError(f"bad option for the fake engine: {e}") from e

    def identity(self) -> dict[str, Any]:
        return {"backend": "fake", "mode": self.name}

    def _generate(self, requests: list[GenRequest], **kwargs: Any) -> list[GenResult]:
        if self.delay_s:
            time.sleep(self.delay_s)
        self.batches.append(list(requests))
        order = list(range(len(requests)))
        if self.shuffle:
            random.Random(len(self.batches)).shuffle(order)
        out: list[GenResult | None] = [None] * len(requests)
        for i in order:
            req = requests[i]
            prompt_tokens = sum(len(m.content.split()) for m in req.messages or ()) + len(
                (req.prompt or "").split()
            )
            why = self.fail_if(req) if self.fail_if else None
            if why:
                out[i] = GenResult.failed(req.id, why, prompt_tokens)
                continue
            words = self.responder(req).split(" ")
            finish = "stop"
            if len(words) > req.sampling.max_tokens:
                words, finish = words[: req.sampling.max_tokens], "length"
            text = " ".join(words)
            out[i] = GenResult(
                id=req.id,
                text=text,
                finish_reason=finish,
                prompt_tokens=prompt_tokens,
                completion_tokens=len(text.split()),
            )
        return out  # type: ignore[return-value]
