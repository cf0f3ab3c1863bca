"""What ``mtg train`` / ``mtg eval`` / ``mtg baseline`` show: JSON on stdout, a human summary on stderr.

Scripted engines (``meta_fakes``): step outcomes are decided by the script, so the
summary's "accepted", "reverted" and "skipped (why)" are checked against runs that
really had them. The vLLM side (no INFO lines on stderr) is checked by
``tests/test_lifecycle_vllm.py``'s reference run.
"""

from __future__ import annotations

import json
import os

import pytest

from meta_fakes import register_scripted
from mtg_local import cli
from mtg_local.runs import summary

TRAIN = ["train", "--task", "synthetic_word_sorting", "--limit", "3", "--seeds", "0,1", "--steps", "1",
         "--minibatch", "2", "--answer-selection", "last", "--keep-format"]


def run_cli(capsys: pytest.CaptureFixture, argv: list[str]) -> tuple[dict, str]:
    """``mtg ARGV``: exit 0, stdout is one JSON object; returns it and stderr."""
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    return json.loads(out), err


def test_train_summary_names_accepted_reverted_and_skipped_steps(tmp_path, capsys):
    register_scripted()
    out = tmp_path / "run"
    # step 1: a candidate without the marker (reverted); step 2: with it (accepted, val 1.0);
    # step 3: every minibatch answer is right, so there is nothing to learn from (skipped)
    line, err = run_cli(capsys, [*TRAIN, "--engine", "scripted:good=2", "--outer-steps", "3", "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    assert line["run_dir"] == str(out) and line["best_step"] == 2  # stdout: the JSON as before
    text = err[err.index("mtg train: learned_loss on synthetic_word_sorting"):]
    assert "step 0: initial validation accuracy 0.0 %" in text
    assert "step 1 (minibatch accuracy 0.0 %): candidate validated: 0.0 % -> 0.0 %, reverted" in text
    assert "step 2 (minibatch accuracy 0.0 %): candidate validated: 0.0 % -> 100.0 %, accepted" in text
    assert "step 3 (minibatch accuracy 100.0 %): skipped: loss prompt: no wrong answers in the minibatch" in text
    assert "3 outer steps: 2 validated (1 accepted, 1 reverted), 1 skipped" in text
    assert "best validation accuracy 100.0 % at step 2\n" in text
    assert f"test accuracy {summary.accuracy_text(results['test_accuracy'])} (3 questions)" in text
    assert f"learned loss prompt: {out / 'learned_loss_prompt.txt'}" in text
    usage = results["engine_usage"]
    assert f"tokens: {usage['prompt_tokens']:,} prompt tokens" in text and f"{usage['calls']} engine calls" in text
    assert f"run dir: {out}" in text
    # while it ran (progress on, stderr not a terminal): no bars, one line per step, before the summary
    before = err[: err.index("mtg train:")]
    assert before.splitlines() == [
        *(summary.outer_step_line([h for h in results["history"] if h["step"] == s]) for s in range(4)),
        f"test accuracy {summary.accuracy_text(results['test_accuracy'])}"]
    assert "\r" not in err


def test_train_summary_says_why_a_step_was_skipped_and_no_progress_lines(tmp_path, capsys):
    register_scripted()
    out = tmp_path / "run"
    # the meta TGD output (the variable and a tag) is longer than 5 words: cut off, never a candidate
    _, err = run_cli(capsys, [*TRAIN, "--engine", "scripted:good=1", "--outer-steps", "1", "--meta-max-tokens", "5",
                              "--no-progress", "--out", str(out)])
    assert err.startswith("mtg train:")  # --no-progress: only the summary
    assert ("step 1 (minibatch accuracy 0.0 %): skipped: loss prompt: TGD step output cut off at max_tokens "
            "(the --meta-max-tokens cap)") in err
    assert "1 outer step: 0 validated (0 accepted, 0 reverted), 1 skipped" in err
    assert "(the starting prompts: no step was accepted)" in err


def test_eval_summary_after_from_run_and_by_hand(tmp_path, capsys):
    register_scripted()
    src = tmp_path / "src"
    # the source learns its loss prompt under a template given by hand: a transfer applies both
    run_cli(capsys, [*TRAIN, "--engine", "scripted:good=1", "--outer-steps", "1", "--template", "Sort: ",
                     "--no-progress", "--out", str(src)])
    out = tmp_path / "eval"
    line, err = run_cli(capsys, ["eval", "--task", "synthetic_word_sorting", "--engine", "fake", "--limit", "2",
                                 "--seeds", "0,1", "--steps", "2", "--split", "val", "--from-run", str(src),
                                 "--no-progress", "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    assert line["run_dir"] == str(out) and line["source_run_dir"] == str(src.resolve())
    assert line["test_accuracy"] == {"mean": results["test_accuracy"]["mean"], "std": results["test_accuracy"]["std"]}
    warning, rest = err.split("\n", 1)  # the transfer's protocol warning, when the run starts
    assert warning.startswith(f"mtg eval: warning: --from-run {src} was learned under protocol")
    assert rest.startswith("mtg eval: solution_opt on synthetic_word_sorting, engine fake\n")
    assert f"accuracy {summary.accuracy_text(results['test_accuracy'])} (val split, 2 questions)" in err
    assert "per seed: 0: " in err
    assert (f"applied: the learned loss prompt and given inference template of run {src.resolve()} (learned_loss "
            f"on synthetic_word_sorting, engine scripted:good=1, run id {results['source']['run_id']})") in err
    # another --steps than the source's: the difference is named
    assert "learned under another protocol (source -> this eval): " in err and "; steps: 1 -> 2" in err
    # a template given by hand to a run without --from-run
    assert f"run dir: {out}" in err and "wall time: " in err
    by_hand, err = run_cli(capsys, ["eval", "--task", "synthetic_word_sorting", "--engine", "fake", "--limit", "2",
                                    "--seeds", "0", "--method", "zero_shot_cot", "--template", "Sort: ",
                                    "--no-progress", "--out", str(tmp_path / "by_hand")])
    assert "applied: inference template 'Sort:'" in err and "applied: the" not in err


def test_baseline_summary(tmp_path, capsys):
    out = tmp_path / "run"
    line, err = run_cli(capsys, ["baseline", "--method", "prompt_opt", "--engine", "fake", "--limit", "3",
                                 "--seeds", "0,1", "--epochs", "1", "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    assert line["method"] == "prompt_opt" and line["learned"]["system_prompt"] == results["learned"]["system_prompt"]
    assert err.startswith("mtg baseline: prompt_opt on synthetic_word_sorting, engine fake\n")
    assert f"optimization: {len(results['history'])} steps recorded, " in err
    assert "applied at test: the learned system prompt, results.json learned.system_prompt" in err
    assert f"test accuracy {summary.accuracy_text(results['test_accuracy'])} (3 questions)" in err


def test_outer_step_line_of_several_candidates_and_a_degraded_run():
    base = {"step": 4, "train_accuracy": 0.5, "best_val_before": 0.25}
    records = [{**base, "label": "loss_prompt", "candidate": {}, "val_accuracy": 0.5, "accepted": True},
               {**base, "label": "template", "candidate": {}, "val_accuracy": 0.25, "accepted": False},
               {**base, "label": "both", "candidate": {}, "val_accuracy": 0.5, "accepted": False}]
    assert summary.outer_step_line(records) == (
        "step 4 (minibatch accuracy 50.0 %): 3 candidates validated against 25.0 %: loss_prompt 50.0 %, "
        "template 25.0 %, both 50.0 %; loss_prompt accepted")
    assert summary.outer_step_line([{**r, "accepted": False} for r in records]).endswith("; all reverted")
    text = summary.eval_summary({"status": "degraded", "method": "zero_shot_cot", "task": "arithmetic",
                                 "engine": "fake", "seeds": [0], "split": "test", "n_questions": 1,
                                 "test_accuracy": {"mean": 1.0, "std": 0.0, "per_seed": {"0": 1.0}, "n": 1},
                                 "engine_usage": {"errors": 1, "requests": 2}, "wall_s": 75.2}, "d")
    assert "accuracy 100.0 ± 0.0 % over 1 seed (test split, 1 question)" in text
    assert "1 failed" in text and "wall time: 1 min 15 s" in text and "status: degraded" in text


def test_verbose_flag_sets_vllm_log_level_unless_the_user_did(monkeypatch):
    from mtg_local.cli import build_parser, set_log_level

    parser = build_parser()
    assert parser.parse_args(["-v", "report", "x", "--out", "o"]).verbose and parser.parse_args(["report", "x", "--out", "o", "--verbose"]).verbose
    assert not parser.parse_args(["report", "x", "--out", "o"]).verbose
    monkeypatch.delenv("VLLM_LOGGING_LEVEL", raising=False)
    set_log_level(False)
    assert "VLLM_LOGGING_LEVEL" not in os.environ  # the engine sets WARNING when it imports vLLM
    set_log_level(True)
    assert os.environ["VLLM_LOGGING_LEVEL"] == "INFO"
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "DEBUG")
    set_log_level(True)
    assert os.environ["VLLM_LOGGING_LEVEL"] == "DEBUG"


def test_progress_lines_only_when_enabled(capsys):
    from mtg_local.runs import progress

    progress.note("step 1: x", enabled=True)
    progress.note("hidden", enabled=False)
    bar = progress.bar(total=2, desc="outer", unit="step", enabled=True)  # stderr is not a terminal here
    bar.update(2)
    bar.close()
    assert capsys.readouterr().err == "step 1: x\n"

