"""What kind of model file this is, and whether a safetensors file is well formed, from its bytes alone.

Nothing here loads tensors, and nothing ever unpickles: pickle files (.ckpt, .pt, .bin, usually a
pickle inside a zip) run code when loaded, and scanners for them have public bypasses, so they are
recognised by their first bytes and refused with `PickleRefused`.

A safetensors file is u64 little-endian N, N bytes of UTF-8 JSON that start with `{` (maybe padded
with spaces), then the data buffer. `SafetensorsHeaderReader` checks it while an upload streams in,
with the reference implementation's rules: the header is at most 100 MB, every tensor has a known
dtype, a shape of non-negative integers and `data_offsets` whose length is exactly what the dtype and
shape need, the tensors tile the buffer from 0 with no gap or overlap, and the buffer ends exactly at
the end of the file, so nothing can hide after the last tensor. Two rules are stricter than the
reference library (0.8): the header must start with `{` itself, as the format's description says, and
a name may not appear twice.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import BinaryIO, NoReturn

from node.core.errors import InvalidInput

MAX_HEADER_BYTES = 100_000_000  # the reference implementation's limit
# How much of a file's start `sniff_format` looks at; callers pass at least this much when they can.
SNIFF_BYTES = 4096

# Bits per element of every dtype the reference implementation (safetensors 0.8) knows.
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8,
    "F8_E4M3": 8, "F8_E5M2": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "F8_E8M0": 8,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
}
# Civitai's file `fp` value for the float dtypes it names; F8_E8M0 holds scales, not weights.
_FP_BY_DTYPE = {"F32": "fp32", "F16": "fp16", "BF16": "bf16", "F8_E4M3": "fp8", "F8_E5M2": "fp8",
                "F8_E4M3FNUZ": "fp8", "F8_E5M2FNUZ": "fp8"}

# Civitai's file format names.
SAFETENSOR = "SafeTensor"
PICKLE_TENSOR = "PickleTensor"
GGUF = "GGUF"
ONNX = "ONNX"
DIFFUSERS = "Diffusers"
OTHER = "Other"
# Used only when the content says nothing: Civitai names formats by extension too.
_FORMAT_BY_EXTENSION = {
    "safetensors": SAFETENSOR, "sft": SAFETENSOR, "gguf": GGUF, "onnx": ONNX,
    "ckpt": PICKLE_TENSOR, "pt": PICKLE_TENSOR, "pth": PICKLE_TENSOR, "bin": PICKLE_TENSOR,
    "pkl": PICKLE_TENSOR, "pickle": PICKLE_TENSOR,
}

CONVERT_HINT = (
    "Convert it to safetensors on your own machine, in an environment you trust, and upload the "
    "result (put your file's name in place of model.ckpt):\n"
    "  python -c \"import torch, safetensors.torch as st; "
    "sd = torch.load('model.ckpt', map_location='cpu', weights_only=True); "
    "sd = sd.get('state_dict', sd); "
    "st.save_file({k: v.detach().clone().contiguous() for k, v in sd.items() "
    "if isinstance(v, torch.Tensor)}, 'model.safetensors')\""
)


class InvalidSafetensors(InvalidInput):
    """A file that should be safetensors breaks the format; the detail says exactly how."""

    code = "invalid_safetensors"


class SafetensorsHeaderTooLarge(InvalidSafetensors):
    """The length prefix claims a header over 100 MB."""

    code = "safetensors_header_too_large"


class SafetensorsTruncated(InvalidSafetensors):
    """The file ends before its header or the tensor data it describes."""

    code = "safetensors_truncated"


class SafetensorsBadHeader(InvalidSafetensors):
    """The header is not a UTF-8 JSON object starting with `{`."""

    code = "safetensors_bad_header"


class SafetensorsBadTensor(InvalidSafetensors):
    """A tensor entry has a bad dtype, shape or data_offsets."""

    code = "safetensors_bad_tensor"


class SafetensorsBadLayout(InvalidSafetensors):
    """Tensors overlap, leave a gap, or do not start at the beginning of the buffer."""

    code = "safetensors_bad_layout"


class SafetensorsTrailingData(InvalidSafetensors):
    """Bytes follow the last tensor that the header does not describe."""

    code = "safetensors_trailing_data"


class SafetensorsBadMetadata(InvalidSafetensors):
    """`__metadata__` is not a map of strings to strings."""

    code = "safetensors_bad_metadata"


class PickleRefused(InvalidInput):
    """The file is a pickle, which this node never loads."""

    code = "pickle_refused"


@dataclass(frozen=True)
class SafetensorsInfo:
    """What a valid safetensors header says."""

    header_length: int
    header_sha256: str            # of the N raw header bytes, padding included
    tensor_count: int
    parameter_count: int
    data_length: int              # bytes of tensor data after the header
    bytes_by_dtype: Mapping[str, int]
    metadata: Mapping[str, str]       # __metadata__, string to string

    @property
    def file_size(self) -> int:
        """The exact size the file must have."""
        return 8 + self.header_length + self.data_length

    @property
    def dtypes(self) -> tuple[str, ...]:
        """The dtypes present, sorted."""
        return tuple(sorted(self.bytes_by_dtype))

    @property
    def fp(self) -> str | None:
        """Civitai's `fp` (fp32/fp16/bf16/fp8) of the float dtype holding the most bytes, if any."""
        weights: dict[str, int] = {}
        for dtype, size in self.bytes_by_dtype.items():
            if dtype in _FP_BY_DTYPE:
                weights[_FP_BY_DTYPE[dtype]] = weights.get(_FP_BY_DTYPE[dtype], 0) + size
        if not weights:
            return None
        return max(sorted(weights), key=lambda fp: weights[fp])


