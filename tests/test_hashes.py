"""Every hash of a model file in one streaming pass (node.core.hashes)."""

from __future__ import annotations

import hashlib
import random
import zlib
from pathlib import Path

import blake3
import numpy as np
import pytest
from safetensors.numpy import save

from node.core.errors import InvalidInput
from node.core.hashes import BATCH_BYTES, FileHasher, hash_bytes, hash_file, normalize_hash


def safetensors_bytes(metadata: dict[str, str] | None = None, size: int = 4096) -> bytes:
    rng = np.random.default_rng(7)
    tensors = {"lora_up.weight": rng.integers(0, 255, size, dtype=np.uint8),
               "lora_down.weight": rng.standard_normal(16).astype(np.float16)}
    return save(tensors, metadata=metadata)


def tensor_data_start(data: bytes) -> int:
    return 8 + int.from_bytes(data[:8], "little")


def hashed_in_pieces(data: bytes, cuts: list[int], *, concurrent: bool = True):
    hasher = FileHasher(concurrent=concurrent)
    edges = [0, *sorted(cuts), len(data)]
    for begin, end in zip(edges, edges[1:]):
        hasher.update(data[begin:end])
    return hasher.finish()


def test_hello_world_has_civitai_autov2_b94d27b993() -> None:
    assert hash_bytes(b"hello world").as_civitai()["AutoV2"] == "B94D27B993"


def test_whole_file_hashes_equal_hashlib_blake3_and_zlib() -> None:
    data = safetensors_bytes(size=3 * 1024 * 1024)
    hashes = hash_bytes(data)
    assert hashes.size == len(data)
    assert hashes.sha256 == hashlib.sha256(data).hexdigest()
    assert hashes.blake3 == blake3.blake3(data).hexdigest()
    assert hashes.crc32 == f"{zlib.crc32(data):08x}"
    assert hashes.autov2 == hashlib.sha256(data).hexdigest()[:10]
    assert hashes.autov3 == hashlib.sha256(data[tensor_data_start(data):]).hexdigest()


