"""Discovery: the node document (/.well-known/atrium-node) names the node, its keys with their validity
and the rotations that prove them, its endpoints and its policy; NodeInfo 2.1 describes it to crawlers."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import select

from federation.log import SignedEntry
from federation.verify import Cursor, LogRejected, check_batch, open_checkpoint
from node.core.keychain import finish_rotation, write_pending
from node.core.tables import BrowserSession, LogHead, Role, User, utcnow
from node.sources import document_keys
from tests.catalog_fixtures import safetensors_bytes
from tests.conftest import Api, wait_for
from tests.test_catalog import Creator
from tests.test_federation_sync import FakePeer, Nodes

NODEINFO_SCHEMA = "http://nodeinfo.diaspora.software/ns/schema/2.1"


async def document_of(api: Api) -> dict[str, Any]:
    response = await api.call("GET", "/.well-known/atrium-node")
    assert response.status == 200
    return await response.json()


async def rotate_in_process(api: Api) -> str:
    """What `atrium keys rotate` does, on the app's own database (each backend)."""
    node = api.node
    new_key = Ed25519PrivateKey.generate()
    write_pending(node.config.key_path, new_key)
    async with node.db.session() as session:
        _entry, rotations = await node.federation.log.rotate(session, new_key)
        await session.commit()
    finish_rotation(node.config.key_path, node.identity, new_key, rotations)
    return node.identity.key_id


async def test_the_node_document_names_the_node_its_keys_endpoints_and_policy(api_on: Api) -> None:
    node_id = api_on.node.node_id
    document = await document_of(api_on)
    assert document["id"] == node_id and document["name"] == api_on.node.name
    assert document["public_key"]["id"] == node_id and document["public_key"]["did"] == f"did:key:{node_id}"
    assert document["keys"] == [{"id": node_id, "did": f"did:key:{node_id}", "current": True,
                                 "validFrom": {"seq": 1, "time": None}, "validUntil": None, "rotation": None}]
    assert document["endpoints"] | {} == {
        "api": "/api/v1", "node_api": "/api/node/v1", "health": "/api/node/v1/health", "federation": "/federation/v1",
        "log": "/federation/v1/log", "origins": "/federation/v1/origins", "checkpoint": "/federation/v1/checkpoint",
        "inclusion_proof": "/federation/v1/proof/inclusion", "consistency_proof": "/federation/v1/proof/consistency",
        "followers": "/federation/v1/followers", "inbox": "/federation/v1/inbox", "nodeinfo": "/nodeinfo/2.1"}
    for name, path in document["endpoints"].items():  # every endpoint named is served
        if name in ("api", "node_api", "federation", "followers", "inbox"):
            continue  # prefixes, and POST-only routes
        status = (await api_on.call("GET", path)).status
        assert status in (200, 202, 400), (path, status)  # proofs without parameters: 400, not 404
    assert document["policy"] == {"followers": "anyone", "blocked": 0, "syncsFollowedNodes": True,
                                  "registration": "closed", "plugins": [], "defaultBrowsingLevel": 1,
                                  "swarm": api_on.node.config.swarm.enabled, "mirroring": None}

    # After a rotation: the same id, the new key current, the old one valid up to the rotation entry,
    # and the signed rotation that proves it, checkable with the node id alone.
    maker = Creator(api_on, await api_on.user("maker", Role.CREATOR))
    await maker.published(safetensors_bytes(seed=1), name="Before")
    new_key = await rotate_in_process(api_on)
    await maker.published(safetensors_bytes(seed=2), name="After")
    document = await document_of(api_on)
    assert document["id"] == node_id and document["public_key"]["id"] == new_key
    old, new = document["keys"]
    assert old["id"] == node_id and old["current"] is False and old["validUntil"]["seq"] == 2
    assert new["id"] == new_key and new["current"] is True and new["validFrom"]["seq"] == 3
    assert new["validFrom"]["time"] == old["validUntil"]["time"] and new["validFrom"]["time"].endswith("Z")
    assert [p.key for p in document_keys(node_id, document)] == [node_id, new_key]

    # Followers check the log and its checkpoint with the key of each part.
    note = await (await api_on.call("GET", "/federation/v1/checkpoint")).read()
    assert open_checkpoint(note, node_id, key=new_key)[0] == 3
    with pytest.raises(LogRejected):
        open_checkpoint(note, node_id)
    body = await (await api_on.call("GET", "/federation/v1/log")).read()
    entries = [SignedEntry.from_line(line) for line in body.splitlines()]
    cursor = Cursor(node_id)
    check_batch(cursor, entries, note)
    assert cursor.key == new_key and cursor.retired == {node_id: 2}
    async with api_on.node.db.read_session() as session:
        head = await session.get(LogHead, node_id)
    assert head.key_id == new_key and head.retired_keys == {node_id: 2}


