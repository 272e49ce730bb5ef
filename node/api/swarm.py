"""The swarm over HTTP: per-file swarm figures, the node's BitTorrent tracker, and (for admins) fetching
another node's file through the swarm."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import unquote_to_bytes

import libtorrent as lt
from aiohttp import web

from node.api.accounts import client_address
from node.api.auth import requires
from node.api.files import visible_file
from node.api.keys import NODE
from node.api.links import ANNOUNCE_PATH
from node.client import NodeClient, NodeError, NodeUnreachable
from node.core.errors import Conflict, InvalidInput, NotFound
from node.core.swarm import ANNOUNCE_INTERVAL, ANNOUNCE_NUMWANT, SwarmError, parse_peer
from node.core.tables import Role
from node.sources import manifest_entry, torrent_of, verified_manifest

routes = web.RouteTableDef()

# At the root, as trackers usually are: libtorrent announces to a tracker on the local host only when
# its path is /announce (SSRF mitigation), and a user's own node is often on the local host.
MAX_FETCH_PEERS = 50


@routes.get("/api/node/v1/files/{id}/swarm")
async def file_swarm(request: web.Request) -> web.Response:
    """Who shares this file with this node: peers, seeds, bytes sent and rates."""
    node = request.app[NODE]
    file_id, _version_id, _model = await visible_file(request)
    meta = await node.distribution.torrent(file_id)
    stats = node.swarm.stats(meta.info_hash_v2)
    endpoint = node.swarm.peer_endpoint(request.url.host or "127.0.0.1")
    body: dict[str, Any] = {
        "fileId": file_id, "infoHashV1": meta.info_hash_v1, "infoHashV2": meta.info_hash_v2,
        "seeding": stats is not None and stats["state"] == "seeding",
        "peerAddress": f"{endpoint[0]}:{endpoint[1]}" if endpoint else None,
    }
    body.update(stats or {"state": "stopped" if not node.swarm.running else "not_seeded", "progress": 0.0,
                          "peers": 0, "seeds": 0, "uploaded": 0, "uploadedThisSession": 0, "downloaded": 0,
                          "uploadRate": 0, "downloadRate": 0, "trackerSeeds": 0, "trackerLeechers": 0,
                          "hashFailures": 0})
    return web.json_response(body)


@routes.get("/api/node/v1/swarm/torrents/{info_hash}")
async def torrent_swarm(request: web.Request) -> web.Response:
    """Swarm figures of a torrent this node seeds or fetches, by its v2 (or v1) info-hash: also covers
    files fetched from other nodes, which this node's catalog does not list."""
    node = request.app[NODE]
    info_hash = request.match_info["info_hash"].lower()
    if len(info_hash) not in (40, 64) or any(c not in "0123456789abcdef" for c in info_hash):
        raise InvalidInput(f"not an info-hash (40 or 64 hex digits): {info_hash!r}")
    found = node.swarm.find(info_hash)
    if found is None:
        raise NotFound(f"this node does not share the torrent {info_hash}")
    stats = node.swarm.stats(found.info_hash_v2) or {}
    return web.json_response({"name": found.name, "sha256": found.sha256, "fileId": found.file_id,
                              "infoHashV1": found.info_hash_v1, "infoHashV2": found.info_hash_v2, **stats})


def _bencoded(status: int, value: dict[bytes, Any]) -> web.Response:
    return web.Response(status=status, body=lt.bencode(value), content_type="text/plain")


def _failure(status: int, reason: str) -> web.Response:
    return _bencoded(status, {b"failure reason": reason.encode()})


