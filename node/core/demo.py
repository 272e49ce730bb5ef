"""Demo content for a new node, so that a newcomer's first look at the catalog is not empty.

Everything here is made on the spot, never downloaded: two small LoRA-shaped safetensors files with
random weights (labelled as such: they are not trained models) and a few procedurally drawn example
images whose A1111 metadata names the demo LoRAs by hash, so image-to-model links work as they do
for real uploads. It all belongs to the user `atrium-demo` and goes through the same ingest and
catalog code as any upload. Delete it like any other model.
"""

from __future__ import annotations

import io
import math
from collections.abc import AsyncIterator

import numpy as np
from PIL import Image as PILImage
from PIL.PngImagePlugin import PngInfo
from safetensors.numpy import save

from node.core.accounts import Accounts
from node.core.catalog import Catalog, VersionChanges
from node.core.errors import NotFound
from node.core.ingest import Ingest
from node.core.tables import Role, User
from node.core.vocabulary import ModelStatus

DEMO_USER = "atrium-demo"
NOT_TRAINED = ("Demo content made by `atrium init`: the weights are random numbers, not a trained model, "
               "so this file changes nothing useful. Delete the model when you publish your own.")

DEMO_MODELS = [
    {"name": "Demo: Watercolor Wash", "base_model": "SD 1.5", "trigger": "wtrclr",
     "tags": ["demo", "style", "watercolor"], "palette": [(70, 130, 180), (240, 220, 200), (200, 90, 110)],
     "prompts": ["a lighthouse on a cliff, wtrclr, soft washes", "a fox in a meadow, wtrclr",
                 "city rooftops at dusk, wtrclr, wet on wet"]},
    {"name": "Demo: Pixel Sprites", "base_model": "SDXL 1.0", "trigger": "pxlsprt",
     "tags": ["demo", "pixel art", "style"], "palette": [(30, 30, 60), (250, 200, 60), (90, 200, 120)],
     "prompts": ["a knight with a sword, pxlsprt, 16-bit", "a slime monster, pxlsprt",
                 "a treasure chest, pxlsprt, isometric"]},
]


def demo_lora(seed: int, dim: int = 4) -> bytes:
    """A small LoRA-shaped safetensors file (kohya key names) with random fp16 weights."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for block in ("down_blocks_0_attentions_0", "up_blocks_1_attentions_0"):
        for proj in ("to_q", "to_k", "to_v"):
            base = f"lora_unet_{block}_transformer_blocks_0_attn1_{proj}"
            tensors[f"{base}.lora_down.weight"] = (rng.standard_normal((dim, 320)) * 0.01).astype(np.float16)
            tensors[f"{base}.lora_up.weight"] = np.zeros((320, dim), dtype=np.float16)
            tensors[f"{base}.alpha"] = np.array(float(dim), dtype=np.float16)
    return save(tensors, metadata={"ss_network_dim": str(dim), "ss_network_alpha": str(dim),
                                   "atrium_demo": "random weights, not trained"})


def demo_image(seed: int, palette: list[tuple[int, int, int]], parameters: str, size: int = 192) -> bytes:
    """A procedurally drawn PNG (soft colour fields) carrying A1111 `parameters` text."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    image = np.zeros((size, size, 3))
    for color in palette:
        cx, cy, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.25, 0.6)
        weight = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))[..., None]
        image = image * (1 - weight * 0.8) + np.array(color) * weight * 0.8
    waves = (np.sin((x + y) * math.tau * rng.uniform(2, 5)) * 12)[..., None]
    pixels = np.clip(image + 20 + waves, 0, 255).astype(np.uint8)
    info = PngInfo()
    info.add_text("parameters", parameters)
    out = io.BytesIO()
    PILImage.fromarray(pixels, "RGB").save(out, format="PNG", pnginfo=info)
    return out.getvalue()


async def _one_piece(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def add_demo_content(accounts: Accounts, catalog: Catalog, ingest: Ingest) -> list[int]:
    """Publish the demo models with their example images; returns the new model ids.

    Does nothing (returns []) when the demo user already exists, so running it twice is harmless.
    """
    try:
        await accounts.get_user(DEMO_USER)
        return []
    except NotFound:
        pass
    user: User = await accounts.create_user(DEMO_USER, role=Role.CREATOR)
    model_ids = []
    for index, spec in enumerate(DEMO_MODELS):
        model = await catalog.create_model(user, name=spec["name"], type="LORA", tags=spec["tags"],
                                           description=NOT_TRAINED)
        version = await catalog.create_version(user, model.id, VersionChanges(  # type: ignore[arg-type]
            name="v1", base_model=spec["base_model"], trained_words=[spec["trigger"]], description=NOT_TRAINED))
        data = demo_lora(seed=index)
        filename = spec["name"].split(": ")[1].lower().replace(" ", "_") + ".safetensors"
        upload = await ingest.start(user, version.id, filename=filename, size=len(data))  # type: ignore[arg-type]
        progress = await ingest.append(user, upload.id, 0, _one_piece(data))
        assert progress.file is not None
        lora_hash = progress.file.autov3[:12] if progress.file.autov3 else progress.file.sha256[:12]
        for n, prompt in enumerate(spec["prompts"]):
            lora_name = filename.removesuffix(".safetensors")
            parameters = (f"{prompt} <lora:{lora_name}:0.8>\nNegative prompt: blurry, lowres\n"
                          f"Steps: 24, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: {1000 + 10 * index + n}, "
                          f"Size: 192x192, Lora hashes: \"{lora_name}: {lora_hash}\", Version: atrium-demo")
            await ingest.add_image(user, demo_image(100 * index + n, spec["palette"], parameters),
                                   version_id=version.id)
        await catalog.set_status(user, model.id, ModelStatus.PUBLISHED)  # type: ignore[arg-type]
        model_ids.append(model.id)  # type: ignore[arg-type]
    return model_ids
