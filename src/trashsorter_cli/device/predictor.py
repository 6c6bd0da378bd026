"""The local device's classifier: the edge app's :class:`trashsorter_edge.model.Model` (onnxruntime CPU, no
torch), so the device, the edge app and the trainer's evaluation run THE preprocessing
(:mod:`trashsorter_edge.preprocessing`) and the same graph contract. Errors become the domain's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from trashsorter.errors import DeploymentError, Rejection
from trashsorter_edge.model import Model, ModelError
from trashsorter_edge.preprocessing import UndecodableImage, preprocess

__all__ = ["Classifier", "preprocess"]  # preprocess: THE one the classifier runs (Model.probabilities)


class Classifier:
    """``Classifier(model_dir)``; ``predict`` -> [(label, confidence)], most likely first."""

    def __init__(self, model_dir: Path | str) -> None:
        try:
            self.model = Model(model_dir)
        except ModelError as exc:
            raise DeploymentError(str(exc)) from exc
        self.labels = list(self.model.labels)
        self.image_size = self.model.image_size

    def probabilities(self, images: Sequence[bytes | Image.Image]) -> np.ndarray:
        """[N, classes] probabilities; undecodable bytes raise ``Rejection("undecodable_image", ...)``."""
        try:
            return self.model.probabilities(images)
        except UndecodableImage as exc:
            raise Rejection("undecodable_image", str(exc)) from exc

    def predict(self, image: bytes | Image.Image) -> list[tuple[str, float]]:
        try:
            return self.model.predict(image).ranked
        except UndecodableImage as exc:
            raise Rejection("undecodable_image", str(exc)) from exc
