"""Generation metadata carried inside images: the A1111 "parameters" text and ComfyUI graphs.

The text comes from strangers' images, so nothing here raises on bad input: a field that cannot be read
is left out and a sentence is added to `GenerationMeta.warnings`. Pure functions, no I/O.

The A1111 text has three parts: the prompt (any number of lines, may hold `<lora:name:0.8>` tags), an
optional `Negative prompt: ...` (any number of lines), and a last line of comma-separated `Key: value`
pairs. A1111 quotes a value holding `,`, `:` or a newline as a JSON string; Civitai adds `Hashes: {json}`
and `Civitai resources: [json]` unquoted, so values starting with `{` or `[` are read as JSON.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Keys of the parameters line that have a field of their own, in the order A1111 writes them.
_KEY_STEPS = "Steps"
_KEY_SAMPLER = "Sampler"
_KEY_SCHEDULER = "Schedule type"
_KEY_CFG = "CFG scale"
_KEY_SEED = "Seed"
_KEY_SIZE = "Size"
_KEY_MODEL_HASH = "Model hash"
_KEY_MODEL = "Model"
_KEY_VAE_HASH = "VAE hash"
_KEY_VAE = "VAE"
_KEY_DENOISE = "Denoising strength"
_KEY_CLIP_SKIP = "Clip skip"
_KEY_LORA_HASHES = "Lora hashes"
_KEY_TI_HASHES = "TI hashes"
_KEY_HASHES = "Hashes"
_KEY_RESOURCES = "Civitai resources"
_NEGATIVE = "Negative prompt:"

# A1111 only treats the last line as parameters when it holds at least this many pairs (or starts
# with Steps:); otherwise a prompt line such as "style: oil, light: soft" would be eaten.
_MIN_PAIRS = 3

_EXTRA_NETWORK = re.compile(r"<(lora|lyco):([^:<>]+)(?::([^<>]*))?>", re.IGNORECASE)
_INT = re.compile(r"[+-]?\d+")
# No two parts of these patterns can match the same text: the line comes from strangers, and an
# ambiguous pattern backtracks quadratically on a long run of digits or spaces.
_FLOAT = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_SIZE = re.compile(r"(\d+) ?x ?(\d+)")
_NOT_IN_KEYS = frozenset('"{}[]\n')
_HEX = re.compile(r"[0-9A-Fa-f]+")
_AIR_VERSION = re.compile(r"@(\d+)")

_SAMPLERS = ("KSampler", "KSamplerAdvanced")
_CHECKPOINT_LOADERS = {"CheckpointLoaderSimple": "ckpt_name", "CheckpointLoader": "ckpt_name",
                       "ImageOnlyCheckpointLoader": "ckpt_name", "UNETLoader": "unet_name"}
_LORA_LOADERS = ("LoraLoader", "LoraLoaderModelOnly")
_TEXT_ENCODERS = {"CLIPTextEncode": ("text",), "CLIPTextEncodeSDXL": ("text_g", "text_l"),
                  "CLIPTextEncodeSDXLRefiner": ("text",), "CLIPTextEncodeFlux": ("t5xxl", "clip_l")}
# How far to follow conditioning links (ControlNet, area, ...) before giving up on finding the text.
_MAX_HOPS = 16


@dataclass(frozen=True)
class ResourceRef:
    """A resource an image says it was made with; the catalog matches `hash` against its file hashes.

    `hash` is upper-case hex as the image wrote it (AutoV1, AutoV2, the 12-hex LoRA tensor hash or a full
    SHA256: the matcher tries each kind). `source` says which part of the metadata named it.
    """

    kind: str  # checkpoint, lora, vae, embedding, hypernet, or what Civitai wrote
    name: str | None = None
    hash: str | None = None
    weight: float | None = None
    model_version_id: int | None = None
    source: str = ""


@dataclass
class GenerationMeta:
    """What an image says about how it was made. `raw` and `warnings` do not take part in ==."""

    source: str = "a1111"  # "a1111" or "comfyui"
    prompt: str = ""
    negative_prompt: str = ""
    steps: int | None = None
    sampler: str | None = None
    scheduler: str | None = None
    cfg_scale: float | None = None
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    clip_skip: int | None = None
    model: str | None = None
    model_hash: str | None = None
    vae: str | None = None
    vae_hash: str | None = None
    denoising_strength: float | None = None
    loras: list[tuple[str, float]] = field(default_factory=list)  # from prompt tags / LoRA loader nodes
    lora_hashes: dict[str, str] = field(default_factory=dict)  # "Lora hashes"
    embedding_hashes: dict[str, str] = field(default_factory=dict)  # "TI hashes"
    hashes: dict[str, str] = field(default_factory=dict)  # Civitai "Hashes"
    resources: list[dict[str, Any]] = field(default_factory=list)  # "Civitai resources"
    checkpoints: list[str] = field(default_factory=list)  # ComfyUI: every checkpoint a loader names
    extra: dict[str, str] = field(default_factory=dict)  # every other key, value as text
    raw: str = field(default="", compare=False)
    warnings: list[str] = field(default_factory=list, compare=False)

    def resource_refs(self) -> list[ResourceRef]:
        """Every resource reference in the metadata, without duplicates, for linking to catalog versions."""
        refs: list[ResourceRef] = []

        def add(ref: ResourceRef) -> None:
            for known in refs:
                same_hash = ref.hash is not None and known.hash == ref.hash
                same_name = ref.hash is None and known.name == ref.name and known.model_version_id \
                    == ref.model_version_id
                if known.kind == ref.kind and (same_hash or same_name):
                    return
            refs.append(ref)

        named_by = "ComfyUI" if self.source == "comfyui" else None
        for name in self.checkpoints:
            add(ResourceRef("checkpoint", name, source="ComfyUI"))
        if self.model or self.model_hash:
            add(ResourceRef("checkpoint", self.model, _upper(self.model_hash), source=named_by or "Model"))
        if self.vae or self.vae_hash:
            add(ResourceRef("vae", self.vae, _upper(self.vae_hash), source=named_by or "VAE"))
        weights = dict(self.loras)
        for name, weight in self.loras:
            add(ResourceRef("lora", name, _upper(self.lora_hashes.get(name)), weight,
                            source=named_by or "prompt"))
        for name, digest in self.lora_hashes.items():
            add(ResourceRef("lora", name, _upper(digest), weights.get(name), source="Lora hashes"))
        for name, digest in self.embedding_hashes.items():
            add(ResourceRef("embedding", name, _upper(digest), source="TI hashes"))
        for key, digest in self.hashes.items():
            kind, _, name = key.partition(":")
            kind = {"model": "checkpoint", "lyco": "lora", "embed": "embedding", "ti": "embedding"}.get(
                kind.lower(), kind.lower())
            add(ResourceRef(kind, name or None, _upper(digest), source="Hashes"))
        for item in self.resources:
            add(_civitai_resource_ref(item))
        return refs

    def to_civitai_meta(self) -> dict[str, Any]:
        """The `meta` dict Civitai's API shows for an image (prompt, negativePrompt, cfgScale, ...)."""
        meta: dict[str, Any] = {}
        if self.prompt:
            meta["prompt"] = self.prompt
        if self.negative_prompt:
            meta["negativePrompt"] = self.negative_prompt
        for key, value in (("steps", self.steps), ("sampler", self.sampler), ("scheduler", self.scheduler),
                           ("cfgScale", self.cfg_scale), ("seed", self.seed), ("clipSkip", self.clip_skip),
                           (_KEY_MODEL_HASH, self.model_hash), (_KEY_MODEL, self.model),
                           (_KEY_VAE, self.vae), (_KEY_DENOISE, self.denoising_strength)):
            if value is not None:
                meta[key] = value
        if self.width is not None and self.height is not None:
            meta[_KEY_SIZE] = f"{self.width}x{self.height}"
        meta.update(self.extra)
        # Civitai folds every hash it can name into one `hashes` dict, as its own parser does.
        hashes = dict(self.hashes)
        if self.model_hash:
            hashes.setdefault("model", self.model_hash)
        if self.vae_hash:
            hashes.setdefault("vae", self.vae_hash)
        for name, digest in self.lora_hashes.items():
            hashes.setdefault(f"lora:{name}", digest)
        for name, digest in self.embedding_hashes.items():
            hashes.setdefault(f"embed:{name}", digest)
        if hashes:
            meta["hashes"] = hashes
        resources: list[dict[str, Any]] = []
        for ref in self.resource_refs():
            if ref.source in ("Hashes", "Civitai resources"):
                continue
            entry: dict[str, Any] = {"type": "model" if ref.kind == "checkpoint" else ref.kind}
            for key, value in (("name", ref.name), ("hash", ref.hash), ("weight", ref.weight)):
                if value is not None:
                    entry[key] = value.lower() if key == "hash" else value
            resources.append(entry)
        if resources:
            meta["resources"] = resources
        if self.resources:
            meta["civitaiResources"] = self.resources
        return meta


