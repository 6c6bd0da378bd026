"""THE bounded decode of trashsorter: one definition for the ingest step's validator, the snapshot's
conversion, the trainer, the local device and ``trashsorter predict`` (Pillow only, no numpy, so the
Lambda layer imports it too).

Order: format by content -> the structure and metadata walk of :mod:`trashsorter_edge.imagefile` ->
the header (Pillow opens it; nothing decoded) -> the decode-cost model: declared pixels, aspect ratio,
pixels per byte of file and the memory the decode will need, all before a pixel buffer exists -> the
decode itself under a CPU deadline checked between the decoder's reads.

The cost model (measured with Pillow 13, libjpeg-turbo 3, libwebp 1.6; benchmarks/bench_decode_cost.py):
a JPEG is decoded through libjpeg's DCT scaling (1/8 for the validator, the smallest scale whose short side
still covers :data:`trashsorter_edge.preprocessing.DECODE_SHORT_SIDE` for the trainer and the device), so its
pixels cost little; a progressive or multi-scan JPEG also keeps every DCT coefficient (2 bytes per sample
of every component, 6 bytes per pixel in 4:4:4, 3 in 4:2:0); PNG needs 4 bytes per pixel, WebP 17 (libwebp
keeps its canvases and hands Pillow a copy). What fits :data:`DECODE_MEMORY_BUDGET` and the CPU deadline is
decoded, whatever the format: a 50 MP phone JPEG, a 36 MP progressive 4:4:4 JPEG, a 12 MP WebP.
"""

from __future__ import annotations

import io
import math
import re
import time
from typing import TYPE_CHECKING

from trashsorter_edge.imagefile import (
    ACCEPTED_FORMATS,
    ImageRefused,
    JpegLayout,
    exif_orientation,
    sniff_format,
    unsupported_format_message,
    walk,
)

if TYPE_CHECKING:
    from PIL import Image as PILImage

# Declared pixels per byte of file: photos have 1 to 50; only images above the floor are checked.
MAX_PIXELS_PER_BYTE = 1024
PIXELS_PER_BYTE_FLOOR = 4_000_000
# Memory a decode may need (on top of the ~30 MB interpreter) and CPU it may take.
DECODE_MEMORY_BUDGET = 224 * 1024 * 1024
DECODE_CPU_SECONDS = 1.5
BYTES_PER_PIXEL = {"JPEG": 4, "PNG": 4, "WEBP": 17}  # measured peak per declared (decoded) pixel
MAX_DECODE_ASPECT_RATIO = 100.0  # outside ingest (MaxAspectRatio <= 100): a resize to 224 px stays small
JPEG_VALIDATION_SCALE = 8  # the validator decodes every JPEG at 1/8 (all entropy-coded data still read)
SWAPPING_ORIENTATIONS = (5, 6, 7, 8)

_MB = 1024 * 1024
_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


def _mb(size: int) -> str:
    return f"{size / _MB:.1f} MB"


# ---------------------------------------------------------------- the decode-cost model


def coefficient_bytes(layout: JpegLayout | None, width: int, height: int) -> int:
    """The whole-image DCT coefficient buffer libjpeg keeps for a progressive or multi-scan JPEG."""
    if layout is None or not (layout.progressive or layout.scans > 1) or not layout.sampling:
        return 0
    hmax = max((h for h, _ in layout.sampling), default=1) or 1
    vmax = max((v for _, v in layout.sampling), default=1) or 1
    blocks = sum(
        math.ceil(math.ceil(width * h / hmax) / 8) * math.ceil(math.ceil(height * v / vmax) / 8)
        for h, v in layout.sampling
    )
    return blocks * 64 * 2


def decode_memory(fmt: str, width: int, height: int, coefficient_bytes: int = 0) -> int:
    """Bytes of memory decoding needs: JPEG at 1/8 scale plus its coefficient buffer, PNG and WebP in full."""
    if fmt == "JPEG":
        scale = JPEG_VALIDATION_SCALE
        return math.ceil(width / scale) * math.ceil(height / scale) * 4 + coefficient_bytes
    return width * height * BYTES_PER_PIXEL.get(fmt, 4)


