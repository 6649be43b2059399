"""Fixtures shared by every test layer: a real redis-server on a free port, for the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from serve.redis_server import EmbeddedRedis


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server
