"""A tiny model trained for real (two bins, real TrashNet photos, a few seconds) shared by the edge tests,
and the held-back photos it never saw."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

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


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    samples, unseen = [], []
    for label, folder in BINS:
        paths = sorted((SAMPLES / folder).glob("*.jpg"))
        for i, path in enumerate(paths[: TRAIN_PER_BIN + 1]):
            split = "train" if i < TRAIN_PER_BIN else "validation"
            samples.append(Sample(f"{folder}/{path.name}", label, split, path.read_bytes()))
        unseen.extend(paths[-3:])
    out = tmp_path_factory.mktemp("edge-model")
    config = TrainConfig(epochs=1, views=1, image_size=IMAGE_SIZE, batch_size=8, threads=2)
    result = train(samples, [label for label, _ in BINS], out, config)
    return TinyModel(result=result, model_dir=out, unseen=unseen)
