"""Fixtures shared by every test layer: a real redis-server on a free port, for the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from serve.redis_server import EmbeddedRedis


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "e2e: end to end on real processes (tests/service); `-m 'not e2e'` is the fast lane"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/service runs real processes: mark it e2e."""
    for item in items:
        if "tests/service/" in item.nodeid.replace("\\", "/") or item.nodeid.startswith("service/"):
            item.add_marker(pytest.mark.e2e)
