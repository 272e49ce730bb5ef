"""Followed nodes' models in the Civitai-compatible API, AIR resolution and the search page: a node that
follows another lists, finds by hash and resolves the other's models, with links at their origin."""

from __future__ import annotations

import hashlib
from typing import Any

from node.core.tables import Role
from tests.catalog_fixtures import safetensors_bytes
from tests.conftest import Api, wait_for
from tests.test_catalog import Creator
from tests.test_federation_sync import Nodes, nodes, remote, url  # noqa: F401  (the fixture)


async def publish(maker: Creator, seed: int, name: str, *, type: str = "LORA", base_model: str = "SD 1.5",
                  tags: list[str] | None = None) -> tuple[dict, dict, bytes]:
    data = safetensors_bytes(seed=seed)
    model = await maker.model(name, type=type, tags=tags or [])
    version = await maker.version(model["id"], base_model=base_model)
    await maker.upload(version["id"], data)
    await maker.json("POST", f"/api/node/v1/models/{model['id']}/publish")
    return model, version, data


async def models(api: Api, **params: Any) -> dict:
    response = await api.call("GET", "/api/v1/models", params={k: str(v) for k, v in params.items()})
    body = await response.json()
    assert response.status == 200, body
    return body


async def following(nodes: Nodes, **b_settings: Any) -> tuple[Api, Api, Creator, Creator]:
    a, b = await nodes.start("a"), await nodes.start("b", **b_settings)
    await b.node.federation.peers.follow(url(a))
    return a, b, Creator(a, await a.user("alice", Role.CREATOR)), Creator(b, await b.user("bob", Role.CREATOR))


async def test_followed_models_come_after_local_ones_with_links_at_their_origin(nodes: Nodes) -> None:
    a, b, alice, bob = await following(nodes)
    remote_model, remote_version, data = await publish(alice, 1, "Remote Cats", tags=["cats"])
    await publish(bob, 2, "Local Cats", tags=["cats"])
    await wait_for(lambda: remote(b, a), timeout=10)

    assert [m["name"] for m in (await models(b))["items"]] == ["Local Cats"]  # off by default
    listed = (await models(b, followed="true"))["items"]
    assert [m["name"] for m in listed] == ["Local Cats", "Remote Cats"]
    item = listed[1]
    assert item["remote"] is True and item["origin"] == {"id": a.node.node_id, "name": "a", "url": url(a)}
    assert "stats" not in item  # the origin's counts are not in its signed log
    (version,) = item["modelVersions"]
    assert version["air"] == f"urn:air:sd1:lora:a:{remote_model['id']}@{remote_version['id']}"
    assert version["downloadUrl"] == f"{url(a)}/api/download/models/{remote_version['id']}"
    assert version["manifestUrl"] == f"{url(a)}/api/node/v1/versions/{remote_version['id']}/manifest"
    assert version["files"][0]["hashes"]["SHA256"] == hashlib.sha256(data).hexdigest().upper()
    # The download link works: it is the origin's own.
    async with b.client.session.get(version["downloadUrl"]) as response:
        assert response.status == 200 and await response.read() == data


async def test_filters_apply_to_followed_models_and_cursors_walk_through_both(nodes: Nodes) -> None:
    a, b, alice, bob = await following(nodes)
    await publish(alice, 1, "Remote Dogs", tags=["dogs"], base_model="SDXL 1.0")
    await publish(alice, 2, "Remote Cats", tags=["cats"])
    await publish(alice, 3, "Remote Checkpoint", type="Checkpoint")
    for seed in range(4, 6):
        await publish(bob, seed, f"Local {seed}", tags=["cats"])
    await wait_for(lambda: _count(remote(b, a), 3), timeout=10)

    names = lambda body: [m["name"] for m in body["items"]]  # noqa: E731
    assert names(await models(b, followed="true", tag="dogs")) == ["Remote Dogs"]
    assert names(await models(b, followed="true", baseModels="SDXL 1.0")) == ["Remote Dogs"]
    assert names(await models(b, followed="true", types="Checkpoint")) == ["Remote Checkpoint"]
    assert names(await models(b, followed="true", query="cats", sort="Newest")) == ["Local 5", "Local 4", "Remote Cats"]
    assert names(await models(b, followed="true", username="alice", tag="cats")) == ["Remote Cats"]

    # Two per page: local, local; then the followed ones by cursor.
    seen, cursor = [], None
    for _ in range(5):
        body = await models(b, followed="true", limit=2, sort="Newest", **({"cursor": cursor} if cursor else {}))
        seen += names(body)
        cursor = body["metadata"].get("nextCursor")
        if cursor is None:
            break
    assert seen[:2] == ["Local 5", "Local 4"] and sorted(seen[2:]) == ["Remote Cats", "Remote Checkpoint", "Remote Dogs"]
    # Numbered pages count both.
    page2 = await models(b, followed="true", limit=2, page=2, sort="Newest")
    assert page2["metadata"]["totalItems"] == 5 and len(page2["items"]) == 2 and "nextPage" in page2["metadata"]
    page3 = await models(b, followed="true", limit=2, page=3, sort="Newest")
    assert len(page3["items"]) == 1 and "nextPage" not in page3["metadata"]
    # A node setting makes it the default; the flag still turns it off.
    assert len(names(await models(b, followed="false"))) == 2
    bad = await b.call("GET", "/api/v1/models", params={"followed": "true", "cursor": "followed:x"})
    assert bad.status == 400 and "cursor" in (await bad.json())["detail"]


