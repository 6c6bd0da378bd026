"""The fair quality gate: challenger and champion scored on the SAME validation images (metrics.json of the
project's trainer), plus the per-class recall guard; without a champion section, today's gate."""

from __future__ import annotations

from typing import Any

from tests.support.answers import answered
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


# ---------------------------------------------------------------- paired: the same photos, photo by photo

README_GATE = {"min_accuracy": 0.6, "tolerance": 0.02, "max_recall_drop": 0.1, "champion_id": "m-first"}


def test_the_readme_case_deploys_one_landfill_photo_fewer_is_within_chance() -> None:
    # 0.707 (29 of 41) -> 0.829 (34 of 41); Landfill 3 of 6 -> 2 of 6
    metrics = answered(
        {"Compost": 10, "Landfill": 3, "Recycling": 16}, {"Compost": 13, "Landfill": 2, "Recycling": 19}
    )
    assert round(metrics["champion"]["validation_accuracy"], 3) == 0.707
    assert round(metrics["validation_accuracy"], 3) == 0.829
    decision = evaluate_fair_gate(metrics, **README_GATE)
    assert decision.passed, decision.reason
    assert "(34 of 41 photos)" in decision.reason and "on the same 41 validation photos" in decision.reason
    assert "29 -> 34 right (lost 1, gained 6); not worse beyond chance" in decision.reason
    assert (
        "within chance on Landfill: 3 of 6 -> 2 of 6 photos (lost 1, gained 0, p = 0.500)" in decision.reason
    )
    # the rule it replaces rejected this model for that one photo
    assert not evaluate_fair_gate({**metrics, "validation_answers": {}}, **README_GATE).passed


def test_a_challenger_clearly_worse_on_one_class_is_rejected_with_photo_counts() -> None:
    # better on Compost (+6), worse on Recycling by 8 photos: overall within chance, Recycling is not
    metrics = answered(
        {"Compost": 8, "Landfill": 3, "Recycling": 20}, {"Compost": 14, "Landfill": 3, "Recycling": 12}
    )
    decision = evaluate_fair_gate(metrics, **README_GATE)
    assert not decision.passed
    assert decision.reason.startswith("worse than champion m-first on Recycling beyond chance: ")
    assert "Recycling: 20 of 21 -> 12 of 21 photos (lost 8, gained 0, p = 0.004)" in decision.reason
    assert "missed 8 the champion recognised and recognised 0 the champion missed" in decision.reason


def test_mcnemar_is_the_exact_binomial_tail() -> None:
    from trashsorter.gate import mcnemar_worse

    assert mcnemar_worse(0, 5) == 1.0
    assert mcnemar_worse(1, 0) == 0.5
    assert mcnemar_worse(5, 0) == 1 / 32  # five photos lost, none gained: below 0.05
    assert mcnemar_worse(4, 0) == 1 / 16  # four: still within chance
    assert (
        abs(mcnemar_worse(8, 6) - sum(__import__("math").comb(14, k) for k in range(8, 15)) / 2**14) < 1e-12
    )


def test_a_model_that_cannot_sort_is_not_enough_data() -> None:
    one_class = {
        "labels": list(LABELS),
        "validation_accuracy": 1.0,
        "per_class": {"Compost": {"recall": 1.0, "support": 2}, "Landfill": {"recall": 0.0, "support": 0},
                      "Recycling": {"recall": 0.0, "support": 0}},
    }  # fmt: skip
    decision = evaluate_fair_gate(one_class, **README_GATE)
    assert not decision.passed
    assert decision.reason.startswith("not enough data: 1 label(s) with validation photos (Compost 2, ")
    missing = {
        **one_class,
        "per_class": {**one_class["per_class"], "Landfill": {"recall": 1.0, "support": 3}},
    }
    reason = evaluate_fair_gate(missing, **README_GATE).reason
    assert reason.startswith(
        "not enough data: no validation photos of Recycling (Compost 2, Landfill 3, Recycling 0)"
    )


def test_the_built_in_algorithm_is_judged_on_its_snapshots_validation_counts() -> None:
    from trashsorter.gate import dataset_support, not_enough_data

    counts = {"Compost": {"train": 2, "validation": 0}, "Landfill": {"train": 0, "validation": 0}}
    record = {"labels": ["Compost", "Landfill"], "counts": counts}
    assert not_enough_data(dataset_support(record)).startswith(
        "not enough data: 0 label(s) with validation photos (Compost 0, Landfill 0)"
    )
    counts = {"Compost": {"train": 8, "validation": 2}, "Landfill": {"train": 8, "validation": 3}}
    assert not_enough_data(dataset_support({"labels": ["Compost", "Landfill"], "counts": counts})) == ""
    assert not_enough_data(dataset_support({"labels": ["Compost"]})) == ""  # no counts recorded: no verdict
