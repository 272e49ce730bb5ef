"""The generation plugin's parts that need no node: request checks, sampler names, LoRA tags, the shipped
SD 1.x / SDXL configs, the CLIP vocabulary and the pipeline cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from node.core.errors import ConfigError, InvalidInput
from node.core.moderation import GenerationAdapter, ImageLabel, Violation, collect_violations
from plugins.generation.checkpoints import CONFIGS, family_for
from plugins.generation.pipelines import PipelineCache
from plugins.generation.prompts import LoraTag, lora_tags, strip_tags, with_tags
from plugins.generation.requests import parse_request
from plugins.generation.samplers import SAMPLERS, build_scheduler, native_sampler_name, sampler_named
from plugins.generation.settings import GenerationSettings

AIR = "urn:air:sd1:checkpoint:atrium:1@2"
DIGITS_SCHEDULER = {"_class_name": "DDIMScheduler", "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear",
                    "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
                    "timestep_spacing": "trailing", "num_train_timesteps": 1000}


def test_every_a1111_sampler_builds_its_diffusers_scheduler_on_the_checkpoint_s_config() -> None:
    import diffusers

    for name, sampler in SAMPLERS.items():
        scheduler = build_scheduler(sampler, DIGITS_SCHEDULER)
        assert type(scheduler) is getattr(diffusers, sampler.scheduler), name
        assert scheduler.config.beta_schedule == "linear" and scheduler.config.timestep_spacing == "trailing"
        assert bool(getattr(scheduler.config, "use_karras_sigmas", False)) == name.endswith("Karras"), name
    assert build_scheduler(SAMPLERS["DPM++ 2M SDE"], DIGITS_SCHEDULER).config.algorithm_type == "sde-dpmsolver++"
    assert sampler_named("dpm++ 2m  karras").name == "DPM++ 2M Karras"
    assert sampler_named("DPM++ 2M", "Karras").name == "DPM++ 2M Karras"
    assert native_sampler_name(DIGITS_SCHEDULER) == "DDIM"
    assert native_sampler_name(json.loads((CONFIGS / "sdxl/scheduler/scheduler_config.json").read_text())) == "Euler"
    assert native_sampler_name(json.loads((CONFIGS / "sd1/scheduler/scheduler_config.json").read_text())) == "PLMS"
    with pytest.raises(InvalidInput, match="'Warp' is not a sampler this node has \\(known: Euler a, Euler"):
        sampler_named("Warp")


def test_lora_tags_are_read_kept_for_the_record_and_cut_for_the_text_encoder() -> None:
    prompt = "a digit <lora:Style One:0.7>, bold <lyco:other> <lora:neg:-1.5:0.2>"
    assert lora_tags(prompt) == [LoraTag("Style One", 0.7), LoraTag("other", 1.0), LoraTag("neg", -1.5)]
    assert strip_tags(prompt) == "a digit , bold"
    assert with_tags("a digit", [LoraTag("x", 0.8), LoraTag("y", 1.0)]) == "a digit <lora:x:0.8> <lora:y:1>"
    for bad in ("<lora:x:lots>", "<lora:x:1e400>", "<lora:x:50>"):
        with pytest.raises(InvalidInput, match="prompt: "):
            lora_tags(bad)


def test_requests_are_checked_field_by_field_against_the_node_s_limits() -> None:
    settings = GenerationSettings(max_steps=50, max_side=1024, max_pixels=512 * 512, max_batch=4, max_loras=1)
    request = parse_request({"model": "sd1:checkpoint:atrium:1@2", "prompt": " x ", "seed": -1}, settings)
    assert request.model == AIR and request.prompt == "x" and 0 <= request.seed < 2**32
    assert (request.steps, request.cfg, request.batch, request.width) == (20, 7.0, 1, None)
    assert parse_request({"model": AIR, "prompt": "x", "seed": 12.0}, settings).seed == 12
    cases = [({"steps": 51}, "steps: 51 is out of range; this node takes 1 to 50"),
             ({"steps": True}, "steps: expected a whole number"),
             ({"width": 1032}, "width: 1032 is out of range"),
             ({"width": 1024, "height": 1024}, "size: 1024x1024 is 1,048,576 pixels"),
             ({"seed": 2**32}, "seed: 4294967296 is out of range"),
             ({"seed": "1"}, "seed: expected a whole number"),
             ({"cfg": float("nan")}, "cfg: expected a number"),
             ({"batch": 5}, "batch: 5 is out of range"),
             ({"clip_skip": 13}, "clip_skip: 13 is out of range"),
             ({"loras": [{"air": AIR}, {"air": AIR}]}, "loras: 2 given; this node stacks at most 1"),
             ({"loras": [{"air": AIR, "weight": 11}]}, "loras.0.weight: 11 is out of range"),
             ({"loras": [{"air": AIR, "scale": 1}]}, "loras.0: expected an object with air and weight"),
             ({"schedule_type": "Karras"}, "schedule_type: give a sampler too"),
             ({"init_image": 1, "denoising_strength": 0}, "denoising_strength: must be above 0"),
             ({"init_image": 1, "denoising_strength": 0.01, "steps": 20}, "0.01 of 20 steps is less than one step"),
             ({"prompt": "x" * 10001}, "prompt: 10,001 characters; this node takes at most 10,000"),
             ({"negative": "a\x00b"}, "negative: must not contain NUL"),
             ({"model": "urn:air:sd1:checkpoint:civitai:abc"}, "model: AIR"),
             ({"nsfw_level": 3}, "nsfw_level: one of 1, 2, 4, 8, 16")]
    for change, words in cases:
        with pytest.raises(InvalidInput) as caught:
            parse_request({"model": AIR, "prompt": "x", **change}, GenerationSettings(
                max_steps=50, max_side=1024, max_pixels=512 * 512, max_batch=4, max_loras=1))
        assert words in caught.value.detail, (change, caught.value.detail)
    with pytest.raises(InvalidInput, match="expected a JSON object"):
        parse_request([AIR], settings)


@pytest.mark.parametrize(("family", "unet", "text"), [("sd1", 859_520_964, 123_060_480),
                                                      ("sdxl", 2_567_463_684, 123_060_480)])
def test_shipped_configs_build_the_published_architectures(family: str, unet: int, text: int) -> None:
    """Parameter counts of SD 1.5's and SDXL 1.0's UNet, VAE and CLIP text encoders as published."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder = CONFIGS / family

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    with torch.device("meta"):
        assert count(UNet2DConditionModel.from_config(json.loads((folder / "unet/config.json").read_text()))) == unet
        assert count(AutoencoderKL.from_config(json.loads((folder / "vae/config.json").read_text()))) == 83_653_863
        assert count(CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))) == text
        if family == "sdxl":
            config = CLIPTextConfig.from_pretrained(folder / "text_encoder_2")
            assert count(CLIPTextModelWithProjection(config)) == 694_659_840


