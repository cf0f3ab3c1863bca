"""Transfer of learned prompts: ``mtg eval --from-run`` and the report's transfer table (scripted engines).

* A prompt applied with ``--from-run SOURCE`` sends exactly the requests that passing its text
  by hand (``--loss-prompt @FILE`` / ``--template @FILE``) sends, and results.json records the source.
* A source that is not a complete run with something this method uses is a one-line UserError,
  raised before the run dir is written.
* ``mtg report`` over a small grid (2 tasks x learned-on x applied-to, 2 models): the transfer
  table's rows, columns, cells and reference row; the applied runs stay out of Table 2.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from engines.errors import UserError
from meta_fakes import ScriptedMetaEngine, meta_config
from mtg_local import cli
from mtg_local.commands.eval import EvalConfig, run_eval
from mtg_local.meta import run_train
from mtg_local.report import collect, write_report
from mtg_local.report.tables import markdown_report, merge_cells, table_runs
from mtg_local.report.transfer import transfer_tables
from mtg_local.runs.run_dir import RunDir
from mtg_local.runs.transfer import prompts_hash, run_id

FIXTURES = Path(__file__).parent / "fixtures"
BBH = FIXTURES / "tasks_bbh_word_sorting.jsonl"
TARGET = {"learned_loss": "loss_prompt", "reptile": "template"}


def train(out: Path, method: str, *, task: str = "synthetic_word_sorting", data_file: str | None = None,
          good: bool = True, spec: str | None = None, **kw) -> dict:
    """A scripted meta run whose step-1 candidate carries the GOOD marker (so it is accepted) when ``good``."""
    cfg = meta_config(out=str(out), task=task, data_file=data_file, method=method, engine="scripted",
                      seeds=(0, 1), outer_steps=1, minibatch=2, steps=1, limit=3, max_tokens=64,
                      optimizer_max_tokens=64, meta_max_tokens=64, progress=False, answer_selection="last",
                      keep_answer_format=True, **kw)
    engine = ScriptedMetaEngine({(1, TARGET[method])} if good else set())
    if spec:
        engine.spec = spec
    return run_train(cfg, engine=engine)


def eval_argv(out: Path, source: Path, *extra: str) -> list[str]:
    return ["eval", "--task", "word_sorting", "--data-file", str(BBH), "--engine", "fake:scripted", "--no-cache",
            "--no-progress", "--protocol", str(source / "results.json"), "--out", str(out), *extra]


def run_cli_eval(argv: list[str]) -> tuple[dict, ScriptedMetaEngine]:
    engine = ScriptedMetaEngine()
    results = run_eval(cli.build_parser().parse_args(argv), engine=engine)
    return results, engine


@pytest.mark.parametrize("source_method, method", [("learned_loss", "solution_opt"), ("reptile", "solution_opt"),
                                                   ("reptile", "zero_shot_cot")])
def test_from_run_sends_the_requests_of_the_texts_by_hand(tmp_path: Path, source_method: str, method: str):
    src = tmp_path / "src"
    learned = train(src, source_method)
    target = TARGET[source_method]
    assert learned["learned"][target].rstrip().endswith("GOOD")  # really a learned text, not the initial one

    by_run, e1 = run_cli_eval(eval_argv(tmp_path / "from-run", src, "--method", method, "--from-run", str(src)))
    flag = {"loss_prompt": "--loss-prompt", "template": "--template"}[target]
    by_hand, e2 = run_cli_eval(eval_argv(tmp_path / "by-hand", src, "--method", method,
                                         flag, f"@{src / f'learned_{target}.txt'}"))
    assert e1.batches and e1.batches == e2.batches  # every request of every phase, in order
    assert any(learned["learned"][target] in (r.response_prefix + "".join(m.content for m in r.messages))
               for b in e1.batches for r in b)  # the learned text reached the engine
    assert by_run["test_accuracy"] == by_hand["test_accuracy"] and by_run["test_accuracy"]["mean"] == 1.0
    assert "source" not in by_hand
    source = by_run["source"]
    src_results = json.loads((src / "results.json").read_text())
    assert source["run_dir"] == str(src.resolve()) and source["run_id"] == run_id(src_results)
    assert source["method"] == source_method and source["task"] == "synthetic_word_sorting"
    assert source["engine"] == "fake:scripted" and source["applied"] == [target]
    assert source["protocol_hash"] == src_results["protocol_hash"]
    assert src_results["settings_hash"] == by_run["settings_hash"]  # one protocol; protocol_hash adds the task
    assert source["prompts_hash"] == prompts_hash({target: learned["learned"][target]})
    config = json.loads((tmp_path / "from-run" / "config.json").read_text())
    assert config["from_run"] == str(src) and config[target if target == "template" else "loss_prompt"] \
        == learned["learned"][target]


def _write(path: Path, body: dict | None, *, config: bool = True) -> Path:
    rd = RunDir(path).create()
    if config:
        rd.write_config({})
    if body is not None:
        rd.write_results(body)
    return path


def test_from_run_refuses_what_is_not_a_complete_source(tmp_path: Path):
    src = tmp_path / "src"
    train(src, "learned_loss")
    done = json.loads((src / "results.json").read_text())
    cases = {
        "no such run dir": tmp_path / "missing",
        "not finished, no results.json": _write(tmp_path / "running", None),
        "not complete \\(status 'interrupted'\\); stopped by SIGTERM": _write(
            tmp_path / "stopped", {**done, "status": "interrupted", "message": "stopped by SIGTERM; resume ..."}),
        "not complete \\(status 'failed'\\)": _write(tmp_path / "failed", {**done, "status": "failed"}),
        "learned no loss prompt, template or system prompt": _write(
            tmp_path / "eval", {**done, "method": "solution_opt",
                                "learned": {"loss_prompt": None, "template": None, "system_prompt": None}}),
    }
    for message, path in cases.items():
        out = tmp_path / f"out-{path.name}"
        with pytest.raises(UserError, match=message) as e:
            run_eval(EvalConfig(out=str(out), engine="fake", from_run=str(path), progress=False))
        assert "\n" not in str(e.value)
        assert not out.exists()  # refused before anything was written or loaded
    with pytest.raises(UserError, match="loss_prompt is not used by --method zero_shot_cot"):
        run_eval(EvalConfig(out=str(tmp_path / "z"), engine="fake", method="zero_shot_cot", from_run=str(src)))
    with pytest.raises(UserError, match="supplies the loss_prompt: .*whole prompt pair .*; drop --loss-prompt"):
        run_eval(EvalConfig(out=str(tmp_path / "c"), engine="fake", loss_prompt="mine", from_run=str(src)))
    # the fixed half too: the source answered with the default template, and so does its transfer
    with pytest.raises(UserError, match=r"supplies the template: .*\(learned loss_prompt, default template, "
                                        r"default system_prompt\); drop --template"):
        run_eval(EvalConfig(out=str(tmp_path / "t"), engine="fake", template="Mine:", from_run=str(src)))
    assert cli.main(eval_argv(tmp_path / "cli", tmp_path / "stopped", "--from-run", str(tmp_path / "stopped"))) == 2


def test_from_run_applies_the_whole_prompt_pair(tmp_path: Path):
    """A learned_loss run started from a template given by hand answered its test with that template: its
    transfer does too (the requests of both texts passed by hand), and the report keeps a transfer that
    applied other texts (the learned half only) in a row of its own, never in the source's row."""
    src = tmp_path / "runs" / "src"
    fixed = "Fixed template: let us sort."
    learned = train(src, "learned_loss", initial_template=fixed)
    assert learned["prompt_pair"] == {"loss_prompt": learned["learned"]["loss_prompt"], "template": fixed,
                                      "system_prompt": None, "origin": {"loss_prompt": "learned", "template": "given",
                                                                        "system_prompt": "default"}}
    assert learned["kept_initial"] is False
    by_run, e1 = run_cli_eval(eval_argv(tmp_path / "runs" / "from-run", src, "--from-run", str(src)))
    by_hand, e2 = run_cli_eval(eval_argv(tmp_path / "by-hand", src, "--loss-prompt",
                                         f"@{src / 'learned_loss_prompt.txt'}", "--template", fixed))
    assert e1.batches and e1.batches == e2.batches
    assert all(r.response_prefix.startswith(fixed) for r in e1.batches[0])  # the forward answers start with it
    source = by_run["source"]
    assert source["applied"] == ["loss_prompt", "template"]
    assert source["origin"] == {"loss_prompt": "learned", "template": "given"}
    assert source["prompts_hash"] == prompts_hash({"loss_prompt": learned["learned"]["loss_prompt"], "template": fixed})

    # A transfer recorded with the learned half only (as before whole pairs): its own row.
    old = json.loads((tmp_path / "runs" / "from-run" / "results.json").read_text())
    old["source"] |= {"applied": ["loss_prompt"], "prompts_hash": prompts_hash({"loss_prompt": learned["learned"]
                                                                                ["loss_prompt"]})}
    old["finished_at"] = "2099-01-01T00:00:00"
    _write(tmp_path / "runs" / "old", old)
    (table,) = transfer_tables(collect([tmp_path / "runs"]).runs)
    assert len(table.rows) == 2 and {s.run_id for s in table.rows} == {source["run_id"]}
    whole, half = sorted(table.rows, key=lambda s: s.prompts_hash != source["prompts_hash"])
    assert {c: [r.path.name for r in cell.runs] for (k, c), cell in table.cells.items() if k == whole.key} == {
        ("synthetic_word_sorting", "fake:scripted"): ["src"], ("word_sorting", "fake:scripted"): ["from-run"]}
    assert [r.path.name for (k, _), cell in table.cells.items() if k == half.key for r in cell.runs] == ["old"]
    assert table.row_labels[half.key].endswith(f"(texts {half.prompts_hash[:6]})")

    # A template-only source leaves the loss prompt at the applying task's own initial one.
    rep = tmp_path / "reptile"
    train(rep, "reptile")
    applied, _ = run_cli_eval(["eval", "--task", "mmlu_machine_learning", "--data-file",
                               str(FIXTURES / "tasks_mmlu_machine_learning.jsonl"), "--engine", "fake:scripted",
                               "--no-cache", "--no-progress", "--protocol", str(rep / "results.json"),
                               "--from-run", str(rep), "--out", str(tmp_path / "rep-mmlu")])
    assert applied["source"]["applied"] == ["template"]
    from mtg_local.tasks import get_task

    assert applied["config"]["loss_prompt"] == get_task("mmlu_machine_learning").initial_loss_prompt


