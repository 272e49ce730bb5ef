"""Key rotation: a node moves to a new signing key with a log entry signed by the old one; its id,
its followers, relays, manifests and pulls carry on, and an entry a retired key signs later is refused."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import select

from federation import merkle
from federation.log import FederationLog, SignedEntry, canonical, sign_checkpoint
from federation.verify import Cursor, LogRejected, check_batch
from node.core.config import load_config
from node.core.db import Database
from node.core.errors import ConfigError
from node.core.identity import NodeIdentity, Rotation, load_identity, node_id_for
from node.core.keychain import (ROTATION_KIND, KeyChainError, key_periods, pending_path, proof_message,
                                rotation_body, write_chain, write_pending)
from node.core.manifests import open_manifest
from node.core.tables import LogEntry, LogHead, Role
from tests.catalog_fixtures import safetensors_bytes
from tests.conftest import Api, atrium, wait_for
from tests.test_catalog import Creator
from tests.test_federation_sync import FakePeer, Nodes, remote, url


@pytest.fixture
def nodes(tmp_path: Path, aiohttp_client: Any) -> Nodes:
    return Nodes(tmp_path, aiohttp_client)


async def rotate(data: Path) -> tuple[str, str]:
    """`atrium keys rotate --data DATA` in a subprocess, as an admin would (the node may be serving)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "node", "keys", "rotate", "--data", str(data),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return out.decode(), err.decode()


async def head_of(api: Api, origin: str) -> LogHead | None:
    async with api.node.db.read_session() as session:
        return await session.get(LogHead, origin)


async def entries_of(api: Api, origin: str) -> list[LogEntry]:
    async with api.node.db.read_session() as session:
        return list((await session.exec(select(LogEntry).where(LogEntry.origin == origin)
                                        .order_by(LogEntry.seq))).all())


def signed_by_its_key(entries: list[LogEntry], node_id: str, document: dict[str, Any]) -> bool:
    """Every entry verifies with the one key the origin's chain says signs at its seq."""
    from node.core.identity import verify
    from node.sources import document_keys

    periods = document_keys(node_id, document)
    for entry in entries:
        (period,) = [p for p in periods if p.from_seq <= entry.seq and (p.until_seq is None or entry.seq <= p.until_seq)]
        if not verify(period.key, bytes(entry.data), bytes(entry.sig)):
            return False
    return True


async def test_followers_and_relays_keep_verifying_a_node_across_its_key_rotation(nodes: Nodes) -> None:
    a, b, c = await nodes.start("a"), await nodes.start("b"), await nodes.start("c")
    node_id, genesis = a.node.node_id, a.node.identity.key_id
    maker = Creator(a, await a.user("maker", Role.CREATOR))
    await b.node.federation.peers.follow(url(a))
    await c.node.federation.peers.follow(url(b))  # C follows only B
    await maker.published(safetensors_bytes(seed=1), name="Before")
    await wait_for(lambda: remote(c, a), timeout=15)

    out, _err = await rotate(nodes.tmp_path / "a")  # while A serves
    assert f"node {node_id} (its id does not change)" in out and f"retired:  {genesis}" in out
    await maker.published(safetensors_bytes(seed=2), name="After")  # A adopts the new key before signing
    new_key = a.node.identity.key_id
    assert new_key != genesis and a.node.node_id == node_id
    assert f"current:  {new_key}" in out

    async def both(api: Api) -> bool:
        return sorted(r.name for r in await remote(api, a)) == ["After", "Before"]

    await wait_for(lambda: both(b), timeout=15)
    await wait_for(lambda: both(c), timeout=15)  # relayed: C verified the rotation through B
    document = await (await a.call("GET", "/.well-known/atrium-node")).json()
    for follower in (b, c):
        head = await head_of(follower, node_id)
        assert head.key_id == new_key and head.retired_keys == {genesis: 2}
        stored = await entries_of(follower, node_id)
        assert [e.kind for e in stored] == ["model.published", ROTATION_KIND, "model.published"]
        assert signed_by_its_key(stored, node_id, document)
    peers = await b.node.federation.peers.statuses()
    assert peers[0].state == "active" and peers[0].node_id == node_id

    # B restarts and carries on with the key it learnt; a new follower checks the whole log, rotation
    # included, against A's checkpoint (signed by the new key).
    await b.client.close()
    await maker.published(safetensors_bytes(seed=3), name="While B Was Away")
    b2 = await nodes.start("b")
    await wait_for(lambda: _has(b2, a, "While B Was Away"), timeout=15)
    assert (await head_of(b2, node_id)).key_id == new_key
    d = await nodes.start("d")
    await d.node.federation.peers.follow(url(a))
    await wait_for(lambda: _has(d, a, "While B Was Away"), timeout=15)
    assert (await head_of(d, node_id)).key_id == new_key
    assert (await d.node.federation.peers.statuses())[0].state == "active"


