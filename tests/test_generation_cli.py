"""`atrium generate` against a real `atrium serve` with the generation plugin enabled: a checkpoint and a
LoRA published with `atrium publish`, images written where --out says, metadata the catalog reads back."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from node.core.imagemeta import parse_a1111
from tests.conftest import atrium, start_serve, wait_healthy
from tests.generation_fixtures import digits_checkpoint, lora_files

AIR_LINE = re.compile(r"urn:air:\S+")


@dataclass
class Served:
    url: str
    token: str
    checkpoint: str
    lora: str


def publish(served_url: str, token: str, path: Path, name: str, kind: str) -> str:
    result = atrium("publish", str(path), "--name", name, "--type", kind, "--base-model", "Digits",
                    "--node", served_url, "--token", token)
    assert result.returncode == 0, result.stderr
    return AIR_LINE.findall(result.stdout)[-1]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("generate-cli")
    checkpoint, config, pipe = digits_checkpoint(root)
    kohya, _ = lora_files(pipe, root / "loras")
    data = root / "data"
    assert atrium("init", str(data)).returncode == 0
    toml = (data / "node.toml").read_text().replace("enabled = []", 'enabled = ["generation"]')
    if config is not None:
        toml += f'\n[plugins.generation]\nbase_model_configs = ["Digits={config}"]\n'
    (data / "node.toml").write_text(toml)
    added = atrium("users", "add", "maker", "--role", "creator", data=data)
    assert added.returncode == 0, added.stderr
    token = added.stdout.splitlines()[-1]
    server = start_serve(data)
    try:
        wait_healthy(server, deadline=60)
        checkpoint_air = publish(server.url, token, checkpoint, "Digits", "Checkpoint")
        lora = publish(server.url, token, kohya, "Digit style", "LORA")
        yield Served(server.url, token, checkpoint_air, lora)
    finally:
        server.proc.kill()
        server.proc.communicate(timeout=10)


def generate(served: Served, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return atrium("generate", "--model", served.checkpoint, "--prompt", "a handwritten digit two",
                  "--steps", "4", "--node", served.url, "--token", served.token, "--out", str(out), *extra,
                  timeout=180)


def test_generate_writes_the_image_with_a_lora_stacked_and_metadata_the_catalog_reads(served: Served,
                                                                                     tmp_path: Path) -> None:
    out = tmp_path / "two.png"
    result = generate(served, out, "--lora", f"{served.lora}:0.7", "--seed", "31", "--sampler", "Euler a",
                      "--negative", "blurry", "--size", "16x16")
    assert result.returncode == 0, result.stderr
    assert f"{out}  seed 31  image " in result.stdout
    assert "generate: succeeded" in result.stderr or "100.0%" in result.stderr
    with Image.open(out) as image:
        image.load()
        meta = parse_a1111(image.text["parameters"])  # type: ignore[attr-defined]
    assert (meta.seed, meta.steps, meta.sampler, meta.negative_prompt, meta.width) == (31, 4, "Euler a", "blurry", 16)
    assert meta.loras == [("digitstyle_kohya", 0.7)] and list(meta.lora_hashes) == ["digitstyle_kohya"]
    assert meta.prompt == "a handwritten digit two <lora:digitstyle_kohya:0.7>"
    # The same command again gives the same pixels.
    again = tmp_path / "again.png"
    assert generate(served, again, "--lora", f"{served.lora}:0.7", "--seed", "31", "--sampler", "Euler a",
                    "--negative", "blurry").returncode == 0
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(again)))


def test_a_batch_is_written_as_numbered_files_with_consecutive_seeds(served: Served, tmp_path: Path) -> None:
    result = generate(served, tmp_path / "many.png", "--batch", "2", "--seed", "7")
    assert result.returncode == 0, result.stderr
    for i in range(2):
        with Image.open(tmp_path / f"many-{i}.png") as image:
            assert parse_a1111(image.text["parameters"]).seed == 7 + i  # type: ignore[attr-defined]
    assert not (tmp_path / "many.png").exists()


def test_a_refused_request_exits_1_with_the_node_s_message_and_writes_nothing(served: Served, tmp_path: Path) -> None:
    out = tmp_path / "none.png"
    result = generate(served, out, "--steps", "10000")
    assert result.returncode == 1
    assert "steps: 10000 is out of range" in result.stderr
    result = generate(served, out, "--size", "big")
    assert result.returncode == 1 and "--size: 'big' is not WIDTHxHEIGHT" in result.stderr
    assert not out.exists()
