"""`atrium worker`: a remote worker that runs jobs for a node over HTTP.

It loads the job kinds of the plugins installed here, claims jobs of those kinds from the node (a long
poll, so a new job starts within milliseconds), heartbeats their progress, fetches the blobs a job
lists, uploads output files and completes or fails each attempt. It only ever opens connections to the
node, so it works behind NAT. When the node cannot be reached it retries with growing pauses; on
Ctrl+C (or SIGTERM) it stops, handing a running job back to the node at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import socket
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from node.client import NodeClient, NodeError, NodeUnreachable, _error_from, _unreachable
from node.core.errors import AtriumError, InvalidInput
from node.core.jobs import JobKind, JobOutput, LeaseLost, collect_kinds
from node.core.plugins import PluginHost, available_plugins
from node.core.runner import AttemptContext, detect_devices, run_attempt

log = logging.getLogger("atrium.worker")

LEASE_HEADER = "X-Atrium-Lease"
# How long one claim request waits for a job on the node.
CLAIM_WAIT = 20.0
# Pauses between tries while the node cannot be reached: from the first, doubling, up to the last.
RETRY_FIRST = 1.0
RETRY_MAX = 30.0
# Tries of a final report (complete, fail, ...) before the attempt is given up (its lease then lapses).
REPORT_TRIES = 5
READ_BYTES = 1024 * 1024


def load_kinds(plugins: list[str] | None, wanted: list[str] | None) -> dict[str, JobKind]:
    """The job kinds this worker runs: those of the named plugins (or of every installed plugin that
    loads), limited to `wanted` when given. InvalidInput when a wanted kind is not provided."""
    installed = available_plugins()
    missing = [name for name in plugins or [] if name not in installed]
    if missing:
        raise InvalidInput(f"--plugins: {', '.join(missing)} not installed here "
                           f"(installed: {', '.join(sorted(installed)) or 'none'})")
    host = PluginHost(plugins or sorted(installed), available=installed)
    host.load(strict=bool(plugins))
    for name, error in host.errors.items():
        log.warning("plugin %r not loaded: %s", name, error)
    kinds = collect_kinds(host)
    if wanted:
        missing = [k for k in wanted if k not in kinds]
        if missing:
            raise InvalidInput(f"no loaded plugin provides the job kind(s) {', '.join(missing)} "
                               f"(available here: {', '.join(sorted(kinds)) or 'none'})")
        kinds = {k: kinds[k] for k in wanted}
    if not kinds:
        raise InvalidInput("no job kinds to run: no installed plugin registers any (see `atrium plugins`)")
    return kinds


class RemoteReporter:
    """Reports of one attempt, sent to the node."""

    def __init__(self, client: NodeClient, job_id: int, lease: str) -> None:
        self.client = client
        self.job_id = job_id
        self.headers = {LEASE_HEADER: lease}
        self.base = f"/api/node/v1/worker/jobs/{job_id}"

    async def _post(self, action: str, body: Any, *, tries: int = 1) -> Any:
        delay = RETRY_FIRST
        for attempt in range(1, tries + 1):
            try:
                return await self.client.request("POST", f"{self.base}/{action}", json_body=body,
                                                 headers=self.headers)
            except NodeError as exc:
                if exc.status == 409:
                    raise LeaseLost(exc.detail) from None
                if exc.status < 500 or attempt == tries:
                    raise
            except NodeUnreachable:
                if attempt == tries:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)
        raise AssertionError("unreachable")

    async def heartbeat(self, progress: float, message: str, detail: dict[str, Any]) -> bool:
        answer = await self._post("heartbeat", {"progress": progress, "message": message[:500], "detail": detail})
        return bool(answer["cancelled"])

    async def complete(self, output: JobOutput) -> None:
        for f in output.files:
            await self._upload(f.name, Path(f.path))
        await self._post("complete", {"result": output.result,
                                      "files": [{"name": f.name, "content_type": f.content_type}
                                                for f in output.files]}, tries=REPORT_TRIES)

    async def _upload(self, name: str, path: Path) -> None:
        size = (await asyncio.to_thread(os.stat, path)).st_size

        async def body() -> AsyncIterator[bytes]:
            handle = await asyncio.to_thread(open, path, "rb")
            try:
                while chunk := await asyncio.to_thread(handle.read, READ_BYTES):
                    yield chunk
            finally:
                handle.close()

        try:
            await self.client.request("PUT", f"{self.base}/files/{name}", data=body(),
                                      headers={**self.headers, "Content-Length": str(size),
                                               "Content-Type": "application/octet-stream"})
        except NodeError as exc:
            if exc.status == 409:
                raise LeaseLost(exc.detail) from None
            raise

    async def fail(self, error: str) -> None:
        await self._post("fail", {"error": error[:2000]}, tries=REPORT_TRIES)

    async def cancelled(self) -> None:
        await self._post("cancelled", {}, tries=REPORT_TRIES)

    async def release(self) -> None:
        await self._post("release", {})


class RemoteWorker:
    """Claims and runs jobs of `kinds` for the node at `url`, `concurrency` at a time."""

    def __init__(self, url: str, token: str, kinds: dict[str, JobKind], *, device: str = "cpu",
                 concurrency: int = 1, cache_dir: Path | None = None) -> None:
        self.client = NodeClient(url, token)
        self.kinds = kinds
        self.device = device
        self.concurrency = concurrency
        self.cache_dir = cache_dir or Path(tempfile.gettempdir()) / f"atrium-worker-{os.getuid()}"
        self.instance = f"{socket.gethostname()[:30]}-{os.getpid()}"
        self.cache: dict[str, Any] = {}
        self.gpu_free = True  # GPU kinds run one at a time on this worker's device
        self.done = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Work until `stop` is set; a running attempt is then handed back to the node."""
        (self.cache_dir / "blobs").mkdir(parents=True, exist_ok=True)
        async with self.client:
            loops = [asyncio.create_task(self._loop(i)) for i in range(self.concurrency)]
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait([stopper, *loops], return_when=asyncio.FIRST_COMPLETED)
            for task in loops:
                task.cancel()
            failures = []
            for task in loops:
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                except Exception as exc:
                    failures.append(exc)
            stopper.cancel()
            if failures:  # e.g. the token was revoked: every further claim would be refused too
                raise failures[0]

    async def _loop(self, index: int) -> None:
        cpu_kinds = [k.name for k in self.kinds.values() if not k.gpu]
        gpu_kinds = [k.name for k in self.kinds.values() if k.gpu]
        delay = RETRY_FIRST
        while True:
            holds_gpu = bool(gpu_kinds) and self.gpu_free
            if holds_gpu:
                self.gpu_free = False
            kinds = cpu_kinds + (gpu_kinds if holds_gpu else [])
            try:
                if not kinds:
                    await asyncio.sleep(RETRY_FIRST)
                    continue
                try:
                    claim = await self.client.request(
                        "POST", "/api/node/v1/worker/claim",
                        json_body={"kinds": kinds, "device": self.device, "instance": f"{self.instance}-{index}",
                                   "wait": CLAIM_WAIT})
                except (NodeUnreachable, NodeError) as exc:
                    if isinstance(exc, NodeError) and exc.status < 500:
                        raise
                    log.warning("%s; trying again in %.0f s", exc.detail, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX)
                    continue
                delay = RETRY_FIRST
                if claim is None:
                    continue
                if holds_gpu and not self.kinds[claim["kind"]].gpu:
                    self.gpu_free, holds_gpu = True, False
                await self._attempt(claim)
            finally:
                if holds_gpu:
                    self.gpu_free = True

    async def _attempt(self, claim: dict[str, Any]) -> None:
        kind = self.kinds[claim["kind"]]
        job_id, lease = int(claim["id"]), str(claim["lease"])
        workdir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=f"job-{job_id}-", dir=self.cache_dir))

        async def fetch(sha256: str) -> Path:
            return await self._fetch_blob(job_id, lease, sha256)

        ctx = AttemptContext(job_id=job_id, kind=kind.name, params=claim["params"], workdir=workdir,
                             device=self.device, cache=self.cache, fetch=fetch, loop=asyncio.get_running_loop())
        log.info("job %s (%s): claimed, attempt %s", job_id, kind.name, claim.get("attempt"))
        outcome = await run_attempt(kind, ctx, RemoteReporter(self.client, job_id, lease),
                                    float(claim.get("lease_seconds") or 60) / 3)
        self.done += 1
        log.info("job %s (%s): %s", job_id, kind.name, outcome)

    async def _fetch_blob(self, job_id: int, lease: str, sha256: str) -> Path:
        """The blob, from this worker's cache or downloaded from the node and checked against its hash."""
        target = self.cache_dir / "blobs" / sha256
        if target.is_file():
            return target
        temp = target.with_name(f".{sha256}.{secrets.token_hex(4)}.part")
        digest = hashlib.sha256()
        try:
            async with self.client.session.get(self.client.url(f"/api/node/v1/worker/jobs/{job_id}/blobs/{sha256}"),
                                               headers={LEASE_HEADER: lease}) as response:
                if response.status >= 400:
                    raise _error_from(response.status, await response.text(), response.reason)
                handle = await asyncio.to_thread(open, temp, "wb")
                try:
                    async for chunk in response.content.iter_chunked(READ_BYTES):
                        digest.update(chunk)
                        await asyncio.to_thread(handle.write, chunk)
                finally:
                    handle.close()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            temp.unlink(missing_ok=True)
            raise _unreachable(self.client.base_url, exc) from None
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        if digest.hexdigest() != sha256:
            temp.unlink(missing_ok=True)
            raise AtriumError(f"blob {sha256} arrived damaged (its SHA-256 is {digest.hexdigest()})")
        await asyncio.to_thread(os.replace, temp, target)
        return target


def pick_device(device: str | None, kinds: dict[str, JobKind]) -> str:
    """The device given, else the first CUDA device when a GPU kind is run here and torch sees one."""
    if device:
        if device != "cpu" and not (device.startswith("cuda:") and device[5:].isdigit()):
            raise InvalidInput(f"--device: use cpu or cuda:N; got {device!r}")
        return device
    if any(k.gpu for k in kinds.values()):
        return detect_devices()[0]
    return "cpu"
