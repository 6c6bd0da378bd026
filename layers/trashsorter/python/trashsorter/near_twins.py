"""Near-twins: photos that look the same without being the same bytes (a re-save, a resize, a second shot).

* **Difference hash** (dHash, Pillow only): the photo, EXIF orientation applied, reduced, turned grey and
  histogram-equalised, shrunk to 17x16 pixels; bit ``i`` says whether pixel ``i`` is brighter than its
  right-hand neighbour: 256 bits, 64 hex digits. The ingest step computes it from the image it has just
  decoded (:func:`difference_hash`) and records it as ``phash``. Equalising matters on plain backgrounds:
  on the 2,467 TrashNet photos a plain 64-bit dHash put 107 pairs of different materials within 4 bits (flat
  white backgrounds hash alike); this one finds 7 pairs within 12 bits, 3 of them the same picture filed
  under two materials (distance 0). 16-bit and float images (modes ``I``/``F``) get none.
* **Near-twins**: two hashes at most :data:`MAX_DISTANCE` bits apart (Hamming distance). Exact copies are
  the catalogue's duplicates and conflicts (same SHA-256); near-twins are what that misses.
* **Lookup without comparing all pairs**: the 256 bits are cut into :data:`BANDS` bands; two hashes at most
  ``BANDS - 1`` bits apart agree on at least one whole band (pigeonhole), so only hashes sharing a band
  value are compared: O(n) dictionary work for n photos, in memory, no request.
* **Groups**: near-twin pairs joined transitively (union-find). The snapshot keeps a group on one side of
  the split, and holds out of training every group that spans two labels (a *near conflict*: flagged with
  the twin named, left for a person, like an exact conflict). Derived wherever it is needed from the
  accepted records' ``phash`` (the snapshot reads them all anyway), never stored, so deleting one twin
  resolves the flag at once.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

SIDE = 16  # 16x16 comparisons
HASH_BITS = SIDE * SIDE
WORK_SIDE = 64  # px: the image is reduced to between this and twice this before it is hashed
MAX_DISTANCE = 12  # bits of 256 (~5 %): a re-encode, resize or the same shot; other shots differ more
BANDS = MAX_DISTANCE + 1
_DIGITS = HASH_BITS // 4
_BAND_SLICES = [  # whole hex digits per band (5 or 4 of 64)
    (i * _DIGITS // BANDS, (i + 1) * _DIGITS // BANDS) for i in range(BANDS)
]
_ORIENTATION_OPS = {2: (0,), 3: (3,), 4: (1,), 5: (5,), 6: (4,), 7: (6,), 8: (2,)}  # EXIF -> Transpose


def difference_hash(image: Any, orientation: int = 1) -> str | None:
    """The 256-bit dHash (64 hex digits) of a loaded Pillow image; None for 16-bit / float modes.

    The image is first reduced by an integer factor to at most ~64 px (cheap, no full-size copy), then
    turned grey, equalised, oriented and resized to 17x16.
    """
    from PIL import Image, ImageOps

    if image.mode.startswith(("I", "F")):
        return None
    factor = max(1, min(image.size) // WORK_SIDE)
    small = image.reduce(factor) if factor > 1 else image
    grey = ImageOps.equalize(small.convert("L"))
    for op in _ORIENTATION_OPS.get(orientation, ()):
        grey = grey.transpose(Image.Transpose(op))
    pixels = grey.resize((SIDE + 1, SIDE), Image.Resampling.BOX).tobytes()
    bits = 0
    for row in range(SIDE):
        for col in range(SIDE):
            at = row * (SIDE + 1) + col
            bits = (bits << 1) | (pixels[at] > pixels[at + 1])
    return f"{bits:0{HASH_BITS // 4}x}"


def hash_decoded(image: Any, orientation: int, data: bytes) -> str | None:
    """:func:`difference_hash` of an image the validator has decoded (a JPEG at 1/8 scale, its DCT draft).

    A JPEG whose draft came out under :data:`WORK_SIDE` px (a photo under ~500 px) is decoded again at the
    smallest DCT scale that keeps that many (cheap: the photo is small), so small and large copies of one
    shot are hashed from similar detail.
    """
    from PIL import Image

    if image.format != "JPEG" or min(image.size) >= WORK_SIDE:
        return difference_hash(image, orientation)
    with Image.open(io.BytesIO(data)) as again:
        width, height = again.size
        scale = max(1.0, min(width, height) / WORK_SIDE)
        again.draft(again.mode, (math.ceil(width / scale), math.ceil(height / scale)))
        again.load()
        return difference_hash(again, orientation)


def distance(a: str, b: str) -> int:
    """Bits that differ between two hashes."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


