"""The plugin contract: every hook a plugin may implement.

Plugins are modules (or objects) registered under the entry point group `atrium.plugins` and enabled
per node with `[plugins] enabled = [...]`. They mark implementations with `@hookimpl`. An
implementation may be `async def` (the node awaits it) except where a hook says otherwise. Every hook here is documented in
docs/plugins.md; a test fails when one is not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from aiohttp import web

    from node.core.runtime import Node

PROJECT = "atrium"
ENTRY_POINT_GROUP = "atrium.plugins"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def atrium_startup(node: Node) -> Any:
    """Fires once when the node starts, after the database is open; validate `node.config.plugin_table(name)` and open resources here. Returns nothing."""


@hookspec
def atrium_shutdown(node: Node) -> Any:
    """Fires once when the node stops, in reverse order of startup; close what startup opened. Returns nothing."""


@hookspec
def atrium_routes(routes: web.RouteTableDef) -> None:
    """Fires while the HTTP app is built (a plain function, not async); add routes to `routes` under a prefix of the plugin's own, each mutating handler marked with `node.api.auth.requires` or `public`. Returns nothing."""


@hookspec
def atrium_job_kinds(register: Any) -> None:
    """Fires at startup (a plain function, not async); call `register(JobKind(...))` for each job kind the plugin runs. Returns nothing."""
