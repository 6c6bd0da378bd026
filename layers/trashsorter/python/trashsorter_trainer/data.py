"""Images for the local trainer and the device: decoding, THE preprocessing, augmentation, samples.

This module imports only Pillow and numpy (no torch) so the device runtime shares :func:`preprocess` with
the trainer's evaluation: the two cannot drift.

Preprocessing (evaluation and device): decode, apply the EXIF orientation, convert to RGB, resize so the
SHORT side is ``image_size`` (bilinear), centre-crop ``image_size`` x ``image_size``, scale to 0..1 float32,
layout CHW. ImageNet mean/std normalisation happens inside the model graph.

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
from PIL import Image, ImageEnhance, ImageOps, UnidentifiedImageError

from trashsorter_trainer.errors import TrainerError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SIZE = 224
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
SPLITS = ("train", "validation")
_RESAMPLE = Image.Resampling.BILINEAR


@dataclass(frozen=True)
class Sample:
    """One labelled image: ``data`` holds the encoded bytes as stored (JPEG/PNG/WebP)."""

    key: str
    label: str
    split: str
    data: bytes


def decode(data: bytes | Image.Image, name: str = "image") -> Image.Image:
    """Bytes (or a PIL image) -> an upright RGB image; undecodable input raises TrainerError."""
    if isinstance(data, Image.Image):
        image = data
    else:
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            raise TrainerError(f"cannot decode {name}: {exc}") from exc
    try:
        image = ImageOps.exif_transpose(image) or image
    except (OSError, ValueError, SyntaxError):  # a broken EXIF block must not lose the picture
        pass
    return image.convert("RGB") if image.mode != "RGB" else image


def to_array(image: Image.Image) -> np.ndarray:
    """RGB image -> float32 CHW scaled 0..1."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def resize_short_side(image: Image.Image, side: int) -> Image.Image:
    width, height = image.size
    scale = side / min(width, height)
    size = (max(side, round(width * scale)), max(side, round(height * scale)))
    return image if size == image.size else image.resize(size, _RESAMPLE)


def preprocess(image: bytes | Image.Image, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """THE preprocessing shared by trainer evaluation and device: -> float32 [3, size, size], 0..1 RGB."""
    rgb = resize_short_side(decode(image), image_size)
    width, height = rgb.size
    left, top = (width - image_size) // 2, (height - image_size) // 2
    return to_array(rgb.crop((left, top, left + image_size, top + image_size)))


def augment(image: Image.Image, rng: random.Random, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """One random training view of an RGB image -> float32 [3, size, size]."""
    width, height = image.size
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
    view = image.resize((image_size, image_size), _RESAMPLE, box=box)
    if rng.random() < 0.5:
        view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.5:
        view = view.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        view = enhancer(view).enhance(rng.uniform(0.8, 1.2))
    return to_array(view)


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
                samples.append(Sample(key=f"{folder}/{path.name}", label=label, split=split, data=data))
    return samples, sorted(groups)


def load_mapping(path: Path | str) -> dict[str, list[str]]:
    raw = json.loads(Path(path).read_text())
    return {label: list(folders) for label, folders in raw.items() if not label.startswith("_")}
