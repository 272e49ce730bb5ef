"""The one place where errors become HTTP responses: `{"error": CODE, "detail": TEXT}` with a 4xx.

Domain errors map to statuses by class; aiohttp's own HTTP errors (unknown route, wrong method,
oversized body) get the same JSON shape; anything unexpected is logged with its traceback and
answered with a 500 that shows none of it.
"""

from __future__ import annotations

import logging
import secrets

from aiohttp import web
from aiohttp.typedefs import Handler

from node.core import errors
from node.core.search import PageCapExceeded
from node.core.swarm import SwarmError

log = logging.getLogger("atrium.http")

STATUS_FOR: dict[type[errors.AtriumError], int] = {
    # Civitai answers 429 when page * limit passes the cap; clients know to switch to cursors.
    PageCapExceeded: 429,
    errors.InvalidInput: 400,
    errors.Unauthenticated: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.TooLarge: 413,
    SwarmError: 502,
    errors.RateLimited: 429,
    errors.SchemaOutOfDate: 503,
    errors.ConfigError: 500,
    errors.PluginLoadError: 500,
}

REQUEST_ID_HEADER = "X-Request-Id"


def status_for(exc: errors.AtriumError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_FOR:
            return STATUS_FOR[cls]
    return 400


def error_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status, headers=headers)


def _http_exception_detail(request: web.Request, exc: web.HTTPException) -> tuple[str, str]:
    if isinstance(exc, web.HTTPNotFound) and exc.text in (None, "", "404: Not Found"):
        return "not_found", f"no route for {request.method} {request.path}"
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return "method_not_allowed", f"{request.method} is not allowed on {request.path}; allowed: {allowed}"
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return "too_large", f"the request body is larger than this route accepts ({request.app._client_max_size} bytes)"
    code = (exc.reason or "error").lower().replace(" ", "_").replace("-", "_")
    text = exc.text or exc.reason
    # aiohttp's default bodies look like "404: Not Found"; keep only the words.
    if text and text.startswith(f"{exc.status}: "):
        text = text[len(f"{exc.status}: "):]
    return code, text or code


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request.headers.get(REQUEST_ID_HEADER, "")[:64] or secrets.token_hex(8)
    try:
        response = await handler(request)
    except errors.AtriumError as exc:
        status = status_for(exc)
        headers = {REQUEST_ID_HEADER: request_id}
        if status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="atrium"'
        if isinstance(exc, errors.RateLimited) and exc.retry_after:
            headers["Retry-After"] = str(exc.retry_after)
        if status >= 500:
            log.error("request %s %s failed: %s", request.method, request.path, exc.detail,
                      extra={"request_id": request_id})
        return error_response(status, exc.code, exc.detail, headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code, detail = _http_exception_detail(request, exc)
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after", "www-authenticate")}
        headers[REQUEST_ID_HEADER] = request_id
        return error_response(exc.status, code, detail, headers)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path, extra={"request_id": request_id})
        return error_response(500, "internal_error",
                              f"the node hit an unexpected error; the administrator can find request "
                              f"{request_id} in the node's log", {REQUEST_ID_HEADER: request_id})
    if not response.prepared:
        response.headers.setdefault(REQUEST_ID_HEADER, request_id)
    return response
