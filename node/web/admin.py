"""Admin pages: the plugins this node runs, and its users with their roles."""

from __future__ import annotations

from aiohttp import web

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
                                          "roles": [r.value for r in Role]})


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
