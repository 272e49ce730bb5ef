"""Publishing, browsing and downloading models through the native and the Civitai-compatible APIs."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import struct
import time
import zlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage

from node.core.records import image_resources
from node.core.runtime import housekeeping
from node.core.tables import Role, Upload, utcnow
from tests.catalog_fixtures import (A1111_PARAMETERS, lying_safetensors, pickle_bytes, png_with_parameters,
                                    safetensors_bytes)
from tests.conftest import Api, atrium, http_json, wait_for, wait_healthy


class Creator:
    """A creator's session against the API."""

    def __init__(self, api: Api, token: str) -> None:
        self.api = api
        self.token = token

    async def json(self, method: str, path: str, expect: int = 200, **kwargs: Any) -> Any:
        response = await self.api.call(method, path, self.token, **kwargs)
        body = await response.json()
        assert response.status == expect, body
        return body

    async def model(self, name: str = "Cat Style", type: str = "LORA", **extra: Any) -> dict:
        return await self.json("POST", "/api/node/v1/models", 201, json={"name": name, "type": type, **extra})

    async def version(self, model_id: int, name: str = "v1", base_model: str = "SD 1.5", **extra: Any) -> dict:
        return await self.json("POST", f"/api/node/v1/models/{model_id}/versions", 201,
                               json={"name": name, "base_model": base_model, **extra})

    async def start(self, version_id: int, data: bytes, filename: str = "model.safetensors",
                    file_type: str = "Model") -> dict:
        return await self.json("POST", f"/api/node/v1/versions/{version_id}/uploads", 201,
                               json={"filename": filename, "size": len(data), "type": file_type})

    async def send(self, upload: dict, data: bytes, offset: int) -> Any:
        return await self.api.call("PATCH", upload["url"], self.token, data=data,
                                   headers={"Upload-Offset": str(offset)})

    async def upload(self, version_id: int, data: bytes, filename: str = "model.safetensors",
                     pieces: int = 2) -> dict:
        upload = await self.start(version_id, data, filename)
        step = -(-len(data) // pieces)
        response = None
        for offset in range(0, len(data), step):
            response = await self.send(upload, data[offset:offset + step], offset)
        body = await response.json()
        assert response.status == 201, body
        return body["file"]

    async def published(self, data: bytes | None = None, name: str = "Cat Style", **extra: Any) -> tuple[dict, dict, dict]:
        model = await self.model(name, **extra)
        version = await self.version(model["id"], trained_words=["catstyle"])
        file = await self.upload(version["id"], data or safetensors_bytes())
        await self.json("POST", f"/api/node/v1/models/{model['id']}/publish")
        return model, version, file


@pytest.fixture
async def creator(api: Api) -> Creator:
    return Creator(api, await api.user("maker", Role.CREATOR))


def blobs_dir(api: Api) -> Path:
    return api.node.blobs.root


def stored_blobs(api: Api) -> list[Path]:
    return [p for p in (blobs_dir(api) / "sha256").rglob("*") if p.is_file()]


def leftovers(api: Api) -> list[Path]:
    """Part files and temp files: nothing may be left after a refused upload."""
    return [p for d in ("uploads", "tmp") if (blobs_dir(api) / d).exists() for p in (blobs_dir(api) / d).iterdir()]


async def test_a_published_lora_is_listed_with_files_hashes_and_air(api: Api, creator: Creator) -> None:
    data = safetensors_bytes()
    model, version, file = await creator.published(data, tags=["Cats", "animals"])
    listing = await (await api.call("GET", "/api/v1/models?types=LORA")).json()
    [item] = listing["items"]
    assert item["name"] == "Cat Style" and item["type"] == "LORA" and item["creator"]["username"] == "maker"
    assert item["tags"] == ["animals", "cats"]
    [v] = item["modelVersions"]
    assert v["trainedWords"] == ["catstyle"] and v["baseModel"] == "SD 1.5"
    assert v["air"] == f"urn:air:sd1:lora:atrium:{model['id']}@{version['id']}"
    [f] = v["files"]
    header_length = struct.unpack("<Q", data[:8])[0]
    assert f["hashes"] == {
        "AutoV2": hashlib.sha256(data).hexdigest()[:10].upper(),
        "AutoV3": hashlib.sha256(data[8 + header_length:]).hexdigest()[:12].upper(),
        "SHA256": hashlib.sha256(data).hexdigest().upper(),
        "CRC32": f"{zlib.crc32(data):08X}",
        "BLAKE3": f["hashes"]["BLAKE3"],
    }
    assert f["metadata"] == {"format": "SafeTensor", "size": "full", "fp": "fp16"}
    assert f["primary"] is True and f["sizeKB"] == len(data) / 1024
    assert f["pickleScanResult"] == "Success"


async def test_an_upload_resumes_after_a_dropped_connection(api: Api, creator: Creator) -> None:
    data = safetensors_bytes(size=200)
    model = await creator.model()
    version = await creator.version(model["id"])
    upload = await creator.start(version["id"], data)
    first = await creator.send(upload, data[:50_000], 0)
    assert first.status == 200 and (await first.json())["offset"] == 50_000
    wrong = await creator.send(upload, data[10:20], 10)
    assert wrong.status == 409 and "continues at byte 50000" in (await wrong.json())["detail"]
    api.node.ingest._live.clear()  # as after a node restart: the part file is replayed
    status = await creator.json("GET", upload["url"])
    assert status["offset"] == 50_000
    done = await creator.send(upload, data[50_000:], 50_000)
    assert done.status == 201
    assert (await done.json())["file"]["hashes"]["SHA256"] == hashlib.sha256(data).hexdigest().upper()
    assert leftovers(api) == []


async def test_the_same_bytes_uploaded_twice_are_stored_once(api: Api, creator: Creator) -> None:
    data = safetensors_bytes(seed=7)
    await creator.published(data, name="First")
    await creator.published(data, name="Second")
    assert [p.name for p in stored_blobs(api)] == [hashlib.sha256(data).hexdigest()]


async def test_a_pickle_renamed_safetensors_is_refused_as_pickle_and_nothing_is_kept(api: Api,
                                                                                     creator: Creator) -> None:
    model = await creator.model()
    version = await creator.version(model["id"])
    data = pickle_bytes()
    upload = await creator.start(version["id"], data, "innocent.safetensors")
    response = await creator.send(upload, data, 0)
    body = await response.json()
    assert response.status == 400 and body["error"] == "pickle_refused"
    assert "never unpickles" in body["detail"] and "safetensors" in body["detail"]
    assert leftovers(api) == [] and stored_blobs(api) == []
    gone = await api.call("GET", upload["url"], creator.token)
    assert gone.status == 404


@pytest.mark.parametrize("data, error", [
    (lying_safetensors(200_000_000), "100 MB"),
    (lying_safetensors(5_000), "truncated"),
    (safetensors_bytes()[:-10], "truncated"),
    (safetensors_bytes() + b"hidden payload", "safetensors"),
    (struct.pack("<Q", 6) + b"[1, 2]" + b"", "safetensors"),
])
async def test_bad_safetensors_are_refused_with_a_reason_and_nothing_is_kept(api: Api, creator: Creator,
                                                                             data: bytes, error: str) -> None:
    model = await creator.model()
    version = await creator.version(model["id"])
    upload = await creator.start(version["id"], data)
    response = await creator.send(upload, data, 0)
    body = await response.json()
    assert response.status == 400, body
    assert error in body["detail"]
    assert leftovers(api) == [] and stored_blobs(api) == []


async def test_a_ckpt_model_file_is_refused(api: Api, creator: Creator) -> None:
    model = await creator.model()
    version = await creator.version(model["id"])
    data = pickle_bytes()
    upload = await creator.start(version["id"], data, "model.ckpt")
    response = await creator.send(upload, data, 0)
    assert response.status == 400 and (await response.json())["error"] == "pickle_refused"


async def test_more_bytes_than_announced_end_the_upload(api: Api, creator: Creator) -> None:
    model = await creator.model()
    version = await creator.version(model["id"])
    data = safetensors_bytes()
    upload = await creator.start(version["id"], data)
    response = await creator.send(upload, data + b"extra", 0)
    assert response.status == 400 and "more bytes than" in (await response.json())["detail"]
    assert leftovers(api) == []


async def test_only_the_owner_moderators_and_admins_change_a_model(api: Api, creator: Creator) -> None:
    model, version, _file = await creator.published()
    other = Creator(api, await api.user("rival", Role.CREATOR))
    refused = await api.call("PATCH", f"/api/node/v1/models/{model['id']}", other.token, json={"name": "Mine now"})
    assert refused.status == 403 and "belongs to another creator" in (await refused.json())["detail"]
    upload = await api.call("POST", f"/api/node/v1/versions/{version['id']}/uploads", other.token,
                            json={"filename": "x.safetensors", "size": 10})
    assert upload.status == 403
    moderator = Creator(api, await api.user("mod", Role.MODERATOR))
    renamed = await moderator.json("PATCH", f"/api/node/v1/models/{model['id']}", json={"name": "Renamed"})
    assert renamed["name"] == "Renamed"


async def test_members_cannot_create_models(api: Api) -> None:
    member = await api.user("plain", Role.MEMBER)
    response = await api.call("POST", "/api/node/v1/models", member, json={"name": "X", "type": "LORA"})
    assert response.status == 403


async def test_publishing_needs_a_file(api: Api, creator: Creator) -> None:
    model = await creator.model()
    await creator.version(model["id"])
    response = await api.call("POST", f"/api/node/v1/models/{model['id']}/publish", creator.token)
    assert response.status == 409 and "upload a file first" in (await response.json())["detail"]


async def test_drafts_are_hidden_from_everyone_but_their_owner(api: Api, creator: Creator) -> None:
    model = await creator.model()
    version = await creator.version(model["id"])
    await creator.upload(version["id"], safetensors_bytes())
    assert (await api.call("GET", f"/api/v1/models/{model['id']}")).status == 404
    assert (await api.call("GET", f"/api/download/models/{version['id']}")).status == 404
    own = await api.call("GET", f"/api/download/models/{version['id']}", creator.token)
    assert own.status == 200


async def test_downloads_support_ranges_and_name_the_file(api: Api, creator: Creator) -> None:
    data = safetensors_bytes()
    _model, version, _file = await creator.published(data)
    whole = await api.call("GET", f"/api/download/models/{version['id']}")
    assert whole.status == 200 and await whole.read() == data
    assert whole.headers["Content-Disposition"].startswith('attachment; filename="model.safetensors"')
    assert whole.headers["ETag"]
    part = await api.call("GET", f"/api/download/models/{version['id']}", headers={"Range": "bytes=100-199"})
    assert part.status == 206 and await part.read() == data[100:200]
    model = await (await api.call("GET", f"/api/v1/model-versions/{version['id']}")).json()
    assert model["stats"]["downloadCount"] == 1  # the ranged resumption is not a new download


async def test_download_errors_are_never_2xx(api: Api, creator: Creator) -> None:
    model, version, _file = await creator.published()
    missing = await api.call("GET", "/api/download/models/99999")
    assert missing.status == 404 and (await missing.json())["error"] == "not_found"
    no_match = await api.call("GET", f"/api/download/models/{version['id']}?format=GGUF")
    assert no_match.status == 404
    await creator.json("PUT", f"/api/node/v1/models/{model['id']}/mode", json={"mode": "Archived"})
    archived = await api.call("GET", f"/api/download/models/{version['id']}")
    assert archived.status == 410 and "archived" in (await archived.json())["detail"]


@pytest.mark.parametrize("kind", ["SHA256", "AutoV2", "AutoV3", "BLAKE3", "CRC32"])
async def test_a_version_is_found_by_any_of_its_hashes_in_any_case(api: Api, creator: Creator, kind: str) -> None:
    _model, version, file = await creator.published()
    value = file["hashes"][kind].lower()
    response = await api.call("GET", f"/api/v1/model-versions/by-hash/{value}")
    assert response.status == 200 and (await response.json())["id"] == version["id"]


async def test_by_hash_in_bulk_answers_the_known_ones(api: Api, creator: Creator) -> None:
    _model, version, file = await creator.published()
    response = await api.call("POST", "/api/v1/model-versions/by-hash",
                              json=[file["hashes"]["SHA256"], "0" * 64])
    assert [v["id"] for v in await response.json()] == [version["id"]]
    too_many = await api.call("POST", "/api/v1/model-versions/by-hash", json=["0" * 64] * 101)
    assert too_many.status == 400
    garbage = await api.call("GET", "/api/v1/model-versions/by-hash/not-a-hash!")
    assert garbage.status == 400


async def test_an_image_is_linked_to_the_lora_its_metadata_names(api: Api, creator: Creator) -> None:
    data = safetensors_bytes()
    _model, version, file = await creator.published(data)
    png = png_with_parameters(A1111_PARAMETERS.format(model_hash="6ce0161689",
                                                      lora_hash=file["hashes"]["AutoV3"].lower()))
    image = await creator.json("POST", f"/api/node/v1/versions/{version['id']}/images", 201, data=png)
    assert image["meta"]["prompt"].startswith("a cat in a hat") and image["meta"]["seed"] == 1234
    linked = (await image_resources(api.node.db, [image["id"]]))[image["id"]]
    assert {(r.kind, r.version_id) for r in linked if r.version_id} == {("lora", version["id"])}
    listed = await (await api.call("GET", f"/api/v1/images?modelVersionId={version['id']}")).json()
    assert [i["id"] for i in listed["items"]] == [image["id"]]
    thumb = await api.call("GET", f"/api/node/v1/images/{image['id']}/thumbnail")
    assert thumb.status == 200 and thumb.headers["Content-Type"] == "image/webp"


def huge_png(width: int, height: int) -> bytes:
    """A small file that declares a huge image (a decompression bomb)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    rows = zlib.compress(b"\0" * (width // 8 + 1) * 16, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


async def test_a_50000_by_50000_png_is_refused(api: Api, creator: Creator) -> None:
    _model, version, _file = await creator.published()
    response = await api.call("POST", f"/api/node/v1/versions/{version['id']}/images", creator.token,
                              data=huge_png(50_000, 50_000))
    assert response.status == 413
    assert stored_blobs(api) and all(p.stat().st_size < 10_000_000 for p in stored_blobs(api))


async def test_images_that_are_not_png_jpeg_or_webp_are_refused(api: Api, creator: Creator) -> None:
    _model, version, _file = await creator.published()
    gif = io.BytesIO()
    PILImage.new("RGB", (8, 8)).save(gif, format="GIF")
    response = await api.call("POST", f"/api/node/v1/versions/{version['id']}/images", creator.token,
                              data=gif.getvalue())
    assert response.status == 400


async def test_page_times_limit_over_1000_is_429_with_a_hint(api: Api) -> None:
    response = await api.call("GET", "/api/v1/models?page=11&limit=100")
    assert response.status == 429 and "cursor" in (await response.json())["detail"]


async def test_cursor_pagination_visits_every_model_once(api: Api, creator: Creator) -> None:
    data = safetensors_bytes()
    for i in range(7):
        await creator.published(data, name=f"Model {i}")
    seen: list[int] = []
    url = "/api/v1/models?limit=3&sort=Newest"
    while url:
        page = await (await api.call("GET", url)).json()
        seen += [m["id"] for m in page["items"]]
        cursor = page["metadata"].get("nextCursor")
        url = f"/api/v1/models?limit=3&sort=Newest&cursor={cursor}" if cursor else ""
    assert len(seen) == 7 and len(set(seen)) == 7
    assert seen == sorted(seen, reverse=True)


@pytest.mark.parametrize("query", ['"', "cat*", "a OR b", "NEAR(", "'; DROP TABLE models; --", "^:()-+", "%_"])
async def test_search_syntax_in_query_is_taken_as_plain_words(api: Api, creator: Creator, query: str) -> None:
    await creator.published()
    response = await api.call("GET", "/api/v1/models", params={"query": query})
    assert response.status == 200


async def test_search_finds_models_by_name_tag_trigger_word_and_creator(api: Api, creator: Creator) -> None:
    await creator.published(name="Watercolor Dreams", tags=["painting"], description="soft washes")
    for query in ("watercolor", "water", "painting", "catstyle", "maker", "soft washes"):
        found = await (await api.call("GET", "/api/v1/models", params={"query": query})).json()
        assert [m["name"] for m in found["items"]] == ["Watercolor Dreams"], query
    none = await (await api.call("GET", "/api/v1/models", params={"query": "oil"})).json()
    assert none["items"] == []


@pytest.mark.parametrize("params, field", [({"types": "Wallpaper"}, "types"), ({"sort": "Best"}, "sort"),
                                           ({"period": "Decade"}, "period"), ({"limit": "abc"}, "limit"),
                                           ({"nsfw": "maybe"}, "nsfw")])
async def test_unknown_enum_values_are_400_naming_the_parameter(api: Api, params: dict, field: str) -> None:
    response = await api.call("GET", "/api/v1/models", params=params)
    body = await response.json()
    assert response.status == 400 and body["detail"].startswith(field)


async def test_one_review_per_member_and_version_and_stats_follow(api: Api, creator: Creator) -> None:
    model, version, _file = await creator.published()
    fan = Creator(api, await api.user("fan"))
    await fan.json("PUT", f"/api/node/v1/versions/{version['id']}/review", json={"rating": 5, "text": "great"})
    await fan.json("PUT", f"/api/node/v1/versions/{version['id']}/review", json={"rating": 2})
    await fan.json("POST", f"/api/node/v1/models/{model['id']}/reactions", json={"reaction": "Like"})
    await fan.json("POST", f"/api/node/v1/models/{model['id']}/comments", 201, json={"text": "nice"})
    item = await (await api.call("GET", f"/api/v1/models/{model['id']}")).json()
    assert item["stats"]["ratingCount"] == 1 and item["stats"]["rating"] == 2
    assert item["stats"]["thumbsUpCount"] == 1 and item["stats"]["commentCount"] == 1
    own = await api.call("PUT", f"/api/node/v1/versions/{version['id']}/review", creator.token, json={"rating": 5})
    assert own.status == 403


async def test_an_air_resolves_to_its_version_and_garbage_is_refused(api: Api, creator: Creator) -> None:
    model, version, _file = await creator.published()
    air = f"urn:air:sd1:lora:atrium:{model['id']}@{version['id']}"
    found = await (await api.call("GET", f"/api/node/v1/air/{air}")).json()
    assert found["id"] == version["id"]
    assert (await api.call("GET", "/api/node/v1/air/urn:air:::")).status == 400
    assert (await api.call("GET", f"/api/node/v1/air/urn:air:sd1:lora:elsewhere:{model['id']}")).status == 404


async def test_enums_list_civitais_vocabulary(api: Api) -> None:
    enums = await (await api.call("GET", "/api/v1/enums")).json()
    assert "LORA" in enums["ModelType"] and "Most Downloaded" in enums["ModelSort"]


def test_init_publishes_demo_content_so_the_first_page_is_not_empty(tmp_path: Path, serve) -> None:
    data = tmp_path / "data"
    result = atrium("init", str(data), demo=True)
    assert result.returncode == 0 and "2 demo models" in result.stdout
    server = serve(data)
    wait_healthy(server)
    _status, models = http_json("GET", server.url + "/api/v1/models")
    assert {m["name"] for m in models["items"]} == {"Demo: Watercolor Wash", "Demo: Pixel Sprites"}
    assert all("not a trained model" in m["description"] for m in models["items"])
    _status, images = http_json("GET", server.url + "/api/v1/images")
    assert len(images["items"]) == 6
    assert all(i["meta"]["resources"][0]["type"] == "lora" for i in images["items"])


async def test_reviews_and_comments_are_listed_newest_first_with_their_authors(api: Api, creator: Creator) -> None:
    model, version, _file = await creator.published()
    for name, rating in (("fan1", 4), ("fan2", 5)):
        fan = Creator(api, await api.user(name))
        await fan.json("PUT", f"/api/node/v1/versions/{version['id']}/review", json={"rating": rating})
        await fan.json("POST", f"/api/node/v1/models/{model['id']}/comments", 201, json={"text": f"from {name}"})
    reviews = await (await api.call("GET", f"/api/node/v1/versions/{version['id']}/reviews")).json()
    assert [(r["username"], r["rating"]) for r in reviews["items"]] == [("fan2", 5), ("fan1", 4)]
    comments = await (await api.call("GET", f"/api/node/v1/models/{model['id']}/comments?limit=1")).json()
    assert [c["text"] for c in comments["items"]] == ["from fan2"]
    older = await (await api.call("GET", f"/api/node/v1/models/{model['id']}/comments?before={comments['items'][0]['id']}")).json()
    assert [c["text"] for c in older["items"]] == ["from fan1"]


async def test_expired_uploads_and_stale_temp_files_are_cleaned_up(api: Api, creator: Creator) -> None:
    model = await creator.model()
    version = await creator.version(model["id"])
    data = safetensors_bytes()
    upload = await creator.start(version["id"], data)
    await creator.send(upload, data[:100], 0)
    async with api.node.db.session() as session:
        row = await session.get(Upload, upload["id"])
        row.updated_at = utcnow() - timedelta(hours=api.node.config.storage.upload_expiry_hours + 1)
        session.add(row)
        await session.commit()
    stale = api.node.blobs.new_temp_path()
    stale.write_bytes(b"half an image")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    task = asyncio.create_task(housekeeping(api.node, interval=3600))
    try:
        async def cleaned() -> bool:
            return leftovers(api) == []

        await wait_for(cleaned, timeout=5)
    finally:
        task.cancel()
    assert (await api.call("GET", upload["url"], creator.token)).status == 404


def zip_bomb() -> bytes:
    """A zip whose one member inflates to 256 MiB (about 250 KiB on the wire)."""
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open("weights.bin", "w", force_zip64=True) as member:
            block = b"\0" * (16 * 1024 * 1024)
            for _ in range(16):
                member.write(block)
    return out.getvalue()


async def test_a_zip_bomb_is_refused_as_a_model_file_without_being_opened(api: Api, creator: Creator) -> None:
    model = await creator.model()
    version = await creator.version(model["id"])
    bomb = zip_bomb()
    assert len(bomb) < 2 * 1024 * 1024
    upload = await creator.start(version["id"], bomb, "weights.zip")
    response = await creator.send(upload, bomb, 0)
    body = await response.json()
    assert response.status == 400 and "must be safetensors" in body["detail"]
    assert leftovers(api) == [] and stored_blobs(api) == []
    as_image = await api.call("POST", f"/api/node/v1/versions/{version['id']}/images", creator.token, data=bomb)
    assert as_image.status == 400


async def test_an_image_with_broken_metadata_is_kept_with_what_could_be_read(api: Api, creator: Creator) -> None:
    _model, version, _file = await creator.published()
    broken = 'a cat\nNegative prompt: dog\nSteps: many, Sampler: "unclosed, CFG scale: x7, Seed: 12, Hashes: {"bad json'
    image = await creator.json("POST", f"/api/node/v1/versions/{version['id']}/images", 201,
                               data=png_with_parameters(broken))
    assert image["meta"]["prompt"] == "a cat" and image["meta"]["negativePrompt"] == "dog"
    assert "steps" not in image["meta"] or image["meta"]["steps"] is None
