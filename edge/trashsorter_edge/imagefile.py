"""What an image file is and whether its structure and metadata are within bounds, read from the raw bytes
before any decoder sees them (Pillow-free, numpy-free: the ingest Lambda, the trainer, the snapshot
conversion and the device all import it).

* :func:`sniff_format`: the format from the content (magic bytes), never from a name.
* :func:`walk`: JPEG segments, scans and padding, PNG and WebP chunks, counted up to limits no camera comes
  near; arithmetic-coded JPEGs are refused with a hint.
* Metadata is bounded like pixels: the EXIF block, the XMP packets and the ICC profile each have a size
  limit, and the EXIF (and JPEG MPF) directories a limit on their entries and on the value bytes those
  entries declare (Pillow copies every declared value, so a 20 MB block whose entries all point at the same
  bytes costs gigabytes).
* :func:`exif_orientation`: THE reading of the EXIF orientation (tag 0x0112 of IFD0), an integer or a
  fraction equal to 1..8, anything else 1, for the validator, the snapshot conversion, the trainer and the
  device alike.

Every refusal is an :class:`ImageRefused` with a stable ``code`` and a human ``message``.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP")
HEIC_HINT = (
    'HEIC/HEIF photos are not accepted: export them as JPEG, or set the iPhone camera to "Most Compatible" '
    "(Settings > Camera > Formats)"
)
ARITHMETIC_HINT = (
    "Re-save it as a standard (Huffman-coded) JPEG, e.g. `jpegtran -copy all photo.jpg > fixed.jpg`"
)

# Structure limits, checked on the raw bytes before any decoder sees them. Camera files sit far below each.
MAX_JPEG_SEGMENTS = 1024  # marker segments before EOI; a camera JPEG has 10 to 40
MAX_JPEG_SCANS = 40  # libjpeg's progressive script writes 10; each scan is a pass over every block
MAX_JPEG_PADDING = 64 * 1024  # 0xFF fill bytes and junk between segments; encoders write none
MAX_PNG_CHUNKS = 16 * 1024  # a 20 MB PNG in libpng's 8 KB IDAT chunks has 2,560
MAX_PNG_OTHER_CHUNKS = 256  # chunks other than IDAT (metadata, APNG frames)
MAX_WEBP_CHUNKS = 256

# Metadata limits. A JPEG's EXIF block is one APP1 segment (at most 64 KB), so no camera writes more; phone
# XMP with an extended depth map reaches 1-2 MB; display ICC profiles are 0.5-4 KB, print profiles < 1 MB.
MAX_EXIF_BYTES = 64 * 1024
MAX_EXIF_ENTRIES = 1024  # over all directories; a phone photo has 60 to 150
MAX_EXIF_DIRECTORIES = 16  # IFD0, Exif, GPS, Interop, IFD1 (thumbnail) and a few more
MAX_EXIF_VALUE_BYTES = 256 * 1024  # bytes the entries declare; each is copied when the block is parsed
MAX_XMP_BYTES = 4 * 1024 * 1024
MAX_ICC_BYTES = 1024 * 1024

_KB = 1024
_JPEG_FILL = re.compile(rb"\xff+")
_JPEG_SEGMENT_END = re.compile(rb"\xff[^\x00\xd0-\xd7]")  # a marker: the end of entropy-coded data
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_PROGRESSIVE_SOF = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
_JPEG_ARITHMETIC_SOF = frozenset({0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1")
_EXIF_HEADER = b"Exif\x00\x00"
_XMP_HEADERS = (b"http://ns.adobe.com/xap/1.0/\x00", b"http://ns.adobe.com/xmp/extension/\x00")
_ICC_HEADER = b"ICC_PROFILE\x00"
_MPF_HEADER = b"MP\x00\x00"
_PNG_XMP_KEYWORD = b"XML:com.adobe.xmp\x00"
_EXIF_ORIENTATION = 0x0112
_SUB_IFD_TAGS = frozenset({0x8769, 0x8825, 0xA005})  # Exif, GPS, Interoperability
_TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}


class ImageRefused(ValueError):
    """The bytes are not an image the pipeline decodes within its bounds; ``code`` says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class JpegLayout:
    scans: int
    progressive: bool
    sampling: tuple[tuple[int, int], ...]  # (h, v) per component, from the first SOF


def _size(size: int) -> str:
    return f"{size / (_KB * _KB):.1f} MB" if size >= _KB * _KB else f"{size / _KB:.0f} KB"


# ---------------------------------------------------------------- format


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


# ---------------------------------------------------------------- metadata


class _Metadata:
    """Metadata bytes met during a walk, checked against the limits as they add up."""

    def __init__(self) -> None:
        self.sizes = {"EXIF": 0, "XMP": 0, "ICC profile": 0}

    def add(self, what: str, size: int) -> None:
        self.sizes[what] += size
        limit = {"EXIF": MAX_EXIF_BYTES, "XMP": MAX_XMP_BYTES, "ICC profile": MAX_ICC_BYTES}[what]
        if self.sizes[what] > limit:
            raise ImageRefused(
                "metadata_too_large",
                f"{what} metadata is {_size(self.sizes[what])}; the limit is {_size(limit)} "
                "(re-save the photo, or strip its metadata)",
            )


