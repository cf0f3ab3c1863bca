"""``mtg bench peer``: this project against TextGrad on a vLLM server, same model and workload.

The peer users would actually pick is not "one request per call" but the real
``textgrad`` package run from a thread pool against a vLLM OpenAI-compatible
server, whose continuous batching batches the threads. Variants, one real
engine at a time (the server is stopped before the in-process engine starts):

* ``textgrad`` -- TextGrad's per-item solution optimization
  (``mtg_local.bench.textgrad_peer``) at each thread-pool width of
  ``--widths`` (``all`` = one thread per item), TextGrad's disk cache off;
* ``ours-server`` -- our phase-batched inner loop on the same server through
  the ``openai:`` engine, once per ``--server-concurrency`` value
  (``ours-server`` at the engine's default ``max_concurrency``,
  ``ours-server-c<N>`` at N requests in flight);
* ``ours-inproc`` -- our inner loop on the in-process ``vllm:`` engine, with
  the workload's prompt layout (default: TextGrad's own requests);
* ``ours-inproc-chained`` -- the same engine, the KV-reuse layout
  (``prompt_layout="chained"``: each phase's prompt extends the previous
  one's, so vLLM's prefix cache computes an item's context once);
* ``ours-async-item`` -- the in-process ``vllm-async:`` engine with the
  barrier-free schedule (``schedule="item"``: each item starts its next phase
  as soon as its own request returns);
* ``ours-async-item-chained`` -- the same engine, both.

The two last variants change how the work is done, not how much of it the
workload asks for (same items, phases, caps and sampling); the chained layout
does change what the model reads, so each of them reports how many items'
answers differ from ``ours-inproc`` and its accuracy beside ours-inproc's.

The workload is ``mtg bench inner-loop``'s (N questions x S seeds, T steps,
token caps, forward temperature) under a protocol (``--protocol``: ``default``
or ``textgrad``), which gives every other setting -- top_p, optimizer
temperature, forward system prompt, template, prefill, update reading, the
task's initial loss prompt -- to TextGrad and to our variants alike: under
``textgrad`` both send the same requests. The seeds are the protocol's
(``--seeds`` unset: ``textgrad`` runs seed 0, ``default`` seeds 0-5); ``--seeds S``
runs seeds 0..S-1 and the recorded protocol and ``protocol_hash`` say so. At
forward temperature 0 several seeds send identical copies of every request
(and at any temperature two seeds whose answers agree send identical greedy
loss, backward and update requests), which TextGrad's threads send each time:
our engines send every copy too, so both sides do the same work, unless
``--fold-seeds`` lets ours generate each once (``engines.dedup``); the record
then lists the folded requests apart from the speed figures.

Under ``default`` our answers start with the paper's inference template,
which TextGrad's API cannot ask for: its client wrapper prefills the forward
call with it as our ``openai:`` engine does on vLLM, so both sides send the
same requests there too (``--textgrad-prefill false``: TextGrad as it ships,
whose answers lack the template, so every later request differs;
``--inference-template false`` leaves the template out of both). Our
``openai:`` engine is built with ``prefill=true`` (vLLM's
``continue_final_message``); the bench first checks that the server lists
the model as vLLM's and stops with one line if not, instead of the engine's
fallback (an added instruction, other requests than TextGrad's). The server
gets the in-process engine's own ``vllm.LLM`` settings
(``mtg_local.bench.vllm_server``).

Order and repeats: each engine gets the same warm-up batch before its first
variant (TextGrad also one untimed item); the prefix cache is reset before
every run. ``--repeats N`` runs every variant N times; each engine's variants
run in the listed order on even repeats and in reverse on odd ones (ABBA...), so
no variant always runs first; the record gives each variant's median wall,
its spread and every run (``mtg_local.bench.peer_record``). Tokens come from
vLLM: the server's ``/metrics`` counters around each server run; for
in-process variants the engine's own usage, whose cached prompt tokens are
vLLM's ``num_cached_tokens`` of each request: prompt tokens, prefix-cache hit
tokens ("cached"), generated tokens, requests.

The headline, ``like_for_like``, is the median wall of the fastest TextGrad
width over the median wall of ``ours-server``: the same server, the same
requests. ``speedup_inproc_vs_textgrad_best`` puts our in-process engine
against TextGrad on the server (different engines), and
``speedup_inproc_one_off`` charges our engine's start-up to us and none to
TextGrad.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from engines import create_engine
from engines.base import Engine
from engines.errors import EngineUnreachableError, UserError
from mtg_local.bench.inner_loop_bench import InnerLoopBenchConfig, _warmup_requests, build_items, reset_prefix_cache
from mtg_local.bench.peer_record import aggregate, run_record, summarize
from mtg_local.bench.peer_record import table as table  # re-exported: the command prints it
from mtg_local.bench.textgrad_peer import run_textgrad
from mtg_local.inner_loop import InnerLoopConfig, Trajectory, solution_optimization
from mtg_local.protocol import FORWARD_SYSTEM_PROMPTS, PRESETS, load_task, protocol_hash
from mtg_local.protocol import Protocol as RunProtocol
from mtg_local.tasks import Task

VARIANTS = ("textgrad", "ours-server", "ours-inproc", "ours-inproc-chained", "ours-async-item",
            "ours-async-item-chained")
#: In-process variants: (engine backend, workload changes).
INPROC = {
    "ours-inproc": ("vllm", {}),
    "ours-inproc-chained": ("vllm", {"prompt_layout": "chained"}),
    "ours-async-item": ("vllm-async", {"schedule": "item"}),
    "ours-async-item-chained": ("vllm-async", {"schedule": "item", "prompt_layout": "chained"}),
}
DEFAULT_WIDTHS = (1, 16, 32, None)  # None: one thread per item
#: How our openai: engine starts an answer with its template: vLLM's chat API continues a
#: trailing assistant turn (``engines.openai_support.prefilled_chat``), as TextGrad's client wrapper.
SERVER_PREFILL = "continue_final_message"


class Server(Protocol):
    """What the benchmark needs of a running OpenAI-compatible server."""

    base_url: str
    served_name: str
    start_s: float | None

    def counters(self) -> dict[str, float] | None: ...
    def reset_prefix_cache(self) -> bool | None: ...


@dataclasses.dataclass(frozen=True)
class PeerBenchConfig:
    """What ``mtg bench peer`` runs (validated in ``__post_init__``).

    Attributes:
        workload: the inner-loop workload (shared with ``mtg bench inner-loop``);
            its ``seeds`` S become the protocol's seeds 0..S-1.
        widths: TextGrad thread-pool widths, each >= 1, or None for one
            thread per item.
        variants: a non-empty subset of ``VARIANTS``.
        server_concurrency: ``max_concurrency`` values of the ``openai:`` engine
            for ``ours-server`` (None: the engine's default).
        server_timeout_s: limit of one request to the server (queueing
            included), for both TextGrad's client and our ``openai:`` engine.
        protocol: the named protocol (``mtg_local.protocol.PRESETS``) both sides run
            under; the workload sets its seeds, steps, token caps and forward temperature.
        inference_template: overrides the protocol's ``inference_template`` (None:
            the protocol's), for TextGrad and ours alike.
        textgrad_prefill: TextGrad's forward calls start the answer with the
            template (prefilled by its client wrapper, as our ``openai:`` engine
            does). False: TextGrad as it ships, answers without the template.
        fold_seeds: let our engines generate identical requests of a phase once
            (``engines.dedup``: every seed's copy at forward temperature 0, greedy
            phases whose answers agree otherwise), where TextGrad sends each;
            False (default): every request reaches the engine, as TextGrad's do.
        repeats: timed runs of every variant (order alternating, see the module docstring).
    """

    workload: InnerLoopBenchConfig = InnerLoopBenchConfig()
    widths: tuple[int | None, ...] = DEFAULT_WIDTHS
    variants: tuple[str, ...] = VARIANTS
    server_concurrency: tuple[int | None, ...] = (None,)
    server_timeout_s: float = 3600.0
    protocol: str = "default"
    inference_template: bool | None = None
    textgrad_prefill: bool = True
    fold_seeds: bool = False
    repeats: int = 1

    def __post_init__(self) -> None:
        if not self.widths or any(w is not None and (isinstance(w, bool) or not isinstance(w, int) or w < 1)
                                  for w in self.widths):  # fmt: skip
            raise ValueError(f"widths must be integers >= 1 or 'all', got {self.widths!r}")
        bad = [v for v in self.variants if v not in VARIANTS]
        if not self.variants or bad:
            raise ValueError(f"variants must be a non-empty subset of {', '.join(VARIANTS)}, got {self.variants!r}")
        if not self.server_concurrency or any(
            c is not None and (isinstance(c, bool) or not isinstance(c, int) or c < 1) for c in self.server_concurrency
        ):
            raise ValueError(f"server_concurrency must be integers >= 1 (or None), got {self.server_concurrency!r}")
        if not self.server_timeout_s > 0:
            raise ValueError(f"server_timeout_s must be > 0, got {self.server_timeout_s!r}")
        if self.protocol not in PRESETS:
            raise ValueError(f"protocol must be one of {', '.join(PRESETS)}, got {self.protocol!r}")
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or self.repeats < 1:
            raise ValueError(f"repeats must be an integer >= 1, got {self.repeats!r}")

    def run_protocol(self) -> RunProtocol:
        """The protocol of every variant: the named one with the workload's seeds, steps, caps and temperature."""
        w = self.workload
        p = PRESETS[self.protocol].replace(seeds=tuple(range(w.seeds)), steps=w.steps, max_tokens=w.max_tokens,
                                           optimizer_max_tokens=w.max_tokens, temperature=w.temperature,
                                           freeze_when="never")  # fmt: skip
        return p if self.inference_template is None else p.replace(inference_template=self.inference_template)

    def same_requests(self) -> bool:
        """Whether TextGrad and ours send the same requests by construction (``tests/test_bench_peer.py``).

        Not with TextGrad's answers left without the template ours start with, nor
        with a prefilled update tag (TextGrad's ``TextualGradientDescent`` prefills none).
        """
        p = self.run_protocol()
        return (self.textgrad_prefill or not p.inference_template) and not p.prefill_update_tag

    def workload_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.workload)