@pytest.mark.parametrize("concurrent", [True, False])
def test_cutting_the_file_anywhere_around_the_prefix_and_header_gives_the_same_hashes(concurrent: bool) -> None:
    data = safetensors_bytes()
    start = tensor_data_start(data)
    expected = hash_bytes(data)
    # Inside the 8-byte prefix, at the header's first byte, inside it, at its end and just after.
    for cut in [*range(1, 11), start // 2, start - 1, start, start + 1, start + 100]:
        assert hashed_in_pieces(data, [cut], concurrent=concurrent) == expected, cut
    for cuts in ([1, 2, 3, 4, 5, 6, 7, 8, 9], [3, start - 1, start + 1], [7, start]):
        assert hashed_in_pieces(data, cuts, concurrent=concurrent) == expected, cuts


def test_random_chunkings_of_a_large_file_give_the_same_hashes() -> None:
    data = safetensors_bytes(size=5 * BATCH_BYTES // 2)
    expected = hash_bytes(data)
    rng = random.Random(1)
    for max_piece in (17, 5000, 70_000, 3 * BATCH_BYTES):
        cuts, position = [], 0
        while position < len(data):
            position += rng.randint(1, max_piece)
            cuts.append(min(position, len(data)))
        assert hashed_in_pieces(data, cuts) == expected, max_piece


def test_bytearray_and_memoryview_chunks_are_copied_so_reusing_the_buffer_is_safe() -> None:
    data = safetensors_bytes(size=3 * BATCH_BYTES)
    hasher = FileHasher()
    buffer = bytearray(BATCH_BYTES)
    for begin in range(0, len(data), BATCH_BYTES):
        piece = data[begin:begin + BATCH_BYTES]
        buffer[:len(piece)] = piece
        hasher.update(memoryview(buffer)[:len(piece)])
    assert hasher.finish() == hash_bytes(data)


def test_autov1_hashes_the_64_kib_at_1_mib_of_a_file_over_2_mib() -> None:
    data = random.Random(2).randbytes(2 * 1024 * 1024 + 5)
    hashes = hashed_in_pieces(data, [0x100000 - 3, 0x100000 + 10, 0x110000 + 1])
    assert hashes.autov1 == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    assert hashes.as_civitai()["AutoV1"] == hashes.autov1.upper()


def test_autov1_is_absent_for_files_under_2_mib() -> None:
    hashes = hash_bytes(bytes(2 * 1024 * 1024 - 1))
    assert hashes.autov1 is None
    assert "AutoV1" not in hashes.as_civitai()
    assert hash_bytes(bytes(2 * 1024 * 1024)).autov1 is not None


def test_the_tensor_data_hash_ignores_changes_to_metadata_only() -> None:
    first = hash_bytes(safetensors_bytes({"ss_output_name": "cat"}))
    second = hash_bytes(safetensors_bytes({"ss_output_name": "a much longer name", "extra": "x"}))
    assert first.sha256 != second.sha256
    assert first.autov3 == second.autov3


@pytest.mark.parametrize("data", [b"", b"hello world", b"\x80\x02}q\x00." * 100, bytes(5000),
                                  (1000).to_bytes(8, "little") + b"{" + bytes(100)])
def test_files_that_are_not_safetensors_have_no_tensor_data_hash(data: bytes) -> None:
    # The last one claims a 1000-byte header but ends first.
    hashes = hash_bytes(data)
    assert hashes.autov3 is None
    assert "AutoV3" not in hashes.as_civitai()
    assert hashes.sha256 == hashlib.sha256(data).hexdigest()


def test_civitai_hashes_are_uppercase_with_a_12_digit_autov3() -> None:
    data = safetensors_bytes()
    hashes = hash_bytes(data).as_civitai()
    assert set(hashes) == {"AutoV2", "AutoV3", "SHA256", "CRC32", "BLAKE3"}
    assert hashes["AutoV3"] == hashlib.sha256(data[tensor_data_start(data):]).hexdigest()[:12].upper()
    assert hashes["CRC32"] == f"{zlib.crc32(data):08X}"
    assert all(value == value.upper() and len(value) in (8, 10, 12, 64) for value in hashes.values())


async def test_hash_file_matches_hashing_the_bytes(tmp_path: Path) -> None:
    data = safetensors_bytes(size=3 * 1024 * 1024 + 17)
    path = tmp_path / "model.safetensors"
    path.write_bytes(data)
    assert await hash_file(path, chunk_size=1024 * 1024 + 3) == hash_bytes(data)


def test_a_hasher_cannot_be_fed_after_it_finished() -> None:
    hasher = FileHasher()
    hasher.update(b"abc")
    hasher.finish()
    with pytest.raises(RuntimeError):
        hasher.update(b"d")


@pytest.mark.parametrize("text, kinds, value", [
    ("0D4A1185", ("AutoV1", "CRC32"), "0d4a1185"),
    (" B94D27B993 ", ("AutoV2",), "b94d27b993"),
    ("22D8CB95B807", ("AutoV3",), "22d8cb95b807"),
    ("B94D27B9934D3E08A52E52D7DA7DABFAC484EFE37A5380EE9088F7ACE2EFCDE9", ("SHA256", "BLAKE3"),
     "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"),
])
def test_a_hash_is_recognised_by_its_length_and_lowercased(text: str, kinds: tuple[str, ...], value: str) -> None:
    assert normalize_hash(text) == (kinds, value)


@pytest.mark.parametrize("text, message", [
    ("B94D27B99Z", "not hexadecimal"), ("", "not hexadecimal"), ("0x0D4A1185", "not hexadecimal"),
    ("B94D27B99", "9 hex digits"), ("B94D27B9934D3E08", "16 hex digits"),
])
def test_strings_that_are_not_hashes_are_refused(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        normalize_hash(text)
