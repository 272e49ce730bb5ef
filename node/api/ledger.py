"""Ledger API: balances, history, tips, the daily grant and administrators' grants.

Mutating routes accept an `Idempotency-Key` header: a replay with the same key (per user) returns the
first transaction, with `Idempotent-Replayed: true`; the same key with other content is a 409.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import Field

from node.api.auth import current_user, requires
from node.api.bodies import Body, read_body
from node.api.keys import NODE
from node.core.accounts import require_role
from node.core.errors import InvalidInput
from node.core.ledger import Actor, Receipt, check_idempotency_key
from node.core.tables import Role

routes = web.RouteTableDef()

IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"


def idempotency_key(request: web.Request) -> str | None:
    """The request's Idempotency-Key header, checked (400 when malformed)."""
    return check_idempotency_key(request.headers.get(IDEMPOTENCY_HEADER))


def receipt_response(receipt: Receipt, status: int = 201, extra: dict[str, Any] | None = None) -> web.Response:
    """A transaction as the answer: 201 when it was made now, 200 with Idempotent-Replayed on a replay."""
    body = {**receipt.json(), **(extra or {})}
    if receipt.replayed:
        return web.json_response(body, status=200, headers={REPLAYED_HEADER: "true"})
    return web.json_response(body, status=status)


def query_int(request: web.Request, name: str, default: int | None = None) -> int | None:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    if not text.isdigit() or len(text) > 18:
        raise InvalidInput(f"{name} must be a positive integer, got {text!r}")
    return int(text)


class TransferBody(Body):
    to: str = Field(max_length=64)
    amount: Any
    reason: str = Field(default="", max_length=500)


@routes.get("/api/node/v1/ledger/balance")
@requires(Role.MEMBER)
async def my_balance(request: web.Request) -> web.Response:
    node = request.app[NODE]
    user = current_user(request)
    return web.json_response({"username": user.username, "balance": await node.ledger.balance(user.id),
                              "currency": node.ledger.currency()})


@routes.get("/api/node/v1/ledger/balance/{username}")
@requires(Role.MEMBER)
async def user_balance(request: web.Request) -> web.Response:
    node = request.app[NODE]
    caller = current_user(request)
    username = request.match_info["username"]
    if username.lower() != caller.username.lower():
        require_role(caller, Role.ADMIN)  # a balance is private to its owner and the admins
    user = await node.accounts.get_user(username)
    return web.json_response({"username": user.username, "balance": await node.ledger.balance(user.id),
                              "currency": node.ledger.currency()})


@routes.get("/api/node/v1/ledger/history")
@requires(Role.MEMBER)
async def history(request: web.Request) -> web.Response:
    """The caller's postings, newest first; admins may pass ?user=NAME. Page with ?before=CURSOR."""
    node = request.app[NODE]
    user = current_user(request)
    if request.query.get("user") and request.query["user"].lower() != user.username.lower():
        require_role(user, Role.ADMIN)
        user = await node.accounts.get_user(request.query["user"])
    items, cursor = await node.ledger.history(user.id, before=query_int(request, "before"),
                                              limit=query_int(request, "limit", 50))  # type: ignore[arg-type]
    return web.json_response({"username": user.username, "items": items, "next_cursor": cursor,
                              "currency": node.ledger.currency()})


@routes.post("/api/node/v1/ledger/tips")
@requires(Role.MEMBER)
async def tip(request: web.Request) -> web.Response:
    body = await read_body(request, TransferBody)
    receipt = await request.app[NODE].ledger.tip(current_user(request), body.to, body.amount, reason=body.reason,
                                                 idempotency_key=idempotency_key(request))
    return receipt_response(receipt)


@routes.post("/api/node/v1/ledger/grants")
@requires(Role.ADMIN)
async def grant(request: web.Request) -> web.Response:
    """New currency for a user (admins only)."""
    body = await read_body(request, TransferBody)
    receipt = await request.app[NODE].ledger.grant(body.to, body.amount, actor=Actor.of(current_user(request)),
                                                   reason=body.reason, idempotency_key=idempotency_key(request))
    return receipt_response(receipt)


@routes.post("/api/node/v1/ledger/daily")
@requires(Role.MEMBER)
async def daily(request: web.Request) -> web.Response:
    """Claim today's grant (once per UTC day; 409 when already claimed)."""
    return receipt_response(await request.app[NODE].ledger.claim_daily(current_user(request)))


@routes.get("/api/node/v1/ledger/totals")
@requires(Role.ADMIN)
async def totals(request: web.Request) -> web.Response:
    """The books: currency in circulation, total grants, sum of balances (0), negative accounts (0)."""
    t = await request.app[NODE].ledger.totals()
    return web.json_response({"supply": t.supply, "grants": t.grants, "balance_sum": t.balance_sum,
                              "negative_accounts": t.negative_accounts, "by_kind": t.by_kind})

