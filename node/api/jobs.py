"""Jobs API for users: submit, list, look at and cancel jobs, follow their progress (Server-Sent Events)
and download their output files. Workers have their own routes (node/api/workers.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from aiohttp import web
from pydantic import Field

from node.api.auth import authorize, current_user, requires
from node.api.bodies import Body, int_param, read_body
from node.api.files import content_disposition
from node.api.keys import NODE
from node.api.links import base_url
from node.core.errors import InvalidInput
from node.core.jobs import FINISHED
from node.core.tables import Job, Role

routes = web.RouteTableDef()

# A comment line on an idle event stream now and then, so proxies do not close it.
SSE_KEEPALIVE_SECONDS = 15.0


class SubmitBody(Body):
    kind: str = Field(max_length=64)
    params: dict[str, Any] = Field(default_factory=dict)


def public_params(params: dict[str, Any]) -> dict[str, Any]:
    """Parameters shown to clients: keys starting with "_" are private to the job kind."""
    return {k: v for k, v in (params or {}).items() if not str(k).startswith("_")}


def job_json(request: web.Request, job: Job, owner: str | None) -> dict[str, Any]:
    def when(value: Any) -> str | None:
        return value.isoformat() if value is not None else None

    root = f"{base_url(request)}/api/node/v1/jobs/{job.id}/files/"
    return {"id": job.id, "kind": job.kind, "status": job.status, "progress": job.progress,
            "message": job.message, "detail": job.detail or {}, "params": public_params(job.params),
            "result": job.result, "error": job.error, "attempts": job.attempts, "max_attempts": job.max_attempts,
            "created_at": when(job.created_at), "started_at": when(job.started_at),
            "finished_at": when(job.finished_at), "owner": owner,
            "files": [{**f, "url": root + f["name"]} for f in job.files or []]}


async def render(request: web.Request, job: Job) -> dict[str, Any]:
    owners = await request.app[NODE].jobs.owners([job])
    return job_json(request, job, owners.get(job.owner_id))


@routes.post("/api/node/v1/jobs")
@requires(Role.MEMBER)
async def submit_job(request: web.Request) -> web.Response:
    """Queue a job: 202 with the job; 400 for an unknown kind or bad params, 429 past the queue limit."""
    body = await read_body(request, SubmitBody)
    job = await request.app[NODE].jobs.submit(current_user(request), body.kind, body.params)
    return web.json_response(await render(request, job), status=202)


@routes.get("/api/node/v1/jobs")
async def list_jobs(request: web.Request) -> web.Response:
    """The caller's jobs, newest first; `?all=1` (admins) everyone's; `?status=`, `?kind=`, `?limit=`."""
    user = await authorize(request, Role.MEMBER)
    query = request.query
    limit_text = query.get("limit", "50")
    if not limit_text.isdigit():
        raise InvalidInput(f"limit must be a whole number; got {limit_text!r}")
    mine = query.get("all", "") not in ("1", "true", "yes")
    node = request.app[NODE]
    jobs = await node.jobs.list(user, status=query.get("status") or None, kind=query.get("kind") or None,
                                limit=int(limit_text), mine=mine)
    owners = await node.jobs.owners(jobs)
    return web.json_response({"items": [job_json(request, job, owners.get(job.owner_id)) for job in jobs]})


@routes.get("/api/node/v1/jobs/{id}")
async def show_job(request: web.Request) -> web.Response:
    user = await authorize(request, Role.MEMBER)
    job = await request.app[NODE].jobs.get(int_param(request, "id"), user)
    return web.json_response(await render(request, job))


@routes.post("/api/node/v1/jobs/{id}/cancel")
@requires(Role.MEMBER)
async def cancel_job(request: web.Request) -> web.Response:
    """Cancel a pending job at once, or ask a running one to stop; 409 for a job that already ended."""
    job = await request.app[NODE].jobs.cancel(int_param(request, "id"), current_user(request))
    return web.json_response(await render(request, job))


@routes.get("/api/node/v1/jobs/{id}/events")
async def job_events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: `status` (the whole job) now and at each change, `progress` in between; the
    stream ends when the job does."""
    user = await authorize(request, Role.MEMBER)
    node = request.app[NODE]
    job_id = int_param(request, "id")
    await node.jobs.get(job_id, user)  # 404 before the stream starts
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    events = node.jobs.events(job_id)
    try:
        pending: asyncio.Task[Any] | None = None
        while True:
            pending = pending or asyncio.ensure_future(anext(events))
            done, _ = await asyncio.wait({pending}, timeout=SSE_KEEPALIVE_SECONDS)
            if not done:
                await response.write(b": keep-alive\n\n")
                continue
            try:
                event = pending.result()
            except StopAsyncIteration:
                break
            pending = None
            data = event["data"]
            if event["event"] == "status":
                data = await render(request, await node.jobs.load(job_id))
            await response.write(f"event: {event['event']}\ndata: {json.dumps(data)}\n\n".encode())
            if event["event"] == "status" and data["status"] in FINISHED:
                break
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
        with contextlib.suppress(Exception):
            await events.aclose()
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response


@routes.get("/api/node/v1/jobs/{id}/files/{name}")
async def job_file(request: web.Request) -> web.StreamResponse:
    """One of the job's output files (its owner or an admin)."""
    user = await authorize(request, Role.MEMBER)
    jobs = request.app[NODE].jobs
    job = await jobs.get(int_param(request, "id"), user)
    name = request.match_info["name"]
    path = jobs.output_path(job, name)
    content_type = next((f["content_type"] for f in job.files if f["name"] == name), "application/octet-stream")
    return web.FileResponse(path, headers={"Content-Type": content_type,
                                           "Content-Disposition": content_disposition(name),
                                           "Cache-Control": "private, max-age=3600"})
