"""Near-twins on real photos: the hash the ingest step records, the split that keeps twins together and the
near conflict (twins under two labels) held out of the snapshot with the twin named."""

from __future__ import annotations

import hashlib
import io

import pytest
from PIL import Image, ImageEnhance

from tests.support import hostile
from trashsorter.dataset import SnapshotImage, assign_splits, near_conflict_reasons, plan_dataset
from trashsorter.near_twins import MAX_DISTANCE, Photo, distance, twin_groups
from trashsorter.validation import validate_image

MATERIALS = ("cardboard", "glass", "metal", "paper", "plastic", "trash")


def phash(data: bytes) -> str:
    info = validate_image(data, max_pixels=40_000_000, min_side=32)
    assert info.phash is not None
    return info.phash


def variant(data: bytes, kind: int) -> bytes:
    """Another file of the same shot: darker, as a PNG, or at half size."""
    with Image.open(io.BytesIO(data)) as im:
        img = im.convert("RGB")
    out = io.BytesIO()
    if kind == 0:
        ImageEnhance.Brightness(img).enhance(0.85).save(out, "JPEG", quality=85)
    elif kind == 1:
        img.save(out, "PNG")
    else:
        img.resize((img.width // 2, img.height // 2)).save(out, "JPEG", quality=90)
    return out.getvalue()


def rotated_with_orientation(data: bytes) -> bytes:
    """The pixels turned 90 degrees, with EXIF orientation 6 saying how to show them upright."""
    with Image.open(io.BytesIO(data)) as im:
        img = im.convert("RGB").transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90, exif=exif.tobytes())
    return out.getvalue()


def image(key: str, label: str, data: bytes) -> SnapshotImage:
    return SnapshotImage(key, hashlib.sha256(data).hexdigest(), label, phash=phash(data))


def test_a_reencoded_resized_or_rotated_copy_is_a_near_twin_and_other_photos_are_not() -> None:
    original = hostile.real_photo_bytes("glass", 0)
    base = phash(original)
    for kind in range(3):
        assert distance(base, phash(variant(original, kind))) <= MAX_DISTANCE, kind
    assert distance(base, phash(rotated_with_orientation(original))) <= MAX_DISTANCE
    others = [
        phash(hostile.real_photo_bytes(m, i)) for m in MATERIALS for i in range(5) if (m, i) != ("glass", 0)
    ]
    assert [distance(base, other) for other in others if distance(base, other) <= MAX_DISTANCE] == []


def test_sixteen_bit_images_get_no_hash_rather_than_a_false_one() -> None:
    assert validate_image(hostile.png16(), max_pixels=40_000_000, min_side=32).phash is None


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.8])
def test_near_twins_never_straddle_the_split(fraction: float) -> None:
    images, groups = [], []
    for m, material in enumerate(("cardboard", "glass", "paper")):
        label = ("Compost", "Landfill", "Recycling")[m]
        for i in range(6):
            shot = hostile.real_photo_bytes(material, i)
            copies = [shot, variant(shot, 1), variant(shot, 2)]
            keys = [f"images/{label}/{material}-{i}-{n}.img" for n in range(len(copies))]
            images += [image(key, label, data) for key, data in zip(keys, copies, strict=True)]
            groups.append(keys)
    found = twin_groups([Photo(img.key, img.label, img.phash) for img in images])
    assert sorted(sorted(p.key for p in group) for group in found) == sorted(sorted(g) for g in groups)

    sides = assign_splits(images, fraction)
    assert set(sides.values()) == {"train", "validation"}
    for keys in groups:
        assert len({sides[key] for key in keys}) == 1, keys
    # The hash rule alone (no near-twin grouping) would have split some of them.
    alone = assign_splits([SnapshotImage(i.key, i.sha256, i.label) for i in images], fraction)
    assert any(len({alone[key] for key in keys}) > 1 for keys in groups)


def test_a_near_twin_pair_under_two_labels_is_held_out_with_the_twin_named() -> None:
    shot = hostile.real_photo_bytes("plastic", 2)
    twin = image("images/Recycling/bottle.jpg", "Recycling", shot)
    other = image("images/Landfill/bottle-again.jpg", "Landfill", variant(shot, 0))
    rest = [
        image(f"images/{label}/{material}-{i}.jpg", label, hostile.real_photo_bytes(material, i))
        for label, material in (("Recycling", "glass"), ("Landfill", "trash"))
        for i in range(3)
    ]
    reasons = near_conflict_reasons([twin, other, *rest])
    assert set(reasons) == {twin.key, other.key}
    assert "images/Landfill/bottle-again.jpg (Landfill)" in reasons[twin.key]
    assert "images/Recycling/bottle.jpg (Recycling)" in reasons[other.key]

    plan = plan_dataset(
        [twin, other, *rest], labels=["Landfill", "Recycling"], validation_fraction=0.2, bucket="b"
    )
    assert sorted(e.key for e in plan.entries) == sorted(img.key for img in rest)
    # Deleting either one resolves it: the other trains again.
    plan = plan_dataset([twin, *rest], labels=["Landfill", "Recycling"], validation_fraction=0.2, bucket="b")
    assert twin.key in {e.key for e in plan.entries}