class SafetensorsHeaderReader:
    """Validates a safetensors file fed in order, chunk by chunk, as an upload arrives.

    `feed` returns the `SafetensorsInfo` once the whole header has arrived (and None before and
    after); `finish` checks that the file ended exactly where the tensor data does. With
    `expected_size` (a Content-Length), a file of the wrong size is refused as soon as the header is
    read instead of after the whole body. Only the header is buffered (at most 100 MB).
    """

    def __init__(self, *, filename: str = "", expected_size: int | None = None) -> None:
        self.filename = filename
        self.expected_size = expected_size
        self.info: SafetensorsInfo | None = None
        self.header_length: int | None = None  # N, once the 8-byte prefix has arrived
        self._buffer = bytearray()  # the prefix and header, until they are parsed
        self._head = bytearray()    # the first SNIFF_BYTES, to recognise a pickle in disguise
        self._received = 0

    def feed(self, chunk: bytes | bytearray | memoryview) -> SafetensorsInfo | None:
        """Take the next bytes of the file; return the header's info when it is complete."""
        self._received += len(chunk)
        if len(self._head) < SNIFF_BYTES:
            self._head += chunk[:SNIFF_BYTES - len(self._head)]
        if self.info is not None:
            return None
        view = memoryview(chunk)
        try:
            if self.header_length is None:
                view = self._take(view, 8)
                if len(self._buffer) < 8:
                    return None
                self.header_length = self._read_prefix()
            self._take(view, 8 + self.header_length)
            if len(self._buffer) < 8 + self.header_length:
                return None
            info = _parse_header(bytes(self._buffer[8:]))
            self._buffer = bytearray()
            if self.expected_size is not None:
                _check_size(info, self.expected_size)
        except InvalidSafetensors as exc:
            self._refuse_if_pickle(exc)
            raise
        self.info = info
        return info

    def finish(self) -> SafetensorsInfo:
        """Check the file ended exactly after the last tensor; return the header's info."""
        try:
            if self.info is None:
                raise SafetensorsTruncated(_truncated_header_message(self._received, self.header_length))
            _check_size(self.info, self._received)
        except InvalidSafetensors as exc:
            self._refuse_if_pickle(exc)
            raise
        return self.info

    def _take(self, view: memoryview, upto: int) -> memoryview:
        """Move bytes from `view` into the buffer until it holds `upto`; return what is left."""
        wanted = max(0, upto - len(self._buffer))
        self._buffer += view[:wanted]
        return view[wanted:]

    def _read_prefix(self) -> int:
        header_length = struct.unpack("<Q", self._buffer[:8])[0]
        if header_length > MAX_HEADER_BYTES:
            raise SafetensorsHeaderTooLarge(
                f"safetensors header: the length prefix claims a {header_length:,}-byte header, more "
                f"than the {MAX_HEADER_BYTES:,}-byte (100 MB) limit; this is not a safetensors file")
        if self.expected_size is not None and 8 + header_length > self.expected_size:
            raise SafetensorsTruncated(_truncated_header_message(self.expected_size, header_length))
        return header_length

    def _refuse_if_pickle(self, cause: InvalidSafetensors) -> None:
        # A pickle renamed .safetensors fails the header checks; say what it really is.
        if _looks_like_pickle(bytes(self._head)):
            try:
                refuse_pickle(self.filename)
            except PickleRefused as refusal:
                raise refusal from cause


