"""Remote workers' API: claim jobs, heartbeat their progress, upload output files, fetch the blobs a job
lists, and end attempts. Every route here takes only a worker token (`atrium workers add`), and every
route about one job also the lease of the attempt (header X-Atrium-Lease), so a worker can touch only
the job it holds. Admins manage worker tokens through /api/node/v1/workers."""

from __future__ import annotations

import functools
import time
from typing import Annotated, Any

from aiohttp import web
from pydantic import Field

from node.api.auth import ACCESS_ATTR, Handler, requires, token_from_request
from node.api.bodies import Body, int_param, read_body
from node.api.keys import NODE
from node.core.errors import InvalidInput, NotFound, TooLarge
from node.core.jobs import JobOutput, OutputFile, check_file_name
from node.core.tables import Role, WorkerToken

routes = web.RouteTableDef()

WORKER = web.RequestKey("worker", WorkerToken)
LEASE_HEADER = "X-Atrium-Lease"
# The longest a claim waits for a job to arrive (long-poll), so an idle worker asks about twice a minute.
MAX_CLAIM_WAIT = 30.0
UPLOAD_CHUNK = 256 * 1024


def requires_worker(handler: Handler) -> Handler:
    """Run the handler only for a valid, unrevoked worker token (401 otherwise, user tokens included)."""

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        request[WORKER] = await request.app[NODE].jobs.worker_tokens.authenticate(token_from_request(request))
        return await handler(request)

    setattr(wrapper, ACCESS_ATTR, "worker")
    return wrapper


def lease_of(request: web.Request) -> str:
    lease = request.headers.get(LEASE_HEADER, "").strip()
    if not lease or len(lease) > 128:
        raise InvalidInput(f"send the lease of the attempt in the {LEASE_HEADER} header (the claim answered it)")
    return lease


def worker_name(request: web.Request, instance: str) -> str:
    return f"{request[WORKER].name}/{instance}" if instance else request[WORKER].name


class ClaimBody(Body):
    kinds: list[Annotated[str, Field(max_length=64)]] = Field(min_length=1, max_length=100)
    device: str = Field(default="cpu", max_length=32)
    instance: str = Field(default="", max_length=60)
    wait: float = Field(default=0.0, ge=0.0, le=MAX_CLAIM_WAIT)


class HeartbeatBody(Body):
    progress: float | None = Field(default=None, ge=0.0, le=1.0)
    message: str | None = Field(default=None, max_length=500)
    detail: dict[str, Any] | None = None


class CompletedFile(Body):
    name: str = Field(max_length=200)
    content_type: str = Field(default="application/octet-stream", max_length=100)


class CompleteBody(Body):
    result: dict[str, Any]
    files: list[CompletedFile] = Field(default_factory=list, max_length=1000)


class FailBody(Body):
    error: str = Field(max_length=2000)


class WorkerBody(Body):
    name: str = Field(max_length=64)


@routes.post("/api/node/v1/worker/claim")
@requires_worker
async def claim(request: web.Request) -> web.Response:
    """The oldest pending job of one of `kinds` with a fresh lease (200), or 204 when none arrived within
    `wait` seconds."""
    body = await read_body(request, ClaimBody)
    jobs = request.app[NODE].jobs
    kinds = [k for k in body.kinds if k in jobs.kinds]
    if not kinds:
        raise InvalidInput(f"this node runs none of the kinds {', '.join(map(repr, body.kinds))} "
                           f"(it runs: {', '.join(sorted(jobs.kinds)) or 'none'})")
    deadline = time.monotonic() + body.wait
    name = worker_name(request, body.instance)
    while True:
        ticket = jobs.wake.ticket()
        got = await jobs.claim(name, kinds, body.device)
        left = deadline - time.monotonic()
        if got is not None or left <= 0 or jobs.closing:
            jobs.wake.discard(ticket)
            break
        await jobs.wake.wait(ticket, min(left, float(jobs.settings.poll_seconds)))
    if got is None:
        return web.Response(status=204)
    job = got.job
    return web.json_response({"id": job.id, "kind": job.kind, "params": job.params, "lease": got.lease,
                              "lease_until": job.lease_until.isoformat() if job.lease_until else None,
                              "lease_seconds": jobs.lease_seconds, "attempt": job.attempts})


@routes.post("/api/node/v1/worker/jobs/{id}/heartbeat")
@requires_worker
async def heartbeat(request: web.Request) -> web.Response:
    """Renew the lease and record progress: {cancelled, lease_until}; 409 when the lease was lost."""
    body = await read_body(request, HeartbeatBody)
    answer = await request.app[NODE].jobs.heartbeat(int_param(request, "id"), lease_of(request), body.progress,
                                                    body.message, body.detail)
    return web.json_response({"cancelled": answer.cancelled, "lease_until": answer.lease_until.isoformat()})


