"""Sampling: a prepared job's params in, PNG files with their metadata out. Runs in a worker thread.

Every image of a batch is sampled on its own with seed + i (A1111's batch seeds), so each image is
reproducible from its own metadata alone: the same parameters and seed on the same device give the
same pixels. Noise comes from a CPU `torch.Generator` whatever the device, so a seed means the same
starting noise everywhere.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.core.errors import InvalidInput
from plugins.generation.checkpoints import BUILTIN_FAMILIES, Family, load_checkpoint
from plugins.generation.loras import LoraFile
from plugins.generation.metadata import parameters_text, png_bytes, resources_json
from plugins.generation.pipelines import PipelineCache, torch_dtype
from plugins.generation.samplers import SAMPLERS, build_scheduler

Progress = Callable[[float, str], None]
PROGRESS_SECONDS = 1.0


@dataclass(frozen=True)
class GeneratedImage:
    path: Path
    name: str
    seed: int
    parameters: str


def generate(params: dict[str, Any], paths: dict[str, Path], *, device: str, gpu_dtype: str,
             cache: PipelineCache, workdir: Path, job_id: int, progress: Progress,
             cancelled: Callable[[], bool] = lambda: False) -> list[GeneratedImage]:
    """Sample every image of a job and write it as PNG into `workdir`. Blocks; raises what
    `progress` raises (JobCancelled), or JobCancelled once `cancelled()`, between steps."""
    import torch

    from node.core.jobs import JobCancelled

    model = params["model"]
    # The shipped families resolve to this installation's folders (a remote worker's paths differ from
    # the node's); a custom family names its folder, which must exist here too.
    family = BUILTIN_FAMILIES.get(model["family"]["key"]) or Family(**model["family"])
    dtype = torch_dtype(device, gpu_dtype)
    key = (model["sha256"], device, str(dtype).removeprefix("torch."))
    progress(0.0, f"loading {model['name']}")
    entry = cache.get(key, lambda: load_checkpoint(paths[model["sha256"]], family, device=device, dtype=dtype))
    loras = [LoraFile(sha256=item["sha256"], path=paths[item["sha256"]], weight=item["weight"],
                      label=item.get("air") or item["name"]) for item in params["loras"] + params.get("adapters", [])]
    init_image = _init_image(paths[params["init_image"]], params) if params.get("init_image") else None
    batch, steps = params["batch"], params["steps"]
    with entry.lock:
        pipe = entry.pipe
        if entry.scheduler_config is None:
            entry.scheduler_config = dict(pipe.scheduler.config)
        sampler = SAMPLERS.get(params["sampler"])
        scheduler = build_scheduler(sampler, entry.scheduler_config) if sampler else \
            type(pipe.scheduler).from_config(entry.scheduler_config)
        entry.loras.apply(pipe, loras)
        runner = _runner(pipe, scheduler, init_image is not None)
        clip_skip = params.get("clip_skip") or 1
        layers = pipe.text_encoder.config.num_hidden_layers
        if clip_skip > layers:
            raise InvalidInput(f"clip_skip: {clip_skip} is more than this checkpoint's text encoder has layers ({layers})")
        effective = steps if init_image is None else max(1, min(steps, int(steps * params["denoising_strength"])))
        results = []
        reported = [time.monotonic()]
        for i in range(batch):
            seed = params["seed"] + i
            if hasattr(scheduler, "noise_sampler_seed"):
                # DPM++ SDE draws its Brownian noise from a seed of its own, random unless set.
                scheduler.noise_sampler_seed = seed

            def on_step(_pipe: Any, step: int, _timestep: Any, kwargs: dict[str, Any], i: int = i) -> dict[str, Any]:
                # Each progress report becomes a database write on the node: report about once a second,
                # and look for a cancellation at every step.
                done = min(step + 1, effective)
                now = time.monotonic()
                if now - reported[0] >= PROGRESS_SECONDS:
                    reported[0] = now
                    progress((i + done / effective) / batch, f"image {i + 1}/{batch}, step {done}/{effective}")
                elif cancelled():
                    raise JobCancelled(f"job {job_id} was cancelled")
                return kwargs

            call: dict[str, Any] = dict(
                num_inference_steps=steps, guidance_scale=params["cfg"],
                generator=torch.Generator("cpu").manual_seed(seed), callback_on_step_end=on_step, output_type="pil")
            if init_image is None:
                call.update(height=params["height"], width=params["width"])
            else:
                call.update(image=init_image, strength=params["denoising_strength"])
            with torch.inference_mode():
                call.update(_prompts(pipe, params["text"], params["negative"], clip_skip))
                image = runner(**call).images[0]
            parameters = parameters_text(params, seed)
            name = f"image-{i}.png"
            path = workdir / name
            # The work folder is private to this attempt; the job runner moves and syncs what it keeps.
            path.write_bytes(png_bytes(image, parameters, resources_json(params, job_id)))
            results.append(GeneratedImage(path=path, name=name, seed=seed, parameters=parameters))
    progress(1.0, f"{batch} image(s) done")
    return results


def _prompts(pipe: Any, text: str, negative: str, clip_skip: int) -> dict[str, Any]:
    """The prompt arguments of a pipeline call. A1111's Clip skip N reads the text encoder's N-th layer from
    the end (diffusers counts from 0: clip_skip=N-1). SD 1.x pipelines are encoded here when N > 1: the
    installed diffusers looks for `text_model` inside CLIPTextModel, which transformers 5.6+ flattened."""
    import diffusers

    if clip_skip <= 1:
        return {"prompt": text, "negative_prompt": negative or None}
    if isinstance(pipe, diffusers.StableDiffusionXLPipeline):
        return {"prompt": text, "negative_prompt": negative or None, "clip_skip": clip_skip - 1}
    return {"prompt_embeds": _encode(pipe, text, clip_skip), "negative_prompt_embeds": _encode(pipe, negative, clip_skip)}


def _encode(pipe: Any, text: str, clip_skip: int) -> Any:
    encoder = pipe.text_encoder
    tokens = pipe.tokenizer(text, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids.to(encoder.device)
    hidden = encoder(tokens, output_hidden_states=True).hidden_states[-clip_skip]
    inner = getattr(encoder, "text_model", encoder)
    return inner.final_layer_norm(hidden).to(dtype=encoder.dtype)


def _runner(pipe: Any, scheduler: Any, img2img: bool) -> Any:
    """The text-to-image pipeline, or an image-to-image one sharing its modules, with `scheduler`."""
    import diffusers

    if img2img:
        cls = diffusers.StableDiffusionXLImg2ImgPipeline if isinstance(pipe, diffusers.StableDiffusionXLPipeline) \
            else diffusers.StableDiffusionImg2ImgPipeline
        runner = cls(**{**pipe.components, "scheduler": scheduler})
        runner.set_progress_bar_config(disable=True)
        return runner
    pipe.scheduler = scheduler
    return pipe


def _init_image(path: Path, params: dict[str, Any]) -> Any:
    """The init image as RGB at the requested size (the catalog checked it when it was uploaded)."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        rgb = image.convert("RGB")
    size = (params["width"], params["height"])
    return rgb if rgb.size == size else rgb.resize(size, Image.Resampling.LANCZOS)