def validate_safetensors_header(source: bytes | bytearray | memoryview | BinaryIO, file_size: int, *,
                                filename: str = "") -> SafetensorsInfo:
    """Validate a safetensors file of `file_size` bytes from its start, without reading tensor data.

    `source` is either the first bytes of the file (at least 8 + N of them, or the whole file when
    it is shorter) or a binary file object positioned at its start, from which only the header is
    read. Raises an `InvalidSafetensors` subclass saying what is wrong, or `PickleRefused`.
    """
    reader = SafetensorsHeaderReader(filename=filename, expected_size=file_size)
    if isinstance(source, (bytes, bytearray, memoryview)):
        info = reader.feed(source)
        if info is None and len(source) < file_size:
            raise ValueError("validate_safetensors_header needs the first 8 + N bytes of the file")
    else:
        # The first read is big enough to recognise a zipped pickle if the header checks fail.
        first = _read_exactly(source, min(file_size, SNIFF_BYTES))
        info = reader.feed(first)
        if info is None and reader.header_length is not None:
            info = reader.feed(_read_exactly(source, 8 + reader.header_length - len(first)))
    # Without info the bytes ran out inside the header, and finish() raises saying so.
    return info if info is not None else reader.finish()


def _read_exactly(handle: BinaryIO, size: int) -> bytes:
    parts = []
    while size > 0:
        part = handle.read(size)
        if not part:
            break
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


def _truncated_header_message(available: int, header_length: int | None) -> str:
    if header_length is None:
        return f"safetensors header: the file has {available} bytes, fewer than the 8-byte length prefix"
    return (f"safetensors header: the length prefix says the header has {header_length:,} bytes, but "
            f"the file has only {max(0, available - 8):,} bytes after the prefix (truncated)")


def _check_size(info: SafetensorsInfo, file_size: int) -> None:
    if file_size < info.file_size:
        raise SafetensorsTruncated(
            f"safetensors file is truncated: its header describes {_bytes(info.data_length)} of tensor "
            f"data, so the file should have {info.file_size:,} bytes, but it has {file_size:,}")
    if file_size > info.file_size:
        raise SafetensorsTrailingData(
            f"safetensors file has {_bytes(file_size - info.file_size)} after the last tensor that the "
            f"header does not describe (header and tensors end at {info.file_size:,}, the file at "
            f"{file_size:,})")


