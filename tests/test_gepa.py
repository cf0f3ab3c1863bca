"""GEPA (real ``dspy.GEPA``) as ``mtg baseline --method gepa``: scripted engines, then the bundled model."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engines.base import GenRequest
from engines.fake_engine import FakeEngine
from mtg_local import cli
from mtg_local.commands.baseline import INSTRUCTION_FILE, BaselineConfig, config_from_args, run_baseline
from mtg_local.protocol import Protocol, protocol_hash
from mtg_local.tasks import get_task
from tests.conftest import require

dspy = require("dspy")  # fails under CI=true when missing

from mtg_local.baselines.gepa import GepaConfig, feedback_text  # noqa: E402
from tests.dspy_fakes import chat_adapter_responder  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

REPO = Path(__file__).resolve().parents[1]
TASK = get_task("synthetic_word_sorting")
SPLITS = TASK.splits().limited(3)
REFLECTION_MARK = "I provided an assistant with instructions"  # DSPy-GEPA's reflection signature
_WORDS = re.compile(r"List: ([a-z' -]+)")


def _key(req: GenRequest) -> str:
    words = _WORDS.findall(req.messages[-1].content)
    return words[-1].strip() if words else ""


def _keys(examples) -> set[str]:  # noqa: ANN001
    return {_WORDS.findall(ex.question)[-1].strip() for ex in examples}


def scripted_task_model(correct_under: dict[str, set[str]]):
    """Sorts a question right only when the instruction (in DSPy's system message) holds a tag listing it."""
    right, wrong = chat_adapter_responder(True), chat_adapter_responder(False)

    def respond(req: GenRequest) -> str:
        assert REFLECTION_MARK not in req.messages[0].content, "a reflection request reached the task engine"
        system = req.messages[0].content
        ok = any(tag in system and _key(req) in keys for tag, keys in correct_under.items())
        return right(req) if ok else wrong(req)

    return respond


def scripted_reflection(replies: list[str]):
    it = iter(replies)

    def respond(req: GenRequest) -> str:
        assert REFLECTION_MARK in req.messages[0].content, "a task request reached the reflection engine"
        return next(it)

    return respond


def test_reflection_reaches_the_reflection_engine_and_the_best_validation_candidate_is_kept(tmp_path):
    train, val, test = SPLITS.train, SPLITS.val, SPLITS.test
    # GOOD: right on train[0], all of val and test; WORSE: right on all of train only; BAD: right nowhere.
    task_eng = FakeEngine(scripted_task_model({
        "GOOD": _keys([train[0], *val, *test]), "WORSE": _keys(train),
    }))
    refl_eng = FakeEngine(scripted_reflection([
        '{"new_instruction": "GOOD: compare the words letter by letter."}',  # iteration 1: 1/3 > 0/3 -> validated
        "WORSE: sort them.",  # iteration 2 (parent GOOD, 1/3): 3/3 -> validated, but 0 on val; not JSON: read as is
        '{"new_instruction": "BAD instruction"}',  # iteration 3 (parent GOOD again): 0/3 -> rejected
    ]), name="reflect")
    mc = GepaConfig(auto=None, max_metric_calls=22, num_threads=4)
    out = tmp_path / "gepa"
    cfg = BaselineConfig(out=str(out), method="gepa", method_config=mc, protocol=Protocol(seeds=(0, 1), limit=3),
                         engine="fake", optimizer_engine="fake:reflect")
    res = run_baseline(cfg, engine=task_eng, optimizer_engine=refl_eng)

    assert res["status"] == "complete"
    # every reflection call went to the reflection engine (the scripted engines assert the converse), one per iteration
    refl_requests = [r for b in refl_eng.batches for r in b]
    assert len(refl_requests) == 3
    # ... and it saw GEPA's feedback built from the task's scoring: gold answer and what was extracted
    first = refl_requests[0].messages[-1].content
    for ex in train:
        assert f"the gold answer is {ex.answer!r}" in first
        assert "the answer read from the response is " + repr(" ".join(ex.answer.split()[::-1])) in first
    assert "Given the fields `question`" in first  # the seed instruction being improved

    kinds = [(h["source"], h["candidate"].split(":")[0], h["accepted"], h["val_accuracy"], h["kept"]) for h in res["history"]]
    assert kinds == [
        ("seed", "Given the fields `question`, produce the fields `answer`.", True, 0.0, False),
        ("reflection", "GOOD", True, 1.0, True),
        ("reflection", "WORSE", True, 0.0, False),  # later and perfect on its minibatch, worse on validation
        ("reflection", "BAD instruction", False, None, False),
    ]
    assert res["history"][2]["minibatch_accuracy_before"] == pytest.approx(1 / 3)
    assert res["history"][2]["minibatch_accuracy"] == 1.0
    assert res["learned"]["system_prompt"] == "GOOD: compare the words letter by letter."
    assert (out / INSTRUCTION_FILE).read_text() == "GOOD: compare the words letter by letter.\n"
    assert res["test_accuracy"]["mean"] == 1.0  # the kept candidate, not the last one, answers the test
    details = res["optimizer_details"]
    assert details["best_idx"] == 1 and details["budget_metric_calls"] == 22
    assert [c["val_accuracy"] for c in details["candidates"]] == [0.0, 1.0, 0.0]

    # accounting: task vs reflection requests, each as its engine saw them
    roles = res["usage_by_role"]
    assert roles["reflection"]["requests"] == 3 == refl_eng.usage.requests
    # GEPA evaluates its parent on each minibatch again: the run's cache answers the repeats
    assert roles["task"]["cache_hits"] > 0
    assert roles["task"]["requests"] - roles["task"]["cache_hits"] + roles["test"]["requests"] == task_eng.usage.requests
    assert roles["test"]["requests"] == 3 * 2
    assert roles["reflection"]["prompt_tokens"] > 0 and roles["reflection"]["cost_usd"] is None
    assert res["optimizer_engine"] == "fake:reflect"
    assert res["engine_usage"]["engines"]["optimizer"]["requests"] == 3
    events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "gepa_candidate"] == [0, 1, 2, 3]


