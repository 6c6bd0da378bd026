"""Suspected mislabels: confident learning on out-of-fold probabilities finds labels flipped on purpose."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trashsorter_trainer import report, suspects
from trashsorter_trainer.data import Sample
from trashsorter_trainer.train import TrainConfig, train

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "trashnet"


def test_confident_learning_flags_the_photos_another_class_claims_confidently() -> None:
    # three classes, labels given; photos 2 and 5 look confidently like another class
    probs = np.array(
        [
            [0.9, 0.05, 0.05],
            [0.8, 0.1, 0.1],
            [0.1, 0.85, 0.05],  # labelled 0, looks like 1
            [0.1, 0.8, 0.1],
            [0.2, 0.7, 0.1],
            [0.05, 0.15, 0.8],  # labelled 1, looks like 2
            [0.1, 0.1, 0.8],
            [0.45, 0.1, 0.45],  # labelled 2, unsure: 0.45 is under class 0's threshold -> not flagged
        ]
    )
    given = [0, 0, 0, 1, 1, 1, 2, 2]
    found = suspects.confident_learning(probs, given)
    assert [(photo, confident) for photo, confident, _ in found] == [(2, 1), (5, 2)]
    margins = [margin for _, _, margin in found]
    assert margins == sorted(margins) and margins[0] == pytest.approx(0.1 - 0.85)


def test_a_class_nobody_is_labelled_never_claims_a_photo() -> None:
    probs = np.array([[0.2, 0.8], [0.3, 0.7]])
    assert suspects.confident_learning(probs, [0, 0]) == []  # class 1 has no photos: no threshold


def _flipped_set(flip: dict[str, str]) -> tuple[list[Sample], list[str]]:
    """Real photos of three materials (paper, metal, glass as labels): 14 per label for training, 6 for
    validation; the photos named in ``flip`` carry the wrong label on purpose."""
    samples = []
    for folder in ("paper", "metal", "glass"):
        for i, path in enumerate(sorted((SAMPLES / folder).glob("*.jpg"))[:20]):
            key = f"{folder}/{path.name}"
            split = "train" if i < 14 else "validation"
            samples.append(Sample(key, flip.get(key, folder), split, path))
    return samples, ["glass", "metal", "paper"]


@pytest.mark.slow
def test_labels_flipped_on_purpose_rank_near_the_top(tmp_path: Path) -> None:
    paper = sorted((SAMPLES / "paper").glob("*.jpg"))
    metal = sorted((SAMPLES / "metal").glob("*.jpg"))
    glass = sorted((SAMPLES / "glass").glob("*.jpg"))
    flip = {
        f"paper/{paper[1].name}": "metal",
        f"paper/{paper[6].name}": "glass",
        f"metal/{metal[3].name}": "paper",
        f"glass/{glass[9].name}": "paper",
        f"metal/{metal[16].name}": "glass",  # a validation photo: answered by the split run's graph
    }
    samples, labels = _flipped_set(flip)
    config = TrainConfig(epochs=6, views=2, image_size=128, batch_size=16, threads=2, refit=False)
    result = train(samples, labels, tmp_path, config)

    listed = json.loads((tmp_path / "suspects.json").read_text())
    assert listed == list(result.suspects)
    assert result.metrics["suspects"]["count"] == len(listed)
    assert result.metrics["suspects"]["checked"] == len(samples)
    top = [s["key"] for s in listed[:10]]
    found = [key for key in flip if key in top]
    assert len(found) >= 4, (found, listed[:10])
    by_key = {s["key"]: s for s in listed}
    assert all(by_key[key]["label"] == flip[key] for key in found)
    # the suggestion is mostly the photo's true material, the folder it came from
    right = [key for key in found if by_key[key]["suggested"] == key.split("/")[0]]
    assert len(right) >= len(found) - 1, [(key, by_key[key]["suggested"]) for key in found]
    page = report.render_html(result.metrics, [], suspects=[{**s, "thumbnail": "data:,"} for s in listed[:3]])
    assert "Suspected mislabels" in page and listed[0]["key"] in page
    # nothing was relabelled: the training used the labels as given
    assert result.metrics["class_counts"]["train"] == {
        label: sum(1 for s in samples if s.split == "train" and s.label == label) for label in labels
    }
