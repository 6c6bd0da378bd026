"""The edge app classifies exactly as the trainer evaluated: same preprocessing object, same probabilities
(within 1e-5) on real photos the model never saw, run through the real ``trashsorter-edge`` program."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import trashsorter_edge.preprocessing as edge_preprocessing
from tests.support.tiny_model import IMAGE_SIZE, TinyModel
from trashsorter_cli.device import predictor
from trashsorter_trainer import data
from trashsorter_trainer.train import run_onnx

pytestmark = pytest.mark.slow  # trains a tiny model once per session


def trainer_evaluation(model_dir: Path, photos: list[bytes]) -> np.ndarray:
    """What the trainer computes for its validation metrics: data.preprocess(data.decode(..)) -> run_onnx."""
    batch = np.stack([data.preprocess(data.decode(photo), IMAGE_SIZE) for photo in photos])
    return run_onnx(model_dir / "model.onnx", batch)


def rotated_with_exif(photo: bytes) -> bytes:
    """The same pixels stored sideways with EXIF orientation 6, as a phone does (PNG: lossless)."""
    image = Image.open(io.BytesIO(photo)).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    image.save(out, format="PNG", exif=exif)
    return out.getvalue()


def run_edge(model_dir: Path, source: Path, *extra: str) -> list[dict[str, object]]:
    command = [sys.executable, "-m", "trashsorter_edge", "--model", str(model_dir), "--source", str(source)]
    done = subprocess.run(
        [*command, "--once", "--output", "jsonl", "--top-k", "9", *extra],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_one_preprocessing_object_everywhere() -> None:
    assert data.preprocess is edge_preprocessing.preprocess
    assert data.resize_short_side is edge_preprocessing.resize_short_side
    assert predictor.Model.probabilities.__module__ == "trashsorter_edge.model"


def test_edge_app_probabilities_equal_the_trainer_evaluation(tiny_model: TinyModel, tmp_path: Path) -> None:
    photos = {path.name: path.read_bytes() for path in tiny_model.unseen}
    photos["sideways-exif.png"] = rotated_with_exif(photos[tiny_model.unseen[0].name])
    for name, photo in photos.items():
        (tmp_path / name).write_bytes(photo)

    results = run_edge(tiny_model.model_dir, tmp_path)

    assert [r["image"] for r in results] == sorted(photos)
    expected = trainer_evaluation(tiny_model.model_dir, [photos[r["image"]] for r in results])  # type: ignore[index]
    labels = (tiny_model.model_dir / "labels.txt").read_text().split()
    for row, result in zip(expected, results, strict=True):
        got = {entry["label"]: entry["confidence"] for entry in result["top_k"]}  # type: ignore[attr-defined]
        np.testing.assert_allclose([got[label] for label in labels], row, atol=1e-5, rtol=0)
        assert result["label"] == labels[int(row.argmax())]
        assert set(result) >= {"model_id", "label", "confidence", "top_k", "unsure", "timestamp", "source"}
    # EXIF orientation is applied: the sideways copy classifies exactly like the upright photo
    by_name = {r["image"]: r for r in results}
    upright = by_name[tiny_model.unseen[0].name]["confidence"]
    assert by_name["sideways-exif.png"]["confidence"] == pytest.approx(upright, abs=1e-6)


def test_the_old_greengrass_preprocessing_would_be_caught(tiny_model: TinyModel) -> None:
    """Squeeze to a square + ImageNet normalisation (the old CLASSIFIER_SCRIPT) gives other probabilities:
    the parity check above can fail."""
    photo = tiny_model.unseen[0].read_bytes()
    squeezed = Image.open(io.BytesIO(photo)).convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE))
    mean, std = np.array(data.IMAGENET_MEAN), np.array(data.IMAGENET_STD)
    old = ((np.asarray(squeezed, dtype=np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)[None]
    old_probs = run_onnx(tiny_model.model_dir / "model.onnx", old.astype(np.float32))
    assert np.abs(old_probs - trainer_evaluation(tiny_model.model_dir, [photo])).max() > 1e-3
