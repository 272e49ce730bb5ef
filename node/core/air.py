"""AI Resource Names: `urn:air:{ecosystem}:{type}:{source}:{id}@{version}+{file}.{format}`.

An AIR names a model, a version of it, or one file of a version, wherever it lives: `source` is
`civitai` for Civitai's catalog and a node's name for a model published on that node, e.g.
`urn:air:sdxl:lora:civitai:328553@368189`.

Parsing is liberal where Civitai's is: the `urn:` and `air:` prefixes, the ecosystem and the type may
be left out, and letters may be in any case (prefixes, ecosystem, type, source and format are
lowercased; ids keep their case). Any well-formed ecosystem is accepted, because Civitai adds
ecosystems as new base models appear and a node must be able to carry AIRs minted elsewhere; the ones
this node maps base models to are `ECOSYSTEMS`. Types are checked against `TYPES`, the closed list
that model types map onto, which is also what tells `lora:civitai:1` (a type) from `sdxl:civitai:1`
(an ecosystem) when only one of the two is given.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from node.core.errors import InvalidInput

ECOSYSTEMS = ("sd1", "sd2", "sdxl", "flux1", "sd3", "pony", "other")
TYPES = ("checkpoint", "embedding", "hypernet", "lora", "lycoris", "dora", "controlnet", "upscaler",
         "motion", "vae", "other")
# A trailing `.word` is a file format only for these, so ids such as `sdxl-base-1.0` keep their dot.
FORMATS = ("safetensors", "ckpt", "pt", "pth", "bin", "gguf", "onnx", "zip", "diffusers")

_ECOSYSTEM_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")
_SOURCE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# Ids, versions and files: Civitai's are numbers; other sources use slugs and `org/name` paths.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,199}$")
_NUMBER_RE = re.compile(r"^[0-9]{1,18}$")


class InvalidAir(InvalidInput):
    """A string given as an AIR is not one."""

    code = "invalid_air"


@dataclass(frozen=True)
class Air:
    """One parsed AIR. `ecosystem`, `type`, `version`, `file` and `format` may be absent."""

    source: str
    id: str
    ecosystem: str | None = None
    type: str | None = None
    version: str | None = None
    file: str | None = None
    format: str | None = None

    def __post_init__(self) -> None:
        _check(self)

    @classmethod
    def parse(cls, text: str) -> Air:
        """Parse an AIR in full or short form; raise `InvalidAir` naming the part that is wrong."""
        if not isinstance(text, str) or not text.strip():
            raise InvalidAir("AIR is empty")
        rest = text.strip()
        for prefix in ("urn:", "air:"):
            if rest[:len(prefix)].lower() == prefix:
                rest = rest[len(prefix):]
        *names, last = rest.split(":")
        if not names:
            raise InvalidAir(f"AIR {text!r}: missing the source, as in civitai:328553@368189")
        if len(names) > 3:
            raise InvalidAir(f"AIR {text!r}: too many ':'-separated parts; expected "
                             "[urn:air:][ecosystem:][type:]source:id[@version][+file][.format]")
        names = [name.lower() for name in names]
        ecosystem = kind = None
        if len(names) == 3:
            ecosystem, kind, source = names
        elif len(names) == 2:
            # One of ecosystem or type is missing: "other" is both, and counts as an ecosystem,
            # as it does in Civitai's own parser.
            if names[0] in TYPES and names[0] not in ECOSYSTEMS:
                kind, source = names
            else:
                ecosystem, source = names
        else:
            source = names[0]
        resource, fmt = _split_format(last)
        resource, file = _split_last(resource, "+")
        resource, version = _split_last(resource, "@")
        try:
            return cls(source=source, id=resource, ecosystem=ecosystem, type=kind, version=version,
                       file=file, format=fmt)
        except InvalidAir as exc:
            raise InvalidAir(f"AIR {text!r}: {exc.detail}") from None

    def __str__(self) -> str:
        parts = ["urn", "air"]
        if self.ecosystem is not None:
            parts.append(self.ecosystem)
        elif self.type == "other":
            # "other:source:id" would read back as an ecosystem; spell the unknown ecosystem out.
            parts.append("other")
        if self.type is not None:
            parts.append(self.type)
        text = ":".join(parts + [self.source, self.id])
        if self.version is not None:
            text += f"@{self.version}"
        if self.file is not None:
            text += f"+{self.file}"
        if self.format is not None:
            text += f".{self.format}"
        return text


def _split_last(text: str, separator: str) -> tuple[str, str | None]:
    if separator not in text:
        return text, None
    head, tail = text.rsplit(separator, 1)
    return head, tail


def _split_format(text: str) -> tuple[str, str | None]:
    head, dot, tail = text.rpartition(".")
    if dot and tail.lower() in FORMATS:
        return head, tail.lower()
    return text, None


def _check(air: Air) -> None:
    if air.ecosystem is not None and not _ECOSYSTEM_RE.match(air.ecosystem):
        raise InvalidAir(f"ecosystem {air.ecosystem!r} is not a lowercase name (known: "
                         f"{', '.join(ECOSYSTEMS)})")
    if air.type is not None and air.type not in TYPES:
        raise InvalidAir(f"unknown type {air.type!r} (expected one of {', '.join(TYPES)})")
    if not _SOURCE_RE.match(air.source):
        raise InvalidAir(f"source {air.source!r} must be 1-63 lowercase letters, digits, '-' or '_', "
                         "like civitai or a node name")
    # Civitai numbers everything; other sources may use slugs.
    pattern, shape = (_NUMBER_RE, "a number") if air.source == "civitai" else \
        (_ID_RE, "letters, digits, '-', '_', '.' and '/'")
    for part, value in (("id", air.id), ("version", air.version), ("file", air.file)):
        if value is not None and not pattern.match(value):
            raise InvalidAir(f"{part} {value!r} must be {shape}")
    if air.format is not None and air.format not in FORMATS:
        raise InvalidAir(f"unknown format {air.format!r} (expected one of {', '.join(FORMATS)})")


# Civitai model type -> AIR type. Types without their own AIR type are "other".
AIR_TYPE_BY_MODEL_TYPE = {
    "Checkpoint": "checkpoint",
    "TextualInversion": "embedding",
    "Hypernetwork": "hypernet",
    "LORA": "lora",
    "LoCon": "lycoris",
    "DoRA": "dora",
    "Controlnet": "controlnet",
    "Upscaler": "upscaler",
    "MotionModule": "motion",
    "VAE": "vae",
}
MODEL_TYPE_BY_AIR_TYPE = {air: model for model, air in AIR_TYPE_BY_MODEL_TYPE.items()} | {"other": "Other"}
_AIR_TYPE_BY_LOWER_MODEL_TYPE = {model.lower(): air for model, air in AIR_TYPE_BY_MODEL_TYPE.items()}


def air_type_for_model_type(model_type: str) -> str:
    """The AIR type of a Civitai model type (any case); "other" for types without one."""
    return _AIR_TYPE_BY_LOWER_MODEL_TYPE.get(model_type.strip().lower(), "other")


def model_type_for_air_type(air_type: str) -> str:
    """The Civitai model type an AIR type stands for; raise `InvalidAir` for an unknown type."""
    try:
        return MODEL_TYPE_BY_AIR_TYPE[air_type.lower()]
    except KeyError:
        raise InvalidAir(f"unknown type {air_type!r} (expected one of {', '.join(TYPES)})") from None


# Civitai base-model strings are free text ("SD 1.5", "SDXL 1.0 LCM", "Flux.1 D"), so they are
# matched by family prefix, after lowercasing and removing spaces. Illustrious and NoobAI are SDXL
# fine-tunes and Civitai files them under sdxl; Pony has its own ecosystem.
_ECOSYSTEM_BY_BASE_MODEL_PREFIX = (
    ("sd1.", "sd1"),
    ("sd2.", "sd2"),
    ("sdxl", "sdxl"),
    ("illustrious", "sdxl"),
    ("noobai", "sdxl"),
    ("flux.1", "flux1"),
    ("sd3", "sd3"),
)


def ecosystem_for_base_model(base_model: str) -> str:
    """The AIR ecosystem of a Civitai base-model string; "other" when it is not a known family."""
    key = "".join(base_model.lower().split())
    if key == "pony":
        return "pony"  # not "Pony V7", which is built on another architecture
    for prefix, ecosystem in _ECOSYSTEM_BY_BASE_MODEL_PREFIX:
        if key.startswith(prefix):
            return ecosystem
    return "other"
