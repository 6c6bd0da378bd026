"""Images for the local trainer and the device: decoding, THE preprocessing, augmentation, samples.

THE preprocessing is :mod:`trashsorter_edge.preprocessing` (the edge package ships it to the camera); this
module re-exports it, so the trainer's evaluation, the local device and the edge app run one definition:
decode, apply the EXIF orientation, convert to RGB, resize so the SHORT side is ``image_size`` (bilinear),
centre-crop ``image_size`` x ``image_size``, scale to 0..1 float32, layout CHW. ImageNet mean/std
normalisation happens inside the model graph.

Augmentation (training only): random resized crop (scale 0.35-1, aspect 3/4-4/3), horizontal flip (p=0.5),
vertical flip (p=0.5), brightness/contrast/saturation jitter of +-20 %, all with Pillow.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, UnidentifiedImageError

import trashsorter_edge.preprocessing as _edge
from trashsorter_edge.contract import content_sha256
from trashsorter_edge.preprocessing import (
    IMAGE_EXTENSIONS,
    IMAGE_SIZE,
    preprocess,
    resize_short_side,
    short_side_size,
    to_array,
)
from trashsorter_trainer.errors import TrainerError

__all__ = [
    "IMAGE_EXTENSIONS",
    "IMAGE_SIZE",
    "preprocess",
    "resize_short_side",
    "short_side_size",
    "to_array",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "validation")
_RESAMPLE = Image.Resampling.BILINEAR


@dataclass(frozen=True)
class Sample:
    """One labelled image: ``content`` is the encoded bytes as stored (JPEG/PNG/WebP) or the file holding
    them, read each time :attr:`data` is asked for (the trainer streams photos from the channel folder and
    never keeps them all in memory)."""

    key: str
    label: str
    split: str
    content: bytes | Path

    @property
    def data(self) -> bytes:
        """The encoded bytes (read from the file when ``content`` is a path)."""
        if isinstance(self.content, Path):
            try:
                return self.content.read_bytes()
            except OSError as exc:
                raise TrainerError(f"cannot read {self.key}: {exc}") from exc
        return self.content


def decode(data: bytes | Image.Image, name: str = "image") -> Image.Image:
    """THE decode of :mod:`trashsorter_edge.preprocessing`; undecodable input raises TrainerError here."""
    try:
        return _edge.decode(data, name)
    except _edge.UndecodableImage as exc:
        raise TrainerError(str(exc)) from exc


@dataclass(frozen=True)
class View:
    """The random choices of one augmented view (:func:`draw_view`), applied by :func:`apply_view`: drawn
    in order in the trainer's process, applied wherever the photo is decoded (a data-loader worker)."""

    size: tuple[int, int]  # the (width, height) of the image the choices were drawn for
    box: tuple[int, int, int, int]
    flip_left_right: bool
    flip_top_bottom: bool
    factors: tuple[float, float, float]  # brightness, contrast, saturation


def augment(image: Image.Image, rng: random.Random, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """One random training view of an RGB image -> float32 [3, size, size]."""
    return apply_view(image, draw_view(rng, *image.size), image_size)


def draw_view(rng: random.Random, width: int, height: int) -> View:
    """The random choices of one view of a ``width`` x ``height`` image (the rng is drawn as always)."""
    area = width * height
    box = None
    for _ in range(10):
        target = area * rng.uniform(0.35, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        crop_w, crop_h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            left, top = rng.randint(0, width - crop_w), rng.randint(0, height - crop_h)
            box = (left, top, left + crop_w, top + crop_h)
            break
    if box is None:
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        box = (left, top, left + side, top + side)
    flip_left_right = rng.random() < 0.5
    flip_top_bottom = rng.random() < 0.5
    factors = (rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2))
    return View((width, height), box, flip_left_right, flip_top_bottom, factors)


def apply_view(image: Image.Image, view: View, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """``view``'s crop, flips and colour jitter on ``image`` -> float32 [3, size, size]."""
    if image.size != view.size:
        raise TrainerError(f"a view drawn for a {view.size} image applied to a {image.size} image")
    out = image.resize((image_size, image_size), _RESAMPLE, box=view.box)
    if view.flip_left_right:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if view.flip_top_bottom:
        out = out.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    for enhancer, factor in zip(
        (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color), view.factors, strict=True
    ):
        out = enhancer(out).enhance(factor)
    return to_array(out)


def upright_size(data: bytes, name: str = "image") -> tuple[int, int]:
    """(width, height) of the image :func:`decode` makes of ``data`` (the EXIF orientation applied), read
    from the header without decoding the pixels; a file that is no image raises TrainerError."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            try:
                orientation = image.getexif().get(0x0112)
            except (OSError, ValueError, SyntaxError):  # decode keeps such a picture as it is
                orientation = None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise TrainerError(f"cannot decode {name}: {exc}") from exc
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def verify_content_address(key: str, data: bytes) -> None:
    """A snapshot image is stored at ``datasets/objects/<sha256>.<ext>``: its bytes must hash to that name.

    Keys of snapshots from before content addressing carry no hash and are read as they are.
    """
    expected = content_sha256(key)
    if expected is None:
        return
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise TrainerError(
            f"image {key} does not hold the snapshot's bytes: its SHA-256 is {actual}, the manifest lists "
            f"{expected} (the object was changed after the snapshot; take a new snapshot)"
        )


def hash_split(sha256: str, validation_fraction: float = 0.2) -> str:
    """Deterministic split from the content hash: the first 8 hex digits as a fraction of 2**32."""
    return "validation" if int(sha256[:8], 16) / 0x1_0000_0000 < validation_fraction else "train"


def samples_from_directory(
    root: Path | str,
    mapping: Mapping[str, Iterable[str]] | None = None,
    validation_fraction: float = 0.2,
) -> tuple[list[Sample], list[str]]:
    """Labelled samples from ``root/<folder>/*.jpg`` (hash split) and the sorted label list.

    ``mapping`` maps a label onto the folders it takes (e.g. samples/trashnet/mapping.json); without it,
    every folder is a label. Keys starting with ``_`` in the mapping are comments.
    """
    base = Path(root)
    if mapping is None:
        mapping = {d.name: [d.name] for d in sorted(base.iterdir()) if d.is_dir()}
    groups = {label: list(folders) for label, folders in mapping.items() if not label.startswith("_")}
    samples: list[Sample] = []
    for label in sorted(groups):
        for folder in groups[label]:
            directory = base / folder
            if not directory.is_dir():
                raise TrainerError(f"folder {directory} (label {label}) does not exist")
            for path in sorted(directory.iterdir()):
                if path.suffix.lower() not in IMAGE_EXTENSIONS:
                    continue
                data = path.read_bytes()
                split = hash_split(hashlib.sha256(data).hexdigest(), validation_fraction)
                samples.append(Sample(key=f"{folder}/{path.name}", label=label, split=split, content=path))
    return samples, sorted(groups)


def load_mapping(path: Path | str) -> dict[str, list[str]]:
    raw = json.loads(Path(path).read_text())
    return {label: list(folders) for label, folders in raw.items() if not label.startswith("_")}
