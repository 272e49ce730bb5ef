"""File formats from their bytes alone: safetensors validation and pickle refusal (node.core.formats)."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import shlex
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save

from node.core.errors import InvalidInput
from node.core.formats import (DTYPE_BITS, InvalidSafetensors, PickleRefused, SafetensorsBadHeader,
                               SafetensorsBadLayout, SafetensorsBadMetadata, SafetensorsBadTensor,
                               SafetensorsHeaderReader, SafetensorsHeaderTooLarge, SafetensorsTrailingData,
                               SafetensorsTruncated, refuse_pickle, sniff_format,
                               validate_safetensors_header)


def good_file(metadata: dict[str, str] | None = None) -> bytes:
    return save({"b": np.ones((3, 3), np.float16), "a": np.arange(4, dtype=np.int32)}, metadata=metadata)


def raw_file(header: object, data: bytes = b"", *, pad: int = 0) -> bytes:
    """A file with exactly this header (a JSON value, or raw bytes) and data buffer."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    raw += b" " * pad
    return struct.pack("<Q", len(raw)) + raw + data


def tensor(dtype: str, shape: list[int], begin: int, end: int) -> dict[str, object]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def validate(data: bytes, filename: str = "model.safetensors"):
    return validate_safetensors_header(data, len(data), filename=filename)


def torch_style_zip(name: str = "archive") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{name}/data.pkl", pickle.dumps({"state_dict": {}}, protocol=2))
        archive.writestr(f"{name}/version", "3\n")
        archive.writestr(f"{name}/data/0", bytes(64))
    return buffer.getvalue()


