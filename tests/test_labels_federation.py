"""Content labels across nodes: a moderator's relabel is a signed `label` entry; followers apply the
labels of the nodes they trust, the origin's own level otherwise; takedowns remove models everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from federation.labels import label_rows
from node.core.tables import ContentLabel, Role
from tests.catalog_fixtures import safetensors_bytes
from tests.conftest import Api, wait_for
from tests.test_catalog import Creator
from tests.test_federation_sync import Nodes, remote, url


@pytest.fixture
def nodes(tmp_path: Path, aiohttp_client: Any) -> Nodes:
    return Nodes(tmp_path, aiohttp_client)


async def level_on(api: Api, origin: Api, model_id: int) -> int | None:
    rows = [r for r in await remote(api, origin) if r.remote_id == model_id]
    return rows[0].nsfw_level if rows else None


async def act(api: Api, token: str, target: str, action: str, **body: Any) -> dict[str, Any]:
    response = await api.call("POST", "/api/node/v1/moderation/actions", token,
                              json={"target": target, "action": action, **body})
    answer = await response.json()
    assert response.status == 201, answer
    return answer


async def test_labels_apply_on_followers_that_trust_the_labeler(nodes: Nodes) -> None:
    a, b = await nodes.start("a"), await nodes.start("b")
    trusting = await nodes.start("c", trusted_labelers=[b.node.node_id])
    wary = await nodes.start("d")
    maker = Creator(a, await a.user("maker", Role.CREATOR))
    await b.node.federation.peers.follow(url(a))
    for follower in (trusting, wary):  # both learn of A's model through B, and of B's labels
        await follower.node.federation.peers.follow(url(b))
    model, _v, _f = await maker.published(safetensors_bytes(seed=7), name="Foxes")
    for follower in (b, trusting, wary):
        await wait_for(lambda f=follower: level_on(f, a, model["id"]), timeout=10)

    # B's moderator labels A's model X: B shows X at once, C (trusts B) follows, D (does not) keeps PG.
    b_mod = await b.user("bmod", Role.MODERATOR)
    action = await act(b, b_mod, f"remote:a:{model['id']}", "relabel", level="X", reason="explicit")
    assert action["target"] == f"remote:{a.node.node_id}:{model['id']}" and action["previous"] == {"level": 1}
    assert await level_on(b, a, model["id"]) == 8
    await wait_for(lambda: _is(level_on(trusting, a, model["id"]), 8), timeout=10)
    await wait_for(lambda: _labels_of(wary, b), timeout=10)  # D has the label, and ignores it
    assert await level_on(wary, a, model["id"]) == 1
    found = await (await trusting.call("GET", "/api/node/v1/remote-models", params={"query": "foxes"})).json()
    assert found["items"][0]["nsfwLevel"] == 8

    # The origin's own relabel reaches every follower; a trusted label still outranks it on C.
    a_mod = await a.user("amod", Role.MODERATOR)
    await act(a, a_mod, f"model:{model['id']}", "lock_level", level="R")
    await wait_for(lambda: _is(level_on(wary, a, model["id"]), 4), timeout=10)
    assert await level_on(trusting, a, model["id"]) == 8
    assert await level_on(b, a, model["id"]) == 8  # B's own label applies on B

    # A takedown at the origin removes the model from every follower.
    await act(a, a_mod, f"model:{model['id']}", "takedown")
    for follower in (b, trusting, wary):
        await wait_for(lambda f=follower: _is(level_on(f, a, model["id"]), None), timeout=10)


async def test_a_remote_model_can_only_be_relabelled_here(nodes: Nodes) -> None:
    a, b = await nodes.start("a"), await nodes.start("b")
    maker = Creator(a, await a.user("maker", Role.CREATOR))
    await b.node.federation.peers.follow(url(a))
    model, _v, _f = await maker.published(safetensors_bytes(seed=8), name="Owls")
    await wait_for(lambda: level_on(b, a, model["id"]), timeout=10)
    b_mod = await b.user("bmod", Role.MODERATOR)
    response = await b.call("POST", "/api/node/v1/moderation/actions", b_mod,
                            json={"target": f"remote:a:{model['id']}", "action": "takedown"})
    assert response.status == 400 and "remote targets" in (await response.json())["detail"]
    response = await b.call("POST", "/api/node/v1/moderation/actions", b_mod,
                            json={"target": "remote:nowhere:1", "action": "relabel", "level": "R"})
    assert response.status == 404 and "mirrored index" in (await response.json())["detail"]
    member = await b.user("member")
    response = await b.call("POST", "/api/node/v1/reports", member,
                            json={"target": f"remote:a:{model['id']}", "reason": "NSFW"})
    assert response.status == 400 and "report a followed node's model to that node" in (await response.json())["detail"]


def test_malformed_label_entries_are_ignored() -> None:
    fields = [
        {"kind": "label", "seq": 1, "body": {"target": {"origin": "zA", "model": 3}, "level": 4}},
        {"kind": "label", "seq": 2, "body": {"target": {"origin": "zA", "model": 3}, "level": 16}},  # newer wins
        {"kind": "label", "seq": 3, "body": {"target": {"origin": "zA", "model": "3"}, "level": 4}},
        {"kind": "label", "seq": 4, "body": {"target": {"origin": "zA", "model": 5}, "level": 32}},  # Blocked
        {"kind": "label", "seq": 5, "body": {"target": {"origin": "zA", "model": 6}, "level": True}},
        {"kind": "label", "seq": 6, "body": {"target": {"origin": "zL", "model": 7}, "level": 4}},  # its own
        {"kind": "label", "seq": 7, "body": {"target": "zA:3", "level": 4}},
        {"kind": "model.updated", "seq": 8, "body": {"target": {"origin": "zA", "model": 9}, "level": 4}},
    ]
    assert label_rows("zL", fields) == {("zA", 3): (16, 2)}


async def _is(value: Any, expected: Any) -> bool:
    return (await value) == expected


async def _labels_of(api: Api, labeler: Api) -> list[ContentLabel]:
    async with api.node.db.read_session() as session:
        return list((await session.exec(select(ContentLabel).where(
            ContentLabel.labeler == labeler.node.node_id))).all())


def _signed(identity: Any, seq: int, kind: str, body: dict[str, Any], prev: str) -> Any:
    from federation.log import SignedEntry, canonical

    data = canonical({"body": body, "kind": kind, "node": identity.node_id, "prev": prev, "seq": seq,
                      "ts": "2026-11-23T00:00:00Z"})
    return SignedEntry(data, identity.sign(data))


async def test_label_entries_are_stored_and_applied_the_same_way_on_each_backend(api_on: Api) -> None:
    import hashlib

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from federation.verify import check_batch
    from node.core.identity import NodeIdentity

    origin, labeler = (NodeIdentity(Ed25519PrivateKey.generate()) for _ in range(2))
    syncer = api_on.node.federation.syncer

    async def apply(identity: Any, entries: list[Any]) -> None:
        cursor = await syncer.cursor(identity.node_id, leaves=True)
        await syncer.apply(identity.node_id, entries, check_batch(cursor, entries))

    models = []
    for seq in (1, 2):
        prev = hashlib.sha256(models[-1].data).hexdigest() if models else "0" * 64
        models.append(_signed(origin, seq, "model.published", {"nodeName": "o", "model": {
            "id": seq, "name": f"M{seq}", "type": "LORA", "status": "Published", "nsfwLevel": 1, "versions": []}},
            prev))
    await apply(origin, models)
    target = {"origin": origin.node_id, "model": 1}
    first = _signed(labeler, 1, "label", {"target": target, "level": 8}, "0" * 64)
    await apply(labeler, [first])  # not trusted: kept, not applied
    async with api_on.node.db.read_session() as session:
        stored = await session.get(ContentLabel, (labeler.node_id, origin.node_id, 1))
    assert stored is not None and stored.level == 8 and stored.seq == 1
    assert await level_of(api_on, origin.node_id, 1) == 1

    api_on.node.config.federation.trusted_labelers.append(labeler.node_id)
    second = _signed(labeler, 2, "label", {"target": target, "level": 4}, hashlib.sha256(first.data).hexdigest())
    await apply(labeler, [second])  # trusted now: the newer label replaces the older and applies
    assert await level_of(api_on, origin.node_id, 1) == 4
    assert await level_of(api_on, origin.node_id, 2) == 1
    # The origin's next description of the model keeps the trusted label's level.
    update = _signed(origin, 3, "model.updated", {"nodeName": "o", "model": {
        "id": 1, "name": "M1 again", "type": "LORA", "status": "Published", "nsfwLevel": 2, "versions": []}},
        hashlib.sha256(models[-1].data).hexdigest())
    await apply(origin, [update])
    assert await level_of(api_on, origin.node_id, 1) == 4
    # This node's moderators label the other model themselves.
    mod = await api_on.user("mod", Role.MODERATOR)
    await act(api_on, mod, "remote:o:2", "relabel", level="XXX")
    assert await level_of(api_on, origin.node_id, 2) == 16
    async with api_on.node.db.read_session() as session:
        own = await session.get(ContentLabel, (api_on.node.node_id, origin.node_id, 2))
    assert own is not None and own.level == 16
    log = await (await api_on.call("GET", "/api/node/v1/moderation/log", mod,
                                   params={"target": f"remote:{origin.node_id}:2"})).json()
    assert [(a["action"], a["target"], a["level"]) for a in log["items"]] == \
        [("relabel", f"remote:{origin.node_id}:2", 16)]
    response = await api_on.call("GET", "/api/node/v1/moderation/log", mod, params={"target": "remote:o:1"})
    assert (await response.json())["items"] == []


async def level_of(api: Api, origin: str, model_id: int) -> int | None:
    rows = [r for r in await remote(api, origin) if r.remote_id == model_id]
    return rows[0].nsfw_level if rows else None