def test_base_models_map_to_families_and_loras_must_share_them(tmp_path: Path) -> None:
    assert family_for("SD 1.5").key == family_for("SD 1.4").key == "sd1"
    assert family_for("SDXL 1.0").key == family_for("Pony").key == family_for("Illustrious").key == "sdxl"
    assert family_for("Digits").key == "digits"
    with pytest.raises(InvalidInput, match="base model 'Flux.1 D' cannot be generated with on this node"):
        family_for("Flux.1 D")
    custom = family_for("Tiny", {"Tiny": str(tmp_path)})
    assert custom.key == "custom:tiny" and custom.config_dir() == tmp_path


def test_the_clip_vocabulary_is_built_from_the_bundled_bpe_table_or_the_error_names_the_package(tmp_path: Path) -> None:
    from plugins.generation.clip_vocab import find_bpe_file, write_tokenizer_files

    try:
        bpe = find_bpe_file()
    except ConfigError as exc:
        assert "pip install --no-deps open_clip_torch" in exc.detail
        return
    from transformers import CLIPTokenizer

    folder = write_tokenizer_files(tmp_path, bpe)
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    # OpenAI CLIP's ids for these words, as every SD 1.x and SDXL checkpoint was trained with.
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tokenizer) == 49408


class _Pipe:
    """Just enough of a pipeline for the cache: components with weights."""

    def __init__(self, floats: int) -> None:
        self.components = {"unet": torch.nn.Linear(floats, 1, bias=False)}
        self.unet = self.components["unet"]


