"""LoRAs on a loaded pipeline: kohya (A1111, ComfyUI) and diffusers/peft key formats, stacked with weights.

diffusers' `load_lora_weights` reads both formats (it converts kohya keys itself); each file becomes a
named peft adapter on the pipeline, kept while the pipeline stays cached, and `set_adapters` picks the
ones (and weights) of each generation. Unused adapters contribute nothing; the oldest are unloaded when
more than `MAX_LOADED` are kept.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.core.errors import InvalidInput

MAX_LOADED = 16
_KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
_DIFFUSERS_PREFIXES = ("unet.", "text_encoder.", "text_encoder_2.")


@dataclass(frozen=True)
class LoraFile:
    """A LoRA (or an adapter from the moderation hooks) to apply: its file and weight."""

    sha256: str
    path: Path
    weight: float
    label: str  # the name errors use


def lora_format(keys: list[str]) -> str:
    """"kohya" or "diffusers" from a LoRA file's keys; InvalidInput when it is neither."""
    if any(key.startswith(_KOHYA_PREFIXES) for key in keys):
        return "kohya"
    if any(key.startswith(_DIFFUSERS_PREFIXES) and "lora" in key for key in keys):
        return "diffusers"
    raise InvalidInput("not a LoRA in kohya (lora_unet_...) or diffusers (unet....lora_A) format; "
                       f"its first keys are {', '.join(keys[:3])}")


def adapter_name(sha256: str) -> str:
    return f"a{sha256[:16]}"


class LoraSlots:
    """The adapters loaded on one pipeline, oldest first."""

    def __init__(self) -> None:
        self.loaded: OrderedDict[str, str] = OrderedDict()  # sha256 -> adapter name

    def apply(self, pipe: Any, loras: list[LoraFile]) -> None:
        """Make exactly `loras` active on `pipe`, with their weights. Blocks."""
        from safetensors.torch import load_file

        for lora in loras:
            if lora.sha256 in self.loaded:
                self.loaded.move_to_end(lora.sha256)
                continue
            state = load_file(str(lora.path))
            lora_format(list(state))
            name = adapter_name(lora.sha256)
            try:
                pipe.load_lora_weights(state, adapter_name=name)
            except Exception as exc:  # noqa: BLE001 - peft/diffusers raise many kinds for a mismatched file
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise InvalidInput(f"LoRA {lora.label} does not fit this checkpoint: {first[:300]}") from None
            self.loaded[lora.sha256] = name
        self._evict(pipe, keep={lora.sha256 for lora in loras})
        if not loras:
            if self.loaded:
                pipe.disable_lora()
            return
        pipe.enable_lora()
        pipe.set_adapters([self.loaded[lora.sha256] for lora in loras], [lora.weight for lora in loras])

    def _evict(self, pipe: Any, keep: set[str]) -> None:
        while len(self.loaded) > MAX_LOADED:
            victim = next((sha for sha in self.loaded if sha not in keep), None)
            if victim is None:
                return
            pipe.delete_adapters(self.loaded.pop(victim))

    def nbytes(self, pipe: Any) -> int:
        """Memory the loaded adapters take (their peft parameters)."""
        total = 0
        for component in ("unet", "text_encoder", "text_encoder_2"):
            module = getattr(pipe, component, None)
            if module is None:
                continue
            for name, param in module.named_parameters():
                if "lora_" in name:
                    total += param.numel() * param.element_size()
        return total