def _tiff_start(block: bytes) -> tuple[str, int] | None:
    """Byte order and offset of a TIFF header at the start of ``block`` (after an optional Exif header)."""
    start = len(_EXIF_HEADER) if block.startswith(_EXIF_HEADER) else 0
    order = block[start : start + 2]
    if order not in (b"II", b"MM"):
        return None
    return ("<" if order == b"II" else ">"), start


def check_directories(block: bytes, what: str = "EXIF") -> None:
    """Count the entries of a TIFF-structured block's directories (IFD0, its sub-directories, the next-IFD
    chain) and the value bytes they declare; refuse more than any camera writes. Bounded: each directory
    is visited once, at most :data:`MAX_EXIF_DIRECTORIES` of them."""
    head = _tiff_start(block)
    if head is None or len(block) < head[1] + 8:
        return  # not TIFF-structured: the decoder ignores it
    order, base = head
    tiff = memoryview(block)[base:]
    pending = [struct.unpack_from(order + "I", tiff, 4)[0]]
    seen: set[int] = set()
    entries = value_bytes = 0
    while pending and len(seen) < MAX_EXIF_DIRECTORIES:
        offset = pending.pop()
        if offset in seen or offset < 8 or offset + 2 > len(tiff):
            continue
        seen.add(offset)
        count = struct.unpack_from(order + "H", tiff, offset)[0]
        entries += count
        if entries > MAX_EXIF_ENTRIES:
            raise ImageRefused(
                "metadata_too_large",
                f"{what} directories hold more than {MAX_EXIF_ENTRIES} entries; a photo has about 100 "
                "(re-save the photo, or strip its metadata)",
            )
        for index in range(count):
            at = offset + 2 + 12 * index
            if at + 12 > len(tiff):
                break
            tag, kind, number = struct.unpack_from(order + "HHI", tiff, at)
            size = number * _TIFF_TYPE_SIZES.get(kind, 1)
            value_bytes += size if size > 4 else 0
            if tag in _SUB_IFD_TAGS:
                pending.append(struct.unpack_from(order + "I", tiff, at + 8)[0])
        end = offset + 2 + 12 * count
        if end + 4 <= len(tiff):
            pending.append(struct.unpack_from(order + "I", tiff, end)[0])
    if value_bytes > MAX_EXIF_VALUE_BYTES:
        raise ImageRefused(
            "metadata_too_large",
            f"{what} entries declare {_size(value_bytes)} of values; the limit is "
            f"{_size(MAX_EXIF_VALUE_BYTES)} (re-save the photo, or strip its metadata)",
        )


def exif_orientation(block: bytes | None) -> int:
    """THE EXIF orientation (1..8) of an EXIF block: tag 0x0112 of IFD0 as an integer, or as a fraction
    (RATIONAL) or float whose value is a whole 1..8; missing, unreadable or anything else -> 1."""
    head = _tiff_start(block or b"")
    if block is None or head is None or len(block) < head[1] + 10:
        return 1
    order, base = head
    tiff = memoryview(block)[base:]
    offset = struct.unpack_from(order + "I", tiff, 4)[0]
    if offset < 8 or offset + 2 > len(tiff):
        return 1
    for index in range(struct.unpack_from(order + "H", tiff, offset)[0]):
        at = offset + 2 + 12 * index
        if at + 12 > len(tiff):
            return 1
        tag, kind, _number = struct.unpack_from(order + "HHI", tiff, at)
        if tag == _EXIF_ORIENTATION:
            value = _tiff_value(tiff, order, kind, at + 8)
            return int(value) if value is not None and value.is_integer() and 1 <= value <= 8 else 1
    return 1


def _tiff_value(tiff: memoryview, order: str, kind: int, at: int) -> float | None:
    """The first value of an entry (its field at ``at``) as a number, or None for a type that is not one."""
    inline = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i", 11: "f"}
    if kind in inline:
        return float(struct.unpack_from(order + inline[kind], tiff, at)[0])
    if kind in (5, 10, 12):  # RATIONAL, SRATIONAL, DOUBLE: stored at an offset
        where = struct.unpack_from(order + "I", tiff, at)[0]
        if where + 8 > len(tiff):
            return None
        if kind == 12:
            return float(struct.unpack_from(order + "d", tiff, where)[0])
        numerator, denominator = struct.unpack_from(order + ("II" if kind == 5 else "ii"), tiff, where)
        return numerator / denominator if denominator else None
    return None


# ---------------------------------------------------------------- structure walks (no decoder involved)


