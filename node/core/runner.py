"""Running job attempts: the context a run gets, the heartbeat that keeps its lease, and the node's own
in-process workers. The remote worker (node/worker.py) drives attempts with the same `run_attempt`,
reporting over HTTP instead of to the database."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import tempfile
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from node.core.errors import AtriumError
from node.core.jobs import (MAX_DETAIL_BYTES, MESSAGE_MAX, JobCancelled, JobContext, JobKind, JobOutput, LeaseLost,
                            check_blob_listed)

if TYPE_CHECKING:
    from node.core.jobs import Claim, Jobs

log = logging.getLogger(__name__)

# Progress reports are sent at most this often (each is a database write or an HTTP request).
PROGRESS_SECONDS = 0.25


class Reporter(Protocol):
    """Where an attempt reports: the database (in-process) or the node over HTTP (remote worker)."""

    async def heartbeat(self, progress: float, message: str, detail: dict[str, Any]) -> bool:
        """Renew the lease with the latest progress; True when the job was cancelled. Raises LeaseLost."""

    async def complete(self, output: JobOutput) -> None: ...

    async def fail(self, error: str) -> None: ...

    async def cancelled(self) -> None: ...

    async def release(self) -> None: ...


class AttemptContext(JobContext):
    """The JobContext of one attempt, shared by the in-process runner and the remote worker."""

    def __init__(self, *, job_id: int, kind: str, params: dict[str, Any], workdir: Path, device: str,
                 cache: dict[str, Any], fetch: Callable[[str], Awaitable[Path]],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.job_id = job_id
        self.kind = kind
        self.params = params
        self.workdir = workdir
        self.device = device
        self.cache = cache
        self._fetch = fetch
        self._loop = loop
        self._lock = threading.Lock()
        self._cancelled = threading.Event()
        self.changed = asyncio.Event()
        self.state: tuple[float, str, dict[str, Any]] = (0.0, "", {})
        self.lost = False  # the lease went to another attempt: stop without reporting

    def progress(self, fraction: float, message: str = "", **detail: Any) -> None:
        """Thread-safe, synchronous: records progress 0..1 for clients; raises JobCancelled once the job
        was cancelled."""
        fraction = min(1.0, max(0.0, float(fraction)))
        with self._lock:
            self.state = (fraction, str(message)[:MESSAGE_MAX], _json_detail(detail))
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self.changed.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closing: nobody listens any more
                self._loop.call_soon_threadsafe(self.changed.set)
        if self._cancelled.is_set():
            raise JobCancelled(f"job {self.job_id} was cancelled")

    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Make the next progress() raise JobCancelled (the job was cancelled, or the attempt must stop)."""
        self._cancelled.set()
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self.changed.set)

    def snapshot(self) -> tuple[float, str, dict[str, Any]]:
        with self._lock:
            return self.state

    async def fetch_blob(self, sha256: str) -> Path:
        """A local, readable path to a blob listed in params["blobs"] (InvalidInput for any other)."""
        check_blob_listed(self.params, sha256)
        return await self._fetch(sha256)


async def _heartbeats(ctx: AttemptContext, reporter: Reporter, every: float) -> None:
    """Renew the lease every `every` seconds, and report progress when it changes (at most every
    PROGRESS_SECONDS); tell the run to stop when the job was cancelled or the lease was lost."""
    loop = asyncio.get_running_loop()
    sent: tuple[float, str, dict[str, Any]] | None = None
    last = loop.time()
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ctx.changed.wait(), timeout=max(0.0, every - (loop.time() - last)))
        ctx.changed.clear()
        state = ctx.snapshot()
        due = loop.time() - last >= every
        if state == sent and not due:
            continue
        try:
            cancelled = await reporter.heartbeat(*state)
        except LeaseLost:
            log.warning("job %s: the lease was lost; stopping this attempt", ctx.job_id)
            ctx.lost = True
            ctx.cancel()
            return
        except Exception as exc:  # the node is briefly unreachable: the lease has slack, try again
            log.warning("job %s: heartbeat failed: %s", ctx.job_id, getattr(exc, "detail", exc))
            await asyncio.sleep(min(every, 1.0))
            continue
        sent, last = state, loop.time()
        if cancelled:
            ctx.cancel()
        await asyncio.sleep(PROGRESS_SECONDS)


