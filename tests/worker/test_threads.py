"""One OpenMP team per worker process, the device thread's: every other thread that touches
torch runs alone (ddpm_core.device.keep_torch_to_this_thread). A second team makes libgomp stop
its idle threads spinning, and every parallel region of the device thread then pays to wake its
team (measured: the MNIST U-Net's 2-row forward 29 ms instead of 8.6 ms on a 2-core CPU).

Counted, not timed: a team is native threads that the process keeps, so each case runs in a
fresh process and counts its threads that Python did not start."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import os, sys, threading
import torch
from ddpm_core.device import keep_torch_to_this_thread
from worker.engine.device_thread import DeviceThread

keep_jobs_alone = sys.argv[1] == "fixed"

def native_threads():
    return len(os.listdir("/proc/self/task")) - threading.active_count()

def big():  # large enough to run as an OpenMP parallel region
    return float((torch.ones(4_000_000) * 2).sum())

keep_torch_to_this_thread()  # the worker's main thread, at start
big()
before = native_threads()

class Engine:  # runs one big operation on the device thread, then holds the thread
    name = "engine"
    def __init__(self):
        self.ran, self.done, self.release = False, threading.Event(), threading.Event()
    def wants_turn(self):
        return not self.ran or not self.release.is_set()
    def turn(self):
        if not self.ran:
            big(); self.ran = True; self.done.set()
        self.release.wait(60)
        return False

engine = Engine()
DeviceThread("ddpm-device-cpu", torch_threads=2).attach(engine)
engine.done.wait(60)
ready, finished = threading.Barrier(4), threading.Event()

def job():  # a job thread: loads a model, prepares its job
    if keep_jobs_alone:
        keep_torch_to_this_thread()
    big()
    ready.wait()
    finished.wait(60)

jobs = [threading.Thread(target=job) for _ in range(3)]
for thread in jobs:
    thread.start()
ready.wait()
print(native_threads() - before)
finished.set(); engine.release.set()
"""


@pytest.mark.parametrize(("case", "teams_added"), [("fixed", 1), ("unfixed", 4)])
def test_only_the_device_thread_has_an_openmp_team(case: str, teams_added: int) -> None:
    """With 2 CPU threads a team is one native thread besides its master: the device thread's
    adds 1; job threads that do not keep torch to themselves add one each (the unfixed case,
    which the worker was before)."""
    run = subprocess.run([sys.executable, "-c", SCRIPT, case], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    assert int(run.stdout.strip().splitlines()[-1]) == teams_added, run.stdout
