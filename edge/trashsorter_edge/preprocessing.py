"""THE preprocessing of trashsorter: one definition, used by the trainer's evaluation, the local device
and the edge app (Pillow + numpy only, so it ships to the camera without the CLI or torch).

decode (bytes, a PIL image, or an OpenCV BGR frame) -> apply the EXIF orientation -> RGB -> resize so the
SHORT side is ``image_size`` (bilinear) -> centre-crop ``image_size`` x ``image_size`` -> float32 0..1, CHW.

Bytes are decoded by THE bounded decode (:func:`trashsorter_edge.decoding.decode_bounded`, the ingest
step's structure, metadata, memory and CPU bounds; a JPEG through DCT scaling down to a short side of
:data:`DECODE_SHORT_SIDE`), turned by THE orientation reading and converted by THE 8-bit RGB conversion
(:func:`to_rgb8`: 16-bit scaled, alpha flattened onto white), exactly as the snapshot's conversion does.

There is deliberately NO ImageNet mean/std normalisation here: the exported ONNX graph normalises inside
(``trashsorter_trainer.model.TrashClassifier.frozen``). Normalising twice was the old Greengrass
classifier's bug.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from trashsorter_edge.contract import DEFAULT_INPUT_SIZE
from trashsorter_edge.decoding import decode_bounded, to_rgb8, upright
from trashsorter_edge.imagefile import ImageRefused

__all__ = ["IMAGE_SIZE", "UndecodableImage", "decode", "from_bgr", "preprocess", "to_array", "to_rgb8"]

IMAGE_SIZE = DEFAULT_INPUT_SIZE  # model.json names the size of a trained model (contract.card_input_size)
DECODE_SHORT_SIDE = 2 * IMAGE_SIZE  # a training crop of 35 % of the area still has >= 224 px of short side
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
_RESAMPLE = Image.Resampling.BILINEAR


class UndecodableImage(ValueError):
    """The input is not an image Pillow can decode."""


def decode(data: bytes | Image.Image, name: str = "image") -> Image.Image:
    """Bytes (or a PIL image) -> an upright 8-bit RGB image; bytes outside the bounds or not an image raise
    :class:`UndecodableImage` (its message names the refusal's code)."""
    if isinstance(data, Image.Image):
        image = data
    else:
        try:
            image = decode_bounded(data, short_side=DECODE_SHORT_SIDE)
        except ImageRefused as exc:
            raise UndecodableImage(f"cannot decode {name}: {exc.code}: {exc.message}") from exc
    return to_rgb8(upright(image))


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
