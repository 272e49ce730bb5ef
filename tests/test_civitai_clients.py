"""Existing Civitai API clients from PyPI, pointed at a real `atrium serve`, work unchanged.

Two client packages are used as their users use them, with only the base URL changed:

- `civitapy` (`CivitAIClient(base_url=...)`, a documented constructor argument): lists and searches
  models, follows cursors, fetches a model, a version and versions by hash (one and in bulk), lists
  images, and downloads a version's file, checking its size and SHA256 against the API's.
- `civitai-model-downloader` (`civitai.api.CivitAIClient(api_url=...)`): lists, fetches a model, a
  version and a version by hash into its dataclasses. Its downloader only accepts https URLs on
  civitai.com, so the file is fetched from the `downloadUrl` the client parsed.
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.catalog_fixtures import A1111_PARAMETERS, png_with_parameters, safetensors_bytes
from tests.conftest import ServeProcess, atrium, http_json, start_serve, wait_healthy

LORA_NAME = "Watercolour Cats"
TRIGGER = "wcat style"
ARCHIVED_NAME = "Ink Owls"


@dataclass
class Published:
    """A served node with one published LoRA (a real safetensors file and an example image)."""

    url: str
    token: str
    model_id: int
    version_id: int
    file_id: int
    image_id: int
    data: bytes
    archived_model_id: int = 0
    archived_version_id: int = 0

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def call(node_url: str, token: str, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
    status, answer = http_json(method, node_url + path, body, token=token)
    assert status == expect, answer
    return answer


def send_bytes(url: str, token: str, method: str, data: bytes, headers: dict[str, str], expect: int) -> Any:
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Authorization": f"Bearer {token}", **headers})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == expect
        return json.loads(response.read())


def upload(node_url: str, token: str, version_id: int, data: bytes, filename: str, file_type: str) -> dict:
    """A resumable upload in two pieces; answers the file record."""
    started = call(node_url, token, "POST", f"/api/node/v1/versions/{version_id}/uploads",
                   {"filename": filename, "size": len(data), "type": file_type}, expect=201)
    half = len(data) // 2
    send_bytes(node_url + started["url"], token, "PATCH", data[:half], {"Upload-Offset": "0"}, 200)
    done = send_bytes(node_url + started["url"], token, "PATCH", data[half:], {"Upload-Offset": str(half)}, 201)
    return done["file"]


def publish(node_url: str, token: str, name: str = LORA_NAME, seed: int = 11) -> Published:
    """Publish a LoRA (a full and a pruned file, and an example image) through the native API."""
    data = safetensors_bytes(seed=seed)
    model = call(node_url, token, "POST", "/api/node/v1/models", {
        "name": name, "type": "LORA", "description": f"<p>Soft {name.lower()}.</p>",
        "tags": ["Cats", "watercolor"] if name == LORA_NAME else ["birds"], "allow_commercial_use": ["Image"]},
        expect=201)
    version = call(node_url, token, "POST", f"/api/node/v1/models/{model['id']}/versions",
                   {"name": "v1.0", "base_model": "SDXL 1.0", "trained_words": [TRIGGER]}, expect=201)
    stem = name.lower().replace(" ", "_")
    file = upload(node_url, token, version["id"], data, f"{stem}.safetensors", "Model")
    pruned = upload(node_url, token, version["id"], safetensors_bytes(seed=seed, tensors=1),
                    f"{stem}_pruned.safetensors", "Pruned Model")
    assert file["primary"] and not pruned["primary"]
    sha = hashlib.sha256(data).hexdigest()
    png = png_with_parameters(A1111_PARAMETERS.format(model_hash="0123456789", lora_hash=sha[:12]))
    image = send_bytes(f"{node_url}/api/node/v1/versions/{version['id']}/images", token, "POST", png,
                       {"Content-Type": "image/png"}, 201)
    call(node_url, token, "POST", f"/api/node/v1/models/{model['id']}/publish")
    return Published(url=node_url, token=token, model_id=model["id"], version_id=version["id"],
                     file_id=file["id"], image_id=image["id"], data=data)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Published]:
    """One served node for the whole module: starting one per test would triple the run time."""
    data_dir = tmp_path_factory.mktemp("clients") / "node"
    assert atrium("init", str(data_dir), "--name", "clients").returncode == 0
    added = atrium("users", "add", "painter", "--role", "creator", data=data_dir)
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip().splitlines()[-1]
    server: ServeProcess = start_serve(data_dir)
    try:
        wait_healthy(server)
        published = publish(server.url, token)
        archived = publish(server.url, token, ARCHIVED_NAME, seed=12)
        call(server.url, token, "PUT", f"/api/node/v1/models/{archived.model_id}/mode", {"mode": "Archived"})
        published.archived_model_id, published.archived_version_id = archived.model_id, archived.version_id
        yield published
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
        server.proc.communicate(timeout=10)


# -- civitapy -----------------------------------------------------------------------------------------


@pytest.fixture
def civitapy_client(node: Published, tmp_path: Path) -> Any:
    from civitapy import CivitAIClient

    # retry_count=1: a wrong answer should fail the test at once, not after backoff.
    return CivitAIClient(base_url=node.url + "/api/v1", download_dir=str(tmp_path), retry_count=1,
                         verify_hash=True)


async def test_civitapy_searches_and_parses_models(node: Published, civitapy_client: Any) -> None:
    from civitapy.models import Model

    found = await civitapy_client.models_list_async(query="watercol", types=["LORA"], base_models=["SDXL 1.0"])
    [item] = found["items"]
    model = Model(**item)
    assert (model.id, model.name, model.type) == (node.model_id, LORA_NAME, "LORA")
    assert model.creator is not None and model.creator.username == "painter"
    assert model.tags == ["cats", "watercolor"]
    [version] = model.model_versions
    assert version.id == node.version_id and version.base_model == "SDXL 1.0"
    file, pruned = version.files
    assert file.primary and file.size_kb * 1024 == len(node.data)
    assert not pruned.primary and pruned.type == "Pruned Model" and pruned.metadata.size == "pruned"
    assert file.hashes is not None and file.hashes["SHA256"] == node.sha256.upper()
    assert file.metadata is not None and file.metadata.format == "SafeTensor"
    none = await civitapy_client.models_list_async(query="watercolour dogs")
    assert none["items"] == []


async def test_civitapy_follows_cursors_through_every_model(node: Published, civitapy_client: Any) -> None:
    names = [m.name async for m in civitapy_client.models_list_paginated_async(limit=1, username="painter",
                                                                                sort="Oldest")]
    assert names == [LORA_NAME, ARCHIVED_NAME]


async def test_civitapy_reads_page_metadata_of_models_creators_and_tags(node: Published,
                                                                        civitapy_client: Any) -> None:
    first = await civitapy_client.models_list_async(limit=1, page=1, sort="Oldest")
    assert first["metadata"]["totalItems"] == 2 and first["metadata"]["nextPage"]
    last = await civitapy_client.models_list_async(limit=1, page=2, sort="Oldest")
    assert [m["name"] for m in last["items"]] == [ARCHIVED_NAME] and "nextPage" not in last["metadata"]
    creators = await civitapy_client.creators_list_async(query="paint")
    assert [(c["username"], c["modelCount"]) for c in creators["items"]] == [("painter", 2)]
    tags = await civitapy_client.tags_list_async(limit=1)
    assert len(tags["items"]) == 1 and tags["metadata"]["nextPage"].endswith("page=2")
    rest = await civitapy_client.tags_list_async(limit=2, page=2)
    assert [t["name"] for t in rest["items"]] == ["watercolor"] and "nextPage" not in rest["metadata"]


async def test_an_archived_model_lists_no_files_and_civitapy_downloads_nothing(node: Published,
                                                                              civitapy_client: Any) -> None:
    from civitapy.models import Model

    model = Model(**await civitapy_client.models_get_async(node.archived_model_id))
    assert model.mode == "Archived" and model.model_versions[0].files == []
    assert await civitapy_client.download_model_version_async(node.archived_version_id) == []
    with pytest.raises(urllib.error.HTTPError) as gone:
        urllib.request.urlopen(f"{node.url}/api/download/models/{node.archived_version_id}", timeout=10)
    assert gone.value.code == 410


async def test_primary_file_only_drops_the_other_files(node: Published, civitapy_client: Any) -> None:
    # civitapy's models_list only sends primaryFileOnly when limit is 0, so this uses its plain get().
    listing = await civitapy_client.get("/models", params={"primaryFileOnly": "true", "query": "watercolour"})
    [version] = listing["items"][0]["modelVersions"]
    assert [f["id"] for f in version["files"]] == [node.file_id]


async def test_civitapy_fetches_a_model_and_a_version(node: Published, civitapy_client: Any) -> None:
    from civitapy.models import Model, ModelVersion

    model = Model(**await civitapy_client.models_get_async(node.model_id))
    assert model.model_versions[0].published_at is not None
    raw = await civitapy_client.model_versions_get_async(node.version_id)
    version = ModelVersion(**raw)
    # civitapy declares trained_words without its camelCase alias, so it reads the raw field.
    assert version.model_id == node.model_id and raw["trainedWords"] == [TRIGGER]
    assert version.air == f"urn:air:sdxl:lora:clients:{node.model_id}@{node.version_id}"
    assert version.model is not None and version.model["name"] == LORA_NAME
    assert version.download_url == f"{node.url}/api/download/models/{node.version_id}"
    [image] = version.images
    assert image["url"] == f"{node.url}/api/node/v1/images/{node.image_id}/file"


async def test_civitapy_finds_versions_by_hash(node: Published, civitapy_client: Any) -> None:
    one = await civitapy_client.model_versions_by_hash_async(node.sha256[:10])  # AutoV2, lower case
    assert one is not None and one["id"] == node.version_id
    assert await civitapy_client.model_versions_by_hash_async("0" * 64) is None
    bulk = await civitapy_client.model_versions_by_hash_bulk_async([node.sha256.upper(), "f" * 64])
    assert [v["id"] for v in bulk] == [node.version_id]


async def test_civitapy_lists_the_example_images_with_their_metadata(node: Published, civitapy_client: Any) -> None:
    listing = await civitapy_client.images_list_async(model_version_id=node.version_id, with_meta=True,
                                                      sort="Newest")
    [image] = listing["items"]
    assert image["id"] == node.image_id and image["username"] == "painter"
    assert image["baseModel"] == "SDXL 1.0" and image["meta"]["steps"] == 20
    assert image["meta"]["resources"][1] == {"type": "lora", "name": "catstyle", "hash": node.sha256[:12],
                                             "weight": 0.8}


async def test_civitapy_downloads_the_file_and_checks_its_sha256(node: Published, civitapy_client: Any,
                                                                 tmp_path: Path) -> None:
    # verify_hash=True: civitapy compares each downloaded file with the SHA256 the API gave for it.
    path, pruned_path = await civitapy_client.download_model_version_async(node.version_id)
    assert Path(path).read_bytes() == node.data
    assert Path(path).relative_to(tmp_path).parts == (
        "LORA", f"{node.model_id}_Watercolour_Cats_painter", "SDXL_1.0", "watercolour_cats.safetensors")
    assert Path(pruned_path).name == "watercolour_cats_pruned.safetensors"
    assert Path(pruned_path).read_bytes() == safetensors_bytes(seed=11, tensors=1)


async def test_civitapy_reports_a_missing_version_as_not_found(node: Published, civitapy_client: Any) -> None:
    from civitapy.errors import CivitAINotFoundError

    with pytest.raises(CivitAINotFoundError):
        await civitapy_client.model_versions_get_async(999_999)


# -- civitai-model-downloader ----------------------------------------------------------------------


@pytest.fixture
def downloader_api(node: Published, monkeypatch: pytest.MonkeyPatch) -> Any:
    # Importing the package asks for a token (on the terminal, then saved under ~/.civitai) unless
    # CIVITAI_API_TOKEN is set; the API client must be imported after `civitai_downloader`
    # (importing `civitai.api` first hits a circular import inside the package).
    monkeypatch.setenv("CIVITAI_API_TOKEN", node.token)
    import civitai_downloader  # noqa: F401
    from civitai.api import CivitAIClient

    return CivitAIClient(api_token=node.token, api_url=node.url + "/api/v1")


def test_civitai_model_downloader_lists_and_fetches_models(node: Published, downloader_api: Any) -> None:
    from civitai.api_class import ModelType, Period, Sort

    listing = downloader_api.list_models(query="cats", types=[ModelType.LORA], sort=Sort.NEWEST,
                                         period=Period.ALLTIME, limit=10)
    assert [m.id for m in listing.items] == [node.model_id]
    model = downloader_api.get_model(node.model_id)
    assert model.name == LORA_NAME and model.creator["username"] == "painter"
    [version] = model.modelVersions
    file, pruned = version.files
    assert file.hashes["SHA256"] == node.sha256.upper() and file.primary and not pruned.primary


def test_civitai_model_downloader_fetches_versions_by_id_and_hash(node: Published, downloader_api: Any) -> None:
    version = downloader_api.get_model_version(node.version_id)
    assert version.modelId == node.model_id and version.trainedWords == [TRIGGER]
    assert version.model["name"] == LORA_NAME
    by_hash = downloader_api.get_model_version_by_hash(node.sha256)
    assert by_hash.id == node.version_id
    # Its Downloader refuses URLs that are not https, so the bytes come from the downloadUrl it parsed.
    for file in by_hash.files:
        with urllib.request.urlopen(file.downloadUrl, timeout=10) as response:
            body = response.read()
        assert hashlib.sha256(body).hexdigest().upper() == file.hashes["SHA256"]
        assert len(body) == file.sizeKB * 1024
