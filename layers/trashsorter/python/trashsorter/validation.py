"""Image validation, cheapest check first.

Order: size from the event (before download) -> format by content (magic bytes, never the extension) ->
pixel count from the header (before any pixel is allocated) -> a full decode (proves the file is whole) ->
EXIF orientation -> shortest side. Every refusal is a :class:`~trashsorter.errors.Rejection` with a stable
``code`` and a human ``message``; :func:`validate_image` raises nothing else for any byte string.

Pillow is imported lazily so that importing this module (and the ingest handler) stays cheap.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

from trashsorter.errors import Rejection

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP")
_MB = 1024 * 1024
_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")
_EXIF_ORIENTATION = 0x0112
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


@dataclass(frozen=True)
class ImageInfo:
    format: str  # "JPEG" | "PNG" | "WEBP"
    mode: str  # Pillow mode as stored in the file (RGB, CMYK, P, I;16, RGBA ...)
    width: int  # after EXIF orientation
    height: int  # after EXIF orientation


def _mb(size: int) -> str:
    return f"{size / _MB:.1f} MB"


def check_object_size(size: int, max_bytes: int) -> None:
    """Refuse empty and oversized objects from the size in the event, before downloading them."""
    if size <= 0:
        raise Rejection("empty", "object is empty (0 bytes)")
    if size > max_bytes:
        raise Rejection("too_large", f"object is {_mb(size)}; the limit is {_mb(max_bytes)}")


def sniff_format(data: bytes) -> str:
    """What the bytes are, from their content: JPEG, PNG, WEBP, or a name for what is refused."""
    head = data[:64]
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head[:2] == b"BM":
        return "BMP"
    if head[:5] == b"%PDF-":
        return "PDF"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"mif1", b"msf1", b"hevc"):
            return "HEIC"
        if brand in (b"avif", b"avis"):
            return "AVIF"
        return "MP4/QuickTime"
    if head[:4] == b"PK\x03\x04":
        return "ZIP"
    if head[:4] == b"\x00\x00\x01\x00":
        return "ICO"
    return _sniff_text(data[:4096])


def _sniff_text(sample: bytes) -> str:
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError:
        # A multi-byte character cut by the sample boundary still counts as text.
        try:
            text = sample[:-3].decode("utf-8") if len(sample) > 3 else ""
        except UnicodeDecodeError:
            return "unknown"
        if not text:
            return "unknown"
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    if printable < 0.95 * len(text):
        return "unknown"
    lowered = text.lstrip("\ufeff \r\n\t").lower()
    if "<svg" in lowered[:2048]:
        return "SVG"
    if lowered.startswith(("<!doctype html", "<html")) or "<html" in lowered[:1024]:
        return "HTML"
    if lowered.startswith("<?xml"):
        return "XML"
    return "text"


def validate_image(data: bytes, *, max_pixels: int, min_side: int) -> ImageInfo:
    """Prove ``data`` is a whole JPEG/PNG/WebP of sane dimensions; raise :class:`Rejection` otherwise.

    Pixel floods and decompression bombs are refused from the header, before any pixel buffer exists.
    """
    if not data:
        raise Rejection("empty", "object is empty (0 bytes)")
    fmt = sniff_format(data)
    if fmt not in ACCEPTED_FORMATS:
        raise Rejection("unsupported_format", f"unsupported format: {fmt}")
    try:
        return _decode(data, fmt, max_pixels=max_pixels, min_side=min_side)
    except Rejection:
        raise
    except MemoryError as exc:
        raise Rejection("too_many_pixels", "image needs more memory than allowed to decode") from exc
    except Exception as exc:  # Pillow raises many types for hostile input; all are rejections
        text = _OBJECT_REPR.sub("data", str(exc))
        if "truncated" in text.lower():
            raise Rejection("truncated", f"{fmt} file is truncated: {text}") from exc
        raise Rejection("corrupt", f"{fmt} file is corrupt: {text or type(exc).__name__}") from exc


def _decode(data: bytes, fmt: str, *, max_pixels: int, min_side: int) -> ImageInfo:
    from PIL import Image  # lazy: keeps the handler's import cheap

    try:
        im = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError as exc:
        raise Rejection("too_many_pixels", f"image declares too many pixels: {exc}") from exc
    with im:
        width, height = im.size
        if width <= 0 or height <= 0:
            raise Rejection("corrupt", f"{fmt} declares an empty size {width}x{height}")
        if width * height > max_pixels:
            raise Rejection(
                "too_many_pixels",
                f"image is {width}x{height} = {width * height / 1e6:.1f} MP; "
                f"the limit is {max_pixels / 1e6:.1f} MP",
            )
        mode = im.mode
        im.load()  # the real decode; ImageFile.LOAD_TRUNCATED_IMAGES stays False, so short files raise
        orientation = _orientation(im)
    if orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    if min(width, height) < min_side:
        raise Rejection(
            "too_small", f"image is {width}x{height}; the shortest side must be at least {min_side} px"
        )
    return ImageInfo(format=fmt, mode=mode, width=width, height=height)


def _orientation(im: object) -> int:
    """EXIF orientation (1..8); a missing or unreadable EXIF block means 1, as in ImageOps.exif_transpose."""
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)  # type: ignore[attr-defined]
        return int(value) if isinstance(value, int) else 1
    except Exception:  # noqa: BLE001 - a broken EXIF block does not make the pixels invalid
        return 1
