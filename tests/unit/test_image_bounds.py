"""One bounded decode everywhere: metadata bounded like pixels, orientation read one way, correct pixels for
every mode, real phone photos accepted, arithmetic JPEGs refused with a hint.

Each test builds the file that showed the problem and runs it through the validator (ingest), the snapshot's
conversion (:func:`trashsorter.dataset.convert_to_jpeg`) and THE preprocessing (trainer, device, predict).
"""

from __future__ import annotations

import io
import random
import struct
import tracemalloc

import numpy as np
import pytest
from PIL import Image, ImageOps

from tests.support import hostile
from trashsorter.dataset import convert_to_jpeg
from trashsorter.errors import Rejection
from trashsorter.validation import REJECTION_CODES, ImageInfo, validate_image
from trashsorter_edge import preprocessing
from trashsorter_edge.decoding import decode_bounded, orientation, to_rgb8, upright
from trashsorter_edge.imagefile import MAX_EXIF_BYTES, ImageRefused, exif_orientation

LIMITS = {"max_pixels": 120_000_000, "min_side": 64}


def rejection(data: bytes) -> Rejection:
    with pytest.raises(Rejection) as caught:
        validate_image(data, **LIMITS)  # type: ignore[arg-type]
    assert caught.value.code in REJECTION_CODES
    return caught.value


# ------------------------------------------------------------------ metadata is bounded like pixels

METADATA_BOMBS = {
    "webp 20 MB EXIF": lambda: hostile.big_exif_bomb("WEBP"),
    "png 20 MB EXIF": lambda: hostile.big_exif_bomb("PNG"),
    "jpeg EXIF of 5,000 entries on one offset": lambda: hostile.with_exif("JPEG", hostile.exif_offset_bomb()),
    "jpeg EXIF declaring 60 MB of values": lambda: hostile.with_exif("JPEG", hostile.exif_offset_bomb(1000)),
    "png EXIF of 2,000 entries": lambda: hostile.with_exif("PNG", hostile.exif_many_entries()),
    "webp 5 MB XMP": lambda: hostile.encode(
        "WEBP", hostile.photo().resize((128, 96)), xmp=b"<x/>" * 1_310_720
    ),
    "png 2 MB ICC profile": lambda: hostile.encode(
        "PNG", icc_profile=random.Random(0).randbytes(2 * 1024 * 1024)
    ),
}
WHICH = {
    "webp 20 MB EXIF": "EXIF metadata is 20.0 MB; the limit is 64 KB",
    "png 20 MB EXIF": "EXIF metadata is 20.0 MB; the limit is 64 KB",
    "jpeg EXIF of 5,000 entries on one offset": "EXIF directories hold more than 1024 entries",
    "jpeg EXIF declaring 60 MB of values": "EXIF entries declare 57.2 MB of values; the limit is 256 KB",
    "png EXIF of 2,000 entries": "EXIF directories hold more than 1024 entries",
    "webp 5 MB XMP": "XMP metadata is 5.0 MB; the limit is 4.0 MB",
    "png 2 MB ICC profile": "ICC profile metadata is ",
}


@pytest.mark.parametrize("name", sorted(METADATA_BOMBS))
def test_metadata_bombs_are_refused_at_ingest_saying_which_metadata(name: str) -> None:
    data = METADATA_BOMBS[name]()
    tracemalloc.start()
    refused = rejection(data)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert refused.code == "metadata_too_large"
    assert refused.message.startswith(WHICH[name]), refused.message
    assert peak < 4 * 1024 * 1024  # refused from the structure walk: no block copied, nothing parsed


@pytest.mark.parametrize("name", sorted(METADATA_BOMBS))
def test_every_decode_outside_ingest_refuses_the_same_metadata_bomb(name: str) -> None:
    data = METADATA_BOMBS[name]()
    with pytest.raises(Rejection, match=r"metadata is|entries"):
        convert_to_jpeg(data)  # the snapshot's conversion
    with pytest.raises(preprocessing.UndecodableImage, match="metadata_too_large"):
        preprocessing.preprocess(data)  # the trainer, the local device, trashsorter predict
    with pytest.raises(ImageRefused) as caught:
        decode_bounded(data)
    assert caught.value.code == "metadata_too_large"


def test_camera_metadata_within_the_limits_passes() -> None:
    camera_exif = hostile.exif_many_entries(150)  # a phone photo has 60 to 150 entries
    assert len(camera_exif) < MAX_EXIF_BYTES
    for fmt in ("JPEG", "PNG", "WEBP"):
        assert validate_image(hostile.with_exif(fmt, camera_exif), **LIMITS).format == fmt  # type: ignore[arg-type]
    icc = hostile.encode("JPEG", icc_profile=bytes(200_000))  # spans four APP2 segments
    assert validate_image(icc, **LIMITS).format == "JPEG"  # type: ignore[arg-type]


# ------------------------------------------------------------------ orientation read one way


def test_orientation_stored_as_a_fraction_is_read_the_same_by_validator_trainer_and_snapshot() -> None:
    data = hostile.with_exif("JPEG", hostile.exif_orientation_fraction((6, 1)))
    stored = Image.open(io.BytesIO(data))
    assert stored.size == (288, 384)
    assert validate_image(data, **LIMITS) == ImageInfo("JPEG", "RGB", 384, 288)  # type: ignore[arg-type]
    assert preprocessing.decode(data).size == (384, 288)  # the trainer turns it as the validator counts it
    assert Image.open(io.BytesIO(convert_to_jpeg(data))).size == (384, 288)
    turned = stored.convert("RGB").transpose(Image.Transpose.ROTATE_270)  # orientation 6, as a SHORT turns
    assert np.array_equal(np.asarray(preprocessing.decode(data)), np.asarray(turned))


