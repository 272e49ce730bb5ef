"""The node's own endpoints: health and the node document."""

from __future__ import annotations

import base64

from aiohttp import web
from sqlalchemy import text

from node.api.keys import NODE

routes = web.RouteTableDef()

NODE_DOCUMENT_PATH = "/.well-known/atrium-node"


@routes.get("/api/node/v1/health")
async def health(request: web.Request) -> web.Response:
    """Liveness and readiness: 200 when the database answers, 503 when it does not."""
    node = request.app[NODE]
    try:
        async with node.db.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        database = "ok"
    except Exception as exc:  # a health check reports, it does not raise
        database = f"unavailable: {type(exc).__name__}"
    status = 200 if database == "ok" else 503
    return web.json_response({"status": "ok" if status == 200 else "degraded", "version": node.version,
                              "node_id": node.node_id, "database": database}, status=status)


@routes.get(NODE_DOCUMENT_PATH)
async def node_document(request: web.Request) -> web.Response:
    """Who this node is: id, public key, name, software and enabled plugins."""
    node = request.app[NODE]
    config = node.config
    return web.json_response({
        "id": node.node_id,
        "name": node.name,
        "description": config.node.description,
        "url": config.public_url,
        "public_key": {
            "type": "Ed25519",
            "base64": base64.b64encode(node.identity.public_key_bytes).decode("ascii"),
            "did": f"did:key:{node.node_id}",
        },
        "software": {"name": "atrium-node", "version": node.version},
        "plugins": node.plugins.loaded,
        "endpoints": {"api": "/api/v1", "node_api": "/api/node/v1", "health": "/api/node/v1/health",
                      "federation": "/federation/v1"},
        "accounts": {"registration": config.accounts.registration},
    })
