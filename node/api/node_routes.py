"""The node's own endpoints: health, the node document (/.well-known/atrium-node) and NodeInfo 2.1."""

from __future__ import annotations

import base64
from datetime import timedelta
from typing import Any

from aiohttp import web
from sqlalchemy import func, text
from sqlmodel import col, select

from node.api.keys import NODE
from node.api.links import base_url
from node.core.keychain import key_periods
from node.core.tables import ApiToken, BrowserSession, Model, User, utcnow
from node.core.vocabulary import ModelStatus

routes = web.RouteTableDef()

NODE_DOCUMENT_PATH = "/.well-known/atrium-node"
NODEINFO_PATH = "/nodeinfo/2.1"
NODEINFO_SCHEMA = "http://nodeinfo.diaspora.software/ns/schema/2.1"
NODEINFO_CONTENT_TYPE = f'application/json; profile="{NODEINFO_SCHEMA}#"'


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
    """Who this node is: id, its keys (the current one and the retired ones, with the signed rotations
    that prove them), name, software, endpoints and a summary of its policy."""
    node = request.app[NODE]
    if node.federation is not None:
        await node.federation.log.refresh_key()  # `atrium keys rotate` may have run beside this process
    config = node.config
    identity = node.identity
    periods = key_periods(identity.node_id, identity.rotations)
    return web.json_response({
        "id": node.node_id,
        "name": node.name,
        "description": config.node.description,
        "url": config.public_url,
        "public_key": {
            "type": "Ed25519",
            "id": identity.key_id,
            "base64": base64.b64encode(identity.public_key_bytes).decode("ascii"),
            "did": f"did:key:{identity.key_id}",
        },
        "keys": [p.as_json() for p in periods],
        "software": {"name": "atrium-node", "version": node.version},
        "plugins": node.plugins.loaded,
        "endpoints": {"api": "/api/v1", "node_api": "/api/node/v1", "health": "/api/node/v1/health",
                      "federation": "/federation/v1", "log": "/federation/v1/log",
                      "origins": "/federation/v1/origins", "checkpoint": "/federation/v1/checkpoint",
                      "inclusion_proof": "/federation/v1/proof/inclusion",
                      "consistency_proof": "/federation/v1/proof/consistency",
                      "followers": "/federation/v1/followers", "inbox": "/federation/v1/inbox",
                      "nodeinfo": NODEINFO_PATH},
        "accounts": {"registration": config.accounts.registration},
        "policy": _policy(node),
    })


def _policy(node: Any) -> dict[str, Any]:
    """What the node's configuration says about who it deals with (facts from node.toml, no promises)."""
    config = node.config
    federation = config.federation
    return {
        "followers": federation.followers,  # anyone, or approved followers only
        "blocked": len([b for b in federation.blocked if b.strip()]),  # how many node ids and domains
        "syncsFollowedNodes": federation.sync,
        "registration": config.accounts.registration,
        "plugins": list(config.plugins.enabled),
        # The content level a visitor of the web pages sees before choosing another (1: PG).
        "defaultBrowsingLevel": BrowserSession.model_fields["browsing_level"].default,
        "swarm": config.swarm.enabled,
        # Which followed nodes' files this node keeps copies of and seeds ([federation.mirror]).
        "mirroring": {"strategy": config.mirror.strategy, "budgetBytes": config.mirror.budget}
        if config.mirror.strategy != "none" else None,
    }


@routes.get("/.well-known/nodeinfo")
async def nodeinfo_links(request: web.Request) -> web.Response:
    """NodeInfo discovery: where this node's NodeInfo 2.1 document is."""
    return web.json_response({"links": [{"rel": NODEINFO_SCHEMA, "href": f"{base_url(request)}{NODEINFO_PATH}"}]})


@routes.get(NODEINFO_PATH)
async def nodeinfo(request: web.Request) -> web.Response:
    """NodeInfo 2.1: software, protocols, registrations and usage, for fediverse crawlers."""
    node = request.app[NODE]
    now = utcnow()
    async with node.db.read_session() as session:
        users = (await session.exec(select(func.count()).select_from(User).where(col(User.disabled).is_(False)))).one()
        active = {}
        for name, days in (("activeMonth", 30), ("activeHalfyear", 180)):
            since = now - timedelta(days=days)
            seen = select(BrowserSession.user_id).where(col(BrowserSession.user_id).is_not(None),
                                                        BrowserSession.last_seen_at >= since)
            used = select(ApiToken.user_id).where(col(ApiToken.last_used_at).is_not(None), ApiToken.last_used_at >= since)
            union = seen.union(used).subquery()
            active[name] = (await session.exec(select(func.count()).select_from(union))).one()
        models = (await session.exec(select(func.count()).select_from(Model).where(
            Model.status == ModelStatus.PUBLISHED.value))).one()
    document = {
        "version": "2.1",
        "software": {"name": "atrium-node", "version": node.version},
        "protocols": ["atrium"],
        "services": {"inbound": [], "outbound": []},
        "openRegistrations": node.config.accounts.registration == "open",
        "usage": {"users": {"total": users, **active}, "localPosts": models},
        "metadata": {"nodeName": node.name, "nodeDescription": node.config.node.description,
                     "nodeId": node.node_id, "nodeDocument": f"{base_url(request)}{NODE_DOCUMENT_PATH}"},
    }
    response = web.json_response(document)
    response.headers["Content-Type"] = NODEINFO_CONTENT_TYPE
    return response
