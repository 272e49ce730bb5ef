"""The bounties HTTP API, under /api/node/v1/bounties (docs/api.md). Currency-moving routes take an
`Idempotency-Key` header like the ledger's."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import Field

from node.api.auth import current_user, requires
from node.api.bodies import Body, int_param, read_body
from node.api.keys import NODE
from node.api.ledger import idempotency_key, query_int, receipt_response
from node.core.tables import Role
from plugins.bounties.bounties import NewBounty, entry_json, parse_expiry

PREFIX = "/api/node/v1/bounties"


class CreateBody(Body):
    name: str = Field(max_length=255)
    amount: Any
    expires: str = Field(max_length=40)
    description: str = Field(default="", max_length=20_000)
    type: str = Field(default="Other", max_length=32)
    entry_mode: str = Field(default="open", max_length=16)
    entry_limit: Any = 1
    award_mode: str = Field(default="single", max_length=16)
    tags: list[str] = Field(default_factory=list, max_length=20)
    nsfw_level: Any = 1
    reference_image_ids: list[Any] = Field(default_factory=list, max_length=20)


class ContributeBody(Body):
    amount: Any


class EntryBody(Body):
    image_id: int | None = Field(default=None, ge=1, le=2**62)
    version_id: int | None = Field(default=None, ge=1, le=2**62)
    note: str = Field(default="", max_length=1000)


class AwardBody(Body):
    entry_id: int = Field(ge=1, le=2**62)


def _bounties(request: web.Request) -> Any:
    from plugins.bounties import service_for

    return service_for(request.app[NODE])


def add_routes(routes: web.RouteTableDef) -> None:
    """Add the plugin's routes to `routes`."""

    @routes.get(PREFIX)
    async def list_bounties(request: web.Request) -> web.Response:
        items, cursor = await _bounties(request).list(state=request.query.get("state") or None,
                                                      before=query_int(request, "before"),
                                                      limit=query_int(request, "limit", 50))
        return web.json_response({"items": items, "next_cursor": cursor})

    @routes.post(PREFIX)
    @requires(Role.MEMBER)
    async def create_bounty(request: web.Request) -> web.Response:
        body = await read_body(request, CreateBody)
        spec = NewBounty(name=body.name, amount=body.amount, expires_at=parse_expiry(body.expires),
                         description=body.description, type=body.type, entry_mode=body.entry_mode,
                         entry_limit=body.entry_limit, award_mode=body.award_mode, tags=tuple(body.tags),
                         nsfw_level=body.nsfw_level, reference_image_ids=tuple(body.reference_image_ids))
        bounties = _bounties(request)
        bounty, receipt = await bounties.create(current_user(request), spec,
                                                idempotency_key=idempotency_key(request))
        view = await bounties.view(bounty.id)
        return web.json_response(view, status=200 if receipt.replayed else 201,
                                 headers={"Idempotent-Replayed": "true"} if receipt.replayed else None)

    @routes.post(PREFIX + "/expire")
    @requires(Role.ADMIN)
    async def expire_now(request: web.Request) -> web.Response:
        """Close the bounties that are due now (the periodic job does the same)."""
        closed = await _bounties(request).expire()
        return web.json_response({"closed": [{"id": i, "outcome": outcome} for i, outcome in closed]})

    @routes.get(PREFIX + "/{id}")
    async def show_bounty(request: web.Request) -> web.Response:
        return web.json_response(await _bounties(request).view(int_param(request, "id")))

    @routes.post(PREFIX + "/{id}/contributions")
    @requires(Role.MEMBER)
    async def contribute(request: web.Request) -> web.Response:
        body = await read_body(request, ContributeBody)
        receipt = await _bounties(request).contribute(current_user(request), int_param(request, "id"), body.amount,
                                                      idempotency_key=idempotency_key(request))
        return receipt_response(receipt)

    @routes.post(PREFIX + "/{id}/entries")
    @requires(Role.MEMBER)
    async def enter(request: web.Request) -> web.Response:
        body = await read_body(request, EntryBody)
        user = current_user(request)
        entry = await _bounties(request).enter(user, int_param(request, "id"), image_id=body.image_id,
                                               version_id=body.version_id, note=body.note)
        return web.json_response(entry_json(entry, user.username), status=201)

    @routes.post(PREFIX + "/{id}/awards")
    @requires(Role.MEMBER)
    async def award(request: web.Request) -> web.Response:
        body = await read_body(request, AwardBody)
        receipt = await _bounties(request).award(current_user(request), int_param(request, "id"), body.entry_id,
                                                 idempotency_key=idempotency_key(request))
        return receipt_response(receipt)
