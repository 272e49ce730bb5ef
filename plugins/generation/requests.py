"""A generation request as a client sends it (`POST /api/node/v1/generate`), checked field by field.

Every problem is an InvalidInput naming the field; nothing here touches the catalog (AIRs are only
parsed; plugins/generation/resolve.py finds what they name). Image-to-image takes an image already in
the catalog by its id (`init_image`): upload it first with `POST /api/node/v1/images`, which checks it
the way every image is checked, so this route never decodes untrusted image bytes itself.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import asdict, dataclass
from typing import Any

from node.core.air import Air
from node.core.errors import InvalidInput
from plugins.generation.samplers import SCHEDULE_TYPES, sampler_named
from plugins.generation.settings import GenerationSettings

MAX_SEED = 2**32 - 1  # A1111's seeds are 32-bit; a torch.Generator takes any 64-bit value
MAX_CFG = 30.0
MAX_LORA_WEIGHT = 10.0
SIDE_STEP = 8  # the VAE downsamples by 8: other sizes would be cut
DEFAULT_STEPS = 20
DEFAULT_CFG = 7.0
DEFAULT_STRENGTH = 0.75
LEVELS = (1, 2, 4, 8, 16)  # node.core.vocabulary.NsfwLevel without Blocked

FIELDS = ("model", "prompt", "negative", "loras", "steps", "cfg", "seed", "width", "height", "sampler",
          "schedule_type", "clip_skip", "batch", "init_image", "denoising_strength", "nsfw_level")


@dataclass(frozen=True)
class LoraChoice:
    """A LoRA named by AIR in the request, with its weight."""

    air: str
    weight: float = 1.0


@dataclass(frozen=True)
class GenerationRequest:
    """A validated request. `seed` is always set (a random one is drawn when the client sends -1 or
    none, and recorded); `width`/`height` may be None: the checkpoint's family decides."""

    model: str
    prompt: str
    negative: str = ""
    loras: tuple[LoraChoice, ...] = ()
    steps: int = DEFAULT_STEPS
    cfg: float = DEFAULT_CFG
    seed: int = 0
    width: int | None = None
    height: int | None = None
    sampler: str | None = None
    clip_skip: int | None = None
    batch: int = 1
    init_image: int | None = None
    denoising_strength: float | None = None
    nsfw_level: int = 1  # the content level the images are stored at in the catalog

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["loras"] = [{"air": lora.air, "weight": lora.weight} for lora in self.loras]
        return data


def parse_request(body: Any, settings: GenerationSettings) -> GenerationRequest:
    """Check a request body against the node's limits; InvalidInput (or TooLarge) naming the field."""
    if not isinstance(body, dict):
        raise InvalidInput("expected a JSON object with at least model and prompt")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise InvalidInput(f"{unknown[0]}: unknown field (known: {', '.join(FIELDS)})")
    model = _air(body.get("model"), "model")
    prompt = _text(body.get("prompt"), "prompt", settings.max_prompt_chars, required=True)
    negative = _text(body.get("negative", ""), "negative", settings.max_prompt_chars)
    loras = _loras(body.get("loras", []), settings)
    steps = _int(body.get("steps", DEFAULT_STEPS), "steps", 1, settings.max_steps)
    cfg = _number(body.get("cfg", DEFAULT_CFG), "cfg", 0.0, MAX_CFG)
    seed = _seed(body.get("seed"))
    width = _side(body.get("width"), "width", settings)
    height = _side(body.get("height"), "height", settings)
    if width is not None and height is not None and width * height > settings.max_pixels:
        raise InvalidInput(f"size: {width}x{height} is {width * height:,} pixels; this node makes at most "
                           f"{settings.max_pixels:,} pixels per image")
    sampler = body.get("sampler")
    schedule_type = body.get("schedule_type")
    if schedule_type is not None and not isinstance(schedule_type, str):
        raise InvalidInput(f"schedule_type: one of {', '.join(SCHEDULE_TYPES)}")
    if sampler is not None:
        sampler = sampler_named(sampler, schedule_type).name
    elif schedule_type is not None:
        raise InvalidInput("schedule_type: give a sampler too")
    clip_skip = body.get("clip_skip")
    if clip_skip is not None:
        clip_skip = _int(clip_skip, "clip_skip", 1, 12)
    batch = _int(body.get("batch", 1), "batch", 1, settings.max_batch)
    init_image = body.get("init_image")
    strength = body.get("denoising_strength")
    if init_image is not None:
        init_image = _int(init_image, "init_image", 1, 2**63 - 1)
        strength = _number(DEFAULT_STRENGTH if strength is None else strength, "denoising_strength", 0.0, 1.0)
        if strength == 0:
            raise InvalidInput("denoising_strength: must be above 0 (0 would return the image unchanged)")
        if int(steps * strength) < 1:
            raise InvalidInput(f"denoising_strength: {strength:g} of {steps} steps is less than one step; raise "
                               "either")
    elif strength is not None:
        raise InvalidInput("denoising_strength: only for image-to-image (give init_image, a catalog image id)")
    level = body.get("nsfw_level", 1)
    if isinstance(level, bool) or level not in LEVELS:
        raise InvalidInput(f"nsfw_level: one of {', '.join(map(str, LEVELS))} (PG, PG-13, R, X, XXX): the content "
                           "level the images are stored at")
    return GenerationRequest(model=model, prompt=prompt, negative=negative, loras=loras, steps=steps, cfg=cfg,
                             seed=seed, width=width, height=height, sampler=sampler, clip_skip=clip_skip,
                             batch=batch, init_image=init_image, denoising_strength=strength, nsfw_level=level)


