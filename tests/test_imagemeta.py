"""Generation metadata: the A1111 parameters text, ComfyUI graphs, and what they link to."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from node.core.imagemeta import (GenerationMeta, ResourceRef, format_a1111, parse_a1111, parse_comfyui,
                                 parse_image_text)

# What A1111 1.10 with the Civitai extension writes (one parameters line, Civitai's bare JSON at the end).
A1111_TEXT = (
    "masterpiece, best quality, 1girl, <lora:add_detail:0.8>, looking at viewer,\n"
    "cherry blossoms, (detailed eyes:1.2) <lora:pastelMix_v1:0.6> <lyco:filmGrain>\n"
    "Negative prompt: (worst quality, low quality:1.4), EasyNegative,\n"
    "bad hands, watermark\n"
    "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 3247891234, "
    "Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, VAE hash: 63aeecb90f, "
    "VAE: vae-ft-mse-840000-ema-pruned.safetensors, Denoising strength: 0.45, Clip skip: 2, "
    "Hires upscale: 2, Hires upscaler: 4x-UltraSharp, "
    'Lora hashes: "add_detail: 7c6bad76eb54, pastelMix_v1: 9f4d5e3c2b1a", '
    'TI hashes: "EasyNegative: c74b4e810b03", '
    'Hashes: {"model": "6ce0161689", "lora:add_detail": "7c6bad76eb54", "embed:EasyNegative": "c74b4e810b03"}, '
    'Civitai resources: [{"type": "checkpoint", "modelVersionId": 128713, "modelName": "SD 1.5: base, pruned", '
    '"modelVersionName": "1.5"}, {"type": "lora", "weight": 0.8, "modelVersionId": 62833, '
    '"modelName": "Detail Tweaker LoRA"}], Version: v1.10.1'
)


def test_a_typical_a1111_block_yields_every_structured_field() -> None:
    meta = parse_a1111(A1111_TEXT)
    assert meta.warnings == []
    assert meta.source == "a1111"
    assert meta.prompt.startswith("masterpiece, best quality") and meta.prompt.endswith("<lyco:filmGrain>")
    assert meta.negative_prompt == "(worst quality, low quality:1.4), EasyNegative,\nbad hands, watermark"
    assert (meta.steps, meta.sampler, meta.scheduler, meta.cfg_scale, meta.seed) == (
        28, "DPM++ 2M", "Karras", 7.5, 3247891234)
    assert (meta.width, meta.height, meta.clip_skip, meta.denoising_strength) == (512, 768, 2, 0.45)
    assert (meta.model, meta.model_hash) == ("v1-5-pruned-emaonly", "6ce0161689")
    assert (meta.vae, meta.vae_hash) == ("vae-ft-mse-840000-ema-pruned.safetensors", "63aeecb90f")
    assert meta.lora_hashes == {"add_detail": "7c6bad76eb54", "pastelMix_v1": "9f4d5e3c2b1a"}
    assert meta.embedding_hashes == {"EasyNegative": "c74b4e810b03"}
    assert meta.hashes == {"model": "6ce0161689", "lora:add_detail": "7c6bad76eb54",
                           "embed:EasyNegative": "c74b4e810b03"}
    assert [r["modelVersionId"] for r in meta.resources] == [128713, 62833]
    assert meta.resources[0]["modelName"] == "SD 1.5: base, pruned"
    assert meta.extra == {"Hires upscale": "2", "Hires upscaler": "4x-UltraSharp", "Version": "v1.10.1"}
    assert meta.raw == A1111_TEXT


def test_lora_tags_in_the_prompt_become_loras_with_their_weights() -> None:
    meta = parse_a1111(A1111_TEXT)
    # <lyco:...> is A1111's LyCORIS spelling; a tag without a weight means 1.0.
    assert meta.loras == [("add_detail", 0.8), ("pastelMix_v1", 0.6), ("filmGrain", 1.0)]


def test_the_prompt_and_negative_prompt_may_each_span_several_lines() -> None:
    meta = parse_a1111("line one\nline two\n\nline four\nNegative prompt: bad\nworse\n"
                       "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x64")
    assert meta.prompt == "line one\nline two\n\nline four"
    assert meta.negative_prompt == "bad\nworse"
    assert meta.steps == 20 and meta.width == 64


def test_quoted_values_keep_their_commas_colons_and_escaped_quotes() -> None:
    meta = parse_a1111('a cat\nSteps: 20, Sampler: Euler, Seed: 5, '
                       'Lora hashes: "a: 0123456789ab, b: ba9876543210", '
                       'Template: "say \\"hi\\", then: leave", Version: 1.0')
    assert meta.lora_hashes == {"a": "0123456789ab", "b": "ba9876543210"}
    assert meta.extra == {"Template": 'say "hi", then: leave', "Version": "1.0"}
    assert meta.warnings == []


def test_civitai_json_values_keep_their_commas_colons_and_brackets() -> None:
    meta = parse_a1111('x\nSteps: 1, Seed: 2, Hashes: {"lora:a, b": "aa", "model": "bb"}, '
                       'Civitai resources: [{"type": "lora", "modelName": "x, y: [z]}", "weight": 1}], '
                       "Size: 8x16")
    assert meta.hashes == {"lora:a, b": "aa", "model": "bb"}
    assert meta.resources == [{"type": "lora", "modelName": "x, y: [z]}", "weight": 1}]
    assert (meta.width, meta.height) == (8, 16)


@pytest.mark.parametrize("pair, field, message", [
    ("Steps: abc", "steps", "Steps: 'abc' is not a whole number"),
    ("Seed: 12.5", "seed", "Seed: '12.5' is not a whole number"),
    ("CFG scale: seven", "cfg_scale", "CFG scale: 'seven' is not a number"),
    ("CFG scale: nan", "cfg_scale", "CFG scale: 'nan' is not a number"),
    ("Size: huge", "width", "Size: 'huge' is not WIDTHxHEIGHT"),
    ("Clip skip: -", "clip_skip", "Clip skip: '-' is not a whole number"),
    ("Denoising strength: 1e999", "denoising_strength", "Denoising strength: '1e999' is not a number"),
])
def test_garbage_numbers_are_skipped_with_a_warning(pair: str, field: str, message: str) -> None:
    meta = parse_a1111(f"a dog\nSampler: Euler, {pair}, Model: m, Version: v")
    assert getattr(meta, field) is None
    assert any(message in warning for warning in meta.warnings), meta.warnings
    # The fields around the bad one are still read.
    assert (meta.sampler, meta.model, meta.extra) == ("Euler", "m", {"Version": "v"})


def test_text_without_a_parameters_line_is_all_prompt_with_a_warning() -> None:
    meta = parse_a1111("just a prompt, with commas\nNegative prompt: blurry")
    assert (meta.prompt, meta.negative_prompt, meta.steps) == ("just a prompt, with commas", "blurry", None)
    assert meta.warnings == ["no parameters line (Steps: ...) found"]


def test_lines_after_the_parameters_line_do_not_hide_it() -> None:
    meta = parse_a1111("a fox\nSteps: 30, Seed: 9\nsome extension's footer")
    assert (meta.prompt, meta.steps, meta.seed) == ("a fox", 30, 9)
    assert "1 line(s) after the parameters line ignored" in meta.warnings


def test_an_unbalanced_quote_costs_one_value_not_the_line() -> None:
    meta = parse_a1111('x\nSteps: 20, Lora hashes: "a: 0123456789ab, Seed: 7, Size: 64x32')
    assert (meta.steps, meta.seed, meta.width, meta.height) == (20, 7, 64, 32)
    assert meta.lora_hashes == {"a": "0123456789ab"}
    assert 'Lora hashes: unbalanced "; read up to the next comma' in meta.warnings


@pytest.mark.parametrize("hashes", ['{"model": "abc", oops}', '{"model": "abc"', "[1, 2]", '"just text"'])
def test_bad_hashes_json_is_ignored_with_a_warning_and_later_keys_survive(hashes: str) -> None:
    meta = parse_a1111(f"x\nSteps: 20, Hashes: {hashes}, Seed: 3")
    assert meta.hashes == {}
    assert meta.steps == 20 and meta.seed == 3
    assert any(warning.startswith("Hashes:") for warning in meta.warnings), meta.warnings


@pytest.mark.parametrize("text", [
    "", "\n\n", "Steps:", ":::", '"', "{", "Negative prompt:", "Steps: 1, Hashes: {", "Steps: 1, ,,, : ,",
    'Steps: 1, Civitai resources: [1, "x", null, {"type": 5, "weight": "heavy", "modelVersionId": true}]',
    "Steps: 1, Hashes: " + "[" * 100_000,
    "Steps: 1, Hashes: " + "[" * 50_000 + "]" * 50_000,  # json.loads recurses: RecursionError
    "<lora:x:heavy> <lora::> <lora:>\nSteps: 2",
    "\x00\x01\ufffd garbage\r\nSteps: \x00",
])
def test_broken_text_never_raises(text: str) -> None:
    meta = parse_a1111(text)
    assert isinstance(meta, GenerationMeta)
    meta.to_civitai_meta()
    meta.resource_refs()
    format_a1111(meta)


@pytest.mark.parametrize("text", [
    "Steps: 1, " + " " * 200_000 + "x",
    "Steps: 1, CFG scale: " + "1" * 200_000 + "x",
    "Steps: 1, Size: " + "1" * 200_000 + "x" + "1" * 200_000 + "y",
    "Steps: 1, " + 'k: "x, ' * 20_000,
    "Steps: 1, " + "k: {x, " * 20_000,
    "Steps: 1, " + "a:" * 200_000,
    "<lora:a" * 100_000 + "\nSteps: 1",
])
def test_hostile_text_is_read_in_linear_time(text: str) -> None:
    # Each of these took minutes with a backtracking pattern or a rescan per value.
    started = time.monotonic()
    parse_a1111(text)
    assert time.monotonic() - started < 1


def test_text_that_is_not_a_string_is_a_warning_not_an_error() -> None:
    meta = parse_a1111(b"Steps: 20")  # type: ignore[arg-type]
    assert meta.steps is None and meta.warnings == ["parameters are bytes, not text"]


def test_a_lora_tag_with_a_garbage_weight_counts_as_weight_one_with_a_warning() -> None:
    meta = parse_a1111("<lora:detail:heavy>\nSteps: 2, Seed: 1, Size: 8x8")
    assert meta.loras == [("detail", 1.0)]
    assert any("weight is not a number" in warning for warning in meta.warnings)


def test_format_then_parse_round_trips_the_structured_fields() -> None:
    original = parse_a1111(A1111_TEXT)
    text = format_a1111(original)
    again = parse_a1111(text)
    assert again == original
    assert again.warnings == []
    assert text.splitlines()[-1].startswith("Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras")


def test_round_trip_survives_awkward_values() -> None:
    meta = GenerationMeta(
        prompt="a \"quoted\" cat, 猫\nsecond line <lora:x:0.333333333333>",
        negative_prompt="low: quality, ugly\n  indented",
        steps=20, sampler='Euler "ancestral", fast', scheduler="", cfg_scale=0.1 + 0.2, seed=2**63 + 5,
        width=1, height=99999, clip_skip=1, model="model: v2, final", model_hash="abc", vae=" spaced ",
        vae_hash="ff", denoising_strength=1.0, loras=[("x", 0.333333333333)],
        lora_hashes={"x": "0123456789ab"}, embedding_hashes={"neg": "00"},
        hashes={"model": "abc", "lora:x": "0123"},
        resources=[{"type": "lora", "modelVersionId": 1, "modelName": 'q"uote, [x]'}],
        extra={"Template": "{not json", "Empty": "", "List": "[1, 2]", "Newline": "a\nb"},
    )
    again = parse_a1111(format_a1111(meta))
    assert again.warnings == []
    # negative_prompt lines are stripped as A1111 strips them
    assert again == GenerationMeta(**{**meta.__dict__, "negative_prompt": "low: quality, ugly\nindented"})


def test_raw_and_warnings_do_not_take_part_in_equality() -> None:
    assert parse_a1111("x\nSteps: 1, Seed: a, Size: 1x1") == parse_a1111("x\nSteps: 1, Size: 1x1, Seed: b")


def test_civitai_meta_uses_civitai_key_names_and_folds_hashes_together() -> None:
    meta = parse_a1111(A1111_TEXT).to_civitai_meta()
    assert meta["prompt"].startswith("masterpiece") and meta["negativePrompt"].startswith("(worst")
    assert (meta["steps"], meta["sampler"], meta["cfgScale"], meta["seed"], meta["clipSkip"]) == (
        28, "DPM++ 2M", 7.5, 3247891234, 2)
    assert (meta["Size"], meta["Model hash"], meta["Model"]) == ("512x768", "6ce0161689", "v1-5-pruned-emaonly")
    assert meta["Hires upscaler"] == "4x-UltraSharp" and meta["Version"] == "v1.10.1"
    assert meta["hashes"] == {"model": "6ce0161689", "vae": "63aeecb90f", "lora:add_detail": "7c6bad76eb54",
                              "lora:pastelMix_v1": "9f4d5e3c2b1a", "embed:EasyNegative": "c74b4e810b03"}
    assert {"type": "model", "name": "v1-5-pruned-emaonly", "hash": "6ce0161689"} in meta["resources"]
    assert {"type": "lora", "name": "add_detail", "hash": "7c6bad76eb54", "weight": 0.8} in meta["resources"]
    assert meta["civitaiResources"][1]["modelVersionId"] == 62833
    json.dumps(meta)  # it goes out as JSON as is


def test_resource_refs_carry_every_hash_and_version_once_for_linking() -> None:
    refs = parse_a1111(A1111_TEXT).resource_refs()
    by_hash = {ref.hash: ref for ref in refs if ref.hash}
    assert set(by_hash) == {"6CE0161689", "63AEECB90F", "7C6BAD76EB54", "9F4D5E3C2B1A", "C74B4E810B03"}
    assert by_hash["7C6BAD76EB54"] == ResourceRef("lora", "add_detail", "7C6BAD76EB54", 0.8, source="prompt")
    assert by_hash["6CE0161689"].kind == "checkpoint"
    assert by_hash["C74B4E810B03"].kind == "embedding"
    assert ResourceRef("lora", "filmGrain", None, 1.0, source="prompt") in refs
    versions = {ref.model_version_id: ref.kind for ref in refs if ref.model_version_id}
    assert versions == {128713: "checkpoint", 62833: "lora"}
    assert len(refs) == 8  # the Hashes entries repeat hashes already known and add nothing


def test_civitai_resources_given_as_air_still_name_their_version() -> None:
    meta = parse_a1111('x\nSteps: 1, Seed: 1, Civitai resources: '
                       '[{"type": "lora", "air": "urn:air:sdxl:lora:civitai:328553@368189", "weight": 0.7}]')
    assert meta.resource_refs() == [ResourceRef("lora", None, None, 0.7, 368189, "Civitai resources")]


# --- ComfyUI -----------------------------------------------------------------------------------------

def comfy_graph() -> dict[str, Any]:
    """The default ComfyUI text-to-image graph with two LoRAs, as the `prompt` PNG chunk holds it."""
    return {
        "3": {"class_type": "KSampler", "inputs": {
            "seed": 156680208700286, "steps": 25, "cfg": 6.5, "sampler_name": "dpmpp_2m",
            "scheduler": "karras", "denoise": 1, "model": ["11", 0], "positive": ["6", 0],
            "negative": ["7", 0], "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 832, "height": 1216, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {
            "text": "a lighthouse at dusk, volumetric light", "clip": ["11", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry, lowres", "clip": ["11", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
        "10": {"class_type": "LoraLoader", "inputs": {
            "lora_name": "add-detail-xl.safetensors", "strength_model": 0.8, "strength_clip": 0.8,
            "model": ["4", 0], "clip": ["4", 1]}},
        "11": {"class_type": "LoraLoader", "inputs": {
            "lora_name": "pixel-art-xl.safetensors", "strength_model": 1.2, "strength_clip": 1,
            "model": ["10", 0], "clip": ["10", 1]}},
    }


def test_a_comfyui_graph_gives_checkpoint_loras_settings_prompts_and_size() -> None:
    workflow = {"last_node_id": 11, "nodes": [{"id": 3, "type": "KSampler"}], "links": []}
    meta = parse_comfyui(json.dumps(comfy_graph()), json.dumps(workflow))
    assert meta.warnings == []
    assert meta.source == "comfyui"
    assert (meta.model, meta.checkpoints) == ("sd_xl_base_1.0.safetensors", ["sd_xl_base_1.0.safetensors"])
    assert meta.loras == [("add-detail-xl.safetensors", 0.8), ("pixel-art-xl.safetensors", 1.2)]
    assert (meta.seed, meta.steps, meta.cfg_scale, meta.sampler, meta.scheduler, meta.denoising_strength) == (
        156680208700286, 25, 6.5, "dpmpp_2m", "karras", 1.0)
    assert (meta.prompt, meta.negative_prompt) == ("a lighthouse at dusk, volumetric light", "blurry, lowres")
    assert (meta.width, meta.height) == (832, 1216)
    assert json.loads(meta.raw) == comfy_graph()


def test_comfyui_loras_and_checkpoints_are_resource_refs_by_name() -> None:
    refs = parse_comfyui(comfy_graph()).resource_refs()
    assert refs == [ResourceRef("checkpoint", "sd_xl_base_1.0.safetensors", source="ComfyUI"),
                    ResourceRef("lora", "add-detail-xl.safetensors", weight=0.8, source="ComfyUI"),
                    ResourceRef("lora", "pixel-art-xl.safetensors", weight=1.2, source="ComfyUI")]
    civitai = parse_comfyui(comfy_graph()).to_civitai_meta()
    assert civitai["cfgScale"] == 6.5 and civitai["Size"] == "832x1216" and civitai["scheduler"] == "karras"


def test_the_first_pass_sampler_is_chosen_over_a_hires_pass() -> None:
    graph = comfy_graph()
    # The hires pass gets the lower id on purpose: the choice must follow the links, not the numbers.
    graph["31"] = graph.pop("3")
    graph["8"]["inputs"]["samples"] = ["2", 0]
    graph["20"] = {"class_type": "LatentUpscaleBy", "inputs": {
        "upscale_method": "nearest-exact", "scale_by": 1.5, "samples": ["31", 0]}}
    graph["2"] = {"class_type": "KSamplerAdvanced", "inputs": {
        "noise_seed": 1, "steps": 12, "cfg": 5, "sampler_name": "euler", "scheduler": "normal",
        "model": ["11", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["20", 0],
        "add_noise": "enable", "start_at_step": 0, "end_at_step": 10000, "return_with_leftover_noise": "disable"}}
    meta = parse_comfyui(graph)
    assert (meta.seed, meta.steps, meta.sampler) == (156680208700286, 25, "dpmpp_2m")
    assert meta.warnings == ["2 samplers; settings are from node 31"]


def test_prompts_are_found_through_controlnet_and_sdxl_encoders() -> None:
    graph = comfy_graph()
    graph["6"] = {"class_type": "CLIPTextEncodeSDXL", "inputs": {
        "text_g": "a red fox", "text_l": "a red fox", "width": 1024, "height": 1024, "clip": ["11", 1]}}
    graph["12"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": ["6", 0], "negative": ["7", 0], "control_net": ["13", 0], "image": ["14", 0],
        "strength": 0.7}}
    graph["15"] = {"class_type": "ConditioningSetArea", "inputs": {"conditioning": ["12", 1], "x": 0}}
    graph["3"]["inputs"].update(positive=["12", 0], negative=["15", 0])
    meta = parse_comfyui(graph)
    assert (meta.prompt, meta.negative_prompt) == ("a red fox", "blurry, lowres")


def test_a_seed_from_a_primitive_node_is_followed() -> None:
    graph = comfy_graph()
    graph["3"]["inputs"]["seed"] = ["30", 0]
    graph["30"] = {"class_type": "Seed (rgthree)", "inputs": {"seed": 42}}
    assert parse_comfyui(graph).seed == 42


@pytest.mark.parametrize("prompt", [
    "not json", "[1, 2]", '{"1": 5, "2": {"inputs": {}}}', "", None, b"\xff\xfe", 42,
    "[" * 100_000 + "]" * 100_000,
    {"3": {"class_type": "KSampler", "inputs": {"seed": "abc", "steps": 2.5, "cfg": True,
                                                "positive": ["99", 0], "negative": "oops", "model": [1]}}},
    {"3": {"class_type": "KSampler", "inputs": {"positive": ["4", 0], "latent_image": ["5", 0]}},
     "4": {"class_type": "ConditioningCombine", "inputs": {"conditioning": ["4", 0]}},  # a cycle
     "5": {"class_type": "EmptyLatentImage", "inputs": {"width": "wide", "height": None}}},
    {"3": {"class_type": "LoraLoader", "inputs": {"lora_name": "x.safetensors", "strength_model": "lots"}},
     "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ["9", 0]}}},
])
def test_malformed_comfyui_graphs_never_raise_and_say_why(prompt: Any) -> None:
    meta = parse_comfyui(prompt, "{broken workflow")
    assert meta.warnings
    assert any("workflow: invalid JSON" in warning for warning in meta.warnings)
    meta.to_civitai_meta()
    meta.resource_refs()


def test_bad_comfyui_values_are_skipped_field_by_field() -> None:
    graph = comfy_graph()
    graph["3"]["inputs"].update(seed="abc", cfg=True)
    graph["10"]["inputs"]["strength_model"] = "lots"
    meta = parse_comfyui(graph)
    assert (meta.seed, meta.cfg_scale, meta.steps) == (None, None, 25)
    assert meta.loras[0] == ("add-detail-xl.safetensors", 1.0)
    assert "seed: 'abc' is not a whole number; ignored" in meta.warnings
    assert "node 10: strength_model 'lots' is not a number; using 1.0" in meta.warnings


def test_image_text_prefers_a1111_parameters_and_falls_back_to_comfyui() -> None:
    graph = json.dumps(comfy_graph())
    assert parse_image_text({"parameters": A1111_TEXT, "prompt": graph}).source == "a1111"
    assert parse_image_text({"UserComment": A1111_TEXT}).steps == 28
    assert parse_image_text({"prompt": graph, "workflow": "{}"}).source == "comfyui"
    assert parse_image_text({"Software": "GIMP"}) is None
    assert parse_image_text({"comment": "made with love"}) is None