def bands(phash: str) -> list[tuple[int, str]]:
    """(band index, band hex digits) of a hash, flat bands left out: near-twins share at least one band.

    A flat band (every bit 0 or every bit 1: a smooth gradient or a plain background) is shared by many
    unrelated photos, so it is not used to find candidates (on TrashNet, 6 % of photos share one): twins
    whose only equal bands are flat are missed, the price of keeping the lookup O(n).
    """
    out = []
    for index, (start, end) in enumerate(_BAND_SLICES):
        band = phash[start:end]
        if band.strip("0") and band.strip("f"):
            out.append((index, band))
    return out


@dataclass(frozen=True)
class Photo:
    key: str
    label: str
    phash: str


def near_twins(photos: Iterable[Photo]) -> dict[str, list[tuple[str, int]]]:
    """key -> [(twin key, distance)] for every photo with at least one near-twin (band buckets, no scan)."""
    buckets: dict[tuple[int, str], list[Photo]] = {}
    found: dict[str, dict[str, int]] = {}
    for photo in photos:
        if not photo.phash:
            continue
        seen: set[str] = set()
        for band in bands(photo.phash):
            bucket = buckets.setdefault(band, [])
            for other in bucket:
                if other.key in seen:
                    continue
                seen.add(other.key)
                bits = distance(photo.phash, other.phash)
                if bits <= MAX_DISTANCE:
                    found.setdefault(photo.key, {})[other.key] = bits
                    found.setdefault(other.key, {})[photo.key] = bits
            bucket.append(photo)
    return {key: sorted(twins.items()) for key, twins in found.items()}


def twin_groups(photos: Sequence[Photo]) -> list[list[Photo]]:
    """Near-twins joined transitively; only groups of two or more, each sorted by key."""
    twins = near_twins(photos)
    parent = {photo.key: photo.key for photo in photos}

    def root(key: str) -> str:
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for key, others in twins.items():
        for other, _ in others:
            a, b = root(key), root(other)
            if a != b:
                parent[max(a, b)] = min(a, b)
    groups: dict[str, list[Photo]] = {}
    for photo in photos:
        if photo.key in twins:
            groups.setdefault(root(photo.key), []).append(photo)
    return [sorted(group, key=lambda p: p.key) for group in groups.values() if len(group) > 1]


def near_conflicts(groups: Iterable[Sequence[Photo]]) -> dict[str, str]:
    """key -> reason, for every photo of a group spanning two labels (held out of training)."""
    flagged: dict[str, str] = {}
    for group in groups:
        if len({photo.label for photo in group}) < 2:
            continue
        for photo in group:
            others = [f"{p.key} ({p.label})" for p in group if p.label != photo.label]
            flagged[photo.key] = (
                f"looks the same as {', '.join(others)}; not used for training until a person deletes the "
                "wrong one"
            )
    return flagged


def labelled(records: Iterable[Mapping[str, Any]]) -> list[Photo]:
    """Catalogue records (or dicts with key, label, phash) with a hash -> Photos."""
    return [Photo(str(r["key"]), str(r.get("label", "")), str(r["phash"])) for r in records if r.get("phash")]
