from __future__ import annotations

import math
import tracemalloc
from collections.abc import Callable

import pytest

from tests.support import hostile
from trashsorter.errors import Rejection
from trashsorter.validation import (
    DECODE_MEMORY_BUDGET,
    HEIC_HINT,
    MAX_JPEG_PADDING,
    MAX_JPEG_SCANS,
    MAX_JPEG_SEGMENTS,
    MAX_PNG_OTHER_CHUNKS,
    ImageInfo,
    check_object_size,
    decode_bounded,
    decode_memory,
    validate_image,
)
from trashsorter_edge.decoding import coefficient_bytes as _coefficient_bytes
from trashsorter_edge.imagefile import _scan_jpeg

LIMITS = {"max_pixels": 40_000_000, "min_side": 64}


def valid(data: bytes) -> ImageInfo:
    return validate_image(data, **LIMITS)


def rejected(data: bytes, **limits: float) -> Rejection:
    with pytest.raises(Rejection) as info:
        validate_image(data, **{**LIMITS, **limits})  # type: ignore[arg-type]
    return info.value


@pytest.mark.parametrize("material", ["cardboard", "glass", "metal", "paper", "plastic", "trash"])
def test_real_trashnet_photos_are_accepted(material: str) -> None:
    info = valid(hostile.real_photo_bytes(material))
    assert info == ImageInfo(format="JPEG", mode="RGB", width=288, height=384)


def test_png_and_webp_converted_from_a_real_photo_are_accepted() -> None:
    assert valid(hostile.png_from_photo()) == ImageInfo("PNG", "RGB", 288, 384)
    assert valid(hostile.webp_from_photo()) == ImageInfo("WEBP", "RGB", 288, 384)


@pytest.mark.parametrize(
    ("make", "fmt", "mode"),
    [
        (hostile.cmyk_jpeg, "JPEG", "CMYK"),
        (hostile.palette_png, "PNG", "P"),
        (hostile.rgba_png, "PNG", "RGBA"),
    ],
)
def test_unusual_modes_are_fine_and_recorded(make: Callable[[], bytes], fmt: str, mode: str) -> None:
    info = valid(make())
    assert (info.format, info.mode, info.width, info.height) == (fmt, mode, 288, 384)


def test_sixteen_bit_png_is_accepted_with_its_mode() -> None:
    assert valid(hostile.png16(120, 90)) == ImageInfo("PNG", "I;16", 120, 90)


def test_exif_orientation_swaps_width_and_height() -> None:
    assert valid(hostile.exif_rotated_jpeg(orientation=6)) == ImageInfo("JPEG", "RGB", 384, 288)
    assert valid(hostile.exif_rotated_jpeg(orientation=3)) == ImageInfo("JPEG", "RGB", 288, 384)


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (hostile.TEXT, "text"),
        (hostile.HTML, "HTML"),
        (hostile.SVG, "SVG"),
        (hostile.PDF, "PDF"),
        (hostile.RANDOM_BINARY, "unknown"),
        (hostile.gif(), "GIF"),
        (hostile.tiff(), "TIFF"),
        (hostile.bmp(), "BMP"),
    ],
    ids=["text", "html", "svg", "pdf", "binary", "gif", "tiff", "bmp"],
)
def test_other_formats_are_refused_by_content(data: bytes, what: str) -> None:
    rejection = rejected(data)
    assert rejection.code == "unsupported_format"
    assert rejection.message == f"unsupported format: {what}"


def test_html_named_png_is_judged_by_content_not_name() -> None:
    _, data = hostile.html_named_png()
    assert rejected(data).message == "unsupported format: HTML"


def test_empty_bytes_are_refused() -> None:
    assert rejected(hostile.EMPTY).code == "empty"


@pytest.mark.parametrize("make", [hostile.truncated_jpeg, hostile.truncated_png])
def test_truncated_files_are_refused_by_a_real_decode(make: Callable[[], bytes]) -> None:
    rejection = rejected(make())
    assert rejection.code == "truncated"
    assert "truncated" in rejection.message