def test_from_run_under_another_protocol_warns_records_and_labels_the_row(tmp_path: Path, capsys):
    """One warning line naming the differing fields; results.json source.protocol_diff; the report's row
    (in the eval's protocol tables) and transfer.csv name the source's protocol. The source kept nothing
    (no candidate beat its initial loss prompt): results.json and the row say so."""
    root = tmp_path / "runs"
    src = root / "src"
    learned = train(src, "learned_loss", good=False)
    assert learned["best_step"] == 0 and learned["kept_initial"] is True
    capsys.readouterr()
    res, _ = run_cli_eval(eval_argv(root / "other", src, "--from-run", str(src), "--steps", "2", "--seeds", "0"))
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(err) == 1 and f"--from-run {src} was learned under protocol {learned['settings_hash']}" in err[0]
    assert "seeds: [0, 1] -> [0]" in err[0] and "steps: 1 -> 2" in err[0]
    assert res["source"]["protocol_diff"] == {"seeds": [[0, 1], [0]], "steps": [1, 2]}
    assert res["source"]["kept_initial"] is True and res["protocol_hash"] != learned["protocol_hash"]
    events = [json.loads(x) for x in (root / "other" / "events.jsonl").read_text().splitlines()]
    start = next(e for e in events if e["event"] == "eval_start")
    assert start["source_protocol_diff"] == res["source"]["protocol_diff"]
    same, _ = run_cli_eval(eval_argv(root / "same", src, "--from-run", str(src)))
    assert same["source"]["protocol_diff"] == {} and "warning" not in capsys.readouterr().err

    col = collect([root])
    # tables and transfer.csv key by settings (the protocol without the task's identity)
    (table,) = transfer_tables([r for r in col.runs if r.protocol_hash == res["settings_hash"]], res["settings_hash"])
    (label,) = table.row_labels.values()
    assert label.endswith(f"(kept nothing: its initial prompt) (learned under protocol `{learned['settings_hash']}`: "
                          "seeds, steps differ)")
    md = markdown_report(col)
    assert label in md
    _, files = write_report([root], tmp_path / "report", plots=False)
    rows = list(csv.DictReader(io.StringIO((tmp_path / "report" / "transfer.csv").read_text())))
    other = [r for r in rows if r["settings_hash"] == res["settings_hash"]]
    assert [(r["source_settings_hash"], r["source_protocol_diff"], r["source_kept_initial"]) for r in other] == [
        (learned["settings_hash"], "seeds;steps", "true")]
    mine = [r for r in rows if r["settings_hash"] == learned["settings_hash"]]
    assert {(r["source_protocol_diff"], r["source_kept_initial"]) for r in mine} == {("", "true")}


