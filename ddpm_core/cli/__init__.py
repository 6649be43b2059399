"""The ``ddpm`` command: train, sample, evaluate and export, plus subcommands other packages add.

Each subcommand lives in its own module with ``add_parser(subparsers)`` and ``run(args)``.
The built-in ones are listed here; other installed packages add theirs through the entry-point
group ``ddpm.commands`` (name: the subcommand, value: the module path), e.g.::

    [project.entry-points."ddpm.commands"]
    serve = "worker.serve"

Only the chosen subcommand's module is imported (so a torch-free subcommand stays torch-free);
one whose third-party dependency is missing is listed as unavailable. Errors a user can cause
end as one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from importlib.metadata import entry_points
from types import ModuleType

from ddpm_core.errors import DDPMError

logger = logging.getLogger(__name__)

# built-in subcommand -> module that defines add_parser() and run(); imported only when needed
BUILTIN_COMMANDS = {
    "train": "ddpm_core.cli.train",
    "sample": "ddpm_core.cli.sample",
    "evaluate": "ddpm_core.cli.evaluate",
    "export": "ddpm_core.cli.export",
    "data": "ddpm_core.cli.data",
}
ENTRY_POINT_GROUP = "ddpm.commands"


def discover_commands() -> dict[str, str]:
    """Subcommand name -> module path: the built-in ones, then those of the ``ddpm.commands`` entry points.

    A built-in name cannot be taken over; an entry point naming one is logged and skipped.
    """
    commands = dict(BUILTIN_COMMANDS)
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name in commands:
            logger.warning(
                "ignoring entry point %s = %s: 'ddpm %s' is already defined by %s",
                entry_point.name,
                entry_point.value,
                entry_point.name,
                commands[entry_point.name],
            )
            continue
        commands[entry_point.name] = entry_point.module
    return commands


def _import_command(name: str, module_name: str) -> ModuleType | str:
    """The subcommand's module, or why it is unavailable (a missing third-party package).

    A missing module inside the command's own package, or inside ddpm_core, is a bug and raises.
    """
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        own_package = module_name.split(".")[0]
        is_the_command_itself = module_name == missing or module_name.startswith(missing + ".")
        if not is_the_command_itself and missing.split(".")[0] in (own_package, "ddpm_core"):
            raise
        return f"'ddpm {name}' is unavailable: {error}"
    missing_functions = [
        function for function in ("add_parser", "run") if not callable(getattr(module, function, None))
    ]
    if missing_functions:
        return f"'ddpm {name}' is unavailable: {module_name} does not define {' and '.join(missing_functions)}()"
    return module


def build_parser(only: str | None = None, commands: dict[str, str] | None = None) -> argparse.ArgumentParser:
    """The ``ddpm`` parser; with ``only``, just that subcommand's module is imported (the others get stubs)."""
    commands = discover_commands() if commands is None else commands
    parser = argparse.ArgumentParser(prog="ddpm", description="Train and sample denoising diffusion models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="{" + ",".join(commands) + "}")
    subparsers.required = True
    for name, module_name in commands.items():
        if only is not None and name != only:
            subparsers.add_parser(name, add_help=False)
            continue
        module = _import_command(name, module_name)
        if isinstance(module, str):
            sub = subparsers.add_parser(name, help=f"(unavailable: {module.split(': ', 1)[-1]})")
            sub.set_defaults(unavailable=module)
            continue
        module.add_parser(subparsers)
        if name not in subparsers.choices:
            raise RuntimeError(f"{module_name}.add_parser() did not add a subcommand named {name!r}")
        subparsers.choices[name].set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``ddpm`` with ``argv`` (default: the process's arguments); returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    commands = discover_commands()
    # import only the module of the chosen subcommand (a torch-free subcommand stays fast)
    chosen = next((arg for arg in argv if arg in commands), None)
    parser = build_parser(only=chosen, commands=commands)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if getattr(args, "unavailable", None):
        print(f"ddpm: error: {args.unavailable}", file=sys.stderr)
        return 2
    try:
        return int(args.run(args) or 0)
    except (DDPMError, ValueError, OSError) as error:
        print(f"ddpm: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ddpm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
