"""Persistent generation cache shared by processes (SQLite, WAL mode).

``CachedEngine`` wraps any engine. A request's key is a SHA-256 of the inner
engine's ``identity()`` and the request's whole content (messages or prompt,
response prefix, every sampling field including the seed) -- never the prompt
alone, so other temperatures or seeds miss. Misses of a batch go to the inner
engine in **one** call; a fully cached batch makes no backend call. Failed
results are not cached, so a rerun retries them.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from engines.base import Engine, GenRequest, GenResult

_SCHEMA = """
CREATE TABLE IF NOT EXISTS generations (
    key TEXT PRIMARY KEY,
    text TEXT NOT NULL,
    finish_reason TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL
)
"""


def request_key(identity: dict[str, Any], request: GenRequest) -> str:
    """The cache key of ``request`` on an engine with ``identity``."""
    blob = json.dumps({"engine": identity, "request": request.key_dict()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class GenerationCache:
    """A key -> result store in one SQLite file, safe for several processes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as conn:
            conn.execute(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # busy timeout: another process may hold the write lock briefly.
            conn = sqlite3.connect(self.path, timeout=60)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def get_many(self, keys: list[str]) -> dict[str, tuple[str, str, int, int]]:
        """Returns the stored rows for those keys that are present."""
        found: dict[str, tuple[str, str, int, int]] = {}
        conn = self._conn()
        for start in range(0, len(keys), 500):  # SQLite limits bound parameters
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in conn.execute(
                f"SELECT key, text, finish_reason, prompt_tokens, completion_tokens "
                f"FROM generations WHERE key IN ({marks})",
                chunk,
            ):
                found[row[0]] = row[1:]
        return found

    def put_many(self, rows: list[tuple[str, GenResult]]) -> None:
        """Stores successful results (one transaction)."""
        if not rows:
            return
        with self._conn() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO generations VALUES (?, ?, ?, ?, ?)",
                [(k, r.text, r.finish_reason, r.prompt_tokens, r.completion_tokens) for k, r in rows],
            )

    def __len__(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM generations").fetchone()[0]

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class CachedEngine(Engine):
    """Wraps ``inner`` with a persistent cache; same batch contract.

    Usage counters of the wrapper count backend calls actually made (0 for a
    fully cached batch) and ``cache_hits``. Safe to call from several threads
    at once (the barrier-free inner loop, grid cells) when ``inner`` is: each
    thread has its own SQLite connection and its own backend-call count.
    """

    def __init__(self, inner: Engine, cache: GenerationCache | str | os.PathLike[str]) -> None:
        super().__init__()
        self.inner = inner
        self.cache = cache if isinstance(cache, GenerationCache) else GenerationCache(cache)
        self.spec = inner.spec
        self.capabilities = inner.capabilities
        self._identity = inner.identity()
        # Per thread: _record reads the count in the thread that made the call.
        self._per_thread = threading.local()
        # Retries happen inside the inner engine; they are mirrored here (see _mirror_retries).
        self._retries_lock = threading.Lock()
        self._retries_seen = inner.usage.retries

    @property
    def serves_concurrent_calls(self) -> bool:
        """As the inner engine (see ``engines.shared.serves_concurrent_calls``)."""
        return bool(getattr(self.inner, "serves_concurrent_calls", False))

    def identity(self) -> dict[str, Any]:
        return self._identity

    def _generate(self, requests: list[GenRequest], **kwargs: Any) -> list[GenResult]:
        keys = [request_key(self._identity, r) for r in requests]
        stored = self.cache.get_many(keys)
        results: list[GenResult | None] = [None] * len(requests)
        misses: list[int] = []
        for i, (req, key) in enumerate(zip(requests, keys)):
            row = stored.get(key)
            if row is None:
                misses.append(i)
            else:
                text, finish, pt, ct = row
                results[i] = GenResult(req.id, text, finish, pt, ct, cached=True)
        self._per_thread.calls = 0
        if misses:
            # Identical requests within one batch are generated once each: they
            # are distinct samples only if their seeds differ, which the key has.
            fresh = self.inner.generate([requests[i] for i in misses], **kwargs)
            self._per_thread.calls = 1
            self._mirror_retries()
            for i, res in zip(misses, fresh):
                results[i] = res
            self.cache.put_many([(keys[i], res) for i, res in zip(misses, fresh) if res.ok])
        return results  # type: ignore[return-value]

    def _mirror_retries(self) -> None:
        """Adds the inner engine's retries not mirrored yet (once each, whichever thread sees them)."""
        with self._retries_lock:
            now = self.inner.usage.retries
            # now < seen: the inner engine's counters were reset; count from zero.
            new, self._retries_seen = (now - self._retries_seen if now >= self._retries_seen else now), now
        self._add_retries(new)

    def _count_backend_calls(self) -> int:
        return getattr(self._per_thread, "calls", 0)

    def close(self) -> None:
        self.cache.close()
        self.inner.close()
