"""``mtg train``: metaTextGrad meta-training (learned loss, MAML/Reptile templates, joint).

A run lives in ``--out RUN_DIR``: config.json, events.jsonl, checkpoint.json
(after every outer step and after the test evaluation), cache.sqlite,
results.json, trajectories.jsonl and the learned artifacts as text files.
``mtg train --resume RUN_DIR`` continues a killed or preempted run from its
config.json and checkpoint; replayed requests are served by the run's cache.
On resume only --engine-opt, --cache/--no-cache, --schedule and --no-progress
are read from the command line; everything else (the protocol included) comes from
RUN_DIR/config.json.

Multi-task: ``--task A,B[,C]`` meta-trains ONE loss prompt / template across the
tasks (local files: ``--data-file TASK=FILE`` per task). Each outer minibatch is
drawn across the tasks, a candidate is kept only if the mean of the per-task
validation accuracies beats the best so far, and the test split of every task is
evaluated; the loss prompt starts from the first task's (docs/results_schema.md).

Output: a JSON summary on stdout; on stderr, progress (bars on a terminal, one line
per outer step otherwise; none with --no-progress) and at the end a short human
summary (each outer step validated or skipped, accepted or reverted; the learned
prompt's file; tokens; wall time). vLLM logs warnings only unless --verbose or
VLLM_LOGGING_LEVEL is set.

Exit status: 0 done; 2 user error; 99 stopped by SIGUSR1/SIGTERM ("requeue
me": resume with --resume RUN_DIR); 130 stopped by SIGINT. SIGUSR1 stops at the
next stage boundary; SIGTERM/SIGINT (also when sent to the whole process group,
engine included) abort the running stage at once. Either way the checkpoint of
the last completed stage is kept and results.json says "interrupted".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from engines.errors import UserError
from mtg_local.commands.common import add_engine_args
from mtg_local.commands.eval import read_text_arg, task_help
from mtg_local.protocol_flags import add_protocol_args, protocol_from_args
from mtg_local.meta.meta_config import JOINT_TEMPLATE_UPDATES, METHODS, MetaConfig
from mtg_local.meta.train_run import LOSS_PROMPT_FILE, TEMPLATE_FILE, run_train
from mtg_local.runs.interrupt import Interrupted
from mtg_local.runs.health import exit_code
from mtg_local.runs.lock import RunDirLock
from mtg_local.runs.run_dir import RunDir, read_json
from mtg_local.runs.summary import end_of_run, train_summary
from mtg_local.tasks import task_names

_D = MetaConfig(out="-")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="meta-train a loss prompt and/or inference template (resumable; exit 99 = preempted, requeue; 130 = Ctrl-C)",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", default=_D.task, metavar="NAME|FILE.yaml[,...]", help=task_help(several=True))
    p.add_argument("--method", default=_D.method, choices=METHODS, help="default: %(default)s")
    p.add_argument("--data-file", action="append", default=[], metavar="FILE|TASK=FILE",
                   help="load the task from a local file; with several tasks, TASK=FILE once per task that reads one")
    p.add_argument("--out", default=None, metavar="RUN_DIR", help="run directory of a new run")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument("--joint-template", default=_D.joint_template, choices=JOINT_TEMPLATE_UPDATES,
                   help="template update of --method joint (default: %(default)s)")
    p.add_argument("--loss-prompt", default=None, metavar="TEXT|@FILE", help="starting loss prompt (default: the task's)")
    p.add_argument("--template", default=None, metavar="TEXT|@FILE",
                   help="starting inference template (default: the task's, else the paper's)")
    add_protocol_args(p, meta=True)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_engine_args(p, optimizer=True, schedule=True)
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> tuple[MetaConfig, bool]:
    """The run's config and whether it resumes one."""
    if args.resume:
        if args.out and args.out != args.resume:
            raise UserError("give either --out (new run) or --resume RUN_DIR, not both")
        rd = RunDir(args.resume)
        # No checkpoint yet (stopped before the first stage finished, e.g. while the engine
        # started): the resumed run starts at the beginning with the stored settings.
        if not rd.config_path.exists():
            raise UserError(f"{rd.path} has no config.json to resume from")
        stored = read_json(rd.config_path).get("train")
        if not isinstance(stored, dict):
            raise UserError(f"{rd.config_path} is not the config of an mtg train run")
        if not isinstance(stored.get("protocol"), dict):
            # Resuming under today's defaults would silently change T, sampling and answer selection mid-run.
            raise UserError(f"{rd.config_path} records no protocol (written by an older mtg); start a new run")
        overrides: dict[str, Any] = {"out": args.resume, "progress": not args.no_progress}
        if args.engine_opt:
            overrides["engine_opts"] = tuple(args.engine_opt)
        if args.no_cache:
            overrides["no_cache"] = True
        if args.cache:
            overrides["cache"] = args.cache
        if getattr(args, "schedule", None):
            overrides["schedule"] = args.schedule
        return MetaConfig.from_dict(stored, **overrides), True
    if not args.out:
        raise UserError("--out RUN_DIR is required (or --resume RUN_DIR)")
    if RunDir(args.out).checkpoint_path.exists():
        raise UserError(f"{args.out} already holds a run; continue it with --resume {args.out}")
    config = MetaConfig(
        out=args.out,
        task=args.task,
        method=args.method,
        engine=args.engine,
        optimizer_engine=args.optimizer_engine,
        engine_opts=tuple(args.engine_opt),
        **data_file_args(args.data_file, args.task),
        protocol=protocol_from_args(args),
        joint_template=args.joint_template,
        initial_loss_prompt=read_text_arg(args.loss_prompt, "--loss-prompt"),
        initial_template=read_text_arg(args.template, "--template"),
        cache=args.cache,
        no_cache=args.no_cache,
        progress=not args.no_progress,
        schedule=getattr(args, "schedule", None) or "phase",
    )
    return config, False


