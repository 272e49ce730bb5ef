"""Durable jobs: long work (generations, training runs) kept in the database and done by workers.

A job is submitted by a user (`Jobs.submit`: the kind's `prepare` validates the parameters, queue limits
apply), claimed by a worker with a lease (`claim`), kept alive by heartbeats that carry its progress
(`heartbeat`), and ended by its lease holder (`complete`, `fail`, `acknowledge_cancel`, `release`). A job
whose lease runs out (its worker or the whole node died) goes back to pending, up to its attempt limit,
then ends as expired (`sweep`). Only the holder of the current lease may report on a job, so a stale
worker cannot duplicate a result; a result's `finish` runs on the node before the job is marked done.

Claims: PostgreSQL `SELECT ... FOR UPDATE SKIP LOCKED`; SQLite takes the write lock at BEGIN (IMMEDIATE),
so the select and the update of a claim are one step there too. The workers of this process
(node/core/runner.py) wait on an event that `submit` sets, so a job starts milliseconds after it is
queued; they also poll, for jobs submitted through other processes. docs/jobs.md has the whole story.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import case, func, literal, update
from sqlmodel import col, select

from node.core.config import Config
from node.core.db import Database
from node.core.errors import Conflict, Forbidden, InvalidInput, NotFound, PluginLoadError, RateLimited, TooLarge
from node.core.tables import Job, Role, User, UTCDateTime, utcnow
from node.core.workers import WorkerTokens

if TYPE_CHECKING:
    from node.core.plugins import PluginHost
    from node.core.runtime import Node

log = logging.getLogger(__name__)

FILE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
KIND_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
# The parameters a job keeps are stored in the database: a generation's prompt, not its images.
MAX_PARAMS_BYTES = 256 * 1024
MAX_LIST = 500
MESSAGE_MAX = 500
# A progress report's detail (a step number, a preview's name) is kept small: it is written at each report.
MAX_DETAIL_BYTES = 4096
ERROR_MAX = 2000
# Finished jobs past [jobs] keep_days are deleted at most this often.
RETENTION_INTERVAL = 3600.0
# A work directory untouched this long belongs to an attempt whose process died.
STALE_WORKDIR_SECONDS = 86400.0


class JobStatus(StrEnum):
    """Where a job stands. The last four are final."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def finished(self) -> bool:
        return self not in (JobStatus.PENDING, JobStatus.RUNNING)


FINISHED = frozenset(s.value for s in JobStatus if s.finished)


class JobCancelled(Exception):
    """Raised inside a run by ctx.progress() once the job was cancelled."""


class LeaseLost(Conflict):
    """The caller no longer holds the job's lease: it ran out and the job went to another attempt, or the
    job ended. Its report is refused (409)."""

    code = "lease_lost"


@dataclass(frozen=True)
class OutputFile:
    """A file a run produced, stored with the job when it succeeds."""

    name: str            # a plain file name, e.g. "image-0.png" (no slashes)
    path: Path           # a file the run wrote, normally inside ctx.workdir
    content_type: str    # e.g. "image/png"


@dataclass
class JobOutput:
    """What a successful run returns."""

    result: dict[str, Any]                       # JSON-serialisable
    files: list[OutputFile] = field(default_factory=list)


class JobContext(Protocol):
    """What a run gets, one per attempt; the in-process runner and the remote worker each implement it."""

    job_id: int
    kind: str
    params: dict[str, Any]   # exactly what JobKind.prepare returned at submit time
    workdir: Path            # an empty private directory for this attempt, removed after it ends
    device: str              # "cpu", "cuda:0", ... : where this worker runs torch work
    cache: dict[str, Any]    # lives as long as the worker process: plugins keep loaded pipelines here

    def progress(self, fraction: float, message: str = "", **detail: Any) -> None:
        """Thread-safe, synchronous: records progress 0..1 for clients; raises JobCancelled once the job
        was cancelled."""

    def cancelled(self) -> bool:
        """True once the job was cancelled (or this attempt must stop)."""

    async def fetch_blob(self, sha256: str) -> Path:
        """A local, readable path to the blob with this SHA-256; only blobs listed in params["blobs"]."""


@dataclass(frozen=True)
class JobKind:
    """A kind of job a plugin runs, registered through the `atrium_job_kinds` hook."""

    name: str
    run: Callable[[JobContext], Awaitable[JobOutput]]
    prepare: Callable[[Node, User, dict[str, Any]], Awaitable[dict[str, Any]]]
    finish: Callable[[Node, Job, JobOutput], Awaitable[dict[str, Any]]] | None = None
    gpu: bool = False
    max_attempts: int | None = None
    description: str = ""


