"""The formats the domain, the trainer and the edge app exchange, defined once (standard library only).

* ``labels.txt``: one label per line in class-index order (:func:`parse_labels` / :func:`render_labels`);
* the model folder: ``model.onnx``, ``labels.txt``, ``model.json`` (the trainer's card, which names the
  input size) and ``metrics.json`` (:func:`card_input_size` reads the size);
* the metric names the trainer prints and the SageMaker metric definitions, the gate and the reports read;
* the S3 layout (the prefixes below) and the content-address rule of the image store (:func:`object_key`,
  :func:`content_sha256`);
* the class order: the order of ``labels.txt``, which travels with every model. The pipeline writes the
  configured order (``Labels``); the trainer's folder loader (development tools) writes its folder names
  sorted. Nothing reads a class index without the ``labels.txt`` that names it.

The edge app owns this module because the other two already import ``trashsorter_edge``: the Lambdas through
the EdgeAppLayer, the trainer through its sourcedir (``trashsorter_trainer.sourcedir.SHARED_MODULES``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

LABELS_FILE = "labels.txt"
MODEL_FILE = "model.onnx"
CARD_FILE = "model.json"
METRICS_FILE = "metrics.json"
DEFAULT_INPUT_SIZE = 224  # side of the square RGB input when neither the graph nor model.json names it

TRAIN_LOSS = "train:loss"
TRAIN_ACCURACY = "train:accuracy"
VALIDATION_LOSS = "validation:loss"
VALIDATION_ACCURACY = "validation:accuracy"  # the one metric the gate reads
CHAMPION_VALIDATION_ACCURACY = "champion:validation:accuracy"
METRIC_NAMES = (  # printed as name=value by the trainer; SageMaker's metric definitions match them
    TRAIN_LOSS,
    TRAIN_ACCURACY,
    VALIDATION_LOSS,
    VALIDATION_ACCURACY,
    CHAMPION_VALIDATION_ACCURACY,
)

# The S3 layout. The images bucket: what users upload, what devices send back, the snapshots, SageMaker's
# output. The model (DeepLens) bucket: the packaged models.
IMAGES_PREFIX = "images/"  # images/<Label>/...: the source of truth for images
INBOX_PREFIX = "inbox/"  # inbox/<thing>/<frame>: frames a device was unsure about
DATASETS_PREFIX = "datasets/"  # datasets/<dataset id>/{manifest.jsonl, labels.txt, ...}: the snapshots
OBJECTS_PREFIX = f"{DATASETS_PREFIX}objects/"  # datasets/objects/<sha256>.<jpg|png>: every image's bytes once
TRAINING_OUTPUT_PREFIX = "training-output/"  # training-output/<job>/output/model.tar.gz (SageMaker writes)
CHECKPOINTS_PREFIX = "checkpoints/"  # checkpoints/<job>/: SageMaker's checkpoint copy (spot training)
MODELS_PREFIX = "models/"  # models/<job>/...: packaged models, in the model bucket
S3_PREFIXES = (
    IMAGES_PREFIX,
    INBOX_PREFIX,
    DATASETS_PREFIX,
    OBJECTS_PREFIX,
    TRAINING_OUTPUT_PREFIX,
    CHECKPOINTS_PREFIX,
    MODELS_PREFIX,
)
_CONTENT_ADDRESS = re.compile(r"(?:^|/)objects/([0-9a-f]{64})\.[a-z]+$")


def object_key(sha256: str, suffix: str) -> str:
    """The content-addressed key of stored bytes whose SHA-256 is ``sha256`` (``suffix``: jpg or png)."""
    return f"{OBJECTS_PREFIX}{sha256}.{suffix}"


def content_sha256(key: str) -> str | None:
    """The SHA-256 a content-addressed key (``.../objects/<sha256>.<ext>``, also under a channel folder)
    names; None for any other key."""
    match = _CONTENT_ADDRESS.search(key)
    return match.group(1) if match else None


def parse_labels(text: str) -> list[str]:
    """Labels one per line (``<index><TAB><label>`` lines accepted), stripped, blank lines dropped."""
    labels: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        parts = line.split("\t") if "\t" in line else line.split(None, 1)
        if len(parts) == 2 and parts[0].isdigit():
            line = parts[1].strip()
        labels.append(line)
    return labels


def render_labels(labels: Sequence[str]) -> str:
    """One label per line in class-index order, no surrounding whitespace (the camera strips nothing)."""
    return "".join(f"{label.strip()}\n" for label in labels if label.strip())


def read_labels(path: Path | str) -> list[str]:
    """The labels of a ``labels.txt`` file (UTF-8)."""
    return parse_labels(Path(path).read_text(encoding="utf-8"))


def write_labels(path: Path | str, labels: Sequence[str]) -> Path:
    """Write ``labels`` as ``labels.txt`` at ``path``; returns the path."""
    target = Path(path)
    target.write_text(render_labels(labels), encoding="utf-8")
    return target


def card_input_size(model_dir: Path | str, default: int = DEFAULT_INPUT_SIZE) -> int:
    """The input side ``model.json`` names (``input.shape[-1]``), ``default`` when there is no card."""
    card = Path(model_dir) / CARD_FILE
    if not card.is_file():
        return default
    return int(json.loads(card.read_text(encoding="utf-8"))["input"]["shape"][-1])
