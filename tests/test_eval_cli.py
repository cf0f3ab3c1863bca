"""``mtg eval``: run dir contents, call counts, cache reruns; fake engine and real vLLM."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from engines import GenRequest
from engines.fake_engine import FakeEngine
from mtg_local import cli
from mtg_local.commands.eval import parse_seeds, run_eval
from mtg_local.prompts import textgrad_prompts as P
from tests.conftest import FULL

RESULT_KEYS = {
    "schema_version", "status", "task", "task_info", "method", "engine", "optimizer_engine", "seeds", "split",
    "n_questions", "test_accuracy", "engine_usage", "cost_usd", "wall_s", "config", "learned", "history",
    "started_at", "finished_at",
}
USAGE_KEYS = {"calls", "requests", "prompt_tokens", "completion_tokens", "wall_s", "cache_hits", "errors", "retries"}


def sorter(req: GenRequest) -> str:
    """Forward: sorts correctly for even seeds, not for odd ones; updates always sort correctly."""
    system = req.messages[0].content if req.messages[0].role == "system" else None
    words = re.search(r"List: ([a-z ]+)", req.messages[-1].content).group(1).split()
    if system is None:
        order = sorted(words) if (req.sampling.seed or 0) % 2 == 0 else sorted(words, reverse=True)
        return "we compare first letters.\nAnswer: " + " ".join(order)
    if system == P.OPTIMIZER_SYSTEM_PROMPT:
        start = "" if req.response_prefix else P.IMPROVED_VARIABLE_START  # the tag unless prefilled
        return f"{start}Sorted again.\nAnswer: {' '.join(sorted(words))}{P.IMPROVED_VARIABLE_END}"
    return "Check the order of the words."


def eval_args(out: Path, *extra: str) -> list[str]:
    return ["eval", "--task", "synthetic_word_sorting", "--limit", "4", "--seeds", "0,1", "--out", str(out),
            "--no-progress", *extra]


def read_run(out: Path) -> tuple[dict, list[dict]]:
    results = json.loads((out / "results.json").read_text())
    trajs = [json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines()]
    return results, trajs


def check_results(results: dict, *, method: str, n: int, seeds: list[int], calls: int) -> None:
    assert RESULT_KEYS <= set(results)
    assert results["status"] == "complete" and results["method"] == method
    assert results["task"] == "synthetic_word_sorting"
    assert results["n_questions"] == n and results["seeds"] == seeds and results["split"] == "test"
    acc = results["test_accuracy"]
    assert set(acc) == {"mean", "std", "per_seed", "n"} and acc["n"] == len(seeds)
    assert set(acc["per_seed"]) == {str(s) for s in seeds} and 0.0 <= acc["mean"] <= 1.0
    assert USAGE_KEYS <= set(results["engine_usage"]) and results["engine_usage"]["calls"] == calls
    assert results["learned"] == {"loss_prompt": None, "template": None, "system_prompt": None}


@pytest.mark.parametrize("method, steps, calls", [("solution_opt", 2, 7), ("solution_opt", 0, 1), ("zero_shot_cot", 3, 1)])
def test_eval_fake_engine_writes_run_dir(tmp_path: Path, method: str, steps: int, calls: int) -> None:
    out = tmp_path / "run"
    assert cli.main(eval_args(out, "--engine", "fake", "--method", method, "--steps", str(steps))) == 0
    results, trajs = read_run(out)
    check_results(results, method=method, n=4, seeds=[0, 1], calls=calls)
    assert results["engine"] == "fake" and results["optimizer_engine"] == "fake"
    assert len(trajs) == 8 and all(t["split"] == "test" and t["method"] == method for t in trajs)
    assert [(t["example_id"], t["seed"]) for t in trajs[:2]] == [(trajs[0]["example_id"], 0), (trajs[0]["example_id"], 1)]
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == method and config["inner"]["steps"] == steps
    assert (out / "cache.sqlite").exists() and (out / "events.jsonl").exists()


def test_rerun_with_cache_makes_no_backend_calls(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = cli.build_parser().parse_args(eval_args(out, "--steps", "2"))
    first = run_eval(args, engine=FakeEngine(sorter, shuffle=True, name="sorter"))
    _, trajs1 = read_run(out)
    assert first["engine_usage"]["calls"] == 7 and first["engine_usage"]["cache_hits"] == 0
    assert first["test_accuracy"]["per_seed"] == {"0": 1.0, "1": 1.0}  # odd seed fixed by the updates
    assert all(re.search("Answer: (.*)", t["answers"][0]).group(1) != t["gold"] for t in trajs1 if t["seed"] == 1)
    assert all(t["answers"][0].startswith("Let's break this down step by step. First, ") for t in trajs1)

    inner = FakeEngine(sorter, shuffle=True, name="sorter")
    second = run_eval(args, engine=inner)
    _, trajs2 = read_run(out)
    assert second["engine_usage"]["calls"] == 0 and inner.usage.calls == 0
    assert second["engine_usage"]["cache_hits"] == second["engine_usage"]["requests"] == 8 * 7
    assert second["test_accuracy"] == first["test_accuracy"] and trajs2 == trajs1

    # the same cache file serves another run dir too
    other = tmp_path / "other"
    args3 = cli.build_parser().parse_args(eval_args(other, "--steps", "2", "--cache", str(out / "cache.sqlite")))
    third = run_eval(args3, engine=FakeEngine(sorter, name="sorter"))
    assert third["engine_usage"]["calls"] == 0 and read_run(other)[1] == trajs1
    assert not (other / "cache.sqlite").exists()


def test_no_cache_counts_calls_on_a_shared_engine(tmp_path: Path) -> None:
    engine = FakeEngine(sorter, name="sorter")
    engine.generate([GenRequest.chat("List: warm up")])  # earlier use of a shared engine is not counted
    res = run_eval(cli.build_parser().parse_args(eval_args(tmp_path / "r", "--no-cache", "--steps", "1")), engine=engine)
    assert res["engine_usage"]["calls"] == 4 and engine.usage.calls == 5
    assert not (tmp_path / "r" / "cache.sqlite").exists()


def test_separate_optimizer_engine_usage(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert cli.main(eval_args(out, "--engine", "fake", "--optimizer-engine", "fake:echo", "--steps", "2")) == 0
    results, _ = read_run(out)
    assert results["optimizer_engine"] == "fake:echo"
    usage = results["engine_usage"]
    assert usage["calls"] == 7 and usage["engines"]["forward"]["calls"] == 1 and usage["engines"]["optimizer"]["calls"] == 6


def test_loss_prompt_and_template_overrides(tmp_path: Path) -> None:
    lp = tmp_path / "loss.txt"
    lp.write_text("LEARNED LOSS: check every word.\n")
    out = tmp_path / "run"
    argv = eval_args(out, "--engine", "fake", "--steps", "1", "--loss-prompt", f"@{lp}", "--template", "We sort: ")
    assert cli.main(argv) == 0
    results, trajs = read_run(out)
    assert results["config"]["loss_prompt"] == "LEARNED LOSS: check every word."
    assert results["config"]["template"] == "We sort: "
    assert all(t["loss_prompt"] == "LEARNED LOSS: check every word." and t["answers"][0].startswith("We sort: ") for t in trajs)


def test_failure_is_recorded(tmp_path: Path) -> None:
    def broken(req: GenRequest) -> str:
        raise RuntimeError("backend exploded")

    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="exploded"):
        run_eval(cli.build_parser().parse_args(eval_args(out)), engine=FakeEngine(broken))
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "failed" and "backend exploded" in results["error"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--seeds", "a,b"], "--seeds"),
        (["--seeds", "1,1"], "distinct"),
        (["--loss-prompt", "@/nonexistent/loss.txt"], "not found"),
        (["--freeze-when", "sometimes"], "freeze_when"),
        (["--limit", "0"], "--limit"),
    ],
)
def test_user_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str) -> None:
    assert cli.main(eval_args(tmp_path / "run", "--engine", "fake", *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("mtg eval: error:") and message in err and "Traceback" not in err


def test_secret_engine_options_stay_out_of_the_run_dir(tmp_path: Path) -> None:
    from mtg_local.commands.eval import EvalConfig

    cfg = EvalConfig(out=str(tmp_path), engine_opts=("api_key=sk-123", "max_model_len=4096"))
    assert cfg.to_dict()["engine_opts"] == ["max_model_len=4096"]


def test_parse_seeds() -> None:
    assert parse_seeds("0,1,2") == (0, 1, 2)
    assert parse_seeds("0-3, 7") == (0, 1, 2, 3, 7)


# -- real engine ----------------------------------------------------------------
@pytest.mark.vllm
def test_eval_solution_opt_on_vllm_bundled(vllm_engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    # Count the backend's own calls (vllm.LLM.generate), not the engine's self-reported usage.
    llm_calls: list[int] = []
    real_generate = vllm_engine._llm.generate

    def counting_generate(prompts, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        llm_calls.append(len(prompts))
        return real_generate(prompts, *args, **kwargs)

    monkeypatch.setattr(vllm_engine._llm, "generate", counting_generate)
    out = tmp_path / "run"
    # The size is 16 questions x 3 seeds, T = 2; CI on 2 CPU cores runs 2 x 2, T = 1 (see
    # tests/conftest.py): still every item of every seed in one backend call per phase.
    n, seeds, steps, cap = (16, [0, 1, 2], 2, "96") if FULL else (2, [0, 1], 1, "32")
    argv = [
        "eval", "--task", "synthetic_word_sorting", "--method", "solution_opt", "--seeds", ",".join(map(str, seeds)),
        "--steps", str(steps), "--limit", str(n), "--max-tokens", cap, "--optimizer-max-tokens", cap, "--out", str(out),
    ]
    args = cli.build_parser().parse_args(argv)
    first = run_eval(args, engine=vllm_engine)
    results, trajs = read_run(out)
    items = len(seeds) * n
    check_results(results, method="solution_opt", n=n, seeds=seeds, calls=1 + 3 * steps)
    assert llm_calls == [items] * (1 + 3 * steps)  # 1 + 3T LLM.generate calls, every item in each
    usage = results["engine_usage"]
    assert usage["errors"] == 0 and usage["requests"] == items * (1 + 3 * steps)  # every item in every phase
    accepted = sum(e is None for t in trajs for e in t["update_errors"])
    print(f"vLLM eval: accuracy {results['test_accuracy']}, updates accepted {accepted}/{steps * items}, usage {usage}")
    assert len(trajs) == items and all(len(t["answers"]) == 1 + steps for t in trajs)
    assert all(t["answers"][0].startswith("Let's break this down step by step. First, ") for t in trajs)

    second = run_eval(args, engine=vllm_engine)
    assert len(llm_calls) == 1 + 3 * steps  # the cached rerun never reached vLLM
    assert second["engine_usage"]["calls"] == 0 and second["engine_usage"]["cache_hits"] > 0
    assert second["test_accuracy"] == first["test_accuracy"] and read_run(out)[1] == trajs


def test_open_run_engines_closes_only_what_it_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engines.fake_engine import FakeEngine
    from mtg_local.commands.common import open_run_engines

    closed: list[FakeEngine] = []
    monkeypatch.setattr(FakeEngine, "close", lambda self: closed.append(self))
    # Same spec for both roles: one engine, one cache wrapper, shared by forward and optimizer.
    with open_run_engines("fake", "fake", [], cache_path=tmp_path / "c.sqlite") as e:
        assert e.optimizer is e.forward and e.optimizer_run is e.forward_run is not e.forward
        assert e.specs == {"engine": "fake", "optimizer_engine": "fake"}
    assert closed == [e.forward]
    closed.clear()
    # A given engine is the caller's: not closed; another optimizer spec gets its own engine, closed.
    given = FakeEngine()
    with open_run_engines("fake", "fake:echo", [], cache_path=None, engine=given) as e:
        assert e.forward is given and e.forward_run is given and e.optimizer is not given
    assert closed == [e.optimizer]
    closed.clear()
    # Engines opened before a failure are closed, and the error propagates.
    with pytest.raises(RuntimeError, match="boom"):
        with open_run_engines("fake", None, [], cache_path=None) as e:
            raise RuntimeError("boom")
    assert closed == [e.forward]