def test_feedback_text_names_the_gold_answer_and_what_was_extracted():
    ex = SPLITS.train[0]
    assert feedback_text(TASK, f"Answer: {ex.answer}", ex) == (1.0, f"Correct: the answer read from the response is "
                                                                    f"{ex.answer!r}, the gold answer.")
    score, fb = feedback_text(TASK, "Answer: zebra apple", ex)
    assert score == 0.0 and "'zebra apple'" in fb and repr(ex.answer) in fb
    score, fb = feedback_text(TASK, "I cannot sort these.", ex)
    assert score == 0.0 and "no answer could be read" in fb and repr(ex.answer) in fb


def test_role_costs_are_priced_for_api_engines_only():
    from mtg_local.commands.baseline import spec_cost

    assert spec_cost("openai:gpt-4o-mini", {"prompt_tokens": 1_000_000, "completion_tokens": 1_000_000}) == 0.75
    assert spec_cost("vllm:bundled", {"prompt_tokens": 10, "completion_tokens": 10}) is None


def test_config_validation_and_cli_errors(capsys):
    with pytest.raises(ValueError, match="exactly one GEPA budget"):
        GepaConfig(auto="light", max_metric_calls=10)
    with pytest.raises(ValueError, match="exactly one GEPA budget"):
        GepaConfig(auto=None)
    with pytest.raises(ValueError, match="candidate_selection"):
        GepaConfig(candidate_selection="best")
    base = ["baseline", "--engine", "fake", "--out", "/tmp/never-written"]
    for argv, msg in ((["--method", "gepa", "--auto", "heavy", "--max-metric-calls", "5"], "not both"),
                      (["--method", "copro", "--reflection-engine", "fake:echo"], "--reflection-engine is GEPA's"),
                      (["--method", "gepa", "--reflection-engine", "fake:echo", "--optimizer-engine", "hf:x"], "twice"),
                      (["--method", "gepa", "--max-metric-calls", "0"], "max_metric_calls")):
        assert cli.main(base + argv) == 2
        assert msg in capsys.readouterr().err


