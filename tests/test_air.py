"""AI Resource Names (node.core.air)."""

from __future__ import annotations

import pytest

from node.core.air import (ECOSYSTEMS, TYPES, Air, InvalidAir, air_type_for_model_type,
                           ecosystem_for_base_model, model_type_for_air_type)
from node.core.errors import InvalidInput

# Civitai's model types (civitai-facts.md, Entities).
CIVITAI_MODEL_TYPES = ["Checkpoint", "TextualInversion", "Hypernetwork", "AestheticGradient", "LORA", "LoCon",
                       "DoRA", "Controlnet", "Upscaler", "MotionModule", "VAE", "TextEncoder", "UNet",
                       "CLIPVision", "Poses", "Wildcards", "Workflows", "Other"]


def test_civitais_example_parses_into_its_parts_and_prints_back() -> None:
    air = Air.parse("urn:air:sdxl:lora:civitai:328553@368189")
    assert air == Air(ecosystem="sdxl", type="lora", source="civitai", id="328553", version="368189")
    assert str(air) == "urn:air:sdxl:lora:civitai:328553@368189"


def test_a_file_and_its_format_are_parsed_and_printed() -> None:
    air = Air.parse("urn:air:flux1:checkpoint:civitai:618692@691639+12345.safetensors")
    assert (air.version, air.file, air.format) == ("691639", "12345", "safetensors")
    assert str(air) == "urn:air:flux1:checkpoint:civitai:618692@691639+12345.safetensors"


@pytest.mark.parametrize("text, expected", [
    ("civitai:328553@368189", Air(source="civitai", id="328553", version="368189")),
    ("air:sdxl:civitai:1", Air(ecosystem="sdxl", source="civitai", id="1")),
    ("urn:air:lora:civitai:1", Air(type="lora", source="civitai", id="1")),
    ("sd1:embedding:mynode:easynegative", Air(ecosystem="sd1", type="embedding", source="mynode",
                                              id="easynegative")),
    ("other:civitai:1", Air(ecosystem="other", source="civitai", id="1")),
    ("civitai:5.ckpt", Air(source="civitai", id="5", format="ckpt")),
])
def test_prefixes_ecosystem_type_version_file_and_format_are_optional(text: str, expected: Air) -> None:
    air = Air.parse(text)
    assert air == expected
    assert Air.parse(str(air)) == air


def test_case_is_normalised_except_in_ids() -> None:
    air = Air.parse("URN:AIR:SDXL:LoRA:MyNode:Cute-Cats@V2.SafeTensors")
    assert air == Air(ecosystem="sdxl", type="lora", source="mynode", id="Cute-Cats", version="V2",
                      format="safetensors")


def test_other_sources_may_use_slugs_with_dots_and_slashes() -> None:
    air = Air.parse("urn:air:sdxl:checkpoint:huggingface:stabilityai/stable-diffusion-xl-base-1.0@main")
    assert (air.id, air.version, air.format) == ("stabilityai/stable-diffusion-xl-base-1.0", "main", None)
    assert str(air) == "urn:air:sdxl:checkpoint:huggingface:stabilityai/stable-diffusion-xl-base-1.0@main"


def test_ecosystems_civitai_added_later_are_carried_not_refused() -> None:
    air = Air.parse("urn:air:hunyuan:lora:civitai:1@2")
    assert air.ecosystem == "hunyuan" and air.ecosystem not in ECOSYSTEMS
    assert str(air) == "urn:air:hunyuan:lora:civitai:1@2"


def test_a_type_other_without_ecosystem_prints_in_a_form_that_reads_back_as_type_other() -> None:
    air = Air(type="other", source="civitai", id="1")
    assert str(air) == "urn:air:other:other:civitai:1"
    assert Air.parse(str(air)).type == "other"


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("   ", "empty"),
    ("hello", "missing the source"),
    ("urn:air:", "missing the source"),
    ("a:b:c:d:e:f", "too many"),
    ("urn:air:sdxl:lorax:civitai:1", "unknown type 'lorax'"),
    ("urn:air:sd xl:lora:civitai:1", "ecosystem 'sd xl'"),
    ("urn:air:sdxl:lora:civ itai:1", "source 'civ itai'"),
    ("urn:air::lora:civitai:1", "ecosystem ''"),
    ("civitai:abc", "id 'abc' must be a number"),
    ("civitai:", "id '' must be a number"),
    ("civitai:1@", "version '' must be a number"),
    ("civitai:1@2+x", "file 'x' must be a number"),
    ("civitai:1@@2", "id '1@' must be a number"),
    ("mynode:cats@v1 final", "version 'v1 final'"),
    ("mynode:-cats", "id '-cats'"),
])
def test_garbage_is_refused_naming_the_part_that_is_wrong(text: str, message: str) -> None:
    with pytest.raises(InvalidAir, match=message):
        Air.parse(text)


def test_air_errors_are_invalid_input() -> None:
    with pytest.raises(InvalidInput) as caught:
        Air.parse("civitai:abc")
    assert caught.value.code == "invalid_air"
    assert "'civitai:abc'" in caught.value.detail


def test_an_air_built_directly_is_checked_too() -> None:
    with pytest.raises(InvalidAir, match="unknown format 'exe'"):
        Air(source="mynode", id="x", format="exe")
    with pytest.raises(InvalidAir, match="source 'Civitai'"):
        Air(source="Civitai", id="1")


def test_every_civitai_model_type_maps_to_an_air_type() -> None:
    assert {t: air_type_for_model_type(t) for t in CIVITAI_MODEL_TYPES} == {
        "Checkpoint": "checkpoint", "TextualInversion": "embedding", "Hypernetwork": "hypernet",
        "AestheticGradient": "other", "LORA": "lora", "LoCon": "lycoris", "DoRA": "dora",
        "Controlnet": "controlnet", "Upscaler": "upscaler", "MotionModule": "motion", "VAE": "vae",
        "TextEncoder": "other", "UNet": "other", "CLIPVision": "other", "Poses": "other",
        "Wildcards": "other", "Workflows": "other", "Other": "other"}
    assert air_type_for_model_type("lora") == "lora"
    assert air_type_for_model_type("SomethingNew") == "other"


def test_every_air_type_maps_back_to_a_civitai_model_type() -> None:
    for air_type in TYPES:
        model_type = model_type_for_air_type(air_type)
        assert model_type in CIVITAI_MODEL_TYPES
        assert air_type_for_model_type(model_type) == air_type
    with pytest.raises(InvalidAir, match="unknown type 'lorax'"):
        model_type_for_air_type("lorax")


@pytest.mark.parametrize("base_model, ecosystem", [
    ("SD 1.4", "sd1"), ("SD 1.5", "sd1"), ("SD 1.5 LCM", "sd1"),
    ("SD 2.0", "sd2"), ("SD 2.1 768", "sd2"),
    ("SDXL 1.0", "sdxl"), ("SDXL Turbo", "sdxl"), ("SDXL Lightning", "sdxl"),
    ("Illustrious", "sdxl"), ("NoobAI", "sdxl"),
    ("Pony", "pony"),
    ("Flux.1 D", "flux1"), ("Flux.1 S", "flux1"),
    ("SD 3", "sd3"), ("SD 3.5 Large", "sd3"),
    ("Other", "other"), ("Stable Cascade", "other"), ("Pony V7", "other"), ("", "other"),
])
def test_base_models_map_to_ecosystems_and_unknown_ones_to_other(base_model: str, ecosystem: str) -> None:
    assert ecosystem_for_base_model(base_model) == ecosystem
    assert ecosystem in ECOSYSTEMS
