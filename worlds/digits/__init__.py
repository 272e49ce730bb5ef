"""The digits world: a tiny StableDiffusionPipeline trained on scikit-learn's handwritten digits.

Generated images are 16x16; a committed classifier (judge.py) reads them as digits, so features that
change a model (LoRA training, concept erasure) can measure what they did. See docs/digits-world.md.
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL_DIR = HERE / "model"
SINGLE_FILE = HERE / "digits-v1.safetensors"
CLASSIFIER_FILE = HERE / "classifier.safetensors"

BASE_MODEL = "Digits"
MODEL_TYPE = "Checkpoint"
