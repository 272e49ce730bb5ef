"""Mirroring followed nodes' files by policy: copies come through the swarm, are byte-identical and
verified against the origin's signed manifest, are seeded under the origin's info-hash, respect the
budget and the minimum lifetime, and disappear when the origin takes the model down or deletes it."""

from __future__ import annotations

import asyncio
import hashlib
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import libtorrent as lt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import select

from federation.mirroring import Candidate, Held, choose, parse_published, rank
from node.core.config import MirrorSection, SwarmSection, config_from_mapping
from node.core.errors import ConfigError
from node.core.identity import NodeIdentity
from node.core.manifests import ManifestFile, build_statement, sign_manifest
from node.core.plugins import PluginHost
from node.core.swarm import add_params, session_settings, stop_session
from node.core.tables import MirroredFile, RemoteFile, RemoteModel, Role
from node.core.torrents import TorrentMeta, make_torrent
from node.app import create_app
from tests.catalog_fixtures import safetensors_bytes
from tests.conftest import TEST_SWARM, Api, free_port, make_config, wait_for, write_node
from tests.test_catalog import Creator
from tests.test_web import PASSWORD, Browser

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


# -- choosing (rows, no database) ------------------------------------------------------------------


def cand(file_id: int, *, size: int = 100, days_old: int = 0, downloads: int = 0, tags: tuple[str, ...] = (),
         origin: str = "z6MkOrigin", origin_name: str = "alpha", sha: str | None = None) -> Candidate:
    return Candidate(origin=origin, file_id=file_id, version_id=file_id * 10, model_id=file_id, name=f"f{file_id}",
                     sha256=sha or f"{file_id:064x}", size=size, origin_name=origin_name, origin_url="http://x",
                     tags=tags, published_at=NOW - timedelta(days=days_old), downloads=downloads)


def held(c: Candidate, *, hours_ago: float | None) -> Held:
    return Held(c.origin, c.file_id, c.sha256, c.size, None if hours_ago is None else NOW - timedelta(hours=hours_ago))


def policy(**values: Any) -> MirrorSection:
    return MirrorSection(**{"strategy": "all", "budget": 0, "min_lifetime_hours": 24, **values})


def test_strategy_all_takes_every_file_that_fits_newest_first() -> None:
    old, new, big = cand(1, days_old=5), cand(2, days_old=1), cand(3, size=1000, days_old=0)
    plan = choose([old, new, big], [], policy(budget=250), NOW)
    # The newest (big) does not fit; the next ones do, newest first.
    assert [c.file_id for c in plan.fetch] == [2, 1] and plan.used == 200
    assert [c.file_id for c in choose([old, new, big], [], policy(budget=0), NOW).fetch] == [3, 2, 1]


def test_recent_prefers_the_most_recently_published_version() -> None:
    files = [cand(1, days_old=30), cand(2, days_old=2), cand(3, days_old=9)]
    assert [c.file_id for c in rank(files, policy(strategy="recent"))] == [2, 3, 1]
    assert [c.file_id for c in choose(files, [], policy(strategy="recent", budget=100), NOW).fetch] == [2]


def test_most_downloaded_ranks_by_the_origins_download_counts_then_by_recency() -> None:
    files = [cand(1, downloads=5), cand(2, downloads=900, days_old=40), cand(3, downloads=5, days_old=3),
             cand(4, downloads=70)]
    assert [c.file_id for c in rank(files, policy(strategy="most-downloaded"))] == [2, 4, 1, 3]


def test_strategy_tags_takes_only_models_carrying_a_listed_tag() -> None:
    files = [cand(1, tags=("Anime", "style")), cand(2, tags=("photo",)), cand(3)]
    assert [c.file_id for c in rank(files, policy(strategy="tags", tags=["anime", "landscape"]))] == [1]


def test_origins_limits_mirroring_to_the_named_nodes_by_id_or_name() -> None:
    files = [cand(1, origin="z6MkA", origin_name="alpha"), cand(2, origin="z6MkB", origin_name="beta")]
    assert [c.file_id for c in rank(files, policy(origins=["beta"]))] == [2]
    assert [c.file_id for c in rank(files, policy(origins=["z6MkA"]))] == [1]


