"""The ONNX model on the device: one onnxruntime session per model version, reloaded when the files change.

A model directory holds ``model.onnx`` and ``labels.txt`` (and optionally ``model.json``, the trainer's card,
and ``metrics.json``). :func:`resolve_model` also takes the package step's ``model.onnx.tar.gz`` or a bundle
folder (``recipe.json`` + ``artifacts/``, as ``trashsorter edge bundle`` writes it) and finds the model id.
Graph contract (the trainer's export): input float32 NCHW RGB 0..1 (normalisation
inside the graph), output ``probabilities`` (a graph that outputs logits is softmaxed here).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from trashsorter_edge.contract import (
    CARD_FILE,
    LABELS_FILE,
    METRICS_FILE,
    MODEL_FILE,
    card_input_size,
    read_labels,
)
from trashsorter_edge.preprocessing import IMAGE_SIZE, preprocess


class ModelError(RuntimeError):
    """The model directory cannot be loaded (missing files, labels do not match the graph, ...)."""


@dataclass(frozen=True)
class Prediction:
    """Probabilities over ``labels`` for one image, most likely first in :attr:`ranked`."""

    labels: tuple[str, ...]
    probabilities: np.ndarray

    @property
    def ranked(self) -> list[tuple[str, float]]:
        order = np.argsort(-self.probabilities, kind="stable")
        return [(self.labels[i], float(self.probabilities[i])) for i in order]


def _model_id(model_dir: Path) -> str:
    for name in (CARD_FILE, METRICS_FILE):
        card = model_dir / name
        if card.is_file():
            try:
                value = json.loads(card.read_text()).get("model_id")
            except (OSError, ValueError, AttributeError):
                continue
            if value:
                return str(value)
    return model_dir.resolve().name


MODEL_ARCHIVE = "model.onnx.tar.gz"
MODEL_MEMBERS = (MODEL_FILE, LABELS_FILE, METRICS_FILE, CARD_FILE)


def _recipe_model_id(recipe: Path) -> str | None:
    try:
        loaded = json.loads(recipe.read_text())
        value = loaded["ComponentConfiguration"]["DefaultConfiguration"].get("ModelId")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return str(value) if value else None


def _extract(archive: Path) -> Path:
    """The model files of ``archive`` in a cache folder named after its content (extracted once)."""
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()[:16]
    out = Path(tempfile.gettempdir()) / f"trashsorter-edge-model-{digest}"
    if (out / MODEL_FILE).is_file() and (out / LABELS_FILE).is_file():
        return out
    partial = Path(tempfile.mkdtemp(prefix=f"{out.name}-", dir=out.parent))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                name = member.name.removeprefix("./")
                source = tar.extractfile(member) if name in MODEL_MEMBERS and member.isfile() else None
                if source is not None:  # a known regular file, written under its own name only
                    with source, open(partial / name, "wb") as out_file:
                        shutil.copyfileobj(source, out_file)
    except (OSError, tarfile.TarError) as exc:
        raise ModelError(f"cannot read the model archive {archive}: {exc}") from exc
    try:
        partial.rename(out)
    except OSError:  # extracted meanwhile by another process
        return out if (out / MODEL_FILE).is_file() else partial
    return out


def resolve_model(path: Path | str) -> tuple[Path, str | None]:
    """A model folder, a ``model.onnx.tar.gz`` or a bundle folder (the model component's, or the app's with
    the model component in ``dependencies/``) -> (model folder, model id or None).

    The id of an archive: its ``model.json``/``metrics.json``, else the bundle's recipe (``ModelId``), else
    the folder it sits in (``models/<job>/model.onnx.tar.gz`` -> ``<job>``)."""
    path = Path(path).expanduser().resolve()
    if path.is_dir() and (path / MODEL_FILE).is_file():
        return path, None
    recipe_id: str | None = None
    if path.is_dir() and not (path / "artifacts" / MODEL_ARCHIVE).is_file():  # the app's bundle: its model
        path = next(iter(sorted((path / "dependencies").glob(f"*/artifacts/{MODEL_ARCHIVE}"))), path)
        path = path.parent.parent if path.name == MODEL_ARCHIVE else path  # component is a dependency
    if path.is_dir() and (path / "artifacts" / MODEL_ARCHIVE).is_file():
        recipe_id = _recipe_model_id(path / "recipe.json")
        path = path / "artifacts" / MODEL_ARCHIVE
    if not (path.is_file() and path.name.endswith((".tar.gz", ".tgz"))):
        raise ModelError(f"{path}: not a model folder (model.onnx + labels.txt), {MODEL_ARCHIVE} or bundle")
    if recipe_id is None and path.parent.name == "artifacts":
        recipe_id = _recipe_model_id(path.parent.parent / "recipe.json")
    model_dir = _extract(path)
    card_id = _model_id(model_dir)
    if card_id != model_dir.name:
        return model_dir, card_id
    return model_dir, recipe_id or path.parent.name


def session_options() -> Any:
    """onnxruntime's options for every session of the edge app and the device: intra-op threads that have
    no work sleep instead of spinning (``session.intra_op.allow_spinning`` 0).

    A camera station classifies a frame, then waits for the next one; spinning threads burn that wait on
    cores that the capture, the live view and the other components need. The edge program on a 30 fps
    MJPEG stream (2 CPUs, every frame classified either way): 17 ms of CPU a frame against 49 ms spinning
    (docs/deploy.md, "CPU of the camera loop").
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class Model:
    """``Model(model_dir)``: the session is created once; :meth:`probabilities` runs a batch."""

    def __init__(self, model_dir: Path | str, model_id: str | None = None) -> None:
        import onnxruntime as ort  # imported here so `--help` works without it

        self.model_dir = Path(model_dir)
        onnx_path = self.model_dir / MODEL_FILE
        labels_path = self.model_dir / LABELS_FILE
        for path in (onnx_path, labels_path):
            if not path.is_file():
                raise ModelError(f"{path} not found")
        self.labels = tuple(read_labels(labels_path))
        self.model_id = model_id or _model_id(self.model_dir)
        try:
            self.session = ort.InferenceSession(
                str(onnx_path), session_options(), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ModelError(f"onnxruntime cannot load {onnx_path}: {exc}") from exc
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise ModelError(f"expected one graph input, found {[i.name for i in inputs]}")
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        self.softmaxed = self.output_name == "probabilities"
        side = inputs[0].shape[-1]
        self.image_size = side if isinstance(side, int) else self._card_size()
        width = outputs[0].shape[-1]
        if isinstance(width, int) and width != len(self.labels):
            raise ModelError(f"model has {width} outputs but labels.txt lists {len(self.labels)} labels")

    def _card_size(self) -> int:
        return card_input_size(self.model_dir, IMAGE_SIZE)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """[N, 3, S, S] float32 (already preprocessed) -> [N, classes] probabilities (float64)."""
        out = np.asarray(self.session.run([self.output_name], {self.input_name: batch})[0], dtype=np.float64)
        if not self.softmaxed:
            out = np.exp(out - out.max(axis=1, keepdims=True))
            out /= out.sum(axis=1, keepdims=True)
        return out

    def probabilities(self, images: Sequence[bytes | Image.Image]) -> np.ndarray:
        """Images (bytes or PIL) -> [N, classes]; undecodable bytes raise ``UndecodableImage``."""
        batch = np.stack([preprocess(image, self.image_size) for image in images]).astype(np.float32)
        return self.run(batch)

    def predict(self, image: bytes | Image.Image) -> Prediction:
        return Prediction(self.labels, self.probabilities([image])[0])


def _fingerprint(model_dir: Path) -> tuple[Any, ...]:
    stats = []
    for name in (MODEL_FILE, LABELS_FILE):
        try:
            st = (model_dir / name).stat()
        except OSError:
            return ()
        stats.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(stats)


class ModelHandle:
    """The current model of a directory; :meth:`current` reloads it when ``model.onnx``/``labels.txt``
    change (a new version deployed), without restarting the process. A broken new version keeps the old
    one and reports the error through ``on_status``."""

    def __init__(
        self,
        model_dir: Path | str,
        on_status: Any = None,
        check_every_s: float = 2.0,
        model_id: str | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.model_id = model_id or None
        self._on_status = on_status or (lambda _status: None)
        self._check_every_s = check_every_s
        self._lock = threading.Lock()
        self._model: Model | None = None
        self._fingerprint: tuple[Any, ...] = ()
        self._checked_at = float("-inf")
        self.reload()

    def reload(self) -> Model | None:
        with self._lock:
            self._checked_at = time.monotonic()
            fingerprint = _fingerprint(self.model_dir)
            if self._model is not None and fingerprint == self._fingerprint:
                return self._model
            self._on_status({"status": "loading", "model_dir": str(self.model_dir)})
            try:
                model = Model(self.model_dir, self.model_id)
            except ModelError as exc:
                self._on_status({"status": "error", "error": str(exc)})
                if self._model is None:
                    raise
                return self._model
            self._model, self._fingerprint = model, fingerprint
            self._on_status({"status": "loaded", "model_id": model.model_id, "labels": list(model.labels)})
            return model

    def current(self) -> Model:
        if time.monotonic() - self._checked_at >= self._check_every_s:
            self.reload()
        assert self._model is not None  # reload() raised otherwise
        return self._model
