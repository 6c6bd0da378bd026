"""The tiny model the edge tests share: two bins, real TrashNet photos, trained for real in a few seconds
(fixture ``tiny_model`` in tests/edge/conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trashsorter_trainer.train import TrainResult

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "trashnet"
BINS = (("Compost", "paper"), ("Recycling", "glass"))
TRAIN_PER_BIN = 4
IMAGE_SIZE = 96


@dataclass(frozen=True)
class TinyModel:
    result: TrainResult
    model_dir: Path
    unseen: list[Path]  # photos of the same folders the trainer never saw
