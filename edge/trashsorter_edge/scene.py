"""A cheap scene-change test: has a new object come in front of the camera since the last frame?

Each frame is shrunk to an ``8x8`` grey thumbnail (128x128 samples, averaged 16x16, less its mean grey so that
a change of light is no change: tens of microseconds for 640x480); the frame is a CHANGE when the mean
absolute difference of its thumbnail against the previous frame's is at least ``threshold`` grey levels
(0..255). Camera noise, JPEG noise, a few pixels of jitter and small changes of light stay below the default;
another object (even with the same label) is above it. ``threshold`` 0 turns the test off.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

SIZE = 8
SAMPLES = 128  # SAMPLES x SAMPLES pixels sampled, averaged into SIZE x SIZE
DEFAULT_THRESHOLD = 10.0  # grey levels, mean over the 8x8 thumbnail


def thumbnail(image: Image.Image) -> np.ndarray:
    """The ``8x8`` grey thumbnail (float32) of a picture of any size."""
    sampled = image.resize((SAMPLES, SAMPLES), Image.Resampling.NEAREST)  # 16384 pixels, not all of them
    grey = np.asarray(sampled.convert("L").resize((SIZE, SIZE), Image.Resampling.BOX), dtype=np.float32)
    return grey - grey.mean()  # a change of light (brightness) is not a new object


class SceneChange:
    """``SceneChange(threshold).changed(image)`` -> True when the picture differs from the previous one."""

    def __init__(self, threshold: float = DEFAULT_THRESHOLD) -> None:
        self.threshold = max(0.0, threshold)
        self._previous: np.ndarray | None = None

    def difference(self, image: Image.Image) -> float:
        """Mean absolute grey difference to the previous picture (0 for the first); remembers this one."""
        current = thumbnail(image)
        previous, self._previous = self._previous, current
        return 0.0 if previous is None else float(np.abs(current - previous).mean())

    def changed(self, image: Image.Image) -> bool:
        if self.threshold <= 0:
            return False
        return self.difference(image) >= self.threshold
