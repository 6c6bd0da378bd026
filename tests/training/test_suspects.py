"""Suspected mislabels: a real training with labels flipped on purpose ranks the flipped photos near the
top (confident learning on out-of-fold probabilities)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trashsorter_trainer import report
from trashsorter_trainer.data import Sample
from trashsorter_trainer.train import TrainConfig, train

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "trashnet"


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