async def test_nodeinfo_is_discoverable_and_follows_the_2_1_schema(api_on: Api) -> None:
    links = await (await api_on.call("GET", "/.well-known/nodeinfo")).json()
    (link,) = links["links"]
    assert link["rel"] == NODEINFO_SCHEMA and link["href"].endswith("/nodeinfo/2.1")
    assert link["href"].startswith("http")  # absolute, as NodeInfo discovery requires

    maker = Creator(api_on, await api_on.user("maker", Role.CREATOR))
    await maker.published(safetensors_bytes(seed=3), name="Counted")
    await maker.model("A draft is not counted")
    await api_on.user("idle")
    async with api_on.node.db.session() as session:  # the maker used the web pages last week
        user = (await session.exec(select(User).where(User.username == "maker"))).one()
        session.add(BrowserSession(secret_hash="a" * 64, user_id=user.id, last_seen_at=utcnow() - timedelta(days=7),
                                   expires_at=utcnow() + timedelta(days=7)))
        await session.commit()

    response = await api_on.call("GET", "/nodeinfo/2.1")
    assert response.status == 200
    assert response.headers["Content-Type"] == f'application/json; profile="{NODEINFO_SCHEMA}#"'
    info = await response.json()
    # Required by the schema: version, software (name matching ^[a-z0-9-]+$, version), protocols (at least
    # one), services (inbound, outbound), openRegistrations, usage (users), metadata.
    assert set(info) == {"version", "software", "protocols", "services", "openRegistrations", "usage", "metadata"}
    assert info["version"] == "2.1"
    assert re.fullmatch(r"[a-z0-9-]+", info["software"]["name"]) and info["software"]["name"] == "atrium-node"
    assert info["software"]["version"] == api_on.node.version
    assert info["protocols"] == ["atrium"]
    assert info["services"] == {"inbound": [], "outbound": []}
    assert info["openRegistrations"] is False
    assert info["usage"] == {"users": {"total": 2, "activeMonth": 1, "activeHalfyear": 1}, "localPosts": 1}
    assert info["metadata"]["nodeId"] == api_on.node.node_id and info["metadata"]["nodeName"] == api_on.node.name
    assert (await api_on.call("GET", "/nodeinfo/2.0")).status == 404
    assert (await api_on.call("POST", "/nodeinfo/2.1")).status == 405


async def test_a_peer_whose_document_and_log_name_different_nodes_is_halted(tmp_path: Path, aiohttp_client: Any,
                                                                            aiohttp_server: Any) -> None:
    fake = FakePeer()
    fake.entries.append(fake.add())
    impostor = FakePeer().identity.node_id
    app = fake.app()

    @web.middleware
    async def claims_another_id(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/.well-known/atrium-node":
            return web.json_response({"id": impostor, "name": "fake", "keys": []})
        return await handler(request)

    app.middlewares.append(claims_another_id)
    server = await aiohttp_server(app)
    b = await Nodes(tmp_path, aiohttp_client).start("b")
    await b.node.federation.peers.follow(str(server.make_url("")).rstrip("/"))

    async def halted() -> Any:
        (status,) = await b.node.federation.peers.statuses()
        return status if status.state == "halted" else None

    status = await wait_for(halted, timeout=10)
    assert status.evidence["kind"] == "identity" and status.evidence["log"] == fake.identity.node_id


async def test_a_followed_rotation_is_stored_with_the_cursor_and_its_key_signs_requests(api_on: Api) -> None:
    """On each backend: applying a batch with a rotation keeps the origin's new key (and the retired one)
    in its log head, the next cursor starts from it, and requests signed with that key are accepted."""
    import json

    from federation.httpsig import sign_request
    from tests.test_key_rotation import RotatingPeer

    fake = RotatingPeer()
    fake.entries.append(fake.model("First"))
    retired = fake.rotate()
    origin = fake.genesis.node_id
    body = json.dumps({"origin": origin, "head": 2}).encode()
    signed = sign_request(fake.identity, "POST", "/federation/v1/inbox", "", body)
    refused = await api_on.call("POST", "/federation/v1/inbox", data=body, headers=signed)
    assert refused.status == 401 and "does not know as the current key" in (await refused.json())["detail"]

    syncer = api_on.node.federation.syncer
    cursor = await syncer.cursor(origin, leaves=True)
    fields = check_batch(cursor, fake.entries)
    await syncer.apply(origin, fake.entries, fields)
    async with api_on.node.db.read_session() as session:
        head = await session.get(LogHead, origin)
    assert head.key_id == fake.identity.key_id and head.retired_keys == {retired.key_id: 2}
    resumed = await syncer.cursor(origin, leaves=True)
    assert resumed.key == fake.identity.key_id and resumed.retired == {retired.key_id: 2}
    with pytest.raises(LogRejected) as refused_entry:  # entry 3 signed by the retired key
        check_batch(resumed, [fake.model("Sneaky", key=retired)])
    assert refused_entry.value.kind == "forged"
    check_batch(resumed, [fake.model("Second")])  # entry 3 signed by the new key
    assert resumed.seq == 3

    # Now that this node knows the origin's key, the signature is accepted (and the push refused only
    # because this node does not follow that origin).
    signed = sign_request(fake.identity, "POST", "/federation/v1/inbox", "", body)
    accepted = await api_on.call("POST", "/federation/v1/inbox", data=body, headers=signed)
    assert accepted.status == 403 and "does not follow" in (await accepted.json())["detail"]


async def test_the_policy_names_the_mirroring_strategy_and_budget(aiohttp_client: Any, tmp_path: Path) -> None:
    from node.app import create_app
    from node.core.plugins import PluginHost
    from tests.conftest import make_config, write_node

    write_node(tmp_path / "data")
    config = make_config(tmp_path / "data", federation={"mirror": {"strategy": "recent", "budget": "2G"}})
    client = await aiohttp_client(create_app(config, migrate=True, plugins=PluginHost([], available={})))
    document = await (await client.get("/.well-known/atrium-node")).json()
    assert document["policy"]["mirroring"] == {"strategy": "recent", "budgetBytes": 2 * 1024**3}