def _args(method: str, *extra: str):  # noqa: ANN202
    return cli.build_parser().parse_args(["baseline", "--method", method, "--limit", "3", "--seeds", "0,1",
                                          "--max-tokens", "96", "--optimizer-max-tokens", "128", "--out", "x", *extra])


def test_gepa_settings_are_method_settings_not_protocol():
    gepa = config_from_args(_args("gepa", "--max-metric-calls", "4", "--reflection-engine", "fake:echo"))
    copro = config_from_args(_args("copro"))
    assert protocol_hash(gepa.protocol) == protocol_hash(copro.protocol)
    mc = gepa.method_config
    assert (mc.auto, mc.max_metric_calls, mc.prompt_temperature) == (None, 4, 1.0)  # GEPA's reflection temperature
    assert gepa.optimizer_engine == "fake:echo" and copro.optimizer_engine is None
    assert config_from_args(_args("gepa")).method_config.auto == "light"
    assert config_from_args(_args("gepa", "--prompt-temperature", "0.3")).method_config.prompt_temperature == 0.3
    assert config_from_args(_args("miprov2")).method_config.auto == "light"


def test_dead_engine_ends_failed_without_spending_the_budget(tmp_path):
    eng = FakeEngine(fail_if=lambda r: "connection refused")
    cfg = BaselineConfig(out=str(tmp_path / "dead"), method="gepa", method_config=GepaConfig(num_threads=4),
                         protocol=Protocol(seeds=(0, 1), limit=3), engine="fake")
    res = run_baseline(cfg, engine=eng)
    assert json.loads((tmp_path / "dead" / "results.json").read_text())["status"] == "failed"
    assert res["status"] == "failed" and res["failed_requests"]["errors"] == res["failed_requests"]["requests"]
    assert res["optimizer_details"]["stopped_by_failures"] is True
    # auto=light would be hundreds of evaluations; GEPA stopped after the seed's validation (3 questions, each
    # tried once by the chat adapter and once by its JSON fallback) and the 6 test requests
    assert res["engine_usage"]["errors"] == res["engine_usage"]["requests"] <= 3 * 2 + 6


class KilledAfter(FakeEngine):
    """Sends this process SIGTERM (as ``scancel`` would) after ``n`` batches."""

    def __init__(self, responder, n: int) -> None:  # noqa: ANN001
        super().__init__(responder)
        self.n = n

    def _generate(self, requests, **kw):  # noqa: ANN001, ANN003, ANN202
        out = super()._generate(requests, **kw)
        if len(self.batches) == self.n:
            os.kill(os.getpid(), signal.SIGTERM)
        return out


def reflection_by_instruction(replies: dict[str, str]):
    """Replies chosen by the instruction being improved (not by call order: a resumed run skips cached calls)."""
    def respond(req: GenRequest) -> str:
        current = re.search(r"\[\[ ## current_instruction ## \]\]\n(.*?)\n\n\[\[", req.messages[-1].content, re.S)
        return replies[current.group(1).strip()]

    return respond


def one_engine(task_model, reflection):  # noqa: ANN001, ANN202
    return lambda r: (reflection if REFLECTION_MARK in r.messages[0].content else task_model)(r)


