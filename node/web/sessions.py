"""Browser sessions over HTTP: the session cookie, CSRF checks on every form, the Content-Security-Policy,
HTML error pages, and the bridge that lets the pages' own JavaScript call the API as the signed-in user.

Every web route is marked by `page` (reads) or `form` (POSTs): the middleware gives both a `Visitor`,
checks a form's CSRF token before its handler runs, and sets the cookie when the secret is new.
"""

from __future__ import annotations

import functools
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from aiohttp import web
from aiohttp.typedefs import Handler

from node.api.auth import ACCESS_ATTR, MUTATING_METHODS
from node.api.keys import NODE, USER
from node.core import errors
from node.core.errors import Forbidden, InvalidInput, Unauthenticated
from node.core.sessions import SESSION_LIFETIME, BrowserSessions, Visitor
from node.core.tables import Role

log = logging.getLogger("atrium.web")

SESSION_COOKIE = "atrium_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
PAGE_ATTR = "__atrium_page__"
# Pages load only their own files: no inline script or style, so injected markup cannot run.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                           "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
CSRF_MESSAGE = ("This form could not be accepted: its security token is missing or out of date (it did not come "
                "from this site, or you signed in or out in another tab). Reload the page and try again.")

SESSIONS = web.AppKey("browser_sessions", BrowserSessions)
VISITOR = web.RequestKey("visitor", Visitor)

PageHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ErrorRenderer = Callable[[web.Request, int, str], web.StreamResponse]
ERROR_RENDERER = web.AppKey("error_renderer", object)


def page(handler: PageHandler) -> PageHandler:
    """Mark a handler as a web page (it gets a Visitor, HTML errors and the CSP header)."""
    setattr(handler, PAGE_ATTR, True)
    return handler


def form(role: Role | None = None) -> Callable[[PageHandler], PageHandler]:
    """Mark a handler of a browser form: its CSRF token is checked before it runs and, with `role`,
    the visitor must be signed in with at least that role."""

    def decorate(handler: PageHandler) -> PageHandler:
        @functools.wraps(handler)
        async def wrapper(request: web.Request) -> web.StreamResponse:
            if role is not None:
                require_signed_in(request, role)
            return await handler(request)

        setattr(wrapper, PAGE_ATTR, True)
        setattr(wrapper, ACCESS_ATTR, f"session:{role.value if role else 'csrf'}")
        return wrapper

    return decorate


def visitor(request: web.Request) -> Visitor:
    return request[VISITOR]


def require_signed_in(request: web.Request, role: Role = Role.MEMBER) -> Visitor:
    """The visitor, who must be signed in (else Unauthenticated: pages answer with the sign-in page)
    with at least `role` (else Forbidden)."""
    current = request[VISITOR]
    if current.user is None:
        raise Unauthenticated("sign in first: this needs an account")
    if not Role(current.user.role).includes(role):
        raise Forbidden(f"this needs the {role.value} role; you are {current.user.role}")
    return current


def is_https(request: web.Request) -> bool:
    """Cookies are Secure when the page was served over HTTPS or the node says it is reached that way."""
    return request.secure or request.app[NODE].config.node.public_url.lower().startswith("https://")


def set_session_cookie(request: web.Request, response: web.StreamResponse, secret: str) -> None:
    response.set_cookie(SESSION_COOKIE, secret, max_age=int(SESSION_LIFETIME.total_seconds()), path="/",
                        httponly=True, samesite="Lax", secure=is_https(request))


def redirect(location: str) -> web.Response:
    """A 303 to `location` (a path on this node), returned rather than raised so cookies can be added."""
    if not location.startswith("/") or location.startswith("//"):
        location = "/"
    return web.Response(status=303, headers={"Location": location})


