"""The ``mtg`` command line.

Each sub-command lives in its own module under ``mtg_local.commands`` and
exposes ``register(subparsers)``; this file only assembles them and turns
user errors into one-line messages (no traceback): exit 2 for a ``UserError``,
3 for an engine that did not start or is not there (``EngineStartError``,
e.g. no usable GPU, and ``EngineUnreachableError``). A command may set a
``preflight(args)`` default (``add_engine_args`` does): it runs before the
command, so such a stop leaves no run dir behind.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from engines.errors import EngineStartError, EngineUnreachableError, UserError
from mtg_local.runs.interrupt import ALL_STOP_SIGNALS, Interrupted, StopFlag, interruption, signal_name
from mtg_local.runs.interrupt import stop_on_signals

# Modules that add sub-commands, in the order they appear in ``mtg --help``.
COMMAND_MODULES = [
    "mtg_local.commands.generate",
    "mtg_local.commands.eval",
    "mtg_local.commands.baseline",
    "mtg_local.commands.train",
    "mtg_local.commands.grid",
    "mtg_local.commands.slurm",
    "mtg_local.commands.report",
    "mtg_local.commands.prepare",
    "mtg_local.commands.bench",
    "mtg_local.commands.doctor",
]


VERBOSE_HELP = "show vLLM's INFO log (stats every 10 s, start-up, shutdown); default: warnings and errors only, " \
               "unless VLLM_LOGGING_LEVEL is set"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtg",
        description="metaTextGrad on local open-weight models (vLLM), with the paper's tasks and baselines.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    for p in sub.choices.values():  # also after the command; SUPPRESS keeps a global -v set
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return parser


def set_log_level(verbose: bool) -> None:
    """vLLM's log level for this process and its children (engine cores, servers): INFO with --verbose.

    Read by vLLM when it is first imported; without --verbose the engines set WARNING
    (``engines.vllm_engine.import_vllm``). A VLLM_LOGGING_LEVEL the user set always wins.
    """
    if verbose:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO")


def main(argv: list[str] | None = None) -> int:
    stop = StopFlag()
    command = "mtg"
    try:
        # Until a command installs its own handlers (around its run, after the engine has
        # started), a stop signal ends the command at once as an interruption: exit 99 (SIGINT:
        # 130) so a SLURM job requeues, not the default death by signal (143, 138). The window
        # covers the imports of the sub-commands too (seconds): a job's --signal can land there.
        try:
            with stop_on_signals(stop, abort_on=ALL_STOP_SIGNALS):
                args = build_parser().parse_args(argv)
                command = f"mtg {args.command}"
                set_log_level(args.verbose)
                preflight = getattr(args, "preflight", None)
                if preflight is not None:  # e.g. no usable GPU: stop before a run dir is created
                    preflight(args)
                rc = args.func(args)
        except Exception as e:
            # e.g. vLLM's start-up wrapped the Interrupted our handler raised inside it
            intr = interruption(e, stop, grace_s=0) if stop else None
            if intr is None:
                raise
            raise intr from e
    except Interrupted as e:
        print(f"{command}: stopped by {signal_name(e.signum)} (exit {e.exit_code}); what had finished "
              f"is kept: run the same command again", file=sys.stderr)
        return e.exit_code
    except UserError as e:
        print(f"{command}: error: {e}", file=sys.stderr)
        return 2
    except (EngineStartError, EngineUnreachableError) as e:  # the engine did not start or is not there:
        # nothing was run. One line, whatever the backend's message looks like.
        print(f"{command}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