def _air(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{name}: expected an AIR such as urn:air:sd1:checkpoint:mynode:12@34")
    if len(value) > 500:
        raise InvalidInput(f"{name}: an AIR is at most 500 characters")
    try:
        return str(Air.parse(value))
    except InvalidInput as exc:
        raise InvalidInput(f"{name}: {exc.detail}") from None


def _text(value: Any, name: str, maximum: int, *, required: bool = False) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise InvalidInput(f"{name}: expected text")
    if len(value) > maximum:
        raise InvalidInput(f"{name}: {len(value):,} characters; this node takes at most {maximum:,}")
    if "\x00" in value:
        raise InvalidInput(f"{name}: must not contain NUL characters")
    return value.strip()


def _int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise InvalidInput(f"{name}: expected a whole number from {low} to {high}, got {value!r}"[:200])
    if not low <= value <= high:
        raise InvalidInput(f"{name}: {value} is out of range; this node takes {low} to {high}")
    return value


def _number(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInput(f"{name}: expected a number from {low:g} to {high:g}, got {value!r}"[:200])
    if not low <= value <= high:
        raise InvalidInput(f"{name}: {value:g} is out of range; this node takes {low:g} to {high:g}")
    return float(value)


def _seed(value: Any) -> int:
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value == -1):
        return secrets.randbelow(MAX_SEED + 1)
    return _int(value, "seed", 0, MAX_SEED)


def _side(value: Any, name: str, settings: GenerationSettings) -> int | None:
    if value is None:
        return None
    side = _int(value, name, SIDE_STEP, settings.max_side)
    if side % SIDE_STEP:
        raise InvalidInput(f"{name}: {side} is not a multiple of {SIDE_STEP}")
    return side


def _loras(value: Any, settings: GenerationSettings) -> tuple[LoraChoice, ...]:
    if not isinstance(value, list):
        raise InvalidInput("loras: expected a list of {air, weight} objects")
    if len(value) > settings.max_loras:
        raise InvalidInput(f"loras: {len(value)} given; this node stacks at most {settings.max_loras}")
    chosen = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or set(item) - {"air", "weight"}:
            raise InvalidInput(f"loras.{i}: expected an object with air and weight")
        air = _air(item.get("air"), f"loras.{i}.air")
        weight = _number(item.get("weight", 1.0), f"loras.{i}.weight", -MAX_LORA_WEIGHT, MAX_LORA_WEIGHT)
        chosen.append(LoraChoice(air=air, weight=weight))
    return tuple(chosen)
