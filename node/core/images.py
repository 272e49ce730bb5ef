"""Safe intake of uploaded images, and their thumbnails.

Only PNG, JPEG and WebP are accepted, recognised by their bytes, never by a file name. The byte limit is
checked before reading, and the pixel limit from the dimensions in the header before Pillow decodes any
pixel data, so a small file declaring 50,000 x 50,000 pixels (a decompression bomb) is refused without
allocating. Accepted images are then decoded in full, so truncated and corrupt files are refused too.

Pillow's own bomb guard (`Image.MAX_IMAGE_PIXELS`) is process-wide, so this module leaves it alone and
never lets a limit above it take effect: anything Pillow would warn or fail about is refused here first
as TooLarge, and a DecompressionBombError that gets through anyway becomes TooLarge too.

Every function here blocks on the disk and the CPU: from async code call it through `asyncio.to_thread`.
"""

from __future__ import annotations

import hashlib
import io
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from PIL import Image, PngImagePlugin

from node.core.errors import InvalidInput, TooLarge
from node.core.files import atomic_write_bytes
from node.core.imagemeta import GenerationMeta, parse_image_text

DEFAULT_MAX_BYTES = 50 * 1024 * 1024
DEFAULT_MAX_PIXELS = 8192 * 8192  # below Pillow's default bomb limit (about 89.5 million)
THUMBNAIL_MAX_SIDE = 450

_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
_THUMBNAIL_OPTIONS = {"WEBP": {"quality": 80, "method": 4}, "JPEG": {"quality": 85, "optimize": True},
                      "PNG": {"optimize": True}}
_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286
_ORIENTATIONS_SWAPPING_SIDES = (5, 6, 7, 8)
# EXIF orientation -> the transposition that shows the image upright (as ImageOps.exif_transpose does).
_TRANSPOSE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Pillow signals broken files with any of these, depending on the format and where the damage is.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)

_T = TypeVar("_T")


class UnsupportedImage(InvalidInput):
    """The upload is not a PNG, JPEG or WebP image."""

    code = "unsupported_image"


class BrokenImage(InvalidInput):
    """The upload looks like an accepted format but is truncated or corrupt."""

    code = "broken_image"


@dataclass(frozen=True)
class ImageInfo:
    """What intake learned about an accepted image. Width and height are as displayed (EXIF
    orientation applied); `text` holds the raw metadata texts (PNG chunks, EXIF `UserComment`)."""

    format: str  # "PNG", "JPEG" or "WEBP"
    width: int
    height: int
    mime: str
    sha256: str
    size: int
    frames: int = 1
    text: dict[str, str] = field(default_factory=dict)
    generation: GenerationMeta | None = None
    warnings: list[str] = field(default_factory=list)