@pytest.mark.parametrize("kill_at", [1, 3, 5])  # in the seed's validation, in a reflection (which GEPA guards), later
def test_killed_run_resumes_from_the_cache_to_the_uninterrupted_result(tmp_path, kill_at):
    from mtg_local.runs.interrupt import Interrupted

    responder = one_engine(
        scripted_task_model({"GOOD": _keys([SPLITS.train[0], *SPLITS.val, *SPLITS.test])}),
        reflection_by_instruction({"Given the fields `question`, produce the fields `answer`.": '{"new_instruction": "GOOD 1"}',
                                   "GOOD 1": "GOOD 2", "GOOD 2": "GOOD 3", "GOOD 3": "GOOD 4"}))

    def config(out: Path) -> BaselineConfig:
        return BaselineConfig(out=str(out), method="gepa", protocol=Protocol(seeds=(0, 1), limit=3), engine="fake",
                              method_config=GepaConfig(auto=None, max_metric_calls=20, num_threads=4))

    clean_eng = FakeEngine(responder)
    clean = run_baseline(config(tmp_path / "clean"), engine=clean_eng)
    assert [h["candidate"] for h in clean["history"]][1:3] == ["GOOD 1", "GOOD 2"] and len(clean["history"]) >= 4

    out = tmp_path / "killed"
    killed = KilledAfter(responder, n=kill_at)
    with pytest.raises(Interrupted):
        run_baseline(config(out), engine=killed)
    assert json.loads((out / "results.json").read_text())["status"] == "interrupted"
    done = sum(len(b) for b in killed.batches)

    again = FakeEngine(responder)
    resumed = run_baseline(config(out), engine=again)
    assert resumed["status"] == "complete"
    # Nothing that finished before the kill is generated again (the batch the kill interrupted may be), and
    # the resumed run asks the engine for exactly what the clean run needed beyond that.
    def sent(engine: FakeEngine, batches=None) -> set:  # noqa: ANN001
        return {(r.messages, r.sampling) for b in (batches if batches is not None else engine.batches) for r in b}

    finished = sent(killed, killed.batches[:-1])
    assert sent(again) <= sent(clean_eng) - finished
    assert sent(clean_eng) - sent(killed) <= sent(again)
    assert done > 0
    for key in ("history", "learned", "test_accuracy", "optimizer_details"):
        assert resumed[key] == clean[key], key