def parse_a1111(text: str) -> GenerationMeta:
    """Read an A1111 "parameters" text (PNG chunk or EXIF UserComment). Never raises."""
    meta = GenerationMeta(source="a1111", raw=text if isinstance(text, str) else "")
    if not isinstance(text, str):
        meta.warnings.append(f"parameters are {type(text).__name__}, not text")
        return meta
    lines = text.replace("\r\n", "\n").strip().split("\n")
    pairs: list[tuple[str, str]] = []
    last = lines[-1].strip()
    scan_warnings: list[str] = []
    candidate = _scan_pairs(last, scan_warnings)
    if len(candidate) >= _MIN_PAIRS or last.startswith(f"{_KEY_STEPS}:"):
        pairs = candidate
        meta.warnings.extend(scan_warnings)
        lines = lines[:-1]
    else:
        # Some extensions append lines after the parameters; take the last line starting with Steps:.
        starts = [i for i, line in enumerate(lines) if line.strip().startswith(f"{_KEY_STEPS}:")]
        if starts:
            pairs = _scan_pairs(lines[starts[-1]].strip(), meta.warnings)
            meta.warnings.append(f"{len(lines) - starts[-1] - 1} line(s) after the parameters line ignored")
            lines = lines[:starts[-1]]
        else:
            meta.warnings.append("no parameters line (Steps: ...) found")

    prompt: list[str] = []
    negative: list[str] = []
    for line in lines:
        line = line.strip()
        if not negative and line.startswith(_NEGATIVE):
            negative.append(line[len(_NEGATIVE):].strip())
        elif negative:
            negative.append(line)
        else:
            prompt.append(line)
    meta.prompt = "\n".join(prompt).strip()
    meta.negative_prompt = "\n".join(negative).strip()
    meta.loras = _prompt_loras(meta.prompt, meta.warnings)

    seen: set[str] = set()
    for key, value in pairs:
        if key in seen:
            meta.warnings.append(f"{key} appears twice; the last one counts")
        seen.add(key)
        _apply_pair(meta, key, value)
    return meta