async def _has(api: Api, origin: Api, name: str) -> bool:
    return name in [r.name for r in await remote(api, origin)]


# -- refused rotations and retired keys -------------------------------------------------------------


class RotatingPeer(FakePeer):
    """A fake origin that can rotate its key, and then misuse the retired one."""

    def __init__(self) -> None:
        super().__init__()
        self.genesis = self.identity

    def entry(self, kind: str, body: dict[str, Any], key: NodeIdentity) -> SignedEntry:
        seq = len(self.entries) + 1
        prev = hashlib.sha256(self.entries[-1].data).hexdigest() if self.entries else "0" * 64
        data = canonical({"body": body, "kind": kind, "node": self.genesis.node_id, "prev": prev, "seq": seq,
                          "ts": "2026-11-23T00:00:00Z"})
        return SignedEntry(data, key.sign(data))

    def rotate(self, proof_key: Ed25519PrivateKey | None = None) -> NodeIdentity:
        new_key = Ed25519PrivateKey.generate()
        seq = len(self.entries) + 1
        body = rotation_body(self.genesis.node_id, self.identity.key_id, proof_key or new_key, seq)
        body["newKey"] = node_id_for(new_key.public_key())
        rotation = self.entry(ROTATION_KIND, body, self.identity)
        self.entries.append(rotation)
        old = self.identity
        self.identity = NodeIdentity(new_key, self.genesis.node_id, [*old.rotations, Rotation(rotation.data, rotation.sig)])
        return old

    def model(self, name: str, key: NodeIdentity | None = None) -> SignedEntry:
        model = {"id": len(self.entries) + 1, "name": name, "type": "LORA", "status": "Published", "versions": [],
                 "tags": []}
        return self.entry("model.published", {"model": model, "nodeName": "fake"}, key or self.identity)


async def _halted(api: Api) -> Any:
    statuses = await api.node.federation.peers.statuses()
    return statuses[0] if statuses and statuses[0].state == "halted" else None


async def test_an_entry_signed_by_the_retired_key_after_a_rotation_is_refused_as_forged(
        nodes: Nodes, aiohttp_server: Any) -> None:
    fake = RotatingPeer()
    fake.entries.append(fake.model("First"))
    old = fake.rotate()
    fake.entries.append(fake.model("Second"))
    server = await aiohttp_server(fake.app())
    b = await nodes.start("b")
    await b.node.federation.peers.follow(str(server.make_url("")).rstrip("/"))
    await wait_for(lambda: _named(b, fake, "Second"), timeout=10)
    assert (await head_of(b, fake.genesis.node_id)).key_id == fake.identity.key_id
    # Whoever holds the retired key (and not the new one: no checkpoint of theirs covers it) signs
    # entry 4 with it: refused, the peer halted, the entry kept as evidence.
    fake.signed = list(fake.entries)
    fake.entries.append(fake.model("Sneaky", key=old))
    peer = await wait_for(lambda: _halted(b), timeout=10)
    assert peer.evidence["kind"] == "forged" and "Sneaky" in peer.evidence["entry"]
    assert f"signed by {old.key_id}, a key {fake.genesis.node_id} retired at entry 2" in peer.last_error
    assert "Sneaky" not in [r.name for r in await remote(b, fake.genesis.node_id)]


async def _named(api: Api, fake: RotatingPeer, name: str) -> bool:
    return name in [r.name for r in await remote(api, fake.genesis.node_id)]


