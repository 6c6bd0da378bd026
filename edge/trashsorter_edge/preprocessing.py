"""THE preprocessing of trashsorter: one definition, used by the trainer's evaluation, the local device
and the edge app (Pillow + numpy only, so it ships to the camera without the CLI or torch).

decode (bytes, a PIL image, or an OpenCV BGR frame) -> apply the EXIF orientation -> RGB -> resize so the
SHORT side is ``image_size`` (bilinear) -> centre-crop ``image_size`` x ``image_size`` -> float32 0..1, CHW.

There is deliberately NO ImageNet mean/std normalisation here: the exported ONNX graph normalises inside
(``trashsorter_trainer.model.TrashClassifier.frozen``). Normalising twice was the old Greengrass
classifier's bug.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SIZE = 224
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
_RESAMPLE = Image.Resampling.BILINEAR


class UndecodableImage(ValueError):
    """The input is not an image Pillow can decode."""


def decode(data: bytes | Image.Image, name: str = "image") -> Image.Image:
    """Bytes (or a PIL image) -> an upright RGB image; undecodable input raises :class:`UndecodableImage`."""
    if isinstance(data, Image.Image):
        image = data
    else:
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            raise UndecodableImage(f"cannot decode {name}: {exc}") from exc
    try:
        image = ImageOps.exif_transpose(image) or image
    except (OSError, ValueError, SyntaxError):  # a broken EXIF block must not lose the picture
        pass
    return image.convert("RGB") if image.mode != "RGB" else image


def from_bgr(frame: Any) -> Image.Image:
    """An OpenCV frame (uint8 HxWx3 BGR) -> RGB PIL image (camera frames carry no EXIF)."""
    array = np.asarray(frame)
    if array.ndim != 3 or array.shape[2] != 3:
        raise UndecodableImage(f"expected an HxWx3 BGR frame, got shape {array.shape}")
    return Image.fromarray(np.ascontiguousarray(array[:, :, ::-1]), "RGB")


def to_array(image: Image.Image) -> np.ndarray:
    """RGB image -> float32 CHW scaled 0..1."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def short_side_size(size: tuple[int, int], side: int) -> tuple[int, int]:
    """The (width, height) :func:`resize_short_side` gives an image of ``size``."""
    width, height = size
    scale = side / min(width, height)
    return max(side, round(width * scale)), max(side, round(height * scale))


def resize_short_side(image: Image.Image, side: int) -> Image.Image:
    size = short_side_size(image.size, side)
    return image if size == image.size else image.resize(size, _RESAMPLE)


def preprocess(image: bytes | Image.Image, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """THE preprocessing (trainer evaluation, local device, edge app) -> float32 [3, size, size], 0..1."""
    rgb = resize_short_side(decode(image), image_size)
    width, height = rgb.size
    left, top = (width - image_size) // 2, (height - image_size) // 2
    return to_array(rgb.crop((left, top, left + image_size, top + image_size)))
