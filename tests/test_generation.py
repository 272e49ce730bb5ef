"""Generation: requests, samplers, LoRAs, metadata and reproducibility, through the HTTP API and the
job runner, with a tiny pipeline of the digits world's architecture (tests/generation_fixtures.py)."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlmodel import select
from yarl import URL

import plugins.generation as generation_plugin
from node.app import create_app
from node.core.catalog import VersionChanges, version_air
from node.core.config import Config
from node.core.db import Database
from node.core.hookspecs import hookimpl
from node.core.imagemeta import parse_a1111
from node.core.moderation import GenerationAdapter, ImageLabel, Violation
from node.core.plugins import PluginHost
from node.core.tables import Image, ImageResource, Job, ModelFile, Role
from node.core.vocabulary import ModelStatus
from plugins.generation.metadata import CHUNK
from tests.catalog_fixtures import safetensors_bytes
from tests.conftest import Api
from tests.generation_fixtures import digits_checkpoint, lora_files

STEPS = 4


@dataclass
class World:
    """The digits checkpoint (or its stand-in) and two LoRAs trained on it, built once per module."""

    checkpoint: Path
    config: Path | None  # None: the digits world's own folder
    kohya: Path
    diffusers: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    folder = tmp_path_factory.mktemp("world")
    checkpoint, config, pipe = digits_checkpoint(folder)
    kohya, diffusers_path = lora_files(pipe, folder / "loras")
    return World(checkpoint, config, kohya, diffusers_path)


@dataclass
class Catalog:
    """What `published` put in the catalog: AIRs and version ids, and a creator's token."""

    api: Api
    token: str
    checkpoint: str
    checkpoint_version: int
    kohya: str
    kohya_version: int
    diffusers: str
    diffusers_version: int
    sdxl_lora: str


async def publish(node: Any, owner: Any, *, name: str, type: str, base_model: str, filename: str,
                  data: bytes) -> tuple[str, int]:
    model = await node.catalog.create_model(owner, name=name, type=type)
    version = await node.catalog.create_version(owner, model.id, VersionChanges(name="v1", base_model=base_model))
    upload = await node.ingest.start(owner, version.id, filename=filename, size=len(data))

    async def pieces() -> AsyncIterator[bytes]:
        yield data

    await node.ingest.append(owner, upload.id, 0, pieces())
    await node.catalog.set_status(owner, model.id, ModelStatus.PUBLISHED)
    version, model = await node.catalog.visible_version(owner, version.id)
    return version_air(node.name, model, version), version.id


class Recorder:
    """A throwaway moderation plugin: refuses prompts with a word, flags images, adds adapters."""

    def __init__(self) -> None:
        self.refuse_word: str | None = None
        self.flag_images = False
        self.adapter: GenerationAdapter | None = None
        self.prompts: list[tuple[str, str, Any]] = []
        self.images: list[tuple[Any, dict[str, Any], Any]] = []

    @hookimpl
    def atrium_check_prompt(self, prompt: str, negative: str, context: Any) -> list[Violation]:
        self.prompts.append((prompt, negative, context))
        if self.refuse_word and self.refuse_word in prompt:
            return [Violation("no_" + self.refuse_word, f"prompts may not mention {self.refuse_word}")]
        return []

    @hookimpl
    async def atrium_check_image(self, image: Any, metadata: dict[str, Any], context: Any) -> list[Any]:
        self.images.append((image, metadata, context))
        if self.flag_images:
            return [Violation("no_digits", "this node shows no digits")]
        return [ImageLabel("digit", 0.5)]

    @hookimpl
    def atrium_generation_adapters(self, request: Any, register: Any) -> None:
        if self.adapter is not None:
            register(self.adapter)


@pytest.fixture
async def gen(config: Config, aiohttp_client: Any, world: World) -> tuple[Catalog, Recorder]:
    """The app with the generation plugin and a recording moderation plugin, on each database, with a
    tiny checkpoint and two LoRAs (kohya and diffusers format) published, and an SDXL LoRA."""
    return await make_gen(config, aiohttp_client, world)


@pytest.fixture
async def sqlite_migrated(sqlite_config: Config) -> Config:
    db = Database.from_config(sqlite_config)
    try:
        await db.upgrade()
    finally:
        await db.close()
    return sqlite_config


@pytest.fixture
async def gen_sqlite(sqlite_migrated: Config, aiohttp_client: Any, world: World) -> tuple[Catalog, Recorder]:
    """`gen` on SQLite only, for tests whose subject does not touch the database."""
    return await make_gen(sqlite_migrated, aiohttp_client, world)