def test_zero_size_png_is_corrupt_without_object_reprs_in_the_message() -> None:
    rejection = rejected(hostile.zero_size_png())
    assert rejection.code == "corrupt"
    assert "0x" not in rejection.message


def test_tiny_image_is_too_small() -> None:
    rejection = rejected(hostile.tiny_png(16))
    assert rejection.code == "too_small"
    assert rejection.message == "image is 16x16; the shortest side must be at least 64 px"


def test_decompression_bomb_and_pixel_flood_are_refused_without_allocating_them() -> None:
    bomb, flood = hostile.decompression_bomb_png(), hostile.pixel_flood_jpeg()
    tracemalloc.start()
    try:
        assert rejected(bomb).code == "too_many_pixels"
        assert rejected(flood).code == "too_many_pixels"
        # under Pillow's own bomb limit but over ours: refused from the header by our pixel budget
        mid = rejected(hostile.png_header(8000, 8000), max_pixels=40_000_000)
        assert mid.code == "too_many_pixels"
        assert mid.message == "image is 8000x8000 = 64.0 MP; the limit is 40.0 MP"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 1024 * 1024  # a 900 MP bitmap would be ~110 MB even at 1 bit per pixel


def test_real_photo_over_a_small_pixel_budget_is_refused() -> None:
    assert rejected(hostile.real_photo_bytes(), max_pixels=100_000).code == "too_many_pixels"


@pytest.mark.parametrize(("size", "code"), [(0, "empty"), (20 * 1024 * 1024 + 1, "too_large")])
def test_object_size_from_the_event(size: int, code: str) -> None:
    with pytest.raises(Rejection) as info:
        check_object_size(size, 20 * 1024 * 1024)
    assert info.value.code == code


def test_too_large_message_reads_in_megabytes() -> None:
    with pytest.raises(Rejection) as info:
        check_object_size(int(25.3 * 1024 * 1024), 20 * 1024 * 1024)
    assert info.value.message == "object is 25.3 MB; the limit is 20.0 MB"
    check_object_size(20 * 1024 * 1024, 20 * 1024 * 1024)  # exactly the limit is fine


@pytest.mark.parametrize("cut", [3, 10, 100, 700, 2000])
def test_any_prefix_of_a_real_photo_only_ever_raises_rejection(cut: int) -> None:
    data = hostile.real_photo_bytes("metal")[:cut]
    assert rejected(data).code in {"truncated", "corrupt", "unsupported_format"}


def test_validation_does_not_import_pillow_at_module_import() -> None:
    import subprocess
    import sys

    code = "import sys, trashsorter.validation, trashsorter.keys; print('PIL' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ------------------------------------------------------------------ bounds before decoding


def test_heic_is_refused_with_the_hint_how_to_fix_it() -> None:
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64
    rejection = rejected(heic)
    assert rejection.code == "unsupported_format"
    assert rejection.message == f"unsupported format: HEIC. {HEIC_HINT}"
    assert "Most Compatible" in rejection.message and "JPEG" in rejection.message


def test_aspect_ratio_limit_is_a_parameter() -> None:
    wide = hostile.encode("JPEG", hostile.photo().resize((1200, 100)))  # 12:1
    assert rejected(wide).code == "extreme_aspect_ratio"
    assert rejected(wide).message == "image is 1200x100, 12.0:1; the limit is 10:1"
    assert valid_with(wide, max_aspect_ratio=12.0).width == 1200
    assert rejected(wide, max_aspect_ratio=11.9).code == "extreme_aspect_ratio"


def valid_with(data: bytes, **limits: float) -> ImageInfo:
    return validate_image(data, **{**LIMITS, **limits})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("scans", "accepted"), [(DEFAULT_SCANS := 10, True), (MAX_JPEG_SCANS, True), (MAX_JPEG_SCANS + 1, False)]
)
def test_scan_limit_counts_scans_exactly(scans: int, accepted: bool) -> None:
    data = hostile.progressive_jpeg()
    segments = hostile.jpeg_segments(data)
    assert sum(marker == 0xDA for marker, _, _ in segments) == DEFAULT_SCANS  # libjpeg's script
    last_scan = max((s for s in segments if s[0] == 0xDA), key=lambda s: s[1])
    extra = data[last_scan[1] : last_scan[2]] * (scans - DEFAULT_SCANS)
    crafted = data[: last_scan[2]] + extra + data[last_scan[2] :]
    if accepted:
        assert valid(crafted).format == "JPEG"
    else:
        assert rejected(crafted).code == "too_many_scans"


