"""Builders for catalog tests: real safetensors files, pickles, and images with generation metadata."""

from __future__ import annotations

import io
import json
import pickle
import struct

import numpy as np
from PIL import Image as PILImage
from PIL.PngImagePlugin import PngInfo
from safetensors.numpy import save

A1111_PARAMETERS = (
    "a cat in a hat, masterpiece <lora:catstyle:0.8>\n"
    "Negative prompt: blurry, lowres\n"
    "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1234, Size: 64x64, "
    'Model hash: {model_hash}, Model: base, Lora hashes: "catstyle: {lora_hash}", Version: v1.9.0'
)


def safetensors_bytes(seed: int = 0, tensors: int = 3, size: int = 64, metadata: dict[str, str] | None = None) -> bytes:
    """A valid safetensors file with `tensors` float16 tensors of `size` x `size`."""
    rng = np.random.default_rng(seed)
    data = {f"lora_unet_block_{i}.weight": rng.standard_normal((size, size)).astype(np.float16)
            for i in range(tensors)}
    return save(data, metadata=metadata)


def pickle_bytes() -> bytes:
    """A raw pickle (protocol 4), what a .ckpt/.pt often is."""
    return pickle.dumps({"state_dict": {"w": [1.0, 2.0]}}, protocol=4)


def lying_safetensors(claimed: int) -> bytes:
    """A file whose length prefix claims a header of `claimed` bytes."""
    header = json.dumps({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    return struct.pack("<Q", claimed) + header + b"\0\0\0\0"


def png_with_parameters(parameters: str, size: tuple[int, int] = (64, 64), color: str = "orange") -> bytes:
    image = PILImage.new("RGB", size, color)
    info = PngInfo()
    info.add_text("parameters", parameters)
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=info)
    return out.getvalue()
