"""ONNX classifier for the local device (onnxruntime CPU, no torch).

It uses :func:`trashsorter_trainer.data.preprocess`, the SAME function the trainer evaluates with, and
the graph contract of the trainer: input ``input`` float32 NCHW RGB 0..1 (normalisation inside the graph),
output ``probabilities`` (softmaxed; a graph that outputs logits is softmaxed here).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from trashsorter.errors import DeploymentError, Rejection
from trashsorter_trainer.data import IMAGE_SIZE, preprocess
from trashsorter_trainer.errors import TrainerError


class Classifier:
    """``Classifier(model_dir)`` or ``Classifier(onnx_path, labels)``; ``predict`` -> [(label, conf)]."""

    def __init__(self, model: Path | str, labels: list[str] | Path | str | None = None) -> None:
        import onnxruntime as ort

        path = Path(model)
        onnx_path = path / "model.onnx" if path.is_dir() else path
        if not onnx_path.is_file():
            raise DeploymentError(f"model file {onnx_path} not found")
        if labels is None:
            labels = onnx_path.parent / "labels.txt"
        if isinstance(labels, str | Path):
            labels_path = Path(labels)
            if not labels_path.is_file():
                raise DeploymentError(f"labels file {labels_path} not found")
            labels = [line.strip() for line in labels_path.read_text().splitlines() if line.strip()]
        self.labels = list(labels)
        try:
            self.session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise DeploymentError(f"onnxruntime cannot load {onnx_path.name}: {exc}") from exc
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise DeploymentError(f"expected one graph input, found {[i.name for i in inputs]}")
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        self.softmaxed = self.output_name == "probabilities"
        shape = inputs[0].shape
        self.image_size = shape[-1] if isinstance(shape[-1], int) else self._card_size(onnx_path)
        width = outputs[0].shape[-1]
        if isinstance(width, int) and width != len(self.labels):
            raise DeploymentError(f"model has {width} outputs but labels.txt lists {len(self.labels)} labels")

    @staticmethod
    def _card_size(onnx_path: Path) -> int:
        card = onnx_path.parent / "model.json"
        if card.is_file():
            return int(json.loads(card.read_text())["input"]["shape"][-1])
        return IMAGE_SIZE

    def probabilities(self, images: list[bytes | Image.Image]) -> np.ndarray:
        """[N, classes] probabilities; undecodable bytes raise ``Rejection("undecodable_image", ...)``."""
        try:
            batch = np.stack([preprocess(image, self.image_size) for image in images]).astype(np.float32)
        except TrainerError as exc:
            raise Rejection("undecodable_image", str(exc)) from exc
        out = np.asarray(self.session.run([self.output_name], {self.input_name: batch})[0], dtype=np.float64)
        if not self.softmaxed:
            out = np.exp(out - out.max(axis=1, keepdims=True))
            out /= out.sum(axis=1, keepdims=True)
        return out

    def predict(self, image: bytes | Image.Image) -> list[tuple[str, float]]:
        """Labels with confidences, most likely first."""
        probs = self.probabilities([image])[0]
        order = np.argsort(-probs)
        return [(self.labels[i], float(probs[i])) for i in order]
