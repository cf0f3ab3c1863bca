"""Helpers of the OpenAI engine: retry policy, secret scrubbing, response-prefix handling.

Kept apart from ``engines.openai_engine`` so the engine file stays about the
batch flow. Nothing here talks to the network.
"""

from __future__ import annotations

import email.utils
import json
import re
import time
from urllib.parse import urlsplit, urlunsplit

import openai

PREFIX_INSTRUCTION = "Begin your answer with exactly the following text, then continue it:\n{prefix}"
# Statuses worth another attempt besides 5xx: timeout, conflict, rate limit.
_RETRY_STATUSES = (408, 409, 429)
# Patterns that can carry credentials in exception or log text (headers, URLs).
SECRET_PATTERNS = (
    re.compile(r"(?i)(authorization|api[-_]?key|x-api-key)([\"']?\s*[:=]\s*[\"']?)(bearer\s+)?[^\s\"',}]+"),
    re.compile(r"(?i)bearer\s+[^\s\"',}]+"),
    re.compile(r"\bsk-[A-Za-z0-9_\-]{6,}"),
    re.compile(r"(//[^/\s:@]+:)[^/\s@]+@"),
)


class MalformedResponse(Exception):
    """The server answered 200 with something that is not a completion (retried)."""


def safe_url(url: str) -> str:
    """``url`` without user info, query or fragment (which can carry credentials)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "<unparseable url>"


def strip_repeated_prefix(text: str, prefix: str) -> str:
    """The part of ``text`` after ``prefix`` if the answer repeats it, else ``text``.

    Leading whitespace and case are ignored when matching. If ``prefix`` ends
    in whitespace, whitespace after it is dropped too (as with prefill, where
    the continuation follows the prefix directly).
    """
    core = prefix.strip()
    body = text.lstrip()
    if not core or not body[: len(core)].lower() == core.lower():
        return text
    rest = body[len(core) :]
    return rest.lstrip() if prefix != prefix.rstrip() else rest


def with_prefix_instruction(messages: list[dict[str, str]], prefix: str) -> list[dict[str, str]]:
    """``messages`` with an instruction to begin with ``prefix`` added to the last user turn."""
    instruction = PREFIX_INSTRUCTION.format(prefix=prefix)
    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] == "user":
            messages[i] = {"role": "user", "content": f"{messages[i]['content']}\n\n{instruction}"}
            return messages
    return messages + [{"role": "user", "content": instruction}]


def retryable(exc: BaseException) -> bool:
    """True for failures another attempt can fix (rate limits, 5xx, timeouts, garbage)."""
    if isinstance(exc, (openai.APIConnectionError, openai.APIResponseValidationError)):
        return True  # APITimeoutError is an APIConnectionError
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in _RETRY_STATUSES or exc.status_code >= 500
    return isinstance(exc, (MalformedResponse, json.JSONDecodeError, TimeoutError))


def retry_after_s(exc: BaseException | None) -> float | None:
    """Seconds the server asked us to wait, from ``retry-after-ms`` or ``Retry-After``."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    try:
        if headers.get("retry-after-ms"):
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        value = headers.get("retry-after")
        if not value:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:  # an HTTP date
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None



class Redactor:
    """Removes secrets (given literally, and credential-looking patterns) from text."""

    def __init__(self, *secrets: str | None) -> None:
        # Very short strings would redact ordinary text and protect nothing.
        self._secrets = [s for s in secrets if s and len(s) >= 4]

    def __call__(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "[redacted]")
        for pattern in SECRET_PATTERNS:
            if pattern.groups >= 2:
                text = pattern.sub(lambda m: f"{m.group(1)}{m.group(2)}[redacted]", text)
            elif pattern.groups == 1:
                text = pattern.sub(lambda m: f"{m.group(1)}[redacted]@", text)
            else:
                text = pattern.sub("[redacted]", text)
        return text
