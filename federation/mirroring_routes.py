"""The mirroring policy over HTTP: for admins, what is mirrored (and how much of the budget it uses) and
"evaluate now"; for anyone, the bytes of a verified mirrored copy."""

from __future__ import annotations

from aiohttp import web

from node.api.auth import requires
from node.api.bodies import Body, int_param, read_body
from node.api.files import content_disposition
from node.api.keys import NODE
from node.core.tables import Role

routes = web.RouteTableDef()


class RunBody(Body):
    wait: bool = False  # also wait for the fetches this run starts


@routes.get("/api/node/v1/admin/mirror")
@requires(Role.ADMIN)
async def mirror_status(request: web.Request) -> web.Response:
    """The policy ([federation.mirror]), the bytes held against the budget, and each mirrored file's state."""
    return web.json_response(await request.app[NODE].federation.mirroring.status())


@routes.post("/api/node/v1/admin/mirror/run")
@requires(Role.ADMIN)
async def mirror_run(request: web.Request) -> web.Response:
    """Evaluate the policy now: remove what is no longer chosen and start fetching what is missing.
    Body (optional): {"wait": true} answers only once those fetches are done (or failed)."""
    wait = (await read_body(request, RunBody)).wait if request.can_read_body else False
    summary = await request.app[NODE].federation.mirroring.evaluate(wait=wait)
    return web.json_response(summary)


@routes.get("/api/node/v1/mirrored/{origin}/{id}/content")
async def mirrored_content(request: web.Request) -> web.StreamResponse:
    """The bytes of a followed node's file as mirrored here (HTTP Range answers 206): only a copy that was
    verified against its origin's signed manifest and is still held; 404 otherwise (never fetched,
    failed, or removed after a takedown)."""
    node = request.app[NODE]
    row, path = await node.federation.mirroring.stored_copy(request.match_info["origin"], int_param(request, "id"))
    return web.FileResponse(path, headers={"Content-Type": "application/octet-stream",
                                           "Content-Disposition": content_disposition(row.name),
                                           "Cache-Control": "no-cache"})
