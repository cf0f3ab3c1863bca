"""Every shipped example (README commands, the grid YAML, the sbatch templates) names only
tasks, methods and flags that exist: each command line goes through the real argparse
parser of its sub-command, each grid cell is expanded and resolved."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from mtg_local.cli import build_parser
from mtg_local.slurm.grid import METHOD_COMMANDS, load_grid
from mtg_local.tasks import is_task_file, task_names

REPO = Path(__file__).parent.parent
DOCS = [REPO / "README.md", REPO / "slurm" / "README.md",
        *(REPO / "docs" / f"{name}.md" for name in ("protocol", "runs", "engines", "tasks", "gpu", "performance"))]


def shell_lines(text: str) -> list[str]:
    """Lines of ```bash blocks, continuation lines joined, comments dropped."""
    lines: list[str] = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        lines += [ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return lines


def mtg_argvs(line: str) -> list[list[str]]:
    """The ``mtg ...`` commands of one shell line (``a && .venv/bin/mtg b`` -> [b's argv])."""
    out = []
    for part in re.split(r"&&|\|\||;", line):
        words = shlex.split(part, comments=True)
        for i, w in enumerate(words):
            if w == "mtg" or w.endswith("/bin/mtg"):
                out.append(words[i + 1:])
                break
    return out


def check_argv(argv: list[str], where: str) -> None:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: unknown flag, bad choice, missing required
        pytest.fail(f"{where}: `mtg {shlex.join(argv)}` does not parse (exit {e.code})")
    if getattr(args, "task", None) is not None and args.command in ("eval", "train", "baseline"):
        tasks = args.task.split(",") if args.command == "train" else [args.task]  # train: A,B = multi-task
        for task in tasks:  # a registered name, or a task file (the docs' examples name files of their own)
            assert task in task_names() or is_task_file(task), f"{where}: unknown task {task!r} in `mtg {shlex.join(argv)}`"


def readme_commands() -> list[tuple[str, list[str]]]:
    found = []
    for doc in DOCS:
        for line in shell_lines(doc.read_text()):
            found += [(doc.name, argv) for argv in mtg_argvs(line)]
    return found


def test_readme_has_the_paper_setup_on_paper_tasks() -> None:
    cmds = readme_commands()
    assert len(cmds) >= 10
    gpt = [a for _, a in cmds if "openai:gpt-4o-mini" in a]
    bbh = {"word_sorting", "bbh_word_sorting"}  # BBH word sorting and its alias; never the generated set
    assert gpt and all("--task" in a and a[a.index("--task") + 1] in bbh for a in gpt)
    assert "docs/protocol.md" in (REPO / "README.md").read_text()


@pytest.mark.parametrize("where, argv", readme_commands(), ids=lambda v: v if isinstance(v, str) else " ".join(v[:2]))
def test_readme_commands_parse(where: str, argv: list[str]) -> None:
    check_argv(argv, where)


def test_grid_example_cells_resolve(tmp_path: Path) -> None:
    grid = load_grid(REPO / "slurm" / "grid_example.yaml", runs_root=str(tmp_path))
    runs = grid.expand()
    assert len(runs) == len(grid.tasks) * len(grid.methods) * len(grid.engines)
    for r in runs:
        assert r.task.name in task_names(), r.task.name
        assert METHOD_COMMANDS[r.method] == r.command
        check_argv(list(r.argv), f"grid cell {r.task.label}/{r.method}/{r.engine.label}")
    # one protocol across the grid: the protocol flags of every cell are the same
    from mtg_local.protocol_flags import protocol_from_args

    protocols = {protocol_from_args(build_parser().parse_args(list(r.argv))) for r in runs}
    assert len(protocols) == 1


def test_transfer_grid_example_cells_resolve(tmp_path: Path) -> None:
    from mtg_local.protocol_flags import protocol_from_args

    grid = load_grid(REPO / "slurm" / "grid_transfer_example.yaml", runs_root=str(tmp_path))
    runs = grid.expand()
    names = {r.name for r in runs}
    transfers = [r for r in runs if r.after]
    assert transfers and all(set(r.after) <= names and "--from-run" in r.argv for r in transfers)
    assert any(r.task.is_multi and r.command == "train" for r in runs)
    for r in runs:
        check_argv(list(r.argv), f"grid cell {r.name}")
    assert len({protocol_from_args(build_parser().parse_args(list(r.argv))) for r in runs}) == 1


def sbatch_examples() -> list[tuple[str, str, str]]:
    """(file, task, method) of every MTG_TASK/MTG_METHOD a template or doc names, plus the defaults."""
    default_task = re.search(r'MTG_TASK:=([^}"]+)', (REPO / "slurm/lib/single_run.sh").read_text()).group(1)
    default_method = re.search(r'MTG_METHOD:=([^}"]+)', (REPO / "slurm/lib/single_run.sh").read_text()).group(1)
    found = [("single_run.sh", default_task, default_method)]
    for f in sorted((REPO / "slurm").glob("*.sbatch")) + [REPO / "slurm" / "README.md"]:
        for line in f.read_text().splitlines():
            if "sbatch" in line and "--export=" in line:
                env = dict(kv.split("=", 1) for kv in re.findall(r"(MTG_[A-Z]+=[^,\s]+)", line))
                found.append((f.name, env.get("MTG_TASK", default_task), env.get("MTG_METHOD", default_method)))
    return found


@pytest.mark.parametrize("where, task, method", sbatch_examples())
def test_sbatch_template_commands_parse(where: str, task: str, method: str, tmp_path: Path) -> None:
    assert method in METHOD_COMMANDS, f"{where}: unknown method {method!r}"
    # the command single_run.sh builds (slurm/lib/single_run.sh), with the fake engine
    argv = [METHOD_COMMANDS[method], "--task", task, "--method", method, "--engine", "fake", "--out", str(tmp_path)]
    check_argv(argv, where)


def test_sbatch_templates_build_their_command_from_single_run() -> None:
    """The single-run templates only source single_run.sh (checked above); the array one evals the manifest;
    the --shared one runs `mtg grid` on the grid file."""
    for f in sorted((REPO / "slurm").glob("*.sbatch")):
        text = f.read_text()
        assert "single_run.sh" in text or "MTG_MANIFEST" in text or "mtg_run_grid \"$MTG_GRID\"" in text, f.name
    assert "--seeds" in (REPO / "slurm/lib/single_run.sh").read_text()  # only when MTG_SEEDS is set


@pytest.mark.parametrize("args, flag", [({"solution_opt": ["--steps", "5"]}, "--steps"),
                                        ({"train": ["--seeds=0,1"]}, "--seeds=0,1")])
def test_grid_rejects_per_method_protocol_flags(tmp_path: Path, args: dict, flag: str) -> None:
    from mtg_local.slurm.grid import GridError, parse_grid

    raw = {"name": "g", "tasks": ["bbh_word_sorting"], "methods": ["solution_opt", "maml"], "engines": ["fake"],
           "args": args}
    with pytest.raises(GridError, match=re.escape(flag)):
        parse_grid(raw, runs_root=str(tmp_path))
    ok = parse_grid({**raw, "args": {"all": ["--steps", "5"]}}, runs_root=str(tmp_path))
    assert all("--seeds" not in r.argv and r.argv[r.argv.index("--steps") + 1] == "5" for r in ok.expand())