@routes.get(ANNOUNCE_PATH)
async def announce(request: web.Request) -> web.Response:
    """A BitTorrent HTTP tracker (BEP 3, compact peers per BEP 23) for the files this node shares: it hands
    out this node itself and every peer that announced the same info-hash recently."""
    node = request.app[NODE]
    swarm = node.swarm
    if not swarm.running or not node.config.swarm.tracker:
        return _failure(404, "this node runs no tracker")
    # info_hash is 20 raw bytes, percent-encoded: read it from the raw query, not as text.
    raw: dict[str, bytes] = {}
    for item in request.query_string.split("&"):
        name, _, value = item.partition("=")
        raw[name] = unquote_to_bytes(value.replace("+", " "))
    info_hash = raw.get("info_hash", b"")
    if len(info_hash) != 20:
        return _failure(400, "info_hash must be 20 bytes")
    if not swarm.knows(info_hash.hex()):
        return _failure(404, "this node does not share that torrent")
    try:
        port = int(raw.get("port", b""))
        left = int(raw.get("left", b"0") or 0)
        numwant = min(int(raw.get("numwant", b"") or ANNOUNCE_NUMWANT), ANNOUNCE_NUMWANT)
    except ValueError:
        return _failure(400, "port, left and numwant must be integers")
    if not 0 < port < 65536:
        return _failure(400, "port must be 1-65535")
    event = raw.get("event", b"").decode("ascii", "replace")
    ip = client_address(request)  # behind a trusted reverse proxy, the peer's own address
    peers = swarm.tracker.announce(info_hash, ip, port, seed=left == 0, stopped=event == "stopped", numwant=numwant)
    own = swarm.peer_endpoint(request.url.host or ip)
    if own is not None and own != (ip, port):
        peers = [own, *(p for p in peers if p != own)][:max(numwant, 1)]
    seeds, leechers = swarm.tracker.counts([info_hash])
    body: dict[bytes, Any] = {b"interval": ANNOUNCE_INTERVAL, b"complete": seeds + (own is not None),
                              b"incomplete": leechers}
    if raw.get("compact", b"1") != b"0" and all(_is_ipv4(host) for host, _ in peers):
        body[b"peers"] = b"".join(socket.inet_aton(host) + port_.to_bytes(2, "big") for host, port_ in peers)
    else:
        body[b"peers"] = [{b"ip": host.encode(), b"port": port_} for host, port_ in peers]
    return _bencoded(200, body)


def _is_ipv4(host: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(host), ipaddress.IPv4Address)
    except ValueError:
        return False


@routes.post("/api/node/v1/swarm/fetch")
@requires(Role.ADMIN)
async def fetch_from_node(request: web.Request) -> web.Response:
    """Fetch files of another node's version through the swarm, check them against that node's signed
    manifest and seed them here. Body: {"node": URL, "versionId": N, "files": [names]?, "peers": [HOST:PORT]?}."""
    node = request.app[NODE]
    if not node.swarm.running:
        raise Conflict("the swarm is not running on this node (swarm.enabled is false)")
    body = await request.json() if request.can_read_body else None
    if not isinstance(body, dict):
        raise InvalidInput("expected a JSON object: {\"node\": URL, \"versionId\": N}")
    origin, version_id = body.get("node"), body.get("versionId")
    if not isinstance(origin, str) or not origin.startswith(("http://", "https://")):
        raise InvalidInput("node: the other node's URL (http://... or https://...)")
    if not isinstance(version_id, int) or isinstance(version_id, bool) or version_id < 1:
        raise InvalidInput("versionId: a positive integer")
    names, peer_texts = body.get("files"), body.get("peers", [])
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise InvalidInput("files: a list of file names")
    if not isinstance(peer_texts, list) or len(peer_texts) > MAX_FETCH_PEERS \
            or not all(isinstance(p, str) for p in peer_texts):
        raise InvalidInput(f"peers: a list of at most {MAX_FETCH_PEERS} HOST:PORT strings")
    peers = [parse_peer(p) for p in peer_texts]
    fetched = []
    try:
        async with NodeClient(origin) as client:
            manifest = await verified_manifest(client, version_id)
            version = await client.get(f"/api/v1/model-versions/{version_id}")
            files = [f for f in version.get("files") or [] if names is None or f.get("name") in names]
            if names is not None and len(files) != len(set(names)):
                missing = set(names) - {f.get("name") for f in files}
                raise InvalidInput(f"version {version_id} has no file named {', '.join(sorted(missing))}")
            for file in files:
                entry = manifest_entry(manifest, file)
                torrent = await torrent_of(client, int(file["id"]))
                path = await node.swarm.fetch(entry, torrent, peers=peers)
                fetched.append({"name": entry.name, "sha256": entry.sha256, "size": entry.size,
                                "infoHashV2": entry.info_hash_v2, "stored": path.is_file()})
    except NodeUnreachable as exc:
        raise SwarmError(exc.detail) from None
    except NodeError as exc:
        raise SwarmError(f"{origin} answered {exc.status}: {exc.detail}") from None
    return web.json_response({"origin": manifest.key_id, "versionId": version_id, "files": fetched})
