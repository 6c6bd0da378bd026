"""Image validation, cheapest check first, every step bounded in CPU and memory whatever the bytes are.

Order: size from the event (before download) -> format by content (magic bytes, never the extension) ->
a structure walk over the raw bytes (JPEG segments, scans and padding; PNG and WebP chunks) that stops at
its limits -> dimensions from the header (pixel count, aspect ratio, pixels per byte, the memory the
decode will need), all before any pixel is allocated -> a bounded decode (JPEG at 1/8 scale through libjpeg's
DCT scaling, which still reads every entropy-coded byte; a CPU-time deadline checked between decoder reads)
-> EXIF orientation -> shortest side. Every refusal is a :class:`~trashsorter.errors.Rejection` with a
stable ``code`` and a human ``message``; :func:`validate_image` raises nothing else for any byte string.

The limits below are chosen so that any file up to ``MaxImageBytes`` (20 MB) is judged in under 2 s of CPU
and 256 MB of memory (docs/ingest.md; measured per file by tests/reliability/test_hostile_input.py).
The walk, the cost model and the decode are :mod:`trashsorter_edge.decoding` and
:mod:`trashsorter_edge.imagefile` (the edge package, Pillow only, shipped in the EdgeAppLayer): the snapshot
conversion, the trainer, the device and ``trashsorter predict`` decode through the same definition. This
module turns its refusals into :class:`~trashsorter.errors.Rejection` outcomes. Pillow is imported lazily so
that importing this module (and the ingest handler) stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from trashsorter.errors import Rejection
from trashsorter_edge.decoding import (
    DECODE_CPU_SECONDS,
    DECODE_MEMORY_BUDGET,
    JPEG_VALIDATION_SCALE,
    MAX_PIXELS_PER_BYTE,
    PIXELS_PER_BYTE_FLOOR,
    SWAPPING_ORIENTATIONS,
    decode_memory,
    open_bounded,
    orientation,
    refusal,
)
from trashsorter_edge.decoding import decode_bounded as _decode_bounded
from trashsorter_edge.imagefile import (
    ACCEPTED_FORMATS,
    HEIC_HINT,
    MAX_EXIF_BYTES,
    MAX_EXIF_ENTRIES,
    MAX_ICC_BYTES,
    MAX_JPEG_PADDING,
    MAX_JPEG_SCANS,
    MAX_JPEG_SEGMENTS,
    MAX_PNG_CHUNKS,
    MAX_PNG_OTHER_CHUNKS,
    MAX_WEBP_CHUNKS,
    MAX_XMP_BYTES,
    ImageRefused,
    sniff_format,
    unsupported_format_message,
)

if TYPE_CHECKING:
    from PIL import Image as PILImage

__all__ = [
    "ACCEPTED_FORMATS",
    "DECODE_CPU_SECONDS",
    "DECODE_MEMORY_BUDGET",
    "HEIC_HINT",
    "MAX_EXIF_BYTES",
    "MAX_EXIF_ENTRIES",
    "MAX_ICC_BYTES",
    "MAX_JPEG_PADDING",
    "MAX_JPEG_SCANS",
    "MAX_JPEG_SEGMENTS",
    "MAX_PIXELS_PER_BYTE",
    "MAX_PNG_CHUNKS",
    "MAX_PNG_OTHER_CHUNKS",
    "MAX_WEBP_CHUNKS",
    "MAX_XMP_BYTES",
    "PIXELS_PER_BYTE_FLOOR",
    "REJECTION_CODES",
    "ImageInfo",
    "check_object_size",
    "decode_bounded",
    "decode_memory",
    "sniff_format",
    "unsupported_format_message",
    "validate_image",
]

REJECTION_CODES = frozenset(
    {
        "empty",
        "too_large",
        "unsupported_format",
        "too_many_segments",
        "too_many_scans",
        "excessive_padding",
        "metadata_too_large",
        "too_many_pixels",
        "extreme_aspect_ratio",
        "implausible_size",
        "too_costly",
        "truncated",
        "corrupt",
        "too_small",
    }
)  # every code validate_image and check_object_size can give (docs/ingest.md explains each)
DEFAULT_MAX_ASPECT_RATIO = 10.0  # template.yaml MaxAspectRatio: phone formats are <= 2.4:1 (21:9)

_MB = 1024 * 1024


@dataclass(frozen=True)
class ImageInfo:
    format: str  # "JPEG" | "PNG" | "WEBP"
    mode: str  # Pillow mode as stored in the file (RGB, CMYK, P, I;16, RGBA ...)
    width: int  # after EXIF orientation
    height: int  # after EXIF orientation
    # difference hash of the decoded image (trashsorter.near_twins); not part of what the image "is"
    phash: str | None = field(default=None, compare=False)


def _mb(size: int) -> str:
    return f"{size / _MB:.1f} MB"


def _rejection(refused: ImageRefused) -> Rejection:
    return Rejection(refused.code, refused.message)


def check_object_size(size: int, max_bytes: int) -> None:
    """Refuse empty and oversized objects from the size in the event, before downloading them."""
    if size <= 0:
        raise Rejection("empty", "object is empty (0 bytes)")
    if size > max_bytes:
        raise Rejection("too_large", f"object is {_mb(size)}; the limit is {_mb(max_bytes)}")


def validate_image(
    data: bytes,
    *,
    max_pixels: int,
    min_side: int,
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
) -> ImageInfo:
    """Prove ``data`` is a whole JPEG/PNG/WebP of sane dimensions; raise :class:`Rejection` otherwise.

    Pixel floods, decompression bombs, metadata bombs and files built to make decoders loop are refused
    before any pixel buffer exists.
    """
    fmt = sniff_format(data) if data else ""
    try:
        im, fmt = open_bounded(data, max_pixels=max_pixels, max_aspect_ratio=max_aspect_ratio)
        with im:
            width, height = im.size
            mode = im.mode
            if fmt == "JPEG":  # DCT scaling: all entropy-coded data is still read
                scale = JPEG_VALIDATION_SCALE
                im.draft(mode, (-(-width // scale), -(-height // scale)))
            im.load()  # the real decode; ImageFile.LOAD_TRUNCATED_IMAGES stays False, so short files raise
            turn = orientation(im)
            phash = _phash(im, turn, data)
    except ImageRefused as refused:
        raise _rejection(refused) from refused
    except Exception as exc:  # Pillow raises many types for hostile input; all are rejections
        raise _rejection(refusal(fmt, exc)) from exc
    if turn in SWAPPING_ORIENTATIONS:
        width, height = height, width
    if min(width, height) < min_side:
        raise Rejection(
            "too_small", f"image is {width}x{height}; the shortest side must be at least {min_side} px"
        )
    return ImageInfo(format=fmt, mode=mode, width=width, height=height, phash=phash)


def _phash(im: PILImage.Image, turn: int, data: bytes) -> str | None:
    """The near-twin hash of the image just decoded; a photo is never refused for want of one."""
    from trashsorter.near_twins import hash_decoded

    try:
        return hash_decoded(im, turn, data)
    except Exception:  # noqa: BLE001 - an unusual mode Pillow cannot reduce or convert: no hash
        return None


def decode_bounded(data: bytes) -> PILImage.Image:
    """The whole image decoded (for conversions) by :func:`trashsorter_edge.decoding.decode_bounded`; its
    refusals as :class:`Rejection`. Accepted images always pass. The caller closes the returned image."""
    try:
        return _decode_bounded(data)
    except ImageRefused as refused:
        raise _rejection(refused) from refused
