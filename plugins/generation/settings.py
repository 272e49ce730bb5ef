"""The [plugins.generation] table of node.toml."""

from __future__ import annotations

from dataclasses import dataclass

from node.core.config import key, parse_table


@dataclass
class GenerationSettings:
    """Limits and defaults of the generation plugin; every key is documented in docs/configuration.md."""

    max_steps: int = key(100, "Most sampling steps one image may take.", minimum=1, maximum=1000)
    max_side: int = key(2048, "Longest width or height in pixels a request may ask for.", minimum=8,
                        maximum=8192)
    max_pixels: int = key(2048 * 2048, "Most pixels (width x height) of one image.", minimum=64,
                          maximum=8192 * 8192)
    max_batch: int = key(8, "Most images one request may ask for (--batch).", minimum=1, maximum=64)
    max_loras: int = key(8, "Most LoRAs one request may stack (by AIR and <lora:...> tags together).",
                         minimum=0, maximum=32)
    max_prompt_chars: int = key(10000, "Longest prompt or negative prompt, in characters.", minimum=1,
                                maximum=1_000_000)
    cache_mb: int = key(8192, "Memory the worker may spend on loaded pipelines (their weights, LoRAs "
                        "included), per device; the least recently used pipeline is evicted beyond it. One "
                        "pipeline is always kept, however large.", minimum=0, maximum=1_048_576)
    gpu_dtype: str = key("float16", "Weight type on a GPU (CPU always runs float32). bfloat16 suits "
                         "GPUs that have it (Ampere and later) and avoids float16 overflow in SDXL's VAE.",
                         choices=("float16", "bfloat16"))
    base_model_configs: list[str] = key([], "More base models to generate with, as 'Base model=/folder' "
                                        "entries: the folder is a diffusers pipeline folder (configs and "
                                        "tokenizer; no weights needed) that single-file checkpoints of that "
                                        "base model load with. Remote workers need the same folders.")


def load_settings(table: dict) -> GenerationSettings:  # type: ignore[type-arg]
    """Validate the [plugins.generation] table (ConfigError naming the key when wrong)."""
    return parse_table(GenerationSettings, table, "plugins.generation")