def test_a_rotation_without_a_valid_proof_of_possession_is_refused() -> None:
    stranger = Ed25519PrivateKey.generate()
    fake = RotatingPeer()
    fake.entries.append(fake.model("First"))
    fake.rotate(proof_key=stranger)  # the proof is signed by another key than the one it names
    with pytest.raises(LogRejected, match="no valid proof of possession") as refused:
        check_batch(Cursor(fake.genesis.node_id), fake.entries)
    assert refused.value.kind == "forged"
    # A checkpoint does not let it through either: rotations are always checked one by one.
    note = sign_checkpoint(fake.identity, 2, merkle.root([merkle.leaf_hash(e.data) for e in fake.entries]))
    with pytest.raises(LogRejected, match="proof of possession"):
        check_batch(Cursor(fake.genesis.node_id), fake.entries, note)
    with pytest.raises(KeyChainError, match="proof of possession"):
        key_periods(fake.genesis.node_id, [Rotation(fake.entries[1].data, fake.entries[1].sig)])

    # An honest rotation, with a checkpoint past it signed by the retired key: refused.
    honest = RotatingPeer()
    honest.entries.append(honest.model("First"))
    retired = honest.rotate()
    honest.entries.append(honest.model("Second"))
    leaves = [merkle.leaf_hash(e.data) for e in honest.entries]
    with pytest.raises(LogRejected, match=f"no valid signature of {honest.identity.key_id}"):
        check_batch(Cursor(honest.genesis.node_id), honest.entries, sign_checkpoint(retired, 3, merkle.root(leaves)))
    cursor = Cursor(honest.genesis.node_id)
    check_batch(cursor, honest.entries, sign_checkpoint(honest.identity, 3, merkle.root(leaves)))
    assert cursor.seq == 3 and cursor.key == honest.identity.key_id

    # A rotation signed by a key that is not the current one, or naming another key it retires.
    other = RotatingPeer()
    other.entries.append(other.model("First"))
    other.identity = NodeIdentity(Ed25519PrivateKey.generate(), other.genesis.node_id)
    other.rotate()
    with pytest.raises(LogRejected) as refused:
        check_batch(Cursor(other.genesis.node_id), other.entries)
    assert refused.value.kind == "tampered"
    # The honest rotation, then one back to the retired key: refused.
    honest = RotatingPeer()
    honest.entries.append(honest.model("First"))
    first = honest.rotate()
    cursor = Cursor(honest.genesis.node_id)
    check_batch(cursor, honest.entries)
    assert cursor.key == honest.identity.key_id and cursor.retired == {first.key_id: 2}
    seq = len(honest.entries) + 1
    back = {"newKey": first.key_id, "previousKey": honest.identity.key_id,
            "proof": base64.b64encode(first.sign(proof_message(honest.genesis.node_id, first.key_id, seq))).decode()}
    honest.entries.append(honest.entry(ROTATION_KIND, back, honest.identity))
    with pytest.raises(LogRejected, match="retired key"):
        check_batch(cursor, honest.entries[2:])


# -- the rotation on disk ---------------------------------------------------------------------------


def _init(tmp_path: Path, name: str = "k") -> Path:
    data = tmp_path / name
    created = atrium("init", str(data), "--name", name)
    assert created.returncode == 0, created.stderr
    return data


def test_rotation_through_the_cli_keeps_the_node_id_and_lists_the_chain(tmp_path: Path) -> None:
    data = _init(tmp_path)
    node_id = load_identity(data / "node.key").node_id
    first = atrium("keys", "rotate", data=data)
    assert first.returncode == 0, first.stderr
    second = atrium("keys", "rotate", data=data)
    assert second.returncode == 0, second.stderr
    identity = load_identity(data / "node.key")
    assert identity.node_id == node_id and identity.key_id != node_id and len(identity.rotations) == 2
    assert (data / "node.key").stat().st_mode & 0o777 == 0o600
    assert (data / "keys.json").stat().st_mode & 0o777 == 0o600 and not pending_path(data / "node.key").exists()
    listed = atrium("keys", "list", "--json", data=data)
    chain = json.loads(listed.stdout)
    assert chain["nodeId"] == node_id and chain["current"] == identity.key_id
    assert [(k["validFrom"]["seq"], (k["validUntil"] or {}).get("seq")) for k in chain["keys"]] == \
        [(1, 1), (2, 2), (3, None)]
    table = atrium("keys", "list", data=data)
    assert f"node id: {node_id}" in table.stdout and "retired" in table.stdout and "current" in table.stdout
    assert atrium("init", str(data)).stdout.strip().endswith(f"node id: {node_id}")  # unchanged

    # Bad input: no data directory, a damaged chain, a key that does not fit the chain.
    missing = atrium("keys", "rotate", data=tmp_path / "nowhere")
    assert missing.returncode == 2 and "config error" in missing.stderr
    (data / "keys.json").write_text("{not json")
    damaged = atrium("keys", "list", data=data)
    assert damaged.returncode == 2 and "keys.json: not a key chain" in damaged.stderr
    write_chain(data / "node.key", node_id, identity.rotations[:1])
    mismatch = atrium("keys", "rotate", data=data)
    assert mismatch.returncode == 2 and "restore the matching key file" in mismatch.stderr


