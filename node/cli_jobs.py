"""The job commands of `atrium`: `jobs list|show|cancel|wait` (talk to a node), `workers add|list|revoke`
(on the node's data directory) and `worker` (a remote worker). Also `follow_job`, the progress bar that
plugin commands use while a node works on their job."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the HTTP client is imported by the commands that use it, not by every `atrium` run
    from node.client import NodeClient

TERMINAL = ("succeeded", "failed", "cancelled", "expired")
# While the event stream is down: pause between polls of the job, and how long the node may stay away.
POLL_SECONDS = 1.0
UNREACHABLE_GIVE_UP = 300.0


class JobBar:
    """A job's progress on standard error: a bar redrawn in place on a terminal, an occasional plain line
    otherwise (logs of scripts stay short)."""

    WIDTH = 30
    LINE_SECONDS = 10.0

    def __init__(self, label: str, stream: Any = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.shown = 0.0
        self.last: tuple[float, str] | None = None
        self.drawn = False

    def __call__(self, progress: float, message: str) -> None:
        now = time.monotonic()
        if (progress, message) == self.last or (not self.tty and now - self.shown < self.LINE_SECONDS):
            return
        self.last, self.shown = (progress, message), now
        if self.tty:
            filled = int(self.WIDTH * progress)
            self.stream.write(f"\r{self.label}  [{'#' * filled}{'.' * (self.WIDTH - filled)}]  "
                              f"{100 * progress:5.1f}%  {message[:60]}\x1b[K")
        else:
            self.stream.write(f"{self.label}: {100 * progress:5.1f}% {message[:60]}\n")
        self.stream.flush()
        self.drawn = True

    def end(self, job: dict[str, Any]) -> None:
        if self.tty and self.drawn:
            self.stream.write("\n")
        if not self.tty or not self.drawn:
            self.stream.write(f"{self.label}: {job['status']}\n")
        self.stream.flush()
        self.drawn = False


async def follow_job(client: NodeClient, job_id: int, *, label: str) -> dict[str, Any]:
    """Show a progress bar on stderr until the job ends; return the final job JSON. Raises CommandError with
    the job's error when it failed, expired or was cancelled. Reads the job's event stream and falls back
    to polling when the stream drops (a node restart), for up to UNREACHABLE_GIVE_UP seconds of silence."""
    from node.cli import CommandError
    from node.client import NodeUnreachable

    bar = JobBar(label)
    job: dict[str, Any] | None = None
    stream_ok = True
    unreachable_since: float | None = None
    while job is None or job["status"] not in TERMINAL:
        try:
            if stream_ok:
                async with contextlib.aclosing(client.job_events(job_id)) as events:
                    async for event, data in events:
                        unreachable_since = None
                        if event == "status":
                            job = data
                        bar(float(data.get("progress") or 0.0), str(data.get("message") or ""))
                        if job is not None and job["status"] in TERMINAL:
                            break
                if job is None or job["status"] not in TERMINAL:
                    stream_ok = False  # ended without the end of the job: a proxy cut it; poll instead
                continue
            job = await client.job(job_id)
            unreachable_since = None
            bar(float(job["progress"] or 0.0), str(job["message"] or ""))
            if job["status"] not in TERMINAL:
                await asyncio.sleep(POLL_SECONDS)
        except NodeUnreachable as exc:
            now = time.monotonic()
            unreachable_since = unreachable_since or now
            if now - unreachable_since > UNREACHABLE_GIVE_UP:
                raise CommandError(f"{exc.detail}; job {job_id} may still be running: "
                                   f"`atrium jobs wait {job_id}` follows it again") from None
            stream_ok = True  # try the stream again once the node is back
            await asyncio.sleep(POLL_SECONDS)
    bar.end(job)
    if job["status"] != "succeeded":
        reason = job.get("error") or job.get("message") or job["status"]
        raise CommandError(f"job {job_id} {job['status']}: {reason}")
    return job


# -- jobs: client commands ------------------------------------------------------------------------


def _when(text: str | None) -> str:
    return text[:19].replace("T", " ") if text else "-"


def cmd_jobs_list(args: argparse.Namespace) -> int:
    from node.cli import _client, _table, out, run_async

    client = _client(args)

    async def run() -> int:
        async with client as node:
            answer = await node.jobs(all_users=args.all, status=args.status, kind=args.kind, limit=args.limit)
        if args.json:
            out(json.dumps(answer, indent=2))
            return 0
        if not answer["items"]:
            out("no jobs")
            return 0
        _table(("ID", "KIND", "STATUS", "PROGRESS", "OWNER", "CREATED", "MESSAGE"),
               [(str(j["id"]), j["kind"], j["status"], f"{100 * j['progress']:.0f}%", j["owner"] or "-",
                 _when(j["created_at"]), (j["error"] or j["message"] or "")[:50]) for j in answer["items"]])
        return 0

    return run_async(run())


def cmd_jobs_show(args: argparse.Namespace) -> int:
    from node.cli import _client, out, run_async

    client = _client(args)

    async def run() -> int:
        async with client as node:
            job = await node.job(args.id)
        if args.json:
            out(json.dumps(job, indent=2))
            return 0
        out(f"job {job['id']}: {job['kind']}, {job['status']} ({100 * job['progress']:.0f}%) {job['message']}")
        out(f"  owner:    {job['owner']}")
        out(f"  attempts: {job['attempts']} of {job['max_attempts']}")
        out(f"  created:  {_when(job['created_at'])}   started: {_when(job['started_at'])}   "
            f"finished: {_when(job['finished_at'])}")
        if job["error"]:
            out(f"  error:    {job['error']}")
        if job["result"] is not None:
            out(f"  result:   {json.dumps(job['result'])}")
        for f in job["files"]:
            out(f"  file:     {f['name']}  {f['size']} bytes  {f['url']}")
        return 0

    return run_async(run())


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    from node.cli import _client, out, run_async

    client = _client(args)

    async def run() -> int:
        async with client as node:
            job = await node.cancel_job(args.id)
        out(f"job {job['id']}: {job['status']} {job['message']}".rstrip())
        return 0

    return run_async(run())


def cmd_jobs_wait(args: argparse.Namespace) -> int:
    from node.cli import _client, out, run_async

    client = _client(args)

    async def run() -> int:
        async with client as node:
            job = await follow_job(node, args.id, label=f"job {args.id}")
        out(json.dumps(job["result"], indent=2) if args.json else f"job {job['id']} succeeded")
        return 0

    return run_async(run())


# -- workers: tokens on the data directory --------------------------------------------------------


def _worker_tokens(args: argparse.Namespace) -> Any:
    from contextlib import asynccontextmanager

    from node.cli import _config
    from node.core.db import Database
    from node.core.workers import WorkerTokens

    config = _config(args)

    @asynccontextmanager
    async def opened() -> Any:
        db = Database.from_config(config)
        try:
            await db.require_current_schema()
            yield WorkerTokens(db)
        finally:
            await db.close()

    return opened()


def cmd_workers_add(args: argparse.Namespace) -> int:
    from node.cli import out, run_async

    async def run() -> int:
        async with _worker_tokens(args) as tokens:
            issued = await tokens.add(args.name)
        out(f"worker token {issued.record.prefix}... for worker {issued.record.name!r}; shown once, keep it secret. "
            "Start the worker with: atrium worker --node URL --token TOKEN")
        out(issued.secret)
        return 0

    return run_async(run())


def cmd_workers_list(args: argparse.Namespace) -> int:
    from node.cli import _table, out, run_async

    async def run() -> int:
        async with _worker_tokens(args) as tokens:
            records = await tokens.list()
        if not records:
            out("no workers: add one with `atrium workers add NAME`")
            return 0
        _table(("NAME", "PREFIX", "STATE", "CREATED", "LAST SEEN"),
               [(r.name, r.prefix + "...", "revoked" if r.revoked_at else "active",
                 r.created_at.strftime("%Y-%m-%d %H:%M"),
                 r.last_seen_at.strftime("%Y-%m-%d %H:%M") if r.last_seen_at else "never") for r in records])
        return 0

    return run_async(run())


def cmd_workers_revoke(args: argparse.Namespace) -> int:
    from node.cli import out, run_async

    async def run() -> int:
        async with _worker_tokens(args) as tokens:
            record = await tokens.revoke(args.name)
        out(f"revoked the token of worker {record.name!r}; its running attempts lapse with their leases")
        return 0

    return run_async(run())


# -- worker: the remote worker process ------------------------------------------------------------


def cmd_worker(args: argparse.Namespace) -> int:
    from node.cli import UsageError, out, run_async
    from node.logs import configure_logging
    from node.worker import RemoteWorker, load_kinds, pick_device

    url = args.node
    token = args.token or os.environ.get("ATRIUM_WORKER_TOKEN")
    if not url or not url.startswith(("http://", "https://")):
        raise UsageError("--node: give the node's URL, starting with http:// or https://")
    if not token:
        raise UsageError("--token: give a worker token (an admin of the node creates one with "
                         "`atrium workers add NAME`)")
    if args.concurrency < 1 or args.concurrency > 64:
        raise UsageError("--concurrency: must be between 1 and 64")
    configure_logging(args.log_level)
    split = lambda text: [p.strip() for p in text.split(",") if p.strip()] if text else None  # noqa: E731
    kinds = load_kinds(split(args.plugins), split(args.kinds))
    device = pick_device(args.device, kinds)
    worker = RemoteWorker(url, token, kinds, device=device, concurrency=args.concurrency)
    out(f"atrium worker for {url}: kinds {', '.join(sorted(kinds))} on {device}, {args.concurrency} at a time")
    out("Press Ctrl+C to stop.")

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await worker.run(stop)
        out(f"stopped after {worker.done} jobs")
        return 0

    return run_async(run())


def add_commands(sub: Any, common: argparse.ArgumentParser, remote: argparse.ArgumentParser) -> None:
    """Add `jobs`, `workers` and `worker` to the `atrium` parser."""

    def command(parent: Any, name: str, func: Any, help_text: str, parents: list[Any]) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help_text, description=help_text, parents=parents)
        p.set_defaults(func=func)
        return p

    jobs = sub.add_parser("jobs", help="jobs on a node: list, show, cancel, wait", parents=[common]).add_subparsers(
        dest="jobs_command", required=True, metavar="ACTION")
    p = command(jobs, "list", cmd_jobs_list, "list your jobs, newest first", [common, remote])
    p.add_argument("--all", action="store_true", help="every user's jobs (admins)")
    p.add_argument("--status", help="only jobs with this status (pending, running, succeeded, failed, ...)")
    p.add_argument("--kind", help="only jobs of this kind")
    p.add_argument("--limit", type=int, default=50, metavar="N", help="at most N jobs (default: 50)")
    p.add_argument("--json", action="store_true", help="print the node's answer as JSON")
    p = command(jobs, "show", cmd_jobs_show, "describe a job", [common, remote])
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true", help="print the job as JSON")
    p = command(jobs, "cancel", cmd_jobs_cancel, "cancel a job (a running one stops at its next progress report)",
                [common, remote])
    p.add_argument("id", type=int)
    p = command(jobs, "wait", cmd_jobs_wait, "show a job's progress until it ends; exit 1 unless it succeeded",
                [common, remote])
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true", help="print the job's result as JSON")

    workers = sub.add_parser("workers", help="remote worker tokens", parents=[common]).add_subparsers(
        dest="workers_command", required=True, metavar="ACTION")
    p = command(workers, "add", cmd_workers_add, "create a worker token and print it (once)", [common])
    p.add_argument("name", help="a name for the worker, e.g. gpu-box-1")
    command(workers, "list", cmd_workers_list, "list workers (never their tokens)", [common])
    p = command(workers, "revoke", cmd_workers_revoke, "revoke a worker's token", [common])
    p.add_argument("name")

    p = command(sub, "worker", cmd_worker, "run jobs for a node as a remote worker (e.g. on a GPU machine "
                "behind NAT) until Ctrl+C", [common])
    p.add_argument("--node", required=True, metavar="URL", help="the node's URL")
    p.add_argument("--token", default=None, metavar="TOKEN",
                   help="the worker token from `atrium workers add` (default: $ATRIUM_WORKER_TOKEN)")
    p.add_argument("--kinds", metavar="A,B", help="run only these job kinds (default: every kind the loaded "
                   "plugins register)")
    p.add_argument("--plugins", metavar="A,B", help="load these plugins (default: every installed plugin that "
                   "loads; those that fail are skipped with a warning)")
    p.add_argument("--device", metavar="DEVICE", help="cpu or cuda:N (default: cuda:0 when a GPU kind is run and "
                   "torch sees a GPU, else cpu)")
    p.add_argument("--concurrency", type=int, default=1, metavar="N",
                   help="jobs run at once (default: 1; GPU kinds still run one at a time)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