def inner_config(protocol: RunProtocol, workload: InnerLoopBenchConfig) -> InnerLoopConfig:
    """Our inner loop under ``protocol``, with the workload's layout and schedule."""
    return dataclasses.replace(protocol.inner_config(schedule=workload.schedule), prompt_layout=workload.prompt_layout)


def alternating(names: list[str], repeat: int) -> list[str]:
    """``names`` in order on even repeats, reversed on odd ones (each variant's mean position is the same)."""
    return list(names) if repeat % 2 == 0 else list(reversed(names))


def require_vllm_server(server: Server, timeout_s: float = 30.0) -> None:
    """Stops the bench unless the server lists its model as vLLM's (``owned_by: "vllm"``).

    Our ``openai:`` engine prefills answers with vLLM's ``continue_final_message``
    and TextGrad's client wrapper does the same; another server would not honour it.

    Raises:
        EngineUnreachableError: the model list does not answer, or does not say vLLM (one line).
    """
    import openai

    client = openai.OpenAI(base_url=server.base_url, api_key="EMPTY", timeout=timeout_s, max_retries=2)
    try:
        models = list(client.models.list().data)
    except openai.OpenAIError as e:
        raise EngineUnreachableError(
            f"mtg bench peer: cannot list the models of {server.base_url} ({type(e).__name__}), so cannot check that "
            f"it is vLLM, whose {SERVER_PREFILL} both sides' prefilled answers need"
        ) from None
    finally:
        client.close()
    owners = {str(getattr(m, "id", "")): getattr(m, "owned_by", None) for m in models}
    if owners.get(server.served_name) != "vllm":
        raise EngineUnreachableError(
            f"mtg bench peer: {server.base_url} does not list {server.served_name!r} as a vLLM model (owned_by "
            f"{owners.get(server.served_name)!r}); the bench needs vLLM's {SERVER_PREFILL} to prefill answers"
        )


