"""The federation API: the signed log (NDJSON, long-poll), checkpoints and Merkle proofs, followers
and pushes between nodes, and the admin's view of peers and followers."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import Field

from federation.httpsig import signature_node, verify_request
from federation.log import MAX_PAGE, b64
from federation.peers import normalize_peer_url
from node.api.auth import public, requires
from node.api.bodies import Body, int_param, read_body
from node.api.keys import NODE
from node.core.errors import Forbidden, InvalidInput, Unauthenticated
from node.core.manifests import ManifestError
from node.sources import document_keys
from node.core.tables import Role

routes = web.RouteTableDef()

HEAD_HEADER = "Atrium-Log-Head"
MAX_WAIT = 30.0


def _int(request: web.Request, name: str, default: int | None = None, *, low: int = 0,
         high: int | None = None) -> int:
    text = request.query.get(name)
    if text is None:
        if default is None:
            raise InvalidInput(f"{name}: required")
        return default
    if not text.isdigit() or len(text) > 18:
        raise InvalidInput(f"{name}: expected a whole number, got {text[:40]!r}")
    value = int(text)
    if value < low or (high is not None and value > high):
        raise InvalidInput(f"{name}: must be from {low} to {high}" if high is not None else f"{name}: must be >= {low}")
    return value


async def _may_read(request: web.Request) -> None:
    """Under `federation.followers = "approved"` the log answers only approved followers' signed requests."""
    fed = request.app[NODE].federation
    signer = None
    if "Signature" in request.headers:
        signer = verify_request(request.method, request.rel_url.raw_path, request.rel_url.raw_query_string,
                                request.headers, None, current_keys=await _current_keys(request))
    if not await fed.followers.may_read(signer):
        if signer is None:
            raise Unauthenticated("this node shares its log with approved followers only: sign the request "
                                  "with your node key (RFC 9421) and ask its admin to approve you")
        raise Forbidden(f"{signer} is not an approved follower of this node")


@routes.get("/federation/v1/log")
async def log_entries(request: web.Request) -> web.StreamResponse:
    """Entries after `after`, oldest first, one JSON object per line: this node's own log, or with
    `origin=NODE_ID` a log it mirrors (relayed with the origin's signatures). With `wait=S` (at most
    30) an empty answer waits up to S seconds for news; still nothing: 202 with no body."""
    await _may_read(request)
    log = request.app[NODE].federation.log
    origin = request.query.get("origin") or log.node_id
    if len(origin) > 128:
        raise InvalidInput("origin: not a node id")
    after = _int(request, "after", 0)
    limit = _int(request, "limit", MAX_PAGE, low=1, high=MAX_PAGE)
    wait_text = request.query.get("wait", "0")
    try:
        wait = float(wait_text)
    except ValueError:
        raise InvalidInput(f"wait: expected seconds, got {wait_text[:40]!r}") from None
    if not 0 <= wait <= MAX_WAIT:
        raise InvalidInput(f"wait: from 0 to {MAX_WAIT:.0f} seconds")
    entries = await log.entries(after, limit, origin=origin)
    if not entries and wait:
        if await log.wait_for_change(origin, after, wait):
            entries = await log.entries(after, limit, origin=origin)
    head, head_hash = await log.head(origin)
    headers = {HEAD_HEADER: str(head), "Atrium-Log-Head-Hash": head_hash, "Atrium-Node": log.node_id,
               "Atrium-Log-Origin": origin}
    if not entries:
        return web.Response(status=202, headers=headers)
    return web.Response(body=b"".join(e.line() for e in entries), content_type="application/x-ndjson",
                        headers=headers)


@routes.get("/federation/v1/origins")
async def origins(request: web.Request) -> web.Response:
    """The logs this node serves: its own first, then those it mirrors, each with its head."""
    await _may_read(request)
    served = await request.app[NODE].federation.log.origins()
    return web.json_response([{"origin": origin, "head": head} for origin, head in served])