async def _rotate_without_switching(data: Path) -> tuple[str, str]:
    """A rotation killed right after its entry committed: the new key only in node.key.next."""
    config = load_config(data)
    identity = load_identity(config.key_path)
    new_key = Ed25519PrivateKey.generate()
    write_pending(config.key_path, new_key)
    db = Database.from_config(config)
    try:
        async with db.session() as session:
            await FederationLog(db, identity, "k", key_path=config.key_path).rotate(session, new_key)
            await session.commit()
    finally:
        await db.close()
    return identity.key_id, node_id_for(new_key.public_key())


def test_a_rotation_killed_after_its_commit_completes_at_the_next_start(tmp_path: Path) -> None:
    from node.core.plugins import PluginHost
    from node.core.runtime import open_node
    from tests.conftest import make_config

    data = _init(tmp_path)
    genesis_pem = (data / "node.key").read_bytes()
    first_id = load_identity(data / "node.key").node_id
    old, new = asyncio.run(_rotate_without_switching(data))
    assert load_identity(data / "node.key").key_id == old  # the file still holds the old key

    async def start() -> str:
        config = make_config(data, node={"name": "k"})
        async with open_node(config, plugins=PluginHost([], available={})) as node:
            await asyncio.sleep(0)  # let its background start-up work begin before it is closed
            return node.identity.key_id

    assert asyncio.run(start()) == new
    assert load_identity(data / "node.key").key_id == new and not pending_path(data / "node.key").exists()

    # Killed later, after the chain was written but before the key file moved: reading the key finishes it.
    old, new = asyncio.run(_rotate_without_switching(data))
    identity = load_identity(data / "node.key")
    assert identity.key_id == old

    async def chain() -> list[Rotation]:
        from node.core.keychain import logged_rotations

        db = Database.from_config(load_config(data))
        try:
            async with db.read_session() as session:
                return await logged_rotations(session, identity.node_id)
        finally:
            await db.close()

    write_chain(data / "node.key", identity.node_id, asyncio.run(chain()))
    assert load_identity(data / "node.key").key_id == new

    # A new key whose rotation never committed signs nothing: the node keeps its key and says so.
    write_pending(data / "node.key", Ed25519PrivateKey.generate())
    listed = atrium("keys", "list", data=data)
    assert listed.returncode == 0 and "no committed rotation names" in listed.stdout
    assert load_identity(data / "node.key").key_id == new

    # keys.json lost: the node id is found again in the log, whose head names the key in node.key.
    (data / "keys.json").unlink()
    pending_path(data / "node.key").unlink()
    recovered = atrium("keys", "list", data=data)
    assert recovered.returncode == 0 and f"node id: {first_id}" in recovered.stdout, recovered.stderr
    assert load_identity(data / "node.key").node_id == first_id

    # The key files restored from an old backup: the log names a key no file holds, refused.
    (data / "keys.json").unlink()
    (data / "node.key").write_bytes(genesis_pem)
    lost = atrium("keys", "list", data=data)
    assert lost.returncode == 2 and "neither" in lost.stderr and "restore it from a backup" in lost.stderr


def test_loading_a_chain_that_does_not_lead_to_the_key_is_a_config_error(tmp_path: Path) -> None:
    data = _init(tmp_path)
    identity = load_identity(data / "node.key")
    stranger = NodeIdentity(Ed25519PrivateKey.generate())
    entry = canonical({"body": {"newKey": stranger.key_id, "previousKey": identity.key_id, "proof": "AAAA"},
                       "kind": ROTATION_KIND, "node": identity.node_id, "prev": "0" * 64, "seq": 1, "ts": "x"})
    write_chain(data / "node.key", identity.node_id, [Rotation(entry, identity.sign(entry))])
    with pytest.raises(ConfigError, match="proof of possession"):
        load_identity(data / "node.key")


# -- manifests and pulls across a rotation ----------------------------------------------------------


