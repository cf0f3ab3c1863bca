"""The Python API: ``evaluate``, ``train`` and ``baseline`` run ``mtg eval``/``train``/``baseline``.

Each takes the settings of its command as keyword arguments -- the options' names with
``_`` for ``-`` (``out="runs/x"``, ``method="learned_loss"``, ``outer_steps=1``,
``seeds=[0]``, ``max_tokens=64``, ``no_cache=True``) -- builds that command line,
parses it with the command's own parser (same defaults, same checks) and calls the
command's run function, which writes the run dir; it returns the results dict
(results.json's body). Nothing here repeats what a command does.

Two settings also take Python objects:

* ``task``: a name, a task file, or a ``Task`` subclass, ``Task`` instance or
  ``TaskDefinition`` (registered in this process under its name, ``register_task``);
* ``engine`` / ``optimizer_engine`` (``reflection_engine`` for GEPA): a spec string,
  or a ready ``engines.Engine`` the run uses and leaves open.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engines.errors import UserError

_ENGINE_KEYS = ("engine", "optimizer_engine", "reflection_engine")


def _subparser(command: str) -> argparse.ArgumentParser:
    from mtg_local.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, set, frozenset)):
        return ",".join(str(v) for v in value)
    return str(value)


def _flag(action: argparse.Action) -> str:
    return next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])


def command_argv(command: str, settings: dict[str, Any]) -> list[str]:
    """``mtg COMMAND`` arguments for ``settings`` (option names with ``_``; None = the default).

    Raises:
        UserError: a setting that is no option of the command, or a value it cannot take.
    """
    parser = _subparser(command)
    by_dest: dict[str, list[argparse.Action]] = {}
    for a in parser._actions:
        if a.option_strings and a.dest != "help":
            by_dest.setdefault(a.dest, []).append(a)
    argv = [command]
    for key, value in settings.items():
        if value is None:
            continue
        actions = by_dest.get(key)
        if not actions:
            known = ", ".join(sorted(by_dest))
            raise UserError(f"unknown setting {key!r} for mtg {command}; its settings are: {known}")
        if isinstance(value, bool):
            wanted = argparse._StoreTrueAction if value else argparse._StoreFalseAction
            switch = next((a for a in actions if isinstance(a, wanted)), None)
            takes = next((a for a in actions if a.nargs != 0), None)
            if switch is not None:
                argv.append(_flag(switch))
            elif takes is not None:
                argv += [_flag(takes), _text(value)]
            elif value:  # a store_true option given True has no "off" form: False is its default
                raise UserError(f"setting {key!r} of mtg {command} cannot be {value!r}")
            continue
        action = next((a for a in actions if a.nargs != 0), None)
        if action is None:
            raise UserError(f"setting {key!r} of mtg {command} is a switch: give True or False, got {value!r}")
        if isinstance(action, argparse._AppendAction):
            for v in value if isinstance(value, (list, tuple)) else [value]:
                argv += [_flag(action), _text(v)]
        elif action.nargs in ("+", "*"):
            argv += [_flag(action), *map(_text, value if isinstance(value, (list, tuple)) else [value])]
        else:
            argv += [_flag(action), _text(value)]
    return argv


def _task_setting(task: Any) -> str | None:
    """A ``task`` setting as the command line names it (objects are registered in this process)."""
    if task is None or isinstance(task, str):
        return task
    if isinstance(task, Path):
        return str(task)
    if isinstance(task, (list, tuple)):
        return ",".join(_task_setting(t) or "" for t in task)
    from mtg_local.tasks import Task, TaskDefinition, register_task

    if isinstance(task, TaskDefinition) or isinstance(task, Task) or (isinstance(task, type) and issubclass(task, Task)):
        register_task(task, replace=True)
        return task.name
    raise UserError(f"task must be a name, a task file, a Task subclass or instance or a TaskDefinition, "
                    f"got {type(task).__name__}")


def _parse(command: str, settings: dict[str, Any]) -> tuple[argparse.Namespace, dict[str, Any]]:
    """Parsed arguments of ``mtg COMMAND`` for ``settings``, and the engine objects given."""
    objects = {k: settings[k] for k in _ENGINE_KEYS if settings.get(k) is not None and not isinstance(settings[k], str)}
    settings = {**settings, "task": _task_setting(settings.get("task"))}
    for k, e in objects.items():
        settings[k] = getattr(e, "spec", None) or "fake"
    argv = command_argv(command, settings)
    from mtg_local.cli import build_parser

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse has printed what is wrong
        raise UserError(f"bad settings for mtg {command} (see the message above): {' '.join(argv)}") from e
    return args, objects


def evaluate(*, out: str | Path, **settings: Any) -> dict[str, Any]:
    """Runs ``mtg eval`` (zero-shot CoT or solution optimization) with ``settings``; returns the results dict.

    Example: ``evaluate(task="my_task.yaml", method="zero_shot_cot", out="runs/zs", limit=10, seeds=[0])``.
    """
    from mtg_local.commands.eval import run_eval
    from mtg_local.runs.lock import RunDirLock

    args, engines = _parse("eval", {**settings, "out": str(out)})
    with RunDirLock(args.out):
        return run_eval(args, engine=engines.get("engine"), optimizer_engine=engines.get("optimizer_engine"))


def train(*, out: str | Path | None = None, resume: str | Path | None = None, **settings: Any) -> dict[str, Any]:
    """Runs ``mtg train`` (learned_loss, maml, reptile, joint) with ``settings``; returns the results dict.

    ``task`` may name several tasks (a list, or "A,B"): one loss prompt / template across them.
    """
    from mtg_local.commands.train import config_from_args
    from mtg_local.meta.train_run import run_train
    from mtg_local.runs.lock import RunDirLock

    args, engines = _parse("train", {**settings, "out": out and str(out), "resume": resume and str(resume)})
    config, resuming = config_from_args(args)
    with RunDirLock(config.out):
        return run_train(config, resume=resuming, engine=engines.get("engine"),
                         optimizer_engine=engines.get("optimizer_engine"))


def baseline(*, out: str | Path, method: str, **settings: Any) -> dict[str, Any]:
    """Runs ``mtg baseline`` (prompt_opt, copro, miprov2, gepa) with ``settings``; returns the results dict."""
    from mtg_local.commands.baseline import config_from_args, run_baseline
    from mtg_local.runs.lock import RunDirLock

    args, engines = _parse("baseline", {**settings, "out": str(out), "method": method})
    cfg = config_from_args(args)
    optimizer = engines.get("optimizer_engine") or engines.get("reflection_engine")
    with RunDirLock(cfg.out):
        return run_baseline(cfg, engine=engines.get("engine"), optimizer_engine=optimizer)


__all__: Sequence[str] = ("baseline", "command_argv", "evaluate", "train")
