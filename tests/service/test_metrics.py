"""``/metrics`` of the real stack: an API process and TWO worker processes on one queue, all
sharing nothing but Redis. Job counters rise once per job whichever worker ran it; histogram
counts match the finished jobs; both workers' engine series and model loads arrive; the steps
the workers report add up to the steps the jobs ran."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from serve.command import stop_process, worker_command
from serve.redis_server import EmbeddedRedis
from tests.api.test_metrics import Samples, check_histograms, finished_jobs, parse, series, value
from tests.service.conftest import service_env, start_api, start_logged, wait_job

PREFIX = "ddpmmetrics"


def scrape(http: httpx.Client) -> Samples:
    answer = http.get("/metrics")
    assert answer.status_code == 200, answer.text
    return parse(answer.text)


def wait_for(http: httpx.Client, condition, what: str, timeout: float = 30) -> Samples:
    """Scrape until ``condition(samples)`` holds; the samples."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(http)
        if condition(samples):
            return samples
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.1)


def per_worker(samples: Samples, name: str) -> dict[str, float]:
    return {dict(labels)["worker"]: number for labels, number in series(samples, name).items()}


def test_two_workers_report_to_one_metrics_endpoint(redis_server: EmbeddedRedis, model_dir: Path) -> None:
    env = service_env(redis_server.url, model_dir, DDPM_KEY_PREFIX=PREFIX, DDPM_QUEUE_NAME=PREFIX)
    workers = [start_logged(worker_command(queue=PREFIX), env, f"worker-metrics-{i}.log") for i in range(2)]
    api, base = start_api(env, "api-metrics.log")
    try:
        with httpx.Client(base_url=base, timeout=30) as http:
            ready = wait_for(http, lambda s: value(s, "ddpm_workers_alive") == 2, "two workers alive", timeout=90)
            ready = wait_for(http, lambda s: len(per_worker(s, "ddpm_worker_job_steps_total")) == 2, "both stats")
            names = set(per_worker(ready, "ddpm_worker_job_steps_total"))
            for name in ("ddpm_worker_mean_batch_rows", "ddpm_worker_batch_occupancy", "ddpm_worker_steps_per_second"):
                assert set(per_worker(ready, name)) == names, name
            assert set(per_worker(ready, "ddpm_worker_max_batch")) == names
            # each worker loaded the default model once, before it reported ready
            assert value(ready, "ddpm_model_load_seconds_count", model="mnist") == 2
            loads = series(ready, "ddpm_worker_model_load_seconds")
            assert {dict(labels)["worker"] for labels in loads} == names and all(s > 0 for s in loads.values())
            assert value(ready, "ddpm_jobs_submitted_total") == 0

            jobs = [
                http.post("/generate", json={"digit": i, "n": 2, "sampler": "ddim", "steps": 10, "seed": i}).json()
                for i in range(6)
            ]
            assert all(wait_job(http, job["id"])["status"] == "succeeded" for job in jobs)
            done = scrape(http)
            assert value(done, "ddpm_jobs_submitted_total") == 6 and value(done, "ddpm_jobs_succeeded_total") == 6
            assert value(done, "ddpm_job_duration_seconds_count", status="succeeded") == 6 == finished_jobs(done)
            assert value(done, "ddpm_job_queue_wait_seconds_count") == 6
            assert value(done, "ddpm_queue_length") == 0 and value(done, "ddpm_jobs_in_flight") == 0
            check_histograms(done)
            # the engines' steps arrive with the workers' next reports: 6 jobs of 10 steps
            wait_for(http, lambda s: sum(per_worker(s, "ddpm_worker_job_steps_total").values()) == 60, "60 steps")

            # a long job: in flight, its worker's step rate shows, then it is cancelled mid-run
            long = http.post("/generate", json={"n": 64, "sampler": "ddpm", "guidance": 1.0, "seed": 1}).json()

            def its_worker_steps(samples: Samples) -> bool:
                # the workers' numbers arrive with their reports (every 2 s): wait for one made mid-job
                rates = per_worker(samples, "ddpm_worker_steps_per_second")
                running = per_worker(samples, "ddpm_worker_engine_jobs_running")
                stepping = any(running[worker] == 1 and rates[worker] > 0 for worker in names)
                return stepping and value(samples, "ddpm_jobs_in_flight") == 1

            running = wait_for(http, its_worker_steps, "the running job's worker stepping")
            assert value(running, "ddpm_jobs_in_flight") == 1 and value(running, "ddpm_steps_per_second") > 0
            assert sum(per_worker(running, "ddpm_worker_engine_jobs_running").values()) == 1
            assert http.delete(f"/jobs/{long['id']}").status_code == 202
            assert wait_job(http, long["id"])["status"] == "cancelled"
            end = scrape(http)
            assert value(end, "ddpm_jobs_cancelled_total") == 1 and value(end, "ddpm_jobs_submitted_total") == 7
            assert value(end, "ddpm_job_duration_seconds_count", status="cancelled") == 1
            assert sum(series(end, "ddpm_job_duration_seconds_count").values()) == finished_jobs(end) == 7
            assert value(end, "ddpm_jobs_in_flight") == 0
            check_histograms(end)
    finally:
        for process in workers:
            stop_process(process, "worker", grace=15)
        stop_process(api, "API")