def test_the_pipeline_cache_keeps_recent_pipelines_within_its_memory_limit() -> None:
    cache = PipelineCache(limit_bytes=4 * 250)
    a = cache.get(("a", "cpu", "float32"), lambda: _Pipe(100))
    assert cache.get(("a", "cpu", "float32"), lambda: _Pipe(1)) is a and cache.loads == 1
    cache.get(("b", "cpu", "float32"), lambda: _Pipe(100))
    assert list(cache.entries) == [("a", "cpu", "float32"), ("b", "cpu", "float32")]
    cache.get(("a", "cpu", "float32"), lambda: _Pipe(1))  # a is now the most recent
    with a.lock:  # in use: never evicted under a running generation
        cache.get(("c", "cpu", "float32"), lambda: _Pipe(100))
        assert ("a", "cpu", "float32") in cache.entries and ("b", "cpu", "float32") not in cache.entries
    cache.get(("d", "cpu", "float32"), lambda: _Pipe(300))  # bigger than the limit alone: still kept
    assert list(cache.entries) == [("d", "cpu", "float32")]


def test_hook_answers_are_checked() -> None:
    violations, labels = collect_violations([[Violation("a", "no")], None, [ImageLabel("x", 1.0)]], "hook")
    assert violations == [Violation("a", "no")] and labels == [ImageLabel("x", 1.0)]
    with pytest.raises(TypeError, match="hook returned str"):
        collect_violations([["bad"]], "hook")
    with pytest.raises(ValueError, match="short lowercase name"):
        Violation("Bad Rule", "x")
    with pytest.raises(ValueError, match="64 lowercase hex"):
        GenerationAdapter("m", "abc")


def test_every_generation_setting_and_sampler_is_documented() -> None:
    import dataclasses

    docs = Path(__file__).resolve().parent.parent / "docs"
    configuration = (docs / "configuration.md").read_text()
    for f in dataclasses.fields(GenerationSettings):
        assert f"`plugins.generation.{f.name}`" in configuration, f.name
    generation = (docs / "generation.md").read_text()
    for name in SAMPLERS:
        first = name.removesuffix(" Karras")
        assert f"| {first}" in generation or f"/ {name}" in generation, name


def test_settings_are_validated_with_the_key_named(tmp_path: Path) -> None:
    from plugins.generation.settings import load_settings

    assert load_settings({"max_steps": 30}).max_steps == 30
    with pytest.raises(ConfigError, match="plugins.generation.max_stepz: unknown key"):
        load_settings({"max_stepz": 30})
    with pytest.raises(ConfigError, match="plugins.generation.gpu_dtype"):
        load_settings({"gpu_dtype": "int8"})
    from plugins.generation.checkpoints import parse_base_model_configs

    with pytest.raises(ConfigError, match="holds no model_index.json"):
        parse_base_model_configs([f"Tiny={tmp_path}"])
    with pytest.raises(ConfigError, match="is not 'Base model=/folder'"):
        parse_base_model_configs(["Tiny"])


def test_the_cli_reads_air_weight_pairs_sizes_and_batch_file_names() -> None:
    from node.cli_generate import output_paths, parse_lora, parse_size

    air = "urn:air:sd1:lora:atrium:5@6"
    assert parse_lora(f"{air}:0.8") == {"air": air, "weight": 0.8}
    assert parse_lora(f"{air}:1") == {"air": air, "weight": 1.0}
    assert parse_lora(air) == {"air": air, "weight": 1.0}
    assert parse_lora("urn:air:sd1:lora:atrium:5") == {"air": "urn:air:sd1:lora:atrium:5", "weight": 1.0}
    assert parse_lora("urn:air:sd1:lora:atrium:5:-.5") == {"air": "urn:air:sd1:lora:atrium:5", "weight": -0.5}
    assert parse_size("512x768") == (512, 768)
    with pytest.raises(InvalidInput, match="--size: '512' is not WIDTHxHEIGHT"):
        parse_size("512")
    assert output_paths(Path("out/a.png"), 1) == [Path("out/a.png")]
    assert output_paths(Path("out/a.png"), 2) == [Path("out/a-0.png"), Path("out/a-1.png")]
