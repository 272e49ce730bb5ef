"""The swarm: nodes seed what they store, fetch what they lack through real libtorrent sessions on
127.0.0.1, and check it against the signed manifest before it enters the blob store."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import libtorrent as lt
import pytest

from node.core.blobs import BlobStore
from node.core.config import SwarmSection
from node.core.manifests import ManifestError, ManifestFile
from node.core.swarm import Swarm, SwarmError, Tracker, add_params, session_settings
from node.core.tables import Role
from node.core.torrents import TorrentMeta, make_torrent
from tests.catalog_fixtures import safetensors_bytes
from node.app import create_app
from node.core.plugins import PluginHost
from tests.conftest import TEST_SWARM, Api, free_port, make_config, require_debian_tool, wait_for, write_node
from tests.swarm_fixtures import MIB, Cluster, log_of, model_bytes, pull_process, wait_until
from tests.test_catalog import Creator

TEST_SECTION = SwarmSection(**TEST_SWARM)


def entry_for(data: bytes, meta: TorrentMeta, name: str = "model.safetensors") -> ManifestFile:
    return ManifestFile(name=name, size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                        info_hash_v1=meta.info_hash_v1, info_hash_v2=meta.info_hash_v2, file_root=meta.file_root,
                        piece_size=meta.piece_size)


def stored_blob(tmp_path: Path, data: bytes, name: str = "model.safetensors") -> tuple[BlobStore, str, TorrentMeta]:
    blobs = BlobStore(tmp_path / "blobs")
    blobs.prepare()
    sha256 = hashlib.sha256(data).hexdigest()
    temp = blobs.new_temp_path()
    temp.write_bytes(data)
    blobs.commit(temp, sha256)
    return blobs, sha256, make_torrent(blobs.path_for(sha256), name, tmp_path / "work")


class Seeder:
    """A bare libtorrent session seeding one file from a folder (a peer that is not a node)."""

    def __init__(self, folder: Path, meta: TorrentMeta, *, upload_limit: int = 0) -> None:
        settings = session_settings(SwarmSection(**{**TEST_SWARM, "upload_rate_limit": upload_limit}),
                                    listen="127.0.0.1:0")
        self.session = lt.session(settings)
        self.handle = self.session.add_torrent(add_params(meta.torrent_info(), folder, meta.name, seed=False))

    @property
    def endpoint(self) -> tuple[str, int]:
        return "127.0.0.1", self.session.listen_port()

    async def ready(self) -> None:
        await wait_for(lambda: _async(self.handle.status().is_seeding), timeout=20)

    def close(self) -> None:
        self.session.pause()
        del self.session


async def _async(value: object) -> object:
    return value


# -- the node's own session (in process) -------------------------------------------------------------


@pytest.fixture
async def creator(api: Api) -> Creator:
    return Creator(api, await api.user("maker", Role.CREATOR))


async def test_a_published_file_is_seeded_at_once_and_its_swarm_figures_are_served(api: Api, creator: Creator) -> None:
    _model, _version, file = await creator.published(safetensors_bytes(seed=21))
    response = await api.call("GET", f"/api/node/v1/files/{file['id']}/swarm")
    body = await response.json()
    assert response.status == 200, body
    assert body["seeding"] and body["state"] == "seeding" and body["progress"] == 1.0
    assert body["peers"] == 0 and body["uploaded"] == 0 and body["uploadRate"] == 0
    assert body["peerAddress"] == f"127.0.0.1:{api.node.swarm.listen_port}"
    by_hash = await (await api.call("GET", f"/api/node/v1/swarm/torrents/{body['infoHashV2']}")).json()
    assert by_hash["fileId"] == file["id"] and by_hash["sha256"] == file["hashes"]["SHA256"].lower()
    # The served .torrent names this node's tracker; the magnet link too.
    torrent = lt.bdecode(await (await api.call("GET", f"/api/node/v1/files/{file['id']}/torrent")).read())
    assert torrent[b"announce"].decode().endswith("/announce")
    assert (await api.call("GET", "/api/node/v1/files/999999/swarm")).status == 404
    assert (await api.call("GET", "/api/node/v1/swarm/torrents/nothex")).status == 400
    assert (await api.call("GET", f"/api/node/v1/swarm/torrents/{'0' * 64}")).status == 404


async def test_the_tracker_answers_announces_for_shared_files_only(api: Api, creator: Creator) -> None:
    _model, _version, file = await creator.published(safetensors_bytes(seed=22))
    info = await (await api.call("GET", f"/api/node/v1/files/{file['id']}/magnet")).json()
    raw = bytes.fromhex(info["infoHashV1"])
    from urllib.parse import quote_from_bytes

    query = f"info_hash={quote_from_bytes(raw)}&peer_id=-XX0001-abcdefghijkl&port=7001&left=0&compact=1"
    answer = lt.bdecode(await (await api.call("GET", f"/announce?{query}")).read())
    # The node itself is the first peer; the announcing peer is not handed its own address.
    assert answer[b"peers"][:6] == bytes([127, 0, 0, 1]) + api.node.swarm.listen_port.to_bytes(2, "big")
    second = lt.bdecode(await (await api.call("GET", f"/announce?{query.replace('7001', '7002')}")).read())
    assert bytes([127, 0, 0, 1]) + (7001).to_bytes(2, "big") in second[b"peers"]
    unknown = await api.call("GET", f"/announce?info_hash={quote_from_bytes(bytes(20))}&port=1&left=0")
    assert unknown.status == 404 and b"failure reason" in await unknown.read()
    assert (await api.call("GET", "/announce?info_hash=abc&port=1")).status == 400


def test_a_peer_that_stops_is_forgotten_by_the_tracker() -> None:
    tracker = Tracker()
    key = bytes(20)
    tracker.announce(key, "10.0.0.1", 1, seed=True, stopped=False)
    assert tracker.announce(key, "10.0.0.2", 2, seed=False, stopped=False) == [("10.0.0.1", 1)]
    tracker.announce(key, "10.0.0.1", 1, seed=True, stopped=True)
    assert tracker.announce(key, "10.0.0.3", 3, seed=False, stopped=False) == [("10.0.0.2", 2)]
    assert tracker.counts([key]) == (0, 2)


async def test_fetching_from_the_swarm_needs_an_admin_and_a_well_formed_request(api: Api) -> None:
    member = await api.user("reader")
    admin = await api.user("boss", Role.ADMIN)
    path = "/api/node/v1/swarm/fetch"
    assert (await api.call("POST", path, json={})).status == 401
    assert (await api.call("POST", path, member, json={})).status == 403
    for body, words in (({}, "node"), ({"node": "ftp://x", "versionId": 1}, "node"),
                        ({"node": "http://127.0.0.1:1", "versionId": "1"}, "versionId"),
                        ({"node": "http://127.0.0.1:1", "versionId": 1, "peers": ["nowhere"]}, "HOST:PORT")):
        response = await api.call("POST", path, admin, json=body)
        answer = await response.json()
        assert response.status == 400 and words in answer["detail"], answer
    unreachable = await api.call("POST", path, admin, json={"node": f"http://127.0.0.1:{free_port()}", "versionId": 1})
    assert unreachable.status == 502 and "cannot reach" in (await unreachable.json())["detail"]


async def test_a_node_with_the_swarm_off_serves_files_over_http_only(aiohttp_client: Any, tmp_path: Path) -> None:
    config = make_config(write_node(tmp_path / "node"), swarm={"enabled": False})
    app = create_app(config, migrate=True, plugins=PluginHost([], available={}))
    api = Api(client=await aiohttp_client(app), app=app)
    creator = Creator(api, await api.user("maker", Role.CREATOR))
    _model, _version, file = await creator.published(safetensors_bytes(seed=27))
    body = await (await api.call("GET", f"/api/node/v1/files/{file['id']}/swarm")).json()
    assert body["state"] == "stopped" and not body["seeding"] and body["peerAddress"] is None
    torrent = lt.bdecode(await (await api.call("GET", f"/api/node/v1/files/{file['id']}/torrent")).read())
    assert b"announce" not in torrent and b"url-list" in torrent  # the web seed still works
    assert (await api.call("GET", "/announce?info_hash=x&port=1")).status == 404
    admin = await api.user("boss", Role.ADMIN)
    refused = await api.call("POST", "/api/node/v1/swarm/fetch", admin,
                             json={"node": "http://127.0.0.1:1", "versionId": 1})
    assert refused.status == 409 and "swarm.enabled is false" in (await refused.json())["detail"]
    assert not (tmp_path / "node" / "swarm").exists()


async def test_resume_data_lets_a_restarted_node_seed_without_a_recheck(tmp_path: Path) -> None:
    data = model_bytes(seed=23, mib=2)
    blobs, sha256, meta = stored_blob(tmp_path, data)
    swarm = Swarm(TEST_SECTION, blobs, tmp_path / "swarm")
    await swarm.start()
    await swarm.seed(meta, sha256)
    await swarm.close()
    (resume,) = (tmp_path / "swarm" / "resume").glob("*.resume")
    assert resume.name == f"{meta.info_hash_v2}.resume"
    again = Swarm(TEST_SECTION, blobs, tmp_path / "swarm")
    await again.start()
    try:
        handle = again.find(meta.info_hash_v2).handle  # type: ignore[union-attr]
        # Reading the resume data takes libtorrent a moment after the torrent is added; meanwhile (and
        # after) no piece is hashed: seed mode, each piece is checked the first time a peer asks for it.
        deadline = time.monotonic() + 10
        while True:
            status = handle.status()
            assert status.state != lt.torrent_status.checking_files
            if status.is_seeding or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
        assert status.is_seeding
        assert again.stats(meta.info_hash_v2)["state"] == "seeding"  # type: ignore[index]
    finally:
        await again.close()


async def test_a_corrupt_peer_is_caught_by_piece_hashes_and_the_fetch_still_completes(tmp_path: Path) -> None:
    data = model_bytes(seed=24, mib=4)
    _origin_blobs, _sha256, meta = stored_blob(tmp_path / "origin", data)
    good_dir, bad_dir = tmp_path / "good", tmp_path / "bad"
    for folder in (good_dir, bad_dir):
        folder.mkdir()
        (folder / meta.name).write_bytes(data)
    good = Seeder(good_dir, meta, upload_limit=4 * MIB)
    bad = Seeder(bad_dir, meta)
    swarm = Swarm(TEST_SECTION, BlobStore(tmp_path / "node"), tmp_path / "node-swarm")
    swarm.blobs.prepare()
    try:
        await asyncio.gather(good.ready(), bad.ready())
        # Once checked, the bad peer's copy rots: a byte of every piece flips. It serves what is on disk.
        with open(bad_dir / meta.name, "r+b") as handle:
            for offset in range(100, len(data), meta.piece_size):
                handle.seek(offset)
                handle.write(bytes([data[offset] ^ 0xFF]))
        await swarm.start()
        entry = entry_for(data, meta)
        path = await swarm.fetch(entry, meta.data, peers=[bad.endpoint, good.endpoint], timeout=60)
        assert path.read_bytes() == data and path == swarm.blobs.path_for(entry.sha256)
        assert swarm.stats(meta.info_hash_v2)["hashFailures"] == 0  # type: ignore[index]  # a fresh seed
        assert swarm.fetch_hash_failures[meta.info_hash_v2] >= 1
        assert not list(swarm.blobs.tmp_dir.iterdir())  # the download directory is gone
    finally:
        await swarm.close()
        good.close()
        bad.close()


async def test_a_torrent_that_is_not_the_manifests_file_is_refused_before_downloading(tmp_path: Path) -> None:
    data, other = model_bytes(seed=25, mib=1), model_bytes(seed=26, mib=1)
    blobs, _sha, meta = stored_blob(tmp_path / "a", data)
    _blobs2, _sha2, other_meta = stored_blob(tmp_path / "b", other)
    swarm = Swarm(TEST_SECTION, BlobStore(tmp_path / "node"), tmp_path / "node-swarm")
    swarm.blobs.prepare()
    await swarm.start()
    try:
        with pytest.raises(ManifestError, match="info-hash"):
            await swarm.fetch(entry_for(data, meta), other_meta.data)
        with pytest.raises(ManifestError, match="bytes"):
            await swarm.fetch(entry_for(data + b"x", meta), meta.data)
        assert not swarm.blobs.exists(hashlib.sha256(data).hexdigest())
        with pytest.raises(SwarmError, match="within"):  # no peer, no web seed: nothing arrives
            await swarm.fetch(entry_for(data, meta), meta.data, timeout=1)
        assert not any(swarm.blobs.tmp_dir.iterdir())
    finally:
        await swarm.close()
    _ = blobs


# -- three served nodes -----------------------------------------------------------------------------


def test_nodes_fetch_a_published_file_from_the_swarm_and_seed_it(cluster: Cluster) -> None:
    sha256 = hashlib.sha256(cluster.data).hexdigest()
    for node in (cluster.beta, cluster.gamma):
        blob = node.data / "blobs" / "sha256" / sha256[:2] / sha256[2:4] / sha256
        assert blob.read_bytes() == cluster.data
        stats = node.swarm_of(cluster.info_hash)
        assert stats["state"] == "seeding" and stats["fileId"] is None and stats["sha256"] == sha256
        # libtorrent's alerts and the fetch itself are structured log lines.
        assert "fetched and verified catstyle.safetensors" in log_of(node)
        assert f"event=torrent_finished info_hash={cluster.info_hash}" in log_of(node)
    # Fetching again finds the blob stored and only makes sure it is seeded.
    status, body = cluster.beta.call("POST", "/api/node/v1/swarm/fetch",
                                     {"node": cluster.alpha.url, "versionId": cluster.version["id"]},
                                     token=cluster.beta.admin)
    assert status == 200 and body["files"][0]["stored"], body


def test_with_the_origin_capped_a_client_downloads_from_the_other_seeders(cluster: Cluster, tmp_path: Path) -> None:
    before = {node.name: node.swarm_of(cluster.info_hash)["uploadedThisSession"]
              for node in (cluster.beta, cluster.gamma)}
    started = time.monotonic()
    pull = pull_process(cluster.air, "--node", cluster.alpha.url, "--to", str(tmp_path), "--peers-only",
                        "--max-rate", "4M")
    out, err = pull.communicate(timeout=90)
    assert pull.returncode == 0, err
    assert (tmp_path / "catstyle.safetensors").read_bytes() == cluster.data
    sent = {node.name: node.swarm_of(cluster.info_hash)["uploadedThisSession"] - before[node.name]
            for node in (cluster.beta, cluster.gamma)}
    # alpha sends at most 1 MiB/s; the rest came from beta and gamma, and each sent some.
    elapsed = time.monotonic() - started
    assert sent["beta"] > 0 and sent["gamma"] > 0, sent
    assert sum(sent.values()) >= len(cluster.data) - elapsed * 1.2 * MIB, (sent, elapsed)


def test_a_download_finishes_from_the_others_when_a_seeder_is_killed_mid_way(cluster: Cluster, tmp_path: Path) -> None:
    pull = pull_process(cluster.air, "--node", cluster.alpha.url, "--to", str(tmp_path), "--peers-only",
                        "--max-rate", "2M")
    partial = tmp_path / ".atrium-partial"
    try:
        wait_until(lambda: any(p.name == "resume.dat" for p in partial.rglob("*")), timeout=30,
                   what="the pull has started receiving")
        gamma_sent = wait_until(lambda: cluster.gamma.swarm_of(cluster.info_hash)["uploadRate"], timeout=20,
                                what="gamma is sending")
        assert gamma_sent > 0
        cluster.gamma.server.proc.send_signal(signal.SIGKILL)
        cluster.gamma.server.proc.wait(timeout=10)
        out, err = pull.communicate(timeout=90)
    finally:
        if pull.poll() is None:
            pull.kill()
            pull.communicate()
    assert pull.returncode == 0, err
    assert (tmp_path / "catstyle.safetensors").read_bytes() == cluster.data
    assert not partial.exists()
    # gamma comes back and seeds the file it fetched, from its resume data, at once.
    cluster.restart(cluster.gamma)
    assert cluster.gamma.swarm_of(cluster.info_hash)["state"] == "seeding"


def test_a_standard_client_downloads_a_published_file_given_only_its_torrent(cluster: Cluster, tmp_path: Path) -> None:
    aria2c = require_debian_tool("aria2c", "aria2")
    torrent = tmp_path / "catstyle.safetensors.torrent"
    torrent.write_bytes(cluster.alpha.raw(f"/api/node/v1/files/{cluster.file['id']}/torrent"))
    port = free_port()
    result = subprocess.run(
        [aria2c, "--dir", str(tmp_path / "out"), "--seed-time=0", "--enable-dht=false", "--enable-dht6=false",
         "--bt-enable-lpd=false", "--enable-peer-exchange=false", "--disable-ipv6=true", "--interface=127.0.0.1",
         f"--listen-port={port}", "--no-conf", "--console-log-level=warn", "--summary-interval=0",
         "--bt-stop-timeout=60", str(torrent)],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "out" / "catstyle.safetensors").read_bytes() == cluster.data