def format_a1111(meta: GenerationMeta) -> str:
    """Write `meta` as an A1111 "parameters" text; `parse_a1111` reads it back to an equal value.

    That holds when the settings line can be told from the prompt, i.e. `steps` is set or there are at
    least three settings (A1111's own rule), and for prompts whose lines carry no outer whitespace.
    """
    pairs: list[tuple[str, str]] = []

    def put(key: str, value: Any) -> None:
        if value is not None:
            pairs.append((key, _quote(_number_text(value) if isinstance(value, (int, float)) else value)))

    put(_KEY_STEPS, meta.steps)
    put(_KEY_SAMPLER, meta.sampler)
    put(_KEY_SCHEDULER, meta.scheduler)
    put(_KEY_CFG, meta.cfg_scale)
    put(_KEY_SEED, meta.seed)
    if meta.width is not None and meta.height is not None:
        pairs.append((_KEY_SIZE, f"{meta.width}x{meta.height}"))
    put(_KEY_MODEL_HASH, meta.model_hash)
    put(_KEY_MODEL, meta.model)
    put(_KEY_VAE_HASH, meta.vae_hash)
    put(_KEY_VAE, meta.vae)
    put(_KEY_DENOISE, meta.denoising_strength)
    put(_KEY_CLIP_SKIP, meta.clip_skip)
    if meta.lora_hashes:
        put(_KEY_LORA_HASHES, ", ".join(f"{name}: {digest}" for name, digest in meta.lora_hashes.items()))
    if meta.embedding_hashes:
        put(_KEY_TI_HASHES, ", ".join(f"{name}: {digest}" for name, digest in meta.embedding_hashes.items()))
    for key, value in meta.extra.items():
        put(key, value)
    # Civitai writes these two as bare JSON; so do we, so that its parser reads ours.
    if meta.hashes:
        pairs.append((_KEY_HASHES, json.dumps(meta.hashes, ensure_ascii=False)))
    if meta.resources:
        pairs.append((_KEY_RESOURCES, json.dumps(meta.resources, ensure_ascii=False)))

    parts = [meta.prompt] if meta.prompt else []
    if meta.negative_prompt:
        parts.append(f"{_NEGATIVE} {meta.negative_prompt}")
    if pairs:
        parts.append(", ".join(f"{key}: {value}" for key, value in pairs))
    return "\n".join(parts)


