"""Reports, the moderator queue, moderator actions and appeals over HTTP (node/core/reports.py).

Members report and appeal; moderators read the queue and the action log, act, and decide appeals.
Handlers parse, authorize and call `node.reports`; the answers are plain JSON.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import Field

from node.api.auth import current_user, requires
from node.api.bodies import Body, int_param, read_body
from node.api.keys import NODE
from node.core.errors import InvalidInput
from node.core.reports import Page, level_label
from node.core.tables import Appeal, ModAction, Report, Role

routes = web.RouteTableDef()


class ReportBody(Body):
    target: str = Field(max_length=200)
    reason: str = Field(max_length=32)
    details: str = Field(default="", max_length=5000)
    claimant_name: str | None = Field(default=None, max_length=255)
    claimant_email: str | None = Field(default=None, max_length=254)
    evidence: str | None = Field(default=None, max_length=10_000)


class ActionBody(Body):
    action: str = Field(max_length=32)
    level: int | str | None = None
    reason: str = Field(default="", max_length=2000)


class DirectActionBody(ActionBody):
    target: str = Field(max_length=200)


class AppealBody(Body):
    action_id: int
    text: str = Field(max_length=5000)


class DecisionBody(Body):
    decision: str = Field(max_length=8)  # grant or deny
    reason: str = Field(default="", max_length=2000)


def report_json(report: Report, *, private: bool = True) -> dict[str, Any]:
    data: dict[str, Any] = {"id": report.id, "target": f"{report.target_kind}:{report.target_id}",
                            "reason": report.reason, "details": report.details, "status": report.status,
                            "createdAt": report.created_at.isoformat(),
                            "resolvedAt": report.resolved_at.isoformat() if report.resolved_at else None}
    if private:  # the queue: who reported, and an artist's contact details
        data.update(reporterId=report.reporter_id, claimantName=report.claimant_name,
                    claimantEmail=report.claimant_email, evidence=report.evidence)
    return data


def action_json(action: ModAction) -> dict[str, Any]:
    target = f"{action.target_kind}:{action.target_id}" if action.target_origin is None \
        else f"remote:{action.target_origin}:{action.target_id}"
    return {"id": action.id, "target": target, "action": action.action, "level": action.level,
            "levelName": level_label(action.level) if action.level is not None else None,
            "reason": action.reason, "moderatorId": action.moderator_id, "reportIds": action.report_ids,
            "previous": action.previous, "appealId": action.appeal_id, "createdAt": action.created_at.isoformat()}


def appeal_json(appeal: Appeal) -> dict[str, Any]:
    return {"id": appeal.id, "actionId": appeal.action_id, "appellantId": appeal.appellant_id, "text": appeal.text,
            "status": appeal.status, "decidedBy": appeal.decided_by, "decision": appeal.decision,
            "createdAt": appeal.created_at.isoformat(),
            "decidedAt": appeal.decided_at.isoformat() if appeal.decided_at else None}


def page_json(page: Page, render: Any) -> dict[str, Any]:
    return {"items": [render(item) for item in page.items], "metadata": {"nextCursor": page.next_cursor}}


def _query_int(request: web.Request, name: str, default: int | None = None) -> int | None:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    if not text.isdigit() or len(text) > 18:
        raise InvalidInput(f"{name}: expected a whole number, got {text!r}")
    return int(text)


def _known_query(request: web.Request, *names: str) -> None:
    unknown = sorted(set(request.query) - set(names) - {"token"})
    if unknown:
        raise InvalidInput(f"unknown query parameter {unknown[0]!r} (known: {', '.join(names)})")


@routes.post("/api/node/v1/reports")
@requires(Role.MEMBER)
async def file_report(request: web.Request) -> web.Response:
    body = await read_body(request, ReportBody)
    report = await request.app[NODE].reports.report(
        current_user(request), body.target, body.reason, details=body.details, claimant_name=body.claimant_name,
        claimant_email=body.claimant_email, evidence=body.evidence)
    return web.json_response(report_json(report, private=False), status=201)


@routes.get("/api/node/v1/moderation/reports")
@requires(Role.MODERATOR)
async def report_queue(request: web.Request) -> web.Response:
    _known_query(request, "status", "reason", "kind", "cursor", "limit")
    status = request.query.get("status", "open")
    page = await request.app[NODE].reports.queue(
        status=None if status == "all" else status, reason=request.query.get("reason") or None,
        kind=request.query.get("kind") or None, after=_query_int(request, "cursor"),
        limit=_query_int(request, "limit", 50))
    return web.json_response(page_json(page, report_json))


@routes.get("/api/node/v1/moderation/reports/{id}")
@requires(Role.MODERATOR)
async def one_report(request: web.Request) -> web.Response:
    return web.json_response(report_json(await request.app[NODE].reports.get_report(int_param(request, "id"))))


@routes.post("/api/node/v1/moderation/reports/{id}/action")
@requires(Role.MODERATOR)
async def act_on_report(request: web.Request) -> web.Response:
    body = await read_body(request, ActionBody)
    action = await request.app[NODE].reports.act_on_report(current_user(request), int_param(request, "id"),
                                                           body.action, level=body.level, reason=body.reason)
    return web.json_response(action_json(action), status=201)


@routes.post("/api/node/v1/moderation/actions")
@requires(Role.MODERATOR)
async def direct_action(request: web.Request) -> web.Response:
    body = await read_body(request, DirectActionBody)
    action = await request.app[NODE].reports.act(current_user(request), body.target, body.action,
                                                 level=body.level, reason=body.reason)
    return web.json_response(action_json(action), status=201)


@routes.get("/api/node/v1/moderation/log")
@requires(Role.MODERATOR)
async def action_log(request: web.Request) -> web.Response:
    _known_query(request, "target", "cursor", "limit")
    page = await request.app[NODE].reports.actions(target=request.query.get("target") or None,
                                                   before=_query_int(request, "cursor"),
                                                   limit=_query_int(request, "limit", 50))
    return web.json_response(page_json(page, action_json))


# A banned member keeps these two routes, so that they can contest the ban; node/core/reports.py refuses
# them any appeal but the ban's.
@routes.get("/api/node/v1/moderation/actions/mine")
@requires(Role.MEMBER, allow_disabled=True)
async def actions_against_me(request: web.Request) -> web.Response:
    """Appealable actions on the caller, their models or their images (what `atrium appeal` takes)."""
    rows = await request.app[NODE].reports.actions_against(current_user(request))
    return web.json_response({"items": [action_json(a) for a in rows]})


@routes.post("/api/node/v1/appeals")
@requires(Role.MEMBER, allow_disabled=True)
async def file_appeal(request: web.Request) -> web.Response:
    body = await read_body(request, AppealBody)
    appeal = await request.app[NODE].reports.appeal(current_user(request), body.action_id, body.text)
    return web.json_response(appeal_json(appeal), status=201)


@routes.get("/api/node/v1/appeals")
@requires(Role.MEMBER)
async def my_appeals(request: web.Request) -> web.Response:
    _known_query(request, "cursor", "limit")
    page = await request.app[NODE].reports.appeals(status=None, appellant=current_user(request),
                                                   after=_query_int(request, "cursor"),
                                                   limit=_query_int(request, "limit", 50))
    return web.json_response(page_json(page, appeal_json))


@routes.get("/api/node/v1/moderation/appeals")
@requires(Role.MODERATOR)
async def appeal_queue(request: web.Request) -> web.Response:
    _known_query(request, "status", "cursor", "limit")
    status = request.query.get("status", "open")
    page = await request.app[NODE].reports.appeals(status=None if status == "all" else status,
                                                   after=_query_int(request, "cursor"),
                                                   limit=_query_int(request, "limit", 50))
    return web.json_response(page_json(page, appeal_json))


@routes.post("/api/node/v1/moderation/appeals/{id}")
@requires(Role.MODERATOR)
async def decide_appeal(request: web.Request) -> web.Response:
    body = await read_body(request, DecisionBody)
    if body.decision not in ("grant", "deny"):
        raise InvalidInput(f"decision: grant or deny, not {body.decision!r}")
    appeal = await request.app[NODE].reports.decide(current_user(request), int_param(request, "id"),
                                                    grant=body.decision == "grant", reason=body.reason)
    return web.json_response(appeal_json(appeal))