def _settled(read: Callable[[], dict[str, float] | None], before: dict[str, float] | None,
             requests: int) -> dict[str, float] | None:  # fmt: skip
    """Counters after a run; waits (up to 10 s) until the server has counted its requests."""
    after = read()
    for _ in range(20):
        if before is None or after is None or after["requests"] - before["requests"] >= requests:
            break
        time.sleep(0.5)
        after = read()
    return after


def _run_ours(name: str, engine: Engine, task: Task, config: InnerLoopBenchConfig, start_s: float | None,
              counters: Callable[[], dict[str, float] | None], reset: Callable[[], bool | None],
              protocol: RunProtocol, *, fold: bool = False) -> tuple[dict[str, Any], list[Trajectory]]:  # fmt: skip
    items = build_items(task, config)
    engine.deduplicate = fold  # equal work with TextGrad's threads unless folding was asked for
    ok = reset()
    before = counters()
    engine.reset_usage()
    t0 = time.perf_counter()
    inner = inner_config(protocol, config)
    trajs = solution_optimization(task, items, forward_engine=engine, config=inner)
    wall = time.perf_counter() - t0
    u = engine.reset_usage()
    backend = u.requests - u.deduplicated - u.cache_hits
    client = {"requests": backend, "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
              "cached_tokens": u.cached_prompt_tokens if u.cached_prompt_tokens else None}  # fmt: skip
    after = _settled(counters, before, backend)
    rec = run_record(name, wall, start_s, client, before, after, ok, engine=engine.spec,
                     prompt_layout=inner.prompt_layout, schedule=inner.schedule, logical_requests=u.requests,
                     logical_prompt_tokens=u.prompt_tokens + u.deduplicated_prompt_tokens,
                     deduplicated=u.deduplicated, errors=u.errors, items=len(trajs),
                     accuracy=round(sum(t.score for t in trajs) / len(trajs), 4) if trajs else None)  # fmt: skip
    return rec, trajs