# -- the report's transfer table from a small grid ------------------------------------------------------
TASKS = {"ws": ("synthetic_word_sorting", None), "bbh": ("word_sorting", str(BBH))}
MODELS = ("fake:model-a", "fake:model-b")


def eval_run(out: Path, task: str, spec: str, protocol_file: Path, *extra: str) -> dict:
    name, data_file = TASKS[task]
    argv = ["eval", "--task", name, "--engine", spec, "--no-progress", "--protocol", str(protocol_file),
            "--out", str(out), *(["--data-file", data_file] if data_file else []), *extra]
    engine = ScriptedMetaEngine()
    engine.spec = spec
    return run_eval(cli.build_parser().parse_args(argv), engine=engine)


def test_report_transfer_table_from_a_small_grid(tmp_path: Path):
    root = tmp_path / "runs"
    # Learned on each task with model a: on ws the step-1 loss prompt carries GOOD (all right
    # wherever it is applied); on bbh no candidate is good, so its learned prompt is the initial one.
    for task, good in (("ws", True), ("bbh", False)):
        name, data_file = TASKS[task]
        train(root / "learn" / task, "learned_loss", task=name, data_file=data_file, good=good, spec=MODELS[0])
    protocol = root / "learn" / "ws" / "results.json"
    for task in TASKS:
        for spec in MODELS:
            eval_run(root / "reference" / task / spec[-1], task, spec, protocol)  # the initial prompt
            for learned_on in TASKS:
                if (learned_on, spec) != (task, MODELS[0]):  # there, the source's own test is the cell
                    eval_run(root / "transfer" / f"{learned_on}-to-{task}" / spec[-1], task, spec, protocol,
                             "--from-run", str(root / "learn" / learned_on))
    col = collect([root])
    assert not col.problems and len({r.protocol_hash for r in col.runs}) == 1
    (table,) = transfer_tables(col.runs)
    assert table.method == "solution_opt"
    ws, bbh = "synthetic_word_sorting", "word_sorting"
    assert table.columns == [(bbh, MODELS[0]), (bbh, MODELS[1]), (ws, MODELS[0]), (ws, MODELS[1])]
    assert [[t for t, _ in s.tasks] for s in table.rows] == [[bbh], [ws]]
    acc = {(s.tasks[0][0], c): 100 * table.cells[(s.key, c)].mean for s in table.rows for c in table.columns}
    assert acc == {(ws, c): 100.0 for c in table.columns} | {(bbh, c): 0.0 for c in table.columns}
    assert {c: table.reference[c].mean for c in table.columns} == {c: 0.0 for c in table.columns}
    assert all(cell.n_seeds == 2 for cell in table.cells.values())
    # The diagonal is the source's own test; the other cells are the --from-run evals.
    own = table.cells[(table.rows[1].key, (ws, MODELS[0]))]
    assert [r.path for r in own.runs] == [(root / "learn" / "ws").resolve()]
    # Table 2: the solution_opt cells are the reference runs only, never an eval of a learned prompt.
    cells = merge_cells(table_runs(col.runs))
    for (e, t, m), c in cells.items():
        if m == "solution_opt":
            assert [p.parent.parent.name for p in (r.path for r in c.runs)] == ["reference"]
    md = markdown_report(col)
    part = md.split("## Transfer of learned prompts (applied with Solution Optimization (TextGrad))")[1]
    lines = [line for line in part.splitlines() if line.startswith("|")]
    assert lines[0].startswith("| Learned on (task · model · method) \\ applied to | Word Sorting · fake:model-a")
    assert lines[2].startswith("| *Initial prompt (reference)* | 0.0 ± 0.0 (n=2) |")
    # the bbh source kept nothing (best step 0): its row says so
    assert lines[3].startswith("| Word Sorting · fake:model-a · metaTextGrad (Learned Loss) (kept nothing: its "
                               "initial prompt) | 0.0 ± 0.0 (n=2)")
    assert lines[4] == "| synthetic_word_sorting · fake:model-a · metaTextGrad (Learned Loss) | " + " | ".join(
        ["100.0 ± 0.0 (n=2)"] * 4) + " |"
    _, files = write_report([root], tmp_path / "report")
    names = {f.name for f in files}
    assert {"transfer.csv", "transfer_solution_opt.png"} <= names
    rows = list(csv.DictReader(io.StringIO((tmp_path / "report" / "transfer.csv").read_text())))
    assert len(rows) == 8 and {r["reference_mean_pct"] for r in rows} == {"0.00"}
    assert {(r["source_tasks"], r["applied_task"], r["applied_engine"], r["mean_pct"]) for r in rows} == {
        (s, t, m, "100.00" if s == ws else "0.00") for s in (ws, bbh) for t in (ws, bbh) for m in MODELS}
    assert (tmp_path / "report" / "plots" / "transfer_solution_opt.png").stat().st_size > 5000


