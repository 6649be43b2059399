"""Rate limits on the endpoints that create jobs (``DDPM_RATE_LIMIT``), on the ``limits`` library.

Each client (an API key, or the client's address where no keys are set) has its own quota under
every limit (``5/minute``, or several: ``100/hour;10/second``), counted in a moving window in
Redis, so every API replica shares the counts. Answers carry the IETF RateLimit fields
(draft-ietf-httpapi-ratelimit-headers): ``RateLimit-Policy`` (each limit: ``q`` requests per
``w`` seconds) and ``RateLimit`` (the most constrained limit's ``r`` remaining and ``t`` seconds
until a request frees up); a refusal is a 429 with ``Retry-After``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse_many
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter


@dataclass(frozen=True)
class Quota:
    """One limit's state for one client after a request."""

    name: str
    limit: int
    window_s: int
    remaining: int
    reset_s: int


@dataclass(frozen=True)
class RateState:
    """Every limit's state for one client: the answer's RateLimit fields."""

    quotas: tuple[Quota, ...]

    @property
    def headers(self) -> dict[str, str]:
        if not self.quotas:
            return {}
        tightest = min(self.quotas, key=lambda quota: (quota.remaining, -quota.reset_s))
        return {
            "RateLimit-Policy": ", ".join(f'"{q.name}";q={q.limit};w={q.window_s}' for q in self.quotas),
            "RateLimit": f'"{tightest.name}";r={tightest.remaining};t={tightest.reset_s}',
        }


class RateLimited(Exception):
    """A client over one of its limits; ``retry_after_s`` until it may submit again."""

    def __init__(self, state: RateState, exceeded: Quota) -> None:
        super().__init__(
            f"rate limit exceeded: this client may submit {exceeded.limit} jobs per {_window(exceeded.window_s)} "
            f"(DDPM_RATE_LIMIT); retry after {exceeded.reset_s} s"
        )
        self.state = state
        self.retry_after_s = max(1, exceeded.reset_s)

    @property
    def headers(self) -> dict[str, str]:
        return {**self.state.headers, "Retry-After": str(self.retry_after_s)}


def _window(seconds: int) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            count = seconds // size
            return unit if count == 1 else f"{count} {unit}s"
    return "second" if seconds == 1 else f"{seconds} seconds"


def _name(item: RateLimitItem) -> str:
    return f"{item.amount}-per-{_window(item.get_expiry()).replace(' ', '-')}"


class RateLimiter:
    """``DDPM_RATE_LIMIT`` over Redis: :meth:`hit` counts one submission of a client."""

    def __init__(self, spec: str, redis_url: str, prefix: str) -> None:
        self.items: list[RateLimitItem] = parse_many(spec) if spec.strip() else []
        self._limiter: MovingWindowRateLimiter | None = None
        if self.items:
            storage = RedisStorage(
                f"async+{redis_url}", implementation="redispy", key_prefix=f"{prefix}:ratelimit", wrap_exceptions=False
            )
            self._limiter = MovingWindowRateLimiter(storage)

    @property
    def enabled(self) -> bool:
        return self._limiter is not None

    async def hit(self, client: str) -> RateState:
        """Count a submission of ``client``; its state under every limit. Raises
        :class:`RateLimited` (counting nothing further) when it is over one."""
        if self._limiter is None:
            return RateState(())
        exceeded = None
        for item in self.items:
            if not await self._limiter.hit(item, client):
                exceeded = item
                break
        quotas = []
        now = time.time()
        for item in self.items:
            stats = await self._limiter.get_window_stats(item, client)
            reset = max(0, math.ceil(stats.reset_time - now)) if stats.remaining < item.amount else 0
            quotas.append(Quota(_name(item), item.amount, item.get_expiry(), max(0, stats.remaining), reset))
        state = RateState(tuple(quotas))
        if exceeded is not None:
            raise RateLimited(state, quotas[self.items.index(exceeded)])
        return state