def check_dimensions(
    fmt: str,
    width: int,
    height: int,
    size: int,
    *,
    max_pixels: int | None,
    max_aspect_ratio: float | None,
    coefficient_bytes: int,
) -> None:
    pixels = width * height
    if width <= 0 or height <= 0:
        raise ImageRefused("corrupt", f"{fmt} declares an empty size {width}x{height}")
    if max_pixels is not None and pixels > max_pixels:
        raise ImageRefused(
            "too_many_pixels",
            f"image is {width}x{height} = {pixels / 1e6:.1f} MP; the limit is {max_pixels / 1e6:.1f} MP",
        )
    if max_aspect_ratio is not None and max(width, height) > max_aspect_ratio * min(width, height):
        raise ImageRefused(
            "extreme_aspect_ratio",
            f"image is {width}x{height}, {max(width, height) / min(width, height):.1f}:1; "
            f"the limit is {max_aspect_ratio:g}:1",
        )
    if pixels > PIXELS_PER_BYTE_FLOOR and pixels > MAX_PIXELS_PER_BYTE * size:
        raise ImageRefused(
            "implausible_size",
            f"{fmt} declares {width}x{height} = {pixels / 1e6:.1f} MP in {size} bytes; "
            f"a photo needs at least 1 byte per {MAX_PIXELS_PER_BYTE} pixels",
        )
    needed = decode_memory(fmt, width, height, coefficient_bytes)
    if needed > DECODE_MEMORY_BUDGET:
        raise ImageRefused(
            "too_costly",
            f"decoding this {width}x{height} {fmt} needs about {_mb(needed)}; the limit is "
            f"{_mb(DECODE_MEMORY_BUDGET)} (save it as a baseline JPEG, or smaller)",
        )


# ---------------------------------------------------------------- bounded decode


class _OverBudget(Exception):
    """The decoder used more CPU than DECODE_CPU_SECONDS."""


class _CpuBudgetReader(io.BytesIO):
    """The bytes, handed to the decoder chunk by chunk; a read after the CPU deadline stops the decode."""

    def __init__(self, data: bytes, seconds: float) -> None:
        super().__init__(data)
        self._deadline = time.thread_time() + seconds

    def read(self, size: int | None = -1, /) -> bytes:
        if time.thread_time() > self._deadline:
            raise _OverBudget
        return super().read(size)


def open_bounded(
    data: bytes, *, max_pixels: int | None = None, max_aspect_ratio: float | None = None
) -> tuple[PILImage.Image, str]:
    """Sniff, walk the structure and metadata, open the header and check the cost; nothing decoded yet.

    Raises :class:`ImageRefused` (Pillow's own exceptions included, mapped by :func:`refusal`).
    """
    fmt = sniff_format(data) if data else ""
    try:
        return _open(data, fmt, max_pixels=max_pixels, max_aspect_ratio=max_aspect_ratio)
    except ImageRefused:
        raise
    except Exception as exc:  # Pillow raises many types for hostile input; all are refusals
        raise refusal(fmt, exc) from exc


def _open(
    data: bytes, fmt: str, *, max_pixels: int | None, max_aspect_ratio: float | None
) -> tuple[PILImage.Image, str]:
    if not data:
        raise ImageRefused("empty", "object is empty (0 bytes)")
    if fmt not in ACCEPTED_FORMATS:
        raise ImageRefused("unsupported_format", unsupported_format_message(fmt))
    layout = walk(data, fmt)
    from PIL import Image  # lazy: keeps the ingest handler's import cheap

    try:
        im = Image.open(_CpuBudgetReader(data, DECODE_CPU_SECONDS), formats=[fmt])
    except Image.DecompressionBombError as exc:
        raise ImageRefused("too_many_pixels", f"image declares too many pixels: {exc}") from exc
    try:
        width, height = im.size
        check_dimensions(
            fmt,
            width,
            height,
            len(data),
            max_pixels=max_pixels,
            max_aspect_ratio=max_aspect_ratio,
            coefficient_bytes=coefficient_bytes(layout, width, height),
        )
    except BaseException:
        im.close()
        raise
    return im, fmt


