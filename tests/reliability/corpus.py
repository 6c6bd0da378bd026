"""More hostile files, on top of tests/unit/hostile.py: polyglots, huge metadata, zero sizes, bombs.

Every entry is crafted in code from the real TrashNet photos or by hand; none allocates a large pixel buffer.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from PIL import Image, PngImagePlugin

from tests.unit import hostile

# What a hostile file must end as: "reject" (Rejection with one of the codes), or "either" (a real image
# of the leading format with inert extra data may pass; anything else must be a Rejection).
REJECT = "reject"
EITHER = "either"


@dataclass(frozen=True)
class Hostile:
    name: str
    build: Callable[[], bytes]
    expect: str
    codes: tuple[str, ...] = ()
    leading_format: str | None = None


@cache
def photo() -> Image.Image:
    with Image.open(hostile.real_photo("glass")) as im:
        return im.convert("RGB")


def encode(fmt: str, image: Image.Image | None = None, **save: object) -> bytes:
    out = io.BytesIO()
    (image or photo()).save(out, fmt, **save)
    return out.getvalue()


def zip_archive() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("payload.sh", "#!/bin/sh\necho pwned\n" * 50)
        archive.writestr("index.html", hostile.HTML)
    return buf.getvalue()


def jpeg_then_zip() -> bytes:
    """A real JPEG with a ZIP archive appended (opens as both)."""
    return hostile.real_photo_bytes("glass") + zip_archive()


def zip_then_jpeg() -> bytes:
    return zip_archive() + hostile.real_photo_bytes("glass")


def png_then_html() -> bytes:
    return hostile.png_from_photo() + b"<script>alert(document.cookie)</script>" + hostile.HTML


def html_then_png() -> bytes:
    return hostile.HTML + hostile.png_from_photo()


def gif_jar() -> bytes:
    """GIFAR-style: a GIF with a ZIP appended (GIF is not an accepted format)."""
    return hostile.gif() + zip_archive()


def jpeg_with_segment(marker: int, payload: bytes) -> bytes:
    """Insert an APPn/COM segment right after SOI (each segment carries at most 65533 bytes)."""
    data = hostile.real_photo_bytes("glass")
    segment = b"\xff" + bytes([marker]) + struct.pack(">H", len(payload) + 2) + payload
    return data[:2] + segment + data[2:]


def jpeg_60k_comment() -> bytes:
    return jpeg_with_segment(0xFE, b"C" * 60_000)


def jpeg_60k_icc() -> bytes:
    return encode("JPEG", icc_profile=b"\x00" * 60_000)


def jpeg_60k_exif() -> bytes:
    exif = Image.Exif()
    exif[0x010E] = "E" * 60_000  # ImageDescription
    return encode("JPEG", exif=exif.tobytes())


def jpeg_many_comments() -> bytes:
    """About 1 MB of metadata in sixteen 64 KB COM segments before the image."""
    data = hostile.real_photo_bytes("glass")
    segments = b"".join(b"\xff\xfe" + struct.pack(">H", 65535) + b"M" * 65533 for _ in range(16))
    return data[:2] + segments + data[2:]


def png_with_chunk(kind: bytes, body: bytes) -> bytes:
    """Insert a chunk right after IHDR (8-byte signature + 25-byte IHDR chunk)."""
    data = hostile.png_from_photo()
    return data[:33] + hostile._png_chunk(kind, body) + data[33:]


def png_huge_text() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "T" * 2_000_000)
    return encode("PNG", pnginfo=info)


def png_huge_itxt() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_itxt("Comment", "I" * 2_000_000, zip=True)
    return encode("PNG", pnginfo=info)


def png_ztxt_bomb() -> bytes:
    """A zTXt chunk that inflates to 200 MB (about 200 KB compressed)."""
    comp = zlib.compressobj(9)
    block = b"\0" * 1_000_000
    parts = [comp.compress(block) for _ in range(200)]
    parts.append(comp.flush())
    return png_with_chunk(b"zTXt", b"Comment\x00\x00" + b"".join(parts))


def png_iccp_bomb() -> bytes:
    comp = zlib.compressobj(9)
    parts = [comp.compress(b"\0" * 1_000_000) for _ in range(100)]
    parts.append(comp.flush())
    return png_with_chunk(b"iCCP", b"icc\x00\x00" + b"".join(parts))


def jpeg_declaring(width: int, height: int, *, progressive: bool = False) -> bytes:
    data = bytearray(encode("JPEG", photo().resize((64, 64)), progressive=progressive))
    i = 2
    while i < len(data):
        marker = data[i + 1]
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            struct.pack_into(">HH", data, i + 5, height, width)
            return bytes(data)
        i += 2 + length
    raise AssertionError("no SOF marker")


def webp_declaring(width: int, height: int) -> bytes:
    """A VP8X WebP header declaring a canvas of ``width`` x ``height`` over a tiny real bitstream."""
    real = encode("WEBP", photo().resize((64, 64)), lossless=False, quality=50)
    body = real[12:]
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00"
    vp8x += (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    payload = b"WEBP" + vp8x + body
    return b"RIFF" + struct.pack("<I", len(payload)) + payload


def progressive_jpeg() -> bytes:
    return encode("JPEG", progressive=True, quality=85)


def progressive_truncated(keep: float) -> Callable[[], bytes]:
    def build() -> bytes:
        data = progressive_jpeg()
        return data[: int(len(data) * keep)]

    return build


def png_bomb_within_pixel_limit() -> bytes:
    """6000 x 6000 1-bit PNG (36 MP, under the 40 MP limit) of zeros: a few KB that decode to 36 MB."""
    return hostile.decompression_bomb_png(6000)


def jpeg_only_markers() -> bytes:
    return b"\xff\xd8" + b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + b"\xff\xd9"


def png_no_idat() -> bytes:
    ihdr = struct.pack(">IIBBBBB", 640, 480, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + hostile._png_chunk(b"IHDR", ihdr) + hostile._png_chunk(b"IEND", b"")


CORPUS: tuple[Hostile, ...] = (
    # polyglots
    Hostile("jpeg+zip polyglot", jpeg_then_zip, EITHER, ("corrupt",), "JPEG"),
    Hostile("zip+jpeg polyglot", zip_then_jpeg, REJECT, ("unsupported_format",)),
    Hostile("png+html polyglot", png_then_html, EITHER, ("corrupt",), "PNG"),
    Hostile("html+png polyglot", html_then_png, REJECT, ("unsupported_format",)),
    Hostile("gif+zip (GIFAR)", gif_jar, REJECT, ("unsupported_format",)),
    # huge metadata
    Hostile("jpeg 60 KB COM", jpeg_60k_comment, EITHER, ("corrupt",), "JPEG"),
    Hostile("jpeg 60 KB ICC", jpeg_60k_icc, EITHER, ("corrupt",), "JPEG"),
    Hostile("jpeg 60 KB EXIF", jpeg_60k_exif, EITHER, ("corrupt",), "JPEG"),
    Hostile("jpeg 1 MB of COM segments", jpeg_many_comments, EITHER, ("corrupt",), "JPEG"),
    Hostile("png 2 MB tEXt", png_huge_text, EITHER, ("corrupt",), "PNG"),
    Hostile("png 2 MB iTXt", png_huge_itxt, EITHER, ("corrupt",), "PNG"),
    Hostile("png zTXt bomb 200 MB", png_ztxt_bomb, EITHER, ("corrupt",), "PNG"),
    Hostile("png iCCP bomb 100 MB", png_iccp_bomb, EITHER, ("corrupt",), "PNG"),
    # zero and absurd sizes
    Hostile("png 0x0", hostile.zero_size_png, REJECT, ("corrupt", "too_small")),
    Hostile("jpeg 64x0", lambda: jpeg_declaring(64, 0), REJECT, ("corrupt", "too_small", "truncated")),
    Hostile("jpeg 0x64", lambda: jpeg_declaring(0, 64), REJECT, ("corrupt", "too_small", "truncated")),
    Hostile("jpeg 1x65535", lambda: jpeg_declaring(1, 65535), REJECT, ("corrupt", "too_small", "truncated")),
    Hostile("png 1x1", lambda: hostile.tiny_png(1), REJECT, ("too_small",)),
    Hostile("png without IDAT", png_no_idat, REJECT, ("corrupt", "truncated")),
    Hostile("jpeg without scan", jpeg_only_markers, REJECT, ("corrupt", "truncated")),
    # bombs and floods
    Hostile("png 900 MP bomb", hostile.decompression_bomb_png, REJECT, ("too_many_pixels",)),
    Hostile("png 36 MP zero bomb", png_bomb_within_pixel_limit, EITHER, ("corrupt",), "PNG"),
    Hostile("jpeg 3.6 GP flood", hostile.pixel_flood_jpeg, REJECT, ("too_many_pixels",)),
    Hostile(
        "progressive jpeg 3.6 GP flood",
        lambda: jpeg_declaring(60000, 60000, progressive=True),
        REJECT,
        ("too_many_pixels",),
    ),
    Hostile(
        "webp 16k x 16k canvas", lambda: webp_declaring(16383, 16383), REJECT, ("too_many_pixels", "corrupt")
    ),
    # truncations
    Hostile("progressive jpeg cut at 50%", progressive_truncated(0.5), REJECT, ("truncated", "corrupt")),
    Hostile("progressive jpeg cut at 95%", progressive_truncated(0.95), REJECT, ("truncated", "corrupt")),
    Hostile("progressive jpeg header only", progressive_truncated(0.02), REJECT, ("truncated", "corrupt")),
    Hostile("jpeg cut at 50%", hostile.truncated_jpeg, REJECT, ("truncated", "corrupt")),
    Hostile("png cut at 50%", hostile.truncated_png, REJECT, ("truncated", "corrupt")),
    Hostile("webp cut at 50%", lambda: hostile.webp_from_photo()[:2000], REJECT, ("truncated", "corrupt")),
    # not images at all
    Hostile("empty", lambda: hostile.EMPTY, REJECT, ("empty",)),
    Hostile("text", lambda: hostile.TEXT, REJECT, ("unsupported_format",)),
    Hostile("html", lambda: hostile.HTML, REJECT, ("unsupported_format",)),
    Hostile("svg", lambda: hostile.SVG, REJECT, ("unsupported_format",)),
    Hostile("pdf", lambda: hostile.PDF, REJECT, ("unsupported_format",)),
    Hostile("random binary", lambda: hostile.RANDOM_BINARY, REJECT, ("unsupported_format",)),
    Hostile("gif", hostile.gif, REJECT, ("unsupported_format",)),
    Hostile("tiff", hostile.tiff, REJECT, ("unsupported_format",)),
    Hostile("bmp", hostile.bmp, REJECT, ("unsupported_format",)),
    Hostile("jpeg magic only", lambda: b"\xff\xd8\xff", REJECT, ("corrupt", "truncated")),
    Hostile("png magic only", lambda: b"\x89PNG\r\n\x1a\n", REJECT, ("corrupt", "truncated")),
    Hostile("webp magic only", lambda: b"RIFF\x00\x00\x00\x00WEBP", REJECT, ("corrupt", "truncated")),
)

# Files whose content and extension disagree: the content decides (key -> bytes -> expected format).
WRONG_EXTENSIONS: tuple[tuple[str, Callable[[], bytes], str | None], ...] = (
    ("images/Recycling/really-a-png.jpg", hostile.png_from_photo, "PNG"),
    ("images/Compost/really-a-webp.png", hostile.webp_from_photo, "WEBP"),
    ("images/Landfill/really-a-jpeg.webp", lambda: hostile.real_photo_bytes("metal"), "JPEG"),
    ("images/Landfill/no-extension", lambda: hostile.real_photo_bytes("paper"), "JPEG"),
    ("images/Compost/page.jpg", lambda: hostile.HTML, None),
    ("images/Recycling/archive.jpeg", zip_archive, None),
)
