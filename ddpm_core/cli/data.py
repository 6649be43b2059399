"""``ddpm data fetch mnist``: download the MNIST files, verified, into a data directory. Torch-free."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ddpm_core.data.mnist_source import DEFAULT_MIRRORS, DEFAULT_MNIST_DIR, MIRRORS_ENV, SHA256_ENV, MnistSource
from ddpm_core.errors import UsageError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``ddpm data`` and its ``fetch`` subcommand to the ``ddpm`` subcommands."""
    parser = subparsers.add_parser(
        "data", help="fetch data sets", description="Download the data sets ddpm train and ddpm evaluate read."
    )
    actions = parser.add_subparsers(dest="data_action", metavar="{fetch}")
    actions.required = True
    fetch = actions.add_parser(
        "fetch",
        help="download a data set",
        description=(
            "Download the four MNIST files (train and t10k images and labels, *-ubyte.gz) into --dir, each "
            "checked against the SHA-256 of its content; files already there with the right checksum are kept. "
            "A download cut short resumes where it stopped (HTTP Range); an unreachable mirror passes to the next. "
            f"Mirrors: --mirror, else ${MIRRORS_ENV} (comma- or space-separated URLs), else "
            f"{', '.join(DEFAULT_MIRRORS)}. ${SHA256_ENV}=NAME=HEX,... replaces checksums (a mirror of other files)."
        ),
    )
    fetch.add_argument("dataset", choices=("mnist",), help="the data set")
    fetch.add_argument(
        "--dir",
        type=Path,
        default=Path(DEFAULT_MNIST_DIR),
        help=f"where to put the files (default {DEFAULT_MNIST_DIR})",
    )
    fetch.add_argument(
        "--mirror",
        action="append",
        metavar="URL",
        help="a base URL holding the files (repeat for several, tried in order; replaces the default list)",
    )
    fetch.add_argument("--retries", type=int, default=3, help="tries per mirror of a download that breaks off")
    fetch.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a mirror (default 30)")
    fetch.add_argument(
        "--no-progress", action="store_true", help="no progress bar (none when stderr is not a terminal)"
    )


def run(args: argparse.Namespace) -> int:
    """Run ``ddpm data fetch`` with parsed ``args``; prints each file and the directory; returns 0."""
    from ddpm_core.data.download import fetch_mnist  # httpx: imported when a download runs

    if args.retries < 1 or args.timeout <= 0:
        raise UsageError("--retries must be at least 1 and --timeout positive")
    if not args.verbose:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request; the files are printed below
    source = MnistSource.configured(args.mirror)
    fetched = fetch_mnist(args.dir, source, progress=not args.no_progress, retries=args.retries, timeout_s=args.timeout)
    for item in fetched:
        print(f"{item.path}: " + (f"downloaded from {item.source}" if item.source else "already there, checksum good"))
    print(f"MNIST is in {args.dir.resolve()}; train on it with: ddpm train --dataset mnist --data-dir {args.dir}")
    return 0