def parse_comfyui(prompt_json: str | bytes | Mapping[str, Any] | None,
                  workflow_json: str | bytes | Mapping[str, Any] | None = None) -> GenerationMeta:
    """Read a ComfyUI API-format graph (PNG chunk `prompt`); the UI `workflow` is only checked. Never raises.

    Settings come from one KSampler: the one fed by an empty latent (the first pass), else the lowest
    node id. Prompts are found by following its positive/negative links to the text encoders.
    """
    meta = GenerationMeta(source="comfyui")
    if prompt_json is None:
        meta.warnings.append("no prompt graph (only a UI workflow, which is not read)")
    graph = _json_value(prompt_json, "prompt", meta.warnings) if prompt_json is not None else None
    if isinstance(prompt_json, str):
        meta.raw = prompt_json
    elif graph is not None:
        meta.raw = json.dumps(graph, ensure_ascii=False)
    if workflow_json is not None:
        workflow = _json_value(workflow_json, "workflow", meta.warnings)
        if workflow is not None and not isinstance(workflow, dict):
            meta.warnings.append("workflow is not a JSON object")
    if graph is None:
        return meta
    if not isinstance(graph, dict):
        meta.warnings.append("prompt is not a JSON object of nodes")
        return meta
    nodes: dict[str, dict[str, Any]] = {}
    for node_id, node in graph.items():
        if isinstance(node, dict) and isinstance(node.get("class_type"), str) \
                and isinstance(node.get("inputs", {}), dict):
            nodes[str(node_id)] = {"class_type": node["class_type"], "inputs": node.get("inputs", {})}
        else:
            meta.warnings.append(f"node {node_id!r} has no class_type/inputs; ignored")
    order = sorted(nodes, key=_node_order)

    for node_id in order:
        node = nodes[node_id]
        kind, inputs = node["class_type"], node["inputs"]
        if kind in _CHECKPOINT_LOADERS and isinstance(inputs.get(_CHECKPOINT_LOADERS[kind]), str):
            meta.checkpoints.append(inputs[_CHECKPOINT_LOADERS[kind]])
        elif kind in _LORA_LOADERS and isinstance(inputs.get("lora_name"), str):
            strength = inputs.get("strength_model", 1.0)
            if not _is_number(strength):
                meta.warnings.append(f"node {node_id}: strength_model {strength!r} is not a number; using 1.0")
                strength = 1.0
            meta.loras.append((inputs["lora_name"], float(strength)))
        elif kind == "VAELoader" and isinstance(inputs.get("vae_name"), str) and meta.vae is None:
            meta.vae = inputs["vae_name"]

    samplers = [node_id for node_id in order if nodes[node_id]["class_type"] in _SAMPLERS]
    if not samplers:
        meta.warnings.append("no KSampler node; sampler settings unknown")
        meta.model = meta.checkpoints[0] if meta.checkpoints else None
        return meta
    first_pass = [node_id for node_id in samplers
                  if _is_empty_latent(_linked(nodes, nodes[node_id]["inputs"].get("latent_image")))]
    chosen = (first_pass or samplers)[0]
    if len(samplers) > 1:
        meta.warnings.append(f"{len(samplers)} samplers; settings are from node {chosen}")
    inputs = nodes[chosen]["inputs"]

    meta.seed = _graph_scalar(nodes, inputs.get("seed", inputs.get("noise_seed")), int, "seed", meta.warnings)
    meta.steps = _graph_scalar(nodes, inputs.get("steps"), int, "steps", meta.warnings)
    meta.cfg_scale = _graph_scalar(nodes, inputs.get("cfg"), float, "cfg", meta.warnings)
    meta.sampler = _graph_scalar(nodes, inputs.get("sampler_name"), str, "sampler_name", meta.warnings)
    meta.scheduler = _graph_scalar(nodes, inputs.get("scheduler"), str, "scheduler", meta.warnings)
    if "denoise" in inputs:
        meta.denoising_strength = _graph_scalar(nodes, inputs["denoise"], float, "denoise", meta.warnings)
    meta.prompt = _conditioning_text(nodes, inputs.get("positive"), "positive", meta.warnings) or ""
    meta.negative_prompt = _conditioning_text(nodes, inputs.get("negative"), "negative", meta.warnings) or ""

    latent = _linked(nodes, inputs.get("latent_image"))
    if not _is_empty_latent(latent):
        empties = [nodes[n] for n in order if _is_empty_latent(nodes[n])]
        latent = empties[0] if len(empties) == 1 else None
    if latent is not None:
        meta.width = _graph_scalar(nodes, latent["inputs"].get("width"), int, "width", meta.warnings)
        meta.height = _graph_scalar(nodes, latent["inputs"].get("height"), int, "height", meta.warnings)

    meta.model = _model_checkpoint(nodes, inputs.get("model")) or (meta.checkpoints[0] if meta.checkpoints
                                                                  else None)
    return meta