def data_file_args(values: list[str] | str | None, task: str) -> dict[str, Any]:
    """``MetaConfig`` keywords from the --data-file values: a plain FILE, or TASK=FILE entries.

    An entry is TASK=FILE when the text before its first "=" is a task name; any
    other text is a file path (which may itself hold "=").
    """
    from mtg_local.tasks import resolve_task_name

    if values is None or isinstance(values, str):
        values = [] if values is None else [values]
    known = {resolve_task_name(n) for n in task_names()}
    plain: list[str] = []
    pairs: list[tuple[str, str]] = []
    for v in values:
        name, sep, path = v.partition("=")
        if sep and resolve_task_name(name) in known:
            if not path:
                raise UserError(f"--data-file {v}: no file after '='")
            pairs.append((name, path))
        else:
            plain.append(v)
    if len(plain) > 1 or (plain and pairs):
        raise UserError(f"--data-file: one plain FILE for a single task, else TASK=FILE entries; got {values}")
    return {"data_file": plain[0] if plain else None, "data_files": tuple(pairs)}


def run(args: argparse.Namespace) -> int:
    config, resume = config_from_args(args)
    try:
        with RunDirLock(config.out):  # one process per run dir (released by the kernel on death)
            results = run_train(config, resume=resume)
    except Interrupted as e:
        print(f"mtg train: {e}; resume with: mtg train --resume {config.out}", file=sys.stderr)
        return e.exit_code
    acc = results["test_accuracy"]
    summary = {
        "run_dir": config.out,
        "method": config.method,
        "test_accuracy": {"mean": acc["mean"], "std": acc["std"]},
        **({"test_accuracy_per_task": {t: r["test_accuracy"]["mean"] for t, r in results["per_task"].items()}}
           if results.get("per_task") else {}),
        "initial_val_accuracy": results["initial_val_accuracy"],
        "best_val_accuracy": results["best_val_accuracy"],
        "best_step": results["best_step"],
        "learned": {k: v for k, v in results["learned"].items() if v is not None},
        "engine_calls": results["engine_usage"]["calls"],
        "wall_s": results["wall_s"],
        "status": results.get("status", "complete"),
    }
    files = {"loss_prompt": LOSS_PROMPT_FILE, "template": TEMPLATE_FILE}
    end_of_run(summary, train_summary(results, config.out, files))
    # A finished train run's checkpoint holds its test result, so --resume would not retry:
    # a new run dir reusing this one's cache regenerates only what failed.
    cache = config.cache or str(Path(config.out) / "cache.sqlite")
    retry = "rerun into a new --out" + ("" if config.no_cache else f" with --cache {cache}")
    return exit_code(results, "train", config.out, retry=retry)
