"""The mirroring policy over HTTP, for admins: what is mirrored (and how much of the budget it uses),
and "evaluate now"."""

from __future__ import annotations

from aiohttp import web

from node.api.auth import requires
from node.api.bodies import Body, read_body
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
