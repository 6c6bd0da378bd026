"""Hostile and awkward files crafted in code (reusable by any test: ``from tests.unit.hostile import ...``).

Nothing here allocates a large pixel buffer: the decompression bomb and the pixel flood are written by hand
(headers declaring huge sizes over a few KB of data).
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
TRASHNET = ROOT / "samples" / "trashnet"


def real_photo(material: str = "glass", index: int = 0) -> Path:
    """A real TrashNet photo (sorted, so the choice is stable)."""
    return sorted((TRASHNET / material).glob("*.jpg"))[index]


def real_photo_bytes(material: str = "glass", index: int = 0) -> bytes:
    return real_photo(material, index).read_bytes()


def _reencode(data: bytes, fmt: str, *, mode: str | None = None, **save: object) -> bytes:
    with Image.open(io.BytesIO(data)) as im:
        img = im.convert(mode) if mode else im.copy()
    out = io.BytesIO()
    img.save(out, fmt, **save)
    return out.getvalue()


def png_from_photo(material: str = "glass", index: int = 0) -> bytes:
    return _reencode(real_photo_bytes(material, index), "PNG")


def webp_from_photo(material: str = "glass", index: int = 0) -> bytes:
    return _reencode(real_photo_bytes(material, index), "WEBP", quality=80)


def cmyk_jpeg(material: str = "metal") -> bytes:
    return _reencode(real_photo_bytes(material), "JPEG", mode="CMYK")


def palette_png(material: str = "paper") -> bytes:
    return _reencode(real_photo_bytes(material), "PNG", mode="P")


def rgba_png(material: str = "plastic") -> bytes:
    return _reencode(real_photo_bytes(material), "PNG", mode="RGBA")


def png16(width: int = 120, height: int = 90) -> bytes:
    """A 16-bit greyscale PNG (Pillow mode ``I;16``)."""
    img = Image.new("I;16", (width, height))
    img.putdata([(x * 500 + y * 7) % 65536 for y in range(height) for x in range(width)])
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def exif_rotated_jpeg(material: str = "cardboard", orientation: int = 6) -> bytes:
    """A real photo with an EXIF orientation tag (6 = rotate 90° CW: stored landscape, shown portrait)."""
    with Image.open(io.BytesIO(real_photo_bytes(material))) as im:
        img = im.copy()
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    img.save(out, "JPEG", exif=exif.tobytes())
    return out.getvalue()


def tiny_png(side: int = 16) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


def small_image(fmt: str, size: tuple[int, int] = (80, 80)) -> bytes:
    """A small valid image in any Pillow format (GIF, TIFF, BMP ... for 'unsupported format' tests)."""
    out = io.BytesIO()
    Image.new("RGB", size, (10, 120, 40)).save(out, fmt)
    return out.getvalue()


def gif() -> bytes:
    return small_image("GIF")


def tiff() -> bytes:
    return small_image("TIFF")


def bmp() -> bytes:
    return small_image("BMP")


EMPTY = b""
TEXT = b"hello, this is not a picture\nbut it is named photo.jpg\n"
HTML = b"<!DOCTYPE html>\n<html><head><title>404</title></head><body>Not Found</body></html>\n"
SVG = (
    b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="640" height="480">'
    b'<rect width="640" height="480" fill="green"/></svg>\n'
)
PDF = b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"
RANDOM_BINARY = bytes((i * 73 + 41) % 256 for i in range(2048))


def truncated_jpeg(material: str = "glass", keep: float = 0.5) -> bytes:
    data = real_photo_bytes(material)
    return data[: int(len(data) * keep)]


def truncated_png(keep: float = 0.5) -> bytes:
    data = png_from_photo()
    return data[: int(len(data) * keep)]


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    )


def png_header(
    width: int, height: int, *, bit_depth: int = 1, colour_type: int = 0, idat: bytes = b""
) -> bytes:
    """A PNG written by hand: any declared size, with ``idat`` as the compressed stream."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def decompression_bomb_png(side: int = 30000) -> bytes:
    """A 1-bit ``side`` x ``side`` PNG (900 MP by default) whose zlib stream of zeros is a few hundred KB.

    The compressed rows are produced incrementally, so building it never holds the raw pixels either.
    """
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    parts = [comp.compress(row) for _ in range(side)]
    parts.append(comp.flush())
    return png_header(side, side, idat=b"".join(parts))


def pixel_flood_jpeg(width: int = 60000, height: int = 60000) -> bytes:
    """A real small JPEG whose SOF0 header is patched to declare ``width`` x ``height`` (max 65535)."""
    data = bytearray(small_image("JPEG", (64, 64)))
    i = 2
    while i < len(data):
        marker = data[i + 1]
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            struct.pack_into(">HH", data, i + 5, height, width)
            return bytes(data)
        i += 2 + length
    raise AssertionError("no SOF marker found")


def zero_size_png() -> bytes:
    return png_header(0, 0, idat=zlib.compress(b""))


def html_named_png() -> tuple[str, bytes]:
    """An HTML error page saved as ``.png`` (the key lies; the content decides)."""
    return "images/Compost/not-really.png", HTML


# Keys that must round-trip through S3's URL-encoding (quote_plus) exactly.
AWKWARD_KEYS = (
    "images/Compost/banana peel (1).jpg",
    "images/Recycling/can+lid.jpg",
    "images/Landfill/crisp packet 100% plastic.jpg",
    "images/Compost/café/épluchures ü 日本.jpg",
    "images/Recycling/a&b=c?d#e.jpg",
    "images/Landfill/tab\tand ~tilde~ 'quote'.jpg",
)
