"""``mtg report``: Table-2 tables, CSV, plots, and what happens to bad or unfinished runs.

Fast unit tests on hand-written results.json bodies built from docs/results_schema.md.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from engines.errors import UserError
from mtg_local.cli import main
from mtg_local.report import collect, write_report
from mtg_local.report.paper_reference import PAPER_LABEL, PAPER_TABLE2, paper_accuracy
from mtg_local.report.tables import cells_csv, markdown_report, merge_cells
from mtg_local.runs.lock import RunDirLock
from mtg_local.runs.run_dir import RunDir


def results(task="word_sorting", method="zero_shot_cot", engine="vllm:Qwen/Qwen2.5-7B-Instruct", per_seed=None,
            status="complete", cost=None, history=None, data_file=None, finished="2025-01-01T00:00:00"):
    per_seed = per_seed if per_seed is not None else {"0": 0.5, "1": 0.7}
    vals = list(per_seed.values())
    mean = sum(vals) / len(vals)
    std = (sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5 if len(vals) > 1 else 0.0
    return {
        "status": status, "task": task, "task_info": {"name": task}, "method": method, "engine": engine,
        "optimizer_engine": engine, "seeds": [int(s) for s in per_seed], "split": "test", "n_questions": 10,
        "test_accuracy": {"mean": mean, "std": std, "per_seed": per_seed, "n": len(vals)},
        "engine_usage": {"calls": 4, "requests": 40, "prompt_tokens": 1000, "completion_tokens": 500, "wall_s": 3.0,
                         "cache_hits": 0, "errors": 0, "retries": 0},
        "cost_usd": cost, "wall_s": 12.0, "config": {"data_file": data_file},
        "learned": {"loss_prompt": None, "template": None, "system_prompt": None},
        "history": history or [], "started_at": "2025-01-01T00:00:00", "finished_at": finished,
    }


def write_run(root: Path, name: str, body: dict) -> Path:
    rd = RunDir(root / name).create()
    rd.write_config({"task": body.get("task")})
    rd.write_results(body)
    return rd.path


@pytest.fixture
def runs_tree(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    hist = [{"step": 0, "candidate": {}, "val_accuracy": 0.4, "accepted": True},
            {"step": 1, "candidate": {}, "val_accuracy": 0.3, "accepted": False},
            {"step": 1, "candidate": {}, "val_accuracy": 0.6, "accepted": True},
            {"step": 2, "candidate": None, "val_accuracy": None, "accepted": False}]
    write_run(root, "ws/zs/qwen", results())
    write_run(root, "ws/so/qwen", results(method="solution_opt", per_seed={"0": 0.6, "1": 0.8}))
    write_run(root, "ws/ll/qwen", results(method="learned_loss", per_seed={"0": 0.9}, history=hist))
    write_run(root, "mmlu/zs/qwen", results(task="mmlu_ml", per_seed={"0": 0.75, "1": 0.75}))
    write_run(root, "ws/zs/gpt", results(engine="openai:gpt-4o-mini", cost=0.0123))
    write_run(root, "ws/zs/llama", results(engine="vllm:meta-llama/Llama-3.1-8B-Instruct", per_seed={"0": 0.25}))
    # a corrupt file, a failed run, an unfinished run (config.json only, with a checkpoint)
    bad = RunDir(root / "ws/maml/qwen").create()
    bad.write_config({})
    bad.results_path.write_text('{"status": "complete", "task": ')
    write_run(root, "ws/reptile/qwen", results(method="reptile", status="failed") | {"error": "EngineError: boom"})
    unfinished = RunDir(root / "ws/joint/qwen").create()
    unfinished.write_config({})
    unfinished.write_checkpoint({"completed_step": 2})
    return root


def test_corrupt_results_listed_and_table_built_from_the_rest(runs_tree: Path, tmp_path: Path):
    col = collect([runs_tree])
    assert len(col.runs) == 6
    kinds = {p.kind: p for p in col.problems}
    assert set(kinds) == {"corrupt", "failed", "incomplete"}
    assert kinds["corrupt"].path == (runs_tree / "ws/maml/qwen/results.json").resolve()
    assert "EngineError: boom" in kinds["failed"].detail
    assert "outer step 2" in kinds["incomplete"].detail and "--resume" in kinds["incomplete"].detail

    out = tmp_path / "report"
    assert main([ "report", str(runs_tree), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "ws/maml/qwen/results.json" in md and "corrupt" in md
    assert "## vllm:Qwen/Qwen2.5-7B-Instruct" in md and "## All models side by side" in md
    # paper rows in order, labelled as quoted from the paper
    assert md.index("Zero-Shot CoT") < md.index("COPRO") < md.index("Solution Optimization (TextGrad)") \
        < md.index("metaTextGrad (Learned Loss)")
    assert PAPER_LABEL in md and "quoted from the paper" in md
    assert "60.0 ± 14.1 (n=2)" in md  # zero-shot word sorting: 0.5, 0.7
    assert "45.7" in md  # paper zero-shot CoT word sorting
    assert "$0.0123" in md and "— (local)" in md  # cost only for the OpenAI engine
    assert (out / "plots").is_dir() and any(p.name.startswith("accuracy_") for p in (out / "plots").iterdir())
    assert (out / "plots" / "meta_history_vllm_Qwen_Qwen2.5-7B-Instruct.png").stat().st_size > 1000
    rows = list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))
    assert len(rows) == 6
    zs = next(r for r in rows if r["engine"].startswith("vllm:Qwen") and r["task"] == "word_sorting"
              and r["method"] == "zero_shot_cot")
    assert zs["mean_pct"] == "60.00" and zs["n_seeds"] == "2" and zs["paper_gpt4omini_pct"] == "45.7"
    problems = list(csv.DictReader(io.StringIO((out / "problems.csv").read_text())))
    assert {p["kind"] for p in problems} == {"corrupt", "failed", "incomplete"}


def test_runs_of_one_cell_merge_by_seed(tmp_path: Path):
    write_run(tmp_path, "a", results(per_seed={"0": 0.5, "1": 0.5}, finished="2025-01-01T00:00:00"))
    write_run(tmp_path, "b", results(per_seed={"1": 1.0, "2": 1.0}, finished="2025-01-02T00:00:00"))
    cells = merge_cells(collect([tmp_path]).runs)
    (cell,) = cells.values()
    assert cell.n_seeds == 3 and cell.mean == pytest.approx(2.5 / 3)  # seed 1 from the later run


def test_task_variants_from_different_data_files_get_separate_columns(tmp_path: Path):
    write_run(tmp_path, "a", results(data_file="/data/ws_easy.jsonl"))
    write_run(tmp_path, "b", results(data_file="/data/ws_hard.jsonl"))
    col = collect([tmp_path])
    assert sorted(r.task for r in col.runs) == ["word_sorting [ws_easy]", "word_sorting [ws_hard]"]
    md = markdown_report(col)
    assert "Word Sorting [ws_easy]" in md and "Word Sorting [ws_hard]" in md


def test_running_run_dir_is_listed_as_running_with_its_holder(tmp_path: Path):
    rd = RunDir(tmp_path / "live").create()
    rd.write_config({})
    with RunDirLock(rd.path):
        col = collect([tmp_path])
    (p,) = col.problems
    assert p.kind == "running" and "pid" in p.detail


def test_schema_errors_are_corrupt_not_crashes(tmp_path: Path):
    write_run(tmp_path, "ok", results())
    write_run(tmp_path, "nomean", results() | {"test_accuracy": {"per_seed": {}, "std": 0}})
    write_run(tmp_path, "list", results())
    (tmp_path / "list" / "results.json").write_text("[1, 2]")
    col = collect([tmp_path])
    assert len(col.runs) == 1
    assert sorted(p.path.parent.name for p in col.problems if p.kind == "corrupt") == ["list", "nomean"]
    assert "vllm:Qwen" in cells_csv(col)


def test_missing_path_and_empty_dir_are_user_errors(tmp_path: Path):
    with pytest.raises(UserError, match="no such run dir"):
        collect([tmp_path / "nope"])
    with pytest.raises(UserError, match="no results.json"):
        collect([tmp_path])


def test_paper_reference_is_table2():
    assert paper_accuracy("learned_loss", "word_sorting") == 73.2
    assert paper_accuracy("maml", "mmlu_machine_learning") == 78.0
    assert paper_accuracy("maml", "gpqa_diamond") == 43.0
    assert paper_accuracy("joint", "word_sorting") is None  # not in the paper
    assert len(PAPER_TABLE2) == 8


def test_write_report_without_plots(runs_tree: Path, tmp_path: Path):
    col, files = write_report([runs_tree / "ws" / "zs"], tmp_path / "r", plots=False)
    assert [f.name for f in files] == ["report.md", "results.csv", "problems.csv"]
    assert json.loads(json.dumps(len(col.runs))) == 3


# -- protocol tables and dataset identity (issue 13), from real mtg eval runs on the fake engine --
def _eval(out: Path, *extra: str) -> None:
    assert main(["eval", "--engine", "fake", "--limit", "2", "--seeds", "0,1", "--steps", "1", "--no-progress",
                 "--out", str(out), *extra]) == 0


def test_report_separates_datasets_and_protocols(tmp_path: Path):
    fixture = Path(__file__).parent / "fixtures" / "tasks_bbh_word_sorting.jsonl"
    other = tmp_path / "other_bbh.jsonl"
    other.write_text("\n".join(reversed(fixture.read_text().splitlines())) + "\n")  # another dataset (content)
    root = tmp_path / "runs"
    _eval(root / "synthetic/zs", "--task", "synthetic_word_sorting", "--method", "zero_shot_cot")  # generated data
    _eval(root / "bbh/zs", "--task", "bbh_word_sorting", "--data-file", str(fixture), "--method", "zero_shot_cot")
    _eval(root / "bbh/so", "--task", "word_sorting", "--data-file", str(fixture))  # alias: same column
    _eval(root / "bbh2/zs", "--task", "word_sorting", "--data-file", str(other), "--method", "zero_shot_cot")
    _eval(root / "bbh/so-T2", "--task", "word_sorting", "--data-file", str(fixture), "--steps", "2")  # other protocol
    col = collect([root])
    assert len(col.runs) == 5
    by_dir = {r.path.relative_to(root.resolve()).as_posix(): r for r in col.runs}
    assert by_dir["synthetic/zs"].task == "synthetic_word_sorting"
    assert by_dir["bbh/zs"].task == by_dir["bbh/so"].task == "word_sorting [tasks_bbh_word_sorting]"
    assert by_dir["bbh2/zs"].task == "word_sorting [other_bbh]"
    main_hash = by_dir["bbh/zs"].protocol_hash
    assert len(main_hash) == 12
    assert {r.protocol_hash for r in col.runs} == {main_hash, by_dir["bbh/so-T2"].protocol_hash}
    # The run with another protocol is listed with the differing field, and gets its own table.
    (p,) = [p for p in col.problems if p.kind == "other_protocol"]
    assert p.path == by_dir["bbh/so-T2"].path and "steps: 1 -> 2" in p.detail
    md = markdown_report(col)
    main_part, other_part = md.split(f"# Protocol `{by_dir['bbh/so-T2'].protocol_hash}`")
    assert f"# Protocol `{main_hash}` (main table)" in main_part
    header = next(line for line in main_part.splitlines() if line.startswith("| Method"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    # The paper's column sits beside each BBH dataset column, never beside the synthetic one.
    assert "synthetic_word_sorting" in cols and not [c for c in cols if c.startswith("synthetic_word_sorting:")]
    assert sum(PAPER_LABEL in c for c in cols) == 2
    assert cols.count(f"Word Sorting [tasks_bbh_word_sorting]: {PAPER_LABEL}") == 1
    assert cols.count(f"Word Sorting [other_bbh]: {PAPER_LABEL}") == 1
    # solution_opt of the main protocol has exactly one cell (its own run), not merged with T=2.
    cells = merge_cells([r for r in col.runs if r.protocol_hash == main_hash])
    so = [c for (e, t, m), c in cells.items() if m == "solution_opt"]
    assert len(so) == 1 and [r.path for r in so[0].runs] == [by_dir["bbh/so"].path]
    rows = list(csv.DictReader(io.StringIO(cells_csv(col))))
    assert {r["settings_hash"] for r in rows} == {main_hash, by_dir["bbh/so-T2"].protocol_hash}
    synth = [r for r in rows if r["task"] == "synthetic_word_sorting"]
    assert len(synth) == 1 and synth[0]["paper_gpt4omini_pct"] == "" and synth[0]["dataset"].startswith("synthetic:")
