"""The ``ddpm`` command: train, sample, evaluate and serve.

Each subcommand lives in its own module with ``add_parser(subparsers)`` and ``run(args)``;
errors a user can cause end as one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ddpm_core.errors import UsageError

# subcommand -> module that defines add_parser() and run(); imported only when needed
COMMANDS = {
    "train": "ddpm_core.cli.train",
    "sample": "ddpm_core.cli.sample",
    "evaluate": "ddpm_core.cli.evaluate",
    "export": "ddpm_core.cli.export",
    "serve": "worker.serve",
}
OWN_PACKAGES = ("ddpm_core", "worker", "api")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddpm", description="Train and sample denoising diffusion models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    subparsers.required = True
    for name, module_name in COMMANDS.items():
        if only is not None and name != only:
            subparsers.add_parser(name, add_help=False)
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if (error.name or "").split(".")[0] in OWN_PACKAGES:
                raise  # a bug of ours, not a missing optional dependency
            sub = subparsers.add_parser(name, help=f"(unavailable: {error})")
            sub.set_defaults(unavailable=f"'ddpm {name}' is unavailable: {error}")
            continue
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # import only the module of the chosen subcommand (torch-free 'serve' stays fast)
    chosen = next((arg for arg in argv if arg in COMMANDS), None)
    parser = build_parser(only=chosen)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if getattr(args, "unavailable", None):
        print(f"ddpm: error: {args.unavailable}", file=sys.stderr)
        return 2
    from ddpm_core.checkpoint_header import CheckpointError
    from ddpm_core.data.mnist import DatasetError

    try:
        return int(args.run(args) or 0)
    except (UsageError, CheckpointError, DatasetError, ValueError, OSError) as error:
        print(f"ddpm: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ddpm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