def parse_image_text(chunks: Mapping[str, str]) -> GenerationMeta | None:
    """The generation metadata in an image's text chunks, or None when it carries none.

    `parameters` (PNG) or `UserComment` (EXIF) hold A1111 text and win over a ComfyUI `prompt`: tools
    that write both put the hashes needed for linking only in the A1111 text.
    """
    for key in ("parameters", "UserComment"):
        text = chunks.get(key)
        if isinstance(text, str) and text.strip():
            return parse_a1111(text)
    comment = chunks.get("comment")
    if isinstance(comment, str) and f"{_KEY_STEPS}:" in comment:
        return parse_a1111(comment)
    if chunks.get("prompt") or chunks.get("workflow"):
        return parse_comfyui(chunks.get("prompt"), chunks.get("workflow"))
    return None


# --- the parameters line ---------------------------------------------------------------------------


def _scan_pairs(line: str, warnings: list[str]) -> list[tuple[str, str]]:
    """Split the parameters line into (key, value text) pairs without ever raising."""
    pairs: list[tuple[str, str]] = []
    i, n = 0, len(line)
    quotes_close = brackets_close = True
    while i < n:
        comma = _next_comma(line, i)
        colon = line.find(":", i, comma)
        key = line[i:colon].strip() if colon >= 0 else ""
        if not key or any(char in _NOT_IN_KEYS for char in key):
            junk = line[i:comma].strip()
            if junk:
                warnings.append(f"unreadable part of the parameters line: {junk[:60]!r}")
            i = comma + 1
            continue
        j = colon + 1
        while j < n and line[j].isspace():
            j += 1
        opener = line[j] if j < n else ""
        end: int | None = None
        # Once a quote (or bracket) fails to close, later ones cannot close either: stop looking, or
        # a line of many unclosed quotes would be scanned to its end once per quote.
        if opener == '"' and quotes_close:
            end = _quoted_end(line, j)
            quotes_close = end is not None
            value = _unquote(line[j:end]) if end is not None else ""
        elif opener in ("{", "[") and brackets_close:
            end = _json_end(line, j)
            brackets_close = end is not None
            value = line[j:end] if end is not None else ""
        if end is None:
            if opener in ('"', "{", "["):
                warnings.append(f"{key}: unbalanced {opener}; read up to the next comma")
            end = _next_comma(line, j)
            value = line[j + (opener == '"'):end].strip()
        pairs.append((key, value))
        # After a quoted or JSON value only a comma may follow; skip anything else up to it.
        stop = _next_comma(line, end)
        if line[end:stop].strip():
            warnings.append(f"{key}: unexpected text after the value: {line[end:stop].strip()[:60]!r}")
        i = stop + 1
    return pairs


