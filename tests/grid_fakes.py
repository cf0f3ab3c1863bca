"""A scripted engine for grid stop tests: calls that stay in flight until a signal, an "engine core".

``HoldingEngine`` answers as ``meta_fakes.ScriptedMetaEngine`` and takes the caller tag
(the grid cell's name), like ``vllm-async:``. Set in the environment:

* ``MTG_TEST_HOLD=a,b``: calls of a caller whose tag contains ``a`` or ``b`` are held (stay in
  flight) from its ``MTG_TEST_HOLD_AFTER``-th call on (default 1: the first call passes, so
  its answers are in the run's cache);
* ``MTG_TEST_STATUS=DIR``: a held call touches ``DIR/held-<method>`` (the test waits for them).

The spec takes ``scripted:``'s fields plus ``fail=MARKER``: every request whose text contains
MARKER fails (an error result), e.g. ``holding:good=2;fail=FAILME``.

With a hold set, the engine starts a child process standing in for vLLM's engine core (same
process group: a group signal kills it, as it kills EngineCore). A held call ends when that
child dies (``EngineError``, as vLLM's ``EngineDeadError`` mid-call) or when the caller's
requests are cancelled (``cancel(tag)``). Without ``MTG_TEST_HOLD`` nothing is held.
"""

from __future__ import annotations

import collections
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from engines.base import GenRequest
from engines.errors import EngineError
from meta_fakes import ScriptedMetaEngine, request_text


class HoldingEngine(ScriptedMetaEngine):
    """See the module docstring."""

    accepts_caller_tag = True

    def __init__(self, good: set[tuple[int, str]] | None = None, **kw: Any) -> None:
        super().__init__(good, **kw)
        self.hold = [h for h in os.environ.get("MTG_TEST_HOLD", "").split(",") if h]
        self.after = int(os.environ.get("MTG_TEST_HOLD_AFTER", "1"))
        status = os.environ.get("MTG_TEST_STATUS")
        self.status = Path(status) if status else None
        self.core = subprocess.Popen(["sleep", "600"]) if self.hold else None
        self.cancelled: set[str] = set()
        self._calls: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    @classmethod
    def from_spec(cls, model: str | None, **options: Any) -> HoldingEngine:
        fields = dict(p.partition("=")[::2] for p in (model or "").split(";") if p)
        marker = fields.pop("fail", "")
        engine = super().from_spec(";".join(f"{k}={v}" for k, v in fields.items()), **options)
        if marker:
            engine.fail_if = lambda req: f"scripted failure ({marker})" if marker in request_text(req) else None
        return engine

    def identity(self) -> dict[str, Any]:
        return {"backend": "scripted-meta"}  # the same cache entries as scripted:

    def _generate(self, requests: list[GenRequest], **kwargs: Any):
        tag = str(kwargs.pop("tag", "") or "")
        with self._lock:
            n = self._calls[tag]
            self._calls[tag] += 1
        if self.core is not None and n >= self.after and any(h in tag for h in self.hold):
            if self.status is not None:
                self.status.mkdir(parents=True, exist_ok=True)
                (self.status / f"held-{tag.split('/')[1]}").touch()
            while True:
                if self.core.poll() is not None:
                    raise EngineError(f"engine core died mid-call (exit {self.core.returncode})")
                if tag in self.cancelled:
                    raise EngineError(f"requests of {tag} cancelled")
                time.sleep(0.01)
        return super()._generate(requests, **kwargs)

    def cancel(self, tag: str) -> int:
        """Ends the held calls of caller ``tag``; returns 1 (a count of callers, as engines do)."""
        self.cancelled.add(tag)
        return 1

    def close(self) -> None:
        if self.core is not None and self.core.poll() is None:
            self.core.kill()
            self.core.wait()


class CountingEngine(ScriptedMetaEngine):
    """``scripted:`` that counts how many were built in this process (``CountingEngine.built``)."""

    built: list[str] = []

    def __init__(self, good: set[tuple[int, str]] | None = None, **kw: Any) -> None:
        super().__init__(good, **kw)
        CountingEngine.built.append(self.spec)


def register_holding() -> None:
    """Makes ``holding:...`` specs (``scripted:``'s syntax) create a ``HoldingEngine``, ``counting:...``
    a ``CountingEngine`` (this process)."""
    from engines.registry import register

    register("holding", "grid_fakes:HoldingEngine")
    register("counting", "grid_fakes:CountingEngine")
