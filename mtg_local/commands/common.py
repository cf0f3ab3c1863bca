"""Options shared by sub-commands: engine spec, engine options, cache, sampling."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engines import Engine, SamplingConfig, create_engine, vllm_platform
from engines.cache import CachedEngine
from engines.errors import BackendUnavailableError, UserError
from engines.gpu_memory import split_engine_options
from engines.registry import parse_engine_opts
from engines.vllm_platform import is_vllm_spec
from mtg_local.inner_loop import SCHEDULES

DEFAULT_ENGINE = "vllm:bundled"


def add_engine_args(parser: argparse.ArgumentParser, *, optimizer: bool = False, schedule: bool = False) -> None:
    """Adds --engine, --engine-opt, --cache/--no-cache (and --optimizer-engine, --schedule)."""
    g = parser.add_argument_group("engine")
    g.add_argument(
        "--engine",
        default=DEFAULT_ENGINE,
        metavar="SPEC",
        help="generation backend: vllm:MODEL, vllm-async:MODEL (AsyncLLM, for concurrent callers), hf:MODEL, openai:MODEL or fake "
        "(MODEL 'bundled' = the bundled SmolLM2-135M-Instruct; default: %(default)s)",
    )
    g.add_argument(
        "--engine-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="backend option, repeatable (e.g. dtype=bfloat16, max_model_len=4096, "
        "tensor_parallel_size=2, gpu_memory_utilization=0.9, base_url=http://host:8000/v1); "
        "GPU memory: each vLLM engine takes 0.9 / engines_per_gpu (2 when a run builds two vLLM "
        "engines), or its own gpu_memory_utilization= / kv_cache_gib= (docs/gpu.md)",
    )
    if optimizer:
        g.add_argument(
            "--optimizer-engine",
            default=None,
            metavar="SPEC",
            help="engine for evaluation/backward/update phases (default: the --engine one)",
        )
    g.add_argument(
        "--cache",
        default=None,
        metavar="PATH",
        help="SQLite generation cache (default: in the run dir where there is one)",
    )
    g.add_argument("--no-cache", action="store_true", help="switch the generation cache off")
    if schedule:
        add_schedule_arg(g)
    parser.set_defaults(preflight=preflight_engines)


def preflight_engines(args: argparse.Namespace) -> None:
    """Stops a command whose vLLM engine cannot run here before it creates anything.

    Run by ``mtg_local.cli`` before the command: a CUDA build of vLLM without a
    usable GPU raises ``NoUsableGPUError`` (one line, exit 3) before a run dir
    exists. Checks the specs the command was given (``--engine``,
    ``--optimizer-engine``, ``--reflection-engine``); a resumed run's specs are
    its stored ones, so ``--resume`` is left to the engine's own check. As at
    an engine's start, the user's own mistakes in those specs come first (a bad
    spec or option, a local model path that does not exist: exit 2).
    """
    if getattr(args, "resume", None):
        return
    specs = [s for s in (getattr(args, name, None) for name in ("engine", "optimizer_engine", "reflection_engine"))
             if is_vllm_spec(s)]
    # The CPU build always has its device: no need to import vLLM (seconds) before the command.
    if not specs or vllm_platform.cpu_build_installed():
        return
    for spec in specs:
        check_vllm_spec(spec, parse_engine_opts(list(getattr(args, "engine_opt", []) or [])))
    try:
        vllm_platform.require_usable_platform()
    except BackendUnavailableError:  # no vLLM here: the engine's start names the extra to install
        pass


def check_vllm_spec(spec: str, options: dict[str, Any]) -> None:
    """What a vLLM engine's start checks before it imports vLLM: the spec, the options, a local model path.

    Raises:
        EngineSpecError: a bad spec or option.
        ModelNotFoundError: a local model path that does not exist.
    """
    from engines.bundled import BUNDLED_NAME, resolve_model
    from engines.registry import config_from_options, parse_spec
    from engines.vllm_async_engine import AsyncVLLMConfig
    from engines.vllm_engine import VLLMConfig

    backend, model = parse_spec(spec)
    config_from_options(AsyncVLLMConfig if backend == "vllm-async" else VLLMConfig, backend, model, dict(options))
    if model != BUNDLED_NAME:  # the bundled model is converted by the engine itself (tens of seconds)
        resolve_model(model or "")


def add_schedule_arg(parser: Any) -> None:
    """Adds --schedule {phase,item} (default None: "phase", or a resumed run's own)."""
    parser.add_argument(
        "--schedule",
        default=None,
        choices=SCHEDULES,
        help="inner-loop schedule: phase = one engine call per phase for all items (default); item = each "
        "(question, seed) runs its next phase as soon as its own request returns (barrier-free; needs an "
        "engine that serves concurrent calls: vllm-async:, openai:). Same requests and results; "
        "not in the protocol",
    )


def build_engine(spec: str, opts: list[str], cache: str | Path | None, no_cache: bool) -> Engine:
    """Creates the engine for ``spec``, wrapped in a cache unless switched off."""
    engine = create_engine(spec, **parse_engine_opts(opts))
    if cache is not None and not no_cache:
        engine = CachedEngine(engine, cache)
    return engine


@dataclasses.dataclass(frozen=True)
class RunEngines:
    """The engines of one run: raw backends and the (possibly cached) ones the run calls.

    Attributes:
        forward: the task/forward backend.
        optimizer: the optimizer backend (the forward one unless another spec was given).
        forward_run: what the run calls for forward phases (``forward`` behind the cache).
        optimizer_run: the same for optimizer phases; the very object ``forward_run`` when
            both are one backend, so one cache and one usage meter see everything.
        specs: ``{"engine": ..., "optimizer_engine": ...}`` as recorded in config/results.
        owned: the engines built from the specs (not passed in by the caller).
    """

    forward: Engine
    optimizer: Engine
    forward_run: Engine
    optimizer_run: Engine
    specs: dict[str, str]
    owned: tuple[Engine, ...] = ()

    def probe(self) -> None:
        """Probes the engines built from the specs (``Engine.probe``); passed-in ones are their owner's.

        Raises:
            EngineUnreachableError: an engine is not there (the run then fails in seconds).
        """
        for e in self.owned:
            e.probe()


@contextlib.contextmanager
def open_run_engines(
    spec: str,
    optimizer_spec: str | None,
    engine_opts: list[str] | tuple[str, ...],
    *,
    cache_path: str | Path | None,
    engine: Engine | None = None,
    optimizer_engine: Engine | None = None,
) -> Iterator[RunEngines]:
    """Opens (or adopts) a run's forward and optimizer engines, cached unless ``cache_path`` is None.

    Engines passed in are used as they are and left open; engines built here
    from the specs, and the caches, are closed on exit. An optimizer spec equal
    to the forward one shares the forward engine (one model loaded, not two).
    ``RunEngines.probe()`` probes the engines built here: a run calls it first
    thing, so an engine that is not there fails in seconds.
    """
    owned: list[Engine] = []
    wrappers: list[CachedEngine] = []
    # The engines this call builds share one GPU: split its memory (engines.gpu_memory).
    build_fwd = engine is None
    build_opt = optimizer_engine is None and bool(optimizer_spec) and optimizer_spec != spec
    built = [s for s, b in ((spec, build_fwd), (optimizer_spec, build_opt)) if b]
    opts = iter(split_engine_options(built, parse_engine_opts(list(engine_opts))))
    try:
        fwd = engine
        if fwd is None:
            fwd = create_engine(spec, **next(opts))
            owned.append(fwd)
        opt = optimizer_engine
        if build_opt:
            opt = create_engine(optimizer_spec, **next(opts))
            owned.append(opt)
        opt = opt or fwd
        fwd_run, opt_run = fwd, opt
        if cache_path is not None:
            fwd_run = CachedEngine(fwd, cache_path)
            opt_run = fwd_run if opt is fwd else CachedEngine(opt, cache_path)
            wrappers = [fwd_run] + ([opt_run] if opt_run is not fwd_run else [])
        specs = {"engine": fwd.spec or spec, "optimizer_engine": opt.spec or optimizer_spec or spec}
        yield RunEngines(fwd, opt, fwd_run, opt_run, specs, tuple(owned))
    finally:
        for w in wrappers:
            w.cache.close()
        for e in owned:
            e.close()


def add_sampling_args(parser: argparse.ArgumentParser, *, max_tokens: int = 256) -> None:
    g = parser.add_argument_group("sampling")
    g.add_argument("--temperature", type=float, default=0.0, help="default: %(default)s")
    g.add_argument("--top-p", type=float, default=1.0, help="default: %(default)s")
    g.add_argument("--max-tokens", type=int, default=max_tokens, help="default: %(default)s")
    g.add_argument("--seed", type=int, default=None, help="per-request seed (default: none)")


def sampling_from_args(args: argparse.Namespace) -> SamplingConfig:
    try:
        return SamplingConfig(
            temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens, seed=args.seed
        )
    except ValueError as e:
        raise UserError(f"bad sampling value: {e}") from e
