"""The digits world (issue 6, part 3): a trained tiny StableDiffusionPipeline, its single-file checkpoint and
its judge. These tests load the committed weights; only the smoke test trains (for a few steps)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from worlds.digits import CLASSIFIER_FILE, HERE, MODEL_DIR, SINGLE_FILE, data
from worlds.digits.judge import (
    classify, classify_digits, generate, load_classifier, load_pipeline, load_single_file_pipeline,
    prompt_accuracy, single_file_path,
)
from worlds.digits.prompts import BUILD_TEMPLATES, HELD_OUT_TEMPLATES, TRAIN_TEMPLATES, VOCABULARY_WORDS, prompt

REQUIRED_PROMPT_ACCURACY = 0.80


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline()


def committed_weight_files() -> list[Path]:
    return [p for p in HERE.rglob("*.safetensors")]


def test_classifier_reads_held_out_real_digits_at_97_percent_or_better():
    digits, labels = data.load()
    train, held_out = data.split_indices(len(labels))
    assert not set(train) & set(held_out) and len(train) + len(held_out) == len(labels)
    predicted = classify_digits(digits[held_out], load_classifier())
    accuracy = float((predicted == labels[held_out]).mean())
    print(f"classifier: {accuracy:.4f} on {len(held_out)} held-out real digits")
    assert accuracy >= 0.97


def test_classifier_reads_real_digits_rendered_as_generated_images():
    # The judge sees pipeline output (16x16 RGB in [0, 1]); real digits rendered that way must read the same.
    digits, labels = data.load()
    _, held_out = data.split_indices(len(labels))
    images = ((data.to_pixels(digits[held_out]) + 1) / 2).permute(0, 2, 3, 1).numpy()
    accuracy = float((classify(images, load_classifier()) == labels[held_out]).mean())
    assert accuracy >= 0.97


def test_committed_weights_are_under_10_mb_in_total_and_8_mb_per_file():
    files = committed_weight_files()
    assert {MODEL_DIR / "unet" / "diffusion_pytorch_model.safetensors", SINGLE_FILE, CLASSIFIER_FILE} <= set(files)
    sizes = {p.relative_to(HERE).as_posix(): p.stat().st_size for p in files}
    print(sizes, sum(sizes.values()))
    assert all(size < 8_000_000 for size in sizes.values())
    assert sum(p.stat().st_size for p in HERE.rglob("*") if p.is_file() and "__pycache__" not in p.parts) < 10_000_000


def test_committed_pipeline_follows_prompts_at_80_percent_over_30_seeds_per_digit(pipe):
    table = prompt_accuracy(pipe, seeds=30, classifier=load_classifier())
    print("\n" + table.format())
    assert table.accuracy >= REQUIRED_PROMPT_ACCURACY


def test_same_seed_and_params_give_the_same_pixels(pipe):
    prompts = [prompt(7), prompt(3, "the number {numeral}")]
    first = generate(pipe, prompts, [11, 12])
    again = generate(load_pipeline(), prompts, [11, 12])
    assert np.array_equal(first, again)
    assert not np.array_equal(first[0], generate(pipe, prompts[:1], [13])[0])


def test_an_image_depends_only_on_its_own_prompt_and_seed(pipe):
    alone = generate(pipe, [prompt(4)], [5])
    batched = generate(pipe, [prompt(1), prompt(4)], [9, 5])
    np.testing.assert_allclose(alone[0], batched[1], atol=1e-4)


def test_single_file_checkpoint_loads_offline_and_gives_the_same_pixels(pipe):
    single = load_single_file_pipeline(single_file_path())
    for name in ("unet", "vae", "text_encoder"):
        ours, theirs = getattr(pipe, name).state_dict(), getattr(single, name).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name
    prompts = [prompt(d) for d in range(10)]
    assert np.array_equal(generate(pipe, prompts, list(range(10))), generate(single, prompts, list(range(10))))


def test_single_file_checkpoint_has_the_sd1_layout_and_says_what_it_is():
    with safe_open(str(SINGLE_FILE), "pt") as f:
        keys = set(f.keys())
        metadata = f.metadata()
    prefixes = {k.split(".")[0] for k in keys}
    assert prefixes == {"model", "first_stage_model", "cond_stage_model"}
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight" in keys
    assert "first_stage_model.encoder.conv_in.weight" in keys
    assert metadata["atrium.base_model"] == "Digits" and metadata["atrium.model_type"] == "Checkpoint"
    assert json.loads(metadata["atrium.training"])["denoiser_steps"] > 0


def test_every_prompt_fits_the_tokenizer_and_each_word_is_one_token(pipe):
    tokenizer = pipe.tokenizer
    for word in VOCABULARY_WORDS:
        assert len(tokenizer(word).input_ids) == 3, word
    for d in range(10):
        for template in TRAIN_TEMPLATES:
            assert len(tokenizer(prompt(d, template)).input_ids) <= tokenizer.model_max_length
    assert set(BUILD_TEMPLATES).isdisjoint(HELD_OUT_TEMPLATES)
    assert (MODEL_DIR / "tokenizer" / "vocab.json").exists() and (MODEL_DIR / "tokenizer" / "merges.txt").exists()


def test_train_script_runs_end_to_end_and_writes_both_formats(tmp_path):
    out = tmp_path / "world"
    result = subprocess.run(
        [sys.executable, "-m", "worlds.digits.train", "--out", str(out), "--minutes", "1", "--vae-steps", "2",
         "--unet-steps", "2", "--classifier-epochs", "1", "--select-seeds", "0", "--eval-seeds", "0"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "denoiser: 2 steps" in result.stdout
    for name in ("model/model_index.json", "model/unet/diffusion_pytorch_model.safetensors",
                 "model/vae/diffusion_pytorch_model.safetensors", "model/text_encoder/model.safetensors",
                 "model/tokenizer/vocab.json", "model/scheduler/scheduler_config.json",
                 "digits-v1.safetensors", "classifier.safetensors"):
        assert (out / name).is_file(), name
    fresh = load_single_file_pipeline(out / "digits-v1.safetensors", config_dir=out / "model")
    assert generate(fresh, [prompt(7)], [0]).shape == (1, 16, 16, 3)