@routes.put("/api/node/v1/worker/jobs/{id}/files/{name}")
@requires_worker
async def upload_file(request: web.Request) -> web.Response:
    """An output file of the attempt, streamed; stored atomically, at most [jobs] max_file_bytes."""
    jobs = request.app[NODE].jobs
    name = check_file_name(request.match_info["name"])
    if request.content_length is not None and request.content_length > jobs.settings.max_file_bytes:
        raise TooLarge(f"output file {name!r} is larger than this node accepts "
                       f"([jobs] max_file_bytes = {jobs.settings.max_file_bytes})")
    size = await jobs.store_upload(int_param(request, "id"), lease_of(request), name,
                                   request.content.iter_chunked(UPLOAD_CHUNK))
    return web.json_response({"name": name, "size": size})


@routes.post("/api/node/v1/worker/jobs/{id}/complete")
@requires_worker
async def complete(request: web.Request) -> web.Response:
    """End the attempt with its result; the files it names must have been uploaded first."""
    body = await read_body(request, CompleteBody)
    jobs = request.app[NODE].jobs
    job_id, lease = int_param(request, "id"), lease_of(request)
    await jobs.held(job_id, lease)
    directory = jobs.upload_dir(job_id, lease)
    files = []
    for f in body.files:
        path = directory / check_file_name(f.name)
        if not path.is_file():
            raise InvalidInput(f"output file {f.name!r} was not uploaded: PUT it to "
                               f"/api/node/v1/worker/jobs/{job_id}/files/{f.name} first")
        files.append(OutputFile(f.name, path, f.content_type))
    job = await jobs.complete(job_id, lease, JobOutput(result=body.result, files=files))
    return web.json_response({"id": job.id, "status": job.status})


@routes.post("/api/node/v1/worker/jobs/{id}/fail")
@requires_worker
async def fail(request: web.Request) -> web.Response:
    body = await read_body(request, FailBody)
    job = await request.app[NODE].jobs.fail(int_param(request, "id"), lease_of(request), body.error)
    return web.json_response({"id": job.id, "status": job.status})


@routes.post("/api/node/v1/worker/jobs/{id}/cancelled")
@requires_worker
async def cancelled(request: web.Request) -> web.Response:
    """The worker stopped a job that was cancelled: it ends as cancelled."""
    job = await request.app[NODE].jobs.acknowledge_cancel(int_param(request, "id"), lease_of(request))
    return web.json_response({"id": job.id, "status": job.status})


@routes.post("/api/node/v1/worker/jobs/{id}/release")
@requires_worker
async def release(request: web.Request) -> web.Response:
    """The worker is stopping: the job goes back to pending at once, the attempt not counted."""
    job = await request.app[NODE].jobs.release(int_param(request, "id"), lease_of(request))
    return web.json_response({"id": job.id, "status": job.status})


@routes.get("/api/node/v1/worker/jobs/{id}/blobs/{sha256}")
@requires_worker
async def blob(request: web.Request) -> web.StreamResponse:
    """A stored blob the job lists in params["blobs"]."""
    path = await request.app[NODE].jobs.blob_for(int_param(request, "id"), lease_of(request),
                                                 request.match_info["sha256"])
    return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})


# -- admin: worker tokens --------------------------------------------------------------------------


def worker_json(record: WorkerToken) -> dict[str, Any]:
    def when(value: Any) -> str | None:
        return value.isoformat() if value is not None else None

    return {"id": record.id, "name": record.name, "prefix": record.prefix, "created_at": when(record.created_at),
            "last_seen_at": when(record.last_seen_at), "revoked_at": when(record.revoked_at)}


@routes.get("/api/node/v1/workers")
@requires(Role.ADMIN)
async def list_workers(request: web.Request) -> web.Response:
    records = await request.app[NODE].jobs.worker_tokens.list()
    return web.json_response({"items": [worker_json(r) for r in records]})


@routes.post("/api/node/v1/workers")
@requires(Role.ADMIN)
async def add_worker(request: web.Request) -> web.Response:
    """A new worker token; its secret is in the answer, once."""
    body = await read_body(request, WorkerBody)
    issued = await request.app[NODE].jobs.worker_tokens.add(body.name)
    return web.json_response({**worker_json(issued.record), "token": issued.secret}, status=201)


@routes.delete("/api/node/v1/workers/{name}")
@requires(Role.ADMIN)
async def revoke_worker(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if len(name) > 64:
        raise NotFound(f"no worker named {name!r}")
    return web.json_response(worker_json(await request.app[NODE].jobs.worker_tokens.revoke(name)))
