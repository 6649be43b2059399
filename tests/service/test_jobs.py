"""End to end over HTTP: submit, stream, fetch PNG and GIF, reconnect, cancel."""

from __future__ import annotations

import io
import time
from datetime import datetime
from pathlib import Path

import httpx
import redis
from PIL import Image

from tests.service.conftest import JOBS_IN_FLIGHT, KEY_PREFIX, read_events, wait_job

TERMINAL = {"succeeded", "failed", "cancelled"}


def submit(client: httpx.Client, **body) -> dict:
    response = client.post("/generate", json=body)
    assert response.status_code == 202, response.text
    return response.json() | {"location": response.headers.get("location")}


def test_generate_streams_progress_and_returns_png_and_gif(client: httpx.Client) -> None:
    job = submit(client, digit=3, n=4, sampler="ddim", steps=12, seed=7)
    assert job["status"] == "queued"
    assert job["location"] == f"/jobs/{job['id']}"
    assert set(job["links"]) == {"self", "events", "png", "gif"}

    events = read_events(client, job["id"], previews=True)
    kinds = [event["event"] for event in events]
    assert kinds[0] == "queued"
    assert "running" in kinds
    assert sum(kind in TERMINAL for kind in kinds) == 1 and kinds[-1] == "succeeded", kinds
    steps = [event["data"]["step"] for event in events if event["event"] == "progress"]
    assert steps == sorted(steps) and steps[-1] == 12 and len(steps) >= 2, steps
    assert all(event["data"]["total"] == 12 for event in events if event["event"] == "progress")
    previews = [event for event in events if event["event"] == "preview"]
    assert previews and previews[0]["data"]["image"].startswith("data:image/png;base64,")
    ids = [event["id"] for event in events]
    assert len(set(ids)) == len(ids)
    # previews are opt-in: a plain stream (curl -N .../events) has every other event, no base64
    plain = read_events(client, job["id"])
    assert plain == [event for event in events if event["event"] != "preview"]

    record = client.get(f"/jobs/{job['id']}").json()
    assert record["status"] == "succeeded"
    assert record["progress"] == {"step": 12, "total": 12}
    assert record["seed"] == 7 and record["params"]["digit"] == 3 and record["params"]["steps"] == 12
    assert record["model"] == "mnist" and len(record["weights_sha256"]) == 64
    assert record["created_at"] <= record["started_at"] <= record["finished_at"]
    assert record["error"] is None

    png = client.get(job["links"]["png"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(png.content))
    # 4 samples: a 2 x 2 grid of 28-pixel tiles with 2-pixel padding, scaled by 2
    assert image.size == ((2 * 30 + 2) * 2, (2 * 30 + 2) * 2)

    gif = client.get(job["links"]["gif"])
    assert gif.status_code == 200 and gif.headers["content-type"] == "image/gif"
    animation = Image.open(io.BytesIO(gif.content))
    assert animation.format == "GIF" and animation.n_frames >= 4


def test_every_sampler_runs_through_the_stack_and_models_say_how_long_a_step_takes(client: httpx.Client) -> None:
    """A job of each sampler succeeds with its own step count; then GET /models says how long a
    step of the model takes on the live worker (what the page's expected time reads)."""
    jobs = {name: submit(client, digit=2, n=2, sampler=name, seed=3) for name in ("uni_pc", "dpmpp_2m", "ddim")}
    jobs["ddpm"] = submit(client, n=1, sampler="ddpm", seed=3)
    expected_steps = {"uni_pc": 8, "dpmpp_2m": 8, "ddim": 50, "ddpm": 200}  # the registry's defaults; T = 200
    for name, job in jobs.items():
        record = wait_job(client, job["id"])
        assert record["status"] == "succeeded", record
        assert record["params"]["sampler"] == name and record["progress"]["step"] == expected_steps[name]
        timings = record["timings"]  # where the worker's time went, within its run
        assert timings["generate_s"] > 0 and timings["encode_s"] > 0 and timings["load_s"] >= 0
        run_s = datetime.fromisoformat(record["finished_at"]) - datetime.fromisoformat(record["started_at"])
        assert sum(timings.values()) <= run_s.total_seconds() + 0.002
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        mnist = next(model for model in client.get("/models").json()["models"] if model["name"] == "mnist")
        if mnist["row_seconds"] is not None:
            break
        time.sleep(0.2)
    assert mnist["row_seconds"] is not None and 0 < mnist["row_seconds"] < 1


def test_finished_job_replays_its_events(client: httpx.Client) -> None:
    job = submit(client, n=1, sampler="ddim", steps=10, seed=1)
    wait_job(client, job["id"])
    first = read_events(client, job["id"])
    again = read_events(client, job["id"])
    assert [event["id"] for event in first] == [event["id"] for event in again]
    assert first[-1]["event"] == "succeeded"


def test_same_seed_same_png_and_grid_follows_n(client: httpx.Client) -> None:
    a = submit(client, digit=1, n=2, sampler="ddim", steps=10, seed=42)
    b = submit(client, digit=1, n=2, sampler="ddim", steps=10, seed=42)
    c = submit(client, digit=1, n=5, sampler="ddim", steps=10, seed=43)
    for job in (a, b, c):
        assert wait_job(client, job["id"])["status"] == "succeeded"
    png_a, png_b = client.get(a["links"]["png"]).content, client.get(b["links"]["png"]).content
    assert png_a == png_b
    # 5 samples: 3 columns, 2 rows
    assert Image.open(io.BytesIO(client.get(c["links"]["png"]).content)).size == ((3 * 30 + 2) * 2, (2 * 30 + 2) * 2)


def test_reconnect_with_last_event_id_loses_nothing(client: httpx.Client) -> None:
    job = submit(client, n=8, sampler="ddim", steps=60, seed=3)
    head = read_events(client, job["id"], limit=4)  # leave mid-job
    assert head[-1]["event"] in ("running", "progress", "preview")
    tail = read_events(client, job["id"], last_event_id=head[-1]["id"])
    assert tail and tail[-1]["event"] == "succeeded"
    full = read_events(client, job["id"])
    assert [event["id"] for event in head + tail] == [event["id"] for event in full]
    steps = [event["data"]["step"] for event in full if event["event"] == "progress"]
    assert steps == list(range(1, 61))  # every step, none lost (progress interval 0 in tests)


def test_results_are_409_until_finished_and_cancel_stops_a_running_job(client: httpx.Client) -> None:
    job = submit(client, n=16, sampler="ddpm", seed=5)  # 200 steps: long enough to cancel
    events = read_events(client, job["id"], limit=3)  # queued, running, first progress
    assert events[-1]["event"] == "progress"
    pending = client.get(job["links"]["png"])
    assert pending.status_code == 409 and "not ready" in pending.json()["message"]
    assert client.get(job["links"]["gif"]).status_code == 409
    started = time.monotonic()
    response = client.delete(f"/jobs/{job['id']}")
    assert response.status_code == 202, response.text
    record = wait_job(client, job["id"], timeout=30)
    assert record["status"] == "cancelled"
    assert time.monotonic() - started < 10
    assert record["progress"]["step"] < 200
    tail = read_events(client, job["id"], last_event_id=events[-1]["id"])
    assert tail[-1]["event"] == "cancelled"
    assert client.get(job["links"]["png"]).status_code == 409
    # the worker is free at once: a small job right after finishes
    follow = submit(client, n=1, sampler="ddim", steps=10)
    assert wait_job(client, follow["id"], timeout=60)["status"] == "succeeded"
    assert client.delete(f"/jobs/{follow['id']}").status_code == 409


def test_cancel_a_queued_job(client: httpx.Client) -> None:
    blockers = [submit(client, n=16, sampler="ddpm", seed=9 + i) for i in range(JOBS_IN_FLIGHT)]
    for blocker in blockers:  # the worker holds JOBS_IN_FLIGHT jobs: the next one waits in the queue
        deadline = time.monotonic() + 30
        while client.get(f"/jobs/{blocker['id']}").json()["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    queued = submit(client, n=1, sampler="ddim", steps=10)
    record = client.get(f"/jobs/{queued['id']}").json()
    assert record["status"] == "queued" and record["queue_position"] >= 1
    assert client.delete(f"/jobs/{queued['id']}").json()["status"] == "cancelled"
    for blocker in blockers:
        assert client.delete(f"/jobs/{blocker['id']}").status_code == 202
    for blocker in blockers:
        assert wait_job(client, blocker["id"])["status"] == "cancelled"
    assert wait_job(client, queued["id"])["status"] == "cancelled"
    events = read_events(client, queued["id"])
    assert [event["event"] for event in events] == ["queued", "cancelled"]


def engine_counters(store: redis.Redis, worker_name: str) -> tuple[int, int]:
    """(ticks, rows) of the worker's engine, once it is idle and two of its reports 1.2 s apart
    (heartbeats every 0.5 s) agree: counters that are fresh, not a report from before a job."""
    key = f"{KEY_PREFIX}:worker-stats:{worker_name}"
    deadline = time.monotonic() + 30
    previous = None
    while True:
        stats = store.hgetall(key)
        counters = (int(stats.get("ticks", 0)), int(stats.get("rows", 0)))
        idle = stats.get("running", "0") == "0" and stats.get("queued", "0") == "0"
        if idle and counters == previous:
            return counters
        previous = counters if idle else None
        assert time.monotonic() < deadline, f"the worker's engine counters do not settle: {stats}"
        time.sleep(1.2)


def test_one_worker_process_runs_several_jobs_at_once_in_shared_forwards(
    client: httpx.Client, worker, redis_server
) -> None:
    store = redis.Redis.from_url(redis_server.url, decode_responses=True)
    (name,) = store.zrange(f"{KEY_PREFIX}:workers", 0, -1)
    ticks_before, rows_before = engine_counters(store, name)
    jobs = [submit(client, digit=digit, n=2, sampler="ddim", steps=40, seed=digit) for digit in range(3)]
    seen_together = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        statuses = [client.get(f"/jobs/{job['id']}").json()["status"] for job in jobs]
        seen_together = max(seen_together, statuses.count("running"))
        if all(status == "succeeded" for status in statuses):
            break
        time.sleep(0.02)
    assert seen_together >= 2, "the jobs ran one after another"
    records = [wait_job(client, job["id"]) for job in jobs]
    assert all(record["status"] == "succeeded" for record in records)
    # one process: a thread pool, no forked pool processes
    assert Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split() == []
    assert "libtorch" in Path(f"/proc/{worker.pid}/maps").read_text()
    # its engine batched rows of several jobs: a job takes n rows of each forward (2n with
    # guidance), so forwards of one job at a time (a check's redraws are smaller) average at
    # most one job's rows; only forwards shared by several jobs average more
    ticks_after, rows_after = engine_counters(store, name)
    ticks, rows = ticks_after - ticks_before, rows_after - rows_before
    job_rows = [record["params"]["n"] * (2 if record["params"]["guidance"] > 0 else 1) for record in records]
    assert rows >= sum(job_rows) * 40, "the engine counters miss the jobs' steps"
    assert rows > max(job_rows) * ticks, f"{rows} rows in {ticks} forwards: no forward held rows of two jobs"
