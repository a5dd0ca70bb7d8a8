"""The ``mcaas-search`` command: parses arguments, builds a config, calls the library.

Bad input ends in one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
from collections.abc import Sequence
from typing import Any

from search.errors import USER_ERRORS
from search.interrupts import redeliver_lost_interrupts

# name -> (module under search.commands, one-line help); imported lazily so `--help` stays fast.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("run", "search the compression pipeline (default when no command is given)"),
    "train": ("train", "train a teacher model and save its checkpoint"),
    "inspect": ("inspect", "analyse a teacher: what can be pruned or removed, operators, latency, epoch time"),
    "try": ("try_config", "run one pipeline config and print its metrics"),
    "report": ("report", "write the HTML report and trials.csv of a study"),
    "show": ("show", "show one trial of a study"),
    "export": ("export", "export a trial's model with a JSON sidecar"),
    "list": ("list_studies", "list the studies in a storage"),
    "bench": ("bench", "benchmark the search against the fixed profiles and random search"),
    "serve": ("serve", "serve the search as an HTTP API and a web page (jobs run in worker processes)"),
}

def one_line(message: str) -> str:
    """``message`` on one line (it may echo user input holding line breaks)."""
    return " ".join(message.splitlines())


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except ``None`` (no default) and flags' ``False``."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """argparse, but its usage errors are one line and exit 2 like every other bad input."""

    commands: dict[str, argparse.ArgumentParser]

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


def build_parser(command: str | None = None) -> _Parser:
    """The parser; only ``command``'s module is imported and given its flags (keeps start-up fast)."""
    parser = _Parser(
        prog="mcaas-search",
        description="Search the compression of a trained PyTorch model (prune, distill, cluster, "
        "quantize) for the Pareto front under an accuracy-drop limit.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="With no COMMAND, `run` is meant: `mcaas-search --target size --max-drop 1` searches the "
        "built-in demo.\n`mcaas-search COMMAND --help` describes every flag of COMMAND with its default.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    parser.commands = {}
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            formatter_class=_HelpFormatter,
        )
        parser.commands[name] = p
        if name == command:
            handler = importlib.import_module(f"search.commands.{module}")
            handler.add_arguments(p)
            p.set_defaults(handler=handler.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    args_list = list(given)
    if args_list in (["-h"], ["--help"]):
        # The commands, then every flag of the default command with its default.
        print(build_parser().format_help())
        print(build_parser("run").commands["run"].format_help())
        return 0
    # `mcaas-search --target size ...` means `mcaas-search run --target size ...`.
    if not args_list or args_list[0] not in COMMANDS:
        args_list.insert(0, "run")
    try:
        # Inside the try: a command's flags may need an optional extra (serve: the service).
        parser = build_parser(args_list[0])
        args = parser.parse_args(args_list)
        # The command line as given (what `train` records beside a checkpoint).
        args.command_line = "mcaas-search " + shlex.join(given)
        with redeliver_lost_interrupts():
            return int(args.handler(args) or 0)
    except USER_ERRORS as exc:
        print(f"mcaas-search: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except Exception as exc:
        lost = _lost_database(exc)
        if lost is None:
            raise
        # A database server lost mid-run (restarted, unreachable): what it holds is intact (each
        # write is a transaction; the trial that was running is re-run on resume).
        print(
            f"mcaas-search: error: lost the study database: {one_line(str(lost.orig or lost))}; "
            "what it holds is intact: run the same command again to continue",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("mcaas-search: interrupted", file=sys.stderr)
        return 130


def _lost_database(exc: BaseException) -> Any:
    """SQLAlchemy's "the database connection failed" error that ``exc`` is or wraps (Optuna
    re-raises it as ``StorageInternalError`` from a failed commit), or None. SQLAlchemy is
    imported only by a run that used a database, so it is looked up without importing it."""
    sqlalchemy = sys.modules.get("sqlalchemy.exc")
    if sqlalchemy is None:
        return None
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, sqlalchemy.OperationalError):
            return seen
        seen = seen.__cause__
    return None


if __name__ == "__main__":
    raise SystemExit(main())