def outputs_differ(base: list[Trajectory], other: list[Trajectory]) -> dict[str, int]:
    """How many items' texts differ between two runs of the same items (same order)."""
    pairs = list(zip(base, other, strict=True))
    return {
        "items": len(pairs),
        "answers_differ": sum(a.answers != b.answers for a, b in pairs),
        "final_answers_differ": sum(a.final_answer != b.final_answer for a, b in pairs),
        "scores_differ": sum(a.score != b.score for a, b in pairs),
    }


def _run_textgrad(width: int, server: Server, task: Task, config: InnerLoopBenchConfig, protocol: RunProtocol,
                  timeout_s: float, *, prefill: bool, quiet: bool = False) -> dict[str, Any]:  # fmt: skip
    templates = protocol.inference_template and prefill
    items = [(task.format_question(it.example), it.seed, it.template if templates else "")
             for it in build_items(task, config)]  # fmt: skip
    ok = server.reset_prefix_cache()
    before = server.counters()
    res = run_textgrad(
        items, width=width, base_url=server.base_url, model=server.served_name, steps=protocol.steps,
        temperature=protocol.temperature, max_tokens=protocol.max_tokens, loss_prompt=task.initial_loss_prompt,
        constraint=task.tgd_constraint or None, role=task.answer_role, top_p=protocol.top_p,
        system_prompt=FORWARD_SYSTEM_PROMPTS[protocol.forward_system_prompt],
        optimizer_temperature=protocol.optimizer_temperature, timeout_s=timeout_s,
    )  # fmt: skip
    if quiet:
        return res
    after = _settled(server.counters, before, res["requests"])
    return run_record(f"textgrad-w{width}", res["wall_s"], server.start_s, res, before, after, ok,
                      engine="textgrad ChatExternalClient", width=width, logical_requests=res["requests"],
                      deduplicated=0, cache_lookups=res["cache_lookups"], item_errors=res["item_errors"],
                      update_errors=res["update_errors"], first_error=res["first_error"], items=len(items))  # fmt: skip


