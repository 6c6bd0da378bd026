"""metrics.json with every validation photo's answer from the challenger and the champion (paired gate)."""

from __future__ import annotations

from typing import Any

LABELS = ("Compost", "Landfill", "Recycling")
SUPPORT = {"Compost": 14, "Landfill": 6, "Recycling": 21}  # the sample's 41 validation photos


def answered(champion_right: dict[str, int], challenger_right: dict[str, int]) -> dict[str, Any]:
    """metrics.json with per-photo answers: of each class's photos the first ``champion_right`` are the
    champion's hits, and the challenger's hits are the first ``challenger_right`` (overlapping as far as
    they can, so lost/gained photos are the difference)."""
    truth: dict[str, str] = {}
    ours: dict[str, str] = {}
    theirs: dict[str, str] = {}
    for label, count in SUPPORT.items():
        wrong = next(other for other in LABELS if other != label)
        for i in range(count):
            key = f"datasets/objects/{label}-{i:02d}.jpg"
            truth[key] = label
            theirs[key] = label if i < champion_right[label] else wrong
            ours[key] = label if i < challenger_right[label] else wrong
    photos = sum(SUPPORT.values())
    per_class = {label: {"recall": challenger_right[label] / n, "support": n} for label, n in SUPPORT.items()}
    return {
        "labels": list(LABELS),
        "validation_accuracy": sum(challenger_right.values()) / photos,
        "validation_count": photos,
        "per_class": per_class,
        "validation_labels": truth,
        "validation_answers": ours,
        "champion": {
            "validation_accuracy": sum(champion_right.values()) / photos,
            "validation_count": photos,
            "per_class": {
                label: {"recall": champion_right[label] / n, "support": n} for label, n in SUPPORT.items()
            },
            "validation_answers": theirs,
        },
    }