def test_grid_file_and_slurm_job_script_accept_gepa(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text(f"""
name: g
runs_root: {tmp_path / 'runs'}
tasks: [synthetic_word_sorting]
methods: [gepa]
engines: [fake]
args:
  all: [--limit, "3", --seeds, "0"]
  gepa: [--max-metric-calls, "4", --num-threads, "4"]
""")
    assert cli.main(["grid", str(grid)]) == 0
    res = json.loads((tmp_path / "runs/g/synthetic_word_sorting/gepa/fake/results.json").read_text())
    assert res["method"] == "gepa" and res["status"] == "complete"
    assert res["config"]["method_config"]["max_metric_calls"] == 4
    # The single-run SLURM template's script, run by bash (no SLURM daemons needed for the method mapping).
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(MTG_CHECKOUT=str(REPO), MTG_VENV=str(Path(sys.executable).parents[1]), PYTHONPATH=str(REPO),
               MTG_ENGINE="fake", MTG_TP="1", MTG_TASK="synthetic_word_sorting", MTG_METHOD="gepa", MTG_SEEDS="0",
               MTG_ARGS="--limit 2 --max-metric-calls 3 --num-threads 2", MTG_RUN_DIR=str(tmp_path / "sbatch"))
    job = subprocess.run(["bash", str(REPO / "slurm/mtg_gpu.sbatch")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert job.returncode == 0, job.stderr[-2000:]
    assert "mtg baseline --task synthetic_word_sorting --method gepa" in job.stdout + job.stderr
    assert json.loads((tmp_path / "sbatch" / "results.json").read_text())["method"] == "gepa"


def test_report_puts_gepa_beside_copro_and_miprov2_with_no_paper_number(tmp_path):
    from mtg_local.report import collect
    from mtg_local.report.tables import markdown_report
    from tests.test_report import results, write_run

    write_run(tmp_path / "a", "ws/copro", results(method="copro"))
    md = markdown_report(collect([tmp_path / "a"]))
    assert "| COPRO |" in md and "GEPA" not in md  # no GEPA run: no empty GEPA row
    write_run(tmp_path / "a", "ws/gepa", results(method="gepa", per_seed={"0": 0.6, "1": 0.8}))
    lines = markdown_report(collect([tmp_path / "a"])).splitlines()
    rows = [x.split(" | ")[0].lstrip("| ") for x in lines if x.startswith("| ")]
    assert rows[rows.index("COPRO"):rows.index("COPRO") + 4] == ["COPRO", "MIPROv2", "GEPA (DSPy)",
                                                                  "Prompt Optimization (TextGrad)"]
    gepa = next(x for x in lines if x.startswith("| GEPA (DSPy) |")).strip("| ").split(" | ")
    assert gepa[1].startswith("70.0 ± 14.1 (n=2)") and gepa[2] == "—"  # our cell; the paper has no GEPA number


def test_a_failed_reflection_is_recorded_and_retried_with_another_seed(tmp_path):
    """The first reflection on the seed instruction comes back empty (DSPy's proposer raises); GEPA retries it.
    The retry goes out with another seed, so the run's cache cannot answer it with the empty reply; the
    failure is in the history, the counts and the event log, and the run goes on with the retry's proposal."""
    replies = {"GOOD 1": "GOOD 2", "GOOD 2": "GOOD 3", "GOOD 3": "GOOD 4"}
    seed_text = "Given the fields `question`, produce the fields `answer`."
    reflections: list[GenRequest] = []

    def reflect(req: GenRequest) -> str:
        reflections.append(req)
        current = re.search(r"\[\[ ## current_instruction ## \]\]\n(.*?)\n\n\[\[", req.messages[-1].content, re.S)
        if current.group(1).strip() == seed_text:
            return "" if len(reflections) == 1 else '{"new_instruction": "GOOD 1"}'
        return replies[current.group(1).strip()]

    engine = FakeEngine(one_engine(scripted_task_model({"GOOD": _keys([SPLITS.train[0], *SPLITS.val, *SPLITS.test])}),
                                   reflect))
    out = tmp_path / "gepa"
    res = run_baseline(BaselineConfig(out=str(out), method="gepa", protocol=Protocol(seeds=(0, 1), limit=3),
                                      engine="fake", method_config=GepaConfig(auto=None, max_metric_calls=12,
                                                                              num_threads=4)), engine=engine)
    assert res["status"] == "complete"
    first, retry = reflections[:2]
    assert first.messages == retry.messages and first.sampling.seed != retry.sampling.seed
    failed, proposed = res["history"][1:3]
    assert failed == {"step": 1, "source": "reflection", "candidate": None, "accepted": False, "val_accuracy": None,
                      "failed": True, "attempt": 0, "kept": False,
                      "error": "ValueError: The reflection LM returned an empty instruction for component "
                               "'prog.predict'."}
    assert proposed["step"] == 1 and proposed["candidate"] == "GOOD 1" and proposed["attempt"] == 1
    assert res["learned"]["system_prompt"].startswith("GOOD") and res["test_accuracy"]["mean"] == 1.0
    counts = res["optimizer_details"]["reflections"]
    assert counts["failed"] == 1 and counts["retries"] == 1 and counts["attempts"] == len(reflections)
    events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    (event,) = [e for e in events if e["event"] == "gepa_reflection_failed"]
    assert event["step"] == 1 and event["error"] == failed["error"]


@pytest.mark.parametrize("json_fallback", [True, False])
def test_the_test_parses_completions_as_the_optimization_does(json_fallback):
    """A completion without DSPy's field markers: during optimization DSPy's program re-asks it through the
    JSON adapter (``--no-json-fallback``: it does not); the test sends the same re-asks (same messages and
    sampling; the seed is the test's) and scores what they parse to, or the raw text where nothing parses."""
    from mtg_local.baselines.dspy_program import DSPyRunConfig, dspy_session, evaluate_program, make_program

    ex = SPLITS.test[0]

    def respond(req: GenRequest) -> str:  # never DSPy's markers; JSON when the JSON adapter asks for it
        if "Respond with a JSON object" in req.messages[-1].content:
            return json.dumps({"reasoning": "r", "answer": ex.answer})
        return "no markers here, Answer: " + " ".join(ex.answer.split()[::-1])

    optimizing = FakeEngine(respond)
    with dspy_session(optimizing, None, DSPyRunConfig(temperature=0.7, max_tokens=64, json_fallback=json_fallback,
                                                      window_s=0.0)):
        pred = make_program(TASK)(question=TASK.format_question(ex))
    testing = FakeEngine(respond)
    ev = evaluate_program(TASK, make_program(TASK), [ex], seeds=[5], engine=testing, temperature=0.7, max_tokens=64,
                          json_fallback=json_fallback)
    sent = [r for b in optimizing.batches for r in b]
    tested = [r for b in testing.batches for r in b]
    assert [r.messages for r in tested] == [r.messages for r in sent]
    assert [r.sampling.replace(seed=None) for r in tested] == [r.sampling.replace(seed=None) for r in sent]
    assert len(sent) == 1 + json_fallback and {r.sampling.seed for r in tested} == {5}
    (rec,) = ev.records
    if json_fallback:  # both read the JSON reply's answer: the gold one
        assert pred.answer == ex.answer and rec["parsed_by"] == "json" and rec["score"] == 1.0
    else:  # both score the raw text: the reversed words
        assert pred.answer is None and rec["parsed_by"] is None and rec["score"] == 0.0
        assert rec["scored_text"] == pred.raw


def test_report_puts_gepa_with_a_reflection_engine_in_its_task_models_table(tmp_path, capsys):
    """GEPA's reflection model (and COPRO's prompt model) is a row label in the task model's table, beside
    COPRO on that model; its runs and cost still count under both engines. --help states the overshoot."""
    import csv
    import io

    from mtg_local.report import collect
    from mtg_local.report.tables import cells_csv, markdown_report
    from tests.test_report import results, write_run

    task_model, reflection = "vllm:Qwen/Qwen2.5-7B-Instruct", "openai:gpt-4o-mini"
    write_run(tmp_path / "a", "ws/copro", results(method="copro"))
    write_run(tmp_path / "a", "ws/gepa", results(method="gepa", per_seed={"0": 0.6}))
    other = {"optimizer_engine": reflection}
    write_run(tmp_path / "a", "ws/gepa-r", results(method="gepa", per_seed={"0": 0.9}) | other)
    write_run(tmp_path / "a", "ws/copro-r", results(method="copro", per_seed={"0": 0.2}) | other)
    col = collect([tmp_path / "a"])
    md = markdown_report(col)
    assert [line for line in md.splitlines() if line.startswith("## ")][:1] == [f"## {task_model}"]
    assert f"## {task_model} / {reflection}" not in md  # no table of its own
    rows = [x.split(" | ")[0].lstrip("| ") for x in md.splitlines() if x.startswith("| ")]
    i = rows.index("COPRO")
    assert rows[i:i + 5] == ["COPRO", f"COPRO · prompt model: {reflection}", "MIPROv2", "GEPA (DSPy)",
                             f"GEPA (DSPy) · reflection: {reflection}"]
    line = next(x for x in md.splitlines() if x.startswith(f"| GEPA (DSPy) · reflection: {reflection} |"))
    assert "| 90.0 ± 0.0 (n=1) |" in line
    csv_rows = {(r["method"], r["optimizer_engine"]): r for r in csv.DictReader(io.StringIO(cells_csv(col)))}
    assert csv_rows[("gepa", reflection)]["method_label"] == f"GEPA (DSPy) · reflection: {reflection}"
    assert csv_rows[("gepa", "")]["mean_pct"] == "60.00" and csv_rows[("gepa", reflection)]["mean_pct"] == "90.00"
    assert f"| {task_model} / {reflection} | 2 |" in md  # the totals: every engine the runs used

    with pytest.raises(SystemExit):
        cli.main(["baseline", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "it can overshoot: the seed's validation (one call per validation question) is always spent, and the " \
           "last iteration may pass N by up to 2 x --reflection-minibatch-size + the validation size" in help_text


# -- the bundled model --------------------------------------------------------------
@pytest.mark.vllm  # the engine start is the session's
def test_gepa_smallest_budget_on_the_bundled_model(vllm_engine, tmp_path):  # noqa: ANN001
    """``mtg baseline --method gepa`` at its smallest budget: the seed's validation, then one reflection.

    2 questions per split, 2 test seeds, no JSON-adapter retries (an unparsable completion is scored on
    its raw text and reaches the reflection as a format failure): about 10 task requests, 1 reflection.
    """
    flags = ["--task", "synthetic_word_sorting", "--limit", "2", "--seeds", "0,1", "--max-tokens", "32",
             "--optimizer-max-tokens", "128"]
    gepa_args = cli.build_parser().parse_args([
        "baseline", "--method", "gepa", *flags, "--max-metric-calls", "3", "--reflection-minibatch-size", "2",
        "--no-json-fallback", "--num-threads", "4", "--out", str(tmp_path / "gepa")])
    res = run_baseline(config_from_args(gepa_args), engine=vllm_engine)
    assert res["status"] == "complete", res.get("error")
    assert 0.0 <= res["test_accuracy"]["mean"] <= 1.0 and res["learned"]["system_prompt"]
    roles = res["usage_by_role"]
    assert roles["reflection"]["requests"] in (1, 2)  # one reflection (GEPA retries a failed one once)
    assert roles["task"]["requests"] >= 6 and roles["test"]["requests"] == 4
    assert sum(u["requests"] - u["cache_hits"] for u in roles.values()) == res["engine_usage"]["requests"] - \
        res["engine_usage"]["cache_hits"]  # every request the engine served is in exactly one role
    assert res["history"][0]["source"] == "seed" and res["optimizer_details"]["metric_calls"] >= 3
    assert (tmp_path / "gepa" / INSTRUCTION_FILE).read_text().strip() == res["learned"]["system_prompt"].strip()
    print(f"GEPA on the bundled model: wall {res['wall_s']} s, usage by role {json.dumps(roles)}, "
          f"coalescer {json.dumps(res['coalescer'])}, history {json.dumps(res['history'])[:800]}")

    # Its protocol is the one every other method records for the same flags (COPRO, MIPROv2, an eval) ...
    for other in (["--method", "copro"], ["--method", "miprov2"]):
        args = cli.build_parser().parse_args(["baseline", *other, *flags, "--out", "x"])
        assert protocol_hash(config_from_args(args).protocol) == res["protocol_hash"]
    # ... so a zero-shot run with those flags (a scripted engine: the hash does not depend on it) shares its
    # report table's protocol, where GEPA has its own row.
    assert cli.main(["eval", "--method", "zero_shot_cot", *flags, "--engine", "fake", "--no-progress",
                     "--out", str(tmp_path / "zs")]) == 0
    zs = json.loads((tmp_path / "zs" / "results.json").read_text())
    assert zs["protocol_hash"] == res["protocol_hash"]
    assert cli.main(["report", str(tmp_path / "gepa"), str(tmp_path / "zs"), "--out", str(tmp_path / "rep"),
                     "--no-plots"]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| GEPA (DSPy) |"))
    assert f"{100 * res['test_accuracy']['mean']:.1f} ± " in row
    assert "another protocol" not in md and "Left out" not in md
