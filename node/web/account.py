"""Sign-in and sign-out, the account page (API tokens), the browsing level, and the small forms on
model and image pages (reactions, reviews). Every POST here is a `form`: its CSRF token was checked."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from node.api.accounts import client_address
from node.api.bodies import int_param
from node.api.keys import NODE
from node.core.errors import InvalidInput, RateLimited, Unauthenticated
from node.core.sessions import parse_level
from node.core.tables import Role
from node.core.vocabulary import ReactionKind, parse_enum
from node.web.sessions import SESSIONS, VISITOR, form, page, read_form, redirect, require_signed_in, visitor
from node.web.templating import render

routes = web.RouteTableDef()

MAX_FIELD = 1024


async def form_data(request: web.Request) -> dict[str, str]:
    """The posted form's text fields (files and over-long values refused with a clear message)."""
    data = await read_form(request)
    fields: dict[str, str] = {}
    for key, value in data.items():
        if not isinstance(value, str):
            raise InvalidInput(f"{key}: this form takes no files")
        fields[key] = value
    return fields


def field(fields: dict[str, str], name: str, *, maximum: int = MAX_FIELD, required: bool = True) -> str:
    value = fields.get(name, "")
    if required and not value.strip():
        raise InvalidInput(f"{name.replace('_', ' ')}: this field is required")
    if len(value) > maximum:
        raise InvalidInput(f"{name.replace('_', ' ')}: at most {maximum} characters")
    return value


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this node only (never another site)."""
    if not target:
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def back(request: web.Request, fallback: str = "/") -> str:
    """The page a form was posted from (by its Referer on this node), to return to it."""
    referer = request.headers.get("Referer", "")
    parts = urlsplit(referer)
    if parts.netloc and parts.netloc != request.host:
        return fallback
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return safe_next(path) if path else fallback


@routes.get("/signin")
@page
async def signin_page(request: web.Request) -> web.Response:
    if visitor(request).user is not None:
        return redirect(safe_next(request.query.get("next")))
    return render(request, "signin.html", {"next": safe_next(request.query.get("next")), "error": None,
                                           "username": ""})


@routes.post("/signin")
@form()
async def signin(request: web.Request) -> web.Response:
    fields = await form_data(request)
    target = safe_next(fields.get("next"))
    username = fields.get("username", "")[:64]
    try:
        user = await request.app[NODE].accounts.login(username, fields.get("password", "")[:MAX_FIELD + 1],
                                                      client=client_address(request))
    except (Unauthenticated, RateLimited) as exc:
        status = 429 if isinstance(exc, RateLimited) else 401
        response = render(request, "signin.html", {"next": target, "error": exc.detail, "username": username},
                          status=status)
        if isinstance(exc, RateLimited) and exc.retry_after:
            response.headers["Retry-After"] = str(exc.retry_after)
        return response
    request[VISITOR] = await request.app[SESSIONS].sign_in(user, previous=visitor(request))
    return redirect(target)


@routes.post("/signout")
@form()
async def signout(request: web.Request) -> web.Response:
    current = visitor(request)
    sessions = request.app[SESSIONS]
    await sessions.sign_out(current)
    request[VISITOR] = sessions.anonymous()
    return redirect("/")


@routes.post("/browsing-level")
@form()
async def set_browsing_level(request: web.Request) -> web.Response:
    current = visitor(request)
    fields = await form_data(request)
    level = parse_level(field(fields, "level", maximum=8), signed_in=current.user is not None)
    request[VISITOR] = await request.app[SESSIONS].set_browsing_level(current, level)
    return redirect(back(request))


@routes.get("/account")
@page
async def account_page(request: web.Request) -> web.Response:
    return await _account(request)


async def _account(request: web.Request, *, new_token: Any = None, status: int = 200) -> web.Response:
    current = require_signed_in(request)
    tokens = await request.app[NODE].accounts.list_tokens(current.user)  # type: ignore[arg-type]
    return render(request, "account.html", {"tokens": list(reversed(tokens)), "new_token": new_token},
                  status=status)


@routes.post("/account/tokens")
@form(Role.MEMBER)
async def create_token(request: web.Request) -> web.Response:
    fields = await form_data(request)
    name = field(fields, "name", maximum=100)
    days_text = fields.get("expires_in_days", "").strip()
    if days_text and not days_text.isdigit():
        raise InvalidInput("expires in days: a whole number of days, or empty for the longest allowed")
    issued = await request.app[NODE].accounts.issue_token(visitor(request).user, name,  # type: ignore[arg-type]
                                                          expires_in_days=int(days_text) if days_text else None)
    # The secret is shown on this answer only (not after a redirect): it is never stored.
    return await _account(request, new_token=issued, status=201)


@routes.post("/account/tokens/{id}/revoke")
@form(Role.MEMBER)
async def revoke_token(request: web.Request) -> web.Response:
    await request.app[NODE].accounts.revoke_token(int_param(request, "id"), actor=visitor(request).user)
    return redirect("/account")


async def _react(request: web.Request, kind: str) -> web.Response:
    """A reaction to a model or an image (`kind`), set or taken back, then back to the page."""
    fields = await form_data(request)
    reaction = parse_enum(ReactionKind, field(fields, "reaction", maximum=16), "reaction")
    on = fields.get("on", "1") != "0"
    target_id = int_param(request, "id")
    catalog = request.app[NODE].catalog
    toggle = catalog.react_to_model if kind == "models" else catalog.react_to_image
    await toggle(visitor(request).user, target_id, reaction.value, on)
    return redirect(back(request, f"/{kind}/{target_id}"))


@routes.post("/models/{id}/react")
@form(Role.MEMBER)
async def react_model(request: web.Request) -> web.Response:
    return await _react(request, "models")


@routes.post("/images/{id}/react")
@form(Role.MEMBER)
async def react_image(request: web.Request) -> web.Response:
    return await _react(request, "images")


@routes.post("/versions/{id}/review")
@form(Role.MEMBER)
async def review_version(request: web.Request) -> web.Response:
    fields = await form_data(request)
    rating_text = field(fields, "rating", maximum=1)
    if rating_text not in ("1", "2", "3", "4", "5"):
        raise InvalidInput("rating: choose from 1 to 5 stars")
    text = field(fields, "text", maximum=10_000, required=False)
    version_id = int_param(request, "id")
    version, model = await request.app[NODE].catalog.visible_version(visitor(request).user, version_id)
    await request.app[NODE].catalog.review(visitor(request).user, version_id, rating=int(rating_text),  # type: ignore[arg-type]
                                           recommended=None, text=text)
    return redirect(f"/models/{model.id}?version={version_id}#reviews")
