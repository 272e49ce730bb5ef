"""Civitai's vocabulary, which Atrium speaks so that existing clients work unchanged.

Every value a client may send or receive (model types, statuses, file types, licence flags, content
levels, reactions, sorts, periods) is listed here once; the API's `/api/v1/enums` is built from it.
"""

from __future__ import annotations

from enum import IntFlag, StrEnum

from node.core.errors import InvalidInput


class ModelType(StrEnum):
    CHECKPOINT = "Checkpoint"
    TEXTUAL_INVERSION = "TextualInversion"
    HYPERNETWORK = "Hypernetwork"
    AESTHETIC_GRADIENT = "AestheticGradient"
    LORA = "LORA"
    LOCON = "LoCon"
    DORA = "DoRA"
    CONTROLNET = "Controlnet"
    UPSCALER = "Upscaler"
    MOTION_MODULE = "MotionModule"
    VAE = "VAE"
    TEXT_ENCODER = "TextEncoder"
    UNET = "UNet"
    CLIP_VISION = "CLIPVision"
    POSES = "Poses"
    WILDCARDS = "Wildcards"
    WORKFLOWS = "Workflows"
    OTHER = "Other"


class ModelStatus(StrEnum):
    DRAFT = "Draft"
    PUBLISHED = "Published"
    UNPUBLISHED = "Unpublished"
    DELETED = "Deleted"


class ModelMode(StrEnum):
    ARCHIVED = "Archived"      # listed, but files are no longer downloadable
    TAKEN_DOWN = "TakenDown"   # listed without images or files


class FileType(StrEnum):
    MODEL = "Model"
    PRUNED_MODEL = "Pruned Model"
    VAE = "VAE"
    CONFIG = "Config"
    TRAINING_DATA = "Training Data"
    ARCHIVE = "Archive"
    OTHER = "Other"


class FileFormat(StrEnum):
    SAFETENSOR = "SafeTensor"
    PICKLE_TENSOR = "PickleTensor"
    GGUF = "GGUF"
    DIFFUSERS = "Diffusers"
    ONNX = "ONNX"
    OTHER = "Other"


class FileSize(StrEnum):
    FULL = "full"
    PRUNED = "pruned"


class FloatingPoint(StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    FP8 = "fp8"


class CommercialUse(StrEnum):
    NONE = "None"
    IMAGE = "Image"
    RENT_CIVIT = "RentCivit"
    RENT = "Rent"
    SELL = "Sell"


class NsfwLevel(IntFlag):
    """Content levels as bit flags; a viewer's browsing level is a mask of the levels they see."""

    PG = 1
    PG13 = 2
    R = 4
    X = 8
    XXX = 16
    BLOCKED = 32


# What an anonymous visitor sees.
PUBLIC_BROWSING_LEVEL = NsfwLevel.PG
# Every level a signed-in adult may opt into (Blocked is never shown).
ALL_BROWSING_LEVELS = NsfwLevel.PG | NsfwLevel.PG13 | NsfwLevel.R | NsfwLevel.X | NsfwLevel.XXX
# Levels Civitai calls "nsfw" in its boolean field.
NSFW_LEVELS = NsfwLevel.R | NsfwLevel.X | NsfwLevel.XXX


class ReactionKind(StrEnum):
    LIKE = "Like"
    DISLIKE = "Dislike"
    LAUGH = "Laugh"
    CRY = "Cry"
    HEART = "Heart"


class ModelSort(StrEnum):
    HIGHEST_RATED = "Highest Rated"
    MOST_DOWNLOADED = "Most Downloaded"
    MOST_LIKED = "Most Liked"
    MOST_DISCUSSED = "Most Discussed"
    MOST_COLLECTED = "Most Collected"
    MOST_IMAGES = "Most Images"
    NEWEST = "Newest"
    OLDEST = "Oldest"


class ImageSort(StrEnum):
    MOST_REACTIONS = "Most Reactions"
    MOST_COMMENTS = "Most Comments"
    NEWEST = "Newest"
    OLDEST = "Oldest"


class Period(StrEnum):
    ALL_TIME = "AllTime"
    YEAR = "Year"
    MONTH = "Month"
    WEEK = "Week"
    DAY = "Day"


# Base models Civitai lists; the field is a free string, these are the ones clients filter by.
BASE_MODELS = (
    "SD 1.4", "SD 1.5", "SD 1.5 LCM", "SD 1.5 Hyper", "SD 2.0", "SD 2.1", "SDXL 1.0", "SDXL Lightning",
    "SDXL Hyper", "SDXL Turbo", "Pony", "Illustrious", "NoobAI", "SD 3", "SD 3.5", "Flux.1 S", "Flux.1 D",
    "AuraFlow", "PixArt a", "PixArt E", "Hunyuan 1", "Kolors", "Stable Cascade", "SVD", "Other",
)


def parse_enum(enum: type[StrEnum], value: str, field: str) -> StrEnum:
    """A member of `enum` by its value, case-insensitively; InvalidInput listing the choices otherwise."""
    if isinstance(value, str):
        for member in enum:
            if member.value.lower() == value.strip().lower():
                return member
    choices = ", ".join(member.value for member in enum)
    raise InvalidInput(f"{field}: unknown value {value!r}; use one of: {choices}")


def level_names(mask: int) -> list[str]:
    """The names of the levels in a mask, lowest first."""
    return [level.name for level in NsfwLevel if level & mask and level.name]
