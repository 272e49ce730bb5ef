"""The aiohttp application factory."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.typedefs import Handler

import federation
from federation import mirroring_routes
from federation import routes as federation_routes
from node.api import accounts, catalog, civitai, distribution, files, jobs, ledger, moderation, node_routes, swarm, workers
from node.api.auth import unguarded_routes
from node.api.errors import error_middleware
from node.api.keys import CONFIG, METRICS, NODE
from node.api.metrics import HttpMetrics, metrics_handler, metrics_middleware
from node.core.config import Config
from node.core.errors import PluginLoadError
from node.core.plugins import PluginHost
from node.core.runtime import open_node, plugin_host_for
from node.web import add_web


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    if not response.prepared:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
    return response


def add_plugin_routes(app: web.Application, plugins: PluginHost, name: str) -> None:
    """Add one plugin's routes; a route the node (or another plugin) already serves is refused."""
    plugin_routes = web.RouteTableDef()
    for result in plugins.hook_for(name, "atrium_routes")(routes=plugin_routes):
        if inspect.isawaitable(result):
            result.close()  # type: ignore[attr-defined]
            raise PluginLoadError(f"plugin {name!r}: atrium_routes must be a plain function, not async "
                                  "(routes are added before the event loop serves anything)")
    taken = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}
    for route in plugin_routes:
        if isinstance(route, web.RouteDef) and (route.method, route.path) in taken:
            raise PluginLoadError(f"plugin {name!r} adds {route.method} {route.path}, which is already served")
    app.add_routes(plugin_routes)


def create_app(config: Config, *, migrate: bool = False, plugins: PluginHost | None = None) -> web.Application:
    """Build the node's web application. The node itself opens when the app starts (cleanup_ctx).

    Enabled plugins are imported here, so a plugin that fails to load stops the node before it listens.
    """
    if plugins is None:
        plugins = plugin_host_for(config)
        plugins.load(strict=True)
    metrics = HttpMetrics()
    # security_headers wraps error_middleware so that error answers carry the headers too.
    middlewares = [security_headers, error_middleware]
    if config.metrics.enabled:
        middlewares.insert(0, metrics_middleware(metrics))
    app = web.Application(middlewares=middlewares, client_max_size=config.http.max_body_bytes)
    app[CONFIG] = config
    app[METRICS] = metrics

    async def node_context(app: web.Application) -> AsyncIterator[None]:
        async with open_node(config, migrate=migrate, plugins=plugins, attach=[federation.attach]) as node:
            app[NODE] = node
            syncing = None
            if config.federation.sync:  # pull the followed nodes' logs while serving
                syncing = asyncio.create_task(node.federation.syncer.run(), name="atrium-federation-sync")
            # Keep copies of followed nodes' files by [federation.mirror] (removes copies when the policy is off).
            mirroring = asyncio.create_task(node.federation.mirroring.run(), name="atrium-federation-mirroring")
            try:
                yield
            finally:
                for task in (syncing, mirroring):
                    if task is not None:
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
                await node.federation.followers.close()

    app.cleanup_ctx.append(node_context)

    async def end_long_polls(app: web.Application) -> None:
        if NODE in app:
            app[NODE].federation.log.shutdown()
            app[NODE].jobs.shutdown()

    app.on_shutdown.append(end_long_polls)
    app.add_routes(node_routes.routes)
    app.add_routes(accounts.routes)
    app.add_routes(civitai.routes)
    app.add_routes(catalog.routes)
    app.add_routes(files.routes)
    app.add_routes(distribution.routes)
    app.add_routes(federation_routes.routes)
    app.add_routes(mirroring_routes.routes)
    app.add_routes(swarm.routes)
    app.add_routes(moderation.routes)
    app.add_routes(jobs.routes)
    app.add_routes(workers.routes)
    app.add_routes(ledger.routes)
    if config.metrics.enabled:
        app.router.add_get("/metrics", metrics_handler)
    add_web(app)
    for name in plugins.loaded:
        add_plugin_routes(app, plugins, name)
    missing = unguarded_routes(app)
    if missing:
        raise PluginLoadError("these routes change state but check no credentials "
                              f"(mark them with requires() or public()): {', '.join(missing)}")
    return app