@routes.get("/federation/v1/checkpoint")
async def checkpoint(request: web.Request) -> web.Response:
    """A C2SP signed note over the log's size and RFC 6962 Merkle root."""
    await _may_read(request)
    note = await request.app[NODE].federation.log.checkpoint()
    return web.Response(body=note, content_type="text/plain", charset="utf-8")


@routes.get("/federation/v1/proof/inclusion")
async def inclusion_proof(request: web.Request) -> web.Response:
    """The audit path of entry `seq` in the tree of the first `size` entries."""
    await _may_read(request)
    log = request.app[NODE].federation.log
    head, _ = await log.head()
    size = _int(request, "size", head, low=1)
    seq = _int(request, "seq", low=1)
    proof = await log.inclusion(seq, size)
    return web.json_response({"seq": seq, "leafIndex": seq - 1, "treeSize": size, "hashes": b64(proof)})


@routes.get("/federation/v1/proof/consistency")
async def consistency_proof(request: web.Request) -> web.Response:
    """Proof that the log of `from` entries is a prefix of the log of `to` entries."""
    await _may_read(request)
    log = request.app[NODE].federation.log
    head, _ = await log.head()
    old = _int(request, "from", low=1)
    new = _int(request, "to", head, low=1)
    proof = await log.consistency(old, new)
    return web.json_response({"from": old, "to": new, "hashes": b64(proof)})


# -- followers and pushes ---------------------------------------------------------------------------


async def _current_keys(request: web.Request, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The current key of the node a request claims to be signed by, when that node rotated its key."""
    claimed = signature_node(request.headers)
    if claimed is None or claimed[0] == claimed[1]:
        return {}
    known = await request.app[NODE].federation.followers.current_keys(claimed[0])
    return {**known, **(extra or {})}  # a key just proven by the node document wins


async def _signed_json(request: web.Request, extra_keys: dict[str, str] | None = None) -> tuple[str, dict]:
    body = await request.read()
    data = _json_object(body)
    signer = verify_request(request.method, request.rel_url.raw_path, request.rel_url.raw_query_string,
                            request.headers, body, current_keys=await _current_keys(request, extra_keys))
    return signer, data


def _json_object(body: bytes) -> dict:
    try:
        data = json.loads(body)
    except ValueError:
        raise InvalidInput("the body is not JSON") from None
    if not isinstance(data, dict):
        raise InvalidInput("expected a JSON object")
    return data


@routes.post("/federation/v1/followers")
@public("nodes authenticate with an RFC 9421 signature by their node key, checked in the handler")
async def add_follower(request: web.Request) -> web.Response:
    """A node asks to follow this one: `{"url"}`, signed by its key. Its URL must serve its node id (and,
    when it rotated its key, the key chain to the key it signed with)."""
    claimed = signature_node(request.headers)
    if claimed is None or claimed[0] == claimed[1]:
        signer, data = await _signed_json(request)  # checked before this node fetches anything
        url = _follower_url(data)
        served, served_key = await _served_node_id(url)
    else:
        # A rotated node's current key is proven by the key chain its URL serves: read it, then check.
        url = _follower_url(_json_object(await request.read()))
        served, served_key = await _served_node_id(url)
        signer, _data = await _signed_json(request, {served: served_key} if served and served_key else None)
    fed = request.app[NODE].federation
    follower = await fed.followers.register(signer, url, served, served_key if signer == served else None)
    return web.json_response({"nodeId": follower.node_id, "state": follower.state},
                             status=201 if follower.state == "approved" else 202)


def _follower_url(data: dict) -> str:
    url = data.get("url")
    if not isinstance(url, str):
        raise InvalidInput("url: the follower's base URL is required")
    return normalize_peer_url(url)


async def _served_node_id(url: str) -> tuple[str | None, str | None]:
    """(node id, current key) the URL's node document states; the key only when its key chain holds."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            async with http.get(f"{url}/.well-known/atrium-node") as response:
                if response.status != 200:
                    return None, None
                document = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError, OSError):
        return None, None
    node_id = document.get("id") if isinstance(document, dict) else None
    if not isinstance(node_id, str):
        return None, None
    try:
        return node_id, document_keys(node_id, document)[-1].key
    except (ManifestError, InvalidInput):
        return node_id, None


