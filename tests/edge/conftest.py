"""A tiny model trained for real (two bins, real TrashNet photos, a few seconds) shared by the edge tests,
and the held-back photos it never saw."""

from __future__ import annotations

import pytest

from tests.support.tiny_model import BINS, IMAGE_SIZE, SAMPLES, TRAIN_PER_BIN, TinyModel
from trashsorter_trainer.data import Sample
from trashsorter_trainer.train import TrainConfig, train


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
