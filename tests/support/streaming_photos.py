"""Real sample photos for the streaming trainer's tests: two bins, from their files or in memory."""

from __future__ import annotations

from pathlib import Path

from trashsorter_trainer.data import Sample

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "trashnet"


def two_bins(from_files: bool) -> tuple[list[Sample], list[str]]:
    """5 paper photos as Compost, 5 metal photos as Recycling (3 train, 2 validation each); ``from_files``:
    each sample holds its file's path (read when needed), else its bytes."""
    samples = []
    for label, folder in (("Compost", "paper"), ("Recycling", "metal")):
        for i, path in enumerate(sorted((SAMPLES / folder).glob("*.jpg"))[:5]):
            content = path if from_files else path.read_bytes()
            split = "train" if i < 3 else "validation"
            samples.append(Sample(f"{folder}/{path.name}", label, split, content))
    return samples, ["Compost", "Recycling"]