async def make_gen(config: Config, aiohttp_client: Any, world: World) -> tuple[Catalog, Recorder]:
    if world.config is not None:
        config.plugin_tables["generation"] = {"base_model_configs": [f"Digits={world.config}"]}
    recorder = Recorder()
    host = PluginHost([], available={})
    host.register(generation_plugin, name="generation")
    host.register(recorder, name="recorder")
    app = create_app(config, plugins=host)
    client = await aiohttp_client(app)
    api = Api(client=client, app=app)
    node = api.node
    creator = await node.accounts.create_user("maker", role=Role.CREATOR)
    checkpoint, checkpoint_version = await publish(node, creator, name="Digits tiny", type="Checkpoint",
                                                   base_model="Digits", filename=world.checkpoint.name,
                                                   data=world.checkpoint.read_bytes())
    kohya, kohya_version = await publish(node, creator, name="Digit style K", type="LORA", base_model="Digits",
                                         filename=world.kohya.name, data=world.kohya.read_bytes())
    diffusers_air, diffusers_version = await publish(node, creator, name="Digit style D", type="LORA",
                                                     base_model="Digits", filename=world.diffusers.name,
                                                     data=world.diffusers.read_bytes())
    sdxl_lora, _ = await publish(node, creator, name="Big style", type="LORA", base_model="SDXL 1.0",
                                 filename="big.safetensors", data=safetensors_bytes(seed=3))
    token = await api.user("painter")
    return Catalog(api, token, checkpoint, checkpoint_version, kohya, kohya_version, diffusers_air,
                   diffusers_version, sdxl_lora), recorder


async def submit(cat: Catalog, body: dict[str, Any]) -> dict[str, Any]:
    response = await cat.api.call("POST", "/api/node/v1/generate", cat.token, json=body)
    assert response.status == 202, await response.text()
    job = await response.json()
    finished = await cat.api.node.jobs.wait(job["id"], timeout=120)
    response = await cat.api.call("GET", f"/api/node/v1/jobs/{finished.id}", cat.token)
    return await response.json()


async def png(cat: Catalog, job: dict[str, Any], index: int = 0) -> bytes:
    response = await cat.api.call("GET", URL(job["files"][index]["url"]).path, cat.token)
    assert response.status == 200, await response.text()
    return await response.read()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(PILImage.open(io.BytesIO(data)).convert("RGB"))


def text_chunks(data: bytes) -> dict[str, str]:
    image = PILImage.open(io.BytesIO(data))
    image.load()
    return dict(image.text)  # type: ignore[attr-defined]


async def test_generation_through_the_api_with_loras_stored_linked_reproducible(gen: Any, world: World) -> None:
    cat, recorder = gen
    body = {"model": cat.checkpoint, "prompt": "a handwritten digit seven <lora:digitstyle_diffusers:0.5>",
            "negative": "blurry", "loras": [{"air": cat.kohya, "weight": 0.8}], "steps": STEPS, "cfg": 7.5,
            "seed": 1234, "sampler": "Euler a", "batch": 2, "nsfw_level": 2}
    job = await submit(cat, body)
    assert job["status"] == "succeeded", job
    images = job["result"]["images"]
    assert [i["seed"] for i in images] == [1234, 1235]
    assert [f["name"] for f in job["files"]] == ["image-0.png", "image-1.png"]
    data = await png(cat, job)
    chunks = text_chunks(data)
    meta = parse_a1111(chunks["parameters"])
    # The catalog's own parser reads back exactly what was used.
    assert meta.prompt == ("a handwritten digit seven <lora:digitstyle_diffusers:0.5> "
                           "<lora:digitstyle_kohya:0.8>")
    assert (meta.negative_prompt, meta.steps, meta.sampler, meta.cfg_scale, meta.seed) == \
        ("blurry", STEPS, "Euler a", 7.5, 1234)
    assert (meta.width, meta.height, meta.model) == (16, 16, world.checkpoint.stem)
    node = cat.api.node
    async with node.db.read_session() as session:
        files = {f.version_id: f for f in (await session.exec(select(ModelFile))).all()}
    assert meta.model_hash == files[cat.checkpoint_version].sha256[:10]
    assert meta.lora_hashes == {"digitstyle_diffusers": files[cat.diffusers_version].autov3[:12],
                                "digitstyle_kohya": files[cat.kohya_version].autov3[:12]}
    assert meta.loras == [("digitstyle_diffusers", 0.5), ("digitstyle_kohya", 0.8)]
    resources = json.loads(chunks[CHUNK])
    assert resources["model"] == cat.checkpoint and resources["job"] == job["id"]
    assert {(lora["air"], lora["weight"]) for lora in resources["loras"]} == {(cat.kohya, 0.8), (cat.diffusers, 0.5)}

    # Stored in the catalog as the user's images, linked to the checkpoint and both LoRAs by hash.
    image_id = images[0]["image_id"]
    async with node.db.read_session() as session:
        stored = await session.get(Image, image_id)
        links = (await session.exec(select(ImageResource).where(ImageResource.image_id == image_id))).all()
    assert stored is not None and stored.owner_id == (await node.accounts.get_user("painter")).id
    assert stored.nsfw_level == 2  # the level the request asked to store at
    assert {link.version_id for link in links} == {cat.checkpoint_version, cat.kohya_version, cat.diffusers_version}
    response = await cat.api.call("GET", f"/api/node/v1/images/{image_id}/file")
    assert await response.read() == data
    assert images[0]["labels"] == [{"name": "digit", "score": 0.5}]

    # Regenerating from the parsed metadata alone gives the same pixels.
    again = await submit(cat, {"model": resources["model"], "prompt": meta.prompt, "negative": meta.negative_prompt,
                               "steps": meta.steps, "cfg": meta.cfg_scale, "seed": meta.seed,
                               "sampler": meta.sampler, "width": meta.width, "height": meta.height})
    assert again["status"] == "succeeded", again
    assert np.array_equal(pixels(await png(cat, again)), pixels(data))
    # The second image of the batch is the image of seed + 1 on its own.
    second = await submit(cat, {**body, "seed": 1235, "batch": 1})
    assert np.array_equal(pixels(await png(cat, second)), pixels(await png(cat, job, 1)))
    # And without the LoRAs the pixels change.
    plain = await submit(cat, {"model": cat.checkpoint, "prompt": "a handwritten digit seven", "negative": "blurry",
                               "steps": STEPS, "cfg": 7.5, "seed": 1234, "sampler": "Euler a"})
    assert not np.array_equal(pixels(await png(cat, plain)), pixels(data))


