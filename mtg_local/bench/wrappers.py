"""Engine wrappers the benchmarks use to record and re-shape a workload.

* ``RecordingEngine`` passes every batch through unchanged and keeps a copy of
  it: one recorded batch per ``generate`` call, i.e. one per inner-loop phase,
  in the order the algorithm sent the requests.
* ``PerRequestEngine`` sends each request of a batch as its own
  ``inner.generate([request])`` call, sequentially, in batch order: the
  TextGrad pattern (one backend call per graph node) on the same requests.

Both keep the inner engine's capabilities (so e.g. the TGD step still
prefills its tag) and identity; backend work is counted by the inner engine.
"""

from __future__ import annotations

from typing import Any

from engines.base import Engine, GenRequest, GenResult


class _Wrapper(Engine):
    """Delegates identity/capabilities/close to ``inner``."""

    def __init__(self, inner: Engine) -> None:
        super().__init__()
        self.inner = inner
        self.spec = inner.spec
        self.capabilities = inner.capabilities

    def identity(self) -> dict[str, Any]:
        return self.inner.identity()

    def close(self) -> None:
        """Does not close ``inner``: the caller owns it."""


class RecordingEngine(_Wrapper):
    """Forwards each batch to ``inner`` in one call and records it.

    Attributes:
        batches: the requests of every ``generate`` call, in call order; each
            list in the order the caller sent it.
        results: the results of every call, aligned with ``batches``.
    """

    def __init__(self, inner: Engine) -> None:
        super().__init__(inner)
        self.batches: list[list[GenRequest]] = []
        self.results: list[list[GenResult]] = []

    def _generate(self, requests: list[GenRequest], **kwargs: Any) -> list[GenResult]:
        self.batches.append(list(requests))
        results = self.inner.generate(requests, **kwargs)
        self.results.append(results)
        return results

    def phase_tokens(self) -> list[dict[str, int]]:
        """Per recorded call: requests, prompt and completion tokens (for cost estimates)."""
        return [
            {
                "requests": len(res),
                "prompt_tokens": sum(r.prompt_tokens for r in res),
                "completion_tokens": sum(r.completion_tokens for r in res),
            }
            for res in self.results
        ]


class PerRequestEngine(_Wrapper):
    """Sends every request of a batch as its own ``inner.generate([request])`` call.

    Calls are sequential and in batch order, like TextGrad's engines (one
    blocking backend call per variable per operation). Results come back in
    request order.
    """

    def _generate(self, requests: list[GenRequest], **kwargs: Any) -> list[GenResult]:
        return [self.inner.generate([r], **kwargs)[0] for r in requests]

    def _count_backend_calls(self) -> int:
        # The wrapper's own counter is not used for backend work; the inner
        # engine counts one call per request.
        return 0