async def test_manifests_signed_before_and_after_a_rotation_verify_offline(nodes: Nodes, tmp_path: Path) -> None:
    a = await nodes.start("a")
    maker = Creator(a, await a.user("maker", Role.CREATOR))
    data = safetensors_bytes(seed=7)
    _model, version, _file = await maker.published(data, name="Signed Twice")
    path = f"/api/node/v1/versions/{version['id']}/manifest"
    before = await (await a.call("GET", path)).read()
    node_id, genesis = a.node.node_id, a.node.identity.key_id
    await rotate(nodes.tmp_path / "a")
    after = await (await a.call("GET", path)).read()  # A adopts the new key and re-signs the manifest
    new_key = a.node.identity.key_id
    document = await (await a.call("GET", "/.well-known/atrium-node")).json()
    assert json.loads(after)["signatures"][0]["keyid"] == new_key != genesis
    signed = open_manifest(after, trusted_keys=[node_id])
    assert signed.node_id == node_id and signed.key_id == new_key and signed.keys[-1].from_seq == 3
    assert [k["id"] for k in document["keys"]] == [genesis, new_key]

    folder = tmp_path / "dl"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(data)
    for name, envelope in (("before", before), ("after", after)):
        (tmp_path / f"{name}.json").write_bytes(envelope)
        checked = await asyncio.to_thread(atrium, "verify", str(folder), "--manifest", str(tmp_path / f"{name}.json"),
                                          "--key", node_id)
        assert checked.returncode == 0, checked.stderr
        assert f"signed by {node_id}" in checked.stdout
    assert f"with its key {new_key}" in checked.stdout

    # A chain that does not lead to the signing key is refused: here the rotation entry is dropped.
    statement = json.loads(base64.b64decode(json.loads(after)["payload"]))
    statement["predicate"]["node"]["keyChain"] = []
    from node.core.manifests import ManifestError, sign_envelope

    unchained = sign_envelope(a.node.identity, json.dumps(statement).encode())
    with pytest.raises(ManifestError, match="origin"):
        open_manifest(unchained, trusted_keys=[node_id])


async def test_a_pull_refuses_a_manifest_signed_by_a_retired_key(nodes: Nodes, aiohttp_server: Any) -> None:
    """The node re-signs its manifests when it rotates; a copy signed by the retired key (an old one, or
    one made by whoever holds that key) is refused by `atrium pull`, which reads the node's keys."""
    from node.client import NodeClient
    from node.core.manifests import ManifestError
    from node.sources import verified_manifest

    a = await nodes.start("a")
    maker = Creator(a, await a.user("maker", Role.CREATOR))
    _model, version, _file = await maker.published(safetensors_bytes(seed=8), name="Old Copy")
    path = f"/api/node/v1/versions/{version['id']}/manifest"
    before = await (await a.call("GET", path)).read()
    await rotate(nodes.tmp_path / "a")

    async def proxy(request: web.Request) -> web.Response:
        if request.path == path:
            return web.Response(body=before, content_type="application/json")
        answer = await a.call("GET", request.path_qs)
        return web.Response(body=await answer.read(), status=answer.status, content_type=answer.content_type)

    app = web.Application()
    app.router.add_get("/{tail:.*}", proxy)
    server = await aiohttp_server(app)
    async with NodeClient(str(server.make_url("")).rstrip("/")) as client:
        with pytest.raises(ManifestError, match="a key .* retired at log entry 2"):
            await verified_manifest(client, version["id"], a.node.node_id)
    async with NodeClient(url(a)) as client:
        manifest = await verified_manifest(client, version["id"], a.node.node_id)
    assert manifest.key_id == a.node.identity.key_id


# -- signed requests after a rotation ----------------------------------------------------------------


def test_a_rotated_node_signs_requests_with_its_current_key() -> None:
    from federation.httpsig import sign_request, verify_request
    from node.core.errors import Unauthenticated

    genesis = NodeIdentity(Ed25519PrivateKey.generate())
    rotated = NodeIdentity(Ed25519PrivateKey.generate(), genesis.node_id)
    headers = sign_request(rotated, "GET", "/federation/v1/log", "after=5", now=1_000_000)
    assert f'keyid="{genesis.node_id}#{rotated.key_id}"' in headers["Signature-Input"]
    with pytest.raises(Unauthenticated, match="does not know as the current key"):
        verify_request("GET", "/federation/v1/log", "after=5", headers, None, now=1_000_010)
    with pytest.raises(Unauthenticated, match="does not know as the current key"):
        verify_request("GET", "/federation/v1/log", "after=5", headers, None, now=1_000_010,
                       current_keys={genesis.node_id: genesis.key_id})
    assert verify_request("GET", "/federation/v1/log", "after=5", headers, None, now=1_000_010,
                          current_keys={genesis.node_id: rotated.key_id}) == genesis.node_id


