"""What a generated image says about itself: the A1111 `parameters` text and the AIRs used.

The text is written with the catalog's own writer (`node.core.imagemeta.format_a1111`), so the
catalog's parser reads back exactly what was used: prompt (LoRA tags included), negative prompt,
Steps, Sampler, CFG scale, Seed, Size, Model hash (AutoV2 of the checkpoint file), Model (its file
name without extension), Denoising strength (image-to-image), Clip skip, Lora hashes (name: the first
12 hex of the LoRA's tensor-data hash, A1111's "addnet" hash, which Civitai calls AutoV3) and Version.
A second PNG text chunk, `atrium`, holds JSON with the AIRs of the checkpoint and LoRAs, the job id
and the node's adapters (by name).
"""

from __future__ import annotations

import io
import json
from typing import Any

from node import __version__
from node.core.imagemeta import GenerationMeta, format_a1111

CHUNK = "atrium"


def parameters_text(params: dict[str, Any], seed: int) -> str:
    """The A1111 parameters of one image of a prepared job (`params` as prepare() stored them)."""
    model = params["model"]
    meta = GenerationMeta(
        prompt=params["prompt"], negative_prompt=params["negative"], steps=params["steps"],
        sampler=params["sampler"], cfg_scale=params["cfg"], seed=seed, width=params["width"],
        height=params["height"], model_hash=model["autov2"], model=model["name"],
        denoising_strength=params.get("denoising_strength"),
        clip_skip=params.get("clip_skip") if (params.get("clip_skip") or 1) > 1 else None,
        lora_hashes={lora["name"]: lora["hash"] for lora in params["loras"]},
        extra={"Version": f"atrium {__version__}"})
    return format_a1111(meta)


def resources_json(params: dict[str, Any], job_id: int) -> dict[str, Any]:
    """The `atrium` chunk: AIRs with weights, the node's adapters, and the job."""
    return {"job": job_id, "model": params["model"]["air"],
            "loras": [{"air": lora["air"], "name": lora["name"], "weight": lora["weight"]}
                      for lora in params["loras"]],
            "adapters": [{"name": a["name"], "weight": a["weight"]} for a in params.get("adapters", [])]}


def png_bytes(image: Any, parameters: str, resources: dict[str, Any]) -> bytes:
    """The image as PNG with its `parameters` and `atrium` text chunks (iTXt when not Latin-1)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, text in (("parameters", parameters), (CHUNK, json.dumps(resources, ensure_ascii=False))):
        try:
            text.encode("latin-1")
            info.add_text(key, text)
        except UnicodeEncodeError:
            info.add_itxt(key, text)
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=info)
    return out.getvalue()