async def _visitor_from_cookie(request: web.Request) -> tuple[Visitor, bool]:
    """The visitor, and whether their cookie must be (re)set."""
    secret = request.cookies.get(SESSION_COOKIE)
    sessions = request.app[SESSIONS]
    found = await sessions.visitor(secret)
    if found is not None:
        return found, False
    if secret and 20 <= len(secret) <= 128:
        # A secret with nothing (or nothing current) stored: keep it, so the CSRF token of a page already
        # open stays valid.
        return sessions.anonymous(secret), False
    return sessions.anonymous(), True


async def _csrf_ok(request: web.Request, current: Visitor) -> bool:
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        data = await read_form(request)
        value = data.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    return bool(sent) and request.cookies.get(SESSION_COOKIE) is not None and \
        hmac.compare_digest(sent.encode(), current.csrf_token.encode())  # type: ignore[union-attr]


async def read_form(request: web.Request) -> Any:
    """The posted form; InvalidInput (400) when its body cannot be read as one."""
    try:
        return await request.post()
    except (ValueError, UnicodeDecodeError, AssertionError) as exc:
        raise InvalidInput(f"the form could not be read: {exc}") from None


def _wants_html(request: web.Request, handler: object) -> bool:
    if getattr(handler, PAGE_ATTR, False):
        return True
    return (request.match_info.http_exception is not None and not request.path.startswith("/api/")
            and "text/html" in request.headers.get("Accept", ""))


async def _api_as_session_user(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The pages' scripts call the API with the session cookie instead of a token: reads as the
    signed-in user, and writes too when they carry the session's CSRF token in X-CSRF-Token."""
    if "Authorization" not in request.headers and "token" not in request.query \
            and SESSION_COOKIE in request.cookies:
        found = await request.app[SESSIONS].visitor(request.cookies[SESSION_COOKIE])
        if found is not None and found.user is not None:
            if request.method not in MUTATING_METHODS:
                request[USER] = found.user
            elif request.headers.get(CSRF_HEADER) is not None:
                if not hmac.compare_digest(request.headers[CSRF_HEADER].encode(), found.csrf_token.encode()):
                    raise Forbidden(CSRF_MESSAGE, code="csrf")
                request[USER] = found.user
    return await handler(request)


@web.middleware
async def web_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Visitors, CSRF, cookies, CSP and HTML errors for web pages; the session bridge for the API."""
    route_handler = request.match_info.handler
    if request.path.startswith("/api/"):
        return await _api_as_session_user(request, handler)
    if not _wants_html(request, route_handler):
        return await handler(request)
    current, new_cookie = await _visitor_from_cookie(request)
    request[VISITOR] = current
    try:
        if request.method in MUTATING_METHODS and not await _csrf_ok(request, current):
            raise Forbidden(CSRF_MESSAGE, code="csrf")
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            response = web.Response(status=exc.status, headers=exc.headers)
        else:
            response = _error_page(request, exc.status, exc.text if exc.text and not
                                   exc.text.startswith(f"{exc.status}:") else exc.reason)
    except Unauthenticated as exc:
        if request.method == "GET" and request[VISITOR].user is None:
            response = redirect(f"/signin?next={quote(request.path_qs, safe='')}")
        else:
            response = _error_page(request, 401, exc.detail)
    except errors.AtriumError as exc:
        from node.api.errors import status_for

        status = status_for(exc)
        if status >= 500:
            log.error("page %s %s failed: %s", request.method, request.path, exc.detail)
        response = _error_page(request, status, exc.detail)
    final = request[VISITOR]
    if new_cookie or final.secret != current.secret:
        set_session_cookie(request, response, final.secret)
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Frame-Options", "DENY")
    # Pages carry the visitor's CSRF token (and, signed in, their name): never for shared caches.
    response.headers.setdefault("Cache-Control", "private, no-store" if final.user is not None
                                or request.method != "GET" else "private, no-cache")
    return response


def _error_page(request: web.Request, status: int, message: str) -> web.StreamResponse:
    if status == 404 and message in ("Not Found", ""):
        message = f"There is no page at {request.path}."
    renderer: ErrorRenderer = request.app[ERROR_RENDERER]  # type: ignore[assignment]
    return renderer(request, status, message)
