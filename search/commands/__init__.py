"""One module per ``mcaas-search`` subcommand, each with ``add_arguments(parser)`` and
``run(args) -> int``; the flags several commands share are defined here once."""

from __future__ import annotations

import argparse

from search.study import storage_url


def add_storage_argument(parser: argparse.ArgumentParser) -> None:
    """``--storage``, as every command that reads existing studies takes it."""
    parser.add_argument(
        "--storage",
        default=None,
        help=f"study storage: journal file or RDB URL (default: {storage_url(None)})",
    )