# -- the real engine -----------------------------------------------------------------------------------
# --from-run is file plumbing: it sends exactly the requests of the same texts passed by hand
# (test_from_run_sends_the_requests_of_the_texts_by_hand, scripted, every request compared). The parts
# the real engine adds are proven elsewhere: a learned-loss run on the real engine in
# tests/test_lifecycle_vllm.py and tests/test_meta_vllm.py (joint), a solution-optimization eval whose
# rerun is served from the cache in tests/test_eval_cli.py::test_eval_solution_opt_on_vllm_bundled.


def test_example_report_script_on_the_fake_engine(tmp_path: Path):
    """scripts/make_example_report.py end to end on the fake engine: every command parses and runs,
    the report has the transfer table with the arithmetic row applied to the sums task file, a rerun skips what is
    complete."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_example_report", FIXTURES.parent.parent / "scripts"
                                                  / "make_example_report.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    argv = ["--runs", str(tmp_path / "runs"), "--engine", "fake", "--out", str(tmp_path / "report")]
    assert script.main(argv) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| Learned on (task · model · method) \\ applied to | arithmetic · fake | sums · fake |" in md
    assert "| arithmetic · fake · metaTextGrad (Learned Loss)" in md
    assert (tmp_path / "report" / "plots" / "transfer_solution_opt.png").exists()
    col = collect([tmp_path / "runs"])
    assert {r.method for r in col.runs} >= {"zero_shot_cot", "solution_opt", "learned_loss", "gepa"}
    assert len(col.runs) == 7 and not col.problems and len({r.protocol_hash for r in col.runs}) == 1
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("results.json")}
    assert script.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in before} == before  # complete runs are not run again


# -- DSPy programs (COPRO, MIPROv2, GEPA sources) -----------------------------------------------------
def _dspy_source(out: Path, method: str):  # noqa: ANN202
    """A MIPROv2 or GEPA baseline on a scripted engine (uncached, so its test batch reaches the engine)."""
    from engines.fake_engine import FakeEngine
    from mtg_local.commands.baseline import BaselineConfig, run_baseline
    from mtg_local.protocol import Protocol

    if method == "miprov2":
        from mtg_local.baselines.miprov2 import MiproConfig
        from tests.dspy_fakes import chat_adapter_responder

        mc = MiproConfig(auto=None, num_candidates=2, num_trials=2, max_bootstrapped_demos=1, max_labeled_demos=2,
                         num_threads=4)
        right, wrong = chat_adapter_responder(True), chat_adapter_responder(False)

        def responder(req):  # noqa: ANN001, ANN202 - right only with demos, so MIPROv2 keeps some
            return (right if len(req.messages) > 2 else wrong)(req)
    else:
        from mtg_local.baselines.gepa import GepaConfig
        from tests.test_gepa import SPLITS, _keys, one_engine, reflection_by_instruction, scripted_task_model

        mc = GepaConfig(auto=None, max_metric_calls=12, num_threads=4)
        responder = one_engine(
            scripted_task_model({"GOOD": _keys([SPLITS.train[0], *SPLITS.val, *SPLITS.test])}),
            reflection_by_instruction({"Given the fields `question`, produce the fields `answer`.":
                                       '{"new_instruction": "GOOD 1"}', "GOOD 1": "GOOD 2", "GOOD 2": "GOOD 3"}))
    engine = FakeEngine(responder)
    res = run_baseline(BaselineConfig(out=str(out), method=method, method_config=mc, engine="fake", no_cache=True,
                                      protocol=Protocol(seeds=(0, 1), limit=3)), engine=engine)
    assert res["status"] == "complete"
    return res, engine, responder


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("method", ["miprov2", "gepa"])
def test_from_run_of_a_dspy_run_evaluates_its_program_as_its_own_test_did(tmp_path: Path, method: str, capsys):
    """``mtg eval --method dspy_program --from-run`` of a MIPROv2/GEPA run sends its test's requests (instruction,
    demos, DSPy's chat prompt) and scores them alike; another eval method refuses in one line; the report's
    dspy_program transfer table has the run's own test, the transfer and the starting program as reference."""
    from engines.fake_engine import FakeEngine
    from tests.conftest import require

    require("dspy")
    root = tmp_path / "runs"
    src = root / method
    res, base_engine, responder = _dspy_source(src, method)
    program = res["learned"]

    def dspy_eval(out: Path, name: str = "echo", *extra: str) -> tuple[dict, FakeEngine]:
        engine = FakeEngine(responder, name=name)
        argv = ["eval", "--method", "dspy_program", "--engine", engine.spec, "--no-cache", "--no-progress",
                "--protocol", str(src / "results.json"), "--out", str(out), *extra]
        return run_eval(cli.build_parser().parse_args(argv), engine=engine), engine

    applied, engine = dspy_eval(root / "same", "echo", "--from-run", str(src))
    assert engine.batches == [base_engine.batches[-1]]  # the baseline's test call, request for request
    assert applied["test_accuracy"] == res["test_accuracy"]
    assert len(engine.batches[0][0].messages) == 2 + 2 * len(program["demos"])  # each demo: a user/assistant pair
    assert program["system_prompt"] in engine.batches[0][0].messages[0].content
    if method == "miprov2":
        assert program["demos"], "MIPROv2 kept no demo: the test would not see them carried over"
    src_record = applied["source"]
    assert src_record["applied"] == ["instruction"] + (["demos"] if program["demos"] else [])
    assert src_record["method"] == method and applied["method"] == "dspy_program"
    assert applied["config"]["program"]["json_fallback"] is True and applied["truncated"] is None

    # Any other method refuses, in one line, naming why and what to do (before the run is written).
    capsys.readouterr()
    assert cli.main(["eval", "--from-run", str(src), "--engine", "fake", "--out", str(tmp_path / "no")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"a {method} run learned a DSPy program" in line and "evaluate it with --method dspy_program" in line
    assert not (tmp_path / "no" / "config.json").exists()

    assert transfer_tables(collect([src]).runs) == []  # its own test alone: nothing transferred, no table
    # The report: the dspy_program transfer table (own test where learned, the transfer to another model,
    # the starting program as reference), and the reference in Table 2.
    dspy_eval(root / "other", "other", "--from-run", str(src))
    for name in ("echo", "other"):
        dspy_eval(root / f"reference-{name}", name)
    col = collect([root])
    assert not col.problems
    (table,) = transfer_tables(col.runs)
    assert table.method == "dspy_program" and [s.run_id for s in table.rows] == [src_record["run_id"]]
    key = table.rows[0].key
    ws = "synthetic_word_sorting"
    assert sorted(p.name for p in (r.path for r in table.cells[(key, (ws, "fake"))].runs)) == [method, "same"]
    assert [r.path.name for r in table.cells[(key, (ws, "fake:other"))].runs] == ["other"]
    assert sorted(c[1] for c in table.reference) == ["fake", "fake:other"]
    assert "| Zero-Shot CoT (DSPy program) |" in markdown_report(col)