def walk(data: bytes, fmt: str) -> JpegLayout | None:
    """Walk the structure of ``data`` (already sniffed as ``fmt``); refuse what is out of bounds."""
    if fmt == "JPEG":
        return _scan_jpeg(data)
    if fmt == "PNG":
        _scan_png(data)
    elif fmt == "WEBP":
        _scan_webp(data)
    return None


def _jpeg_metadata(data: bytes, marker: int, start: int, end: int, metadata: _Metadata) -> None:
    """Size (and for EXIF and MPF the directories) of an APP1/APP2 segment's payload ``data[start:end]``."""
    if marker == 0xE1 and data.startswith(_EXIF_HEADER, start):
        metadata.add("EXIF", end - start)
        check_directories(data[start:end], "EXIF")
    elif marker == 0xE1 and any(data.startswith(h, start) for h in _XMP_HEADERS):
        metadata.add("XMP", end - start)
    elif marker == 0xE2 and data.startswith(_ICC_HEADER, start):
        metadata.add("ICC profile", end - start)
    elif marker == 0xE2 and data.startswith(_MPF_HEADER, start):
        check_directories(data[start + len(_MPF_HEADER) : end], "MPF")


def _scan_jpeg(data: bytes) -> JpegLayout:
    """Walk the segments up to EOI; refuse more segments, scans, padding or metadata than any camera writes.

    Every loop turn adds at least one to a counter that has a limit, so the walk is bounded; the
    entropy-coded data of a scan is skipped with one regular-expression search.
    """
    n, pos = len(data), 2
    segments = scans = padding = 0
    progressive = False
    sampling: tuple[tuple[int, int], ...] = ()
    metadata = _Metadata()
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
            raise ImageRefused(
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
            raise ImageRefused(
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
        if marker in _JPEG_ARITHMETIC_SOF:
            message = f"unsupported format: arithmetic-coded JPEG. {ARITHMETIC_HINT}"
            raise ImageRefused("unsupported_format", message)
        if marker in _JPEG_SOF and not sampling:
            progressive = marker in _JPEG_PROGRESSIVE_SOF
            count = data[pos + 7] if pos + 7 < n else 0
            sampling = tuple(
                (data[pos + 9 + 3 * i] >> 4, data[pos + 9 + 3 * i] & 0x0F)
                for i in range(count)
                if pos + 9 + 3 * i < n
            )
        if marker in (0xE1, 0xE2):
            _jpeg_metadata(data, marker, pos + 2, min(n, pos + length), metadata)
        pos += length
        if marker == 0xDA:
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise ImageRefused(
                    "too_many_scans",
                    f"JPEG has more than {MAX_JPEG_SCANS} scans; a progressive camera JPEG has about 10 "
                    "(re-save it as a baseline JPEG)",
                )
            end = _JPEG_SEGMENT_END.search(data, pos)
            if end is None:
                break
            pos = end.start()
    return JpegLayout(scans=scans, progressive=progressive, sampling=sampling)


def _scan_png(data: bytes) -> None:
    """Count chunks up to IEND and size their metadata; refuse more than any encoder writes."""
    n, pos = len(data), 8
    chunks = other = 0
    metadata = _Metadata()
    while pos + 8 <= n:
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        chunks += 1
        other += kind != b"IDAT"
        if chunks > MAX_PNG_CHUNKS or other > MAX_PNG_OTHER_CHUNKS:
            what = "chunks" if chunks > MAX_PNG_CHUNKS else "chunks other than image data"
            limit = MAX_PNG_CHUNKS if chunks > MAX_PNG_CHUNKS else MAX_PNG_OTHER_CHUNKS
            raise ImageRefused(
                "too_many_segments", f"PNG has more than {limit} {what}; a photo has a few (re-save it)"
            )
        if kind == b"IEND":
            break
        body = pos + 8
        if kind == b"eXIf":
            metadata.add("EXIF", length)
            check_directories(data[body : body + length], "EXIF")
        elif kind == b"iCCP":
            metadata.add("ICC profile", length)
        elif kind == b"iTXt" and data.startswith(_PNG_XMP_KEYWORD, body):
            metadata.add("XMP", length)
        pos += 12 + length


def _scan_webp(data: bytes) -> None:
    """Count the RIFF chunks (animation frames are chunks too) and size their metadata."""
    n, pos, chunks = len(data), 12, 0
    metadata = _Metadata()
    names = {b"EXIF": "EXIF", b"XMP ": "XMP", b"ICCP": "ICC profile"}
    while pos + 8 <= n:
        chunks += 1
        if chunks > MAX_WEBP_CHUNKS:
            raise ImageRefused(
                "too_many_segments", f"WEBP has more than {MAX_WEBP_CHUNKS} chunks; a photo has a few"
            )
        kind = data[pos : pos + 4]
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        if kind in names:
            metadata.add(names[kind], size)
            if kind == b"EXIF":
                check_directories(data[pos + 8 : pos + 8 + size], "EXIF")
        pos += 8 + size + (size & 1)
