"""The digits world's judge: a small CNN that reads images as digits, and prompt-following accuracy.

    from worlds.digits.judge import load_pipeline, prompt_accuracy
    table = prompt_accuracy(load_pipeline(), seeds=30)
    print(table.format()); table.accuracy
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import CLASSIFIER_FILE, MODEL_DIR, SINGLE_FILE
from .prompts import DEFAULT_TEMPLATE, prompt

GUIDANCE_SCALE = 10.0
STEPS = 20
HEIGHT = WIDTH = 16


class DigitClassifier(nn.Module):
    """A two-layer CNN over 8x8 digits with values 0..16."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 10))

    def forward(self, digits: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(digits[:, None] / 16.0))


def load_classifier(path: Path = CLASSIFIER_FILE) -> DigitClassifier:
    """The committed classifier, in eval mode."""
    from safetensors.torch import load_file

    model = DigitClassifier()
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def images_to_digits(images) -> np.ndarray:
    """Generated images (PIL images, or an (N, H, W, 3) array in [0, 1]) as (N, 8, 8) digits with values 0..16.

    The inverse of how training images were made: average the colour channels, average-pool to 8x8.
    """
    if isinstance(images, (list, tuple)):
        images = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images])
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    if x.ndim == 3:
        x = x[None]
    grey = x.mean(dim=-1)[:, None]
    pooled = F.adaptive_avg_pool2d(grey, (8, 8))[:, 0]
    return (pooled.clamp(0, 1) * 16.0).numpy()


@torch.no_grad()
def classify_digits(digits: np.ndarray, classifier: DigitClassifier | None = None) -> np.ndarray:
    """Predicted labels of (N, 8, 8) digits with values 0..16."""
    classifier = classifier or load_classifier()
    return classifier(torch.as_tensor(np.asarray(digits, dtype=np.float32))).argmax(dim=1).numpy()


def classify(images, classifier: DigitClassifier | None = None) -> np.ndarray:
    """Predicted labels of generated images."""
    return classify_digits(images_to_digits(images), classifier)


def load_pipeline(device: str = "cpu", model_dir: Path = MODEL_DIR):
    """The committed diffusers-format pipeline, loaded offline as float32."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        str(model_dir), local_files_only=True, torch_dtype=torch.float32,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def single_file_path() -> Path:
    """The committed A1111-style single-file checkpoint (original SD 1.x key layout, safetensors)."""
    return SINGLE_FILE


def load_single_file_pipeline(path: Path = SINGLE_FILE, device: str = "cpu", config_dir: Path = MODEL_DIR):
    """A pipeline from a single-file checkpoint, offline: the component configs come from `config_dir`."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_single_file(
        str(path), config=str(config_dir), local_files_only=True, torch_dtype=torch.float32,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def generate(pipe, prompts: list[str], seeds: list[int], guidance_scale: float = GUIDANCE_SCALE,
             steps: int = STEPS) -> np.ndarray:
    """(N, 16, 16, 3) images in [0, 1], one per prompt; image i depends only on prompts[i] and seeds[i]."""
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    out = pipe(prompts, height=HEIGHT, width=WIDTH, num_inference_steps=steps, guidance_scale=guidance_scale,
               generator=generators, output_type="np")
    return out.images


@dataclass
class AccuracyTable:
    """How often images asked for each digit were read as that digit."""

    seeds: int
    template: str
    counts: dict[int, np.ndarray] = field(default_factory=dict)  # digit -> counts of each predicted label

    def per_digit(self) -> dict[int, float]:
        return {d: float(c[d] / c.sum()) for d, c in self.counts.items()}

    @property
    def accuracy(self) -> float:
        total = sum(c.sum() for c in self.counts.values())
        return float(sum(c[d] for d, c in self.counts.items()) / total)

    def format(self) -> str:
        lines = [f"prompt {self.template!r}, {self.seeds} seeds per digit", "digit  accuracy  read as (label:count)"]
        for d, c in self.counts.items():
            others = " ".join(f"{label}:{n}" for label, n in enumerate(c) if label != d and n)
            lines.append(f"{d:>5}  {c[d] / c.sum():8.2f}  {others}")
        lines.append(f"  all  {self.accuracy:8.3f}")
        return "\n".join(lines)


def prompt_accuracy(pipe, digits=range(10), seeds: int = 30, prompt_template: str = DEFAULT_TEMPLATE,
                    guidance_scale: float = GUIDANCE_SCALE, steps: int = STEPS, first_seed: int = 0,
                    classifier: DigitClassifier | None = None) -> AccuracyTable:
    """Generate `seeds` images per digit (seeds first_seed..) and count what the classifier reads them as."""
    classifier = classifier or load_classifier()
    table = AccuracyTable(seeds=seeds, template=prompt_template)
    seed_list = list(range(first_seed, first_seed + seeds))
    for d in digits:
        images = generate(pipe, [prompt(d, prompt_template)] * seeds, seed_list, guidance_scale, steps)
        table.counts[d] = np.bincount(classify(images, classifier), minlength=10)
    return table