async def run_attempt(kind: JobKind, ctx: AttemptContext, reporter: Reporter, heartbeat_seconds: float) -> str:
    """Run one attempt and report how it ended; returns the outcome (succeeded, failed, cancelled, lost,
    released). The workdir is removed afterwards. A stop (task cancelled) releases the job at once."""
    beating = asyncio.create_task(_heartbeats(ctx, reporter, heartbeat_seconds), name=f"atrium-job-{ctx.job_id}-hb")
    outcome = "lost"
    try:
        try:
            output = await kind.run(ctx)
            if not isinstance(output, JobOutput):
                raise TypeError(f"job kind {kind.name!r}: run() returned {type(output).__name__}, not a JobOutput")
        except JobCancelled:
            if not ctx.lost:
                await reporter.cancelled()
                outcome = "cancelled"
            return outcome
        except asyncio.CancelledError:
            ctx.cancel()  # a run in a thread stops at its next progress()
            if not ctx.lost:
                with contextlib.suppress(Exception):
                    await reporter.release()
                outcome = "released"
            raise
        except Exception as exc:
            if ctx.lost:
                return outcome
            log.warning("job %s (%s) failed: %s", ctx.job_id, kind.name, exc, exc_info=not isinstance(exc, AtriumError))
            await reporter.fail(_error_text(exc))
            return "failed"
        if ctx.lost:
            return outcome
        if ctx.cancelled():
            await reporter.cancelled()
            return "cancelled"
        beating.cancel()
        try:
            await reporter.complete(output)
        except LeaseLost:
            return "lost"
        except AtriumError as exc:  # the node refused the output (a bad file name, a result not JSON, ...)
            await reporter.fail(f"the run's output was refused: {_error_text(exc)}")
            return "failed"
        return "succeeded"
    except LeaseLost:
        return "lost"
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating
        await asyncio.to_thread(shutil.rmtree, ctx.workdir, True)


def _json_detail(detail: dict[str, Any]) -> dict[str, Any]:
    """The detail as plain JSON (values it cannot hold become strings); dropped when it is too big, so a
    plugin's progress report can never stop the heartbeats that keep its lease."""
    if not detail:
        return {}
    text = json.dumps(detail, default=str)
    if len(text) > MAX_DETAIL_BYTES:
        return {"detail_dropped": f"{len(text)} bytes, more than {MAX_DETAIL_BYTES}"}
    return json.loads(text)


def _error_text(exc: BaseException) -> str:
    detail = getattr(exc, "detail", None)
    if isinstance(detail, str):
        return detail
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def detect_devices() -> list[str]:
    """The CUDA devices torch sees ("cuda:0", ...), else ["cpu"]. Imports torch: call it only when a job
    kind needs a GPU, and in a thread."""
    try:
        import torch
    except ImportError:
        return ["cpu"]
    if torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu"]


class LocalReporter:
    """Reports of an attempt run by the node's own process: straight to the database."""

    def __init__(self, jobs: Jobs, claim: Claim) -> None:
        self.jobs = jobs
        self.job_id = claim.job.id
        self.lease = claim.lease

    async def heartbeat(self, progress: float, message: str, detail: dict[str, Any]) -> bool:
        return (await self.jobs.heartbeat(self.job_id, self.lease, progress, message, detail)).cancelled  # type: ignore[arg-type]

    async def complete(self, output: JobOutput) -> None:
        await self.jobs.complete(self.job_id, self.lease, output)  # type: ignore[arg-type]

    async def fail(self, error: str) -> None:
        await self.jobs.fail(self.job_id, self.lease, error)  # type: ignore[arg-type]

    async def cancelled(self) -> None:
        await self.jobs.acknowledge_cancel(self.job_id, self.lease)  # type: ignore[arg-type]

    async def release(self) -> None:
        await self.jobs.release(self.job_id, self.lease)  # type: ignore[arg-type]


