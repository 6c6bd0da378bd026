"""The quality gate: the job's final metrics and the deploy/reject decision against the champion."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

ACCURACY_METRIC = "validation:accuracy"  # the one metric the gate reads (both trainers report it)


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str


def final_metrics(entries: Iterable[Any]) -> dict[str, float]:
    """``FinalMetricDataList`` entries as ``{name: value}`` (a later entry wins, non-numbers dropped)."""
    metrics: dict[str, float] = {}
    for entry in entries or []:
        if not isinstance(entry, Mapping):
            continue
        name = entry.get("MetricName")
        try:
            value = float(entry["Value"])
        except (KeyError, TypeError, ValueError):
            continue
        if name and value == value:  # NaN is not a metric
            metrics[str(name)] = value
    return metrics


def evaluate_gate(
    accuracy: float | None,
    champion_accuracy: float | None,
    *,
    min_accuracy: float,
    tolerance: float,
    champion_id: str = "",
) -> GateDecision:
    """Deploy only when accuracy >= ``min_accuracy`` and not worse than the champion by > ``tolerance``."""
    eps = 1e-9
    if accuracy is None:
        return GateDecision(False, f"the job reported no {ACCURACY_METRIC}")
    if accuracy + eps < min_accuracy:
        return GateDecision(
            False, f"{ACCURACY_METRIC} {accuracy:.4f} is below the minimum {min_accuracy:.4f}"
        )
    if champion_accuracy is not None and accuracy + eps < champion_accuracy - tolerance:
        return GateDecision(
            False,
            f"{ACCURACY_METRIC} {accuracy:.4f} is worse than champion {champion_id} "
            f"({champion_accuracy:.4f}) by more than the tolerance {tolerance:.4f}",
        )
    if champion_accuracy is None:
        return GateDecision(True, f"{ACCURACY_METRIC} {accuracy:.4f} >= {min_accuracy:.4f}; no champion yet")
    return GateDecision(
        True,
        f"{ACCURACY_METRIC} {accuracy:.4f} >= {min_accuracy:.4f} and within {tolerance:.4f} of champion "
        f"{champion_id} ({champion_accuracy:.4f})",
    )


def champion_accuracy(champion: Mapping[str, Any] | None, model_id: str) -> float | None:
    """The champion's accuracy to compare ``model_id`` against (None: no champion, or it is this model)."""
    if not champion or champion.get("model_id") == model_id:
        return None
    value = (champion.get("metrics") or {}).get(ACCURACY_METRIC)
    return float(value) if value is not None else None


def evaluate_fair_gate(
    evaluation: Mapping[str, Any],
    *,
    min_accuracy: float,
    tolerance: float,
    max_recall_drop: float,
    min_class_recall: float = 0.0,
    champion_id: str = "",
) -> GateDecision:
    """The gate on ONE split: the trainer's ``metrics.json`` holds the challenger's and (``champion``) the
    champion's scores on the challenger's validation images. Deploy when the challenger is >= the minimum,
    every class's recall is >= ``min_class_recall`` (an absolute floor, with or without a champion; 0 = off),
    it is not worse than the champion on that split by more than ``tolerance``, and no class's recall dropped
    by more than ``max_recall_drop``. Without a ``champion`` section and with the floor off,
    :func:`evaluate_gate` applies as before."""
    eps = 1e-9
    accuracy = evaluation.get("validation_accuracy")
    champion = evaluation.get("champion") or {}
    base = evaluate_gate(
        None if accuracy is None else float(accuracy),
        None if not champion else float(champion["validation_accuracy"]),
        min_accuracy=min_accuracy,
        tolerance=tolerance,
        champion_id=champion_id,
    )
    if not base.passed:
        return base
    ours = evaluation.get("per_class") or {}
    if min_class_recall > 0:
        lowest = min(((float(c["recall"]), label) for label, c in ours.items()), default=None)
        if lowest is None:
            return GateDecision(False, f"no per-class recall reported for the floor {min_class_recall:.4f}")
        if lowest[0] + eps < min_class_recall:
            return GateDecision(
                False,
                f"recall of {lowest[1]} is {lowest[0]:.4f}{_photos(ours[lowest[1]])}, below the per-class "
                f"floor {min_class_recall:.4f}",
            )
        base = GateDecision(True, f"{base.reason}; every class's recall >= {min_class_recall:.4f}")
    if not champion:
        return base
    theirs = champion.get("per_class") or {}
    drops = {
        label: float(theirs[label]["recall"]) - float(ours[label]["recall"])
        for label in sorted(set(ours) & set(theirs))
    }
    worst = max(drops.items(), key=lambda item: item[1], default=None)
    if worst is not None and worst[1] > max_recall_drop + eps:
        label, drop = worst
        lost = _photos_lost(theirs[label], ours[label])
        return GateDecision(
            False,
            f"recall of {label} dropped by {drop:.4f} against champion {champion_id} "
            f"({float(theirs[label]['recall']):.4f} -> {float(ours[label]['recall']):.4f}{lost}) on the same "
            f"{int(champion.get('validation_count', 0))} validation images, more than {max_recall_drop:.4f}",
        )
    return GateDecision(
        True,
        f"{base.reason}, both on the same {int(champion.get('validation_count', 0))} validation images; "
        f"no class's recall dropped by more than {max_recall_drop:.4f}",
    )


def recognised(scores: Mapping[str, Any]) -> tuple[int, int] | None:
    """(photos recognised, photos) of one class's scores (``recall``, ``support``), None without a support."""
    support = scores.get("support")
    if not support:
        return None
    photos = int(support)
    return round(float(scores["recall"]) * photos), photos


def _photos(scores: Mapping[str, Any]) -> str:
    counted = recognised(scores)
    return f" ({counted[0]} of {counted[1]} photos)" if counted else ""


def _photos_lost(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    """', 3 of 6 -> 2 of 6 photos: one photo' when both sides say how many photos: on a small class one photo
    is a large share of its recall, and the reason should say when a single photo decided it."""
    old, new = recognised(before), recognised(after)
    if not old or not new or old[1] != new[1]:
        return ""
    lost = old[0] - new[0]
    return f", {old[0]} of {old[1]} -> {new[0]} of {new[1]} photos" + (": one photo" if lost == 1 else "")
