"""Who is calling, and may they do this. Every mutating route goes through `requires` (or says it is
`public`); the app refuses to start when a mutating route has neither."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from aiohttp import web

from node.api.keys import NODE, USER
from node.core.accounts import require_role
from node.core.errors import Unauthenticated
from node.core.tables import Role, User

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ACCESS_ATTR = "__atrium_access__"
MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def token_from_request(request: web.Request) -> str | None:
    """The API token from `Authorization: Bearer ...` or, as Civitai clients also send it, `?token=`."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthenticated("the Authorization header must be `Bearer <token>`")
        return value.strip()
    return request.query.get("token") or None


async def authorize(request: web.Request, role: Role = Role.MEMBER, *, allow_disabled: bool = False) -> User:
    """The calling user, who must have at least `role`: 401 without valid credentials, 403 without the role.
    With `allow_disabled`, the token of a disabled (banned) account is accepted too."""
    user = request.get(USER)
    if user is None:
        user = await request.app[NODE].accounts.authenticate(token_from_request(request),
                                                             allow_disabled=allow_disabled)
        request[USER] = user
    require_role(user, role)
    return user


async def optional_user(request: web.Request) -> User | None:
    """The calling user if credentials were sent (and are valid), else None."""
    if request.get(USER) is not None:  # already known (a token checked earlier, or a browser session)
        return request[USER]
    if "Authorization" not in request.headers and "token" not in request.query:
        return None
    return await authorize(request, Role.MEMBER)


def current_user(request: web.Request) -> User:
    """The user `requires` authorized for this request."""
    return request[USER]


def requires(role: Role = Role.MEMBER, *, allow_disabled: bool = False) -> Callable[[Handler], Handler]:
    """Decorate a handler so it runs only for a caller with at least `role` (see `current_user`);
    `allow_disabled` lets a disabled account in (the few routes a banned member keeps, to appeal)."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def wrapper(request: web.Request) -> web.StreamResponse:
            await authorize(request, role, allow_disabled=allow_disabled)
            return await handler(request)

        setattr(wrapper, ACCESS_ATTR, f"role:{role.value}")
        return wrapper

    return decorate


def public(reason: str) -> Callable[[Handler], Handler]:
    """Mark a mutating handler that deliberately needs no token (e.g. login); `reason` says why."""

    def decorate(handler: Handler) -> Handler:
        setattr(handler, ACCESS_ATTR, f"public:{reason}")
        return handler

    return decorate


def unguarded_routes(app: web.Application) -> list[str]:
    """Mutating routes whose handler is marked with neither `requires` nor `public`."""
    missing = []
    for route in app.router.routes():
        if route.method in MUTATING_METHODS and not hasattr(route.handler, ACCESS_ATTR):
            missing.append(f"{route.method} {route.resource.canonical if route.resource else '?'}")
    return missing
