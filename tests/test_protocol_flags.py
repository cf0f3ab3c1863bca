"""Every protocol flag on every command that records a protocol (issue 19, item 8).

The meta-training settings are in every run's protocol hash, so ``mtg eval`` and
``mtg baseline`` take them too (recorded, unused), a table run at a non-default
meta setting records one hash for all its rows, and a grid may carry them under
``args.all``. The three attempts of the issue are reproduced here. Also: the flag
rendering lives below ``mtg_local.commands`` (layers point down).
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import yaml

from mtg_local import cli
from mtg_local.protocol import DEFAULT_PROTOCOL, protocol_hash
from mtg_local.protocol_flags import protocol_flags, protocol_from_args
from mtg_local.slurm.grid import GridError, load_grid

REPO = Path(__file__).parent.parent
META_FLAGS = ["--outer-steps", "1", "--minibatch", "2", "--meta-max-tokens", "64", "--meta-temperature", "0.5",
              "--max-meta-pairs", "3", "--sample-seed", "4", "--meta-step", "direct"]
META_VALUES = dict(outer_steps=1, minibatch=2, meta_max_tokens=64, meta_temperature=0.5, max_meta_pairs=3,
                   sample_seed=4, meta_step="direct")
SMALL = ["--task", "synthetic_word_sorting", "--limit", "2", "--seeds", "0", "--steps", "1", "--max-tokens", "32",
         "--optimizer-max-tokens", "32", "--engine", "fake", "--no-cache"]


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def test_every_protocol_command_takes_every_protocol_flag(tmp_path: Path) -> None:
    parser = cli.build_parser()
    out = ["--out", str(tmp_path / "x")]
    commands = {"eval": ["eval"], "train": ["train"], "baseline": ["baseline", "--method", "prompt_opt"]}
    for name, argv in commands.items():
        sub = parser._subparsers._group_actions[0].choices[name]  # the command's own parser
        options = {o for a in sub._actions for o in a.option_strings}
        assert protocol_flags() <= options, (name, sorted(protocol_flags() - options))
        got = protocol_from_args(parser.parse_args([*argv, *out, *META_FLAGS]))
        assert got == DEFAULT_PROTOCOL.replace(**META_VALUES), name


def test_eval_accepts_outer_steps_and_records_it(tmp_path: Path) -> None:
    # The first attempt: `mtg eval ... --outer-steps 1` -> "unrecognized arguments".
    out = tmp_path / "eval"
    assert cli.main(["eval", *SMALL, "--outer-steps", "1", "--out", str(out), "--no-progress"]) == 0
    res = results(out)
    assert res["status"] == "complete" and res["protocol"]["outer_steps"] == 1
    assert res["protocol_hash"] == protocol_hash(DEFAULT_PROTOCOL.replace(
        outer_steps=1, seeds=(0,), limit=2, steps=1, max_tokens=32, optimizer_max_tokens=32))


def test_eval_and_train_at_one_meta_setting_record_one_hash(tmp_path: Path) -> None:
    # The second attempt: `mtg train ... --outer-steps 1` recorded another hash than the eval could.
    setting = ["--outer-steps", "1", "--minibatch", "1", "--meta-max-tokens", "32"]
    ev, tr = tmp_path / "eval", tmp_path / "train"
    assert cli.main(["eval", "--method", "solution_opt", *SMALL, *setting, "--out", str(ev), "--no-progress"]) == 0
    assert cli.main(["train", "--method", "learned_loss", *SMALL, *setting, "--out", str(tr), "--no-progress"]) == 0
    a, b = results(ev), results(tr)
    assert a["status"] == b["status"] == "complete"
    assert a["protocol_hash"] == b["protocol_hash"] and a["protocol"] == b["protocol"]
    assert a["protocol"]["outer_steps"] == 1 and len(b["history"]) >= 2  # the train run did its outer step
    # mtg baseline records the same protocol from the same flags.
    bl = cli.build_parser().parse_args(["baseline", "--method", "copro", *SMALL, *setting, "--out", str(tmp_path)])
    assert protocol_hash(protocol_from_args(bl)) == a["protocol_hash"]


def _grid(tmp_path: Path, args: dict) -> Path:
    raw = {"name": "meta1", "runs_root": str(tmp_path / "runs"), "tasks": ["synthetic_word_sorting"],
           "methods": ["solution_opt", "learned_loss"], "engines": ["fake"], "seeds": [0], "args": args}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_grid_carries_meta_flags_under_args_all(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The third attempt: no grid could run at a non-default meta setting.
    small = ["--limit", "2", "--steps", "1", "--max-tokens", "32", "--optimizer-max-tokens", "32",
             "--meta-max-tokens", "32", "--outer-steps", "1", "--minibatch", "1"]
    with pytest.raises(GridError, match="put them under 'args.all'"):  # per command: still one protocol per grid
        load_grid(_grid(tmp_path, {"all": small[:-4], "train": small[-4:]}))
    g = _grid(tmp_path, {"all": small})
    assert cli.main(["grid", str(g), "--dry-run"]) == 0
    assert "--outer-steps 1" in capsys.readouterr().out
    assert cli.main(["grid", str(g)]) == 0
    cells = {run.method: results(run.run_dir) for run in load_grid(g).expand()}
    assert {r["status"] for r in cells.values()} == {"complete"}
    hashes = {r["protocol_hash"] for r in cells.values()}
    assert len(hashes) == 1 and cells["solution_opt"]["protocol"]["outer_steps"] == 1


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_layers_point_down_no_algorithm_imports_a_command() -> None:
    lower = [p for d in ("meta", "bench", "baselines", "grid", "slurm", "runs", "tasks", "textgrad", "report")
             for p in (REPO / "mtg_local" / d).glob("*.py")]
    lower += [REPO / "mtg_local" / f for f in ("protocol.py", "protocol_flags.py", "inner_loop.py", "evaluation.py")]
    upward = {str(p.relative_to(REPO)): sorted(m for m in _imports(p) if m.startswith("mtg_local.commands"))
              for p in lower}
    assert {k: v for k, v in upward.items() if v} == {}