def _next_comma(line: str, start: int) -> int:
    index = line.find(",", start)
    return len(line) if index < 0 else index


def _quoted_end(line: str, start: int) -> int | None:
    """Index just past the closing quote of the JSON string at `start`, or None when it never closes."""
    i = start + 1
    while i < len(line):
        if line[i] == "\\":
            i += 2
        elif line[i] == '"':
            return i + 1
        else:
            i += 1
    return None


def _json_end(line: str, start: int) -> int | None:
    """Index just past the bracket that closes the one at `start` (strings respected), or None."""
    depth, i, in_string = 0, start, False
    while i < len(line):
        char = line[i]
        if in_string:
            if char == "\\":
                i += 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def _unquote(text: str) -> str:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        value = None
    # A quote that is not valid JSON (a stray backslash) still means "this text": drop the quotes.
    return value if isinstance(value, str) else text[1:-1]


def _quote(text: str) -> str:
    # A1111's rule (quote when the text holds , : or a newline), plus text the reader would misread.
    if any(char in text for char in ',:\n"') or text[:1] in "{[" or text != text.strip():
        return json.dumps(text, ensure_ascii=False)
    return text


def _apply_pair(meta: GenerationMeta, key: str, value: str) -> None:
    warnings = meta.warnings
    if key == _KEY_STEPS:
        meta.steps = _int(key, value, warnings)
    elif key == _KEY_SAMPLER:
        meta.sampler = value
    elif key == _KEY_SCHEDULER:
        meta.scheduler = value
    elif key == _KEY_CFG:
        meta.cfg_scale = _float(key, value, warnings)
    elif key == _KEY_SEED:
        meta.seed = _int(key, value, warnings)
    elif key == _KEY_SIZE:
        match = _SIZE.fullmatch(value)
        if match:
            meta.width, meta.height = int(match.group(1)), int(match.group(2))
        else:
            warnings.append(f"Size: {value[:60]!r} is not WIDTHxHEIGHT; ignored")
    elif key == _KEY_CLIP_SKIP:
        meta.clip_skip = _int(key, value, warnings)
    elif key == _KEY_MODEL_HASH:
        meta.model_hash = value
    elif key == _KEY_MODEL:
        meta.model = value
    elif key == _KEY_VAE_HASH:
        meta.vae_hash = value
    elif key == _KEY_VAE:
        meta.vae = value
    elif key == _KEY_DENOISE:
        meta.denoising_strength = _float(key, value, warnings)
    elif key == _KEY_LORA_HASHES:
        meta.lora_hashes = _name_hashes(key, value, warnings)
    elif key == _KEY_TI_HASHES:
        meta.embedding_hashes = _name_hashes(key, value, warnings)
    elif key == _KEY_HASHES:
        # Read as JSON even when quoted: some tools quote it, and a bad value only costs a warning.
        found = _json_value(value, key, warnings)
        if not isinstance(found, dict):
            if found is not None:
                warnings.append(f"{key}: not a JSON object; ignored")
            return
        for name, digest in found.items():
            if isinstance(digest, str):
                meta.hashes[str(name)] = digest
            else:
                warnings.append(f"{key}: {name!r} is not a text hash; ignored")
    elif key == _KEY_RESOURCES:
        found = _json_value(value, key, warnings)
        if not isinstance(found, list):
            if found is not None:
                warnings.append(f"{key}: not a JSON list; ignored")
            return
        for item in found:
            if isinstance(item, dict):
                meta.resources.append(item)
            else:
                warnings.append(f"{key}: an entry is not an object; ignored")
    else:
        meta.extra[key] = value


