"""Camera frames (numpy arrays as OpenCV, V4L2, picamera2 and GStreamer deliver them) -> the upright 8-bit
RGB picture that THE preprocessing (:mod:`trashsorter_edge.preprocessing`) classifies.

Every frame a device produces is accepted or refused with :class:`UndecodableImage` (counted and reported
by the app, never fatal):

* grayscale ``HxW`` or ``HxWx1`` -> the grey value on all three channels;
* colour ``HxWx3`` (BGR, OpenCV's order, unless ``bgr=False``) and ``HxWx4`` (BGRA/RGBA: a camera's fourth
  byte is padding, not transparency, so it is dropped);
* 16-bit frames are SCALED to 8 bits over the full 16-bit range with the rule the trainer's decode uses for
  16-bit files (:data:`trashsorter_edge.decoding.SIXTEEN_TO_EIGHT`), never clipped; float frames are taken
  as 0..1; any odd size (1x1, 7x3001) is classified like any other;
* an empty frame (0xN, Nx0), more than 4 channels or another element type is refused.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from trashsorter_edge.decoding import SIXTEEN_TO_EIGHT
from trashsorter_edge.preprocessing import UndecodableImage, to_rgb8


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Any frame's samples -> uint8: 16-bit scaled (not clipped), float 0..1 scaled by 255."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return (array.astype(np.float64) * SIXTEEN_TO_EIGHT + 0.5).astype(np.uint8)
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        return (np.clip(np.nan_to_num(array), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    raise UndecodableImage(f"frame samples of type {array.dtype} (expected uint8, uint16 or float)")


def from_array(frame: Any, *, bgr: bool = True) -> Image.Image:
    """A frame (HxW, HxWx1, HxWx3, HxWx4) -> 8-bit RGB PIL image; a frame that is no picture raises."""
    array = np.asarray(frame)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or 0 in array.shape:
        raise UndecodableImage(f"empty or shapeless frame: shape {array.shape}")
    if array.ndim == 3 and array.shape[2] not in (3, 4):
        raise UndecodableImage(f"a frame with {array.shape[2]} channels (expected 1, 3 or 4)")
    array = to_uint8(array)
    if array.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(array), "L").convert("RGB")
    rgb = array[:, :, 2::-1] if bgr else array[:, :, :3]
    return Image.fromarray(np.ascontiguousarray(rgb), "RGB")


def normalise(image: Image.Image) -> Image.Image:
    """A PIL picture of any mode or size -> 8-bit RGB (:func:`preprocessing.to_rgb8`); 0x0 is refused."""
    if 0 in image.size:
        raise UndecodableImage(f"an empty picture ({image.width}x{image.height})")
    return to_rgb8(image)