def inspect_image(source: str | Path | bytes, *, max_bytes: int = DEFAULT_MAX_BYTES,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Check an uploaded image and read its metadata. Blocks; run it in a thread from async code.

    Raises UnsupportedImage (not PNG/JPEG/WebP), TooLarge (bytes or pixels over the limits, checked
    before decoding) or BrokenImage (truncated or corrupt).
    """
    data = _read_limited(source, max_bytes)
    fmt = _sniff(data)
    width, height = _header_size(fmt, data)
    limit = _pixel_limit(max_pixels)
    _check_pixels(width, height, limit)

    warnings: list[str] = []
    with _open(data, fmt) as image:
        _check_pixels(*image.size, limit)  # Pillow's reading of the header is the one that decodes
        frames = getattr(image, "n_frames", 1)
        if fmt == "PNG":
            # verify() checks every chunk's CRC up to IEND without decoding; it spends the image.
            _decode(fmt, image.verify)
    with _open(data, fmt) as image:
        _decode(fmt, image.load)
        text = _text_of(fmt, image, warnings)
        orientation = _orientation(image)
        width, height = image.size
    if orientation in _ORIENTATIONS_SWAPPING_SIDES:
        width, height = height, width
    return ImageInfo(format=fmt, width=width, height=height, mime=_MIME[fmt],
                     sha256=hashlib.sha256(data).hexdigest(), size=len(data), frames=frames, text=text,
                     generation=parse_image_text(text), warnings=warnings)


def make_thumbnail(src_path: str | Path, dest_path: str | Path, max_side: int = THUMBNAIL_MAX_SIDE,
                   format: str = "WEBP", *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Write a thumbnail of `src_path` to `dest_path` atomically; returns its (width, height).

    The aspect ratio is kept, the long side is at most `max_side` (never enlarged), EXIF orientation is
    applied, and no metadata is written (EXIF, XMP, text chunks are dropped; an RGB ICC colour profile is
    kept because dropping it changes colours). `format` is WEBP, JPEG or PNG. Blocks; run it in a thread.
    """
    fmt_out = format.upper()
    if fmt_out not in _THUMBNAIL_OPTIONS:
        raise InvalidInput(f"thumbnail format {format!r} is not one of WEBP, JPEG, PNG")
    if max_side < 1:
        raise InvalidInput(f"thumbnail max_side must be at least 1, not {max_side}")
    data = Path(src_path).read_bytes()
    fmt = _sniff(data)
    limit = _pixel_limit(max_pixels)
    _check_pixels(*_header_size(fmt, data), limit)
    with _open(data, fmt) as image:
        _check_pixels(*image.size, limit)
        icc = image.info.get("icc_profile")
        if not (isinstance(icc, bytes) and icc[16:20] == b"RGB "):
            icc = None  # a CMYK or grey profile would be wrong on the RGB pixels written below

        transpose = _TRANSPOSE_FOR_ORIENTATION.get(_orientation(image))

        def shrink() -> Image.Image:
            # thumbnail() first lets JPEG decode at a reduced scale; orientation does not change
            # which box the long side must fit, so applying it afterwards is equivalent and cheaper.
            image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            return image.transpose(transpose) if transpose is not None else image.copy()

        small = _decode(fmt, shrink)
    small = _decode(fmt, lambda: _flatten_for(fmt_out, small))
    small.info = {}  # nothing from the source rides along into the thumbnail
    buffer = io.BytesIO()
    options = dict(_THUMBNAIL_OPTIONS[fmt_out])
    if icc:
        options["icc_profile"] = icc
    small.save(buffer, fmt_out, **options)
    atomic_write_bytes(Path(dest_path), buffer.getvalue())
    return small.size


def decode_user_comment(raw: bytes | str) -> str:
    """The text of an EXIF UserComment: an 8-byte charset prefix, then the text.

    A1111 writes "UNICODE\\0" and big-endian UTF-16 (piexif's way) whatever the EXIF byte order; other
    tools write little-endian, with or without a BOM, so the byte order is guessed from where the zero
    bytes of ASCII characters fall.
    """
    if isinstance(raw, str):
        return raw.rstrip("\0")
    prefix, body = raw[:8], raw[8:]
    if prefix == b"UNICODE\0":
        if body[:2] in (b"\xff\xfe", b"\xfe\xff"):
            encoding, body = ("utf-16-le" if body[:2] == b"\xff\xfe" else "utf-16-be"), body[2:]
        else:
            sample = body[:512]
            zeros_even = sample[0::2].count(0)
            zeros_odd = sample[1::2].count(0)
            encoding = "utf-16-le" if zeros_odd > zeros_even else "utf-16-be"
        text = body[: len(body) // 2 * 2].decode(encoding, errors="replace")
    elif prefix == b"JIS\0\0\0\0\0":
        text = body.decode("shift_jis", errors="replace")
    elif prefix in (b"ASCII\0\0\0", b"\0" * 8):
        # Many tools put UTF-8 after the ASCII prefix; UTF-8 reads true ASCII unchanged.
        text = body.decode("utf-8", errors="replace")
    else:
        text = raw.decode("utf-8", errors="replace")
    return text.rstrip("\0")


# --- reading and checking ----------------------------------------------------------------------------


def _read_limited(source: str | Path | bytes, max_bytes: int) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        path = Path(source)
        size = path.stat().st_size
        if size > max_bytes:
            raise TooLarge(f"image is {size} bytes; this node accepts at most {max_bytes} bytes")
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)  # the file may have grown since stat()
    if len(data) > max_bytes:
        raise TooLarge(f"image is {len(data)} bytes; this node accepts at most {max_bytes} bytes")
    return data


def _sniff(data: bytes) -> str:
    """The format by magic bytes; UnsupportedImage naming what it is when we can tell."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    head = data[:256].lstrip()
    if data.startswith((b"GIF87a", b"GIF89a")):
        what = "a GIF image"
    elif data.startswith(b"BM"):
        what = "a BMP image"
    elif data.startswith((b"II*\0", b"MM\0*")):
        what = "a TIFF image"
    elif head[:5].lower() in (b"<?xml", b"<svg ", b"<svg>", b"<!doc") or b"<svg" in head.lower():
        what = "an SVG or other XML document"
    elif data[4:8] == b"ftyp":
        what = "an AVIF/HEIC image or a video"
    elif not data:
        what = "an empty file"
    else:
        what = "not a recognised image"
    raise UnsupportedImage(f"the upload is {what}; this node accepts PNG, JPEG and WebP images only")


def _pixel_limit(max_pixels: int) -> int:
    # Pillow warns above MAX_IMAGE_PIXELS (and fails above twice that) in every thread; staying at or
    # below it means Pillow's guard never fires on an image we accepted.
    pillow_limit = Image.MAX_IMAGE_PIXELS
    return max_pixels if pillow_limit is None else min(max_pixels, pillow_limit)


def _check_pixels(width: int, height: int, limit: int) -> None:
    if width <= 0 or height <= 0:
        raise BrokenImage(f"the image header declares {width}x{height} pixels")
    if width * height > limit:
        raise TooLarge(f"image is {width}x{height} ({width * height} pixels); this node accepts at most "
                       f"{limit} pixels")


def _header_size(fmt: str, data: bytes) -> tuple[int, int]:
    """Width and height from the header alone, before Pillow sees the file."""
    try:
        if fmt == "PNG":
            if data[12:16] != b"IHDR":
                raise BrokenImage("the PNG file does not start with an IHDR chunk")
            return struct.unpack(">II", data[16:24])
        if fmt == "JPEG":
            return _jpeg_size(data)
        return _webp_size(data)
    except struct.error:
        raise BrokenImage(f"the {fmt} header is truncated") from None


def _jpeg_size(data: bytes) -> tuple[int, int]:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise BrokenImage("the JPEG file has a broken marker before its frame header")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        # SOF0..SOF15 carry the size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height
        if marker in (0xD9, 0xDA):
            break
        i += 2 + length
    raise BrokenImage("the JPEG file has no frame header (SOF) before its image data")


def _webp_size(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8X":  # extended: 24-bit canvas size minus one
        if len(data) < 30:
            raise struct.error("short VP8X chunk")
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8L":  # lossless: signature 0x2F, then 14-bit sizes minus one
        if data[20:21] != b"\x2f":
            raise BrokenImage("the WebP lossless header is missing its signature")
        (bits,) = struct.unpack("<I", data[21:25])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 ":  # lossy: frame tag, start code, 14-bit sizes
        if data[23:26] != b"\x9d\x01\x2a":
            raise BrokenImage("the WebP lossy header is missing its start code")
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    raise BrokenImage(f"the WebP file starts with an unknown chunk {chunk!r}")


def _open(data: bytes, fmt: str) -> Image.Image:
    # `formats` stops Pillow from trying its other decoders on bytes that fooled the sniffing.
    try:
        return Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError as exc:
        raise TooLarge(f"image refused as a decompression bomb: {exc}") from None
    except Image.UnidentifiedImageError:
        raise BrokenImage(f"the file starts like a {fmt} image but Pillow cannot read it") from None
    except _DECODE_ERRORS as exc:
        raise _broken(fmt, exc) from None


def _decode(fmt: str, action: Callable[[], _T]) -> _T:
    """Run a Pillow step that reads pixel data, turning its failures into domain errors."""
    try:
        return action()
    except Image.DecompressionBombError as exc:
        raise TooLarge(f"image refused as a decompression bomb: {exc}") from None
    except _DECODE_ERRORS as exc:
        raise _broken(fmt, exc) from None


def _broken(fmt: str, exc: BaseException) -> InvalidInput:
    message = str(exc) or type(exc).__name__
    if "too large" in message.lower():  # Pillow's guard against text chunks that inflate without end
        return TooLarge(f"the {fmt} image has a metadata chunk that is too large: {message}")
    return BrokenImage(f"the {fmt} image is truncated or corrupt: {message}")


def _text_of(fmt: str, image: Image.Image, warnings: list[str]) -> dict[str, str]:
    """PNG text chunks, or the EXIF UserComment (and JPEG comment) of JPEG and WebP files."""
    if fmt == "PNG":
        return {str(key): _png_text(value) for key, value in getattr(image, "text", {}).items()}
    text: dict[str, str] = {}
    try:
        comment = image.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    except Exception as exc:  # noqa: BLE001 - EXIF is untrusted; any parse failure only loses metadata
        warnings.append(f"EXIF could not be read: {exc}")
        comment = None
    if comment:
        text["UserComment"] = decode_user_comment(comment)
    if isinstance(image.info.get("comment"), bytes):
        text["comment"] = image.info["comment"].decode("utf-8", errors="replace")
    return text


def _png_text(value: str) -> str:
    """A text chunk's value; tEXt is Latin-1 by the spec, but many tools write UTF-8 into it anyway."""
    if isinstance(value, PngImagePlugin.iTXt):  # iTXt is UTF-8 by the spec and already decoded so
        return str(value)
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:  # true Latin-1 (a lone é is not valid UTF-8), or not from bytes at all
        return str(value)


def _orientation(image: Image.Image) -> int | None:
    try:
        value = image.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - a broken EXIF block means no known orientation
        return None
    return value if isinstance(value, int) else None


def _flatten_for(fmt: str, image: Image.Image) -> Image.Image:
    """A mode the output format can store; JPEG has no alpha, so transparency lands on white."""
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if not has_alpha:
        return image if image.mode == "RGB" else image.convert("RGB")
    rgba = image if image.mode == "RGBA" else image.convert("RGBA")
    if fmt != "JPEG":
        return rgba
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background