def _int(key: str, value: str, warnings: list[str]) -> int | None:
    if _INT.fullmatch(value):
        return int(value)
    warnings.append(f"{key}: {value[:60]!r} is not a whole number; ignored")
    return None


def _float(key: str, value: str, warnings: list[str]) -> float | None:
    if _FLOAT.fullmatch(value):
        number = float(value)
        if math.isfinite(number):
            return number
    warnings.append(f"{key}: {value[:60]!r} is not a number; ignored")
    return None


def _number_text(value: int | float) -> str:
    # repr keeps every digit (so parse(format(x)) == x); "7.0" is written "7" as A1111 does.
    text = repr(value)
    return text[:-2] if isinstance(value, float) and text.endswith(".0") else text


def _name_hashes(key: str, value: str, warnings: list[str]) -> dict[str, str]:
    """`name: hash, name2: hash2` (A1111 strips `:` and `,` from the names it writes here)."""
    result: dict[str, str] = {}
    for entry in value.split(","):
        name, _, digest = entry.rpartition(":")
        name, digest = name.strip(), digest.strip()
        if name and _HEX.fullmatch(digest):
            result[name] = digest
        elif entry.strip():
            warnings.append(f"{key}: {entry.strip()[:60]!r} is not 'name: hexhash'; ignored")
    return result


def _prompt_loras(prompt: str, warnings: list[str]) -> list[tuple[str, float]]:
    loras: list[tuple[str, float]] = []
    for match in _EXTRA_NETWORK.finditer(prompt):
        name, args = match.group(2).strip(), match.group(3)
        weight = 1.0  # A1111's multiplier when the tag gives none
        if args is not None:
            first = args.split(":")[0].strip()
            if _FLOAT.fullmatch(first) and math.isfinite(float(first)):
                weight = float(first)
            else:
                warnings.append(f"LoRA tag {match.group(0)[:60]!r}: weight is not a number; using 1.0")
        loras.append((name, weight))
    return loras


