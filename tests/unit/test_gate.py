"""The fair quality gate: challenger and champion scored on the SAME validation images (metrics.json of the
project's trainer), plus the per-class recall guard; without a champion section, today's gate."""

from __future__ import annotations

from typing import Any

from trashsorter.gate import evaluate_fair_gate, evaluate_gate

LABELS = ("Compost", "Landfill", "Recycling")


def scores(accuracy: float, recalls: tuple[float, float, float]) -> dict[str, Any]:
    return {
        "validation_accuracy": accuracy,
        "per_class": {label: {"recall": r} for label, r in zip(LABELS, recalls, strict=True)},
    }


def evaluation(challenger: dict[str, Any], champion: dict[str, Any] | None) -> dict[str, Any]:
    return {**challenger, **({"champion": {**champion, "validation_count": 40}} if champion else {})}


GATE = {"min_accuracy": 0.8, "tolerance": 0.02, "max_recall_drop": 0.1, "champion_id": "m-old"}


def test_champion_better_overall_but_worse_on_one_class_keeps_the_champion() -> None:
    champion = scores(0.92, (0.95, 0.80, 0.99))
    challenger = scores(0.86, (0.90, 0.95, 0.80))  # better on Landfill, 0.06 worse overall
    decision = evaluate_fair_gate(evaluation(challenger, champion), **GATE)
    assert not decision.passed
    assert "worse than champion m-old (0.9200) by more than the tolerance" in decision.reason


def test_challenger_better_overall_but_one_class_collapses_is_rejected() -> None:
    champion = scores(0.86, (0.90, 0.85, 0.85))
    challenger = scores(0.90, (0.99, 0.70, 0.98))  # +0.04 overall, Landfill recall -0.15
    decision = evaluate_fair_gate(evaluation(challenger, champion), **GATE)
    assert not decision.passed
    assert "recall of Landfill dropped by 0.1500" in decision.reason
    # the same challenger passes when the guard allows that drop
    assert evaluate_fair_gate(evaluation(challenger, champion), **{**GATE, "max_recall_drop": 0.2}).passed


def test_within_tolerance_on_the_same_images_deploys() -> None:
    champion = scores(0.90, (0.90, 0.90, 0.90))
    challenger = scores(0.89, (0.92, 0.85, 0.90))  # -0.01 overall, Landfill -0.05
    decision = evaluate_fair_gate(evaluation(challenger, champion), **GATE)
    assert decision.passed and "same 40 validation images" in decision.reason


def test_below_the_minimum_never_deploys_and_no_champion_is_todays_gate() -> None:
    low = scores(0.7, (0.7, 0.7, 0.7))
    assert not evaluate_fair_gate(evaluation(low, None), **GATE).passed
    ok = scores(0.85, (0.8, 0.8, 0.9))
    fair = evaluate_fair_gate(evaluation(ok, None), **GATE)
    today = evaluate_gate(0.85, None, min_accuracy=0.8, tolerance=0.02, champion_id="m-old")
    assert fair == today and fair.passed


def test_the_per_class_floor_stops_a_first_model_with_a_collapsed_class() -> None:
    collapsed = scores(0.86, (0.95, 0.0, 0.97))  # no champion yet, accuracy over the minimum, Landfill 0
    assert evaluate_fair_gate(evaluation(collapsed, None), **GATE).passed  # floor off (the default): deploys
    decision = evaluate_fair_gate(evaluation(collapsed, None), **{**GATE, "min_class_recall": 0.5})
    assert not decision.passed
    assert decision.reason == "recall of Landfill is 0.0000, below the per-class floor 0.5000"
    healthy = scores(0.86, (0.9, 0.5, 0.9))  # exactly at the floor: deploys, and says so
    passed = evaluate_fair_gate(evaluation(healthy, None), **{**GATE, "min_class_recall": 0.5})
    assert passed.passed and "every class's recall >= 0.5000" in passed.reason


def test_the_floor_also_holds_against_a_champion_that_is_worse_on_that_class() -> None:
    champion = scores(0.82, (0.9, 0.2, 0.9))
    challenger = scores(0.88, (0.95, 0.3, 0.95))  # better everywhere, but Landfill still under the floor
    assert evaluate_fair_gate(evaluation(challenger, champion), **GATE).passed
    floored = evaluate_fair_gate(evaluation(challenger, champion), **{**GATE, "min_class_recall": 0.4})
    assert not floored.passed and "recall of Landfill is 0.3000" in floored.reason
    # without per-class scores the floor cannot be checked: no deployment rather than a silent pass
    bare = {"validation_accuracy": 0.9}
    assert not evaluate_fair_gate(bare, **{**GATE, "min_class_recall": 0.4}).passed


def test_the_reason_counts_photos_when_the_scores_carry_their_support() -> None:
    # six Landfill validation photos (the demo's split holds three to six): one photo is 0.1667 of recall
    def counted(accuracy: float, landfill_right: int) -> dict[str, Any]:
        result = scores(accuracy, (0.9, landfill_right / 6, 0.9))
        for label, support in zip(LABELS, (14, 6, 21), strict=True):
            result["per_class"][label]["support"] = support
        return result

    decision = evaluate_fair_gate(evaluation(counted(0.9, 3), counted(0.9, 4)), **GATE)
    assert not decision.passed
    assert "(0.6667 -> 0.5000, 4 of 6 -> 3 of 6 photos: one photo) on the same 40" in decision.reason
    two = evaluate_fair_gate(evaluation(counted(0.9, 2), counted(0.9, 4)), **GATE)
    assert "4 of 6 -> 2 of 6 photos)" in two.reason and "one photo" not in two.reason
    floored = evaluate_fair_gate(evaluation(counted(0.9, 2), None), **{**GATE, "min_class_recall": 0.5})
    assert floored.reason == "recall of Landfill is 0.3333 (2 of 6 photos), below the per-class floor 0.5000"
