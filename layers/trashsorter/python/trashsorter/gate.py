"""The quality gate: the job's final metrics and the deploy/reject decision against the champion.

With the project's trainer the gate decides on evidence (:func:`evaluate_fair_gate`): metrics.json holds
every validation photo's true label and the challenger's answer (``validation_labels``,
``validation_answers``) and the champion's answer on the same photos (``champion.validation_answers``).
The two are compared photo by photo with an exact one-sided McNemar test, overall and per class: the
challenger is rejected only when it is worse than the champion beyond chance (p < :data:`SIGNIFICANCE`), or
below the absolute floors. docs/training.md states the rule and its error rates.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from math import comb
from typing import TYPE_CHECKING, Any

from trashsorter_edge.contract import VALIDATION_ACCURACY

if TYPE_CHECKING:
    from trashsorter.settings import PackageSettings

ACCURACY_METRIC = VALIDATION_ACCURACY  # the one metric the gate reads (both trainers report it)
# One-sided: the chance that a challenger no worse than the champion loses this many of the photos on
# which the two disagree. Below it, the challenger is "worse beyond chance" and the champion stays.
SIGNIFICANCE = 0.05


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
    cannot_sort = not_enough_data(evaluation)
    if cannot_sort:
        return GateDecision(False, cannot_sort)
    paired = paired_comparison(evaluation)
    if paired is not None and accuracy is not None:
        return _paired_gate(
            evaluation, paired, min_accuracy=min_accuracy, min_class_recall=min_class_recall,
            champion_id=champion_id,
        )  # fmt: skip
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


# ---------------------------------------------------------------- not enough data


def not_enough_data(evaluation: Mapping[str, Any]) -> str:
    """Why a model cannot be shown to sort ("" when it can): fewer than two labels with validation photos,
    or a label with none. Needs the per-class ``support`` (the project's trainer reports it)."""
    per_class = evaluation.get("per_class") or {}
    labels = [str(label) for label in evaluation.get("labels") or per_class]
    supports = {label: (per_class.get(label) or {}).get("support") for label in labels}
    if not supports or any(value is None for value in supports.values()):
        return ""
    with_photos = [label for label, value in supports.items() if int(value or 0) > 0]
    counts = ", ".join(f"{label} {int(value or 0)}" for label, value in supports.items())
    if len(with_photos) < 2:
        return (
            f"not enough data: {len(with_photos)} label(s) with validation photos ({counts}); a model is "
            "only judged when at least two labels have validation photos"
        )
    empty = [label for label, value in supports.items() if not int(value or 0)]
    if empty:
        return (
            f"not enough data: no validation photos of {', '.join(empty)} ({counts}); the model cannot be "
            "shown to recognise a label it is never tested on"
        )
    return ""


def dataset_support(dataset: Mapping[str, Any] | None) -> dict[str, Any]:
    """The validation photos per label of a dataset record (``counts``: label -> {train, validation}) in
    the shape :func:`not_enough_data` reads, for a job that reports no per-class scores (the built-in
    algorithm)."""
    counts = (dataset or {}).get("counts") or {}
    return {
        "labels": list((dataset or {}).get("labels") or counts),
        "per_class": {
            str(label): {"support": int((split or {}).get("validation", 0))}
            for label, split in counts.items()
        },
    }


# ---------------------------------------------------------------- paired comparison (exact McNemar)


def mcnemar_worse(lost: int, gained: int) -> float:
    """Exact one-sided McNemar p-value: the chance of ``lost`` or more of the ``lost + gained`` photos on
    which two equally good models disagree going the champion's way (Binomial(lost + gained, 1/2))."""
    n = lost + gained
    if lost <= 0:
        return 1.0
    return sum(comb(n, k) for k in range(lost, n + 1)) / 2**n


@dataclass(frozen=True)
class Paired:
    """Champion and challenger on the same photos (``label`` "" = all of them)."""

    label: str
    photos: int
    champion_right: int
    challenger_right: int
    lost: int  # the champion recognised them, the challenger did not
    gained: int  # the challenger recognised them, the champion did not

    @property
    def p_worse(self) -> float:
        return mcnemar_worse(self.lost, self.gained)

    @property
    def worse_beyond_chance(self) -> bool:
        return self.p_worse < SIGNIFICANCE

    def counts(self) -> str:
        what, n = self.label or "all classes", self.photos
        return (
            f"{what}: {self.champion_right} of {n} -> {self.challenger_right} of {n} photos "
            f"(lost {self.lost}, gained {self.gained}, p = {self.p_worse:.3f})"
        )


def paired_comparison(evaluation: Mapping[str, Any]) -> list[Paired] | None:
    """Overall first, then one entry per class; None unless both sides answered the very same photos."""
    truth = evaluation.get("validation_labels") or {}
    ours = evaluation.get("validation_answers") or {}
    theirs = (evaluation.get("champion") or {}).get("validation_answers") or {}
    keys = sorted(truth)
    if not keys or set(ours) != set(keys) or set(theirs) != set(keys):
        return None
    labels = [str(label) for label in evaluation.get("labels") or sorted(set(truth.values()))]
    groups: list[tuple[str, Sequence[str]]] = [("", keys)]
    groups += [(label, [k for k in keys if truth[k] == label]) for label in labels]
    out = []
    for label, group in groups:
        champion_right = {k for k in group if theirs[k] == truth[k]}
        challenger_right = {k for k in group if ours[k] == truth[k]}
        out.append(
            Paired(
                label=label,
                photos=len(group),
                champion_right=len(champion_right),
                challenger_right=len(challenger_right),
                lost=len(champion_right - challenger_right),
                gained=len(challenger_right - champion_right),
            )
        )
    return out


def _paired_gate(
    evaluation: Mapping[str, Any],
    paired: list[Paired],
    *,
    min_accuracy: float,
    min_class_recall: float,
    champion_id: str,
) -> GateDecision:
    eps = 1e-9
    overall = paired[0]
    accuracy = float(evaluation["validation_accuracy"])
    right = f"{overall.challenger_right} of {overall.photos} photos"
    if accuracy + eps < min_accuracy:
        return GateDecision(
            False, f"{ACCURACY_METRIC} {accuracy:.4f} ({right}) is below the minimum {min_accuracy:.4f}"
        )
    for entry in paired[1:]:
        recall = entry.challenger_right / entry.photos if entry.photos else 0.0
        if min_class_recall > 0 and recall + eps < min_class_recall:
            counted = f"{entry.challenger_right} of {entry.photos} photos"
            return GateDecision(
                False,
                f"recall of {entry.label} is {recall:.4f} ({counted}), "
                f"below the per-class floor {min_class_recall:.4f}",
            )
    where = f"against champion {champion_id} on the same {overall.photos} validation photos"
    worse = [entry for entry in paired if entry.worse_beyond_chance]
    if worse:
        first = worse[0]
        what = "overall" if not first.label else f"on {first.label}"
        return GateDecision(
            False,
            f"worse than champion {champion_id} {what} beyond chance: {first.counts()} on the same "
            f"{overall.photos} validation photos; the challenger missed {first.lost} the champion recognised "
            f"and recognised {first.gained} the champion missed (p < {SIGNIFICANCE})",
        )
    floor = f"; every class's recall >= {min_class_recall:.4f}" if min_class_recall > 0 else ""
    fewer = [entry.counts() for entry in paired[1:] if entry.lost > entry.gained]
    within = f"; fewer photos but within chance on {'; '.join(fewer)}" if fewer else ""
    verdict = f"not worse beyond chance (p < {SIGNIFICANCE}) overall or on any class"
    return GateDecision(
        True,
        f"{ACCURACY_METRIC} {accuracy:.4f} ({right}) >= {min_accuracy:.4f}{floor}; {where}: "
        f"{overall.champion_right} -> {overall.challenger_right} right (lost {overall.lost}, gained "
        f"{overall.gained}); {verdict}{within}",
    )


def decide(
    *,
    model_id: str,
    metrics: Mapping[str, float],
    evaluation: Mapping[str, Any] | None,
    champion: Mapping[str, Any] | None,
    dataset: Mapping[str, Any] | None,
    settings: PackageSettings,
) -> GateDecision:
    """The gate for a packaged model (pure): the fair gate when the project's trainer evaluated the champion
    on the challenger's own split (or there is no champion), else "not enough data" from the snapshot's own
    counts, else the accuracy gate (the built-in algorithm, or a champion the job could not evaluate)."""
    champion_id = str((champion or {}).get("model_id", ""))
    if evaluation and (evaluation.get("champion") or not champion):
        return evaluate_fair_gate(
            evaluation,
            min_accuracy=settings.min_validation_accuracy,
            tolerance=settings.champion_tolerance,
            max_recall_drop=settings.max_recall_drop,
            min_class_recall=settings.min_class_recall,
            champion_id=champion_id,
        )
    if cannot_sort := not_enough_data(dataset_support(dataset)):
        return GateDecision(False, cannot_sort)
    return evaluate_gate(
        metrics.get(ACCURACY_METRIC),
        champion_accuracy(champion, model_id),
        min_accuracy=settings.min_validation_accuracy,
        tolerance=settings.champion_tolerance,
        champion_id=champion_id,
    )
