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
          good: bool = True, spec: str | None = None) -> dict:
    """A scripted meta run whose step-1 candidate carries the GOOD marker (so it is accepted) when ``good``."""
    cfg = meta_config(out=str(out), task=task, data_file=data_file, method=method, engine="scripted",
                      seeds=(0, 1), outer_steps=1, minibatch=2, steps=1, limit=3, max_tokens=64,
                      optimizer_max_tokens=64, meta_max_tokens=64, progress=False, answer_selection="last",
                      keep_answer_format=True)
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
    assert source["protocol_hash"] == src_results["protocol_hash"] == by_run["protocol_hash"]
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
    with pytest.raises(UserError, match="supplies the loss_prompt; drop --loss-prompt"):
        run_eval(EvalConfig(out=str(tmp_path / "c"), engine="fake", loss_prompt="mine", from_run=str(src)))
    assert cli.main(eval_argv(tmp_path / "cli", tmp_path / "stopped", "--from-run", str(tmp_path / "stopped"))) == 2


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
    acc = {(s.tasks[0][0], c): 100 * table.cells[(s.run_id, c)].mean for s in table.rows for c in table.columns}
    assert acc == {(ws, c): 100.0 for c in table.columns} | {(bbh, c): 0.0 for c in table.columns}
    assert {c: table.reference[c].mean for c in table.columns} == {c: 0.0 for c in table.columns}
    assert all(cell.n_seeds == 2 for cell in table.cells.values())
    # The diagonal is the source's own test; the other cells are the --from-run evals.
    own = table.cells[(table.rows[1].run_id, (ws, MODELS[0]))]
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
    assert lines[3].startswith("| Word Sorting · fake:model-a · metaTextGrad (Learned Loss) | 0.0 ± 0.0 (n=2)")
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
    the report has the transfer table with the multi-task row, a rerun skips what is complete."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_example_report", FIXTURES.parent.parent / "scripts"
                                                  / "make_example_report.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    argv = ["--runs", str(tmp_path / "runs"), "--engine", "fake", "--out", str(tmp_path / "report")]
    assert script.main(argv) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "Word Sorting + MMLU Machine Learning · fake · metaTextGrad (Learned Loss)" in md
    assert (tmp_path / "report" / "plots" / "transfer_solution_opt.png").exists()
    col = collect([tmp_path / "runs"])
    assert len(col.runs) == 9 and not col.problems and len({r.protocol_hash for r in col.runs}) == 1
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("results.json")}
    assert script.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in before} == before  # complete runs are not run again
