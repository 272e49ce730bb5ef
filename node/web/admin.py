"""Admin pages: the plugins this node runs, its users with their roles, and federation: the nodes it
follows, the nodes that follow it, and the files it mirrors."""

from __future__ import annotations

from aiohttp import web

from node.api.bodies import int_param
from node.api.keys import NODE
from node.core.accounts import parse_role
from node.core.tables import Role
from node.web.account import field, form_data
from node.web.sessions import form, page, redirect, require_signed_in
from node.web.templating import render

routes = web.RouteTableDef()


@routes.get("/admin")
@page
async def admin_page(request: web.Request) -> web.Response:
    require_signed_in(request, Role.ADMIN)
    node = request.app[NODE]
    users = await node.accounts.list_users()
    return render(request, "admin.html", {"users": users, "plugins": node.plugins.loaded,
                                          "enabled": node.config.plugins.enabled,
                                          "roles": [r.value for r in Role],
                                          "peers": await node.federation.peers.statuses(),
                                          "followers": await node.federation.followers.list(),
                                          "follow_policy": node.config.federation.followers,
                                          "mirror": await node.federation.mirroring.status()})


@routes.post("/admin/users")
@form(Role.ADMIN)
async def create_user(request: web.Request) -> web.Response:
    fields = await form_data(request)
    password = fields.get("password") or None
    await request.app[NODE].accounts.create_user(field(fields, "username", maximum=64),
                                                 role=parse_role(field(fields, "role", maximum=16)),
                                                 password=password)
    return redirect("/admin")


@routes.post("/admin/users/{username}")
@form(Role.ADMIN)
async def update_user(request: web.Request) -> web.Response:
    fields = await form_data(request)
    disabled = {"yes": True, "no": False}.get(fields.get("disabled", ""))
    await request.app[NODE].accounts.update_user(request.match_info["username"][:64],
                                                 role=parse_role(field(fields, "role", maximum=16)),
                                                 disabled=disabled)
    return redirect("/admin")


@routes.post("/admin/mirror/run")
@form(Role.ADMIN)
async def run_mirroring(request: web.Request) -> web.Response:
    """Evaluate the mirroring policy now (its fetches go on in the background)."""
    await request.app[NODE].federation.mirroring.evaluate()
    return redirect("/admin")


@routes.post("/admin/peers")
@form(Role.ADMIN)
async def follow_peer(request: web.Request) -> web.Response:
    fields = await form_data(request)
    await request.app[NODE].federation.peers.follow(field(fields, "url", maximum=512))
    return redirect("/admin")


@routes.post("/admin/peers/{id}/unfollow")
@form(Role.ADMIN)
async def unfollow_peer(request: web.Request) -> web.Response:
    await request.app[NODE].federation.peers.unfollow(int_param(request, "id"))
    return redirect("/admin")


@routes.post("/admin/followers/{id}")
@form(Role.ADMIN)
async def set_follower_state(request: web.Request) -> web.Response:
    fields = await form_data(request)
    await request.app[NODE].federation.followers.set_state(int_param(request, "id"),
                                                           field(fields, "state", maximum=16))
    return redirect("/admin")
