"""The URLs this node hands out: its own base URL, and the tracker it names in torrents and magnets."""

from __future__ import annotations

from aiohttp import web

from node.api.keys import NODE

ANNOUNCE_PATH = "/announce"


def base_url(request: web.Request) -> str:
    """Where clients reach this node: the configured public URL, else the address they used."""
    configured = request.app[NODE].config.node.public_url
    return configured.rstrip("/") if configured else str(request.url.origin())


def tracker_urls(request: web.Request) -> list[str]:
    """This node's tracker, when its swarm runs one (named in `.torrent` files and magnet links)."""
    node = request.app[NODE]
    return [f"{base_url(request)}{ANNOUNCE_PATH}"] if node.swarm.running and node.config.swarm.tracker else []
