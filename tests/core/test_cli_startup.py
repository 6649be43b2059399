"""``ddpm --help``, every subcommand's ``--help`` and ``ddpm data fetch`` start without torch (a
fresh interpreter, sys.modules checked after each command): help is instant, not a 2 s import."""

from __future__ import annotations

import json
import subprocess
import sys

COMMANDS = [
    ["--help"],
    ["train", "--help"],
    ["sample", "--help"],
    ["evaluate", "--help"],
    ["export", "--help"],
    ["data", "--help"],
    ["data", "fetch", "--help"],
    ["data", "fetch", "mnist", "--mirror", "ftp://nowhere/"],  # runs the command: a one-line usage error
]

WRAPPER = """
import json, sys
from ddpm_core.cli import main
heavy = {}
for argv in json.loads(sys.argv[1]):
    try:
        main(argv)
    except SystemExit:
        pass
    heavy[" ".join(argv)] = sorted(name for name in ("torch", "numpy") if name in sys.modules)
print(json.dumps(heavy))
"""


def test_help_and_data_commands_do_not_import_torch():
    result = subprocess.run(
        [sys.executable, "-c", WRAPPER, json.dumps(COMMANDS)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    heavy = json.loads(result.stdout.strip().splitlines()[-1])
    assert heavy == {" ".join(argv): [] for argv in COMMANDS}, heavy