@dataclass(frozen=True)
class Claim:
    """A job given to a worker, with the secret of its lease (shown to that worker only)."""

    job: Job
    lease: str


@dataclass(frozen=True)
class Heartbeat:
    """The node's answer to a heartbeat."""

    cancelled: bool
    lease_until: Any


def hash_lease(lease: str) -> str:
    return hashlib.sha256(lease.encode("utf-8")).hexdigest()


def check_file_name(name: str) -> str:
    """A plain file name (no directories, no leading dot); InvalidInput otherwise."""
    if not isinstance(name, str) or not FILE_NAME_RE.match(name):
        raise InvalidInput(f"output file name {name!r} is not allowed: use 1-200 letters, digits, '.', '_' "
                           "and '-', starting with a letter or digit")
    return name


def check_blob_listed(params: dict[str, Any], sha256: str) -> str:
    """The digest, if the job's params list it in "blobs"; InvalidInput otherwise."""
    if not isinstance(sha256, str) or not SHA256_RE.match(sha256):
        raise InvalidInput(f"not a SHA-256 digest (64 lowercase hex digits): {sha256!r}")
    if sha256 not in (params.get("blobs") or []):
        raise InvalidInput(f"blob {sha256} is not listed in this job's params[\"blobs\"]")
    return sha256


def collect_kinds(plugins: PluginHost) -> dict[str, JobKind]:
    """The job kinds the loaded plugins register (hook `atrium_job_kinds`); a name registered twice, or
    something that is not a JobKind, stops the node with PluginLoadError naming the plugin."""
    kinds: dict[str, JobKind] = {}
    owners: dict[str, str] = {}
    for plugin in plugins.loaded:
        def register(kind: JobKind, plugin: str = plugin) -> None:
            if not isinstance(kind, JobKind):
                raise PluginLoadError(f"plugin {plugin!r} registered {kind!r}, which is not a JobKind")
            if not KIND_NAME_RE.match(kind.name):
                raise PluginLoadError(f"plugin {plugin!r}: job kind name {kind.name!r} must be 1-64 lowercase "
                                      "letters, digits, '_' and '-', starting with a letter")
            if kind.name in kinds:
                raise PluginLoadError(f"plugin {plugin!r} registers the job kind {kind.name!r}, which plugin "
                                      f"{owners[kind.name]!r} already registers")
            kinds[kind.name], owners[kind.name] = kind, plugin

        for result in plugins.hook_for(plugin, "atrium_job_kinds")(register=register):
            if asyncio.iscoroutine(result):
                result.close()
                raise PluginLoadError(f"plugin {plugin!r}: atrium_job_kinds must be a plain function, not async")
    return kinds


class JobEvents:
    """Progress and status changes of jobs handled by this process, fanned out to listeners."""

    def __init__(self) -> None:
        self._listeners: dict[int, set[asyncio.Queue[dict[str, Any]]]] = {}

    def publish(self, job_id: int, event: dict[str, Any]) -> None:
        for queue in self._listeners.get(job_id, ()):
            queue.put_nowait(event)

    def end_all(self) -> None:
        """Tell every listener to stop listening (the node is stopping)."""
        for queues in self._listeners.values():
            for queue in queues:
                queue.put_nowait({"event": "end"})

    @contextlib.contextmanager
    def listen(self, job_id: int) -> Any:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._listeners.setdefault(job_id, set()).add(queue)
        try:
            yield queue
        finally:
            listeners = self._listeners.get(job_id)
            if listeners is not None:
                listeners.discard(queue)
                if not listeners:
                    del self._listeners[job_id]


def status_event(job: Job) -> dict[str, Any]:
    return {"event": "status", "data": {"id": job.id, "status": job.status, "progress": job.progress,
                                        "message": job.message, "error": job.error, "result": job.result,
                                        "attempts": job.attempts}}


def progress_event(job_id: int, progress: float, message: str, detail: dict[str, Any] | None) -> dict[str, Any]:
    return {"event": "progress", "data": {"id": job_id, "progress": progress, "message": message,
                                          "detail": detail or {}}}