async def test_node_setting_includes_followed_models_by_default(nodes: Nodes) -> None:
    a, b, alice, _bob = await following(nodes, api_includes_followed=True)
    await publish(alice, 1, "Remote Cats")
    await wait_for(lambda: remote(b, a), timeout=10)
    assert [m["name"] for m in (await models(b))["items"]] == ["Remote Cats"]
    assert (await models(b, followed="false"))["items"] == []


async def test_by_hash_and_air_resolve_to_followed_nodes_models(nodes: Nodes) -> None:
    a, b, alice, _bob = await following(nodes)
    model, version, data = await publish(alice, 1, "Remote Cats")
    await wait_for(lambda: remote(b, a), timeout=10)
    sha = hashlib.sha256(data).hexdigest()

    assert (await b.call("GET", f"/api/v1/model-versions/by-hash/{sha}")).status == 404  # not asked for
    found = await (await b.call("GET", f"/api/v1/model-versions/by-hash/{sha}", params={"followed": "true"})).json()
    assert found["id"] == version["id"] and found["origin"]["id"] == a.node.node_id
    assert found["model"]["name"] == "Remote Cats"
    by_short = await (await b.call("POST", "/api/v1/model-versions/by-hash", params={"followed": "true"},
                                   json=[sha[:10].upper(), "0" * 64])).json()
    assert [v["id"] for v in by_short] == [version["id"]]

    air = f"urn:air:sd1:lora:a:{model['id']}@{version['id']}"
    resolved = await (await b.call("GET", f"/api/node/v1/air/{air}")).json()
    assert resolved["id"] == version["id"] and resolved["origin"]["url"] == url(a)
    assert resolved["files"][0]["hashes"]["SHA256"] == sha.upper()
    short = await (await b.call("GET", f"/api/node/v1/air/a:{model['id']}")).json()  # newest version
    assert short["id"] == version["id"]
    missing = await b.call("GET", f"/api/node/v1/air/a:{model['id']}@999999")
    assert missing.status == 404 and "does not follow or whose log does not list it" in (await missing.json())["detail"]
    unknown = await b.call("GET", "/api/node/v1/air/elsewhere:1")
    assert unknown.status == 404


async def test_search_page_shows_followed_models_when_asked(nodes: Nodes) -> None:
    a, b, alice, _bob = await following(nodes)
    await publish(alice, 1, "Remote Cats", tags=["cats"])
    await wait_for(lambda: remote(b, a), timeout=10)
    page = await (await b.call("GET", "/models", params={"query": "cats"})).text()
    assert "From followed nodes" not in page
    page = await (await b.call("GET", "/models", params={"query": "cats", "followed": "on"})).text()
    assert "From followed nodes" in page and "Remote Cats" in page
    # The hidden "off" and the checkbox's "on": the checkbox wins; "off" alone turns it off.
    both = await (await b.call("GET", "/models?query=cats&followed=off&followed=on")).text()
    assert "Remote Cats" in both
    assert (await b.call("GET", "/models", params={"followed": "maybe"})).status == 400


async def _count(rows_coro: Any, n: int) -> bool:
    return len(await rows_coro) >= n


async def test_cli_show_describes_a_followed_nodes_version_with_its_origin(nodes: Nodes, capsys: Any) -> None:
    import asyncio

    from node.cli import main

    a, b, alice, _bob = await following(nodes)
    model, version, _data = await publish(alice, 1, "Remote Cats")
    await wait_for(lambda: remote(b, a), timeout=10)
    air = f"urn:air:sd1:lora:a:{model['id']}@{version['id']}"
    assert await asyncio.to_thread(main, ["show", air, "--node", url(b)]) == 0
    printed = capsys.readouterr().out
    assert "Remote Cats (LORA)" in printed and "origin:" in printed and url(a) in printed
    assert f"{url(a)}/api/download/models/{version['id']}" in printed
