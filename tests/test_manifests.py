"""Signed manifests and torrents: what a published version's files are, provable offline."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import libtorrent as lt
import pytest

from node.core.identity import NodeIdentity
from node.core.manifests import (PAYLOAD_TYPE, ManifestError, ManifestFile, build_statement, check_file,
                                 open_manifest, sign_envelope, sign_manifest)
from node.core.tables import Role
from node.core.torrents import MIB, TorrentMeta, make_torrent, piece_size_for
from tests.catalog_fixtures import safetensors_bytes
from tests.conftest import Api, atrium
from tests.test_catalog import Creator


@pytest.fixture
async def creator(api: Api) -> Creator:
    return Creator(api, await api.user("maker", Role.CREATOR))


async def manifest_of(api: Api, version_id: int, token: str | None = None) -> bytes:
    response = await api.call("GET", f"/api/node/v1/versions/{version_id}/manifest", token)
    body = await response.read()
    assert response.status == 200, body
    assert response.content_type == "application/json"
    return body


# -- torrents -------------------------------------------------------------------------------------


def test_piece_size_fits_the_file_size() -> None:
    assert piece_size_for(1000) == 256 * 1024
    assert piece_size_for(200 * MIB) == 256 * 1024
    assert piece_size_for(2048 * MIB) == 1 * MIB
    assert piece_size_for(7 * 1024 * MIB) == 4 * MIB
    assert piece_size_for(200 * 1024 * MIB) == 16 * MIB  # capped


def test_the_same_bytes_and_name_make_the_same_torrent_anywhere(tmp_path: Path) -> None:
    data = safetensors_bytes(seed=3, size=4096)
    first, second = tmp_path / "a" / "blob1", tmp_path / "b" / "blob2"
    for path in (first, second):
        path.parent.mkdir()
        path.write_bytes(data)
    one = make_torrent(first, "style.safetensors", tmp_path / "work1")
    two = make_torrent(second, "style.safetensors", tmp_path / "work2")
    assert one.data == two.data and one.info_hash_v2 == two.info_hash_v2
    assert b"creation date" not in one.data and b"url-list" not in one.data
    assert one.name == "style.safetensors" and one.size == len(data)
    # A hybrid torrent: both info-hashes, and the v2 file root of the bytes.
    assert len(one.info_hash_v1) == 40 and len(one.info_hash_v2) == 64 and len(one.file_root) == 64
    assert make_torrent(first, "other.safetensors", tmp_path / "w3").info_hash_v2 != one.info_hash_v2
    assert list((tmp_path / "work1").iterdir()) == []  # the staging link is gone


def test_web_seeds_are_added_when_served_and_change_no_hash(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(safetensors_bytes(seed=4))
    meta = make_torrent(blob, "m.safetensors", tmp_path / "w")
    served = meta.with_web_seeds(["http://127.0.0.1:1/api/download/models/1?fileId=1"])
    decoded = lt.bdecode(served)
    assert decoded[b"url-list"] == [b"http://127.0.0.1:1/api/download/models/1?fileId=1"]
    again = TorrentMeta.from_bytes(served)
    assert (again.info_hash_v1, again.info_hash_v2) == (meta.info_hash_v1, meta.info_hash_v2)
    magnet = meta.magnet(["http://x/y"])
    assert f"urn:btih:{meta.info_hash_v1}" in magnet and f"urn:btmh:1220{meta.info_hash_v2}" in magnet
    assert "dn=m.safetensors" in magnet and "ws=http%3A%2F%2Fx%2Fy" in magnet


def test_garbage_is_not_a_torrent() -> None:
    with pytest.raises(Exception, match="not a valid torrent"):
        TorrentMeta.from_bytes(b"d4:infoi3ee")


# -- manifests over the API ------------------------------------------------------------------------


async def test_a_published_version_has_a_signed_manifest_and_torrents(api: Api, creator: Creator) -> None:
    data = safetensors_bytes(seed=11, size=2048)
    model, version, file = await creator.published(data)
    envelope = await manifest_of(api, version["id"])
    manifest = open_manifest(envelope, trusted_keys=[api.node.node_id])
    assert manifest.key_id == api.node.node_id == manifest.origin
    assert manifest.air == f"urn:air:sd1:lora:{api.node.name}:{model['id']}@{version['id']}"
    (entry,) = manifest.files
    assert entry.name == "model.safetensors" and entry.size == len(data)
    assert entry.sha256 == hashlib.sha256(data).hexdigest()
    assert entry.hashes["BLAKE3"] == file["hashes"]["BLAKE3"].lower()
    assert entry.header_sha256 is not None and entry.piece_size == 256 * 1024
    # The payload is in-toto: the subjects are the files.
    statement = json.loads(base64.b64decode(json.loads(envelope)["payload"]))
    assert statement["subject"] == [{"name": "model.safetensors", "digest": {"sha256": entry.sha256}}]
    assert b"http" not in base64.b64decode(json.loads(envelope)["payload"]).replace(b"https://in-toto.io", b"") \
        .replace(b"https://atrium.dev", b"")  # no URL is signed
    # The same bytes every time: stored as signed.
    assert await manifest_of(api, version["id"]) == envelope

    response = await api.call("GET", f"/api/node/v1/files/{file['id']}/torrent")
    assert response.status == 200 and response.content_type == "application/x-bittorrent"
    assert 'filename="model.safetensors.torrent"' in response.headers["Content-Disposition"]
    torrent = TorrentMeta.from_bytes(await response.read())
    assert (torrent.info_hash_v1, torrent.info_hash_v2, torrent.file_root) == \
        (entry.info_hash_v1, entry.info_hash_v2, entry.file_root)
    seeds = lt.bdecode(await (await api.call("GET", f"/api/node/v1/files/{file['id']}/torrent")).read())[b"url-list"]
    (seed,) = seeds
    # No query string: libtorrent refuses web seeds on the local host that have one (SSRF mitigation).
    assert seed.decode().endswith(f"/api/node/v1/files/{file['id']}/content")
    # The web seed serves the file's bytes, and ranges of them (206), without counting a download.
    path = seed.decode().split("://", 1)[1].split("/", 1)[1]
    assert await (await api.call("GET", "/" + path)).read() == data
    ranged = await api.call("GET", "/" + path, headers={"Range": "bytes=10-19"})
    assert ranged.status == 206 and await ranged.read() == data[10:20]
    stats = await (await api.call("GET", f"/api/v1/model-versions/{version['id']}")).json()
    assert stats["stats"]["downloadCount"] == 0

    magnet = await (await api.call("GET", f"/api/node/v1/files/{file['id']}/magnet")).json()
    assert magnet["infoHashV2"] == entry.info_hash_v2 and magnet["magnet"].startswith("magnet:?xt=urn:btih:")


async def test_a_file_added_to_a_published_version_gets_a_new_manifest(api: Api, creator: Creator) -> None:
    model, version, _file = await creator.published(safetensors_bytes(seed=12))
    first = open_manifest(await manifest_of(api, version["id"]))
    await creator.upload(version["id"], safetensors_bytes(seed=13), filename="extra.safetensors")
    second = open_manifest(await manifest_of(api, version["id"]))
    assert [f.name for f in first.files] == ["model.safetensors"]
    assert sorted(f.name for f in second.files) == ["extra.safetensors", "model.safetensors"]


async def test_drafts_and_unknown_versions_have_no_manifest(api: Api, creator: Creator) -> None:
    model = await creator.model()
    version = await creator.version(model["id"])
    file = await creator.upload(version["id"], safetensors_bytes(seed=14))
    anonymous = await api.call("GET", f"/api/node/v1/versions/{version['id']}/manifest")
    assert anonymous.status == 404
    owner = await api.call("GET", f"/api/node/v1/versions/{version['id']}/manifest", creator.token)
    assert owner.status == 409 and "not published" in (await owner.json())["detail"]
    assert (await api.call("GET", f"/api/node/v1/files/{file['id']}/torrent")).status == 404
    assert (await api.call("GET", "/api/node/v1/versions/999999/manifest")).status == 404
    assert (await api.call("GET", "/api/node/v1/files/abc/torrent")).status == 400


async def test_catch_up_signs_versions_published_while_nobody_prepared_them(api: Api, creator: Creator) -> None:
    _model, version, _file = await creator.published(safetensors_bytes(seed=15))
    await api.node.distribution.close()
    from node.core.tables import FileTorrent, VersionManifest

    async with api.node.db.session() as session:
        for table in (VersionManifest, FileTorrent):
            for row in (await session.exec(__import__("sqlmodel").select(table))).all():
                await session.delete(row)
        await session.commit()
    assert await api.node.distribution.catch_up() == 1
    assert await api.node.distribution.catch_up() == 0
    assert len(await api.node.distribution.shared_files()) == 1


# -- verifying files against a manifest ------------------------------------------------------------


def _manifest_for(identity: NodeIdentity, files: dict[str, bytes]) -> bytes:
    entries = [ManifestFile(name=name, size=len(data), sha256=hashlib.sha256(data).hexdigest())
               for name, data in files.items()]
    statement = build_statement(node_id=identity.node_id, node_name="test", air="urn:air:sd1:lora:test:1@1",
                                model={"id": 1}, version={"id": 1}, files=entries)
    return sign_manifest(identity, statement)


def _identity() -> NodeIdentity:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return NodeIdentity(Ed25519PrivateKey.generate())


def test_tampered_bytes_a_wrong_key_and_a_swapped_payload_type_fail(tmp_path: Path) -> None:
    identity, other = _identity(), _identity()
    data = safetensors_bytes(seed=20)
    envelope = _manifest_for(identity, {"m.safetensors": data})
    manifest = open_manifest(envelope, trusted_keys=[identity.node_id])
    good = tmp_path / "m.safetensors"
    good.write_bytes(data)
    check_file(good, manifest.files[0])

    bad = tmp_path / "bad" / "m.safetensors"
    bad.parent.mkdir()
    bad.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ManifestError, match=r"^m.safetensors: SHA-256 .* does not match"):
        check_file(bad, manifest.files[0])
    bad.write_bytes(data[:-5])
    with pytest.raises(ManifestError, match=r"^m.safetensors: \d+ bytes, the manifest says"):
        check_file(bad, manifest.files[0])

    with pytest.raises(ManifestError, match="not signed by"):
        open_manifest(envelope, trusted_keys=[other.node_id])
    # The same statement signed by another node names the first as origin: refused.
    forged = sign_envelope(other, base64.b64decode(json.loads(envelope)["payload"]))
    with pytest.raises(ManifestError, match="origin"):
        open_manifest(forged)
    swapped = json.loads(envelope)
    swapped["payloadType"] = "application/json"
    with pytest.raises(ManifestError, match="signature does not verify"):
        open_manifest(json.dumps(swapped).encode())
    # Signed honestly, but as something other than an in-toto statement.
    other_type = sign_envelope(identity, base64.b64decode(json.loads(envelope)["payload"]), "text/plain")
    with pytest.raises(ManifestError, match="not an in-toto statement"):
        open_manifest(other_type)
    altered = json.loads(envelope)
    payload = json.loads(base64.b64decode(altered["payload"]))
    payload["predicate"]["files"][0]["size"] += 1
    altered["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    with pytest.raises(ManifestError, match="signature does not verify"):
        open_manifest(json.dumps(altered).encode())
    for garbage in (b"", b"[]", b"{\"payloadType\": 1}", b"\xff\xfe", b'{"payloadType":"x","payload":"!!","signatures":[{}]}'):
        with pytest.raises(ManifestError):
            open_manifest(garbage)
    assert PAYLOAD_TYPE == "application/vnd.in-toto+json"


def test_atrium_verify_checks_files_offline(tmp_path: Path) -> None:
    identity, other = _identity(), _identity()
    files = {"a.safetensors": safetensors_bytes(seed=21), "b.safetensors": safetensors_bytes(seed=22)}
    folder = tmp_path / "dl"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    manifest = tmp_path / "manifest.json"
    manifest.write_bytes(_manifest_for(identity, files))

    ok = atrium("verify", str(folder), "--manifest", str(manifest), "--key", identity.node_id)
    assert ok.returncode == 0, ok.stderr
    assert "OK     a.safetensors" in ok.stdout and "OK     b.safetensors" in ok.stdout
    assert f"signed by {identity.node_id}" in ok.stdout
    single = atrium("verify", str(folder / "b.safetensors"), "--manifest", str(manifest))
    assert single.returncode == 0 and "not pinned" in single.stdout

    wrong_key = atrium("verify", str(folder), "--manifest", str(manifest), "--key", other.node_id)
    assert wrong_key.returncode == 1 and "not signed by" in wrong_key.stderr

    (folder / "b.safetensors").write_bytes(files["b.safetensors"][:-1] + b"\x00")
    tampered = atrium("verify", str(folder), "--manifest", str(manifest), "--key", identity.node_id)
    assert tampered.returncode == 1
    assert "FAILED b.safetensors: SHA-256" in tampered.stderr and "1 of 2 files" in tampered.stderr
    (folder / "a.safetensors").unlink()
    missing = atrium("verify", str(folder), "--manifest", str(manifest))
    assert missing.returncode == 1 and "FAILED a.safetensors: missing" in missing.stderr

    assert atrium("verify", str(folder), "--manifest", str(tmp_path / "nope.json")).returncode == 2
    (tmp_path / "junk.json").write_text("not json")
    junk = atrium("verify", str(folder), "--manifest", str(tmp_path / "junk.json"))
    assert junk.returncode == 1 and "not JSON" in junk.stderr


async def test_file_objects_carry_the_torrent_magnet_and_manifest_links(api: Api, creator: Creator) -> None:
    model, version, file = await creator.published(safetensors_bytes(seed=16))
    envelope = open_manifest(await manifest_of(api, version["id"]))  # made by now
    answer = await (await api.call("GET", f"/api/v1/model-versions/{version['id']}")).json()
    (listed,) = answer["files"]
    assert listed["torrentUrl"].endswith(f"/api/node/v1/files/{file['id']}/torrent")
    assert listed["magnet"].startswith(f"magnet:?xt=urn:btih:{envelope.files[0].info_hash_v1}")
    assert f"urn:btmh:1220{envelope.files[0].info_hash_v2}" in listed["magnet"]
    assert answer["manifestUrl"].endswith(f"/api/node/v1/versions/{version['id']}/manifest")
    # The Civitai listing carries them too (its cache was dropped when the torrent was stored).
    page = await (await api.call("GET", "/api/v1/models")).json()
    assert page["items"][0]["modelVersions"][0]["files"][0]["magnet"] == listed["magnet"]


async def test_catch_up_skips_versions_whose_files_are_missing(api: Api, creator: Creator,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    from sqlmodel import select

    from node.core.tables import FileTorrent, VersionManifest

    _m1, kept, _f1 = await creator.published(safetensors_bytes(seed=17), name="Kept")
    _m2, lost, lost_file = await creator.published(safetensors_bytes(seed=18), name="Lost")
    await manifest_of(api, kept["id"])
    await manifest_of(api, lost["id"])
    await api.node.distribution.close()
    async with api.node.db.session() as session:
        for table in (VersionManifest, FileTorrent):
            for row in (await session.exec(select(table))).all():
                await session.delete(row)
        await session.commit()
    api.node.blobs.path_for(lost_file["hashes"]["SHA256"].lower()).unlink()
    assert await api.node.distribution.catch_up() == 1
    assert "1 published versions have files missing from the blob store" in caplog.text