class Exec:
    """Unpickling this runs code: it is how a malicious checkpoint works."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


# --- valid files ---------------------------------------------------------------------------------

def test_a_valid_file_is_described_from_its_header() -> None:
    data = good_file({"ss_output_name": "cat"})
    info = validate(data)
    header_length = int.from_bytes(data[:8], "little")
    assert info.header_length == header_length
    assert info.header_sha256 == hashlib.sha256(data[8:8 + header_length]).hexdigest()
    assert (info.tensor_count, info.parameter_count, info.data_length) == (2, 13, 34)
    assert info.dtypes == ("F16", "I32")
    assert info.metadata == {"ss_output_name": "cat"}
    assert info.file_size == len(data)
    assert info.fp == "fp16"


def test_only_the_header_is_read_from_a_file_object() -> None:
    data = save({"big": np.zeros(10_000_000, np.uint8)})
    handle = io.BytesIO(data)
    info = validate_safetensors_header(handle, len(data))
    assert info.data_length == 10_000_000
    assert handle.tell() == 4096  # one read, enough to recognise a zipped pickle; no tensor data


def test_a_header_padded_with_trailing_spaces_is_valid() -> None:
    assert validate(raw_file({"x": tensor("U8", [2], 0, 2)}, b"ab", pad=7)).tensor_count == 1


def test_fp_is_the_float_dtype_holding_the_most_bytes() -> None:
    header = {"big": tensor("BF16", [8], 0, 16), "small": tensor("F32", [2], 16, 24),
              "ids": tensor("I64", [10], 24, 104)}
    assert validate(raw_file(header, bytes(104))).fp == "bf16"
    assert validate(raw_file({"w": tensor("F8_E4M3", [4], 0, 4)}, bytes(4))).fp == "fp8"
    assert validate(raw_file({"ids": tensor("I64", [1], 0, 8)}, bytes(8))).fp is None


def test_every_dtype_of_the_reference_implementation_is_accepted(tmp_path: Path) -> None:
    for dtype, bits in DTYPE_BITS.items():
        data = raw_file({"t": tensor(dtype, [2, 4], 0, bits)}, bytes(bits))
        assert validate(data).dtypes == (dtype,)
        path = tmp_path / f"{dtype}.safetensors"
        path.write_bytes(data)
        with safe_open(path, framework="np") as reference:  # the reference agrees it is valid
            assert list(reference.keys()) == ["t"]


def test_zero_sized_tensors_and_an_empty_file_are_valid() -> None:
    assert validate(raw_file({})).tensor_count == 0
    header = {"empty": tensor("F32", [0, 3], 4, 4), "x": tensor("F32", [1], 0, 4)}
    assert validate(raw_file(header, bytes(4))).parameter_count == 1


# --- broken files: each is refused with a specific error, and the reference refuses it too ---------

BROKEN = {
    "header shorter than its prefix says": (
        struct.pack("<Q", 500) + b'{"a": 1}', SafetensorsTruncated, "header has 500 bytes.*truncated"),
    "fewer than 8 bytes": (b"\x05\x00\x00", SafetensorsTruncated, "fewer than the 8-byte length prefix"),
    "header over 100 MB": (
        struct.pack("<Q", 100_000_001) + b"{" + bytes(64), SafetensorsHeaderTooLarge, "more than .*100 MB"),
    "not JSON": (raw_file(b'{"a": '), SafetensorsBadHeader, "not valid JSON"),
    "JSON but not an object": (raw_file([1, 2]), SafetensorsBadHeader, "an array where a JSON object is required"),
    "leading whitespace": (raw_file(b' {}'), SafetensorsBadHeader, "must start with '{'"),
    "not UTF-8": (raw_file(b'{"\xff": 1}'), SafetensorsBadHeader, "not valid UTF-8"),
    "duplicate tensor": (raw_file(b'{"x": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, '
                                  b'"x": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}', b"a"),
                         SafetensorsBadHeader, "'x' appears twice"),
    "unknown dtype": (raw_file({"x": tensor("F17", [1], 0, 2)}, bytes(2)), SafetensorsBadTensor,
                      "tensor 'x': unknown dtype 'F17'"),
    "negative dimension": (raw_file({"x": tensor("U8", [-1], 0, 0)}), SafetensorsBadTensor,
                           "shape must be a list of non-negative integers"),
    "boolean dimension": (raw_file({"x": tensor("U8", [True], 0, 1)}, b"a"), SafetensorsBadTensor,
                          "shape must be"),
    "offsets not a pair": (raw_file({"x": tensor("U8", [1], 0, 1) | {"data_offsets": [0]}}, b"a"),
                           SafetensorsBadTensor, r"data_offsets must be \[begin, end\]"),
    "offsets backwards": (raw_file({"x": tensor("U8", [0], 4, 2)}, bytes(4)), SafetensorsBadTensor,
                          "end before they begin"),
    "missing shape": (raw_file({"x": {"dtype": "U8", "data_offsets": [0, 1]}}, b"a"), SafetensorsBadTensor,
                      "tensor 'x': missing shape"),
    "wrong byte length": (raw_file({"x": tensor("F16", [3, 3], 0, 10)}, bytes(10)), SafetensorsBadTensor,
                          r"tensor 'x': data_offsets cover 10 bytes but F16 \[3, 3\] needs 18"),
    "half a byte": (raw_file({"x": tensor("F4", [3], 0, 2)}, bytes(2)), SafetensorsBadTensor,
                    "12 bits, not a whole number of bytes"),
    "overlapping tensors": (raw_file({"a": tensor("U8", [4], 0, 4), "b": tensor("U8", [4], 2, 6)}, bytes(6)),
                            SafetensorsBadLayout, "tensor 'b' .*overlaps tensor 'a', which ends at 4"),
    "gap between tensors": (raw_file({"a": tensor("U8", [4], 0, 4), "b": tensor("U8", [4], 5, 9)}, bytes(9)),
                            SafetensorsBadLayout,
                            r"a gap of 1 byte after tensor 'a' \(offsets 4..5\) that no tensor covers"),
    "data not starting at 0": (raw_file({"a": tensor("U8", [4], 3, 7)}, bytes(7)), SafetensorsBadLayout,
                               "a gap of 3 bytes at the start of the data"),
    "bytes after the last tensor": (raw_file({"a": tensor("U8", [4], 0, 4)}, bytes(4) + b"payload"),
                                    SafetensorsTrailingData, "7 bytes after the last tensor"),
    "tensor data cut short": (raw_file({"a": tensor("U8", [4], 0, 4)}, bytes(3)), SafetensorsTruncated,
                              "truncated: its header describes 4 bytes of tensor data, so the file should "
                              "have 72 bytes, but it has 71"),
    "metadata value not a string": (raw_file({"__metadata__": {"epochs": 10}}), SafetensorsBadMetadata,
                                    r"__metadata__\['epochs'\] must be a string, not a number"),
    "metadata not an object": (raw_file({"__metadata__": ["a"]}), SafetensorsBadMetadata,
                               "__metadata__ must be an object of strings, not an array"),
}


# The reference library (0.8) takes these, but the format's description says the header starts with
# `{`, and with duplicate names two parsers can see two different files.
STRICTER_THAN_THE_REFERENCE = {"leading whitespace", "duplicate tensor"}


@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_file_is_refused_saying_exactly_what_is_wrong(case: str, tmp_path: Path) -> None:
    data, error, message = BROKEN[case]
    with pytest.raises(error, match=message):
        validate(data)
    if case in STRICTER_THAN_THE_REFERENCE:
        return
    path = tmp_path / "broken.safetensors"
    path.write_bytes(data)
    with pytest.raises(Exception):
        with safe_open(path, framework="np") as reference:
            reference.keys()


def test_safetensors_errors_are_invalid_input() -> None:
    assert issubclass(InvalidSafetensors, InvalidInput) and issubclass(PickleRefused, InvalidInput)
    with pytest.raises(InvalidInput) as caught:
        validate(BROKEN["gap between tensors"][0])
    assert caught.value.code == "safetensors_bad_layout"


# --- streaming ----------------------------------------------------------------------------------

def test_the_streaming_reader_gives_the_same_answer_wherever_the_chunks_are_cut() -> None:
    data = good_file({"a": "b"})
    expected = validate(data)
    header_end = 8 + expected.header_length
    for cut in [*range(1, 10), header_end - 1, header_end, header_end + 1, len(data) - 1]:
        reader = SafetensorsHeaderReader()
        results = [reader.feed(data[:cut]), reader.feed(data[cut:])]
        assert [r for r in results if r is not None] == [expected], cut
        assert reader.finish() == expected
    reader = SafetensorsHeaderReader()
    assert [info for byte in range(len(data)) if (info := reader.feed(data[byte:byte + 1]))] == [expected]


def test_the_streaming_reader_refuses_a_short_or_long_upload_at_the_end() -> None:
    data = good_file()
    short = SafetensorsHeaderReader()
    short.feed(data[:-1])
    with pytest.raises(SafetensorsTruncated):
        short.finish()
    long = SafetensorsHeaderReader()
    long.feed(data + b"x")
    with pytest.raises(SafetensorsTrailingData, match="1 byte after the last tensor"):
        long.finish()
    cut_in_header = SafetensorsHeaderReader()
    cut_in_header.feed(data[:20])
    with pytest.raises(SafetensorsTruncated, match="truncated"):
        cut_in_header.finish()


def test_with_a_known_size_a_wrong_length_is_refused_as_soon_as_the_header_arrives() -> None:
    data = good_file()
    header_end = 8 + int.from_bytes(data[:8], "little")
    reader = SafetensorsHeaderReader(expected_size=len(data) + 1000)
    with pytest.raises(SafetensorsTrailingData):
        reader.feed(data[:header_end])
    reader = SafetensorsHeaderReader(expected_size=20)
    with pytest.raises(SafetensorsTruncated):
        reader.feed(data[:8])


# --- pickle ---------------------------------------------------------------------------------------

def test_a_pickle_renamed_safetensors_is_refused_as_pickle() -> None:
    data = pickle.dumps({"state_dict": {"w": [1.0, 2.0]}}, protocol=2)
    assert sniff_format(data, "model.safetensors") == "PickleTensor"
    with pytest.raises(PickleRefused, match="'model.safetensors' is a Python pickle"):
        validate(data)
    reader = SafetensorsHeaderReader(filename="model.safetensors")
    with pytest.raises(PickleRefused):
        reader.feed(data)


def test_a_torch_zip_renamed_safetensors_is_refused_as_pickle() -> None:
    data = torch_style_zip()
    assert sniff_format(data[:4096], "model.safetensors") == "PickleTensor"
    with pytest.raises(PickleRefused):
        validate(data)
    with pytest.raises(PickleRefused):
        validate_safetensors_header(io.BytesIO(data), len(data))


def test_the_refusal_explains_the_danger_and_how_to_convert() -> None:
    with pytest.raises(PickleRefused) as caught:
        refuse_pickle("model.ckpt")
    detail = caught.value.detail
    assert "'model.ckpt'" in detail
    assert "run any code" in detail and "never unpickles" in detail
    assert "safetensors.torch" in detail and "save_file" in detail and "weights_only=True" in detail
    assert caught.value.code == "pickle_refused"


def test_a_malicious_pickle_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    data = pickle.dumps(Exec(f"open({str(marker)!r}, 'w').write('ran')"), protocol=4)
    with pytest.raises(PickleRefused):
        validate(data, "lora.safetensors")
    assert sniff_format(data, "lora.safetensors") == "PickleTensor"
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_raw_pickles_are_recognised_by_content_whatever_their_name(protocol: int) -> None:
    data = pickle.dumps({"a": 1}, protocol=protocol)
    for name in ("model.bin", "image.png", "model.safetensors", "noextension"):
        assert sniff_format(data, name) == "PickleTensor"


def test_the_legacy_torch_format_is_recognised_as_pickle() -> None:
    # torch before 1.6 pickled the magic number 0x1950a86a20f9469cfc6c first.
    legacy = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.\x80\x02M\xe9\x03."
    assert sniff_format(legacy, "old.pt") == "PickleTensor"
    assert sniff_format(legacy, "old.gguf") == "PickleTensor"


@pytest.mark.parametrize("first_bytes, name, expected", [
    (good_file(), "model.ckpt", "SafeTensor"),
    (b"GGUF\x03\x00\x00\x00" + bytes(16), "model.safetensors", "GGUF"),
    (torch_style_zip("model_v1"), "weights.bin", "PickleTensor"),
    (None, "pipeline.zip", "Diffusers"),
    (None, "images.zip", "Other"),
    (b"\x08\x07\x12\x07pytorch", "model.onnx", "ONNX"),
    (b"random bytes here", "model.ckpt", "PickleTensor"),
    (b"random bytes here", "model.safetensors", "SafeTensor"),
    (b"random bytes here", "readme.txt", "Other"),
    (b"", "", "Other"),
])
def test_the_format_follows_content_first_then_the_extension(first_bytes: bytes | None, name: str,
                                                             expected: str) -> None:
    if first_bytes is None:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            member = "model_index.json" if expected == "Diffusers" else "img/1.png"
            archive.writestr(member, "{}")
            archive.writestr("unet/config.json", "{}")
        first_bytes = buffer.getvalue()
    assert sniff_format(first_bytes[:4096], name) == expected


def test_real_torch_checkpoints_are_recognised_and_the_suggested_conversion_works(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")  # the `ml` extra
    state = {"state_dict": {"w": torch.ones(2, 3), "shared": torch.arange(4.0)}}
    state["state_dict"]["view"] = state["state_dict"]["shared"][:2]  # shares memory, as real ones do
    torch.save(state, tmp_path / "model.ckpt")
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    for name in ("model.ckpt", "legacy.pt"):
        first_bytes = (tmp_path / name).read_bytes()[:4096]
        assert sniff_format(first_bytes, "renamed.safetensors") == "PickleTensor", name
    with pytest.raises(PickleRefused) as caught:
        refuse_pickle("model.ckpt")
    command = caught.value.detail.split("python -c ", 1)[1]
    subprocess.run(f"{shlex.quote(sys.executable)} -c {command}", shell=True, cwd=tmp_path, check=True)
    data = (tmp_path / "model.safetensors").read_bytes()
    info = validate(data)
    assert (info.tensor_count, info.parameter_count, info.fp) == (3, 12, "fp32")