def refusal(fmt: str, exc: BaseException) -> ImageRefused:
    """Any exception of a decode, as the refusal it stands for."""
    if isinstance(exc, ImageRefused):
        return exc
    if isinstance(exc, _OverBudget):
        return ImageRefused("too_costly", f"decoding needed more than {DECODE_CPU_SECONDS:g} s of CPU")
    if isinstance(exc, MemoryError):
        return ImageRefused("too_costly", "image needs more memory than allowed to decode")
    text = _OBJECT_REPR.sub("data", str(exc))
    if "truncated" in text.lower():
        return ImageRefused("truncated", f"{fmt} file is truncated: {text}")
    return ImageRefused("corrupt", f"{fmt} file is corrupt: {text or type(exc).__name__}")


def scale_for(width: int, height: int, short_side: int) -> tuple[int, int]:
    """The size to ask libjpeg's DCT scaling for so that the short side still covers ``short_side``."""
    short = max(1, min(width, height))
    factor = min(1.0, short_side / short)
    return max(1, math.ceil(width * factor)), max(1, math.ceil(height * factor))


def decode_bounded(data: bytes, *, short_side: int | None = None) -> PILImage.Image:
    """The image decoded under the structure, metadata, memory and CPU bounds of the ingest step.

    ``short_side``: a JPEG may be decoded through DCT scaling down to the smallest size whose short side is
    still at least this (the trainer and the device resize to 224 px anyway); None decodes in full. Accepted
    images always pass: the ingest step applied the same model. The caller closes the returned image.
    """
    im, fmt = open_bounded(data, max_aspect_ratio=MAX_DECODE_ASPECT_RATIO)
    try:
        if fmt == "JPEG" and short_side is not None:
            im.draft(im.mode, scale_for(*im.size, short_side))
        im.load()
    except Exception as exc:
        im.close()
        raise refusal(fmt, exc) from exc
    return im


# ---------------------------------------------------------------- orientation and pixels


def orientation(image: PILImage.Image) -> int:
    """THE EXIF orientation of a decoded image (1..8): :func:`trashsorter_edge.imagefile.exif_orientation`
    of the EXIF block Pillow kept (JPEG APP1, PNG eXIf, WebP EXIF); never Pillow's own EXIF parser."""
    block = image.info.get("exif")
    return exif_orientation(block) if isinstance(block, bytes) else 1


def upright(image: PILImage.Image) -> PILImage.Image:
    """The image turned as its EXIF orientation says (the same turns as ``ImageOps.exif_transpose``)."""
    from PIL import Image

    turns = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }
    turn = turns.get(orientation(image))
    if turn is None:
        return image
    turned = image.transpose(turn)
    turned.info.pop("exif", None)  # the turn is applied: a copy must not be turned again
    return turned


_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
SIXTEEN_TO_EIGHT = 255 / 65535  # 16-bit samples -> 8 bits: v * SIXTEEN_TO_EIGHT + 0.5, truncated (rounding)
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")


def to_rgb8(image: PILImage.Image) -> PILImage.Image:
    """THE conversion of a decoded image to 8-bit RGB, for every mode Pillow gives:

    * 16-bit grayscale (``I;16``, ``I;16B``, ...) and 32-bit ``I`` hold 0..65535: scaled by 255/65535
      (rounded), never clipped at 255;
    * ``F`` holds 0.0..1.0 (the float-image convention): scaled by 255, clipped outside;
    * alpha (``RGBA``, ``LA``, ``PA``, ``P`` with a transparent colour) is flattened onto white, as the
      snapshot's JPEG conversion has always done;
    * ``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``: Pillow's conversion (CMYK as Pillow's JPEG reader
      delivers it, Adobe inversion applied).
    """
    from PIL import Image

    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT or mode == "I":
        wide = image if mode == "I" else image.convert("I")
        return wide.point(lambda v: v * SIXTEEN_TO_EIGHT + 0.5).convert("L").convert("RGB")
    if mode == "F":
        return image.point(lambda v: v * 255 + 0.5).convert("L").convert("RGB")
    if (mode == "P" and "transparency" in image.info) or mode in _ALPHA:
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")