def test_strategy_none_chooses_nothing_and_lets_copies_go_once_their_lifetime_is_over() -> None:
    young, old = cand(1), cand(2)
    plan = choose([young, old], [held(young, hours_ago=1), held(old, hours_ago=48)], policy(strategy="none"), NOW)
    assert plan.fetch == [] and plan.keep == [young.key] and plan.evict == [old.key]


def test_a_young_copy_is_kept_over_a_better_candidate_and_an_old_one_gives_way() -> None:
    mine, better = cand(1, days_old=10), cand(2, days_old=0)
    settings = policy(strategy="recent", budget=100, min_lifetime_hours=24)
    young = choose([mine, better], [held(mine, hours_ago=2)], settings, NOW)
    assert young.keep == [mine.key] and young.fetch == [] and young.evict == []
    old = choose([mine, better], [held(mine, hours_ago=25)], settings, NOW)
    assert old.evict == [mine.key] and [c.file_id for c in old.fetch] == [2]


def test_a_copy_being_fetched_counts_against_the_budget_and_is_not_evicted() -> None:
    fetching, newer = cand(1, days_old=3), cand(2, days_old=0)
    plan = choose([fetching, newer], [held(fetching, hours_ago=None)], policy(strategy="recent", budget=100), NOW)
    assert plan.keep == [fetching.key] and plan.fetch == [] and plan.used == 100


def test_copies_of_files_their_origin_no_longer_lists_are_removed_even_when_young() -> None:
    gone, kept = cand(1), cand(2)
    plan = choose([kept], [held(gone, hours_ago=1), held(kept, hours_ago=1)], policy(), NOW)
    assert plan.evict == [gone.key] and plan.keep == [kept.key]


def test_the_same_bytes_under_two_files_cost_the_budget_once() -> None:
    a, b = cand(1, sha="ab" * 32), cand(2, sha="ab" * 32, days_old=1)
    plan = choose([a, b], [], policy(budget=100), NOW)
    assert {c.file_id for c in plan.fetch} == {1, 2} and plan.used == 100


def test_published_dates_are_read_from_the_logs_iso_text() -> None:
    assert parse_published("2026-11-01T12:00:00Z") == NOW
    assert parse_published("yesterday") is None and parse_published(None) is None
    assert parse_published("2026-11-01T12:00:00") is None  # no zone: not something a node writes


# -- configuration ---------------------------------------------------------------------------------


def test_mirror_settings_are_read_from_a_table_inside_federation(tmp_path: Path) -> None:
    config = config_from_mapping(tmp_path, {"federation": {"poll_seconds": 5, "mirror": {
        "strategy": "tags", "tags": ["anime"], "budget": "1.5G", "min_lifetime_hours": 2,
        "origins": ["alpha"], "interval_seconds": 60, "max_concurrent": 3}}}, env={})
    assert config.federation.poll_seconds == 5
    m = config.mirror
    assert (m.strategy, m.tags, m.budget, m.min_lifetime_hours, m.origins, m.interval_seconds, m.max_concurrent) == \
        ("tags", ["anime"], int(1.5 * 1024**3), 2, ["alpha"], 60, 3)
    assert config_from_mapping(tmp_path, {}, env={}).mirror.strategy == "none"
    for text, size in (("500M", 500 * 1024**2), ("50G", 50 * 1024**3), ("2TiB", 2 * 1024**4), ("4096", 4096),
                       ("10 kB", 10 * 1024)):
        assert config_from_mapping(tmp_path, {"federation": {"mirror": {"budget": text}}}, env={}).mirror.budget == size
    env = {"ATRIUM_FEDERATION_MIRROR_BUDGET": "500M", "ATRIUM_FEDERATION_MIRROR_STRATEGY": "recent",
           "ATRIUM_FEDERATION_POLL_SECONDS": "7"}
    overridden = config_from_mapping(tmp_path, {}, env=env)
    assert overridden.mirror.budget == 500 * 1024**2 and overridden.mirror.strategy == "recent"
    assert overridden.federation.poll_seconds == 7


