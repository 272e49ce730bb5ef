"""Typed keys for application and request state."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from node.api.metrics import HttpMetrics

    from node.core.config import Config
    from node.core.runtime import Node
    from node.core.tables import User

NODE = web.AppKey("node", "Node")
CONFIG = web.AppKey("config", "Config")
METRICS = web.AppKey("metrics", "HttpMetrics")
USER = web.RequestKey("user", "User")
