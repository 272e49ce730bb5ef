"""Bounties with escrow on the node's ledger: communities pay for the models, LoRAs and data sets they want."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiohttp import web

from node.core.config import parse_table
from node.core.hookspecs import hookimpl
from plugins.bounties.bounties import Bounties, BountySettings

log = logging.getLogger(__name__)

# The service and the expiry task of each running node (a process may run several, e.g. in tests).
_running: dict[int, tuple[Bounties, asyncio.Task[None]]] = {}


def service_for(node: Any) -> Bounties:
    """The bounties service of a started node."""
    return _running[id(node)][0]


async def expiry_loop(bounties: Bounties, interval: float) -> None:
    """Close due bounties now and every `interval` seconds (closing is idempotent, so several node
    processes on one database may all run this)."""
    while True:
        try:
            closed = await bounties.expire()
            if closed:
                log.info("bounties closed: %s", ", ".join(f"{i} ({outcome})" for i, outcome in closed))
        except Exception:  # a failed round must not stop the next one
            log.exception("closing due bounties failed")
        await asyncio.sleep(interval)


@hookimpl
async def atrium_startup(node: Any) -> None:
    settings = parse_table(BountySettings, node.config.plugin_table("bounties"), "plugins.bounties")
    bounties = Bounties(node.ledger, settings)
    task = asyncio.create_task(expiry_loop(bounties, settings.expiry_check_seconds), name="atrium-bounty-expiry")
    _running[id(node)] = (bounties, task)


@hookimpl
async def atrium_shutdown(node: Any) -> None:
    entry = _running.pop(id(node), None)
    if entry is not None:
        entry[1].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await entry[1]


@hookimpl
def atrium_routes(routes: web.RouteTableDef) -> None:
    from plugins.bounties.routes import add_routes

    add_routes(routes)
