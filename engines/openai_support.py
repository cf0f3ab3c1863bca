"""Helpers of the OpenAI engine: retry policy, secret scrubbing, response-prefix handling, the probe.

Kept apart from ``engines.openai_engine`` so the engine file stays about the
batch flow. Only ``probe_models`` talks to the network (through the client it is given).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import re
import time
from typing import Any
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


def prefilled_chat(messages: list[dict[str, str]], prefix: str) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """The chat request whose answer continues ``prefix`` on vLLM: its messages and ``extra_body``.

    The prefix is a trailing assistant turn that vLLM's chat template leaves
    open (``continue_final_message``) instead of starting a new one.
    """
    messages = [*messages, {"role": "assistant", "content": prefix}]
    return messages, {"continue_final_message": True, "add_generation_prompt": False}


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


#: Attempts of the start-up probe against a refused / unreachable server (0.5 s apart).
PROBE_ATTEMPTS = 3
#: Limit of one probe attempt in seconds.
PROBE_TIMEOUT_S = 10.0


async def probe_models(client: openai.AsyncOpenAI, model: str, base: str) -> list[Any] | None:
    """``GET /models`` once before a run: the server's model list, or None if it has none.

    Args:
        client: a client on the server (its own retries off).
        model: the model the run will ask for.
        base: the server's URL without credentials (for the message).

    Raises:
        EngineUnreachableError: no answer after ``PROBE_ATTEMPTS`` tries (refused,
            unknown host, timeout), or the list does not have ``model``.
        openai.AuthenticationError, openai.PermissionDeniedError: the key is refused.
    """
    from engines.errors import EngineUnreachableError

    for attempt in range(PROBE_ATTEMPTS):
        try:
            page = await client.models.list(timeout=PROBE_TIMEOUT_S)
            break
        except openai.APIConnectionError as e:  # refused, DNS, TLS, timeout
            if attempt + 1 == PROBE_ATTEMPTS:
                raise EngineUnreachableError(
                    f"cannot reach the OpenAI-compatible server at {base} ({type(e).__name__}: {e}); check "
                    "that it is running and the URL (--engine-opt base_url=... or $OPENAI_BASE_URL)"
                ) from None
            await asyncio.sleep(0.5)
        except (openai.NotFoundError, openai.InternalServerError, openai.RateLimitError):
            return None  # no model list here (or a busy server): the requests will tell
    ids = [str(getattr(m, "id", "")) for m in page.data]
    if ids and model not in ids:
        shown = ", ".join(ids[:8]) + (f" (+{len(ids) - 8} more)" if len(ids) > 8 else "")
        raise EngineUnreachableError(
            f"model {model!r} is not served at {base} (it serves: {shown}); check --engine openai:MODEL "
            "(vLLM: the --served-model-name) and base_url"
        )
    return list(page.data)
