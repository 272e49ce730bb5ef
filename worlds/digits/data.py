"""scikit-learn's 8x8 handwritten digits as the world's images, and the fixed held-out split."""

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SIZE = 16
# The held-out split is fixed (not tied to the training seed) so that every run and every test agrees on
# which real digits no model has seen.
SPLIT_SEED = 6
HELD_OUT_FRACTION = 0.2


def load() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as (N, 8, 8) float32 arrays with values 0..16, and their labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


def split_indices(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and held-out digits."""
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    held_out = int(round(n * HELD_OUT_FRACTION))
    return np.sort(order[held_out:]), np.sort(order[:held_out])


def to_pixels(digits: np.ndarray) -> torch.Tensor:
    """8x8 digits (0..16) as (N, 3, 16, 16) images in [-1, 1]: light strokes on a dark ground."""
    x = torch.as_tensor(digits, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    return (x * 2 - 1).clamp(-1, 1).repeat(1, 3, 1, 1)
