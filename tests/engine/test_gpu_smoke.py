"""``benchmarks/gpu_smoke.py`` runs on a CPU with small shapes and prints its whole table, with
batched equal to alone and two engines on two threads agreeing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # a whole benchmark in a subprocess

REPO = Path(__file__).resolve().parents[2]


def test_the_gpu_smoke_benchmark_runs_small_on_the_cpu() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_smoke.py"), "--small", "--eager", "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = {
        line.split("|")[1].strip(): line.split("|")[2].strip()
        for line in result.stdout.splitlines()
        if line.startswith("| ") and not line.startswith("| measure")
    }
    assert table["device"] == "cpu"
    assert float(table["job alone vs in a 16-job batch: mean abs difference (of 255)"]) < 1.0
    assert float(table["engine vs generate(), one job: mean abs difference (of 255)"]) < 1.0
    assert table["two engines on one device thread, two clients: errors; outputs equal"] == "0 []; True"
    assert len(table) >= 12, table
    # with every job's frames and previews due at every step: one host copy per tick, not per job
    on = table["16 jobs, frames and previews on, every step: wall s / engine busy s / ticks / host copies"]
    _, _, ticks, copies = (part.strip() for part in on.split("/"))
    assert int(ticks) > 16 and int(copies) == int(ticks)
    assert table["16 jobs, frames and previews off: wall s / engine busy s / ticks / host copies"].endswith("/ 0")
    # the stated tolerance of each precision the device runs (on a CPU: fp32), alone and batched
    for label in ("alone", "in a batch"):
        mean, largest = table[f"fp32: job {label} vs generate() fp32, mean / max difference (of 255)"].split("/")
        assert float(mean) < 1.0 and float(largest) < 2.0
