"""The one secret filter for everything a run writes (config, results, checkpoint, events, trajectories).

``RunDir`` passes every object it writes through ``redact``; the command
configs use ``public_engine_opts`` in their ``to_dict`` so that a stored config
never holds a key (``mtg train --resume`` then reads the key from the
environment again). Nothing else in the project filters secrets for the run
dir: add a rule here, not a second filter elsewhere.

What counts as secret:

* a value under a key that looks secret (``api_key``, ``token``, ``hf_token``,
  ``secret``, ``password``, ``authorization``, ``credentials``, ...), in any
  nested dict, and the value of a ``KEY=VALUE`` string whose KEY looks secret
  (engine options as given on the command line);
* credential-looking text anywhere in a string (``Bearer ...``, ``sk-...``
  keys, ``api_key=...``, user:password@ in URLs; the OpenAI engine's patterns);
* the literal value of any environment variable whose name looks secret
  (``OPENAI_API_KEY``, ``HF_TOKEN``, ...), wherever it appears.

Keys are split into words (``max_tokens`` is max + tokens, not a token), so
usage counters and sampling settings are left alone.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any

from engines.openai_support import Redactor

#: What a secret value is replaced with.
REDACTED = "[redacted]"
#: Words that make a key secret (a key is split at _, -, ., spaces and camelCase).
SECRET_WORDS = frozenset({
    "key", "apikey", "token", "secret", "password", "passwd", "pwd", "authorization", "auth",
    "credential", "credentials", "bearer", "cookie", "passphrase", "private",
})
# Env var literals shorter than this would redact ordinary text and protect nothing.
_MIN_LITERAL = 8
_WORD_SPLIT = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])")
_KV = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.\-]*)\s*=(.*)$", re.DOTALL)


def is_secret_key(key: str) -> bool:
    """True when ``key`` (a dict key or option name) names a secret, e.g. ``api_key``, ``HF_TOKEN``.

    A key ending in ``env`` (``api_key_env``) holds the *name* of an environment
    variable, which is how secrets should be passed: not a secret itself.
    """
    parts = [w.lower() for w in _WORD_SPLIT.split(str(key)) if w]
    if parts and parts[-1] == "env":
        return False
    return bool(set(parts) & SECRET_WORDS)


def public_engine_opts(opts: Iterable[str]) -> list[str]:
    """``KEY=VALUE`` engine options without the secret ones (for configs written to disk)."""
    return [o for o in opts if not is_secret_key(str(o).partition("=")[0].strip())]


#: Shell variables whose names look secret ("pwd") but hold the working directory: redacting
#: their value would turn every path under it into "[redacted]/..." (data files, run dirs).
_NOT_SECRET_ENV = frozenset({"PWD", "OLDPWD"})


def _env_secrets() -> list[str]:
    return [v for k, v in os.environ.items()
            if k not in _NOT_SECRET_ENV and is_secret_key(k) and len(v) >= _MIN_LITERAL]


class _Filter:
    def __init__(self, extra: Iterable[str] = ()) -> None:
        self.text = Redactor(*_env_secrets(), *(s for s in extra if s and len(s) >= _MIN_LITERAL))

    def string(self, s: str) -> str:
        m = _KV.match(s)
        if m and is_secret_key(m.group(1)) and m.group(2).strip():
            return f"{m.group(1)}={REDACTED}"
        return self.text(s)

    def value(self, obj: Any) -> Any:
        if isinstance(obj, str):
            return self.string(obj)
        if isinstance(obj, dict):
            return {k: (REDACTED if is_secret_key(str(k)) and _has_content(v) else self.value(v))
                    for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [self.value(v) for v in obj]
        return obj


def _has_content(v: Any) -> bool:
    # None / "" / False under a secret-looking key carry nothing (e.g. "api_key_env": null).
    return v not in (None, "", False) and not isinstance(v, (int, float))


def redact(obj: Any, *, extra_secrets: Iterable[str] = ()) -> Any:
    """A JSON-ready copy of ``obj`` with every secret replaced by ``[redacted]``.

    Args:
        obj: dicts, lists, tuples (become lists), strings and scalars.
        extra_secrets: literal secret values to remove as well.
    """
    return _Filter(extra_secrets).value(obj)


def redact_text(text: str, *, extra_secrets: Iterable[str] = ()) -> str:
    """``text`` with credential-looking parts and secret env values replaced."""
    return _Filter(extra_secrets).string(text)