def run_peer_bench(
    config: PeerBenchConfig,
    *,
    server_factory: Callable[[], contextlib.AbstractContextManager[Server]],
    inproc_factory: Callable[[str], tuple[Engine, float]],
    task: Task | None = None,
) -> dict[str, Any]:
    """Runs the chosen variants, one engine at a time, ``config.repeats`` times each; returns the JSON record.

    Args:
        config: workload, widths, variants, repeats.
        server_factory: starts the server (context manager; stopped on exit).
        inproc_factory: builds the in-process engine of a backend ("vllm" or
            "vllm-async"); returns it and its start-up seconds.
        task: default: the workload's task under the run's protocol (``load_task``).

    Raises:
        EngineUnreachableError: the server is not vLLM (``require_vllm_server``).
    """
    w = config.workload
    protocol = config.run_protocol()
    task = task or load_task(w.task, protocol)
    n_items = len(build_items(task, w))
    runs: dict[str, list[dict[str, Any]]] = {}
    run_order: list[list[Any]] = []
    server_spec = server_prefill = None

    def timed(name: str, repeat: int, position: int, rec: dict[str, Any]) -> None:
        runs.setdefault(name, []).append({**rec, "repeat": repeat, "position": position})
        run_order.append([repeat, name])

    if "textgrad" in config.variants or "ours-server" in config.variants:
        with server_factory() as server:
            require_vllm_server(server)
            engines: dict[str, Engine] = {}
            try:
                for c in dict.fromkeys(config.server_concurrency if "ours-server" in config.variants else (None,)):
                    opts = {} if c is None else {"max_concurrency": c}
                    engines["ours-server" if c is None else f"ours-server-c{c}"] = create_engine(
                        f"openai:{server.served_name}", base_url=server.base_url, timeout_s=config.server_timeout_s,
                        prefill=True, **opts)  # fmt: skip
                first = next(iter(engines.values()))
                server_spec = first.spec
                server_prefill = {"prefill": first.identity()["prefill"], "mode": SERVER_PREFILL, "server": "vllm"}
                first.generate(_warmup_requests())  # same warm-up as the in-process engine gets
                names: list[str] = []
                widths: dict[str, int] = {}
                if "textgrad" in config.variants:
                    # One untimed item first: TextGrad's lazy imports and first connection are
                    # paid once, not by whichever width runs first.
                    _run_textgrad(1, server, task, dataclasses.replace(w, questions=1, seeds=1), protocol,
                                  config.server_timeout_s, prefill=config.textgrad_prefill, quiet=True)  # fmt: skip
                    # "all" may equal a listed width (e.g. 32 items): run each width once.
                    for width in dict.fromkeys(wd or n_items for wd in config.widths):
                        widths[f"textgrad-w{width}"] = width
                    names += list(widths)
                if "ours-server" in config.variants:
                    names += list(engines)
                for repeat in range(config.repeats):
                    for pos, name in enumerate(alternating(names, repeat)):
                        if name in widths:
                            rec = _run_textgrad(widths[name], server, task, w, protocol, config.server_timeout_s,
                                                prefill=config.textgrad_prefill)  # fmt: skip
                        else:
                            eng = engines[name]
                            rec, _ = _run_ours(name, eng, task, w, server.start_s, server.counters,
                                               server.reset_prefix_cache, protocol, fold=config.fold_seeds)  # fmt: skip
                            rec["max_concurrency"] = eng.config.max_concurrency  # type: ignore[attr-defined]
                        timed(name, repeat, pos, rec)
            finally:
                for eng in engines.values():
                    eng.close()
    trajectories: dict[str, list[Trajectory]] = {}
    for backend in dict.fromkeys(INPROC[v][0] for v in INPROC if v in config.variants):
        engine, start_s = inproc_factory(backend)
        try:
            engine.generate(_warmup_requests())
            names = [v for v in INPROC if v in config.variants and INPROC[v][0] == backend]
            for repeat in range(config.repeats):
                for pos, name in enumerate(alternating(names, repeat)):
                    workload = dataclasses.replace(w, **INPROC[name][1])
                    rec, trajs = _run_ours(name, engine, task, workload, start_s, lambda: None,
                                           lambda e=engine: reset_prefix_cache(e), protocol,
                                           fold=config.fold_seeds)  # fmt: skip
                    trajectories.setdefault(name, trajs)  # the first repeat's texts
                    timed(name, repeat, pos, rec)
        finally:
            engine.close()
    variants = {name: aggregate(rs) for name, rs in runs.items()}
    base = trajectories.get("ours-inproc")
    for name, trajs in trajectories.items():
        if base is not None and name != "ours-inproc":
            variants[name]["vs_ours_inproc"] = outputs_differ(base, trajs)
    return summarize(config, variants, n_items=n_items, server_spec=server_spec, run_order=run_order,
                     protocol=protocol, protocol_hash=protocol_hash(protocol),
                     preset_seeds=PRESETS[config.protocol].seeds, server_prefill=server_prefill)  # fmt: skip


