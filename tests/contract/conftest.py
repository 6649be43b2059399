"""Fixtures of the in-process contract tests: a worker's job store over the test's settings."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from contract.settings import Settings
from worker.store import JobStore


@pytest.fixture()
def worker_store(settings: Settings) -> Iterator[JobStore]:
    """A worker's view of the jobs under the ``settings`` fixture of the test module."""
    store = JobStore(settings)
    yield store
    store.client.close()
    store.raw.close()
