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
import json
import math
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

import trashsorter_edge.preprocessing as _edge
from trashsorter_edge.preprocessing import (
    IMAGE_EXTENSIONS,
    IMAGE_SIZE,
    preprocess,
    resize_short_side,
    to_array,
)
from trashsorter_trainer.errors import TrainerError

__all__ = ["IMAGE_EXTENSIONS", "IMAGE_SIZE", "preprocess", "resize_short_side", "to_array"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
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
    """THE decode of :mod:`trashsorter_edge.preprocessing`; undecodable input raises TrainerError here."""
    try:
        return _edge.decode(data, name)
    except _edge.UndecodableImage as exc:
        raise TrainerError(str(exc)) from exc


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


_CONTENT_ADDRESS = re.compile(r"(?:^|/)objects/([0-9a-f]{64})\.[a-z]+$")


def verify_content_address(key: str, data: bytes) -> None:
    """A snapshot image is stored at ``datasets/objects/<sha256>.<ext>``: its bytes must hash to that name.

    Keys of snapshots from before content addressing carry no hash and are read as they are.
    """
    match = _CONTENT_ADDRESS.search(key)
    if match is None:
        return
    actual = hashlib.sha256(data).hexdigest()
    if actual != match.group(1):
        raise TrainerError(
            f"image {key} does not hold the snapshot's bytes: its SHA-256 is {actual}, the manifest lists "
            f"{match.group(1)} (the object was changed after the snapshot; take a new snapshot)"
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
                samples.append(Sample(key=f"{folder}/{path.name}", label=label, split=split, data=data))
    return samples, sorted(groups)


def load_mapping(path: Path | str) -> dict[str, list[str]]:
    raw = json.loads(Path(path).read_text())
    return {label: list(folders) for label, folders in raw.items() if not label.startswith("_")}
