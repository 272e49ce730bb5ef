"""Web pages for reports and moderation: the Report forms on model and image pages, and the moderator
queue (open reports with their actions, open appeals, the latest recorded actions). Every POST here is
a `form`: its CSRF token was checked. The work is node/core/reports.py's."""

from __future__ import annotations

from aiohttp import web

from node.api.bodies import int_param
from node.api.keys import NODE
from node.core.errors import InvalidInput
from node.core.reports import ReportReason
from node.core.tables import Role
from node.web.account import field, form_data
from node.web.sessions import form, page, redirect, require_signed_in, visitor
from node.web.templating import render

routes = web.RouteTableDef()

ACTIONS = ("relabel", "lock_level", "unlock_level", "unpublish", "takedown", "restore", "ban", "unban", "dismiss")
LEVELS = ("", "PG", "PG-13", "R", "X", "XXX")
REASONS = [r.value for r in ReportReason]


async def _report(request: web.Request, kind: str) -> web.Response:
    fields = await form_data(request)
    target_id = int_param(request, "id")
    report = await request.app[NODE].reports.report(
        visitor(request).user, f"{kind}:{target_id}", field(fields, "reason", maximum=32),  # type: ignore[arg-type]
        details=field(fields, "details", maximum=5000, required=False),
        claimant_name=fields.get("claimant_name") or None, claimant_email=fields.get("claimant_email") or None,
        evidence=fields.get("evidence") or None)
    back = f"/{'models' if kind == 'model' else 'images'}/{target_id}"
    return render(request, "reported.html", {"report": report, "back": back}, status=201)


@routes.post("/models/{id}/report")
@form(Role.MEMBER)
async def report_model(request: web.Request) -> web.Response:
    return await _report(request, "model")


@routes.post("/images/{id}/report")
@form(Role.MEMBER)
async def report_image(request: web.Request) -> web.Response:
    return await _report(request, "image")


@routes.get("/moderation")
@page
async def queue_page(request: web.Request) -> web.Response:
    require_signed_in(request, Role.MODERATOR)
    reports = request.app[NODE].reports
    queue = await reports.queue(limit=100)
    appeals = await reports.appeals(limit=100)
    recent = await reports.actions(limit=20)
    return render(request, "moderation.html", {"reports": queue.items, "more": queue.next_cursor,
                                               "appeals": appeals.items, "actions": recent.items,
                                               "action_names": ACTIONS, "levels": LEVELS})


@routes.post("/moderation/reports/{id}")
@form(Role.MODERATOR)
async def act_on_report(request: web.Request) -> web.Response:
    fields = await form_data(request)
    await request.app[NODE].reports.act_on_report(
        visitor(request).user, int_param(request, "id"), field(fields, "action", maximum=32),  # type: ignore[arg-type]
        level=fields.get("level") or None, reason=field(fields, "reason", maximum=2000, required=False))
    return redirect("/moderation")


@routes.post("/moderation/appeals/{id}")
@form(Role.MODERATOR)
async def decide_appeal(request: web.Request) -> web.Response:
    fields = await form_data(request)
    decision = field(fields, "decision", maximum=8)
    if decision not in ("grant", "deny"):
        raise InvalidInput(f"decision: grant or deny, not {decision!r}")
    await request.app[NODE].reports.decide(visitor(request).user, int_param(request, "id"),  # type: ignore[arg-type]
                                           grant=decision == "grant",
                                           reason=field(fields, "reason", maximum=2000, required=False))
    return redirect("/moderation")