class IdleWorker:
    """A worker of this process waiting for work. `Jobs.submit` may hand it the job it queues, claimed in
    the same transaction that inserts it (one database write instead of two between submit and start).
    An idle worker found no pending job of its kinds when it last looked, so the hand-over jumps no queue
    of this process; a job queued through another process just before may start just after."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.handed: asyncio.Future[Claim | None] = asyncio.get_running_loop().create_future()

    def give(self, claim: Claim | None) -> None:
        """The claimed job (None: the submission failed; the worker looks for work again)."""
        if not self.handed.done():
            self.handed.set_result(claim)


class LocalWorkers:
    """The node's in-process workers: `count` loops that claim jobs of the registered kinds. GPU kinds run
    one at a time per device (CUDA devices when torch sees any, else one "cpu" slot)."""

    def __init__(self, jobs: Jobs, count: int) -> None:
        self.jobs = jobs
        self.count = count
        self.cache: dict[str, Any] = {}
        self.free_devices: list[str] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._running: set[asyncio.Task[Any]] = set()  # workers inside an attempt (the rest are idle)
        self._idle: list[IdleWorker] = []  # idle workers that take a job handed over by submit
        self.stopping = False

    def take_idle(self, kind: JobKind) -> IdleWorker | None:
        """An idle worker for a job of `kind` that is being submitted, removed from the idle list: the
        caller must `give` it the claim, or None. GPU kinds are never handed over (they wait for a device)."""
        if self.stopping or kind.gpu or kind.name not in self.jobs.kinds or not self._idle:
            return None
        return self._idle.pop()

    async def start(self) -> None:
        if self.count == 0 or not self.jobs.kinds:
            return
        if any(kind.gpu for kind in self.jobs.kinds.values()):
            self.free_devices = await asyncio.to_thread(detect_devices)
        self.jobs.root.mkdir(parents=True, exist_ok=True)
        for i in range(self.count):
            self._tasks.append(asyncio.create_task(self._work(i), name=f"atrium-worker-{i}"))

    async def close(self) -> None:
        """Stop: idle workers end at once; a running attempt is interrupted and its job released."""
        self.stopping = True
        self.jobs.wake.set()
        for task in self._running:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _work(self, index: int) -> None:
        jobs = self.jobs
        name = jobs.worker_name(f"local-{index}")
        cpu_kinds = [k.name for k in jobs.kinds.values() if not k.gpu]
        gpu_kinds = [k.name for k in jobs.kinds.values() if k.gpu]
        while not self.stopping:
            # A GPU kind may be claimed only while a device is free; the device is held for its run.
            device = self.free_devices.pop(0) if gpu_kinds and self.free_devices else None
            ticket = jobs.wake.ticket()
            try:
                claim = await jobs.claim(name, cpu_kinds + (gpu_kinds if device else []), device or "cpu")
            except asyncio.CancelledError:
                jobs.wake.discard(ticket)
                if device is not None:
                    self.free_devices.append(device)
                raise
            except Exception:
                log.exception("claiming a job failed")
                claim = None
            if device is not None and (claim is None or not claim.job.gpu):
                self.free_devices.append(device)
                device = None
            if claim is None:
                claim = await self._idle_until_work(name, ticket)
                if claim is None:
                    continue
            jobs.wake.discard(ticket)
            if self.stopping:  # claimed while the node began to stop: hand it back untouched
                await jobs.release(claim.job.id, claim.lease)  # type: ignore[arg-type]
                return
            task = asyncio.current_task()
            assert task is not None
            self._running.add(task)
            try:
                await self._run(claim, name, device or "cpu")
            except asyncio.CancelledError:
                if self.stopping:
                    return
                raise
            except Exception:
                log.exception("job %s: the attempt could not be reported", claim.job.id)
            finally:
                self._running.discard(task)
                if device is not None:
                    self.free_devices.append(device)
                    jobs.wake.set()

    async def _idle_until_work(self, name: str, ticket: asyncio.Future[None]) -> Claim | None:
        """Wait for a wake-up (None: look for work again) or for a job handed over by submit."""
        idle = IdleWorker(name)
        self._idle.append(idle)
        try:
            await asyncio.wait({ticket, idle.handed}, timeout=self.jobs.settings.poll_seconds,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.jobs.wake.discard(ticket)
        if idle in self._idle:  # nobody took it: not handed over
            self._idle.remove(idle)
            return None
        return await idle.handed  # taken by a submission: its answer follows at once

    async def _run(self, claim: Claim, name: str, device: str) -> None:
        jobs = self.jobs
        job = claim.job
        kind = jobs.kinds[job.kind]
        workdir = Path(tempfile.mkdtemp(prefix=f".work-{job.id}-", dir=jobs.root))  # one mkdir: microseconds
        assert jobs.node is not None
        node = jobs.node
        ctx = AttemptContext(job_id=job.id, kind=job.kind, params=job.params, workdir=workdir,  # type: ignore[arg-type]
                             device=device, cache=self.cache,
                             fetch=lambda sha: asyncio.to_thread(node.blobs.open_path, sha),
                             loop=asyncio.get_running_loop())
        jobs.on_cancel(job.id, ctx.cancel)  # type: ignore[arg-type]
        try:
            outcome = await run_attempt(kind, ctx, LocalReporter(jobs, claim), jobs.lease_seconds / 3)
            log.info("job %s (%s) on %s: %s", job.id, job.kind, name, outcome)
        finally:
            jobs.on_cancel(job.id, None)  # type: ignore[arg-type]
