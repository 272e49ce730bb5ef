"""Following nodes: three real nodes on 127.0.0.1 share a catalog they can each verify, and a peer
that lies is stopped with the evidence kept."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import select

from federation import merkle
from federation.log import SignedEntry, canonical, sign_checkpoint
from node.app import create_app
from node.core.identity import NodeIdentity
from node.core.plugins import PluginHost
from node.core.tables import LogEntry, Peer, RemoteModel, Role
from tests.catalog_fixtures import safetensors_bytes
from tests.conftest import Api, free_port, make_config, wait_for, write_node
from tests.test_catalog import Creator


class Nodes:
    """Start and stop real nodes (each its own data directory, key and SQLite database)."""

    def __init__(self, tmp_path: Path, aiohttp_client: Any) -> None:
        self.tmp_path = tmp_path
        self.aiohttp_client = aiohttp_client

    async def start(self, name: str, **federation: Any) -> Api:
        data = self.tmp_path / name
        if not (data / "node.toml").exists():
            write_node(data, f'[node]\nname = "{name}"\n')
        port = free_port()
        config = make_config(data, node={"name": name, "public_url": f"http://127.0.0.1:{port}"},
                             federation={"poll_seconds": 5, **federation})
        app = create_app(config, migrate=True, plugins=PluginHost([], available={}))
        return Api(client=await self.aiohttp_client(app, server_kwargs={"port": port}), app=app)


def url(api: Api) -> str:
    return str(api.client.make_url("")).rstrip("/")


async def remote(api: Api, origin: Api | str) -> list[RemoteModel]:
    origin_id = origin if isinstance(origin, str) else origin.node.node_id
    async with api.node.db.read_session() as session:
        return list((await session.exec(select(RemoteModel).where(RemoteModel.origin == origin_id))).all())


async def peer_row(api: Api) -> Peer:
    async with api.node.db.read_session() as session:
        return (await session.exec(select(Peer))).one()


@pytest.fixture
def nodes(tmp_path: Path, aiohttp_client: Any) -> Nodes:
    return Nodes(tmp_path, aiohttp_client)


async def test_three_nodes_share_a_verified_catalog(nodes: Nodes) -> None:
    a, b, c = await nodes.start("a"), await nodes.start("b"), await nodes.start("c")
    maker = Creator(a, await a.user("maker", Role.CREATOR))
    await b.node.federation.peers.follow(url(a))
    await c.node.federation.peers.follow(url(b))  # C follows only B
    await wait_for(lambda: _synced(b), timeout=10)
    await wait_for(lambda: _synced(c), timeout=10)

    started = time.monotonic()
    model, version, _file = await maker.published(safetensors_bytes(seed=1), name="Shared Cats", tags=["cats"])
    rows = await wait_for(lambda: remote(b, a), timeout=5)
    assert time.monotonic() - started < 2.0
    assert rows[0].name == "Shared Cats" and rows[0].origin_name == "a" and rows[0].tags == ["cats"]
    assert rows[0].origin_url == url(a)  # where B's users fetch the files and the signed manifests
    assert rows[0].versions[0]["air"] == f"urn:air:sd1:lora:a:{model['id']}@{version['id']}"
    # C learns of A's model through B, and holds A's entries with A's own signatures.
    relayed = await wait_for(lambda: remote(c, a), timeout=5)
    assert relayed[0].name == "Shared Cats"
    async with c.node.db.read_session() as session:
        entries = (await session.exec(select(LogEntry).where(LogEntry.origin == a.node.node_id))).all()
    assert entries and all(_signed_by(a, e) for e in entries)

    # Remote models are searchable on the followers.
    found = await (await c.call("GET", "/api/node/v1/remote-models", params={"query": "cats"})).json()
    assert [m["name"] for m in found["items"]] == ["Shared Cats"]
    assert found["items"][0]["origin"] == {"id": a.node.node_id, "name": "a", "url": url(a)}
    assert (await (await b.call("GET", "/api/node/v1/remote-models", params={"query": "dogs"})).json())["items"] == []

    # A takedown at the origin removes the model everywhere.
    moderator = await a.user("mod", Role.MODERATOR)
    response = await a.call("PUT", f"/api/node/v1/models/{model['id']}/mode", moderator, json={"mode": "TakenDown"})
    assert response.status == 200
    await wait_for(lambda: _gone(b, a), timeout=5)
    await wait_for(lambda: _gone(c, a), timeout=5)

    # B restarts and catches up from its cursor.
    await b.client.close()
    other, _v, _f = await maker.published(safetensors_bytes(seed=2), name="While B Was Away")
    b2 = await nodes.start("b")
    rows = await wait_for(lambda: remote(b2, a), timeout=10)
    assert [r.name for r in rows] == ["While B Was Away"]
    async with b2.node.db.read_session() as session:
        seqs = (await session.exec(select(LogEntry.seq).where(LogEntry.origin == a.node.node_id))).all()
    assert sorted(seqs) == list(range(1, len(seqs) + 1))  # nothing applied twice, nothing skipped

    statuses = await (await b2.call("GET", "/api/node/v1/admin/peers", await b2.user("root", Role.ADMIN))).json()
    (status,) = statuses["items"]
    assert status["nodeId"] == a.node.node_id and status["state"] == "active" and status["lastError"] is None


async def _synced(api: Api) -> bool:
    peer = await peer_row(api)
    return peer.last_synced_at is not None or peer.node_id is not None


async def _gone(api: Api, origin: Api) -> bool:
    return not await remote(api, origin)


def _signed_by(origin: Api, entry: LogEntry) -> bool:
    from node.core.identity import verify

    return verify(origin.node.node_id, bytes(entry.data), bytes(entry.sig))


# -- lying peers -----------------------------------------------------------------------------------


class FakePeer:
    """An HTTP server that speaks the federation protocol with a log we control."""

    def __init__(self) -> None:
        self.identity = NodeIdentity(Ed25519PrivateKey.generate())
        self.entries: list[SignedEntry] = []  # what it serves
        self.signed: list[SignedEntry] | None = None  # what the origin signed, when a man in the middle changed it

    def add(self, kind: str = "model.published", name: str = "Evil", seq: int | None = None,
            prev: str | None = None) -> SignedEntry:
        seq = seq or len(self.entries) + 1
        if prev is None:
            prev = hashlib.sha256(self.entries[seq - 2].data).hexdigest() if seq > 1 else "0" * 64
        model = {"id": seq, "name": name, "type": "LORA", "status": "Published", "versions": [], "tags": []}
        data = canonical({"body": {"model": model, "nodeName": "fake"}, "kind": kind, "node": self.identity.node_id,
                          "prev": prev, "seq": seq, "ts": "2026-11-23T00:00:00Z"})
        return SignedEntry(data, self.identity.sign(data))

    def app(self) -> web.Application:
        async def document(_request: web.Request) -> web.Response:
            return web.json_response({"id": self.identity.node_id, "name": "fake"})

        async def origins(_request: web.Request) -> web.Response:
            return web.json_response([{"origin": self.identity.node_id, "head": len(self.entries)}])

        async def checkpoint(_request: web.Request) -> web.Response:
            leaves = [merkle.leaf_hash(e.data) for e in (self.signed or self.entries)]
            return web.Response(body=sign_checkpoint(self.identity, len(leaves), merkle.root(leaves)))

        async def log(request: web.Request) -> web.Response:
            after = int(request.query.get("after", "0"))
            lines = [e for e in self.entries if e.fields["seq"] > after]
            if not lines:
                await asyncio.sleep(min(float(request.query.get("wait", "0")), 0.2))
                return web.Response(status=202, headers={"Atrium-Log-Head": str(len(self.entries))})
            return web.Response(body=b"".join(e.line() for e in lines),
                                headers={"Atrium-Log-Head": str(len(self.entries))})

        app = web.Application()
        app.router.add_get("/.well-known/atrium-node", document)
        app.router.add_get("/federation/v1/origins", origins)
        app.router.add_get("/federation/v1/checkpoint", checkpoint)
        app.router.add_get("/federation/v1/log", log)
        return app


async def _halted(api: Api) -> Peer | None:
    peer = await peer_row(api)
    return peer if peer.state == "halted" else None


async def test_a_tampered_entry_halts_the_peer_with_evidence(nodes: Nodes, aiohttp_server: Any) -> None:
    # Someone between the origin and us changes entry 2; the origin's checkpoint still covers what it
    # signed, so the batch does not add up, and entry 2's own signature names the culprit.
    fake = FakePeer()
    fake.entries = [fake.add()]
    good = fake.add(seq=2, prev=hashlib.sha256(fake.entries[0].data).hexdigest())
    fake.signed = [fake.entries[0], good]
    fake.entries.append(SignedEntry(good.data.replace(b"Evil", b"Nice"), good.sig))
    server = await aiohttp_server(fake.app())
    b = await nodes.start("b")
    await b.node.federation.peers.follow(str(server.make_url("")).rstrip("/"))
    peer = await wait_for(lambda: _halted(b), timeout=10)
    assert peer.evidence["kind"] == "tampered" and "Nice" in peer.evidence["entry"]
    assert await remote(b, fake.identity.node_id) == []  # all or nothing: entry 1 was not applied either


async def test_a_forged_signature_and_a_forking_origin_are_detected(nodes: Nodes, aiohttp_server: Any) -> None:
    fake = FakePeer()
    for _ in range(3):
        fake.entries.append(fake.add())
    server = await aiohttp_server(fake.app())
    b = await nodes.start("b")
    await b.node.federation.peers.follow(str(server.make_url("")).rstrip("/"))
    await wait_for(lambda: remote(b, fake.identity.node_id), timeout=10)
    # The origin now serves another entry 3 (and a 4 after it): two histories under one key.
    fork = fake.add(kind="model.deleted", seq=3, prev=hashlib.sha256(fake.entries[1].data).hexdigest())
    fake.entries[2] = fork
    fake.entries.append(fake.add(seq=4, prev=hashlib.sha256(fork.data).hexdigest()))
    # It serves from seq 3 (a peer must never resend what we hold): the fork shows.
    original_log = fake.app
    peer = await wait_for(lambda: _halted_or_fork(b, fake), timeout=10)
    assert peer.evidence["kind"] in ("fork", "tampered"), peer.evidence
    del original_log


async def _halted_or_fork(api: Api, fake: FakePeer) -> Peer | None:
    return await _halted(api)


async def test_peers_admin_api_and_bad_input(nodes: Nodes) -> None:
    b = await nodes.start("b")
    admin = await b.user("root", Role.ADMIN)
    member = await b.user("joe", Role.MEMBER)
    assert (await b.call("POST", "/api/node/v1/admin/peers", member, json={"url": "http://127.0.0.1:9"})).status == 403
    assert (await b.call("POST", "/api/node/v1/admin/peers", json={"url": "http://127.0.0.1:9"})).status == 401
    for bad in ("ftp://x", "not a url", "http://h/?q=1", "http://user:pw@h"):
        response = await b.call("POST", "/api/node/v1/admin/peers", admin, json={"url": bad})
        assert response.status == 400, bad
    response = await b.call("POST", "/api/node/v1/admin/peers", admin, json={"url": "http://127.0.0.1:9/"})
    assert response.status == 201
    peer = await response.json()
    assert peer["url"] == "http://127.0.0.1:9"
    again = await b.call("POST", "/api/node/v1/admin/peers", admin, json={"url": "http://127.0.0.1:9"})
    assert again.status == 409
    # Unreachable: retried with backoff, the error recorded, still active.
    statuses = await wait_for(lambda: _with_error(b), timeout=10)
    assert statuses["state"] == "active" and "127.0.0.1:9" in statuses["lastError"]
    assert (await b.call("DELETE", f"/api/node/v1/admin/peers/{peer['id']}", admin)).status == 200
    assert (await b.call("DELETE", f"/api/node/v1/admin/peers/{peer['id']}", admin)).status == 404
    assert (await b.call("GET", "/api/node/v1/remote-models?limit=0")).status == 400


async def _with_error(api: Api) -> dict | None:
    statuses = await api.node.federation.peers.statuses()
    return statuses[0].as_json() if statuses and statuses[0].last_error else None


def test_follow_unfollow_and_peers_from_the_command_line(tmp_path: Path) -> None:
    from tests.conftest import atrium

    data = tmp_path / "node"
    assert atrium("init", str(data)).returncode == 0
    followed = atrium("follow", "http://127.0.0.1:9/", data=data)
    assert followed.returncode == 0 and "following http://127.0.0.1:9 (peer 1)" in followed.stdout
    again = atrium("follow", "http://127.0.0.1:9", data=data)
    assert again.returncode == 1 and "already following" in again.stderr
    bad = atrium("follow", "ftp://example.org", data=data)
    assert bad.returncode == 1 and "not a node URL" in bad.stderr
    listed = atrium("peers", data=data)
    assert listed.returncode == 0 and "http://127.0.0.1:9" in listed.stdout and "active" in listed.stdout
    assert atrium("peers", "--json", data=data).stdout.strip().startswith("[")
    assert atrium("unfollow", "http://127.0.0.1:9", data=data).returncode == 0
    gone = atrium("unfollow", "1", data=data)
    assert gone.returncode == 1 and "not following 1" in gone.stderr


async def test_applying_a_batch_stores_it_the_same_way_on_each_backend(api_on: Api) -> None:
    from node.core.tables import LogHead

    fake = FakePeer()
    for n in range(3):
        fake.entries.append(fake.add(name=f"Remote {n}"))
    fake.entries.append(fake.add(kind="model.deleted", name="Remote 0", seq=4))  # removes model 4 only
    syncer = api_on.node.federation.syncer
    cursor = await syncer.cursor(fake.identity.node_id, leaves=True)
    from federation.verify import check_batch

    fields = check_batch(cursor, fake.entries)
    await syncer.apply(fake.identity.node_id, fake.entries, fields)
    rows = sorted(await remote(api_on, fake.identity.node_id), key=lambda r: r.remote_id)
    assert [(r.remote_id, r.name, r.origin_name, r.tags, r.versions) for r in rows] == \
        [(1, "Remote 0", "fake", [], []), (2, "Remote 1", "fake", [], []), (3, "Remote 2", "fake", [], [])]
    assert rows[0].updated_at.tzinfo is not None
    async with api_on.node.db.read_session() as session:
        stored = (await session.exec(select(LogEntry).where(LogEntry.origin == fake.identity.node_id)
                                     .order_by(LogEntry.seq))).all()
        head = await session.get(LogHead, fake.identity.node_id)
    assert [bytes(e.data) for e in stored] == [e.data for e in fake.entries]
    assert [bytes(e.sig) for e in stored] == [e.sig for e in fake.entries]
    assert head.seq == 4 and head.entry_hash == hashlib.sha256(fake.entries[-1].data).hexdigest()
    # This node now relays that log, signatures intact.
    response = await api_on.call("GET", "/federation/v1/log", params={"origin": fake.identity.node_id})
    relayed = [SignedEntry.from_line(line) for line in (await response.read()).splitlines()]
    assert [(e.data, e.sig) for e in relayed] == [(e.data, e.sig) for e in fake.entries]
    origins = await (await api_on.call("GET", "/federation/v1/origins")).json()
    assert origins == [{"origin": api_on.node.node_id, "head": 0}, {"origin": fake.identity.node_id, "head": 4}]


# -- followers, pushes and policy -------------------------------------------------------------------


async def _followers(api: Api) -> list:
    return [f for f in await api.node.federation.followers.list()]


async def test_a_follower_is_recorded_and_pushed_to(nodes: Nodes) -> None:
    a, b = await nodes.start("a"), await nodes.start("b")
    await b.node.federation.peers.follow(url(a))
    (follower,) = await wait_for(lambda: _followers(a), timeout=10)
    assert follower.node_id == b.node.node_id and follower.url == url(b) and follower.state == "approved"
    maker = Creator(a, await a.user("maker", Role.CREATOR))
    await maker.published(safetensors_bytes(seed=5))

    async def pushed() -> Any:
        (row,) = await _followers(a)
        return row if row.last_push_at is not None else None

    row = await wait_for(pushed, timeout=10)
    assert row.last_error is None
    admin = await a.user("root", Role.ADMIN)
    listed = await (await a.call("GET", "/api/node/v1/admin/followers", admin)).json()
    assert listed["items"][0]["nodeId"] == b.node.node_id


async def test_an_approved_only_node_shares_its_log_once_the_admin_agrees(nodes: Nodes) -> None:
    a, b = await nodes.start("a", followers="approved"), await nodes.start("b")
    maker = Creator(a, await a.user("maker", Role.CREATOR))
    await maker.published(safetensors_bytes(seed=6), name="Members Only")
    assert (await a.call("GET", "/federation/v1/log")).status == 401  # unsigned
    await b.node.federation.peers.follow(url(a))
    (pending,) = await wait_for(lambda: _followers(a), timeout=10)
    assert pending.state == "pending"
    statuses = await wait_for(lambda: _with_error(b), timeout=10)
    assert "403" in statuses["lastError"] and await remote(b, a) == []
    admin = await a.user("root", Role.ADMIN)
    response = await a.call("PUT", f"/api/node/v1/admin/followers/{pending.id}/state", admin, json={"state": "approved"})
    assert response.status == 200 and (await response.json())["state"] == "approved"
    rows = await wait_for(lambda: remote(b, a), timeout=15)  # the backoff pause is short at first
    assert rows[0].name == "Members Only"
    bad = await a.call("PUT", f"/api/node/v1/admin/followers/{pending.id}/state", admin, json={"state": "friend"})
    assert bad.status == 400


async def test_blocked_nodes_and_domains_are_neither_followed_nor_admitted(nodes: Nodes) -> None:
    a = await nodes.start("a", blocked=["127.0.0.1"])
    admin = await a.user("root", Role.ADMIN)
    response = await a.call("POST", "/api/node/v1/admin/peers", admin, json={"url": "http://127.0.0.1:9"})
    assert response.status == 403 and "federation.blocked" in (await response.json())["detail"]
    b = await nodes.start("b")
    await b.node.federation.peers.follow(url(a))
    await asyncio.sleep(3)
    assert await _followers(a) == []  # b's URL is on a blocked domain


async def test_inbox_needs_a_signature_by_a_followed_node(nodes: Nodes) -> None:
    from federation.httpsig import sign_request

    b = await nodes.start("b")
    stranger = NodeIdentity(Ed25519PrivateKey.generate())
    body = json.dumps({"origin": stranger.node_id, "head": 3}).encode()
    assert (await b.call("POST", "/federation/v1/inbox", data=body)).status == 401
    signed = sign_request(stranger, "POST", "/federation/v1/inbox", "", body)
    response = await b.call("POST", "/federation/v1/inbox", data=body, headers=signed)
    assert response.status == 403 and "does not follow" in (await response.json())["detail"]
    signed = sign_request(stranger, "POST", "/federation/v1/inbox", "", b"{}")
    assert (await b.call("POST", "/federation/v1/inbox", data=body, headers=signed)).status == 401  # digest
    wrong = json.dumps({"origin": "z6Mkother", "head": 3}).encode()
    signed = sign_request(stranger, "POST", "/federation/v1/inbox", "", wrong)
    assert (await b.call("POST", "/federation/v1/inbox", data=wrong, headers=signed)).status == 400


def test_http_signatures_cover_method_path_query_and_body() -> None:
    from federation.httpsig import sign_request, verify_request
    from node.core.errors import Unauthenticated

    key = NodeIdentity(Ed25519PrivateKey.generate())
    headers = sign_request(key, "GET", "/federation/v1/log", "after=5", now=1_000_000)
    assert verify_request("GET", "/federation/v1/log", "after=5", headers, None, now=1_000_010) == key.node_id
    for method, path, query, now in (("POST", "/federation/v1/log", "after=5", 1_000_010),
                                     ("GET", "/federation/v1/checkpoint", "after=5", 1_000_010),
                                     ("GET", "/federation/v1/log", "after=0", 1_000_010),
                                     ("GET", "/federation/v1/log", "after=5", 1_000_000 + 301)):
        with pytest.raises(Unauthenticated):
            verify_request(method, path, query, headers, None, now=now)
    forged = dict(headers, Signature=headers["Signature"].replace(headers["Signature"][10:14], "AAAA"))
    with pytest.raises(Unauthenticated):
        verify_request("GET", "/federation/v1/log", "after=5", forged, None, now=1_000_010)