class Wakeup:
    """Wakes waiting workers when a job may be claimable. A waiter takes a ticket before it looks for a job,
    so a job queued between its look and its wait still wakes it."""

    def __init__(self) -> None:
        self._tickets: list[asyncio.Future[None]] = []

    def ticket(self) -> asyncio.Future[None]:
        ticket: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tickets.append(ticket)
        return ticket

    def set(self) -> None:
        """Wake every ticket taken so far."""
        tickets, self._tickets = self._tickets, []
        for ticket in tickets:
            if not ticket.done():
                ticket.set_result(None)

    def discard(self, ticket: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):
            self._tickets.remove(ticket)

    async def wait(self, ticket: asyncio.Future[None], timeout: float) -> None:
        """Until the ticket is woken or `timeout` seconds passed."""
        try:
            await asyncio.wait_for(asyncio.shield(ticket), timeout=timeout)
        except TimeoutError:
            pass
        finally:
            self.discard(ticket)


class Jobs:
    """The job service of a node: submit, look at and cancel jobs; claim and report on them (workers)."""

    def __init__(self, db: Database, config: Config, kinds: dict[str, JobKind] | None = None) -> None:
        self.db = db
        self.config = config
        self.settings = config.jobs
        self.root = config.jobs_path
        self.kinds: dict[str, JobKind] = dict(kinds or {})
        self.node: Node | None = None
        self.events_bus = JobEvents()
        # Set by submit (and by anything that frees a job or a device): idle in-process workers wake up.
        self.wake = Wakeup()
        # Cancellation callbacks of attempts running in this process, so they stop without a round trip.
        self._local_cancels: dict[int, Callable[[], None]] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._last_retention = 0.0
        self.runner: Any = None
        self.worker_tokens = WorkerTokens(db)
        self._stopping = asyncio.Event()
        self.closing = False  # the node is stopping: long polls and event streams end

    @property
    def lease_seconds(self) -> float:
        return float(self.settings.lease_seconds)

    def worker_name(self, suffix: str) -> str:
        return f"{socket.gethostname()[:40]}:{os.getpid()}:{suffix}"[:100]

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the sweeper of expired leases and this process's workers ([jobs] workers)."""
        from node.core.runner import LocalWorkers

        self.root.mkdir(parents=True, exist_ok=True)
        self._tasks.append(asyncio.create_task(self._sweep_forever(), name="atrium-jobs-sweeper"))
        self.runner = LocalWorkers(self, self.settings.workers)
        await self.runner.start()

    async def close(self) -> None:
        """Stop the workers (their running attempts go back to pending at once) and the sweeper."""
        if self.runner is not None:
            await self.runner.close()
            self.runner = None
        self._stopping.set()  # the sweeper ends between rounds, never in the middle of a write
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    def shutdown(self) -> None:
        """End event streams and long-polling claims at once: the node is stopping, and its HTTP server
        waits for open requests before it closes. (Clients poll or reconnect; jobs go on after a restart.)"""
        self.closing = True
        self.events_bus.end_all()
        self.wake.set()

    # -- users' side ---------------------------------------------------------------------------

    async def submit(self, owner: User, kind: str, params: dict[str, Any]) -> Job:
        """Validate `params` with the kind's prepare(), apply the owner's queue limit (RateLimited: 429)
        and queue the job; idle workers wake at once."""
        job_kind = self.kinds.get(kind) if isinstance(kind, str) else None
        if job_kind is None:
            known = ", ".join(sorted(self.kinds)) or "none: no enabled plugin registers one"
            raise InvalidInput(f"unknown job kind {kind!r} (this node runs: {known})")
        if not isinstance(params, dict):
            raise InvalidInput("params must be a JSON object")
        if self.node is None:
            raise RuntimeError("Jobs.node is not set")
        prepared = await job_kind.prepare(self.node, owner, params)
        if not isinstance(prepared, dict):
            raise TypeError(f"job kind {kind!r}: prepare() returned {type(prepared).__name__}, not a dict")
        try:
            encoded = json.dumps(prepared)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"job kind {kind!r}: prepare() returned params that are not JSON: {exc}") from None
        if len(encoded) > MAX_PARAMS_BYTES:
            raise TooLarge(f"the job's parameters take {len(encoded)} bytes; at most {MAX_PARAMS_BYTES} are kept")
        for sha in prepared.get("blobs") or []:
            if not isinstance(sha, str) or not SHA256_RE.match(sha):
                raise TypeError(f"job kind {kind!r}: params['blobs'] must list SHA-256 digests; got {sha!r}")
        limit = self.settings.max_queued_per_user
        exempt = Role(owner.role).includes(Role.ADMIN)
        idle = self.runner.take_idle(job_kind) if self.runner is not None else None
        claim: Claim | None = None
        try:
            job, lease = await self._insert(owner, job_kind, prepared, exempt, limit, idle.name if idle else None)
            if lease is not None:
                claim = Claim(job=job, lease=lease)
        finally:
            if idle is not None:
                idle.give(claim)
        if claim is None:
            self.wake.set()
        self.events_bus.publish(job.id, status_event(job))  # type: ignore[arg-type]
        return job

    async def _insert(self, owner: User, job_kind: JobKind, prepared: dict[str, Any], exempt: bool, limit: int,
                      worker: str | None) -> tuple[Job, str | None]:
        """Insert the job after checking the queue limit; with `worker`, already claimed by it (the lease
        is returned)."""
        async with self.db.session() as session:
            if not exempt:
                count = (select(func.count()).select_from(Job).where(
                    Job.owner_id == owner.id, col(Job.status).in_([JobStatus.PENDING.value, JobStatus.RUNNING.value]))
                    .scalar_subquery())
                query = select(count).where(User.id == owner.id)
                if self.db.dialect == "postgresql":
                    # Lock the owner's row: two submissions of one user at once cannot both pass the limit.
                    # (SQLite: the session holds the database's write lock from BEGIN.)
                    query = query.with_for_update(of=User)  # type: ignore[arg-type]
                queued = (await session.exec(query)).one()
                if queued >= limit:
                    raise RateLimited(f"you have {queued} jobs pending or running, the most this node allows "
                                      f"per user ([jobs] max_queued_per_user = {limit}); wait for one to finish "
                                      "or cancel one", retry_after=max(1, self.settings.poll_seconds))
            job = Job(kind=job_kind.name, owner_id=owner.id, status=JobStatus.PENDING.value, params=prepared,
                      max_attempts=job_kind.max_attempts or self.settings.max_attempts, gpu=job_kind.gpu)
            lease = None
            if worker is not None:
                lease, now = secrets.token_urlsafe(32), utcnow()
                job.status, job.attempts, job.lease_hash, job.worker, job.device = \
                    JobStatus.RUNNING.value, 1, hash_lease(lease), worker, "cpu"
                job.lease_until, job.heartbeat_at, job.started_at = \
                    now + timedelta(seconds=self.lease_seconds), now, now
                job.message = "started"
            session.add(job)
            await session.commit()  # every column is set here, none by the database: no refresh needed
        return job, lease

    async def get(self, job_id: int, viewer: User) -> Job:
        """A job its owner or an admin may see; NotFound for anyone else (they may not know it exists)."""
        async with self.db.read_session() as session:
            job = await session.get(Job, job_id)
        if job is None or (job.owner_id != viewer.id and not Role(viewer.role).includes(Role.ADMIN)):
            raise NotFound(f"no job {job_id}")
        return job

    async def load(self, job_id: int) -> Job:
        """A job by id, whoever owns it (for workers and the node's own code); NotFound otherwise."""
        async with self.db.read_session() as session:
            job = await session.get(Job, job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        return job

    async def list(self, viewer: User, *, status: str | None = None, kind: str | None = None, limit: int = 50,
                   mine: bool = True) -> list[Job]:
        """The newest jobs first: the viewer's own, or (mine=False, admins only) everyone's."""
        if not mine and not Role(viewer.role).includes(Role.ADMIN):
            raise Forbidden("only admins may list the jobs of every user")
        if status is not None and status not in {s.value for s in JobStatus}:
            raise InvalidInput(f"unknown status {status!r}: use one of {', '.join(s.value for s in JobStatus)}")
        if not isinstance(limit, int) or not 1 <= limit <= MAX_LIST:
            raise InvalidInput(f"limit must be between 1 and {MAX_LIST}")
        query = select(Job).order_by(col(Job.id).desc()).limit(limit)
        if mine:
            query = query.where(Job.owner_id == viewer.id)
        if status is not None:
            query = query.where(Job.status == status)
        if kind is not None:
            query = query.where(Job.kind == kind)
        async with self.db.read_session() as session:
            return list((await session.exec(query)).all())

    async def owners(self, jobs: list[Job]) -> dict[int, str]:
        """User names of the owners of these jobs, by user id."""
        ids = {job.owner_id for job in jobs}
        if not ids:
            return {}
        async with self.db.read_session() as session:
            rows = (await session.exec(select(User.id, User.username).where(col(User.id).in_(ids)))).all()
        return {user_id: name for user_id, name in rows}

    async def cancel(self, job_id: int, actor: User) -> Job:
        """Cancel a job: a pending one at once; a running one is asked to stop (its worker sees it on its
        next progress report or heartbeat). Conflict for a job that already ended."""
        await self.get(job_id, actor)
        async with self.db.session() as session:
            job = await session.get(Job, job_id, with_for_update=self.db.dialect == "postgresql")
            if job is None:  # deleted meanwhile
                raise NotFound(f"no job {job_id}")
            if JobStatus(job.status).finished:
                raise Conflict(f"job {job_id} already ended ({job.status})")
            if job.status == JobStatus.PENDING:
                job.status = JobStatus.CANCELLED.value
                job.finished_at = utcnow()
                job.message = f"cancelled by {actor.username}"
            else:
                job.cancel_requested = True
                job.message = f"cancelling (asked by {actor.username})"
            session.add(job)
            await session.commit()
            await session.refresh(job)
        local = self._local_cancels.get(job_id)
        if local is not None:
            local()
        self.events_bus.publish(job_id, status_event(job))
        return job

    async def events(self, job_id: int) -> AsyncIterator[dict[str, Any]]:
        """The job's status now, then each progress and status change until it ends. Changes made in this
        process arrive at once; those made by other processes are found by polling ([jobs] poll_seconds)."""
        with self.events_bus.listen(job_id) as queue:
            job = await self.load(job_id)
            yield status_event(job)
            last = (job.status, job.progress, job.message)
            while not JobStatus(job.status).finished and not self.closing:
                try:
                    event = await asyncio.wait_for(queue.get(), timeout=self.settings.poll_seconds)
                except TimeoutError:
                    job = await self.load(job_id)
                    if (job.status, job.progress, job.message) != last:
                        last = (job.status, job.progress, job.message)
                        yield status_event(job)
                    continue
                if event["event"] == "end":
                    return
                yield event
                if event["event"] == "status":
                    last = (event["data"]["status"], event["data"]["progress"], event["data"]["message"])
                    if event["data"]["status"] in FINISHED:
                        return
                else:
                    last = (last[0], event["data"]["progress"], event["data"]["message"])

    async def wait(self, job_id: int, timeout: float | None = None) -> Job:
        """The job once it has ended; TimeoutError after `timeout` seconds."""
        async with asyncio.timeout(timeout):
            async for _event in self.events(job_id):
                pass
        return await self.load(job_id)

    def files_dir(self, job_id: int) -> Path:
        return self.root / str(job_id) / "files"

    def output_path(self, job: Job, name: str) -> Path:
        """The path of one of the job's stored output files; NotFound when it has none of that name."""
        if not any(f["name"] == name for f in job.files or []) or not FILE_NAME_RE.match(name):
            raise NotFound(f"job {job.id} has no output file {name!r}")
        path = self.files_dir(job.id) / name  # type: ignore[arg-type]
        if not path.is_file():
            raise NotFound(f"job {job.id}'s output file {name!r} is gone")
        return path

    # -- workers' side -------------------------------------------------------------------------

    async def claim(self, worker: str, kinds: list[str], device: str = "cpu") -> Claim | None:
        """Give the oldest pending job of one of `kinds` to `worker` with a fresh lease; None when there
        is none. Claiming counts an attempt."""
        if not kinds:
            return None
        lease = secrets.token_urlsafe(32)
        now = utcnow()
        # One statement: pick the oldest pending job (PostgreSQL: skipping rows other claims hold) and
        # take it. On SQLite the session holds the write lock from BEGIN, so no other claim interleaves.
        oldest = (select(Job.id).where(Job.status == JobStatus.PENDING.value, col(Job.kind).in_(kinds))
                  .order_by(col(Job.id)).limit(1))
        if self.db.dialect == "postgresql":
            oldest = oldest.with_for_update(skip_locked=True)
        take = (update(Job).where(col(Job.id) == oldest.scalar_subquery()).values(
            status=JobStatus.RUNNING.value, attempts=col(Job.attempts) + 1, lease_hash=hash_lease(lease),
            worker=worker[:100], device=device[:32], heartbeat_at=now,
            lease_until=now + timedelta(seconds=self.lease_seconds),
            started_at=func.coalesce(col(Job.started_at), literal(now, UTCDateTime())), progress=0.0,
            message=case((col(Job.attempts) == 0, "started"), else_="started again"), detail=None)
            .returning(Job).execution_options(synchronize_session=False))
        if self.db.dialect == "sqlite" and not await self._exists(oldest):
            return None  # looked without taking SQLite's write lock: idle workers poll without blocking writers
        async with self.db.session() as session:
            job = (await session.exec(take)).scalars().first()  # type: ignore[call-overload]
            await session.commit()
        if job is None:
            return None
        self.events_bus.publish(job.id, status_event(job))  # type: ignore[arg-type]
        return Claim(job=job, lease=lease)

    async def _exists(self, query: Any) -> bool:
        async with self.db.read_session() as session:
            return (await session.exec(query)).first() is not None

    async def _held(self, session: Any, job_id: int, lease: str, *, lock: bool = True) -> Job:
        # PostgreSQL: lock the row, so the sweeper (which skips locked rows) cannot take the job back
        # while its holder reports on it, nor a cancel cross a claim. SQLite: the session holds the
        # write lock already.
        job = await session.get(Job, job_id, with_for_update=lock and self.db.dialect == "postgresql")
        if job is None:
            raise NotFound(f"no job {job_id}")
        if not isinstance(lease, str) or job.lease_hash != hash_lease(lease) or job.status != JobStatus.RUNNING:
            raise LeaseLost(f"this worker no longer holds job {job_id}: its lease ran out or the job ended "
                            f"({job.status}); the report is refused")
        return job

    async def held(self, job_id: int, lease: str) -> Job:
        """The job, if `lease` is its current lease; LeaseLost (409) otherwise."""
        async with self.db.read_session() as session:
            return await self._held(session, job_id, lease, lock=False)

    async def heartbeat(self, job_id: int, lease: str, progress: float | None = None, message: str | None = None,
                        detail: dict[str, Any] | None = None) -> Heartbeat:
        """Renew the lease and record progress; says whether the job was cancelled. LeaseLost when the
        lease is no longer this worker's."""
        if progress is not None and not (isinstance(progress, (int, float)) and 0.0 <= progress <= 1.0):
            raise InvalidInput(f"progress must be a number from 0 to 1; got {progress!r}")
        if detail is not None and len(json.dumps(detail)) > MAX_DETAIL_BYTES:
            raise InvalidInput(f"a progress detail may take at most {MAX_DETAIL_BYTES} bytes of JSON")
        now = utcnow()
        async with self.db.session() as session:
            job = await self._held(session, job_id, lease)
            job.lease_until = now + timedelta(seconds=self.lease_seconds)
            job.heartbeat_at = now
            changed = False
            if progress is not None and progress != job.progress:
                job.progress, changed = float(progress), True
            if message is not None and message[:MESSAGE_MAX] != job.message:
                job.message, changed = message[:MESSAGE_MAX], True
            if detail is not None and detail != job.detail:
                job.detail, changed = detail, True
            session.add(job)
            await session.commit()
            answer = Heartbeat(cancelled=job.cancel_requested, lease_until=job.lease_until)
        if changed:
            self.events_bus.publish(job_id, progress_event(job_id, job.progress, job.message, job.detail))
        return answer

    def upload_dir(self, job_id: int, lease: str) -> Path:
        """Where a remote worker's uploads for this attempt wait until it completes."""
        return self.root / str(job_id) / f".upload-{hash_lease(lease)[:16]}"

    async def store_upload(self, job_id: int, lease: str, name: str, chunks: AsyncIterator[bytes]) -> int:
        """Store one output file a remote worker uploads (atomically; at most [jobs] max_file_bytes);
        returns its size."""
        check_file_name(name)
        await self.held(job_id, lease)
        directory = self.upload_dir(job_id, lease)
        limit = self.settings.max_file_bytes
        await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
        temp = directory / f".{name}.{secrets.token_hex(6)}.part"
        size = 0
        handle = await asyncio.to_thread(open, temp, "wb")
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise TooLarge(f"output file {name!r} is larger than this node accepts "
                                   f"([jobs] max_file_bytes = {limit})")
                await asyncio.to_thread(handle.write, chunk)
            await asyncio.to_thread(_flush_and_sync, handle)
        except BaseException:
            handle.close()
            temp.unlink(missing_ok=True)
            raise
        handle.close()
        await asyncio.to_thread(os.replace, temp, directory / name)
        return size

    async def complete(self, job_id: int, lease: str, output: JobOutput) -> Job:
        """End an attempt that succeeded: store its files, run the kind's finish() and mark the job
        succeeded. LeaseLost when the lease is no longer the caller's (nothing is recorded then)."""
        if not isinstance(output.result, dict):
            raise InvalidInput("a job's result must be a JSON object")
        try:
            json.dumps(output.result)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"the job's result is not JSON: {exc}") from None
        names = [check_file_name(f.name) for f in output.files]
        if len(set(names)) != len(names):
            raise InvalidInput("two output files have the same name")
        # Storing files and finish() may take a while: the lease is renewed meanwhile.
        await self.heartbeat(job_id, lease, message="storing results")
        job = await self.held(job_id, lease)
        kind = self.kinds.get(job.kind)
        renewing = asyncio.create_task(self._renew(job_id, lease))
        try:
            stored, described = await asyncio.to_thread(self._store_files, job_id, output.files)
            final = JobOutput(result=output.result, files=stored)
            result = output.result
            if kind is not None and kind.finish is not None:
                assert self.node is not None
                result = await kind.finish(self.node, job, final)
        except (LeaseLost, InvalidInput):
            raise
        except Exception as exc:
            log.exception("job %s: finish() of kind %r failed", job_id, job.kind)
            return await self.fail(job_id, lease, f"storing the results failed: {_describe(exc)}")
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError, LeaseLost):
                await renewing
        async with self.db.session() as session:
            changed = (await session.exec(update(Job).where(  # type: ignore[call-overload]
                col(Job.id) == job_id, col(Job.lease_hash) == hash_lease(lease),
                col(Job.status) == JobStatus.RUNNING.value).values(
                status=JobStatus.SUCCEEDED.value, result=result, files=described, progress=1.0, message="done",
                finished_at=utcnow(), lease_hash=None, lease_until=None))).rowcount
            await session.commit()
        if not changed:
            raise LeaseLost(f"job {job_id} changed hands while its results were stored; the report is refused")
        return await self._ended(job_id)

    async def _renew(self, job_id: int, lease: str) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            await self.heartbeat(job_id, lease)

    def _store_files(self, job_id: int, files: list[OutputFile]) -> tuple[list[OutputFile], list[dict[str, Any]]]:
        """Move the files into a fresh directory, then rename it to DATA/jobs/<id>/files in one step."""
        job_dir = self.root / str(job_id)
        if not files:
            return [], []
        job_dir.mkdir(parents=True, exist_ok=True)
        staging = job_dir / f".staging-{secrets.token_hex(6)}"
        staging.mkdir()
        described = []
        try:
            for f in files:
                if not Path(f.path).is_file():
                    raise InvalidInput(f"output file {f.name!r} does not exist ({f.path})")
                target = staging / f.name
                shutil.move(str(f.path), target)
                with open(target, "rb") as handle:
                    os.fsync(handle.fileno())
                described.append({"name": f.name, "size": target.stat().st_size,
                                  "content_type": f.content_type or "application/octet-stream"})
            final = job_dir / "files"
            if final.exists():  # an earlier attempt stored files and then lost its lease
                shutil.rmtree(final)
            os.replace(staging, final)
            _fsync_dir(job_dir)  # the rename is durable before the job is marked done
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        for leftover in job_dir.glob(".upload-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        return [OutputFile(f.name, final / f.name, d["content_type"]) for f, d in zip(files, described)], described

    async def fail(self, job_id: int, lease: str, error: str) -> Job:
        """End an attempt that failed: the job fails with `error` (failures are not retried; lost leases are)."""
        return await self._end(job_id, lease, JobStatus.FAILED, error=str(error)[:ERROR_MAX] or "failed")

    async def acknowledge_cancel(self, job_id: int, lease: str) -> Job:
        """The worker stopped a cancelled job: it ends as cancelled."""
        return await self._end(job_id, lease, JobStatus.CANCELLED, message="cancelled")

    async def release(self, job_id: int, lease: str) -> Job:
        """The worker is stopping: the job goes back to pending at once, this attempt not counted."""
        async with self.db.session() as session:
            job = await self._held(session, job_id, lease)
            if job.cancel_requested:
                job.status, job.finished_at, job.message = JobStatus.CANCELLED.value, utcnow(), "cancelled"
            else:
                job.status, job.message = JobStatus.PENDING.value, "waiting for a worker (the last one stopped)"
                job.attempts = max(0, job.attempts - 1)
                job.progress = 0.0
            job.lease_hash = job.lease_until = job.worker = None
            session.add(job)
            await session.commit()
        self.wake.set()
        return await self._ended(job_id)

    async def _end(self, job_id: int, lease: str, status: JobStatus, *, error: str | None = None,
                   message: str | None = None) -> Job:
        async with self.db.session() as session:
            job = await self._held(session, job_id, lease)
            job.status = status.value
            job.error = error
            job.message = message or status.value
            job.finished_at = utcnow()
            job.lease_hash = job.lease_until = None
            session.add(job)
            await session.commit()
        return await self._ended(job_id)

    async def _ended(self, job_id: int) -> Job:
        job = await self.load(job_id)
        self.events_bus.publish(job_id, status_event(job))
        self.wake.set()  # a device or a queue slot is free again
        return job

    async def blob_for(self, job_id: int, lease: str, sha256: str) -> Path:
        """The stored blob a remote worker's attempt may fetch: one listed in its params["blobs"]."""
        job = await self.held(job_id, lease)
        check_blob_listed(job.params, sha256)
        assert self.node is not None
        return self.node.blobs.open_path(sha256)

    def on_cancel(self, job_id: int, callback: Callable[[], None] | None) -> None:
        """Register (or with None, drop) how an attempt running in this process is told to stop."""
        if callback is None:
            self._local_cancels.pop(job_id, None)
        else:
            self._local_cancels[job_id] = callback

    # -- housekeeping --------------------------------------------------------------------------

    async def sweep(self) -> int:
        """Jobs whose lease ran out: back to pending while attempts remain, else expired (cancelled when a
        cancel was asked). Returns how many were handled."""
        now = utcnow()
        expired = select(Job.id).where(Job.status == JobStatus.RUNNING.value, col(Job.lease_until) < now).limit(1)
        if not await self._exists(expired):
            return 0  # the common case, found without a write lock
        async with self.db.session() as session:
            query = select(Job).where(Job.status == JobStatus.RUNNING.value, col(Job.lease_until) < now)
            if self.db.dialect == "postgresql":
                query = query.with_for_update(skip_locked=True)
            stale = list((await session.exec(query)).all())
            for job in stale:
                worker = job.worker or "?"
                if job.cancel_requested:
                    job.status, job.message, job.finished_at = JobStatus.CANCELLED.value, "cancelled", now
                elif job.attempts >= job.max_attempts:
                    job.status, job.finished_at = JobStatus.EXPIRED.value, now
                    job.message = "expired"
                    job.error = (f"gave up after {job.attempts} attempts: each time the worker stopped renewing "
                                 f"its lease (the last one was {worker}); [jobs] max_attempts = {job.max_attempts}")
                else:
                    job.status = JobStatus.PENDING.value
                    job.message = f"waiting for a worker (the lease of {worker} ran out; attempt {job.attempts} " \
                                  f"of {job.max_attempts} lost)"
                    job.progress = 0.0
                job.lease_hash = job.lease_until = None
                job.worker = None
                session.add(job)
            await session.commit()
        for job in stale:
            log.warning("job %s (%s): lease ran out; now %s", job.id, job.kind, job.status)
            self.events_bus.publish(job.id, status_event(job))  # type: ignore[arg-type]
        if stale:
            self.wake.set()
        return len(stale)

    async def delete_old(self) -> int:
        """Delete jobs (and their files) that finished more than [jobs] keep_days ago; returns how many."""
        if not self.settings.keep_days:
            return 0
        cutoff = utcnow() - timedelta(days=self.settings.keep_days)
        async with self.db.session() as session:
            old = list((await session.exec(select(Job.id).where(
                col(Job.finished_at).is_not(None), col(Job.finished_at) < cutoff))).all())
            for job_id in old:
                await session.exec(_delete_job(job_id))  # type: ignore[call-overload]
            await session.commit()
        for job_id in old:
            await asyncio.to_thread(shutil.rmtree, self.root / str(job_id), True)
        return len(old)

    async def _sweep_forever(self) -> None:
        interval = min(self.lease_seconds / 2, float(self.settings.poll_seconds))
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            try:
                await self.sweep()
                if loop.time() - self._last_retention > RETENTION_INTERVAL:
                    self._last_retention = loop.time()
                    await asyncio.to_thread(_remove_stale_workdirs, self.root, STALE_WORKDIR_SECONDS)
                    removed = await self.delete_old()
                    if removed:
                        log.info("deleted %d finished jobs older than %d days", removed, self.settings.keep_days)
            except Exception:  # one failed round must not end the sweeping
                log.exception("sweeping jobs failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=interval)


def _delete_job(job_id: int) -> Any:
    from sqlalchemy import delete

    return delete(Job).where(col(Job.id) == job_id)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_workdirs(root: Path, older_than: float) -> int:
    """Work directories of attempts that ended without cleaning up (their process was killed)."""
    removed = 0
    cutoff = time.time() - older_than
    for path in root.glob(".work-*"):
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < cutoff:
                shutil.rmtree(path)
                removed += 1
    return removed


def _flush_and_sync(handle: Any) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def _describe(exc: BaseException) -> str:
    detail = getattr(exc, "detail", None)
    if isinstance(detail, str):
        return detail
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
