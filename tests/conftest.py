"""Fixtures shared by every test layer: a real redis-server on a free port, for the session, and
one torch thread for each test.

Two lanes: ``-m e2e`` runs end to end (real processes, whole pipelines, compiles, models trained
for many steps); ``-m "not e2e"`` is the fast lane, under 60 s on a 2-core machine."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from serve.redis_server import EmbeddedRedis
from tests.browser import browser  # noqa: F401 (the headless Chromium fixture of the browser tests)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Each test starts with torch on one thread (set before its fixtures, module-scoped ones too):
    the models under test are tiny, and on a shared 2-core machine two OpenMP threads that wait for
    each other at every operation turn a busy neighbour into a tenfold slowdown. A process that has
    not imported torch stays torch-free; a test may still ask for more threads itself."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "e2e: end to end: real processes, whole pipelines, compiles; `-m 'not e2e'` is the fast lane (< 60 s)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/service runs real processes: mark it e2e. Elsewhere a module or test
    that runs whole pipelines in subprocesses, compiles, or trains for many steps marks itself."""
    for item in items:
        if "tests/service/" in item.nodeid.replace("\\", "/") or item.nodeid.startswith("service/"):
            item.add_marker(pytest.mark.e2e)
