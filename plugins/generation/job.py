"""The `generate` job kind: prepare (on the node), run (on any worker), finish (on the node).

prepare() checks the request, resolves its AIRs and tags to catalog files, asks the moderation hooks
(`atrium_check_prompt`, then `atrium_generation_adapters`) and returns the params the job keeps: every
file the run needs is named by SHA-256 in params["blobs"], so a remote worker can fetch them. run()
uses only its JobContext. finish() asks `atrium_check_image` about each image, then stores the images
in the catalog as the owner's, through the catalog's own image intake (which parses their metadata and
links them to the checkpoint and LoRA versions by hash).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from typing import Any

from sqlmodel import select

from node.core.errors import ConfigError, InvalidInput
from node.core.jobs import JobContext, JobKind, JobOutput, OutputFile
from node.core.moderation import CheckContext, GenerationAdapter, PolicyViolation, collect_violations
from node.core.tables import Image, User
from plugins.generation.checkpoints import Family, default_size, parse_base_model_configs
from plugins.generation.engine import generate
from plugins.generation.pipelines import CACHE_KEY, PipelineCache
from plugins.generation.prompts import LoraTag, lora_tags, strip_tags, with_tags
from plugins.generation.requests import SIDE_STEP, GenerationRequest, parse_request
from plugins.generation.resolve import Resolved, resolve_checkpoint, resolve_init_image, resolve_lora, resolve_tag
from plugins.generation.samplers import native_sampler_name
from plugins.generation.settings import GenerationSettings

KIND = "generate"
# The node's settings: set by atrium_startup; a remote worker that never starts a node uses the defaults.
state: dict[str, Any] = {"settings": GenerationSettings(), "base_models": {}}


def configure(settings: GenerationSettings) -> None:
    """Use these settings from now on (atrium_startup calls it)."""
    state["settings"] = settings
    state["base_models"] = parse_base_model_configs(settings.base_model_configs)


async def prepare(node: Any, user: User, body: dict[str, Any]) -> dict[str, Any]:
    """Validate a generation request and resolve it into a job's params (see the module docstring)."""
    settings: GenerationSettings = state["settings"]
    extra: dict[str, str] = state["base_models"]
    request = parse_request(body, settings)
    checkpoint, family = await resolve_checkpoint(node, user, request.model, extra)
    try:
        side = await asyncio.to_thread(default_size, family)
        sampler = request.sampler or await asyncio.to_thread(_native_sampler, family)
    except ConfigError as exc:  # this installation lacks the family's folder: the request cannot be served
        raise InvalidInput(f"model: {exc.detail}") from None

    loras: list[tuple[Resolved, float, str, bool]] = []  # (version, weight, name, from a tag)
    tags = lora_tags(request.prompt)
    if len(tags) + len(request.loras) > settings.max_loras:
        raise InvalidInput(f"loras: {len(tags) + len(request.loras)} LoRAs (tags and AIRs together); this node "
                           f"stacks at most {settings.max_loras}")
    for tag in tags:
        loras.append((await resolve_tag(node, user, tag.name, family, extra), tag.weight, tag.name, True))
    for i, choice in enumerate(request.loras):
        found = await resolve_lora(node, user, choice.air, family, extra, f"loras.{i}")
        loras.append((found, choice.weight, found.name, False))
    seen: dict[int, str] = {}
    names: set[str] = set()
    for found, _weight, name, _tag in loras:
        if found.version.id in seen:
            raise InvalidInput(f"LoRA {found.air} is given twice ({seen[found.version.id]} and {name}); give it once "
                               "with the weight you want")
        seen[found.version.id] = name  # type: ignore[index]
        if name.lower() in names:
            raise InvalidInput(f"two different LoRAs would both be recorded as {name!r}; give one of them by a "
                               "<lora:...> tag with its model's name instead")
        names.add(name.lower())

    blobs = [checkpoint.file.sha256] + [found.file.sha256 for found, *_ in loras]
    width, height = request.width, request.height
    init_sha = None
    if request.init_image is not None:
        image = await resolve_init_image(node, user, request.init_image)
        init_sha = image.sha256
        blobs.append(init_sha)
        width = width or max(SIDE_STEP, image.width // SIDE_STEP * SIDE_STEP)
        height = height or max(SIDE_STEP, image.height // SIDE_STEP * SIDE_STEP)
    width, height = width or side, height or side
    if width * height > settings.max_pixels or max(width, height) > settings.max_side:
        raise InvalidInput(f"size: {width}x{height} is more than this node makes (at most {settings.max_side} "
                           f"pixels a side and {settings.max_pixels:,} pixels in all)")
    clip_skip = request.clip_skip or checkpoint.version.clip_skip

    context = CheckContext(user=user, purpose=KIND, request=request.as_json())
    violations, _labels = collect_violations(
        await node.plugins.call("atrium_check_prompt", prompt=request.prompt, negative=request.negative,
                                context=context), "atrium_check_prompt")
    if violations:
        raise PolicyViolation(violations)
    adapters = await _adapters(node, request)
    blobs += [adapter.sha256 for adapter in adapters]

    recorded = with_tags(request.prompt, [LoraTag(name, weight) for _f, weight, name, tag in loras if not tag])
    return {
        "model": {"air": checkpoint.air, "sha256": checkpoint.file.sha256, "autov2": checkpoint.file.sha256[:10],
                  "name": checkpoint.name, "version_id": checkpoint.version.id, "family": asdict(family)},
        "loras": [{"air": found.air, "sha256": found.file.sha256, "name": name, "weight": weight,
                   "hash": (found.file.autov3 or "")[:12], "version_id": found.version.id}
                  for found, weight, name, _tag in loras],
        "adapters": [{"name": a.name, "sha256": a.sha256, "weight": a.weight} for a in adapters],
        "prompt": recorded, "text": strip_tags(request.prompt), "negative": request.negative,
        "steps": request.steps, "cfg": request.cfg, "seed": request.seed, "batch": request.batch,
        "width": width, "height": height, "sampler": sampler, "clip_skip": clip_skip,
        "init_image": init_sha, "init_image_id": request.init_image,
        "denoising_strength": request.denoising_strength, "nsfw_level": request.nsfw_level,
        "blobs": list(dict.fromkeys(blobs)),
    }


def _native_sampler(family: Family) -> str:
    path = family.config_dir() / "scheduler" / "scheduler_config.json"
    return native_sampler_name(json.loads(path.read_text()))


async def _adapters(node: Any, request: GenerationRequest) -> list[GenerationAdapter]:
    adapters: list[GenerationAdapter] = []

    def register(adapter: GenerationAdapter) -> None:
        if not isinstance(adapter, GenerationAdapter):
            raise TypeError(f"atrium_generation_adapters registered {type(adapter).__name__}, not a GenerationAdapter")
        if not node.blobs.exists(adapter.sha256):
            raise InvalidInput(f"adapter {adapter.name!r}: its file {adapter.sha256} is not in the blob store")
        adapters.append(adapter)

    await node.plugins.call("atrium_generation_adapters", request=request, register=register)
    return adapters


async def run(ctx: JobContext) -> JobOutput:
    """Fetch the job's files, sample in a worker thread, return the PNGs and what they were made with."""
    params = ctx.params
    paths = {sha: await ctx.fetch_blob(sha) for sha in params["blobs"]}
    settings: GenerationSettings = state["settings"]
    cache = ctx.cache.get(CACHE_KEY)
    if cache is None:
        cache = ctx.cache[CACHE_KEY] = PipelineCache(settings.cache_mb * 1024 * 1024)
    images = await asyncio.to_thread(generate, params, paths, device=ctx.device, gpu_dtype=settings.gpu_dtype,
                                     cache=cache, workdir=ctx.workdir, job_id=ctx.job_id, progress=ctx.progress,
                                     cancelled=ctx.cancelled)
    return JobOutput(
        result={"images": [{"name": image.name, "seed": image.seed, "parameters": image.parameters}
                           for image in images], **_resources(params)},
        files=[OutputFile(image.name, image.path, "image/png") for image in images])


def _resources(params: dict[str, Any]) -> dict[str, Any]:
    return {"model": params["model"]["air"],
            "loras": [{"air": lora["air"], "name": lora["name"], "weight": lora["weight"]} for lora in params["loras"]],
            "adapters": [{"name": a["name"], "weight": a["weight"]} for a in params.get("adapters", [])]}


async def finish(node: Any, job: Any, output: JobOutput) -> dict[str, Any]:
    """Check each image with `atrium_check_image`, then store it as the owner's catalog image. A second
    call for the same job finds the images it stored (same bytes, same owner) and stores nothing new."""
    async with node.db.read_session() as session:
        owner = await session.get(User, job.owner_id)
    context = CheckContext(user=owner, purpose=KIND, request=dict(job.params), job_id=job.id)
    described = {item["name"]: item for item in output.result.get("images", [])}
    checkers = node.plugins.pm.hook.atrium_check_image.get_hookimpls()
    checked = []
    for file in output.files:
        data = await asyncio.to_thread(file.path.read_bytes)
        violations, labels = [], []
        if checkers:  # decoding the image is for the checkers only: the catalog's intake decodes it anyway
            image, metadata = await asyncio.to_thread(_open_png, data)
            violations, labels = collect_violations(
                await node.plugins.call("atrium_check_image", image=image, metadata=metadata, context=context),
                "atrium_check_image")
        if violations:
            raise PolicyViolation(violations, f"generated image {file.name}")
        checked.append((file, data, labels))
    images = []
    level = job.params.get("nsfw_level", 1)
    for file, data, labels in checked:
        stored = await _store(node, owner, data, level)
        images.append({**described.get(file.name, {"name": file.name}), "image_id": stored.id,
                       "url": f"/api/node/v1/images/{stored.id}/file",
                       "labels": [{"name": label.name, "score": label.score} for label in labels]})
    return {**output.result, "images": images}


def _open_png(data: bytes) -> tuple[Any, dict[str, Any]]:
    import io

    from PIL import Image as PILImage

    from plugins.generation.metadata import CHUNK

    image = PILImage.open(io.BytesIO(data))
    image.load()
    text = getattr(image, "text", {})
    return image, {"parameters": text.get("parameters", ""), "resources": json.loads(text.get(CHUNK, "{}"))}


async def _store(node: Any, owner: User, data: bytes, nsfw_level: int) -> Image:
    import hashlib

    digest = hashlib.sha256(data).hexdigest()
    async with node.db.read_session() as session:
        existing = (await session.exec(select(Image).where(Image.owner_id == owner.id, Image.sha256 == digest))).first()
    if existing is not None:
        return existing
    return await node.ingest.add_image(owner, data, nsfw_level=nsfw_level)


GENERATE = JobKind(name=KIND, run=run, prepare=prepare, finish=finish, gpu=True,
                   description="text-to-image and image-to-image with a checkpoint and LoRAs from the catalog")
