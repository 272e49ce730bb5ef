"""The federation API: the signed log (NDJSON, long-poll), checkpoints and Merkle proofs."""

from __future__ import annotations

from aiohttp import web

from federation.log import MAX_PAGE, b64
from node.api.keys import NODE
from node.core.errors import InvalidInput

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


@routes.get("/federation/v1/log")
async def log_entries(request: web.Request) -> web.StreamResponse:
    """Entries after `after`, oldest first, one JSON object per line. With `wait=S` (at most 30) an
    empty answer waits up to S seconds for the next entry; still nothing: 202 with no body."""
    log = request.app[NODE].federation
    after = _int(request, "after", 0)
    limit = _int(request, "limit", MAX_PAGE, low=1, high=MAX_PAGE)
    wait_text = request.query.get("wait", "0")
    try:
        wait = float(wait_text)
    except ValueError:
        raise InvalidInput(f"wait: expected seconds, got {wait_text[:40]!r}") from None
    if not 0 <= wait <= MAX_WAIT:
        raise InvalidInput(f"wait: from 0 to {MAX_WAIT:.0f} seconds")
    entries = await log.entries(after, limit)
    if not entries and wait:
        await log.wait_for_entries(after, wait)
        entries = await log.entries(after, limit)
    head, head_hash = await log.head()
    headers = {HEAD_HEADER: str(head), "Atrium-Log-Head-Hash": head_hash, "Atrium-Node": log.node_id}
    if not entries:
        return web.Response(status=202, headers=headers)
    return web.Response(body=b"".join(e.line() for e in entries), content_type="application/x-ndjson",
                        headers=headers)


@routes.get("/federation/v1/checkpoint")
async def checkpoint(request: web.Request) -> web.Response:
    """A C2SP signed note over the log's size and RFC 6962 Merkle root."""
    note = await request.app[NODE].federation.checkpoint()
    return web.Response(body=note, content_type="text/plain", charset="utf-8")


@routes.get("/federation/v1/proof/inclusion")
async def inclusion_proof(request: web.Request) -> web.Response:
    """The audit path of entry `seq` in the tree of the first `size` entries."""
    log = request.app[NODE].federation
    head, _ = await log.head()
    size = _int(request, "size", head, low=1)
    seq = _int(request, "seq", low=1)
    proof = await log.inclusion(seq, size)
    return web.json_response({"seq": seq, "leafIndex": seq - 1, "treeSize": size, "hashes": b64(proof)})


@routes.get("/federation/v1/proof/consistency")
async def consistency_proof(request: web.Request) -> web.Response:
    """Proof that the log of `from` entries is a prefix of the log of `to` entries."""
    log = request.app[NODE].federation
    head, _ = await log.head()
    old = _int(request, "from", low=1)
    new = _int(request, "to", head, low=1)
    proof = await log.consistency(old, new)
    return web.json_response({"from": old, "to": new, "hashes": b64(proof)})
