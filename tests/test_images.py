"""Image intake: accepted formats, size and bomb limits before decoding, broken files, metadata, thumbnails."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import struct
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageCms, PngImagePlugin

from node.core import images
from node.core.errors import InvalidInput, TooLarge
from node.core.images import (DEFAULT_MAX_PIXELS, BrokenImage, UnsupportedImage, decode_user_comment,
                              inspect_image, make_thumbnail)

PARAMETERS = (
    "a lighthouse at dusk <lora:add_detail:0.8>\n"
    "Negative prompt: blurry, lowres\n"
    "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 96x64, "
    'Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Lora hashes: "add_detail: 7c6bad76eb54", '
    'Hashes: {"model": "6ce0161689", "lora:add_detail": "7c6bad76eb54"}, Version: v1.10.1'
)
COMFY_PROMPT = {
    "3": {"class_type": "KSampler", "inputs": {"seed": 7, "steps": 20, "cfg": 8, "sampler_name": "euler",
                                               "scheduler": "normal", "denoise": 1, "model": ["4", 0],
                                               "positive": ["6", 0], "negative": ["7", 0],
                                               "latent_image": ["5", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "dreamshaper_8.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 96, "height": 64, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["4", 1]}},
}


def picture(size: tuple[int, int] = (96, 64), mode: str = "RGB") -> Image.Image:
    """An image with a landmark: a blue square in the top-left corner of a red field."""
    image = Image.new("RGB", size, (220, 30, 30))
    image.paste((30, 30, 220), (0, 0, size[0] // 4, size[1] // 4))
    return image.convert(mode)


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def exif_with(comment: bytes | None = None, orientation: int | None = None) -> Image.Exif:
    exif = Image.Exif()
    if comment is not None:
        exif.get_ifd(0x8769)[0x9286] = comment  # Exif IFD -> UserComment, as piexif writes it
    if orientation is not None:
        exif[0x0112] = orientation
    return exif


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb_png(width: int, height: int, rows_per_block: int = 200) -> bytes:
    """A valid greyscale PNG of `width` x `height` zero pixels, a few MB on disk.

    Each block of rows is deflated after a full flush, so every block compresses to the same bytes and
    one block's output can be repeated; the Adler-32 of n zero bytes is (n mod 65521) << 16 | 1.
    """
    block = b"\0" * ((1 + width) * rows_per_block)  # each row: filter byte 0, then the pixels
    deflate = zlib.compressobj(6)
    first = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    again = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    final_block = deflate.flush()[:-4]  # drop the Adler-32 of the two blocks actually fed
    adler = (((1 + width) * height % 65521) << 16) | 1
    idat = first + again * (height // rows_per_block - 1) + final_block + struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


# --- accepted formats and their metadata -----------------------------------------------------------


def test_a_png_with_a1111_parameters_is_accepted_and_its_metadata_read(tmp_path: Path) -> None:
    info_chunks = PngImagePlugin.PngInfo()
    info_chunks.add_text("parameters", PARAMETERS)
    info_chunks.add_text("Software", "sd-webui")
    data = encode(picture(), "PNG", pnginfo=info_chunks)
    (tmp_path / "upload.bin").write_bytes(data)

    info = inspect_image(tmp_path / "upload.bin")
    assert (info.format, info.mime, info.width, info.height, info.size) == ("PNG", "image/png", 96, 64, len(data))
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert info.text == {"parameters": PARAMETERS, "Software": "sd-webui"}
    assert info.generation is not None and info.generation.source == "a1111"
    assert (info.generation.steps, info.generation.seed, info.generation.model_hash) == (28, 1234, "6ce0161689")
    assert info.generation.lora_hashes == {"add_detail": "7c6bad76eb54"}


def test_a_png_with_comfyui_chunks_yields_comfyui_metadata() -> None:
    info_chunks = PngImagePlugin.PngInfo()
    info_chunks.add_text("prompt", json.dumps(COMFY_PROMPT), zip=True)  # zTXt
    info_chunks.add_itxt("workflow", json.dumps({"nodes": [], "links": []}), zip=True)  # iTXt
    info = inspect_image(encode(picture(), "PNG", pnginfo=info_chunks))
    assert set(info.text) == {"prompt", "workflow"}
    meta = info.generation
    assert meta is not None and meta.source == "comfyui"
    assert (meta.model, meta.prompt, meta.negative_prompt, meta.seed) == (
        "dreamshaper_8.safetensors", "a red fox", "text, watermark", 7)


def test_text_chunks_after_the_image_data_are_read_too() -> None:
    data = encode(picture(), "PNG")
    iend = data.rindex(b"IEND") - 4
    data = data[:iend] + png_chunk(b"tEXt", b"parameters\0" + PARAMETERS.encode("latin-1")) + data[iend:]
    info = inspect_image(data)
    assert info.generation is not None and info.generation.steps == 28


def test_png_text_in_latin1_utf8_or_itxt_reads_as_written() -> None:
    latin1 = png_chunk(b"tEXt", "latin\0caf\u00e9".encode("latin-1"))  # as the PNG spec says
    utf8 = png_chunk(b"tEXt", "parameters\0\u732b, caf\u00e9\nSteps: 1".encode("utf-8"))  # as many tools do
    info_chunks = PngImagePlugin.PngInfo()
    info_chunks.add_itxt("itxt", "\u00c3\u00a9 stays as written")
    data = encode(picture(), "PNG", pnginfo=info_chunks)
    iend = data.rindex(b"IEND") - 4
    info = inspect_image(data[:iend] + latin1 + utf8 + data[iend:])
    assert info.text == {"latin": "caf\u00e9", "parameters": "\u732b, caf\u00e9\nSteps: 1",
                         "itxt": "\u00c3\u00a9 stays as written"}
    assert info.generation is not None and info.generation.prompt == "\u732b, caf\u00e9"


@pytest.mark.parametrize("fmt, mime", [("JPEG", "image/jpeg"), ("WEBP", "image/webp")])
def test_a1111_text_in_exif_user_comment_as_big_endian_utf16_is_read(fmt: str, mime: str) -> None:
    # A1111 (through piexif) writes the UNICODE prefix and then UTF-16 big-endian.
    comment = b"UNICODE\0" + PARAMETERS.encode("utf-16-be")
    info = inspect_image(encode(picture(), fmt, exif=exif_with(comment)))
    assert (info.format, info.mime) == (fmt, mime)
    assert info.text["UserComment"] == PARAMETERS
    assert info.generation is not None and info.generation.sampler == "DPM++ 2M"
    assert info.generation.hashes == {"model": "6ce0161689", "lora:add_detail": "7c6bad76eb54"}


@pytest.mark.parametrize("raw, text", [
    (b"UNICODE\0" + "Steps: 20 \u732b".encode("utf-16-be"), "Steps: 20 \u732b"),
    (b"UNICODE\0" + "Steps: 20 \u732b".encode("utf-16-le"), "Steps: 20 \u732b"),
    (b"UNICODE\0\xff\xfe" + "\u732b\u732b".encode("utf-16-le"), "\u732b\u732b"),
    (b"UNICODE\0\xfe\xff" + "\u732b\u732b".encode("utf-16-be"), "\u732b\u732b"),
    (b"UNICODE\0" + "odd".encode("utf-16-be") + b"\0", "odd"),
    (b"ASCII\0\0\0Steps: 20", "Steps: 20"),
    (b"ASCII\0\0\0caf\xc3\xa9\0\0", "caf\u00e9"),  # UTF-8 after the ASCII prefix, NUL padded
    (b"\0" * 8 + b"plain", "plain"),
    (b"Steps: 20, no prefix", "Steps: 20, no prefix"),
    ("already text\0", "already text"),
])
def test_user_comment_charset_prefixes_and_byte_orders_are_decoded(raw: bytes | str, text: str) -> None:
    assert decode_user_comment(raw) == text


def test_the_format_is_recognised_by_content_not_by_file_name(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    path.write_bytes(encode(picture(), "PNG"))
    assert inspect_image(path).format == "PNG"


def test_an_image_without_generation_metadata_has_none() -> None:
    info = inspect_image(encode(picture(), "JPEG"))
    assert (info.text, info.generation) == ({}, None)


def test_exif_orientation_swaps_the_reported_width_and_height() -> None:
    info = inspect_image(encode(picture((96, 64)), "JPEG", exif=exif_with(orientation=6)))
    assert (info.width, info.height) == (64, 96)


def test_intake_can_run_in_a_worker_thread() -> None:
    data = encode(picture(), "WEBP", lossless=True)
    info = asyncio.run(asyncio.to_thread(inspect_image, data))
    assert (info.format, info.width, info.height) == ("WEBP", 96, 64)


# --- refused formats ------------------------------------------------------------------------------------


@pytest.mark.parametrize("data, named", [
    (encode(picture(), "GIF"), "a GIF image"),
    (encode(picture(), "BMP"), "a BMP image"),
    (encode(picture(), "TIFF"), "a TIFF image"),
    (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
     "an SVG or other XML document"),
    (b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', "an SVG or other XML document"),
    (b"", "an empty file"),
    (b"PK\x03\x04 a zip archive", "not a recognised image"),
])
def test_formats_other_than_png_jpeg_and_webp_are_refused_by_name(data: bytes, named: str) -> None:
    with pytest.raises(UnsupportedImage, match=f"the upload is {named}; this node accepts PNG, JPEG and WebP"):
        inspect_image(data)


def test_refusals_are_invalid_input_so_the_api_answers_4xx() -> None:
    assert issubclass(UnsupportedImage, InvalidInput) and issubclass(BrokenImage, InvalidInput)
    assert UnsupportedImage("x").code == "unsupported_image" and BrokenImage("x").code == "broken_image"


# --- size limits and bombs ----------------------------------------------------------------------------


def test_a_50000_by_50000_png_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    data = bomb_png(50_000, 50_000)
    assert len(data) < 10 * 1024 * 1024  # small on disk: 2.5 billion pixels once inflated

    def no_pillow(*args: object, **kwargs: object) -> None:
        raise AssertionError("Pillow must not even open a file whose header is over the limit")

    monkeypatch.setattr(Image, "open", no_pillow)
    started = time.monotonic()
    with pytest.raises(TooLarge, match=r"image is 50000x50000 \(2500000000 pixels\); this node accepts at most"):
        inspect_image(data, max_pixels=DEFAULT_MAX_PIXELS)
    assert time.monotonic() - started < 1


def test_the_bomb_is_a_real_png_that_pillow_would_refuse_too() -> None:
    # Guards the test above: the same construction decodes as a valid image at a small size ...
    small = Image.open(io.BytesIO(bomb_png(300, 400, rows_per_block=100)))
    small.load()
    assert (small.size, small.getextrema()) == ((300, 400), (0, 0))
    # ... and Pillow's own guard calls the big one a bomb.
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(bomb_png(50_000, 50_000)))


@pytest.mark.parametrize("fmt, options", [("PNG", {}), ("JPEG", {}), ("WEBP", {}), ("WEBP", {"lossless": True}),
                                          ("WEBP", {"exif": exif_with(b"ASCII\0\0\0x")})])
def test_the_pixel_limit_is_read_from_each_formats_header(fmt: str, options: dict[str, object]) -> None:
    data = encode(picture((100, 50)), fmt, **options)
    assert inspect_image(data, max_pixels=5000).width == 100
    with pytest.raises(TooLarge, match=r"image is 100x50 \(5000 pixels\); this node accepts at most 4999"):
        inspect_image(data, max_pixels=4999)


def test_no_limit_above_pillows_own_bomb_guard_takes_effect(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)
    # 80x80 is in the band where Pillow would only warn; it is refused here instead.
    with pytest.raises(TooLarge, match="at most 4000 pixels"):
        inspect_image(encode(picture((80, 80)), "PNG"), max_pixels=10**9)


@pytest.mark.parametrize("size", [(80, 80), (200, 200)])
def test_pillows_bomb_warning_and_error_become_too_large(monkeypatch: pytest.MonkeyPatch,
                                                         size: tuple[int, int]) -> None:
    # Should a header ever fool our own reading, Pillow's guard still ends in the same domain error.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)
    monkeypatch.setattr(images, "_header_size", lambda fmt, data: (1, 1))
    in_warning_band = size == (80, 80)  # over MAX_IMAGE_PIXELS but not twice over: Pillow only warns
    expect_warning = pytest.warns(Image.DecompressionBombWarning) if in_warning_band else contextlib.nullcontext()
    with expect_warning:
        with pytest.raises(TooLarge, match="pixels"):
            inspect_image(encode(picture(size), "PNG"), max_pixels=10**9)


def test_files_over_the_byte_limit_are_refused_before_they_are_read(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(picture(), "PNG")
    path = tmp_path / "big.png"
    path.write_bytes(data)
    monkeypatch.setattr(Path, "open", lambda *a, **k: pytest.fail("the file was opened"))
    with pytest.raises(TooLarge, match=f"image is {len(data)} bytes; this node accepts at most {len(data) - 1}"):
        inspect_image(path, max_bytes=len(data) - 1)


def test_bytes_over_the_byte_limit_are_refused() -> None:
    data = encode(picture(), "JPEG")
    with pytest.raises(TooLarge, match=f"at most {len(data) - 1} bytes"):
        inspect_image(data, max_bytes=len(data) - 1)
    assert inspect_image(data, max_bytes=len(data)).format == "JPEG"


def test_a_png_text_chunk_that_inflates_without_end_is_refused_as_too_large() -> None:
    info_chunks = PngImagePlugin.PngInfo()
    info_chunks.add_text("parameters", "x" * (64 * 1024 * 1024), zip=True)  # 64 MiB text in ~64 KiB
    data = encode(picture(), "PNG", pnginfo=info_chunks)
    assert len(data) < 200_000
    with pytest.raises(TooLarge, match="metadata chunk that is too large"):
        inspect_image(data)


# --- broken files -------------------------------------------------------------------------------------


def test_a_truncated_jpeg_is_refused_with_a_clear_message() -> None:
    data = encode(Image.effect_noise((300, 200), 60).convert("RGB"), "JPEG")
    with pytest.raises(BrokenImage, match="the JPEG image is truncated or corrupt: image file is truncated"):
        inspect_image(data[: len(data) // 2])
    with pytest.raises(BrokenImage, match="JPEG"):
        inspect_image(data[:-2])  # only the end-of-image marker missing


@pytest.mark.parametrize("cut", [-5, -20, 60, 30, 20])
def test_a_truncated_png_is_refused(cut: int) -> None:
    data = encode(Image.effect_noise((64, 64), 60), "PNG")
    with pytest.raises(BrokenImage, match="PNG"):
        inspect_image(data[:cut])


def test_a_png_with_a_damaged_chunk_is_refused() -> None:
    data = bytearray(encode(Image.effect_noise((64, 64), 60), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 40] ^= 0xFF
    with pytest.raises(BrokenImage, match="PNG"):
        inspect_image(bytes(data))


def test_a_truncated_webp_is_refused() -> None:
    data = encode(Image.effect_noise((200, 200), 60).convert("RGB"), "WEBP")
    with pytest.raises(BrokenImage, match="WEBP"):
        inspect_image(data[: len(data) // 2])


@pytest.mark.parametrize("data", [
    b"\x89PNG\r\n\x1a\n" + png_chunk(b"tEXt", b"a\0b"),  # no IHDR first
    b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR\0\0",  # header cut short
    b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 10, 8, 0, 0, 0, 0)),  # zero width
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\0" * 7 + b"\xff\xda\x00\x02",  # scan before any frame header
    b"\xff\xd8\xff\xd9",
    b"RIFF\x10\x00\x00\x00WEBPJUNK" + b"\0" * 20,
    b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\0" * 20,
])
def test_headers_that_make_no_sense_are_refused_as_broken(data: bytes) -> None:
    with pytest.raises(BrokenImage):
        inspect_image(data)


# --- thumbnails -----------------------------------------------------------------------------------------


def test_a_thumbnail_keeps_the_aspect_ratio_and_applies_exif_orientation(tmp_path: Path) -> None:
    source = tmp_path / "photo.jpg"
    # Stored 800x400 with orientation 6: shown rotated 90 degrees clockwise, 400 wide and 800 tall.
    source.write_bytes(encode(picture((800, 400)), "JPEG", exif=exif_with(b"ASCII\0\0\0secret", 6)))
    assert make_thumbnail(source, tmp_path / "thumb.webp") == (225, 450)
    with Image.open(tmp_path / "thumb.webp") as thumb:
        assert (thumb.format, thumb.size) == ("WEBP", (225, 450))
        # The blue corner stored top-left is shown top-right.
        red, _, blue = thumb.convert("RGB").getpixel((thumb.width - 10, 10))
        assert blue > 150 and red < 100


def test_a_thumbnail_carries_no_metadata(tmp_path: Path) -> None:
    info_chunks = PngImagePlugin.PngInfo()
    info_chunks.add_text("parameters", PARAMETERS)
    source = tmp_path / "gen.png"
    source.write_bytes(encode(picture((900, 600)), "PNG", pnginfo=info_chunks,
                              exif=exif_with(b"ASCII\0\0\0secret")))
    for fmt in ("WEBP", "JPEG", "PNG"):
        dest = tmp_path / f"thumb.{fmt.lower()}"
        make_thumbnail(source, dest, format=fmt)
        raw = dest.read_bytes()
        assert b"secret" not in raw and b"Steps" not in raw and b"Exif" not in raw
        with Image.open(dest) as thumb:
            assert thumb.format == fmt and not thumb.getexif()
            assert "parameters" not in thumb.info


def test_an_rgb_colour_profile_survives_in_the_thumbnail(tmp_path: Path) -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    (tmp_path / "src.jpg").write_bytes(encode(picture(), "JPEG", icc_profile=icc))
    make_thumbnail(tmp_path / "src.jpg", tmp_path / "t.webp")
    with Image.open(tmp_path / "t.webp") as thumb:
        assert thumb.info.get("icc_profile") == icc


def test_a_small_image_is_never_enlarged(tmp_path: Path) -> None:
    (tmp_path / "small.webp").write_bytes(encode(picture((120, 30)), "WEBP"))
    assert make_thumbnail(tmp_path / "small.webp", tmp_path / "t.webp", max_side=450) == (120, 30)


def test_a_jpeg_thumbnail_puts_transparency_on_white(tmp_path: Path) -> None:
    (tmp_path / "clear.png").write_bytes(encode(Image.new("RGBA", (100, 1000), (0, 255, 0, 0)), "PNG"))
    assert make_thumbnail(tmp_path / "clear.png", tmp_path / "t.jpg", format="jpeg") == (45, 450)
    with Image.open(tmp_path / "t.jpg") as thumb:
        assert all(channel > 245 for channel in thumb.getpixel((20, 200)))
    make_thumbnail(tmp_path / "clear.png", tmp_path / "t.webp")
    with Image.open(tmp_path / "t.webp") as thumb:
        assert thumb.mode == "RGBA" and thumb.getpixel((20, 200))[3] == 0


@pytest.mark.parametrize("mode, fmt", [("P", "PNG"), ("L", "PNG"), ("I;16", "PNG"), ("CMYK", "JPEG"),
                                       ("LA", "PNG")])
def test_thumbnails_of_unusual_pixel_modes_are_written(tmp_path: Path, mode: str, fmt: str) -> None:
    (tmp_path / "src").write_bytes(encode(picture((60, 40), "RGB").convert(mode), fmt))
    assert make_thumbnail(tmp_path / "src", tmp_path / "t.webp", max_side=30) == (30, 20)


def test_a_thumbnail_replaces_its_destination_atomically(tmp_path: Path) -> None:
    (tmp_path / "src.png").write_bytes(encode(picture((500, 500)), "PNG"))
    (tmp_path / "t.webp").write_bytes(b"old thumbnail")
    make_thumbnail(tmp_path / "src.png", tmp_path / "t.webp", max_side=100)
    assert Image.open(tmp_path / "t.webp").size == (100, 100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.png", "t.webp"]  # no temp file left


def test_a_thumbnail_of_a_bomb_or_a_broken_file_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "bomb.png").write_bytes(bomb_png(50_000, 50_000))
    with pytest.raises(TooLarge):
        make_thumbnail(tmp_path / "bomb.png", tmp_path / "t.webp")
    data = encode(Image.effect_noise((300, 200), 60).convert("RGB"), "JPEG")
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(BrokenImage):
        make_thumbnail(tmp_path / "cut.jpg", tmp_path / "t.webp")
    (tmp_path / "a.gif").write_bytes(encode(picture(), "GIF"))
    with pytest.raises(UnsupportedImage):
        make_thumbnail(tmp_path / "a.gif", tmp_path / "t.webp")
    assert not (tmp_path / "t.webp").exists()


def test_an_unknown_thumbnail_format_is_refused(tmp_path: Path) -> None:
    (tmp_path / "src.png").write_bytes(encode(picture(), "PNG"))
    with pytest.raises(InvalidInput, match="thumbnail format 'GIF' is not one of WEBP, JPEG, PNG"):
        make_thumbnail(tmp_path / "src.png", tmp_path / "t.gif", format="GIF")
