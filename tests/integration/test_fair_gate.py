"""The fair gate through the completion handler (moto): the champion's stored accuracy came from ITS OWN,
smaller validation split; the new job's metrics.json scores the champion on the new job's images. Without
that comparison the new model is rejected ("I added data and got rejected"); with it, it is judged on the
same images, and the per-class guard still applies."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.answers import answered
from tests.support.fixtures.model_artifacts import mxnet_model_tar, tar_bytes, tiny_onnx
from tests.support.pack import JOB, Pack, handle
from trashsorter import registry

OLD = "deeplens-ts-3f9a1c2b7d4e5f60-20240501080000"
LABELS = ("Compost", "Landfill", "Recycling")


def onnx_tar(accuracy: float, recalls: tuple[float, ...], champion: dict[str, Any] | None) -> bytes:
    metrics: dict[str, Any] = {
        "validation_accuracy": accuracy,
        "labels": list(LABELS),
        "per_class": {label: {"recall": r} for label, r in zip(LABELS, recalls, strict=True)},
    }
    if champion is not None:
        metrics["champion"] = champion
    return tar_bytes(
        [
            ("model.onnx", tiny_onnx(len(LABELS))),  # a real graph: the package step runs it
            ("labels.txt", "".join(f"{label}\n" for label in LABELS).encode()),
            ("metrics.json", json.dumps(metrics).encode()),
            ("model.json", json.dumps({"image_size": 224, "labels_file": "labels.txt"}).encode()),
        ]
    )


def _champion_then(pack: Pack, artifact: bytes, accuracy: float = 0.9125, **settings: str) -> dict[str, Any]:
    pack.start_run(OLD, artifact=mxnet_model_tar())
    first = handle(
        pack.event("training_completed.json", OLD, accuracy=0.97), pack.settings(), ddb=pack.ddb, s3=pack.s3,
        greengrass=pack.gg,
    )  # fmt: skip
    assert first.outcome == "deployed"
    pack.start_run(JOB, artifact=artifact)
    event = pack.event("training_completed.json", JOB, accuracy=accuracy)
    handle(event, pack.settings(**settings), ddb=pack.ddb, s3=pack.s3, greengrass=pack.gg)
    model = registry.get_model(JOB, table_name=pack.table, ddb=pack.ddb)
    assert model is not None
    return model


def test_without_a_same_split_comparison_todays_gate_rejects(pack: Pack) -> None:
    model = _champion_then(pack, onnx_tar(0.9125, (0.9, 0.9, 0.95), None))
    assert model["gate_passed"] is False
    assert "worse than champion " + OLD in model["gate_reason"]


def test_on_the_same_images_the_better_challenger_passes(pack: Pack) -> None:
    champion = {"validation_accuracy": 0.85, "validation_count": 41, "per_class": {
        "Compost": {"recall": 0.88}, "Landfill": {"recall": 0.8}, "Recycling": {"recall": 0.86}}}  # fmt: skip
    model = _champion_then(pack, onnx_tar(0.9125, (0.9, 0.9, 0.95), champion))
    assert model["gate_passed"] is True, model["gate_reason"]
    assert "same 41 validation images" in model["gate_reason"]


def test_on_the_same_images_a_collapsed_class_is_rejected(pack: Pack) -> None:
    recalls = {"Compost": {"recall": 0.88}, "Landfill": {"recall": 0.95}, "Recycling": {"recall": 0.86}}
    champion = {"validation_accuracy": 0.85, "validation_count": 41, "per_class": recalls}
    model = _champion_then(pack, onnx_tar(0.9125, (0.99, 0.7, 0.99), champion))
    assert model["gate_passed"] is False
    assert "recall of Landfill dropped by 0.2500" in model["gate_reason"]


@pytest.mark.parametrize("floor", ["0", "0.5"])
def test_the_first_model_with_a_collapsed_class_meets_the_per_class_floor(pack: Pack, floor: str) -> None:
    """No champion yet: MaxRecallDrop has nothing to compare with; MinClassRecall (off by default) does."""
    pack.start_run(JOB, artifact=onnx_tar(0.86, (0.95, 0.0, 0.97), None))
    event = pack.event("training_completed.json", JOB, accuracy=0.86)
    handle(event, pack.settings(MIN_CLASS_RECALL=floor), ddb=pack.ddb, s3=pack.s3, greengrass=pack.gg)
    model = registry.get_model(JOB, table_name=pack.table, ddb=pack.ddb)
    assert model is not None
    if floor == "0":
        assert model["gate_passed"] is True and model["status"] == "champion", model["gate_reason"]
    else:
        assert model["gate_passed"] is False and model["status"] != "champion"
        assert model["gate_reason"] == "recall of Landfill is 0.0000, below the per-class floor 0.5000"


def answered_tar(champion_right: dict[str, int], challenger_right: dict[str, int]) -> tuple[bytes, float]:
    """A model.tar.gz whose metrics.json carries every validation photo's answer from both models."""
    metrics = answered(champion_right, challenger_right)
    tar = tar_bytes(
        [
            ("model.onnx", tiny_onnx(len(LABELS))),  # a real graph: the package step runs it
            ("labels.txt", "".join(f"{label}\n" for label in LABELS).encode()),
            ("metrics.json", json.dumps(metrics).encode()),
            ("model.json", json.dumps({"image_size": 224, "labels_file": "labels.txt"}).encode()),
        ]
    )
    return tar, float(metrics["validation_accuracy"])


def test_the_readme_case_becomes_champion_through_the_completion_step(pack: Pack) -> None:
    """0.707 -> 0.829 on the same 41 photos, Landfill 3 of 6 -> 2 of 6: one photo is within chance."""
    tar, accuracy = answered_tar(
        {"Compost": 10, "Landfill": 3, "Recycling": 16}, {"Compost": 13, "Landfill": 2, "Recycling": 19}
    )
    model = _champion_then(pack, tar, accuracy, MIN_VALIDATION_ACCURACY="0.6")
    assert model["gate_passed"] is True and model["status"] == "champion", model["gate_reason"]
    assert (
        "29 -> 34 right" in model["gate_reason"]
        and "Landfill: 3 of 6 -> 2 of 6 photos" in model["gate_reason"]
    )
    stored = model["evaluation"]
    assert "validation_answers" not in stored and "validation_answers" not in stored["champion"]


def test_a_challenger_clearly_worse_on_one_class_is_rejected_through_the_completion_step(pack: Pack) -> None:
    tar, accuracy = answered_tar(
        {"Compost": 8, "Landfill": 3, "Recycling": 20}, {"Compost": 14, "Landfill": 3, "Recycling": 12}
    )
    model = _champion_then(pack, tar, accuracy, MIN_VALIDATION_ACCURACY="0.6")
    assert model["gate_passed"] is False and model["status"] == "rejected"
    assert "on Recycling beyond chance: Recycling: 20 of 21 -> 12 of 21 photos" in model["gate_reason"]