async def jobs_in_db(cat: Catalog) -> int:
    async with cat.api.node.db.read_session() as session:
        return len((await session.exec(select(Job))).all())


async def test_a_prompt_the_moderation_hook_rejects_never_runs(gen: Any) -> None:
    cat, recorder = gen
    recorder.refuse_word = "seven"
    response = await cat.api.call("POST", "/api/node/v1/generate", cat.token,
                                  json={"model": cat.checkpoint, "prompt": "a handwritten digit seven",
                                        "negative": "eight", "steps": STEPS})
    assert response.status == 400
    body = await response.json()
    assert body["error"] == "policy_violation"
    assert "no_seven: prompts may not mention seven" in body["detail"]
    assert await jobs_in_db(cat) == 0
    prompt, negative, context = recorder.prompts[-1]
    assert (prompt, negative, context.purpose, context.user.username) == \
        ("a handwritten digit seven", "eight", "generate", "painter")
    assert context.request["nsfw_level"] == 1 and context.request["model"] == cat.checkpoint


async def test_an_image_the_check_fails_is_not_stored_and_the_job_fails(gen: Any) -> None:
    cat, recorder = gen
    recorder.flag_images = True
    job = await submit(cat, {"model": cat.checkpoint, "prompt": "three", "steps": STEPS, "seed": 5})
    assert job["status"] == "failed"
    assert "no_digits: this node shows no digits" in job["error"]
    assert job["files"] == []
    async with cat.api.node.db.read_session() as session:
        assert (await session.exec(select(Image))).all() == []
    image, metadata, context = recorder.images[-1]
    assert image.size == (16, 16) and "Seed: 5" in metadata["parameters"] and context.job_id == job["id"]


async def test_an_adapter_from_the_hook_changes_the_image_and_is_listed_apart(gen: Any, world: World) -> None:
    cat, recorder = gen
    body = {"model": cat.checkpoint, "prompt": "four", "steps": STEPS, "seed": 9}
    plain = await submit(cat, body)
    node = cat.api.node
    digest = await _put_blob(node, world.kohya.read_bytes())
    recorder.adapter = GenerationAdapter("membrane", digest, 1.5)
    adapted = await submit(cat, body)
    assert adapted["status"] == "succeeded", adapted
    assert adapted["result"]["adapters"] == [{"name": "membrane", "weight": 1.5}]
    assert "membrane" not in adapted["result"]["images"][0]["parameters"]
    assert not np.array_equal(pixels(await png(cat, plain)), pixels(await png(cat, adapted)))
    recorder.adapter = GenerationAdapter("missing", "0" * 64, 1.0)
    response = await cat.api.call("POST", "/api/node/v1/generate", cat.token, json=body)
    assert response.status == 400 and "not in the blob store" in (await response.json())["detail"]


