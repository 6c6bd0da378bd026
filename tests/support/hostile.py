"""Hostile and awkward files crafted in code, and the hostile corpus (``from tests.support import hostile``).

Nothing here allocates a large pixel buffer: bombs, floods and huge canvases are written by hand (headers
declaring huge sizes over a few KB of data), and the files built to make decoders loop (padding, empty
segments, duplicated scans, empty chunks) are byte-level edits of small real encodings.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from PIL import Image, PngImagePlugin

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


def tiff_block(entries: list[tuple[int, int, int, bytes]], tail: bytes = b"") -> bytes:
    """An ``Exif``-headed little-endian TIFF block: IFD0 with ``(tag, type, count, 4-byte field)`` entries,
    then ``tail`` (values the fields point at; IFD0 ends at 14 + 12 * len(entries))."""
    ifd = struct.pack("<H", len(entries))
    ifd += b"".join(struct.pack("<HHI", tag, kind, count) + field for tag, kind, count, field in entries)
    return b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + tail


def exif_offset_bomb(entries: int = 5000, values: int = 30_000) -> bytes:
    """A 60 KB EXIF block whose ``entries`` entries all declare ``values`` SHORTs at the same offset: the
    block fits one JPEG segment, the declared values add up to entries x values x 2 bytes (300 MB)."""
    data_at = 8 + 2 + 12 * entries + 4
    fields = [(0x1000 + i, 3, values, struct.pack("<I", data_at)) for i in range(entries)]
    return tiff_block(fields, bytes(max(0, min(values * 2, 65_000 - 14 - 12 * entries))))


def exif_many_entries(entries: int = 2000) -> bytes:
    """An EXIF block of ``entries`` inline entries (4 bytes of value each): more than any camera writes."""
    return tiff_block([(0x1000 + i, 3, 1, b"\x01\x00\x00\x00") for i in range(entries)])


def exif_orientation_fraction(value: tuple[int, int] = (6, 1)) -> bytes:
    """EXIF whose orientation (0x0112) is stored as a RATIONAL ``value`` instead of a SHORT."""
    return tiff_block([(0x0112, 5, 1, struct.pack("<I", 8 + 2 + 12 + 4))], struct.pack("<II", *value))


def with_exif(fmt: str, exif: bytes, image: Image.Image | None = None) -> bytes:
    """A real photo saved as ``fmt`` carrying ``exif`` (Pillow writes JPEG APP1, PNG eXIf, WebP EXIF)."""
    return encode(fmt, image, exif=exif, **({"quality": 85} if fmt != "PNG" else {}))


def big_exif_bomb(fmt: str = "WEBP", size: int = 20 * 1024 * 1024) -> bytes:
    """A small WebP or PNG carrying a ``size``-byte EXIF block (the offset bomb's entries, padded out)."""
    block = exif_offset_bomb(60_000 if size > 1_000_000 else 5000, 65_000)
    return with_exif(fmt, block + bytes(max(0, size - len(block))), photo().resize((128, 96)))


def jpeg_arithmetic() -> bytes:
    """A JPEG whose frame header says arithmetic coding (SOF9): the marker is what the walk reads."""
    data = bytearray(real_photo_bytes("glass"))
    for marker, start, _end in jpeg_segments(bytes(data)):
        if marker == 0xC0:
            data[start + 1] = 0xC9
            break
    return bytes(data)


def phone_photo(width: int, height: int) -> Image.Image:
    """A camera-sized picture with photo texture at full resolution (real photos tiled, not upscaled)."""
    tiles = [photo(), photo().transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    canvas = Image.new("RGB", (width, height))
    tw, th = tiles[0].size
    for y in range(0, height, th):
        for x in range(0, width, tw):
            canvas.paste(tiles[(x // tw + y // th) % 2], (x, y))
    return canvas


def phone_jpeg(width: int, height: int, *, progressive: bool = False, subsampling: int = 2) -> bytes:
    """A phone-sized JPEG: 48 MP (8000x6000) and 50 MP (8160x6144) sensors, 4:2:0 unless asked."""
    return encode(
        "JPEG", phone_photo(width, height), quality=92, progressive=progressive, subsampling=subsampling
    )


def phone_webp(width: int = 4032, height: int = 3024) -> bytes:
    """A 12 MP WebP as phones and photo apps export it."""
    return encode("WEBP", phone_photo(width, height), quality=85)


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


def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """``(marker, start, end)`` of each segment after SOI up to EOI; a scan's end includes its data."""
    segments, i = [], 2
    while i + 1 < len(data):
        marker = data[i + 1]
        if marker == 0xD9:
            segments.append((marker, i, i + 2))
            break
        end = i + 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker == 0xDA:
            while not (data[end] == 0xFF and data[end + 1] not in (0x00, *range(0xD0, 0xD8))):
                end += 1
        segments.append((marker, i, end))
        i = end
    return segments


def patch_sof(jpeg: bytes, width: int, height: int) -> bytes:
    """``jpeg`` with its SOF header patched to declare ``width`` x ``height`` (max 65535)."""
    data = bytearray(jpeg)
    for marker, start, _end in jpeg_segments(jpeg):
        if marker in (0xC0, 0xC1, 0xC2):
            struct.pack_into(">HH", data, start + 5, height, width)
            return bytes(data)
    raise AssertionError("no SOF marker found")


def pixel_flood_jpeg(width: int = 60000, height: int = 60000) -> bytes:
    """A real small JPEG whose SOF0 header is patched to declare ``width`` x ``height``."""
    return patch_sof(small_image("JPEG", (64, 64)), width, height)


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


# ---------------------------------------------------------------------------------------------------- corpus

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
    with Image.open(real_photo("glass")) as im:
        return im.convert("RGB")


def encode(fmt: str, image: Image.Image | None = None, **save: object) -> bytes:
    out = io.BytesIO()
    (image or photo()).save(out, fmt, **save)
    return out.getvalue()


def zip_archive() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("payload.sh", "#!/bin/sh\necho pwned\n" * 50)
        archive.writestr("index.html", HTML)
    return buf.getvalue()


def jpeg_then_zip() -> bytes:
    """A real JPEG with a ZIP archive appended (opens as both)."""
    return real_photo_bytes("glass") + zip_archive()


def zip_then_jpeg() -> bytes:
    return zip_archive() + real_photo_bytes("glass")


def png_then_html() -> bytes:
    return png_from_photo() + b"<script>alert(document.cookie)</script>" + HTML


def html_then_png() -> bytes:
    return HTML + png_from_photo()


def gif_jar() -> bytes:
    """GIFAR-style: a GIF with a ZIP appended (GIF is not an accepted format)."""
    return gif() + zip_archive()


def jpeg_with_segment(marker: int, payload: bytes) -> bytes:
    """Insert an APPn/COM segment right after SOI (each segment carries at most 65533 bytes)."""
    data = real_photo_bytes("glass")
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
    data = real_photo_bytes("glass")
    segments = b"".join(b"\xff\xfe" + struct.pack(">H", 65535) + b"M" * 65533 for _ in range(16))
    return data[:2] + segments + data[2:]


def png_with_chunk(kind: bytes, body: bytes) -> bytes:
    """Insert a chunk right after IHDR (8-byte signature + 25-byte IHDR chunk)."""
    data = png_from_photo()
    return data[:33] + _png_chunk(kind, body) + data[33:]


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
    return patch_sof(encode("JPEG", photo().resize((64, 64)), progressive=progressive), width, height)


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
    return decompression_bomb_png(6000)


def jpeg_only_markers() -> bytes:
    return b"\xff\xd8" + b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + b"\xff\xd9"


def png_no_idat() -> bytes:
    ihdr = struct.pack(">IIBBBBB", 640, 480, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b"")


# Files built to make a decoder loop or allocate: each is small, and each cost the unbounded validator
# seconds of CPU or hundreds of MB; the bounded one refuses them from their structure.


@cache
def progressive_12mp() -> bytes:
    """The real photo enlarged to 4096 x 3072 as a progressive JPEG (a legitimate, heavy input)."""
    image = photo().resize((4096, 3072), Image.Resampling.NEAREST)
    return encode("JPEG", image, quality=30, progressive=True)


def jpeg_duplicated_ac_scans(copies: int = 10_000) -> bytes:
    """A 12 MP progressive JPEG whose smallest AC scan is repeated ``copies`` times (~150 KB).

    Each repeat is a full pass over the blocks of its component (libjpeg only warns about the bogus
    progression), so the decode cost grows with ``copies`` while the file barely does.
    """
    data = progressive_12mp()
    ac_first = [
        (end - start, start, end)
        for marker, start, end in jpeg_segments(data)
        if marker == 0xDA
        and data[start + 5 + 2 * data[start + 4]] > 0
        and data[start + 7 + 2 * data[start + 4]] < 16
    ]
    _, start, end = min(ac_first)
    return data[:end] + data[start:end] * copies + data[end:]


def jpeg_fill_bytes(count: int = 5_000_000) -> bytes:
    """A real photo with ``count`` legal 0xFF fill bytes in front of its first marker segment."""
    data = real_photo_bytes()
    return data[:2] + b"\xff" * count + data[2:]


def jpeg_empty_comments(count: int = 2_000_000) -> bytes:
    """A real photo behind ``count`` empty COM segments (4 bytes each)."""
    data = real_photo_bytes()
    return data[:2] + b"\xff\xfe\x00\x02" * count + data[2:]


def png_empty_chunks(count: int = 600_000) -> bytes:
    """A real PNG with ``count`` empty private ancillary chunks (12 bytes each) after IHDR."""
    data = png_from_photo()
    return data[:33] + _png_chunk(b"spAm", b"") * count + data[33:]


def webp_lossless_canvas(
    width: int = 6300, height: int = 6300, rgb: tuple[int, int, int] = (90, 140, 60)
) -> bytes:
    """A 34-byte lossless WebP of one colour: five one-symbol prefix codes, zero bits per pixel.

    Written bit by bit (VP8L is LSB first): header, no transform, no colour cache, no meta codes, then for
    green, red, blue, alpha and distance a "simple" code with one 8-bit symbol. Any canvas size decodes.
    """
    acc = nbits = 0
    fields = [(width - 1, 14), (height - 1, 14), (0, 1), (0, 3), (0, 1), (0, 1), (0, 1)]
    for symbol in (rgb[1], rgb[0], rgb[2], 255, 0):
        fields += [(1, 1), (0, 1), (1, 1), (symbol, 8)]
    for value, size in fields:
        acc |= value << nbits
        nbits += size
    stream = b"\x2f" + acc.to_bytes((nbits + 7) // 8, "little")
    chunk = b"VP8L" + struct.pack("<I", len(stream)) + stream + b"\x00" * (len(stream) & 1)
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def webp_padded_canvas(width: int = 3800, height: int = 3800, padding: int = 16_000) -> bytes:
    """:func:`webp_lossless_canvas` padded with an unknown chunk so its size looks plausible for its pixels:
    only the decode's memory estimate (17 bytes per pixel in libwebp + Pillow, measured) refuses it."""
    body = webp_lossless_canvas(width, height)[12:] + b"JUNK" + struct.pack("<I", padding) + bytes(padding)
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


def png_extreme_aspect(width: int = 64, height: int = 600_000) -> bytes:
    """A 1-bit ``width`` x ``height`` PNG of zeros (38.4 MP, under the pixel limit; 9,375:1)."""
    row = b"\x00" * (1 + (width + 7) // 8)
    return png_header(width, height, idat=zlib.compress(row * height, 9))


def jpeg_extreme_aspect() -> bytes:
    """A real photo squeezed to 64 x 2000 (31:1): real data, only the shape is wrong."""
    return encode("JPEG", photo().resize((64, 2000)), quality=90)


# Real photos every default must accept (item: "real photos pass").
PHONE_PHOTOS: dict[str, Callable[[], bytes]] = {
    "50 MP phone jpeg": lambda: phone_jpeg(8160, 6144),
    "48 MP phone jpeg": lambda: phone_jpeg(8000, 6000),
    "36 MP progressive 4:4:4 jpeg": lambda: phone_jpeg(7360, 4912, progressive=True, subsampling=0),
    "12 MP phone webp": phone_webp,
}

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
    Hostile("webp 20 MB EXIF bomb", big_exif_bomb, REJECT, ("metadata_too_large",)),
    Hostile("png 20 MB EXIF bomb", lambda: big_exif_bomb("PNG"), REJECT, ("metadata_too_large",)),
    Hostile(
        "jpeg EXIF 5,000 entries on one offset",
        lambda: with_exif("JPEG", exif_offset_bomb()),
        REJECT,
        ("metadata_too_large",),
    ),
    Hostile("arithmetic-coded jpeg", jpeg_arithmetic, REJECT, ("unsupported_format",)),
    # zero and absurd sizes
    Hostile("png 0x0", zero_size_png, REJECT, ("corrupt", "too_small")),
    Hostile("jpeg 64x0", lambda: jpeg_declaring(64, 0), REJECT, ("corrupt", "too_small", "truncated")),
    Hostile("jpeg 0x64", lambda: jpeg_declaring(0, 64), REJECT, ("corrupt", "too_small", "truncated")),
    Hostile(
        "jpeg 1x65535",
        lambda: jpeg_declaring(1, 65535),
        REJECT,
        ("corrupt", "too_small", "truncated", "extreme_aspect_ratio"),
    ),
    Hostile("png 1x1", lambda: tiny_png(1), REJECT, ("too_small",)),
    Hostile("png without IDAT", png_no_idat, REJECT, ("corrupt", "truncated")),
    Hostile("jpeg without scan", jpeg_only_markers, REJECT, ("corrupt", "truncated")),
    # bombs and floods
    Hostile("png 900 MP bomb", decompression_bomb_png, REJECT, ("too_many_pixels",)),
    Hostile("png 36 MP zero bomb", png_bomb_within_pixel_limit, REJECT, ("implausible_size",)),
    Hostile("jpeg 3.6 GP flood", pixel_flood_jpeg, REJECT, ("too_many_pixels",)),
    Hostile(
        "progressive jpeg 3.6 GP flood",
        lambda: jpeg_declaring(60000, 60000, progressive=True),
        REJECT,
        ("too_many_pixels",),
    ),
    Hostile(
        "webp 16k x 16k canvas", lambda: webp_declaring(16383, 16383), REJECT, ("too_many_pixels", "corrupt")
    ),
    # built to make decoders loop or allocate
    Hostile("jpeg 10,000 duplicated AC scans", jpeg_duplicated_ac_scans, REJECT, ("too_many_scans",)),
    Hostile("jpeg 5 MB of 0xFF fill bytes", jpeg_fill_bytes, REJECT, ("excessive_padding",)),
    Hostile("jpeg 2,000,000 empty COM segments", jpeg_empty_comments, REJECT, ("too_many_segments",)),
    Hostile("png 600,000 empty chunks", png_empty_chunks, REJECT, ("too_many_segments",)),
    Hostile("webp 34 bytes lossless 6300x6300 canvas", webp_lossless_canvas, REJECT, ("implausible_size",)),
    Hostile(
        "webp 3400x3400 canvas (11.6 MP)",
        lambda: webp_lossless_canvas(3400, 3400),
        REJECT,
        ("implausible_size",),
    ),
    Hostile("webp 14.4 MP canvas padded to 16 KB", webp_padded_canvas, REJECT, ("too_costly",)),
    Hostile("png 64x600000 aspect", png_extreme_aspect, REJECT, ("extreme_aspect_ratio",)),
    Hostile("jpeg 64x2000 aspect", jpeg_extreme_aspect, REJECT, ("extreme_aspect_ratio",)),
    # truncations
    Hostile("progressive jpeg cut at 50%", progressive_truncated(0.5), REJECT, ("truncated", "corrupt")),
    Hostile("progressive jpeg cut at 95%", progressive_truncated(0.95), REJECT, ("truncated", "corrupt")),
    Hostile("progressive jpeg header only", progressive_truncated(0.02), REJECT, ("truncated", "corrupt")),
    Hostile("jpeg cut at 50%", truncated_jpeg, REJECT, ("truncated", "corrupt")),
    Hostile("png cut at 50%", truncated_png, REJECT, ("truncated", "corrupt")),
    Hostile("webp cut at 50%", lambda: webp_from_photo()[:2000], REJECT, ("truncated", "corrupt")),
    # not images at all
    Hostile("empty", lambda: EMPTY, REJECT, ("empty",)),
    Hostile("text", lambda: TEXT, REJECT, ("unsupported_format",)),
    Hostile("html", lambda: HTML, REJECT, ("unsupported_format",)),
    Hostile("svg", lambda: SVG, REJECT, ("unsupported_format",)),
    Hostile("pdf", lambda: PDF, REJECT, ("unsupported_format",)),
    Hostile("random binary", lambda: RANDOM_BINARY, REJECT, ("unsupported_format",)),
    Hostile("gif", gif, REJECT, ("unsupported_format",)),
    Hostile("tiff", tiff, REJECT, ("unsupported_format",)),
    Hostile("bmp", bmp, REJECT, ("unsupported_format",)),
    Hostile("jpeg magic only", lambda: b"\xff\xd8\xff", REJECT, ("corrupt", "truncated")),
    Hostile("png magic only", lambda: b"\x89PNG\r\n\x1a\n", REJECT, ("corrupt", "truncated")),
    Hostile("webp magic only", lambda: b"RIFF\x00\x00\x00\x00WEBP", REJECT, ("corrupt", "truncated")),
)

# Files whose content and extension disagree: the content decides (key -> bytes -> expected format).
WRONG_EXTENSIONS: tuple[tuple[str, Callable[[], bytes], str | None], ...] = (
    ("images/Recycling/really-a-png.jpg", png_from_photo, "PNG"),
    ("images/Compost/really-a-webp.png", webp_from_photo, "WEBP"),
    ("images/Landfill/really-a-jpeg.webp", lambda: real_photo_bytes("metal"), "JPEG"),
    ("images/Landfill/no-extension", lambda: real_photo_bytes("paper"), "JPEG"),
    ("images/Compost/page.jpg", lambda: HTML, None),
    ("images/Recycling/archive.jpeg", zip_archive, None),
)