async def test_a_follower_that_rotated_its_key_may_still_read_an_approved_only_log(nodes: Nodes) -> None:
    a, b = await nodes.start("a", followers="approved"), await nodes.start("b")
    maker = Creator(a, await a.user("maker", Role.CREATOR))
    await maker.published(safetensors_bytes(seed=9), name="Members Only")
    await b.node.federation.peers.follow(url(a))
    admin = await a.user("root", Role.ADMIN)
    (pending,) = await wait_for(lambda: _followers(a), timeout=10)
    assert (await a.call("PUT", f"/api/node/v1/admin/followers/{pending.id}/state", admin,
                         json={"state": "approved"})).status == 200
    await wait_for(lambda: remote(b, a), timeout=15)
    await b.client.close()
    await rotate(nodes.tmp_path / "b")
    b2 = await nodes.start("b")
    assert b2.node.identity.rotated
    await maker.published(safetensors_bytes(seed=10), name="After B Rotated")
    await wait_for(lambda: _has(b2, a, "After B Rotated"), timeout=20)  # B introduced its new key to A
    (row,) = await _followers(a)
    assert row.key_id == b2.node.identity.key_id and row.state == "approved"
    first_rotation = row.key_id

    # Rotated again while it serves: B adopts the key at its next sync round (a long-poll without news
    # ends one) and introduces it to A, then reads with it.
    out, _err = await rotate(nodes.tmp_path / "b")
    newest = out.split("current:  ", 1)[1].split()[0]
    assert newest != first_rotation

    async def introduced() -> bool:
        (row,) = await _followers(a)
        return row.key_id == newest

    await wait_for(introduced, timeout=20)
    assert b2.node.identity.key_id == newest
    await maker.published(safetensors_bytes(seed=11), name="Read With The Newest Key")
    await wait_for(lambda: _has(b2, a, "Read With The Newest Key"), timeout=20)


async def _followers(api: Api) -> list:
    return list(await api.node.federation.followers.list())


# -- peer blocks are log entries --------------------------------------------------------------------


async def test_blocking_and_unblocking_a_follower_are_entries_of_the_log(nodes: Nodes) -> None:
    a, b = await nodes.start("a"), await nodes.start("b")
    await b.node.federation.peers.follow(url(a))
    (follower,) = await wait_for(lambda: _followers(a), timeout=10)
    admin = await a.user("root", Role.ADMIN)
    for state in ("blocked", "blocked", "approved"):
        response = await a.call("PUT", f"/api/node/v1/admin/followers/{follower.id}/state", admin,
                                json={"state": state})
        assert response.status == 200
    stored = await entries_of(a, a.node.node_id)
    assert [e.kind for e in stored] == ["peer.blocked", "peer.unblocked"]  # blocking twice is one change
    assert json.loads(stored[0].data)["body"]["nodeId"] == b.node.node_id


def test_atrium_pull_with_the_node_id_pinned_works_before_and_after_a_rotation(tmp_path: Path) -> None:
    """A served node (`atrium serve`) rotated by `atrium keys rotate` beside it: `atrium pull --key NODE_ID`
    verifies its files against manifests signed by the old key, then by the new one."""
    from tests.swarm_fixtures import make_nodes, model_bytes, pull_process, version_of, wait_until

    (solo,) = make_nodes(tmp_path, ["solo"])
    try:
        data = model_bytes(seed=11, mib=1)
        path = tmp_path / "rotstyle.safetensors"
        path.write_bytes(data)
        air = solo.publish(path, "Rot Style")
        node_id = solo.get("/.well-known/atrium-node")["id"]
        file_id = version_of(solo, air)["files"][0]["id"]
        wait_until(lambda: solo.swarm_of_file(file_id)["seeding"], what="the node seeds the file")
        outputs = []
        for folder in ("before", "after"):
            if folder == "after":
                rotated = atrium("keys", "rotate", data=solo.data)
                assert rotated.returncode == 0, rotated.stderr
            process = pull_process(air, "--node", solo.url, "--to", str(tmp_path / folder), "--key", node_id)
            _out, err = process.communicate(timeout=90)
            assert process.returncode == 0, err
            assert (tmp_path / folder / "rotstyle.safetensors").read_bytes() == data
            outputs.append(err)
        assert f"manifest signed by {node_id}" in outputs[0] and "with its key" not in outputs[0]
        new_key = solo.get("/.well-known/atrium-node")["public_key"]["id"]
        assert new_key != node_id and f"with its key {new_key}" in outputs[1]
    finally:
        solo.stop()
