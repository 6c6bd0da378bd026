"""Tiny trainings on real TrashNet photos, defined once for every test that needs a trained model.

* :func:`build_tiny_model`: two bins, trained for real in a few seconds; the session fixture ``tiny_model``
  (tests/conftest.py) builds it once per test process and the edge, device and e2e tests share it.
* ``TINY`` / :func:`tiny_samples` / :func:`train_tiny`: the trainer tests' own small training (they check
  what training produces, so each module trains with the settings it is about).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trashsorter_trainer.data import Sample
from trashsorter_trainer.train import TrainConfig, TrainResult, train

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "trashnet"
BINS = (("Compost", "paper"), ("Recycling", "glass"))
TRAIN_PER_BIN = 4
IMAGE_SIZE = 96


@dataclass(frozen=True)
class TinyModel:
    result: TrainResult
    model_dir: Path
    unseen: list[Path]  # photos of the same folders the trainer never saw


def build_tiny_model(out: Path) -> TinyModel:
    samples, unseen = [], []
    for label, folder in BINS:
        paths = sorted((SAMPLES / folder).glob("*.jpg"))
        for i, path in enumerate(paths[: TRAIN_PER_BIN + 1]):
            split = "train" if i < TRAIN_PER_BIN else "validation"
            samples.append(Sample(f"{folder}/{path.name}", label, split, path.read_bytes()))
        unseen.extend(paths[-3:])
    config = TrainConfig(epochs=1, views=1, image_size=IMAGE_SIZE, batch_size=8, threads=2)
    result = train(samples, [label for label, _ in BINS], out, config)
    return TinyModel(result=result, model_dir=out, unseen=unseen)


TINY = TrainConfig(epochs=1, views=1, image_size=128, batch_size=8, threads=2)


def tiny_samples(per_class_train: int = 3, per_class_val: int = 2) -> tuple[list[Sample], list[str]]:
    """Real photos, two bins: Compost (paper) vs Recycling (metal)."""
    samples = []
    for label, folder in (("Compost", "paper"), ("Recycling", "metal")):
        paths = sorted((SAMPLES / folder).glob("*.jpg"))[: per_class_train + per_class_val]
        for i, path in enumerate(paths):
            split = "train" if i < per_class_train else "validation"
            samples.append(Sample(f"{folder}/{path.name}", label, split, path.read_bytes()))
    return samples, ["Compost", "Recycling"]


def train_tiny(out: Path, config: TrainConfig) -> TrainResult:
    """The tiny training; the progress reports it made are kept in ``metrics["_progress_seen"]``."""
    samples, labels = tiny_samples()
    progress: list[dict[str, object]] = []
    result = train(samples, labels, out, config, progress=progress.append)
    result.metrics["_progress_seen"] = progress
    return result