@pytest.mark.parametrize(("raw", "env", "message"), [
    ({"budget": "lots"}, {}, "federation.mirror.budget: expected a size in bytes such as 500M, 50G or 2T, got 'lots'"),
    ({"budget": "-5G"}, {}, "federation.mirror.budget: expected a size"),
    ({"budget": -1}, {}, "federation.mirror.budget: must be at least 0"),
    ({"budget": 1.5}, {}, "federation.mirror.budget: expected an integer"),
    ({"strategy": "popular"}, {}, "federation.mirror.strategy: must be one of none, all, most-downloaded, recent, tags"),
    ({"strategy": "tags"}, {}, "federation.mirror.tags: strategy \"tags\" needs at least one tag"),
    ({"budgett": 5}, {}, "federation.mirror.budgett: unknown key (known: strategy, tags, budget"),
    ({"interval_seconds": 1}, {}, "federation.mirror.interval_seconds: must be at least 5"),
    ({}, {"ATRIUM_FEDERATION_MIRROR_BUDGET": "a lot"}, "ATRIUM_FEDERATION_MIRROR_BUDGET: expected a size"),
    ({}, {"ATRIUM_FEDERATION_MIRROR_SPEED": "1"}, "ATRIUM_FEDERATION_MIRROR_SPEED: no key federation.mirror.speed"),
])
def test_bad_mirror_settings_are_refused_naming_the_key(tmp_path: Path, raw: dict[str, Any], env: dict[str, str],
                                                        message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_mapping(tmp_path, {"federation": {"mirror": raw}}, env=env)
    assert message in caught.value.detail


# -- real nodes on 127.0.0.1 -----------------------------------------------------------------------


class Nodes:
    """In-process nodes, each with its own data directory, key, database and swarm on 127.0.0.1."""

    def __init__(self, tmp_path: Path, aiohttp_client: Any) -> None:
        self.tmp_path = tmp_path
        self.aiohttp_client = aiohttp_client

    async def start(self, name: str, database_url: str | None = None, **mirror: Any) -> Api:
        data = self.tmp_path / name
        if not (data / "node.toml").exists():
            write_node(data, f'[node]\nname = "{name}"\n')
        port = free_port()
        # A long interval: in these tests the policy runs after syncs and when a test asks.
        federation = {"poll_seconds": 5, "mirror": {"interval_seconds": 3600, "min_lifetime_hours": 0, **mirror}}
        sections: dict[str, Any] = {"node": {"name": name, "public_url": f"http://127.0.0.1:{port}"},
                                    "federation": federation}
        if database_url:
            sections["database"] = {"url": database_url}
        app = create_app(make_config(data, **sections), migrate=True, plugins=PluginHost([], available={}))
        api = Api(client=await self.aiohttp_client(app, server_kwargs={"port": port}), app=app)

        async def first_run_done() -> bool:  # the policy's run at start is over: what follows is the test's
            return api.node.federation.mirroring.last_run is not None

        await wait_for(first_run_done, timeout=10)
        return api


@pytest.fixture
def nodes(tmp_path: Path, aiohttp_client: Any) -> Nodes:
    return Nodes(tmp_path, aiohttp_client)


def url(api: Api) -> str:
    return str(api.client.make_url("")).rstrip("/")


async def mirrored(api: Api, state: str | None = "stored") -> list[MirroredFile]:
    async with api.node.db.read_session() as session:
        rows = (await session.exec(select(MirroredFile))).all()
    return [r for r in rows if state is None or r.state == state]


async def mirrored_ids(api: Api) -> set[int]:
    return {r.file_id for r in await mirrored(api)}


def blob_of(api: Api, data: bytes) -> Path:
    return api.node.blobs.path_for(hashlib.sha256(data).hexdigest())


async def download_from_peer_only(meta: TorrentMeta, peer: tuple[str, int], folder: Path) -> bytes:
    """A bare libtorrent client that knows only `peer`: no tracker, no web seed, no DHT."""
    holder = [lt.session(session_settings(SwarmSection(**TEST_SWARM), listen="127.0.0.1:0"))]
    try:
        handle = holder[0].add_torrent(add_params(meta.torrent_info(), folder, meta.name, seed=False))
        handle.connect_peer(peer)

        async def done() -> bool:
            return handle.status().is_seeding

        await wait_for(done, timeout=30)
    finally:
        # Closing the session writes out what libtorrent still holds in memory.
        await asyncio.to_thread(stop_session, holder)
    return (folder / meta.name).read_bytes()


async def test_a_followed_nodes_file_is_mirrored_through_the_swarm_verified_and_seeded(
        database_url: str, nodes: Nodes, tmp_path: Path) -> None:
    # database_url first: the database outlives the nodes (fixtures are torn down in reverse order).
    a = await nodes.start("a")
    b = await nodes.start("b", database_url=database_url, strategy="all")
    maker = Creator(a, await a.user("maker", Role.CREATOR))
    data = safetensors_bytes(seed=11)
    _model, _version, file = await maker.published(data, name="Mirrored Cats")
    await b.node.federation.peers.follow(url(a))

    (row,) = await wait_for(lambda: mirrored(b), timeout=30)
    assert blob_of(b, data).read_bytes() == data  # byte-identical
    assert row.sha256 == hashlib.sha256(data).hexdigest() and row.size == len(data) and row.file_id == file["id"]
    # Seeded under the origin's own torrent: one swarm for both nodes.
    origin_torrent = await a.node.distribution.torrent(file["id"])
    assert row.info_hash_v2 == origin_torrent.info_hash_v2
    assert b.node.swarm.stats(row.info_hash_v2)["state"] == "seeding"
    # Over HTTP too, with ranges, once verified; nothing else is served from that route.
    content = f"/api/node/v1/mirrored/{a.node.node_id}/{file['id']}/content"
    response = await b.call("GET", content)
    assert response.status == 200 and await response.read() == data
    ranged = await b.call("GET", content, headers={"Range": "bytes=8-15"})
    assert ranged.status == 206 and await ranged.read() == data[8:16]
    assert (await b.call("GET", f"/api/node/v1/mirrored/{a.node.node_id}/999/content")).status == 404
    assert (await b.call("GET", f"/api/node/v1/mirrored/{a.node.node_id}/{10**17}/content")).status == 404
    assert (await b.call("GET", f"/api/node/v1/mirrored/{'z' * 300}/1/content")).status == 404
    assert (await b.call("GET", f"/api/node/v1/mirrored/{a.node.node_id}/x/content")).status == 400
    # A third client that knows only B gets the file from B.
    got = await download_from_peer_only(origin_torrent, ("127.0.0.1", b.node.swarm.listen_port), tmp_path / "c")
    assert got == data
    assert b.node.swarm.stats(row.info_hash_v2)["uploadedThisSession"] >= len(data)

    admin = await b.user("root", Role.ADMIN)
    status = await (await b.call("GET", "/api/node/v1/admin/mirror", admin)).json()
    assert status["strategy"] == "all" and status["used"] == len(data)
    (entry,) = status["files"]
    assert entry["state"] == "stored" and entry["seeding"] and entry["originName"] == "a"
    assert entry["lastError"] is None and entry["mirroredAt"] and entry["contentPath"].endswith("/content")
    member = await b.user("member")
    assert (await b.call("GET", "/api/node/v1/admin/mirror", member)).status == 403
    assert (await b.call("GET", "/api/node/v1/admin/mirror")).status == 401
    assert (await b.call("POST", "/api/node/v1/admin/mirror/run", member)).status == 403
    bad = await b.call("POST", "/api/node/v1/admin/mirror/run", admin, json={"wait": "soon"})
    assert bad.status == 400 and "wait" in (await bad.json())["detail"]
    run = await (await b.call("POST", "/api/node/v1/admin/mirror/run", admin, json={"wait": True})).json()
    assert run["kept"] == 1 and run["fetching"] == [] and run["evicted"] == []
    # The admin page shows it too, and evaluates the policy on request.
    await b.node.accounts.create_user("boss", role=Role.ADMIN, password=PASSWORD)
    boss = Browser(b)
    await boss.sign_in("boss")
    page = await boss.get("/admin")
    assert "model.safetensors" in page and "stored (seeding)" in page
    await boss.post("/admin/mirror/run", {})

    # A takedown at the origin removes the copy: the record, the seeding and the bytes.
    moderator = await a.user("mod", Role.MODERATOR)
    response = await a.call("PUT", f"/api/node/v1/models/{_model['id']}/mode", moderator, json={"mode": "TakenDown"})
    assert response.status == 200

    async def removed() -> bool:
        return not await mirrored(b, None) and not blob_of(b, data).exists()

    await wait_for(removed, timeout=15)
    assert b.node.swarm.find(row.info_hash_v2) is None
    assert not (b.node.swarm.resume_dir / f"{row.info_hash_v2}.resume").exists()
    assert (await b.call("GET", content)).status == 404


async def test_deleted_and_taken_down_models_disappear_from_every_mirror(nodes: Nodes) -> None:
    a = await nodes.start("a")
    b = await nodes.start("b", strategy="all")
    c = await nodes.start("c", strategy="all")  # follows only B: learns of A's files from B's relay
    maker = Creator(a, await a.user("maker", Role.CREATOR))
    first, second = safetensors_bytes(seed=21), safetensors_bytes(seed=22)
    m1, _v1, f1 = await maker.published(first, name="Deleted Later")
    m2, _v2, f2 = await maker.published(second, name="Taken Down Later")
    await b.node.federation.peers.follow(url(a))
    await c.node.federation.peers.follow(url(b))
    for node in (b, c):
        async def both(node: Api = node) -> bool:
            return await mirrored_ids(node) == {f1["id"], f2["id"]}

        await wait_for(both, timeout=40)
        assert blob_of(node, first).read_bytes() == first and blob_of(node, second).read_bytes() == second

    assert (await maker.api.call("DELETE", f"/api/node/v1/models/{m1['id']}", maker.token)).status == 200
    moderator = await a.user("mod", Role.MODERATOR)
    assert (await a.call("PUT", f"/api/node/v1/models/{m2['id']}/mode", moderator,
                         json={"mode": "TakenDown"})).status == 200
    for node in (b, c):
        async def gone(node: Api = node) -> bool:
            return not await mirrored(node, None) and not blob_of(node, first).exists() \
                and not blob_of(node, second).exists()

        await wait_for(gone, timeout=20)


async def test_the_budget_holds_the_newest_file_a_young_copy_outlives_a_better_candidate_and_blocking_removes_it(
        database_url: str, nodes: Nodes) -> None:
    older, newer = safetensors_bytes(seed=31), safetensors_bytes(seed=32)
    assert len(older) == len(newer)
    a = await nodes.start("a")
    b = await nodes.start("b", database_url=database_url, strategy="recent", budget=len(older) + 100,
                          min_lifetime_hours=1)
    maker = Creator(a, await a.user("maker", Role.CREATOR))
    _m1, _v1, f1 = await maker.published(older, name="Older")
    await b.node.federation.peers.follow(url(a))
    await wait_for(lambda: mirrored(b), timeout=30)

    _m2, _v2, f2 = await maker.published(newer, name="Newer")
    await wait_for(lambda: _listed(b, f2["id"]), timeout=10)
    mirroring = b.node.federation.mirroring
    summary = await mirroring.evaluate(wait=True)
    # The newer file would win, but the copy held is younger than min_lifetime_hours and fills the budget.
    assert summary["kept"] == 1 and summary["fetching"] == [] and summary["evicted"] == []
    assert await mirrored_ids(b) == {f1["id"]} and not blob_of(b, newer).exists()

    async with b.node.db.session() as session:  # an hour and a bit later
        row = await session.get(MirroredFile, (a.node.node_id, f1["id"]))
        row.mirrored_at = row.mirrored_at - timedelta(hours=1, minutes=1)
        session.add(row)
        await session.commit()
    summary = await mirroring.evaluate(wait=True)
    assert [e["fileId"] for e in summary["evicted"]] == [f1["id"]]
    assert await mirrored_ids(b) == {f2["id"]}
    assert blob_of(b, newer).read_bytes() == newer and not blob_of(b, older).exists()
    status = await mirroring.status()
    assert status["used"] == len(newer) <= status["budget"]

    # An origin put on federation.blocked loses its copies at the next evaluation, young or not.
    b.node.config.federation.blocked.append(a.node.node_id)
    summary = await mirroring.evaluate(wait=True)
    assert [e["fileId"] for e in summary["evicted"]] == [f2["id"]] and summary["candidates"] == 0
    assert not await mirrored(b, None) and not blob_of(b, newer).exists()


async def _listed(api: Api, file_id: int) -> bool:
    async with api.node.db.read_session() as session:
        return (await session.exec(select(RemoteFile).where(RemoteFile.file_id == file_id))).first() is not None


async def test_a_mirrored_blob_a_local_file_also_uses_is_kept_when_the_copy_goes(nodes: Nodes) -> None:
    data = safetensors_bytes(seed=41)
    a = await nodes.start("a")
    b = await nodes.start("b", strategy="all")
    maker_a = Creator(a, await a.user("maker", Role.CREATOR))
    maker_b = Creator(b, await b.user("maker", Role.CREATOR))
    model, _v, _f = await maker_a.published(data, name="Shared Bytes")
    await b.node.federation.peers.follow(url(a))
    (row,) = await wait_for(lambda: mirrored(b), timeout=30)
    await maker_b.published(data, name="The Same File Here")  # B's own file, same bytes
    assert (await maker_a.api.call("DELETE", f"/api/node/v1/models/{model['id']}", maker_a.token)).status == 200

    async def record_gone() -> bool:
        return not await mirrored(b, None)

    await wait_for(record_gone, timeout=15)
    assert blob_of(b, data).read_bytes() == data  # B's own file still needs it


# -- a lying origin --------------------------------------------------------------------------------


class FakeOrigin:
    """An HTTP server posing as a node: its manifests are signed with its own key, but the bytes it serves
    are not the ones they name."""

    def __init__(self, tmp_path: Path) -> None:
        self.identity = NodeIdentity(Ed25519PrivateKey.generate())
        self.tmp_path = tmp_path
        self.manifests: dict[int, bytes] = {}
        self.torrents: dict[int, TorrentMeta] = {}
        self.contents: dict[int, Path] = {}
        self.requests: list[str] = []
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application()

        async def document(request: web.Request) -> web.Response:
            return web.json_response({"id": self.identity.node_id, "name": "fake"})

        async def manifest(request: web.Request) -> web.Response:
            self.requests.append(request.path)
            return web.Response(body=self.manifests[int(request.match_info["id"])], content_type="application/json")

        async def torrent(request: web.Request) -> web.Response:
            self.requests.append(request.path)
            file_id = int(request.match_info["id"])
            seed = f"{self.url}/api/node/v1/files/{file_id}/content"
            return web.Response(body=self.torrents[file_id].with_web_seeds([seed]))

        async def content(request: web.Request) -> web.FileResponse:
            self.requests.append(request.path)
            return web.FileResponse(self.contents[int(request.match_info["id"])])

        app.router.add_get("/.well-known/atrium-node", document)
        app.router.add_get("/api/node/v1/versions/{id}/manifest", manifest)
        app.router.add_get("/api/node/v1/files/{id}/torrent", torrent)
        app.router.add_get("/api/node/v1/files/{id}/content", content)
        return app

    def offer(self, version_id: int, file_id: int, name: str, signed: bytes, served: bytes) -> None:
        """Sign a manifest naming `signed` (without torrent identifiers) and serve `served` as its bytes."""
        entry = ManifestFile(name=name, size=len(signed), sha256=hashlib.sha256(signed).hexdigest())
        statement = build_statement(node_id=self.identity.node_id, node_name="fake",
                                    air=f"urn:air:sd1:lora:fake:{file_id}@{version_id}",
                                    model={"id": file_id, "name": name, "type": "LORA"},
                                    version={"id": version_id, "name": "v1"}, files=[entry])
        self.manifests[version_id] = sign_manifest(self.identity, statement)
        path = self.tmp_path / f"served-{file_id}" / name
        path.parent.mkdir(parents=True)
        path.write_bytes(served)
        self.contents[file_id] = path
        self.torrents[file_id] = make_torrent(path, name, self.tmp_path / "work")


async def index_remote(api: Api, origin: FakeOrigin, model_id: int, version_id: int, file_id: int, name: str,
                       data: bytes) -> None:
    """What a sync of the origin's signed log would have put in the mirrored index."""
    sha = hashlib.sha256(data).hexdigest()
    async with api.node.db.session() as session:
        session.add(RemoteModel(origin=origin.identity.node_id, remote_id=model_id, origin_name="fake",
                                origin_url=origin.url, name=name, type="LORA", tags=[], seq=1,
                                versions=[{"id": version_id, "publishedAt": "2026-11-01T00:00:00Z",
                                           "files": [{"id": file_id, "name": name, "size": len(data), "sha256": sha}]}]))
        session.add(RemoteFile(origin=origin.identity.node_id, file_id=file_id, model_id=model_id,
                               version_id=version_id, name=name, size=len(data), sha256=sha))
        await session.commit()


async def test_a_file_that_does_not_match_the_signed_manifest_is_refused_and_not_kept(
        database_url: str, nodes: Nodes, aiohttp_server: Any, tmp_path: Path) -> None:
    genuine = safetensors_bytes(seed=51)
    tampered = bytearray(genuine)
    tampered[-10] ^= 0xFF  # same size, other bytes
    fake = FakeOrigin(tmp_path / "fake")
    server = await aiohttp_server(fake.app())
    fake.url = str(server.make_url("")).rstrip("/")
    fake.offer(7, 70, "cats.safetensors", signed=genuine, served=bytes(tampered))
    # Another file whose manifest names other bytes than the origin's log: refused before any download.
    fake.offer(8, 80, "dogs.safetensors", signed=safetensors_bytes(seed=52), served=safetensors_bytes(seed=52))
    b = await nodes.start("b", database_url=database_url, strategy="all")
    await index_remote(b, fake, 1, 7, 70, "cats.safetensors", genuine)
    await index_remote(b, fake, 2, 8, 80, "dogs.safetensors", safetensors_bytes(seed=53))

    summary = await b.node.federation.mirroring.evaluate(wait=True)
    assert {f["fileId"] for f in summary["fetching"]} == {70, 80}
    rows = {r.file_id: r for r in await mirrored(b, "failed")}
    assert "does not match the manifest's" in rows[70].last_error  # downloaded, checked, refused
    assert "does not list the SHA-256" in rows[80].last_error
    assert "/api/node/v1/files/80/content" not in fake.requests and "/api/node/v1/files/70/content" in fake.requests
    assert not b.node.blobs.exists(hashlib.sha256(genuine).hexdigest())
    assert not b.node.blobs.exists(hashlib.sha256(bytes(tampered)).hexdigest())
    assert not [p for p in b.node.blobs.tmp_dir.iterdir() if p.is_dir()]  # no download directory left behind
    assert b.node.swarm.find(fake.torrents[70].info_hash_v2) is None
    assert all(r.retry_at > datetime.now(UTC) and r.failures == 1 for r in rows.values())
    # Backing off: the next evaluation does not download them again.
    again = await b.node.federation.mirroring.evaluate(wait=True)
    assert again["fetching"] == []


async def test_most_downloaded_reads_the_origins_public_counts_page_by_page(
        nodes: Nodes, aiohttp_server: Any) -> None:
    pages = {None: {"items": [{"modelVersions": [{"id": 1, "stats": {"downloadCount": 50}}]}],
                    "metadata": {"nextCursor": "2"}},
             "2": {"items": [{"modelVersions": [{"id": 2, "stats": {"downloadCount": 9}},
                                                {"id": "x", "stats": {}}]}], "metadata": {}}}
    asked: list[dict[str, str]] = []

    async def models(request: web.Request) -> web.Response:
        asked.append(dict(request.query))
        return web.json_response(pages[request.query.get("cursor")])

    app = web.Application()
    app.router.add_get("/api/v1/models", models)
    server = await aiohttp_server(app)
    b = await nodes.start("b", strategy="most-downloaded")
    counts = await b.node.federation.mirroring._download_counts("z6MkX", str(server.make_url("")).rstrip("/"))
    assert counts == {1: 50, 2: 9}
    assert asked[0]["sort"] == "Most Downloaded" and asked[0]["followed"] == "false" and asked[1]["cursor"] == "2"
    # An origin that does not answer ranks by recency: no counts, no failure.
    assert await b.node.federation.mirroring._download_counts("z6MkY", f"http://127.0.0.1:{free_port()}") == {}


# -- the command line ------------------------------------------------------------------------------


async def test_atrium_mirror_shows_the_status_and_runs_the_policy(nodes: Nodes) -> None:
    b = await nodes.start("b", strategy="recent", budget="2G")
    admin = await b.user("root", Role.ADMIN)

    async def atrium(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "node", "mirror", "--node", url(b), *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        return proc.returncode, out.decode(), err.decode()  # type: ignore[return-value]

    code, out, _err = await atrium("--token", admin)
    assert code == 0 and "strategy recent; 0 B used of 2.0 GiB" in out and "nothing mirrored" in out
    code, out, _err = await atrium("--token", admin, "--run", "--wait")
    assert code == 0 and out.startswith("evaluated: 0 candidate files, 0 kept, 0 fetching, 0 removed")
    code, out, _err = await atrium("--token", admin, "--json")
    assert code == 0 and '"budget": 2147483648' in out
    code, _out, err = await atrium("--wait")
    assert code == 2 and "--wait goes with --run" in err
    code, _out, err = await atrium()  # no token: the node refuses
    assert code == 1 and err.startswith("atrium: ") and "token" in err.lower()
