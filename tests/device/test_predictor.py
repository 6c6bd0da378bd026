"""The device's onnxruntime classifier on a tiny model trained from real photos."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support.tiny_model import TinyModel
from trashsorter.errors import DeploymentError, Rejection
from trashsorter_cli.device.predictor import Classifier

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "trashnet"


@pytest.fixture
def model_dir(tiny_model: TinyModel) -> Path:
    return tiny_model.model_dir


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
