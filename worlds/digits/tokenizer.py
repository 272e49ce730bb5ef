"""An offline CLIP tokenizer for the digits world: byte-level characters plus one token per prompt word."""

import json
from pathlib import Path

from transformers import CLIPTokenizer

from .prompts import VOCABULARY_WORDS

MAX_LENGTH = 16
START = "<|startoftext|>"
END = "<|endoftext|>"


def bytes_to_unicode() -> list[str]:
    """The 256 printable characters CLIP's byte-level BPE uses for the bytes 0..255."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def vocabulary_and_merges(words=VOCABULARY_WORDS) -> tuple[dict[str, int], list[str]]:
    """The vocab.json mapping and merges.txt lines that make each of `words` a single token.

    Each word gets a left-to-right merge chain (`s e`, `se v`, `sev e`, `seve n</w>`); every merge result is
    in the vocabulary because the tokenizers library refuses merges that produce unknown tokens.
    """
    chars = bytes_to_unicode()
    tokens = chars + [c + "</w>" for c in chars]
    merges: list[str] = []
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        if len(pieces) < 2:
            continue
        left = pieces[0]
        for right in pieces[1:]:
            merge = f"{left} {right}"
            if merge not in merges:
                merges.append(merge)
            left = left + right
            if left not in tokens:
                tokens.append(left)
    tokens += [START, END]
    return {token: i for i, token in enumerate(tokens)}, merges


def write_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    """Write vocab.json and merges.txt into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = vocabulary_and_merges()
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    vocab_path.write_text(json.dumps(vocab, ensure_ascii=False))
    merges_path.write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab_path, merges_path


def build_tokenizer(folder: Path) -> CLIPTokenizer:
    """A CLIPTokenizer over the digits vocabulary; fails if a prompt word does not become one token."""
    vocab_path, merges_path = write_tokenizer_files(folder)
    tokenizer = CLIPTokenizer(
        vocab=str(vocab_path), merges=str(merges_path), unk_token=END, bos_token=START,
        eos_token=END, pad_token=END, model_max_length=MAX_LENGTH,
    )
    for word in VOCABULARY_WORDS:
        ids = tokenizer(word).input_ids
        if len(ids) != 3:
            raise ValueError(f"the word {word!r} tokenises into {len(ids) - 2} tokens, not one")
    return tokenizer