def test_padding_and_segment_limits_are_exact() -> None:
    photo = hostile.real_photo_bytes()
    assert valid(photo[:2] + b"\xff" * MAX_JPEG_PADDING + photo[2:]).format == "JPEG"
    assert rejected(photo[:2] + b"\xff" * (MAX_JPEG_PADDING + 1) + photo[2:]).code == "excessive_padding"
    own = sum(1 for marker, _, _ in hostile.jpeg_segments(photo) if marker != 0xD9)
    fits = photo[:2] + b"\xff\xfe\x00\x02" * (MAX_JPEG_SEGMENTS - own) + photo[2:]
    assert valid(fits).format == "JPEG"
    assert rejected(b"\xff\xfe\x00\x02".join([fits[:2], fits[2:]])).code == "too_many_segments"


def test_png_chunk_limit() -> None:
    assert valid(hostile.png_empty_chunks(MAX_PNG_OTHER_CHUNKS - 4)).format == "PNG"
    assert rejected(hostile.png_empty_chunks(MAX_PNG_OTHER_CHUNKS)).code == "too_many_segments"


def test_progressive_coefficient_memory_is_estimated_from_the_header() -> None:
    # libjpeg keeps every DCT coefficient of a progressive JPEG: 2 bytes each, 64 per 8x8 block.
    layout = _scan_jpeg(hostile.progressive_jpeg())
    assert layout.progressive and layout.scans == 10 and layout.sampling == ((2, 2), (1, 1), (1, 1))
    w, h = 7744, 5164  # 40 MP
    luma, chroma = (w // 8) * math.ceil(h / 8), math.ceil(w / 16) * math.ceil(h / 16)
    assert _coefficient_bytes(layout, w, h) == (luma + 2 * math.ceil(chroma)) * 128
    assert decode_memory("JPEG", w, h, _coefficient_bytes(layout, w, h)) < DECODE_MEMORY_BUDGET  # 4:2:0 fits
    full = type(layout)(scans=10, progressive=True, sampling=((1, 1), (1, 1), (1, 1)))  # 4:4:4 does not
    assert decode_memory("JPEG", w, h, _coefficient_bytes(full, w, h)) > DECODE_MEMORY_BUDGET
    assert decode_memory("WEBP", 4032, 3024) < DECODE_MEMORY_BUDGET < decode_memory("WEBP", 3800, 3800)


def test_implausible_size_only_above_the_floor() -> None:
    small = hostile.webp_lossless_canvas(1000, 1000)  # 1 MP in 34 bytes: cheap, judged by decoding
    assert valid(small) == ImageInfo("WEBP", "RGB", 1000, 1000)
    rejection = rejected(hostile.webp_lossless_canvas(6300, 6300))
    assert rejection.code == "implausible_size"
    assert rejection.message.startswith("WEBP declares 6300x6300 = 39.7 MP in 34 bytes")


def test_cpu_deadline_turns_a_slow_decode_into_a_rejection(monkeypatch: pytest.MonkeyPatch) -> None:
    import trashsorter_edge.decoding as decoding

    monkeypatch.setattr(decoding, "DECODE_CPU_SECONDS", -1.0)  # the deadline has passed before the first read
    rejection = rejected(hostile.png_from_photo())
    assert rejection.code == "too_costly"
    assert "s of CPU" in rejection.message


def test_decode_bounded_returns_the_whole_image_or_a_rejection() -> None:
    with decode_bounded(hostile.webp_from_photo()) as image:
        assert image.size == (288, 384) and image.getpixel((10, 10)) is not None
    with pytest.raises(Rejection) as info:
        decode_bounded(hostile.webp_padded_canvas(3800, 3800))
    assert info.value.code == "too_costly"
    with pytest.raises(Rejection) as info:
        decode_bounded(hostile.truncated_png())
    assert info.value.code == "truncated"