# -- command line ---------------------------------------------------------------


def _int_list(text: str, *, flag: str, word: str) -> tuple[int | None, ...]:
    """Comma-separated integers >= 1, ``word`` standing for None; a ``UserError`` naming ``flag`` otherwise."""
    out: list[int | None] = []
    for part in text.split(","):
        part = part.strip()
        if part == word:
            out.append(None)
        elif part.isdigit() and int(part) >= 1:
            out.append(int(part))
        else:
            raise UserError(f"{flag} takes integers >= 1 or {word!r}, comma-separated; got {part!r} in {text!r}")
    return tuple(out)


def parse_widths(text: str) -> tuple[int | None, ...]:
    """``"1,16,32,all"`` -> ``(1, 16, 32, None)``."""
    return _int_list(text, flag="--widths", word="all")


def parse_concurrency(text: str) -> tuple[int | None, ...]:
    """``"default,16,64"`` -> ``(None, 16, 64)``."""
    return _int_list(text, flag="--server-concurrency", word="default")


@contextlib.contextmanager
def vllm_server(model: str, opts: dict[str, Any], start_timeout_s: float) -> Iterator[Server]:
    """A ``VLLMServer`` for ``model`` with the in-process engine's settings (``opts``: VLLMConfig options)."""
    from mtg_local.bench.vllm_server import VLLMServer

    name = model if "/" not in model else model.rstrip("/").rsplit("/", 1)[-1]
    with VLLMServer.for_model(model, served_name=name, start_timeout_s=start_timeout_s, **opts) as server:
        print(f"[bench peer] server up in {server.start_s:.1f}s: {' '.join(server.command())}", file=sys.stderr)
        yield server


def inproc_engine(model: str, opts: dict[str, Any], *, backend: str = "vllm") -> tuple[Engine, float]:
    """The in-process ``<backend>:<model>`` engine (vllm or vllm-async) and how long it took to start."""
    t0 = time.perf_counter()
    engine = create_engine(f"{backend}:{model}", **opts)
    return engine, time.perf_counter() - t0
