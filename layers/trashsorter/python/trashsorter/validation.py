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
Pillow is imported lazily so that importing this module (and the ingest handler) stays cheap.
"""

from __future__ import annotations

import io
import math
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from trashsorter.errors import Rejection

if TYPE_CHECKING:
    from PIL import Image as PILImage

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP")
HEIC_HINT = (
    'HEIC/HEIF photos are not accepted: export them as JPEG, or set the iPhone camera to "Most Compatible" '
    "(Settings > Camera > Formats)"
)
REJECTION_CODES = frozenset(
    {
        "empty",
        "too_large",
        "unsupported_format",
        "too_many_segments",
        "too_many_scans",
        "excessive_padding",
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

# Structure limits, checked on the raw bytes before any decoder sees them. Camera files sit far below each.
MAX_JPEG_SEGMENTS = 1024  # marker segments before EOI; a camera JPEG has 10 to 40
MAX_JPEG_SCANS = 40  # libjpeg's progressive script writes 10; each scan is a pass over every block
MAX_JPEG_PADDING = 64 * 1024  # 0xFF fill bytes and junk between segments; encoders write none
MAX_PNG_CHUNKS = 16 * 1024  # a 20 MB PNG in libpng's 8 KB IDAT chunks has 2,560
MAX_PNG_OTHER_CHUNKS = 256  # chunks other than IDAT (metadata, APNG frames)
MAX_WEBP_CHUNKS = 256
# Declared pixels per byte of file: photos have 1 to 50; only images above the floor are checked.
MAX_PIXELS_PER_BYTE = 1024
PIXELS_PER_BYTE_FLOOR = 4_000_000
# Memory a decode may need (on top of the ~40 MB interpreter) and CPU it may take.
DECODE_MEMORY_BUDGET = 192 * 1024 * 1024
DECODE_CPU_SECONDS = 1.5
# Bytes per declared pixel while decoding, measured with Pillow 13 (libwebp 1.6 keeps two RGBA canvases
# and hands over a copy; converting to RGB for the snapshot's JPEG copy adds one more).
_BYTES_PER_PIXEL = {"JPEG": 4, "PNG": 4, "WEBP": 20}

_MB = 1024 * 1024
_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")
_EXIF_ORIENTATION = 0x0112
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
_JPEG_FILL = re.compile(rb"\xff+")
_JPEG_SEGMENT_END = re.compile(rb"\xff[^\x00\xd0-\xd7]")  # a marker: the end of entropy-coded data
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_PROGRESSIVE_SOF = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1")


@dataclass(frozen=True)
class ImageInfo:
    format: str  # "JPEG" | "PNG" | "WEBP"
    mode: str  # Pillow mode as stored in the file (RGB, CMYK, P, I;16, RGBA ...)
    width: int  # after EXIF orientation
    height: int  # after EXIF orientation
    # difference hash of the decoded image (trashsorter.near_twins); not part of what the image "is"
    phash: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class _JpegLayout:
    scans: int
    progressive: bool
    sampling: tuple[tuple[int, int], ...]  # (h, v) per component, from the first SOF


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
        if brand in _HEIF_BRANDS:
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


def unsupported_format_message(fmt: str) -> str:
    """The rejection message for a format that is not accepted (HEIC carries the hint how to fix it)."""
    return f"unsupported format: {fmt}" + (f". {HEIC_HINT}" if fmt == "HEIC" else "")


# ---------------------------------------------------------------- structure walks (no decoder involved)


def _scan_jpeg(data: bytes) -> _JpegLayout:
    """Walk the segments up to EOI; refuse more segments, scans or padding than any camera writes.

    Every loop turn adds at least one to a counter that has a limit, so the walk is bounded; the
    entropy-coded data of a scan is skipped with one regular-expression search.
    """
    n, pos = len(data), 2
    segments = scans = padding = 0
    progressive = False
    sampling: tuple[tuple[int, int], ...] = ()
    while pos < n:
        if data[pos] != 0xFF:  # junk before a marker
            nxt = data.find(b"\xff", pos)
            padding += (n if nxt < 0 else nxt) - pos
            if nxt < 0:
                break
            pos = nxt
        fill = _JPEG_FILL.match(data, pos)
        assert fill is not None
        padding += fill.end() - pos - 1
        if padding > MAX_JPEG_PADDING:
            raise Rejection(
                "excessive_padding",
                f"JPEG has more than {MAX_JPEG_PADDING} padding bytes between its segments; "
                "a camera writes none (re-save the photo)",
            )
        pos = fill.end()
        if pos >= n:
            break
        marker = data[pos]
        pos += 1
        if marker == 0xD9:  # EOI: whatever follows (MPF images, trailers) is not decoded
            break
        if marker == 0x00:  # an escaped 0xFF outside a scan: junk
            padding += 2
            continue
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise Rejection(
                "too_many_segments",
                f"JPEG has more than {MAX_JPEG_SEGMENTS} marker segments; a camera photo has fewer than 50",
            )
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # standalone markers carry no length
            continue
        if pos + 2 > n:
            break
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2:
            break  # the decoder says what is wrong
        if marker in _JPEG_SOF and not sampling:
            progressive = marker in _JPEG_PROGRESSIVE_SOF
            count = data[pos + 7] if pos + 7 < n else 0
            sampling = tuple(
                (data[pos + 9 + 3 * i] >> 4, data[pos + 9 + 3 * i] & 0x0F)
                for i in range(count)
                if pos + 9 + 3 * i < n
            )
        pos += length
        if marker == 0xDA:
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise Rejection(
                    "too_many_scans",
                    f"JPEG has more than {MAX_JPEG_SCANS} scans; a progressive camera JPEG has about 10 "
                    "(re-save it as a baseline JPEG)",
                )
            end = _JPEG_SEGMENT_END.search(data, pos)
            if end is None:
                break
            pos = end.start()
    return _JpegLayout(scans=scans, progressive=progressive, sampling=sampling)


def _scan_png(data: bytes) -> None:
    """Count chunks up to IEND; refuse more than any encoder writes (each one costs the decoder a turn)."""
    n, pos = len(data), 8
    chunks = other = 0
    while pos + 8 <= n:
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        chunks += 1
        other += kind != b"IDAT"
        if chunks > MAX_PNG_CHUNKS or other > MAX_PNG_OTHER_CHUNKS:
            what = "chunks" if chunks > MAX_PNG_CHUNKS else "chunks other than image data"
            limit = MAX_PNG_CHUNKS if chunks > MAX_PNG_CHUNKS else MAX_PNG_OTHER_CHUNKS
            raise Rejection(
                "too_many_segments", f"PNG has more than {limit} {what}; a photo has a few (re-save it)"
            )
        if kind == b"IEND":
            break
        pos += 12 + length


def _scan_webp(data: bytes) -> None:
    """Count the RIFF chunks (animation frames are chunks too)."""
    n, pos, chunks = len(data), 12, 0
    while pos + 8 <= n:
        chunks += 1
        if chunks > MAX_WEBP_CHUNKS:
            raise Rejection(
                "too_many_segments", f"WEBP has more than {MAX_WEBP_CHUNKS} chunks; a photo has a few"
            )
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        pos += 8 + size + (size & 1)


def _coefficient_bytes(layout: _JpegLayout, width: int, height: int) -> int:
    """The whole-image DCT coefficient buffer libjpeg keeps for a progressive or multi-scan JPEG."""
    if not (layout.progressive or layout.scans > 1) or not layout.sampling:
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
        return math.ceil(width / 8) * math.ceil(height / 8) * 4 + coefficient_bytes
    return width * height * _BYTES_PER_PIXEL.get(fmt, 4)


def _check_dimensions(
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
        raise Rejection("corrupt", f"{fmt} declares an empty size {width}x{height}")
    if max_pixels is not None and pixels > max_pixels:
        raise Rejection(
            "too_many_pixels",
            f"image is {width}x{height} = {pixels / 1e6:.1f} MP; the limit is {max_pixels / 1e6:.1f} MP",
        )
    if max_aspect_ratio is not None and max(width, height) > max_aspect_ratio * min(width, height):
        raise Rejection(
            "extreme_aspect_ratio",
            f"image is {width}x{height}, {max(width, height) / min(width, height):.1f}:1; "
            f"the limit is {max_aspect_ratio:g}:1",
        )
    if pixels > PIXELS_PER_BYTE_FLOOR and pixels > MAX_PIXELS_PER_BYTE * size:
        raise Rejection(
            "implausible_size",
            f"{fmt} declares {width}x{height} = {pixels / 1e6:.1f} MP in {size} bytes; "
            f"a photo needs at least 1 byte per {MAX_PIXELS_PER_BYTE} pixels",
        )
    needed = decode_memory(fmt, width, height, coefficient_bytes)
    if needed > DECODE_MEMORY_BUDGET:
        raise Rejection(
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


def _open(
    data: bytes, *, max_pixels: int | None, max_aspect_ratio: float | None
) -> tuple[PILImage.Image, str]:
    """Sniff, walk the structure, open the header and check the dimensions; nothing decoded yet."""
    if not data:
        raise Rejection("empty", "object is empty (0 bytes)")
    fmt = sniff_format(data)
    if fmt not in ACCEPTED_FORMATS:
        raise Rejection("unsupported_format", unsupported_format_message(fmt))
    layout = _scan_jpeg(data) if fmt == "JPEG" else None
    if fmt == "PNG":
        _scan_png(data)
    elif fmt == "WEBP":
        _scan_webp(data)
    from PIL import Image  # lazy: keeps the handler's import cheap

    try:
        im = Image.open(_CpuBudgetReader(data, DECODE_CPU_SECONDS), formats=[fmt])
    except Image.DecompressionBombError as exc:
        raise Rejection("too_many_pixels", f"image declares too many pixels: {exc}") from exc
    try:
        width, height = im.size
        _check_dimensions(
            fmt,
            width,
            height,
            len(data),
            max_pixels=max_pixels,
            max_aspect_ratio=max_aspect_ratio,
            coefficient_bytes=_coefficient_bytes(layout, width, height) if layout else 0,
        )
    except BaseException:
        im.close()
        raise
    return im, fmt


def _guarded(fmt: str, exc: BaseException) -> Rejection:
    """Any exception of a decode, as the Rejection it stands for."""
    if isinstance(exc, _OverBudget):
        return Rejection("too_costly", f"decoding needed more than {DECODE_CPU_SECONDS:g} s of CPU")
    if isinstance(exc, MemoryError):
        return Rejection("too_costly", "image needs more memory than allowed to decode")
    text = _OBJECT_REPR.sub("data", str(exc))
    if "truncated" in text.lower():
        return Rejection("truncated", f"{fmt} file is truncated: {text}")
    return Rejection("corrupt", f"{fmt} file is corrupt: {text or type(exc).__name__}")


def validate_image(
    data: bytes,
    *,
    max_pixels: int,
    min_side: int,
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
) -> ImageInfo:
    """Prove ``data`` is a whole JPEG/PNG/WebP of sane dimensions; raise :class:`Rejection` otherwise.

    Pixel floods, decompression bombs and files built to make decoders loop are refused before any pixel
    buffer exists.
    """
    fmt = sniff_format(data) if data else ""
    try:
        im, fmt = _open(data, max_pixels=max_pixels, max_aspect_ratio=max_aspect_ratio)
        with im:
            width, height = im.size
            mode = im.mode
            if fmt == "JPEG":
                im.draft(mode, (math.ceil(width / 8), math.ceil(height / 8)))  # DCT scaling, all data read
            im.load()  # the real decode; ImageFile.LOAD_TRUNCATED_IMAGES stays False, so short files raise
            orientation = _orientation(im)
            phash = _phash(im, orientation, data)
    except Rejection:
        raise
    except Exception as exc:  # Pillow raises many types for hostile input; all are rejections
        raise _guarded(fmt, exc) from exc
    if orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    if min(width, height) < min_side:
        raise Rejection(
            "too_small", f"image is {width}x{height}; the shortest side must be at least {min_side} px"
        )
    return ImageInfo(format=fmt, mode=mode, width=width, height=height, phash=phash)


def _phash(im: PILImage.Image, orientation: int, data: bytes) -> str | None:
    """The near-twin hash of the image just decoded; a photo is never refused for want of one."""
    from trashsorter.near_twins import hash_decoded

    try:
        return hash_decoded(im, orientation, data)
    except Exception:  # noqa: BLE001 - an unusual mode Pillow cannot reduce or convert: no hash
        return None


def decode_bounded(data: bytes) -> PILImage.Image:
    """The whole image decoded (for conversions), under the same structure, memory and CPU bounds.

    Accepted images always pass: the ingest step applied the same :func:`decode_memory` estimate. The
    caller closes the returned image.
    """
    fmt = sniff_format(data) if data else ""
    try:
        im, fmt = _open(data, max_pixels=None, max_aspect_ratio=None)
    except Rejection:
        raise
    except Exception as exc:  # same mapping as validate_image
        raise _guarded(fmt, exc) from exc
    try:
        im.load()
    except Exception as exc:
        im.close()
        raise _guarded(fmt, exc) from exc
    return im


def _orientation(im: object) -> int:
    """EXIF orientation (1..8); a missing or unreadable EXIF block means 1, as in ImageOps.exif_transpose."""
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)  # type: ignore[attr-defined]
        return int(value) if isinstance(value, int) else 1
    except Exception:  # noqa: BLE001 - a broken EXIF block does not make the pixels invalid
        return 1
