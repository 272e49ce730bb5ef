"""The signed federation log: every public catalog change becomes a signed, chained entry that
followers can check entry by entry or with one signed checkpoint."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation import merkle
from federation.log import SignedEntry, canonical, sign_checkpoint
from federation.verify import Cursor, LogRejected, check_batch, open_checkpoint
from node.core.identity import NodeIdentity
from node.core.tables import Role
from tests.catalog_fixtures import safetensors_bytes
from tests.conftest import Api
from tests.test_catalog import Creator


@pytest.fixture
async def creator(api: Api) -> Creator:
    return Creator(api, await api.user("maker", Role.CREATOR))


async def read_log(api: Api, after: int = 0, **params: str) -> tuple[int, list[SignedEntry], dict]:
    response = await api.call("GET", "/federation/v1/log", params={"after": str(after), **params})
    body = await response.read()
    entries = [SignedEntry.from_line(line) for line in body.splitlines() if line]
    return response.status, entries, dict(response.headers)


async def test_public_catalog_changes_append_signed_chained_entries(api: Api, creator: Creator) -> None:
    draft = await creator.model("Never Shown")
    await creator.json("PATCH", f"/api/node/v1/models/{draft['id']}", json={"name": "Still a draft"})
    model, _version, _file = await creator.published(safetensors_bytes(seed=1), name="Cat Style")
    await creator.json("PATCH", f"/api/node/v1/models/{model['id']}", json={"description": "cats, better"})
    await creator.json("POST", f"/api/node/v1/models/{model['id']}/unpublish")
    moderator = await api.user("mod", Role.MODERATOR)
    await creator.json("POST", f"/api/node/v1/models/{model['id']}/publish")
    response = await api.call("PUT", f"/api/node/v1/models/{model['id']}/mode", moderator, json={"mode": "TakenDown"})
    assert response.status == 200, await response.text()
    await creator.json("DELETE", f"/api/node/v1/models/{model['id']}")

    status, entries, headers = await read_log(api)
    assert status == 200 and headers["Content-Type"].startswith("application/x-ndjson")
    kinds = [e.fields["kind"] for e in entries]
    assert kinds == ["model.published", "model.updated", "model.unpublished", "model.published", "model.takedown",
                     "model.deleted"]  # nothing about the draft that was never public
    assert headers["Atrium-Log-Head"] == "6"
    first = entries[0].fields
    assert first["seq"] == 1 and first["prev"] == "0" * 64 and first["node"] == api.node.node_id
    snapshot = first["body"]["model"]
    assert snapshot["name"] == "Cat Style" and snapshot["creator"] == "maker"
    assert snapshot["versions"][0]["air"].startswith(f"urn:air:sd1:lora:{api.node.name}:{model['id']}@")
    assert snapshot["versions"][0]["files"][0]["name"] == "model.safetensors"
    # Stored bytes are served as signed: canonical JSON, and the chain holds.
    assert entries[0].data == canonical(first)
    cursor = Cursor(api.node.node_id)
    check_batch(cursor, entries)
    assert cursor.seq == 6

    status, page, _ = await read_log(api, after=2, limit="2")
    assert [e.fields["seq"] for e in page] == [3, 4]


async def test_a_refused_change_appends_nothing(api: Api, creator: Creator) -> None:
    model = await creator.model()
    await creator.json("POST", f"/api/node/v1/models/{model['id']}/publish", 409)
    status, entries, headers = await read_log(api)
    assert status == 202 and entries == [] and headers["Atrium-Log-Head"] == "0"


async def test_long_poll_answers_202_or_wakes_on_the_next_entry(api: Api, creator: Creator) -> None:
    started = asyncio.get_running_loop().time()
    status, _, _ = await read_log(api, wait="0.3")
    assert status == 202 and asyncio.get_running_loop().time() - started >= 0.25

    waiting = asyncio.ensure_future(read_log(api, wait="10"))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    started = asyncio.get_running_loop().time()
    await creator.published(safetensors_bytes(seed=2))
    status, entries, _ = await asyncio.wait_for(waiting, 5)
    assert status == 200 and entries[0].fields["kind"] == "model.published"
    assert asyncio.get_running_loop().time() - started < 2


async def test_bad_log_parameters_are_400(api: Api) -> None:
    for query in ("after=-1", "after=x", "limit=0", "limit=5000", "wait=99", "wait=soon"):
        response = await api.call("GET", f"/federation/v1/log?{query}")
        assert response.status == 400, query
        assert (await response.json())["detail"]
    assert (await api.call("GET", "/federation/v1/proof/inclusion?seq=1")).status == 400  # empty log
    assert (await api.call("GET", "/federation/v1/proof/consistency?from=x")).status == 400


async def test_checkpoints_and_proofs_verify(api: Api, creator: Creator) -> None:
    for seed in range(3):
        await creator.published(safetensors_bytes(seed=10 + seed), name=f"Model {seed}")
    _, entries, _ = await read_log(api)
    assert len(entries) == 3
    note = await (await api.call("GET", "/federation/v1/checkpoint")).read()
    size, root = open_checkpoint(note, api.node.node_id)
    leaves = [merkle.leaf_hash(e.data) for e in entries]
    assert size == 3 and root == merkle.root(leaves)
    with pytest.raises(LogRejected, match="forged"):
        open_checkpoint(note, NodeIdentity(Ed25519PrivateKey.generate()).node_id)
    with pytest.raises(LogRejected, match="tampered"):
        open_checkpoint(note.replace(b"\n3\n", b"\n4\n"), api.node.node_id)

    proof = await (await api.call("GET", "/federation/v1/proof/inclusion?seq=2&size=3")).json()
    hashes = [base64.b64decode(h) for h in proof["hashes"]]
    assert merkle.verify_inclusion(leaves[1], 1, 3, hashes, root)
    consistency = await (await api.call("GET", "/federation/v1/proof/consistency?from=1&to=3")).json()
    assert merkle.verify_consistency(1, 3, merkle.root(leaves[:1]), root,
                                     [base64.b64decode(h) for h in consistency["hashes"]])
    assert (await api.call("GET", "/federation/v1/proof/inclusion?seq=4&size=3")).status == 400

    # A follower checks the whole batch with the checkpoint's one signature.
    cursor = Cursor(api.node.node_id)
    check_batch(cursor, entries, checkpoint=note)
    assert cursor.seq == 3


# -- what followers refuse ------------------------------------------------------------------------


def make_log(identity: NodeIdentity, count: int, start_prev: str = "0" * 64, kind: str = "model.published",
             first_seq: int = 1) -> list[SignedEntry]:
    import hashlib

    out, prev = [], start_prev
    for seq in range(first_seq, first_seq + count):
        data = canonical({"body": {"n": seq, "kind": kind}, "kind": kind, "node": identity.node_id, "prev": prev,
                          "seq": seq, "ts": "2026-11-23T00:00:00Z"})
        out.append(SignedEntry(data, identity.sign(data)))
        prev = hashlib.sha256(data).hexdigest()
    return out


def refused(kind: str, cursor: Cursor, entries: list[SignedEntry], checkpoint: bytes | None = None) -> LogRejected:
    before = (cursor.seq, cursor.entry_hash)
    with pytest.raises(LogRejected) as caught:
        check_batch(cursor, entries, checkpoint)
    assert caught.value.kind == kind, caught.value.detail
    assert caught.value.evidence or kind in ("fork",)
    assert (cursor.seq, cursor.entry_hash) == before  # all or nothing
    return caught.value


def test_tampered_replayed_reordered_forged_and_forked_entries_are_refused() -> None:
    origin = NodeIdentity(Ed25519PrivateKey.generate())
    other = NodeIdentity(Ed25519PrivateKey.generate())
    log = make_log(origin, 5)
    cursor = Cursor(origin.node_id)
    check_batch(cursor, log[:3])

    tampered = SignedEntry(log[3].data.replace(b'"n":4', b'"n":9'), log[3].sig)
    refused("tampered", cursor, [tampered])
    refused("replayed", cursor, [log[1]])
    refused("reordered", cursor, [log[4]])
    # A signature by another key over an entry that names the origin.
    refused("tampered", cursor, [SignedEntry(log[3].data, other.sign(log[3].data))])
    # Another node's entry presented as the origin's.
    refused("forged", cursor, make_log(other, 4)[3:])
    # The origin signs a second history at the same sequence number: a fork.
    fork = make_log(origin, 1, start_prev="f" * 64, first_seq=4, kind="model.deleted")
    evidence = refused("fork", cursor, fork)
    assert "model.deleted" in evidence.evidence["entry"]
    refused("tampered", cursor, [SignedEntry(b"not json", origin.sign(b"not json"))])

    check_batch(cursor, log[3:])
    assert cursor.seq == 5


def test_a_checkpoint_vouches_for_a_batch_and_catches_a_changed_entry() -> None:
    origin = NodeIdentity(Ed25519PrivateKey.generate())
    log = make_log(origin, 50)
    root = merkle.root([merkle.leaf_hash(e.data) for e in log])
    note = sign_checkpoint(origin, 50, root)
    cursor = Cursor(origin.node_id)
    check_batch(cursor, log, checkpoint=note)
    assert cursor.seq == 50

    altered = list(log)
    data = json.loads(altered[20].data)
    data["body"]["n"] = 999
    altered[20] = SignedEntry(canonical(data), altered[20].sig)  # chain breaks at 22, but the root first
    with pytest.raises(LogRejected):
        check_batch(Cursor(origin.node_id), altered, checkpoint=note)


async def test_concurrent_changes_keep_one_gapless_chain_on_each_backend(api_on: Api) -> None:
    maker = Creator(api_on, await api_on.user("maker", Role.CREATOR))
    models = [await maker.published(safetensors_bytes(seed=30 + i), name=f"M{i}") for i in range(4)]
    await asyncio.gather(*(maker.json("PATCH", f"/api/node/v1/models/{m['id']}", json={"description": f"d{n}"})
                           for n in range(3) for m, _v, _f in models))
    _, entries, headers = await read_log(api_on)
    assert [e.fields["seq"] for e in entries] == list(range(1, 17)) and headers["Atrium-Log-Head"] == "16"
    check_batch(Cursor(api_on.node.node_id), entries)