async def _put_blob(node: Any, data: bytes) -> str:
    import hashlib

    digest = hashlib.sha256(data).hexdigest()
    temp = node.blobs.new_temp_path()
    temp.write_bytes(data)
    node.blobs.commit(temp, digest)
    return digest


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M Karras", "DPM++ SDE Karras", "DDIM", "UniPC"])
async def test_samplers_by_their_a1111_names_are_recorded_and_reproducible(gen_sqlite: Any, sampler: str) -> None:
    # Sampler behaviour does not depend on the database: SQLite only (the other tests run on both).
    cat, _ = gen_sqlite
    body = {"model": cat.checkpoint, "prompt": "five", "steps": STEPS, "seed": 77, "sampler": sampler.lower()}
    first, second = await submit(cat, body), await submit(cat, body)
    assert first["status"] == "succeeded", first
    assert parse_a1111(first["result"]["images"][0]["parameters"]).sampler == sampler
    assert np.array_equal(pixels(await png(cat, first)), pixels(await png(cat, second)))


async def test_without_a_sampler_the_checkpoint_s_own_scheduler_runs_and_is_named(gen: Any) -> None:
    cat, _ = gen
    job = await submit(cat, {"model": cat.checkpoint, "prompt": "six", "steps": STEPS, "seed": 3, "clip_skip": 2})
    meta = parse_a1111(job["result"]["images"][0]["parameters"])
    assert (meta.sampler, meta.clip_skip, meta.steps) == ("DDIM", 2, STEPS)


async def test_image_to_image_from_a_catalog_image(gen: Any) -> None:
    cat, _ = gen
    base = await submit(cat, {"model": cat.checkpoint, "prompt": "eight", "steps": STEPS, "seed": 1})
    job = await submit(cat, {"model": cat.checkpoint, "prompt": "nine", "steps": STEPS, "seed": 1,
                             "init_image": base["result"]["images"][0]["image_id"], "denoising_strength": 0.5})
    assert job["status"] == "succeeded", job
    meta = parse_a1111(job["result"]["images"][0]["parameters"])
    assert (meta.denoising_strength, meta.width, meta.height) == (0.5, 16, 16)


BAD_REQUESTS = [
    ({"model": "urn:air:sd1:checkpoint:atrium:999@999"}, 404, "no model version 999"),
    ({"model": "urn:air:sd1:checkpoint:elsewhere:1@1"}, 404, "names a resource on 'elsewhere'"),
    ({"model": "not an air"}, 400, "model:"),
    ({"steps": 10000}, 400, "steps: 10000 is out of range"),
    ({"width": 4096, "height": 4096}, 400, "width: 4096 is out of range"),
    ({"width": 20}, 400, "width: 20 is not a multiple of 8"),
    ({"seed": "abc"}, 400, "seed: expected a whole number"),
    ({"cfg": "high"}, 400, "cfg: expected a number"),
    ({"sampler": "Warp drive"}, 400, "sampler: 'Warp drive' is not a sampler"),
    ({"prompt": 7}, 400, "prompt: expected text"),
    ({"colour": "red"}, 400, "colour: unknown field"),
    ({"loras": [{"air": "x", "weight": 1}]}, 400, "loras.0.air"),
    ({"prompt": "a <lora:nobody:0.5>"}, 400, "no published LoRA on this node has a file or model named 'nobody'"),
    ({"prompt": "a <lora:digitstyle_kohya:lots>"}, 400, "the weight must be a number"),
    ({"denoising_strength": 0.5}, 400, "only for image-to-image"),
]


async def test_bad_requests_are_refused_with_a_message_and_queue_nothing(gen: Any) -> None:
    cat, _ = gen
    for change, status, words in BAD_REQUESTS:
        body = {"model": cat.checkpoint, "prompt": "one", "steps": STEPS, **change}
        response = await cat.api.call("POST", "/api/node/v1/generate", cat.token, json=body)
        assert response.status == status, (change, await response.text())
        assert words in (await response.json())["detail"], change
    assert await jobs_in_db(cat) == 0