@routes.post("/federation/v1/inbox")
@public("nodes authenticate with an RFC 9421 signature by their node key, checked in the handler")
async def inbox(request: web.Request) -> web.Response:
    """A followed node says its log reached `head`: its puller pulls now instead of after its pause."""
    signer, data = await _signed_json(request)
    if data.get("origin") != signer or not isinstance(data.get("head"), int):
        raise InvalidInput("expected {\"origin\": <the signing node's id>, \"head\": <seq>}")
    if not await request.app[NODE].federation.syncer.wake(signer):
        raise Forbidden(f"this node does not follow {signer}")
    return web.json_response({"accepted": True}, status=202)


# -- admin: the nodes this node follows ------------------------------------------------------------


class FollowBody(Body):
    url: str = Field(max_length=512)


@routes.get("/api/node/v1/admin/peers")
@requires(Role.ADMIN)
async def list_peers(request: web.Request) -> web.Response:
    """Followed nodes: state, how far behind, the last error and, for a halted one, the evidence."""
    statuses = await request.app[NODE].federation.peers.statuses()
    return web.json_response({"items": [s.as_json() for s in statuses]})


@routes.post("/api/node/v1/admin/peers")
@requires(Role.ADMIN)
async def follow_peer(request: web.Request) -> web.Response:
    """Follow a node by its URL; syncing starts within seconds."""
    body = await read_body(request, FollowBody)
    peer = await request.app[NODE].federation.peers.follow(body.url)
    return web.json_response({"id": peer.id, "url": peer.url, "state": peer.state}, status=201)


@routes.delete("/api/node/v1/admin/peers/{id}")
@requires(Role.ADMIN)
async def unfollow_peer(request: web.Request) -> web.Response:
    peer = await request.app[NODE].federation.peers.unfollow(int_param(request, "id"))
    return web.json_response({"id": peer.id, "url": peer.url, "unfollowed": True})


@routes.post("/api/node/v1/admin/peers/{id}/resume")
@requires(Role.ADMIN)
async def resume_peer(request: web.Request) -> web.Response:
    """Let a halted peer sync again, once the evidence has been looked at."""
    peer = await request.app[NODE].federation.peers.resume(int_param(request, "id"))
    return web.json_response({"id": peer.id, "url": peer.url, "state": peer.state})


@routes.get("/api/node/v1/admin/followers")
@requires(Role.ADMIN)
async def list_followers(request: web.Request) -> web.Response:
    followers = await request.app[NODE].federation.followers.list()
    return web.json_response({"items": [follower_json(f) for f in followers]})


class FollowerStateBody(Body):
    state: str = Field(max_length=16)


@routes.put("/api/node/v1/admin/followers/{id}/state")
@requires(Role.ADMIN)
async def set_follower_state(request: web.Request) -> web.Response:
    """Approve (`approved`), hold (`pending`) or block (`blocked`) a follower."""
    body = await read_body(request, FollowerStateBody)
    follower = await request.app[NODE].federation.followers.set_state(int_param(request, "id"), body.state)
    return web.json_response(follower_json(follower))


def follower_json(f: Any) -> dict[str, Any]:
    return {"id": f.id, "nodeId": f.node_id, "url": f.url, "state": f.state, "lastError": f.last_error,
            "lastPushAt": f.last_push_at.isoformat().replace("+00:00", "Z") if f.last_push_at else None}


@routes.get("/api/node/v1/remote-models")
async def remote_models(request: web.Request) -> web.Response:
    """Models of followed nodes (the mirrored index), newest first; `query` matches names, tags and
    creators, `origin` (node id or name) and `type` filter."""
    limit = _int(request, "limit", 20, low=1, high=100)
    page = await request.app[NODE].federation.mirror.search(
        query=request.query.get("query", ""), origin=request.query.get("origin"),
        type=request.query.get("type"), limit=limit, after=_int(request, "cursor", 0) or None)
    return web.json_response(page)