def _parse_header(raw: bytes) -> SafetensorsInfo:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SafetensorsBadHeader(f"safetensors header: not valid UTF-8 (byte {exc.start})") from None
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except ValueError as exc:
        raise SafetensorsBadHeader(f"safetensors header: not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise SafetensorsBadHeader(
            f"safetensors header: {_json_type(header)} where a JSON object is required")
    if not text.startswith("{"):
        # Trailing padding is part of the format; leading whitespace is not (no writer makes it).
        raise SafetensorsBadHeader(f"safetensors header: must start with '{{', starts with {text[:1]!r}")
    metadata = _parse_metadata(header.pop("__metadata__", None))
    spans = []
    bytes_by_dtype: dict[str, int] = {}
    parameter_count = 0
    for name, entry in header.items():
        dtype, shape, begin, end = _parse_tensor(name, entry)
        spans.append((begin, end, name))
        bytes_by_dtype[dtype] = bytes_by_dtype.get(dtype, 0) + (end - begin)
        parameter_count += math.prod(shape)
    data_length = _check_layout(spans)
    return SafetensorsInfo(header_length=len(raw), header_sha256=hashlib.sha256(raw).hexdigest(),
                           tensor_count=len(spans), parameter_count=parameter_count,
                           data_length=data_length, bytes_by_dtype=bytes_by_dtype, metadata=metadata)


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # JSON parsers disagree on which duplicate wins, so two tools could read two different files.
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise SafetensorsBadHeader(f"safetensors header: key {key!r} appears twice")
        result[key] = value
    return result


