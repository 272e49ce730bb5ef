"""Prometheus metrics: request counts and latencies by route, served at GET /metrics."""

from __future__ import annotations

import time

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from node.api.keys import METRICS

UNMATCHED = "unmatched"


class HttpMetrics:
    """The node's HTTP metrics in a registry of their own (one per app, so tests do not collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("atrium_http_requests", "HTTP requests answered, by route and status.",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("atrium_http_request_duration_seconds", "Time to answer an HTTP request.",
                                 ["method", "route"], registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))


def route_label(request: web.Request) -> str:
    """The route's pattern (`/api/v1/models/{id}`), so labels do not explode with ids."""
    route = request.match_info.route
    resource = route.resource if route is not None else None
    return resource.canonical if resource is not None else UNMATCHED


def metrics_middleware(metrics: HttpMetrics) -> web.middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            label = route_label(request)
            metrics.requests.labels(request.method, label, str(status)).inc()
            metrics.latency.labels(request.method, label).observe(time.perf_counter() - start)

    return middleware


async def metrics_handler(request: web.Request) -> web.Response:
    """GET /metrics: the Prometheus text exposition format."""
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
