from __future__ import annotations

import tracemalloc
from collections.abc import Callable

import pytest

from tests.unit import hostile
from trashsorter.errors import Rejection
from trashsorter.validation import ImageInfo, check_object_size, validate_image

LIMITS = {"max_pixels": 40_000_000, "min_side": 64}


def valid(data: bytes) -> ImageInfo:
    return validate_image(data, **LIMITS)


def rejected(data: bytes, **limits: int) -> Rejection:
    with pytest.raises(Rejection) as info:
        validate_image(data, **{**LIMITS, **limits})
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