def _json_value(value: Any, what: str, warnings: list[str]) -> Any:
    """`value` decoded from JSON text (or returned as is when already decoded); None with a warning."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, list):
        return value
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        warnings.append(f"{what}: expected JSON text, got {type(value).__name__}")
        return None
    try:
        return json.loads(value)
    except (ValueError, RecursionError) as exc:  # deeply nested brackets raise RecursionError
        warnings.append(f"{what}: invalid JSON ({str(exc)[:80]})")
        return None


def _upper(digest: str | None) -> str | None:
    return digest.strip().upper() if isinstance(digest, str) and digest.strip() else None


def _civitai_resource_ref(item: Mapping[str, Any]) -> ResourceRef:
    version = item.get("modelVersionId")
    if not isinstance(version, int) or isinstance(version, bool):
        match = _AIR_VERSION.search(str(item.get("air", "")))
        version = int(match.group(1)) if match else None
    weight = item.get("weight")
    return ResourceRef(
        kind=str(item.get("type") or "unknown").lower(),
        name=item.get("modelName") if isinstance(item.get("modelName"), str) else None,
        weight=float(weight) if _is_number(weight) else None,
        model_version_id=version,
        source="Civitai resources",
    )


# --- ComfyUI graphs ----------------------------------------------------------------------------------


def _node_order(node_id: str) -> tuple[int, int | str]:
    return (0, int(node_id)) if node_id.isdigit() else (1, node_id)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)


def _linked(nodes: dict[str, dict[str, Any]], value: Any) -> dict[str, Any] | None:
    """The node a `[node_id, output_index]` input points at, or None."""
    if not _is_link(value):
        return None
    return nodes.get(str(value[0]))


def _is_empty_latent(node: dict[str, Any] | None) -> bool:
    # EmptyLatentImage, EmptySD3LatentImage, EmptyHunyuanLatentImage, ...: all start a text-to-image pass.
    return node is not None and node["class_type"].startswith("Empty") \
        and node["class_type"].endswith("LatentImage")


def _graph_scalar(nodes: dict[str, dict[str, Any]], value: Any, kind: type, what: str,
                  warnings: list[str]) -> Any:
    """A widget value, following one link to a primitive node when the value comes from another node."""
    if _is_link(value):
        source = _linked(nodes, value)
        candidates = [v for k, v in (source or {}).get("inputs", {}).items()
                      if k in (what, "value", "seed", "noise_seed", "int", "float", "string", "text")]
        value = candidates[0] if len(candidates) == 1 else None
        if value is None:
            warnings.append(f"{what} comes from another node; not read")
            return None
    if value is None:
        return None
    if kind is str:
        if isinstance(value, str):
            return value
    elif _is_number(value) and (kind is float or float(value).is_integer()):
        return kind(value)
    expected = {int: "a whole number", float: "a number"}.get(kind, "text")
    warnings.append(f"{what}: {str(value)[:60]!r} is not {expected}; ignored")
    return None


def _conditioning_text(nodes: dict[str, dict[str, Any]], link: Any, what: str,
                       warnings: list[str]) -> str | None:
    """Follow a sampler's positive/negative link back to the text encoder that made it."""
    seen: set[str] = set()
    for _ in range(_MAX_HOPS):
        node = _linked(nodes, link)
        if node is None or str(link[0]) in seen:
            break
        seen.add(str(link[0]))
        kind, inputs = node["class_type"], node["inputs"]
        if kind in _TEXT_ENCODERS:
            texts = [_graph_scalar(nodes, inputs.get(name), str, "text", warnings)
                     for name in _TEXT_ENCODERS[kind]]
            texts = [text for text in texts if text]
            # SDXL/Flux encoders often repeat one prompt in both boxes; keep it once.
            return "\n".join(dict.fromkeys(texts)) if texts else None
        if "positive" in inputs and "negative" in inputs:
            # ControlNetApplyAdvanced and kin: output 0 is the positive, output 1 the negative.
            link = inputs["positive"] if link[1] == 0 else inputs["negative"]
        elif "conditioning" in inputs:
            link = inputs["conditioning"]
        else:
            warnings.append(f"{what} prompt comes from a {kind} node; not read")
            return None
    warnings.append(f"{what} prompt: no text encoder found")
    return None


def _model_checkpoint(nodes: dict[str, dict[str, Any]], link: Any) -> str | None:
    """The checkpoint file at the root of a sampler's model input (through LoRA loaders and the like)."""
    seen: set[str] = set()
    for _ in range(_MAX_HOPS):
        node = _linked(nodes, link)
        if node is None or str(link[0]) in seen:
            return None
        seen.add(str(link[0]))
        name_key = _CHECKPOINT_LOADERS.get(node["class_type"])
        if name_key is not None:
            name = node["inputs"].get(name_key)
            return name if isinstance(name, str) else None
        link = node["inputs"].get("model")
    return None
