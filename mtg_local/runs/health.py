"""The run status rule: when failed engine requests make a run's numbers untrustworthy.

One rule for every command that writes results.json (``mtg eval``, ``mtg train``,
``mtg baseline``, the grid runner) and for ``mtg report``:

* ``failed``    every request of the run failed (a dead API, a wrong base_url,
                a server that rejects every call): the accuracy measures nothing;
* ``degraded``  more than ``DEGRADED_SHARE`` (1 %) of the run's requests failed;
* ``complete``  otherwise (a few failed requests are recorded in ``engine_usage``).

Why 1 %: a failed request scores its item as wrong (or skips its update), so
failures can pull the accuracy down by up to their share of the work. The
paper's tables compare methods a few points apart with seed-to-seed spreads of
about 1-3 points; a run whose failures could move it by more than 1 point is
not comparable and must be rerun. Failed results are never cached
(``engines.cache``), so a rerun into the same run dir serves the good answers
from the cache and retries only the failed requests.

The share is ``engine_usage.errors / engine_usage.requests``; ``requests``
counts cache hits too, since the numbers are built from all of them.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

#: Above this share of failed requests a finished run is "degraded".
DEGRADED_SHARE = 0.01
#: Exit code of a degraded or failed run (see CONTRACTS: 0 complete, 2 user error, 3 this).
EXIT_DEGRADED = 3


@dataclasses.dataclass(frozen=True)
class RunHealth:
    """The status of a finished run judged from its engine usage.

    Attributes:
        status: "complete", "degraded" or "failed".
        errors: failed requests.
        requests: all requests of the run (cache hits included).
        first_error: the first failed request's error text, if known.
    """

    status: str
    errors: int
    requests: int
    first_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "complete"

    def record(self) -> dict[str, Any]:
        """What results.json stores under ``failed_requests``."""
        return {"errors": self.errors, "requests": self.requests, "first_error": self.first_error,
                "degraded_share": DEGRADED_SHARE}

    def message(self, command: str, run_dir: str, retry: str | None = None) -> str:
        """One stderr line: what failed, how many of how many, the first error, how to retry.

        ``retry`` replaces the default advice (rerun the same command into ``run_dir``).
        """
        first = (self.first_error or "unknown error").replace("\n", " ")
        if len(first) > 300:
            first = first[:297] + "..."
        what = "every request failed" if self.status == "failed" else (
            f"more than {DEGRADED_SHARE:.0%} of the requests failed")
        retry = retry or f"rerun the same command into {run_dir}"
        return (f"mtg {command}: run {self.status}: {what} ({self.errors} of {self.requests}); "
                f"first error: {first}; fix the engine and {retry} "
                "(failed results are not cached, so only they are generated again)")


def assess(engine_usage: dict[str, Any]) -> RunHealth:
    """The run's status from its ``engine_usage`` (results.json's, or ``UsageMeter.report()``)."""
    errors = int(engine_usage.get("errors") or 0)
    requests = int(engine_usage.get("requests") or 0)
    first = engine_usage.get("first_error")
    if requests > 0 and errors >= requests:
        status = "failed"
    elif requests > 0 and errors / requests > DEGRADED_SHARE:
        status = "degraded"
    else:
        status = "complete"
    return RunHealth(status, errors, requests, first if isinstance(first, str) else None)


def exit_code(results: dict[str, Any], command: str, run_dir: str, retry: str | None = None) -> int:
    """0 for a complete run; else prints ``RunHealth.message`` to stderr and returns ``EXIT_DEGRADED``."""
    if results.get("status") not in ("degraded", "failed"):
        return 0
    health = assess(results.get("engine_usage") or {})
    if health.ok:  # failed for another reason (an exception): say so in the same one line
        health = RunHealth(results["status"], health.errors, health.requests, results.get("error"))
    print(health.message(command, run_dir, retry), file=sys.stderr)
    return EXIT_DEGRADED
