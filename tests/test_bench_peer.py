"""``mtg bench peer``'s orchestration on a fake OpenAI-compatible server and the fake engine.

The real ``textgrad`` package runs against ``tests/fault_server.py`` with no
faults (it plays the vLLM server); the in-process variant runs on the fake
engine. What is checked: every variant's fields, that TextGrad sends 1 + 3T
requests per item with the workload's sampling and nothing is served from its
disk cache, our accounting (logical vs deduplicated vs backend requests), and
the ratios. No timing assertions: the numbers mean nothing here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from engines.base import GenRequest, Message
from engines.errors import EngineUnreachableError
from engines.fake_engine import FakeEngine
from mtg_local.bench import peer_bench
from mtg_local.bench.inner_loop_bench import InnerLoopBenchConfig
from mtg_local.bench.peer_bench import PeerBenchConfig, parse_widths, run_peer_bench, table
from mtg_local.bench.vllm_server import parse_metrics, server_args
from mtg_local.cli import main
from mtg_local.prompts import textgrad_prompts as P
from mtg_local.protocol import PRESETS, protocol_hash
from tests.fault_server import FaultServer
from tests.textgrad_script import script

N, S, T, M = 2, 2, 1, 24
PER_ITEM = 1 + 3 * T


class FakeVLLMServer:
    """A ``Server`` for the benchmark on the fault server; counters from the calls it got."""

    served_name = "fault-model"

    def __init__(self, srv: FaultServer, *, with_counters: bool) -> None:
        self.srv, self.with_counters = srv, with_counters
        self.base_url, self.start_s = srv.base_url, 2.5
        self.resets = 0

    def counters(self) -> dict[str, float] | None:
        if not self.with_counters:
            return None
        out = {"requests": 0.0, "prompt_tokens": 0.0, "cached_tokens": 0.0, "completion_tokens": 0.0,
               "prefix_cache_queries": 0.0, "prefix_cache_hits": 0.0, "preemptions": 0.0}  # fmt: skip
        for c in list(self.srv.calls):
            if c.body is None:
                continue
            usage = self.srv._completion(c.body, chat=c.path.endswith("/chat/completions"))["usage"]
            out["requests"] += 1
            out["prompt_tokens"] += usage["prompt_tokens"]
            out["completion_tokens"] += usage["completion_tokens"]
        return out

    def reset_prefix_cache(self) -> bool | None:
        self.resets += 1
        return True


def scripted_answer(body: dict[str, Any]) -> str:
    """``textgrad_script.script`` for a chat body; a sampled call's answer also depends on its seed.

    As a sampler's would: at temperature > 0 two seeds give two answers, so the later
    (greedy) requests of two seeds of one question differ too and nothing repeats.
    """
    text = script(GenRequest(messages=tuple(Message(m["role"], m["content"]) for m in body["messages"])))
    return f"(sample {body['seed']}) {text}" if body.get("temperature") and "seed" in body else text


def run(config: PeerBenchConfig, *, with_counters: bool = True, answer: Any = None,
        owned_by: str = "vllm") -> tuple[dict[str, Any], FaultServer, FakeVLLMServer]:  # fmt: skip
    srv = FaultServer(fault_rate=0.0, owned_by=owned_by, answer=answer).start()
    handle = FakeVLLMServer(srv, with_counters=with_counters)

    @contextlib.contextmanager
    def server_factory() -> Iterator[FakeVLLMServer]:
        yield handle

    try:
        rec = run_peer_bench(config, server_factory=server_factory, inproc_factory=lambda backend: (FakeEngine(), 1.25))
    finally:
        srv.stop()
    return rec, srv, handle


def workload() -> InnerLoopBenchConfig:
    return InnerLoopBenchConfig(questions=N, seeds=S, steps=T, max_tokens=M, temperature=0.7)


def test_all_variants_report_their_figures_and_ratios() -> None:
    items = N * S
    rec, srv, handle = run(PeerBenchConfig(workload=workload(), widths=(1, None, items),
                                           variants=("textgrad", "ours-server", "ours-inproc")))  # "all" == items: once
    assert rec["order"] == ["textgrad-w1", f"textgrad-w{items}", "ours-server", "ours-inproc"]
    assert rec["workload"]["items"] == items and rec["workload"]["requests_per_item"] == PER_ITEM
    assert handle.resets == 4  # before each server variant and TextGrad's warm-up item
    for name in ("textgrad-w1", f"textgrad-w{items}"):
        v = rec["variants"][name]
        assert v["item_errors"] == 0, v["first_error"]
        assert v["requests"] == v["client"]["requests"] == items * PER_ITEM
        assert v["cache_lookups"] == v["requests"]  # TextGrad looked in its cache for every call and missed
        assert v["token_source"] == "vllm counters" and v["prompt_tokens"] > 0 and v["cached_tokens"] == 0
        assert v["wall_with_start_s"] == pytest.approx(v["wall_s"] + 2.5, abs=1e-3)
    ours = rec["variants"]["ours-server"]
    assert ours["logical_requests"] == items * PER_ITEM
    assert ours["requests"] == ours["logical_requests"] - ours["deduplicated"] == ours["client"]["requests"]
    assert ours["max_concurrency"] >= 1 and ours["errors"] == 0
    inproc = rec["variants"]["ours-inproc"]
    assert inproc["token_source"] == "client usage" and inproc["cached_tokens"] is None  # the fake engine has no counters
    assert inproc["wall_with_start_s"] == pytest.approx(inproc["wall_s"] + 1.25, abs=1e-3)
    best = min(rec["variants"][k]["wall_s"] for k in rec["order"] if k.startswith("textgrad"))
    assert rec["textgrad_best"] in ("textgrad-w1", f"textgrad-w{items}")
    # The headline is the like-for-like ratio: ours through the same server, the same requests.
    head = rec["headline"]
    assert head["name"] == "like_for_like" and head["ours"] == "ours-server" and head["textgrad"] == rec["textgrad_best"]
    assert head["value"] == rec["speedup_like_for_like"] == round(best / ours["wall_s"], 3)
    assert head["same_requests"] is True and head["includes_folding"] is False
    assert rec["speedup_inproc_vs_textgrad_best"] == round(best / inproc["wall_s"], 3)
    assert rec["speedup_inproc_one_off"] == round(best / inproc["wall_with_start_s"], 3)
    ratios = rec["speedups_vs_textgrad_best"]
    assert ratios == {"ours-server": head["value"], "ours-inproc": rec["speedup_inproc_vs_textgrad_best"]}
    assert rec["fastest_ours"] == max(ratios, key=lambda k: ratios[k])
    assert rec["requests_match"]["textgrad_requests"] == rec["requests_match"]["ours_logical_requests"] == items * PER_ITEM
    assert table(rec).count("\n") == 2 + len(rec["order"]) - 1


def test_layout_schedule_and_concurrency_variants_keep_accounting_and_compare_outputs() -> None:
    items = N * S
    built: list[str] = []

    def factory(backend: str) -> tuple[FakeEngine, float]:
        built.append(backend)
        return FakeEngine(), 0.5

    srv = FaultServer(fault_rate=0.0, owned_by="vllm").start()
    handle = FakeVLLMServer(srv, with_counters=True)

    @contextlib.contextmanager
    def server_factory() -> Iterator[FakeVLLMServer]:
        yield handle

    config = PeerBenchConfig(workload=workload(), variants=("ours-server", "ours-inproc", "ours-inproc-chained",
                                                            "ours-async-item"), server_concurrency=(None, 3))
    try:
        rec = run_peer_bench(config, server_factory=server_factory, inproc_factory=factory)
    finally:
        srv.stop()
    assert rec["order"] == ["ours-server", "ours-server-c3", "ours-inproc", "ours-inproc-chained", "ours-async-item"]
    assert built == ["vllm", "vllm-async"]  # one engine per backend, the layouts share one
    assert rec["variants"]["ours-server-c3"]["max_concurrency"] == 3
    for name in rec["order"]:
        v = rec["variants"][name]
        assert v["logical_requests"] == items * PER_ITEM and v["errors"] == 0, name
        assert v["requests"] == v["logical_requests"] - v["deduplicated"], name
    chained, item = rec["variants"]["ours-inproc-chained"], rec["variants"]["ours-async-item"]
    assert chained["prompt_layout"] == "chained" and chained["schedule"] == "phase"
    assert item["prompt_layout"] == "textgrad" and item["schedule"] == "item"
    # The item schedule sends the same requests: the fake engine's answers are equal item by item.
    assert item["vs_ours_inproc"] == {"items": items, "answers_differ": 0, "final_answers_differ": 0, "scores_differ": 0}
    assert chained["vs_ours_inproc"]["items"] == items
    # The chained layout reads less: the same items, fewer prompt tokens.
    assert chained["prompt_tokens"] < rec["variants"]["ours-inproc"]["prompt_tokens"]
    # No TextGrad variant ran: no ratio to report.
    assert rec["speedups_vs_textgrad_best"] == {k: None for k in rec["order"]} and rec["fastest_ours"] is None
    assert rec["headline"]["value"] is None


def test_textgrad_requests_carry_the_workload_sampling_and_its_cache_never_serves() -> None:
    # Two widths, the same items: TextGrad's prompt-keyed disk cache would serve the whole second run.
    rec, srv, _ = run(PeerBenchConfig(workload=workload(), widths=(1, 2), variants=("textgrad",)), with_counters=False)
    bodies = [c.body for c in srv.calls if c.body is not None]
    textgrad = [b for b in bodies if not b["messages"][-1]["content"].startswith("Request ")]  # not the warm-up
    assert len(textgrad) == (2 * N * S + 1) * PER_ITEM  # two runs and the untimed warm-up item
    # the default protocol: no forward system message (TextGrad's empty one is dropped), top_p 0.99
    forward = [b for b in textgrad if b["messages"][0]["role"] == "user"]
    rest = [b for b in textgrad if b["messages"][0]["role"] == "system"]
    assert len(forward) == 2 * N * S + 1 and len(rest) == len(textgrad) - len(forward)
    assert sorted(b["seed"] for b in forward) == sorted([0] + list(range(S)) * N * 2)
    assert all(b["temperature"] == 0.7 and b["max_tokens"] == M and b["top_p"] == 0.99 for b in forward)
    assert all(b["temperature"] == 0 and b["max_tokens"] == M and b["top_p"] == 0.99 and "seed" not in b
               for b in rest)  # fmt: skip
    assert {b["messages"][0]["content"] for b in rest} == {
        P.LOSS_SYSTEM_PROMPT, P.BACKWARD_SYSTEM_PROMPT, P.OPTIMIZER_SYSTEM_PROMPT}
    assert rec["variants"]["textgrad-w2"]["token_source"] == "client usage"
    assert rec["protocol"] == "default" and len(rec["protocol_hash"]) == 12


def _sent(body: dict[str, Any]) -> tuple:
    """Everything of a request body that decides its output: every message (role and text), the sampling
    (the seed where it matters, at temperature > 0) and the prefill flags."""
    seed = body.get("seed") if body["temperature"] > 0 else None
    return (json.dumps(body["messages"]), body["temperature"], body["top_p"], body["max_tokens"], seed,
            body.get("stop"), body.get("continue_final_message"), body.get("add_generation_prompt"))  # fmt: skip


@pytest.mark.parametrize("protocol", ["textgrad", "default", "default-no-template", "default-no-prefill"])
def test_under_every_protocol_textgrad_and_ours_send_the_same_requests(protocol: str) -> None:
    setting = {  # default-no-prefill: TextGrad as it ships, its answers without the template
        "textgrad": {"protocol": "textgrad", "workload": dataclasses.replace(workload(), seeds=1, temperature=0.0)},
        "default": {"protocol": "default"},
        "default-no-template": {"protocol": "default", "inference_template": False},
        "default-no-prefill": {"protocol": "default", "textgrad_prefill": False},
    }[protocol]
    config = PeerBenchConfig(**{"workload": workload(), **setting}, widths=(1,), variants=("textgrad", "ours-server"))
    rec, srv, _ = run(config, answer=scripted_answer)
    bodies = [c.body for c in srv.calls if c.body is not None]
    bodies = [b for b in bodies if not b["messages"][-1]["content"].startswith("Request ")]  # not the warm-up
    items = rec["workload"]["items"] * PER_ITEM
    textgrad, ours = bodies[PER_ITEM:][:items], bodies[PER_ITEM:][items:]  # after TextGrad's untimed item
    # nothing repeats, so nothing is folded: ours send every request TextGrad sends
    assert len(ours) == rec["variants"]["ours-server"]["requests"] == items
    assert rec["variants"]["ours-server"]["deduplicated"] == 0 and rec["folding"]["folded_requests"]["ours-server"] == 0
    assert rec["variants"]["textgrad-w1"]["item_errors"] == 0 and rec["variants"]["ours-server"]["errors"] == 0
    assert rec["headline"]["same_requests"] is (protocol != "default-no-prefill")
    assert rec["inference_template"] is (protocol in ("default", "default-no-prefill"))
    assert rec["textgrad_prefill"] is (protocol == "default")
    # what ours asked for, folded copies included, is what TextGrad sent
    asked = rec["variants"]["ours-server"]["logical_prompt_tokens"]
    assert (asked == rec["variants"]["textgrad-w1"]["prompt_tokens"]) is (protocol != "default-no-prefill")
    if protocol in ("default", "default-no-template"):
        assert Counter(map(_sent, textgrad)) == Counter(map(_sent, ours))
        forward = [b for b in ours if b["messages"][0]["role"] == "user"]
        assert len(forward) == N * S and {b["temperature"] for b in forward} == {0.7}
        prefilled = [b for b in forward if b["messages"][-1]["role"] == "assistant"]
        if protocol == "default":  # the template, prefilled, then quoted in every later request of the item
            template = prefilled[0]["messages"][-1]["content"]
            assert len(prefilled) == N * S and template.startswith("Let's break this down step by step.")
            assert all(b["continue_final_message"] is True and b["add_generation_prompt"] is False for b in prefilled)
            later = [b for b in textgrad if b["messages"][0]["role"] == "system"]
            assert later and all(template in b["messages"][-1]["content"] for b in later)
        else:
            assert prefilled == []
    elif protocol == "textgrad":
        assert Counter(map(_sent, textgrad)) == Counter(map(_sent, ours)) and rec["seeds"] == [0]
        assert {b["messages"][0]["content"] for b in ours} == {
            P.SIMPLE_EVALS_SYSTEM_PROMPT, P.LOSS_SYSTEM_PROMPT, P.BACKWARD_SYSTEM_PROMPT, P.OPTIMIZER_SYSTEM_PROMPT}
    else:  # ours start their answers with the template, TextGrad's (as it ships) do not
        assert Counter(map(_sent, textgrad)) != Counter(map(_sent, ours))
        assert all(b["messages"][-1]["role"] == "user" for b in textgrad if b["messages"][0]["role"] == "user")
        forward = [b for b in ours if b["messages"][0]["role"] == "user"]
        assert len(forward) == N * S and all(b["temperature"] == 0.7 for b in forward)


def test_the_textgrad_protocol_runs_its_seed_and_folding_needs_asking() -> None:
    greedy = dataclasses.replace(workload(), temperature=0.0)
    ran = PRESETS["textgrad"].replace(steps=T, max_tokens=M, optimizer_max_tokens=M)
    # The protocol's seed, recorded as what ran; nothing folded.
    config = PeerBenchConfig(workload=dataclasses.replace(greedy, seeds=1), protocol="textgrad", widths=(1,),
                             variants=("textgrad", "ours-server", "ours-inproc"))  # fmt: skip
    rec, _, _ = run(config, answer=scripted_answer)
    assert rec["seeds"] == rec["preset_seeds"] == [0] and rec["protocol_hash"] == protocol_hash(ran)
    assert rec["workload"]["items"] == N and rec["variants"]["textgrad-w1"]["requests"] == N * PER_ITEM
    assert rec["folding"] == {**rec["folding"], "asked": False, "folded_requests": {"ours-server": 0, "ours-inproc": 0}}
    # Two seeds at temperature 0 send every request twice, identical: the seeds that ran are recorded,
    # and ours send every copy as TextGrad does (equal work) unless folding is asked for.
    two = PeerBenchConfig(workload=greedy, protocol="textgrad", widths=(1,), variants=("textgrad", "ours-server",
                                                                                        "ours-inproc"))  # fmt: skip
    rec, server, _ = run(two, answer=scripted_answer)
    assert rec["seeds"] == [0, 1] and rec["protocol_hash"] == protocol_hash(ran.replace(seeds=(0, 1)))
    for name in ("textgrad-w1", "ours-server"):
        assert rec["variants"][name]["requests"] == 2 * N * PER_ITEM, name
    assert rec["variants"]["ours-inproc"]["requests"] == 2 * N * PER_ITEM
    assert rec["folding"]["folded_requests"] == {"ours-server": 0, "ours-inproc": 0}
    assert rec["headline"]["includes_folding"] is False and rec["headline"]["value"] is not None
    # Asked to fold: ours generate seed 1's copies once; what was folded is reported beside the headline.
    folded = PeerBenchConfig(workload=greedy, protocol="textgrad", fold_seeds=True, widths=(1,),
                             variants=("textgrad", "ours-server"))  # fmt: skip
    rec, _, _ = run(folded, answer=scripted_answer)
    assert rec["seeds"] == [0, 1] and rec["protocol_hash"] == protocol_hash(ran.replace(seeds=(0, 1)))
    ours = rec["variants"]["ours-server"]
    assert ours["deduplicated"] == N * PER_ITEM and ours["requests"] == N * PER_ITEM  # seed 1's copies
    assert rec["variants"]["textgrad-w1"]["requests"] == 2 * N * PER_ITEM
    assert rec["folding"]["asked"] is True and rec["folding"]["folded_requests"] == {"ours-server": N * PER_ITEM}
    assert rec["headline"]["includes_folding"] is True


def test_default_seeds_are_the_protocols(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[PeerBenchConfig] = []

    def fake_run(config: PeerBenchConfig, **_: Any) -> dict[str, Any]:
        seen.append(config)
        return {"variants": {}}

    monkeypatch.setattr(peer_bench, "run_peer_bench", fake_run)
    monkeypatch.setattr(peer_bench, "table", lambda record: "")
    assert main(["bench", "peer", "--protocol", "textgrad", "--questions", "2"]) == 0
    assert main(["bench", "peer", "--questions", "2"]) == 0
    assert main(["bench", "peer", "--protocol", "textgrad", "--seeds", "2", "--fold-seeds", "--repeats", "3"]) == 0
    assert [c.run_protocol().seeds for c in seen] == [(0,), PRESETS["default"].seeds, (0, 1)]
    assert [c.repeats for c in seen] == [1, 1, 3] and seen[2].fold_seeds
    assert main(["bench", "peer", "--repeats", "0"]) == 2


def test_repeats_alternate_the_order_and_give_median_and_spread() -> None:
    config = PeerBenchConfig(workload=workload(), widths=(1, 2), variants=("textgrad", "ours-server", "ours-inproc"),
                             repeats=3)  # fmt: skip
    rec, _, _ = run(config)
    server = ["textgrad-w1", "textgrad-w2", "ours-server"]
    assert rec["run_order"] == ([[0, n] for n in server] + [[1, n] for n in reversed(server)] + [[2, n] for n in server]
                                + [[r, "ours-inproc"] for r in range(3)])  # fmt: skip
    assert rec["repeats"] == 3
    for name, v in rec["variants"].items():
        walls = [r["wall_s"] for r in v["runs"]]
        assert [r["repeat"] for r in v["runs"]] == [0, 1, 2], name
        assert v["wall_s"] == v["wall_s_median"] == sorted(walls)[1], name
        assert (v["wall_s_min"], v["wall_s_max"]) == (min(walls), max(walls)), name
        assert v["wall_s_spread_pct"] == round(100 * (max(walls) - min(walls)) / v["wall_s"], 1), name
        assert v["logical_requests"] == rec["workload"]["items"] * PER_ITEM, name  # the median run's figures
    assert [r["position"] for r in rec["variants"]["textgrad-w1"]["runs"]] == [0, 2, 0]
    best = min(rec["variants"][k]["wall_s"] for k in ("textgrad-w1", "textgrad-w2"))
    assert rec["headline"]["value"] == round(best / rec["variants"]["ours-server"]["wall_s"], 3)


def test_the_server_engine_prefills_and_a_server_that_is_not_vllm_stops_the_bench() -> None:
    config = PeerBenchConfig(workload=workload(), widths=(1,), variants=("textgrad", "ours-server"))
    with pytest.raises(EngineUnreachableError, match="vLLM"):
        run(config, owned_by="fault-server")
    rec, srv, _ = run(config)
    assert rec["server_prefill"] == {"prefill": True, "mode": "continue_final_message", "server": "vllm"}
    forward = [c.body for c in srv.calls if c.body is not None and c.body["messages"][0]["role"] == "user"
               and not c.body["messages"][-1]["content"].startswith("Request ")]  # fmt: skip
    assert forward and all(b["messages"][-1]["role"] == "assistant" and b["continue_final_message"] for b in forward)


def test_bad_arguments_are_user_errors() -> None:
    assert parse_widths("1, 16,all") == (1, 16, None)
    with pytest.raises(ValueError, match="variants"):
        PeerBenchConfig(variants=("textgrad", "dspy"))
    with pytest.raises(ValueError, match="server_concurrency"):
        PeerBenchConfig(server_concurrency=(0,))
    assert main(["bench", "peer", "--widths", "0"]) == 2
    assert main(["bench", "peer", "--variants", "nope"]) == 2
    assert main(["bench", "peer", "--questions", "0"]) == 2
    with pytest.raises(ValueError, match="protocol must be one of default, textgrad"):
        PeerBenchConfig(protocol="paper")
    with pytest.raises(SystemExit):
        main(["bench", "peer", "--protocol", "paper"])


def test_server_gets_the_in_process_engine_settings_as_flags() -> None:
    kw = {"model": "/m", "dtype": "float32", "enable_chunked_prefill": False, "enforce_eager": True,
          "max_num_seqs": None, "block_size": 32, "disable_log_stats": False}  # fmt: skip
    args = server_args(kw, "bundled", 8123)
    assert args[:6] == ["--host", "127.0.0.1", "--port", "8123", "--served-model-name", "bundled"]
    assert "--no-enable-chunked-prefill" in args and "--enforce-eager" in args
    assert args[args.index("--block-size") + 1] == "32" and args[args.index("--model") + 1] == "/m"
    assert "--max-num-seqs" not in args and not any("log-stats" in a for a in args)


def test_prometheus_counters_are_summed_over_labels() -> None:
    text = "\n".join([
        "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
        "# TYPE vllm:prompt_tokens_total counter",
        'vllm:prompt_tokens_total{engine="0",model_name="m"} 120.0',
        "# HELP vllm:request_success_total Count of successfully processed requests.",
        "# TYPE vllm:request_success_total counter",
        'vllm:request_success_total{engine="0",finished_reason="stop",model_name="m"} 3.0',
        'vllm:request_success_total{engine="0",finished_reason="length",model_name="m"} 2.0',
        "# HELP vllm:prompt_tokens_cached_total Number of cached prompt tokens.",
        "# TYPE vllm:prompt_tokens_cached_total counter",
        'vllm:prompt_tokens_cached_total{engine="0",model_name="m"} 64.0',
    ]) + "\n"  # fmt: skip
    c = parse_metrics(text)
    assert (c["prompt_tokens"], c["requests"], c["cached_tokens"], c["completion_tokens"]) == (120, 5, 64, 0)


def test_a_stop_signal_while_textgrads_threads_run_stops_the_bench(monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM lands in the main thread while it waits on TextGrad's pool: the bench stops (Interrupted, as every
    command's stop) and drops the items not started, instead of counting the stop as one item's failure."""
    import os
    import signal
    import threading
    import time
    from types import SimpleNamespace

    from mtg_local.bench import textgrad_peer
    from mtg_local.runs.interrupt import ALL_STOP_SIGNALS, Interrupted, StopFlag, stop_on_signals

    started: list[str] = []

    def slow_item(question: str, *args: Any, **kwargs: Any) -> list[str]:
        started.append(question)
        time.sleep(0.3)
        return []

    monkeypatch.setattr(textgrad_peer, "run_item", slow_item)
    monkeypatch.setattr(textgrad_peer, "make_engine", lambda *a, **k: SimpleNamespace(cache_lookups=0))
    items = [(f"q{i}", 0, "") for i in range(20)]
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
    with pytest.raises(Interrupted), stop_on_signals(StopFlag(), abort_on=ALL_STOP_SIGNALS):
        textgrad_peer.run_textgrad(items, width=1, base_url="http://127.0.0.1:9/v1", model="m", steps=1,
                                   temperature=0.0, max_tokens=8, loss_prompt="x", constraint=None, role="r",
                                   system_prompt=None, top_p=1.0)
    assert 1 <= len(started) < 6  # the running item finished its call; the queued ones never started
