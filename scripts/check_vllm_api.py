#!/usr/bin/env python
"""Checks the vLLM API surface mtg-local uses against the installed vLLM (no GPU, no engine start).

Run it with the venv whose vLLM should be checked, whenever the vLLM pin
(pyproject.toml's ``cpu``/``gpu`` extras) moves:

    .venv/bin/python scripts/check_vllm_api.py            # text, one line per check
    .venv/bin/python scripts/check_vllm_api.py --json

It checks the names, keywords and fields engines/ and mtg_local/bench/vllm_server.py
use (``vllm.LLM``, ``AsyncLLM``, ``SamplingParams``, ``EngineArgs`` fields for every
keyword ``VLLMConfig.llm_kwargs`` passes on CPU and GPU, the server's flags, the
environment variables we set, the metric names we read), and the scheduler
defaults both vLLM engines resolve on a simulated H100 (vLLM's own defaulting
code, hardware queries answered; ``engines.vllm_settings``). The bundled model
must be converted (``mtg prepare-model``). Exit 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import importlib.util
import inspect
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHECKS: list[tuple[str, Callable[[], str | None]]] = []


def check(name: str) -> Callable[[Callable[[], str | None]], Callable[[], str | None]]:
    """Registers a check: it returns a short note (ok) or raises (fail)."""

    def deco(fn: Callable[[], str | None]) -> Callable[[], str | None]:
        CHECKS.append((name, fn))
        return fn

    return deco


class Skip(Exception):
    """The check cannot run here (e.g. it needs a device); not a failure."""


def need(cond: bool, why: str) -> None:
    if not cond:
        raise AssertionError(why)


def params(fn: Any) -> set[str]:
    return set(inspect.signature(fn).parameters)


def _kwargs_sets() -> dict[str, dict[str, Any]]:
    """``vllm.LLM`` keywords our configs produce, with every optional one set, on CPU and GPU."""
    from engines.vllm_async_engine import AsyncVLLMConfig
    from engines.vllm_engine import VLLMConfig

    full = dict(max_model_len=2048, kv_cache_gib=1, max_num_seqs=8, max_num_batched_tokens=4096, block_size=16,
                distributed_executor_backend="mp", performance_mode="throughput", pipeline_parallel_size=1)
    out = {
        "cpu": VLLMConfig(model="m", **full).llm_kwargs("/m", on_cpu=True),
        "gpu": VLLMConfig(model="m", enable_chunked_prefill=True, enforce_eager=True, **full).llm_kwargs(
            "/m", on_cpu=False),
        "gpu-default": VLLMConfig(model="m").llm_kwargs("/m", on_cpu=False),
        "async-gpu": AsyncVLLMConfig(model="m", data_parallel_size=2, **full).llm_kwargs("/m", on_cpu=False),
    }
    return out


@check("vllm.LLM(**kw): every keyword VLLMConfig.llm_kwargs passes is an EngineArgs field")
def _engine_args_fields() -> str:
    from vllm.engine.arg_utils import AsyncEngineArgs, EngineArgs

    fields = {f.name for f in dataclasses.fields(EngineArgs)}
    afields = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    for label, kw in _kwargs_sets().items():
        unknown = set(kw) - (afields if label.startswith("async") else fields)
        need(not unknown, f"{label}: not EngineArgs fields: {sorted(unknown)}")
    return f"{len(set().union(*map(set, _kwargs_sets().values())))} keywords"


@check("the API server's parser takes every vllm.LLM keyword as a flag (mtg_local/bench/vllm_server.server_args)")
def _server_flags() -> str:
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from mtg_local.bench.vllm_server import server_args

    for where in ("vllm.entrypoints.common.cli_args", "vllm.entrypoints.launchers.cli_args"):  # 0.33, 0.32
        try:
            make_arg_parser = importlib.import_module(where).make_arg_parser
            break
        except (ImportError, AttributeError):
            continue
    else:
        raise AssertionError("no make_arg_parser in vllm.entrypoints.{common,launchers}.cli_args")
    try:
        parser = make_arg_parser(FlexibleArgumentParser())
    except RuntimeError as e:  # building it asks vLLM's platform for its device (a CUDA build without GPU)
        raise Skip(f"the parser needs a device here ({e}); the EngineArgs-fields check covers the names") from e
    for label, kw in _kwargs_sets().items():
        parser.parse_args(server_args(kw, "m", 8000))  # exits (SystemExit) on an unknown flag
    return f"parser from {where}"


@check("vllm.LLM: generate(prompts, params, use_tqdm=), get_tokenizer, get_metrics; passes UsageContext.LLM_CLASS")
def _llm() -> None:
    import vllm

    need({"prompts", "sampling_params", "use_tqdm"} <= params(vllm.LLM.generate), "LLM.generate keywords")
    for name in ("get_tokenizer", "get_metrics"):
        need(callable(getattr(vllm.LLM, name, None)), f"LLM.{name}")
    need("UsageContext.LLM_CLASS" in inspect.getsource(vllm.LLM.__init__), "vllm.LLM no longer passes LLM_CLASS")


@check("LLMEngine: model_config, engine_core.shutdown (VLLMEngine reads/calls them)")
def _llm_engine() -> None:
    from vllm.v1.engine.core_client import EngineCoreClient
    from vllm.v1.engine.llm_engine import LLMEngine

    src = inspect.getsource(LLMEngine)
    need("self.model_config" in src and "self.engine_core" in src, "LLMEngine attributes")
    need(callable(getattr(EngineCoreClient, "shutdown", None)), "EngineCoreClient.shutdown")


@check("AsyncLLM: from_engine_args(usage_context=, stat_loggers=), generate, sync get_tokenizer, reset_prefix_cache")
def _async_llm() -> None:
    from vllm.v1.engine.async_llm import AsyncLLM

    need({"engine_args", "usage_context", "stat_loggers"} <= params(AsyncLLM.from_engine_args), "from_engine_args")
    need({"prompt", "sampling_params", "request_id"} <= params(AsyncLLM.generate), "generate(prompt, params, id)")
    need(not asyncio.iscoroutinefunction(AsyncLLM.get_tokenizer), "get_tokenizer is a coroutine (vLLM 0.10 style)")
    need(asyncio.iscoroutinefunction(AsyncLLM.reset_prefix_cache), "reset_prefix_cache is not a coroutine")
    need(callable(getattr(AsyncLLM, "shutdown", None)), "AsyncLLM.shutdown")
    need("model_config" in inspect.getsource(AsyncLLM.__init__), "AsyncLLM.model_config")


@check("SamplingParams(temperature, top_p, max_tokens, stop, seed), output_kind; TokensPrompt; RequestOutputKind")
def _sampling() -> None:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    p = SamplingParams(temperature=0.7, top_p=0.9, max_tokens=8, stop=["\n"], seed=3)
    p.output_kind = RequestOutputKind.FINAL_ONLY
    need(p.seed == 3 and p.max_tokens == 8, "SamplingParams fields")
    need(TokensPrompt(prompt_token_ids=[1, 2])["prompt_token_ids"] == [1, 2], "TokensPrompt")


@check("RequestOutput / CompletionOutput fields the engines read")
def _outputs() -> None:
    from vllm.outputs import CompletionOutput, RequestOutput

    need({"prompt_token_ids", "outputs", "num_cached_tokens", "metrics"} <= params(RequestOutput.__init__),
         "RequestOutput fields")
    need({"text", "token_ids", "finish_reason"} <= {f.name for f in dataclasses.fields(CompletionOutput)},
         "CompletionOutput fields")


@check("stat logger: StatLoggerBase.record(scheduler_stats, ...), SchedulerStats.num_running_reqs; EngineDeadError")
def _stats() -> None:
    from vllm.v1.engine.exceptions import EngineDeadError  # noqa: F401
    from vllm.v1.metrics.loggers import StatLoggerBase
    from vllm.v1.metrics.stats import SchedulerStats

    need({"scheduler_stats", "iteration_stats"} <= params(StatLoggerBase.record), "record() parameters")
    need("num_running_reqs" in {f.name for f in dataclasses.fields(SchedulerStats)}, "num_running_reqs")


@check("platform: current_platform.is_cpu/device_type, Platform/PlatformEnum/DeviceCapability, import_pynvml")
def _platform() -> str:
    from vllm.platforms import current_platform
    from vllm.platforms.interface import DeviceCapability, Platform, PlatformEnum  # noqa: F401
    from vllm.utils.import_utils import import_pynvml  # noqa: F401

    need(callable(current_platform.is_cpu) and hasattr(current_platform, "device_type"), "current_platform")
    need(PlatformEnum.CUDA and PlatformEnum.UNSPECIFIED, "PlatformEnum members")
    return f"current platform here: {type(current_platform).__name__}"


@check("scheduler defaults: EngineArgs.get_batch_defaults and the two defaulting steps our simulation runs")
def _defaults_api() -> None:
    from vllm.engine.arg_utils import EngineArgs

    need(params(EngineArgs.get_batch_defaults) >= {"world_size"}, "get_batch_defaults(world_size)")
    need({"usage_context", "model_config", "parallel_config"}
         <= params(EngineArgs._set_default_max_num_seqs_and_batched_tokens_args), "batch-limit defaulting")
    need("model_config" in params(EngineArgs._set_default_chunked_prefill_and_prefix_caching_args),
         "chunked-prefill defaulting")
    need("usage_context" in params(EngineArgs.create_engine_config), "create_engine_config(usage_context)")


@check("memory: vllm.v1.worker.utils.request_memory(init_snapshot, cache_config), CacheConfig(gpu_memory_utilization)")
def _memory() -> str:
    from vllm.config import CacheConfig
    from vllm.v1.worker.utils import request_memory

    need({"init_snapshot", "cache_config"} <= params(request_memory), "request_memory parameters")
    return f"vLLM's own default share: {CacheConfig().gpu_memory_utilization}"


@check("environment variables we set exist in vllm.envs")
def _envs() -> None:
    import vllm.envs as envs

    names = ["VLLM_LOGGING_STREAM", "VLLM_CPU_NUM_OF_RESERVED_CPU", "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS",
             "VLLM_SERVER_DEV_MODE", "VLLM_CPU_KVCACHE_SPACE"]
    missing = [n for n in names if n not in envs.environment_variables]
    need(not missing, f"unknown to vLLM: {missing}")


@check("metric names the benches read (vllm_server.COUNTERS, inner_loop_bench._COUNTERS)")
def _metrics() -> None:
    from mtg_local.bench.inner_loop_bench import _COUNTERS
    from mtg_local.bench.vllm_server import COUNTERS

    src = inspect.getsource(importlib.import_module("vllm.v1.metrics.loggers"))
    missing = [n for n in [*COUNTERS, *_COUNTERS] if f'"{n}' not in src]
    need(not missing, f"not in vllm.v1.metrics.loggers: {missing}")


@check("the API server module (python -m vllm.entrypoints.openai.api_server)")
def _server_module() -> str:
    spec = importlib.util.find_spec("vllm.entrypoints.openai.api_server")
    need(spec is not None, "module missing")
    deprecated = "deprecated" in Path(spec.origin).read_text()
    return "marked deprecated by vLLM (still runs; `vllm serve` fails with vllm-cpu)" if deprecated else ""


def scheduler_table() -> dict[str, Any]:
    """Scheduler limits vLLM resolves for our GPU keywords on simulated GPUs, per usage context."""
    from vllm.usage.usage_lib import UsageContext

    from engines.bundled import bundled_model_dir, is_prepared
    from engines.vllm_async_engine import AsyncVLLMConfig
    from engines.vllm_engine import USAGE_CONTEXT, VLLMConfig
    from engines.vllm_settings import A100_40GB, H100, engine_args, simulated_batch_limits, usage_context

    path = bundled_model_dir()
    if not is_prepared(path):
        raise AssertionError("the bundled model is not converted: run mtg prepare-model")
    kw = {"vllm": VLLMConfig(model="bundled").llm_kwargs(str(path), on_cpu=False),
          "vllm-async": AsyncVLLMConfig(model="bundled").llm_kwargs(str(path), on_cpu=False)}
    rows: dict[str, Any] = {}
    for gpu in (H100, A100_40GB):
        for ctx in (UsageContext.LLM_CLASS, UsageContext.ENGINE_CONTEXT, UsageContext.OPENAI_API_SERVER):
            lim = simulated_batch_limits(engine_args("vllm", kw["vllm"]), ctx, gpu)
            rows[f"{gpu.name} / {ctx.name}"] = (lim["max_num_seqs"], lim["max_num_batched_tokens"])
        for backend in ("vllm", "vllm-async"):
            lim = simulated_batch_limits(engine_args(backend, kw[backend]), usage_context(), gpu)
            rows[f"{gpu.name} / {backend}: (ours, {USAGE_CONTEXT})"] = (lim["max_num_seqs"],
                                                                         lim["max_num_batched_tokens"])
    return rows


@check("both vLLM engines resolve equal scheduler limits on a simulated H100 / A100 (1024/16384 on the H100)")
def _equal_limits() -> str:
    rows = scheduler_table()
    for gpu in ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB"):
        ours = {v for k, v in rows.items() if k.startswith(gpu) and ": (ours" in k}
        need(len(ours) == 1, f"{gpu}: the engines differ: {ours}")
    h100 = rows["NVIDIA H100 80GB HBM3 / vllm: (ours, LLM_CLASS)"]
    need(h100 == (1024, 16384), f"H100 limits {h100}, expected vLLM's offline 1024/16384")
    return f"H100 {h100}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="one JSON object instead of text")
    args = ap.parse_args()
    import logging

    from engines.vllm_engine import import_vllm

    import_vllm()  # our process settings before vLLM's first import
    logging.disable(logging.WARNING)  # vLLM's INFO/WARNING lines while configs resolve
    import vllm

    from engines.vllm_platform import _distribution

    dist, version = _distribution()
    results = []
    for name, fn in CHECKS:
        try:
            note = fn()
            results.append({"check": name, "ok": True, "note": note or ""})
        except Skip as e:
            results.append({"check": name, "ok": True, "skipped": True, "note": " ".join(str(e).split())})
        except (Exception, SystemExit) as e:  # argparse exits on an unknown server flag
            results.append({"check": name, "ok": False, "note": " ".join(f"{type(e).__name__}: {e}".split())})
    try:
        table = {k: list(v) for k, v in scheduler_table().items()}
    except Exception as e:
        table = {"error": str(e)}
    failed = sum(not r["ok"] for r in results)
    if args.json:
        print(json.dumps({"vllm": version, "distribution": dist, "path": str(Path(vllm.__file__).parent),
                          "checks": results, "scheduler_limits": table, "failed": failed}, indent=1))
    else:
        print(f"vLLM {version} ({dist}) at {Path(vllm.__file__).parent}")
        for r in results:
            status = "skip" if r.get("skipped") else "ok  " if r["ok"] else "FAIL"
            print(f"{status} {r['check']}" + (f" -- {r['note']}" if r["note"] else ""))
        print("scheduler limits (max_num_seqs, max_num_batched_tokens), GPU keywords of vllm:bundled:")
        for k, v in table.items():
            print(f"  {k}: {v}")
        skipped = sum(bool(r.get("skipped")) for r in results)
        print(f"{len(results) - failed - skipped} of {len(results)} checks passed, {skipped} skipped, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
