"""The demo's held-back photos and its line on a weak class that deployed (no stack needed)."""

from __future__ import annotations

from trashsorter.dataset import split_for
from trashsorter.settings import PackageSettings
from trashsorter_cli.commands import data
from trashsorter_cli.demo import (
    HOLD_BACK_PER_LABEL,
    SAMPLES,
    choose_held_back,
    sha256_file,
    validation_fraction,
    why_deployed,
)


def test_held_back_photos_come_from_the_training_side_so_the_validation_split_keeps_all_41() -> None:
    mapping = data.load_mapping(SAMPLES / "mapping.json")
    labels = [label for label in mapping if not label.startswith("_")]
    held = choose_held_back(SAMPLES, mapping)
    assert len(held) == HOLD_BACK_PER_LABEL * len(labels)
    fraction = validation_fraction()
    assert all(split_for(sha256_file(p), fraction) == "train" for p in held)
    plan = data.plan_upload(SAMPLES, labels, mapping=mapping, hold_back=lambda p, _label: p in held)
    uploaded = [path for path, _key in plan.files]
    assert len(uploaded) == 171
    validation = [p for p in uploaded if split_for(sha256_file(p), fraction) == "validation"]
    everything = [p for p in [*uploaded, *held] if split_for(sha256_file(p), fraction) == "validation"]
    assert len(validation) == len(everything) == 41
    assert choose_held_back(SAMPLES, mapping) == held  # deterministic


def _settings(**env: str) -> PackageSettings:
    base = {"TABLE_NAME": "t", "IMAGES_BUCKET": "b", "EVENT_BUS_NAME": "e", "ALLOWED_LABELS": "A,B",
            "DEEPLENS_BUCKET": "deeplens-models"}  # fmt: skip
    return PackageSettings.from_env({**base, **env})


def _model(landfill_right: int) -> dict[str, object]:
    return {
        "metrics": {"validation:accuracy": 0.8293},
        "evaluation": {
            "per_class": {
                "Compost": {"recall": 13 / 14, "support": 14},
                "Landfill": {"recall": landfill_right / 6, "support": 6},
                "Recycling": {"recall": 19 / 21, "support": 21},
            }
        },
    }


def test_a_weak_class_that_deployed_gets_one_line_naming_the_bar_and_the_floor() -> None:
    settings = _settings(MIN_VALIDATION_ACCURACY="0.6", MIN_CLASS_RECALL="0")
    line = why_deployed(_model(2), settings)
    assert line == (
        "deployed although Landfill recall is 0.333 (2 of 6 photos): the gate holds the accuracy to "
        "MinValidationAccuracy 0.60 (this model 0.829) and no per-class floor applies "
        "(MinClassRecall is 0, off)"
    )
    floored = why_deployed(_model(2), _settings(MIN_VALIDATION_ACCURACY="0.6", MIN_CLASS_RECALL="0.3"))
    assert floored.endswith("the per-class floor MinClassRecall is 0.30")
    assert why_deployed(_model(5), settings) == ""  # 0.833 is above the bar: nothing to explain
