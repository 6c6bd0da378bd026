"""The device's onnxruntime classifier on a tiny model trained from real photos."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from trashsorter.errors import DeploymentError, Rejection
from trashsorter_cli.device.predictor import Classifier
from trashsorter_trainer.data import Sample
from trashsorter_trainer.train import TrainConfig, train

pytestmark = pytest.mark.slow  # trains a tiny model (a few seconds)

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "trashnet"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    samples = []
    for label, folder in (("Compost", "cardboard"), ("Recycling", "glass")):
        for i, path in enumerate(sorted((SAMPLES / folder).glob("*.jpg"))[:4]):
            samples.append(Sample(path.name, label, "train" if i < 3 else "validation", path.read_bytes()))
    out = tmp_path_factory.mktemp("model")
    train(samples, ["Compost", "Recycling"], out, TrainConfig(epochs=1, views=1, image_size=96, threads=2))
    return out


def test_predict_returns_every_label_sorted_by_confidence(model_dir: Path) -> None:
    classifier = Classifier(model_dir)
    photo = sorted((SAMPLES / "glass").glob("*.jpg"))[-1].read_bytes()
    ranked = classifier.predict(photo)
    assert [label for label, _ in ranked] != [] and {label for label, _ in ranked} == {"Compost", "Recycling"}
    confidences = [c for _, c in ranked]
    assert confidences == sorted(confidences, reverse=True)
    assert sum(confidences) == pytest.approx(1.0, abs=1e-5)


def test_undecodable_bytes_are_a_rejection(model_dir: Path) -> None:
    with pytest.raises(Rejection) as caught:
        Classifier(model_dir).predict(b"GIF89a but not really")
    assert caught.value.code == "undecodable_image"


def test_missing_or_mismatched_files_name_what_is_wrong(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DeploymentError, match="not found"):
        Classifier(tmp_path)
    shutil.copy(model_dir / "model.onnx", tmp_path / "model.onnx")
    with pytest.raises(DeploymentError, match=r"labels\.txt not found"):
        Classifier(tmp_path)
    (tmp_path / "labels.txt").write_text("A\nB\nC\n")
    with pytest.raises(DeploymentError, match=r"2 outputs but labels\.txt lists 3"):
        Classifier(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"not an onnx graph")
    with pytest.raises(DeploymentError, match="onnxruntime cannot load"):
        Classifier(tmp_path)