@pytest.mark.parametrize(
    ("value", "expected"), [((6, 1), 6), ((12, 2), 6), ((3, 1), 3), ((13, 2), 1), ((6, 0), 1), ((9, 1), 1)]
)
def test_exif_orientation_accepts_whole_fractions_only(value: tuple[int, int], expected: int) -> None:
    assert exif_orientation(hostile.exif_orientation_fraction(value)) == expected


@pytest.mark.parametrize("turn", range(1, 9))
def test_upright_turns_as_pillows_exif_transpose(turn: int) -> None:
    with Image.open(io.BytesIO(hostile.exif_rotated_jpeg("glass", turn))) as image:
        image.load()
        assert orientation(image) == turn
        ours = np.asarray(upright(image))
        pillows = np.asarray(ImageOps.exif_transpose(image))
    assert np.array_equal(ours, pillows)


def test_broken_exif_means_no_turn() -> None:
    assert exif_orientation(b"Exif\x00\x00II*\x00" + struct.pack("<I", 9999)) == 1
    assert exif_orientation(b"not exif") == 1
    assert exif_orientation(None) == 1


# ------------------------------------------------------------------ correct pixels for every mode


def _image(mode: str) -> Image.Image:
    """A 4x1 image of mode ``mode`` holding dark, mid, light, full values of that mode's range."""
    if mode in ("I;16", "I;16B"):
        values = np.array([[0, 16448, 32896, 65535]], dtype=">u2" if mode == "I;16B" else "<u2")
        return Image.frombytes(mode, (4, 1), values.tobytes())
    if mode == "I":
        return Image.fromarray(np.array([[0, 16448, 32896, 65535]], dtype=np.int32))
    if mode == "F":
        return Image.fromarray(np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32))
    return Image.fromarray(np.array([[0, 64, 128, 255]], dtype=np.uint8)).convert(mode)


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I", "F", "L", "P", "CMYK", "RGB"])
def test_to_rgb8_scales_every_grey_range_to_0_255(mode: str) -> None:
    rgb = to_rgb8(_image(mode))
    assert rgb.mode == "RGB"
    grey = [pixel[0] for pixel in np.asarray(rgb)[0]]
    assert grey[0] == 0 and grey[3] == 255, grey
    assert abs(grey[1] - 64) <= 1 and abs(grey[2] - 128) <= 1, grey


def test_to_rgb8_of_a_bilevel_image() -> None:
    assert np.asarray(to_rgb8(Image.new("1", (2, 1), 1)))[0].tolist() == [[255, 255, 255]] * 2


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA"])
def test_to_rgb8_flattens_alpha_onto_white(mode: str) -> None:
    rgba = Image.new("RGBA", (2, 1), (40, 40, 40, 0))
    rgba.putpixel((1, 0), (40, 40, 40, 255))
    image = rgba.convert(mode) if mode != "PA" else rgba.convert("P").convert("PA")
    if mode == "PA":
        image.putpixel((0, 0), (image.getpixel((0, 0))[0], 0))  # type: ignore[index]
    pixels = np.asarray(to_rgb8(image))[0].tolist()
    assert pixels[0] == [255, 255, 255] and pixels[1] == [40, 40, 40], pixels


def test_palette_with_a_transparent_colour_is_flattened_onto_white() -> None:
    image = Image.new("P", (2, 1), 0)
    image.putpalette([40, 40, 40, 200, 0, 0] + [0] * 762)
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 0
    assert np.asarray(to_rgb8(image))[0].tolist() == [[255, 255, 255], [200, 0, 0]]


def test_a_16_bit_grey_png_trains_as_its_greys_not_as_white() -> None:
    data = hostile.png16(300, 200)
    with Image.open(io.BytesIO(data)) as raw:
        expected = np.asarray(raw, dtype=np.float64) / 65535.0
    rgb = np.asarray(preprocessing.decode(data), dtype=np.float64) / 255.0
    assert abs(rgb[..., 0].mean() - expected.mean()) < 0.01  # was 0.996 (99.6 % clipped to white)
    assert (rgb == 1.0).mean() < 0.01
    snapshot = np.asarray(Image.open(io.BytesIO(convert_to_jpeg(data))).convert("L"), dtype=np.float64)
    assert abs(snapshot.mean() / 255.0 - expected.mean()) < 0.02  # the snapshot's JPEG holds the same greys


# ------------------------------------------------------------------ real photos pass, arithmetic JPEG hint


def test_arithmetic_coded_jpeg_is_unsupported_with_a_hint() -> None:
    refused = rejection(hostile.jpeg_arithmetic())
    assert refused.code == "unsupported_format"
    assert refused.message.startswith("unsupported format: arithmetic-coded JPEG. Re-save it as a standard")


def test_preprocess_decodes_a_large_jpeg_through_dct_scaling_to_the_short_side_it_needs() -> None:
    big = hostile.encode("JPEG", hostile.photo().resize((2304, 3072)), quality=85)
    image = preprocessing.decode(big)
    assert min(image.size) >= preprocessing.DECODE_SHORT_SIDE
    assert image.size == (576, 768)  # 1/4 scale: 1/8 would leave 288 px
    small = preprocessing.decode(hostile.real_photo_bytes())
    assert small.size == (288, 384)  # TrashNet photos are decoded in full, as before
