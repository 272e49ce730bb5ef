"""The node's web pages: browse, publish and download models in a browser.

Server-rendered with Jinja2 (autoescaped), a little JavaScript where it clearly helps (copy buttons,
the upload progress bar), browser sessions with CSRF-checked forms, and a strict Content-Security-Policy.
`add_web` mounts it all on the node's application.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from node.api.keys import NODE
from node.core.sessions import BrowserSessions
from node.web import account, admin, moderation, pages, publish
from node.web.assets import STATIC_PREFIX, Assets
from node.web.sessions import ERROR_RENDERER, SESSIONS, web_middleware
from node.web.templating import render, setup


def error_page(request: web.Request, status: int, message: str) -> web.StreamResponse:
    titles = {400: "That did not work", 401: "Please sign in", 403: "Not allowed", 404: "Not found",
              409: "That clashes with something", 413: "Too large", 429: "Slow down"}
    return render(request, "error.html", {"status": status, "title": titles.get(status, "Something went wrong"),
                                          "message": message}, status=status)


def add_web(app: web.Application, assets: Assets | None = None) -> None:
    """Mount the web pages, their static files and their middleware on the node's app."""
    assets = assets or Assets()
    setup(app, assets)
    app[ERROR_RENDERER] = error_page
    app[pages.LIKED] = pages.StaleWhileRevalidate(pages.LIKED_FRESH_SECONDS)
    app[pages.HOME] = pages.StaleWhileRevalidate(pages.HOME_FRESH_SECONDS)
    app.middlewares.append(web_middleware)

    async def sessions_context(app: web.Application) -> AsyncIterator[None]:
        app[SESSIONS] = BrowserSessions(app[NODE].db)
        yield
        await app[pages.LIKED].close()
        await app[pages.HOME].close()

    app.cleanup_ctx.append(sessions_context)
    app.router.add_get(STATIC_PREFIX + "{name}", assets.handler)
    for table in (pages.routes, account.routes, publish.routes, admin.routes, moderation.routes):
        app.add_routes(table)