async def test_resources_of_the_wrong_kind_or_family_are_refused(gen: Any) -> None:
    cat, _ = gen
    cases = [({"model": cat.kohya}, "is a LORA, not a Checkpoint"),
             ({"loras": [{"air": cat.checkpoint, "weight": 1}]}, "is a Checkpoint, not a LoRA"),
             ({"loras": [{"air": cat.sdxl_lora, "weight": 1}]}, "is a LoRA for 'SDXL 1.0'; the checkpoint is Digits"),
             ({"loras": [{"air": cat.kohya, "weight": 1}], "prompt": "a <lora:digitstyle_kohya:1>"}, "is given twice")]
    for change, words in cases:
        response = await cat.api.call("POST", "/api/node/v1/generate", cat.token,
                                      json={"model": cat.checkpoint, "prompt": "one", **change})
        assert response.status == 400, change
        assert words in (await response.json())["detail"], change
    response = await cat.api.call("POST", "/api/node/v1/generate", None, json={"model": cat.checkpoint, "prompt": "x"})
    assert response.status == 401
    response = await cat.api.call("POST", "/api/node/v1/generate", cat.token, data=b"[1, 2]")
    assert response.status == 400
    assert await jobs_in_db(cat) == 0


async def test_a_cancelled_generation_stops_between_steps_and_the_pipeline_serves_the_next(gen: Any) -> None:
    from tests.conftest import wait_for

    cat, _ = gen
    node = cat.api.node
    response = await cat.api.call("POST", "/api/node/v1/generate", cat.token,
                                  json={"model": cat.checkpoint, "prompt": "zero", "steps": 100, "batch": 8})
    job_id = (await response.json())["id"]

    async def sampling() -> bool:
        job = await node.jobs.load(job_id)
        return job.progress > 0 and "step" in (job.message or "")

    await wait_for(sampling, timeout=120)
    response = await cat.api.call("POST", f"/api/node/v1/jobs/{job_id}/cancel", cat.token)
    assert response.status == 200, await response.text()
    cancelled = await node.jobs.wait(job_id, timeout=120)
    assert cancelled.status == "cancelled" and cancelled.progress < 1
    after = await submit(cat, {"model": cat.checkpoint, "prompt": "zero", "steps": STEPS, "seed": 2})
    assert after["status"] == "succeeded", after


async def test_a_remote_worker_generates_what_the_node_prepared(sqlite_migrated: Config, aiohttp_client: Any,
                                                                world: World) -> None:
    # The worker talks HTTP only; the node's database is covered by the other tests: SQLite only.
    import asyncio
    import subprocess
    import sys

    config = sqlite_migrated
    config.jobs.workers = 0  # only the remote worker runs jobs
    cat, _ = await make_gen(config, aiohttp_client, world)
    issued = await cat.api.node.jobs.worker_tokens.add("cpu-box")
    url = str(cat.api.client.make_url("")).rstrip("/")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "node", "worker", "--node", url, "--token", issued.secret, "--plugins", "generation",
        "--kinds", "generate", "--device", "cpu", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        body = {"model": cat.checkpoint, "prompt": "a handwritten digit one", "loras": [{"air": cat.kohya, "weight": 0.6}],
                "steps": STEPS, "seed": 11, "sampler": "Euler a"}
        first, second = await submit(cat, body), await submit(cat, body)
        assert first["status"] == "succeeded", first
        assert (await cat.api.node.jobs.load(first["id"])).worker.startswith("cpu-box/")
        assert np.array_equal(pixels(await png(cat, first)), pixels(await png(cat, second)))
        meta = parse_a1111(text_chunks(await png(cat, first))["parameters"])
        assert (meta.seed, meta.sampler, meta.loras) == (11, "Euler a", [("digitstyle_kohya", 0.6)])
        assert first["result"]["images"][0]["image_id"] is not None
    finally:
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.communicate(), timeout=30)


async def test_the_digits_model_draws_the_digit_the_prompt_asks_for_through_the_node(gen: Any) -> None:
    """The real digits world through the whole node (route, job, pipeline, PNG): its classifier reads the
    digit each prompt asks for."""
    from PIL import Image as PILImage

    from worlds.digits.judge import classify
    from worlds.digits.prompts import DIGIT_WORDS

    cat, _ = gen
    images, wanted = [], []
    for digit, word in enumerate(DIGIT_WORDS):
        job = await submit(cat, {"model": cat.checkpoint, "prompt": f"a handwritten digit {word}", "steps": 20,
                                 "cfg": 10, "seed": 100 + 10 * digit, "batch": 3})
        assert job["status"] == "succeeded", job
        for index in range(3):
            images.append(PILImage.open(io.BytesIO(await png(cat, job, index))).convert("RGB"))
            wanted.append(digit)
    read = classify(images)
    accuracy = float((read == np.array(wanted)).mean())
    print(f"digits read as asked through the node: {accuracy:.0%} of {len(wanted)} "
          f"({', '.join(f'{w}->{r}' for w, r in zip(wanted, read) if w != r) or 'no misses'})")
    assert accuracy >= 0.9
