"""``ddpm generate --server URL``: generate on a running service from a terminal.

It submits a job (``POST /generate``, with an ``Idempotency-Key``), shows its progress as a tqdm
bar fed by the job's event stream (resumed with ``Last-Event-ID`` when the connection drops),
then writes the grid (``--png``) and the denoising GIF (``--gif``). Ctrl-C offers to cancel the
job on the server. Exit status: 0 when the job succeeded, 1 when it failed or was cancelled, 2
for a request the server refused or could not be reached for (one line on stderr), 130 after
Ctrl-C. The ``ddpm`` command finds this module through the ``ddpm.commands`` entry point; it
imports no torch.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from client.service import TERMINAL, ServiceClient, ServiceError

DEFAULT_SERVER = "http://127.0.0.1:8000"
KEY_VARIABLE = "DDPM_API_KEY"
SERVER_VARIABLE = "DDPM_SERVER"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate on a running service (the remote client)",
        description="Submit a job to a running service, follow its progress, and download the grid and GIF.",
    )
    parser.add_argument(
        "--server",
        default=os.environ.get(SERVER_VARIABLE, DEFAULT_SERVER),
        help=f"the service's URL (default: ${SERVER_VARIABLE}, else {DEFAULT_SERVER})",
    )
    parser.add_argument("--api-key", default=None, help=f"an API key of the service (default: ${KEY_VARIABLE})")
    parser.add_argument("--model", default=None, help="model name (default: the service's default model)")
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument("--digit", type=int, default=None, help="the class index to draw")
    chosen.add_argument("--class", dest="class_name", default=None, help="the class to draw, by name or index")
    parser.add_argument("--n", type=int, default=None, help="number of samples (default: the service's)")
    parser.add_argument("--sampler", default=None, help="the sampler (GET /models and the API docs list them)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (samplers that take them)")
    parser.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    parser.add_argument("--seed", type=int, default=None, help="base seed (sample i uses seed + i)")
    parser.add_argument("--png", type=Path, default=None, help="write the grid of samples here")
    parser.add_argument("--gif", type=Path, default=None, help="write the denoising animation here")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each answer (default 30)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    """The ``POST /generate`` body of the options given (the service's defaults for the rest)."""
    fields = {
        "model": args.model,
        "digit": args.digit,
        "class": args.class_name,
        "n": args.n,
        "sampler": args.sampler,
        "steps": args.steps,
        "guidance": args.guidance,
        "seed": args.seed,
    }
    return {name: value for name, value in fields.items() if value is not None}


def run(args: argparse.Namespace) -> int:
    if not args.verbose:  # one line per request would crowd the progress bar
        logging.getLogger("httpx").setLevel(logging.WARNING)
    api_key = args.api_key or os.environ.get(KEY_VARIABLE) or None
    with ServiceClient(args.server, api_key, timeout=args.timeout) as service:
        try:
            return _generate(service, args)
        except ServiceError as error:
            print(f"ddpm: error: {error}", file=sys.stderr)
            return 2


def _generate(service: ServiceClient, args: argparse.Namespace) -> int:
    job = service.submit(request_body(args))
    job_id = job["id"]
    where = f"{service.server}/jobs/{job_id}"
    print(f"job {job_id} queued at position {job.get('queue_position')}: {where}", file=sys.stderr)
    try:
        ended = _follow(service, job_id, quiet=args.no_progress)
    except KeyboardInterrupt:
        return _interrupted(service, job_id)
    record = service.job(job_id)
    status = record["status"]
    if ended != status and status not in TERMINAL:  # the stream ended early (the job expired)
        print(f"ddpm: error: job {job_id} is {status}; follow it at {service.server}/jobs/{job_id}", file=sys.stderr)
        return 1
    if status != "succeeded":
        reason = record.get("error") or "cancelled on the server"
        print(f"ddpm: job {job_id} {status}: {reason}", file=sys.stderr)
        return 1
    written = []
    for kind, target in (("png", args.png), ("gif", args.gif)):
        if target is not None:
            service.download(record["links"][kind], target)
            written.append(str(target))
    print(_summary(record, written))
    return 0


def _follow(service: ServiceClient, job_id: str, quiet: bool) -> str:
    """Show the job's progress until it ends; its terminal event."""
    bar = tqdm(total=None, unit="step", desc="queued", disable=quiet, file=sys.stderr, dynamic_ncols=True)
    try:
        for event in service.events(job_id):
            if event.event == "queued" and bar.total is None:
                bar.set_description("queued")
            elif event.event == "running":
                bar.set_description("running")
            elif event.event == "progress":
                total, step = int(event.data.get("total") or 0), int(event.data.get("step") or 0)
                if total and bar.total != total:
                    bar.reset(total=total)
                bar.update(step - bar.n)
            elif event.event == "redraw":
                bar.set_description(f"redrawing {len(event.data.get('samples', []))} samples")
            elif event.event in TERMINAL:
                bar.set_description(event.event)
                return event.event
        return "unknown"
    finally:
        bar.close()


def _interrupted(service: ServiceClient, job_id: str) -> int:
    """Ctrl-C: ask whether to cancel the job on the server (no answer: leave it running)."""
    print(f"\ncancel job {job_id} on the server? [y/N] ", end="", file=sys.stderr, flush=True)
    try:
        answer = sys.stdin.readline()
    except (OSError, KeyboardInterrupt):
        answer = ""
    if answer.strip().lower() in ("y", "yes"):
        status = service.cancel(job_id).get("status")
        print(f"ddpm: job {job_id}: cancel requested ({status})", file=sys.stderr)
    else:
        print(f"ddpm: job {job_id} goes on: {service.server}/jobs/{job_id}", file=sys.stderr)
    return 130


def _summary(record: dict[str, Any], written: list[str]) -> str:
    params = record["params"]
    line = (
        f"job {record['id']} succeeded: {params['n']} samples of {params['model']}, {params['sampler']} "
        f"{params['steps']} steps, guidance {params['guidance']:g}, seed {params['seed']}"
    )
    check = record.get("check") or {}
    if check.get("kind") == "classifier" and check.get("matches") is not None:
        line += f"; the check read {check['matches']} of {params['n']} as {check.get('asked_class')!r}"
    elif check.get("kind") == "points" and check.get("points"):
        line += f"; {check['points']['fraction']:.3f} of the points on the board's squares"
    if written:
        line += "; wrote " + ", ".join(written)
    return line
