"""A1111 extra-network tags in prompts: `<lora:name:weight>`.

A tag names a LoRA of this node's catalog by its file name (with or without `.safetensors`) or by its
model's name, compared without regard to case (node side: plugins/generation/resolve.py). The tags stay
in the prompt recorded in the image's metadata, as A1111 keeps them, and are cut out of the text the
text encoder reads. `<lyco:...>` is read the same way (A1111's LyCORIS extension syntax).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from node.core.errors import InvalidInput

_TAG = re.compile(r"<(lora|lyco):([^:<>]+)(?::([^<>]*))?>", re.IGNORECASE)
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
MAX_TAG_WEIGHT = 10.0


@dataclass(frozen=True)
class LoraTag:
    """One `<lora:name:weight>` tag; the weight is 1.0 when the tag gives none (as in A1111)."""

    name: str
    weight: float


def lora_tags(prompt: str) -> list[LoraTag]:
    """The LoRA tags of a prompt, in order; InvalidInput for a weight that is not a number."""
    tags = []
    for match in _TAG.finditer(prompt):
        name, args = match.group(2).strip(), match.group(3)
        weight = 1.0
        if args is not None:
            first = args.split(":")[0].strip()
            if not _NUMBER.fullmatch(first) or not math.isfinite(float(first)):
                raise InvalidInput(f"prompt: {match.group(0)!r}: the weight must be a number, as in <lora:{name}:0.8>")
            weight = float(first)
            if abs(weight) > MAX_TAG_WEIGHT:
                raise InvalidInput(f"prompt: {match.group(0)!r}: the weight must be from -{MAX_TAG_WEIGHT:g} "
                                   f"to {MAX_TAG_WEIGHT:g}")
        if not name:
            raise InvalidInput(f"prompt: {match.group(0)!r} names no LoRA")
        tags.append(LoraTag(name=name, weight=weight))
    return tags


def strip_tags(prompt: str) -> str:
    """The prompt the text encoder reads: the tags removed, as A1111 does (the CLIP tokenizer folds the
    whitespace they leave)."""
    return _TAG.sub("", prompt).strip()


def with_tags(prompt: str, tags: list[LoraTag]) -> str:
    """`prompt` with a tag appended for each LoRA that was given by AIR (so the recorded A1111 text
    names every LoRA used, and regenerating from it applies them again)."""
    extra = " ".join(f"<lora:{tag.name}:{_weight_text(tag.weight)}>" for tag in tags)
    if not extra:
        return prompt
    return f"{prompt} {extra}" if prompt else extra


def _weight_text(weight: float) -> str:
    text = repr(float(weight))
    return text[:-2] if text.endswith(".0") else text