def _parse_metadata(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SafetensorsBadMetadata(
            f"safetensors header: __metadata__ must be an object of strings, not {_json_type(value)}")
    for key, item in value.items():
        if not isinstance(item, str):
            raise SafetensorsBadMetadata(
                f"safetensors header: __metadata__[{key!r}] must be a string, not {_json_type(item)}")
        _check_encodable(f"__metadata__[{key!r}]", key + item)
    return value


def _parse_tensor(name: str, entry: object) -> tuple[str, list[int], int, int]:
    where = f"safetensors header: tensor {name!r}"
    _check_encodable(f"tensor {name!r}", name)
    if not isinstance(entry, dict):
        raise SafetensorsBadTensor(f"{where}: must be an object, not {_json_type(entry)}")
    missing = [key for key in ("dtype", "shape", "data_offsets") if key not in entry]
    if missing:
        raise SafetensorsBadTensor(f"{where}: missing {', '.join(missing)}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise SafetensorsBadTensor(f"{where}: unknown dtype {dtype!r} (known: {', '.join(DTYPE_BITS)})")
    if not isinstance(shape, list) or not all(_is_count(dim) for dim in shape):
        raise SafetensorsBadTensor(f"{where}: shape must be a list of non-negative integers, got "
                                   f"{json.dumps(shape)}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        raise SafetensorsBadTensor(f"{where}: data_offsets must be [begin, end] with non-negative "
                                   f"integers, got {json.dumps(offsets)}")
    begin, end = offsets
    if end < begin:
        raise SafetensorsBadTensor(f"{where}: data_offsets [{begin}, {end}] end before they begin")
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if bits % 8:
        raise SafetensorsBadTensor(f"{where}: {dtype} {shape} is {bits} bits, not a whole number of bytes")
    if end - begin != bits // 8:
        raise SafetensorsBadTensor(f"{where}: data_offsets cover {end - begin} bytes but {dtype} {shape} "
                                   f"needs {bits // 8}")
    return dtype, shape, begin, end


def _check_layout(spans: list[tuple[int, int, str]]) -> int:
    """Check the tensors tile the buffer from 0 without gaps or overlaps; return its length."""
    position, previous = 0, None
    for begin, end, name in sorted(spans):
        if begin > position:
            after = f"after tensor {previous!r}" if previous is not None else "at the start of the data"
            raise SafetensorsBadLayout(
                f"safetensors header: a gap of {_bytes(begin - position)} {after} (offsets "
                f"{position}..{begin}) that no tensor covers; tensor {name!r} starts at {begin}")
        if begin < position:
            raise SafetensorsBadLayout(
                f"safetensors header: tensor {name!r} (offsets {begin}..{end}) overlaps tensor "
                f"{previous!r}, which ends at {position}")
        position, previous = end, name
    return position


def _bytes(count: int) -> str:
    return "1 byte" if count == 1 else f"{count:,} bytes"


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _json_type(value: object) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", list: "an array",
             dict: "an object", str: "a string", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _check_encodable(where: str, text: str) -> None:
    # json.loads accepts lone surrogates (\ud800) that no UTF-8 database or file name can hold.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise SafetensorsBadHeader(f"safetensors header: {where} contains an invalid \\u escape "
                                   "(a lone surrogate)") from None


def _looks_like_pickle(first_bytes: bytes) -> bool:
    # Protocol 2-5 pickles start with the PROTO opcode; torch's legacy format is one of them (it
    # pickles a magic number first). Since torch 1.6, torch.save writes a zip holding `*/data.pkl`.
    if len(first_bytes) >= 2 and first_bytes[0] == 0x80 and 2 <= first_bytes[1] <= 5:
        return True
    return first_bytes.startswith(b"PK\x03\x04") and any(
        name.endswith(".pkl") for name in _zip_member_names(first_bytes))


def _zip_member_names(first_bytes: bytes) -> list[str]:
    """Names of the zip entries whose local headers lie in `first_bytes` (stops at the first gap)."""
    names, offset = [], 0
    while first_bytes.startswith(b"PK\x03\x04", offset) and offset + 30 <= len(first_bytes):
        flags, = struct.unpack_from("<H", first_bytes, offset + 6)
        compressed, = struct.unpack_from("<I", first_bytes, offset + 18)
        name_length, extra_length = struct.unpack_from("<HH", first_bytes, offset + 26)
        name = first_bytes[offset + 30:offset + 30 + name_length]
        names.append(name.decode("utf-8", "replace"))
        if flags & 0x08:
            break  # sizes follow the data (streamed zip): the next header cannot be found cheaply
        offset += 30 + name_length + extra_length + compressed
    return names


def sniff_format(first_bytes: bytes, filename: str = "") -> str:
    """Civitai's format name for a file from its first bytes (pass `SNIFF_BYTES` when you can).

    The content decides: a pickle named `.safetensors` is a PickleTensor. The extension counts only
    when the content is not recognised, so an unknown `.ckpt` is still treated as a pickle, and a
    broken `.safetensors` goes to the safetensors validator, which says what is wrong with it.
    """
    if len(first_bytes) >= 9 and first_bytes[8:9] == b"{" and \
            int.from_bytes(first_bytes[:8], "little") <= MAX_HEADER_BYTES:
        return SAFETENSOR
    if first_bytes.startswith(b"GGUF"):
        return GGUF
    if _looks_like_pickle(first_bytes):
        return PICKLE_TENSOR
    extension = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    by_extension = _FORMAT_BY_EXTENSION.get(extension, OTHER)
    if first_bytes.startswith(b"PK\x03\x04"):
        # A Diffusers folder uploaded as a zip; whatever its members are must be checked one by one.
        if any(name.rsplit("/", 1)[-1] == "model_index.json" for name in _zip_member_names(first_bytes)):
            return DIFFUSERS
        return PICKLE_TENSOR if by_extension == PICKLE_TENSOR else OTHER
    return by_extension


def refuse_pickle(filename: str = "") -> NoReturn:
    """Raise `PickleRefused` with a message that explains why and how to convert the file."""
    subject = f"{filename!r} is" if filename else "This file is"
    raise PickleRefused(
        f"{subject} a Python pickle (the PyTorch .ckpt/.pt/.bin format). Loading a pickle can run any "
        "code its author put in it, and pickle scanners can be fooled, so this node never unpickles "
        f"files and does not accept them. {CONVERT_HINT}")
