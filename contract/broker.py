"""The broker transport: kombu's Redis transport, less the restore of unacknowledged messages
when a channel closes.

How a job is delivered again (the one redelivery story):

- **A job whose worker stopped** (killed, crashed, cut off at its grace period) is re-queued by
  the job store, not by the broker: every worker's housekeeping (:mod:`worker.housekeeping`)
  finds running jobs whose worker has not reported for ``worker_dead_after_s`` (or whose
  heartbeat went stale) and sends their task again, within seconds. The job record is the one
  source of truth; the task is idempotent, so a duplicate message finds the job claimed or
  finished and is dropped.
- **A queued job whose message is gone** is sent again by the job store too: Redis's BRPOP hands
  a message to a worker that dies before it records the message as unacknowledged (or a Redis
  crash loses the last second of writes), and the job would wait forever. Housekeeping looks at
  the queued jobs whose task was sent over ``DDPM_LOST_MESSAGE_AFTER_S`` ago and re-sends only
  those whose message is in neither the broker's queue nor its unacknowledged set
  (:func:`waiting_task_ids`), so a backlog waiting in the broker is never sent twice.
- **The broker never re-delivers a live job**: its visibility timeout
  (:attr:`contract.settings.Settings.broker_visibility_timeout_s`) is longer than the longest
  job (``DDPM_MAX_JOB_S``, which the engine enforces) plus a margin. It only sweeps up a message
  that a worker took from Redis and died with before it could claim the job (an instant), and
  the leftover message of a job the job store already re-queued (dropped as a duplicate).
  Queued jobs are never re-sent while they wait: the message waits in the Redis list.
- Kombu restores a channel's unacknowledged messages when the channel closes. That path runs
  when the broker connection drops (a Redis restart), where it cannot reach Redis and, in kombu
  5.x, raises an ``AttributeError`` that Celery treats as unrecoverable: the worker exited. With
  a thread pool and late acknowledgement, a worker holds no message it has not started, so the
  restore has nothing to do that the job store does not already do: it is turned off here.
- A job that finishes after the broker connection was replaced acknowledges its message on the
  old, closed channel: kombu raised ``AttributeError`` there too (the worker exited). Here the
  acknowledgement goes to Redis on a connection of its own, so the message leaves the unacked
  set as it would have (no stray duplicate later); if Redis is still down, kombu logs that the
  message could not be acknowledged and the broker's sweep drops it later.

Torch-free: the API's sending-only app uses it too.
"""

from __future__ import annotations

import json
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

TRANSPORT = "contract.broker:Transport"


class Channel(kombu_redis.Channel):
    """Kombu's Redis channel without the restore of unacknowledged messages at close, whose
    acknowledgements still work once it is closed."""

    do_restore = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._params = self._connparams()  # to reach Redis once the channel is closed

    def basic_ack(self, delivery_tag: Any, multiple: bool = False) -> None:
        if self.connection is not None:
            super().basic_ack(delivery_tag, multiple)
            return
        pool = redis.ConnectionPool(**self._params)  # the channel was closed: a connection of its own
        try:
            client = redis.Redis(connection_pool=pool)
            client.pipeline().zrem(self.unacked_index_key, delivery_tag).hdel(self.unacked_key, delivery_tag).execute()
        finally:
            pool.disconnect()


class Transport(kombu_redis.Transport):
    """Kombu's Redis transport with :class:`Channel`, waiting at most 0.25 s per BRPOP (kombu: 1 s),
    so that a worker asked to stop notices within a quarter second (Redis >= 6 takes fractional
    timeouts)."""

    Channel = Channel
    brpop_timeout = 0.25


def waiting_task_ids(client: redis.Redis, queue: str) -> set[str]:
    """The task ids of every message the broker holds for ``queue``: waiting in its lists (one
    per priority step) or delivered and not yet acknowledged. Reads kombu's Redis layout: the
    queue is a list of JSON messages under the queue's name (other priorities under
    ``queue + sep + priority``), unacknowledged messages a hash of ``[message, exchange,
    routing_key]``; a Celery message's task id is ``headers.id``."""
    names = [queue, *(f"{queue}{Channel.sep}{step}" for step in Channel.priority_steps if step)]
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.lrange(name, 0, -1)
    pipe.hvals(Channel.unacked_key)
    *lists, unacked = pipe.execute()
    ids = set()
    for raw in (message for messages in lists for message in messages):
        ids.add(_task_id(raw))
    for raw in unacked:
        try:
            ids.add(_task_id(json.dumps(json.loads(raw)[0])))
        except (ValueError, TypeError, IndexError, KeyError):
            continue
    ids.discard(None)
    return ids  # type: ignore[return-value]


def _task_id(raw: str | bytes) -> str | None:
    try:
        return str(json.loads(raw)["headers"]["id"])
    except (ValueError, TypeError, KeyError):
        return None
