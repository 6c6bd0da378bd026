"""The learning-curve benchmark's heads (benchmarks.learning_curve): folds, sizes, intervals, the verdict.

The backbone pass is the trainer's own (``stream.feature_pass``); here a synthetic feature bank stands in
for it, so the head training, the per-label sizes and the pooled Wilson intervals run in seconds."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from benchmarks.learning_curve import _leading_rows, curve, main, training_segments, verdict
from trashsorter_trainer.config import TrainConfig
from trashsorter_trainer.report import wilson_interval


def _bank(
    per_label: list[int], segments: list[str], separation: float
) -> tuple[dict[str, np.ndarray], list[int], list[str]]:
    """One 1280-d row per photo and segment, one mean per label (+ noise)."""
    rng = np.random.default_rng(0)
    y = [label for label, count in enumerate(per_label) for _ in range(count)]
    means = rng.normal(0, 1, (len(per_label), 1280)) * separation
    feats = {name: (means[y] + rng.normal(0, 1, (len(y), 1280))).astype(np.float32) for name in segments}
    shas = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(len(y))]
    return feats, y, shas


def test_each_photo_is_answered_once_per_draw_by_a_head_that_never_saw_its_fold() -> None:
    config = TrainConfig(epochs=3, views=2, threads=1)
    bank, y, shas = _bank([40, 30, 12], ["centre", "flip", "view0", "view1"], separation=0.3)
    fold = [int(s[:8], 16) * 3 // 0x1_0000_0000 for s in shas]
    used = [i != 5 for i in range(len(y))]  # one photo left out (a near-twin under two labels)

    rows = curve(bank, ["a", "b", "c"], y, fold, shas, used, [5, None], 2, config)

    assert [(r["per_label"], r["draw"]) for r in rows] == [(5, 0), (5, 1), ("all", 0)]
    for row in rows:
        assert row["tested"] == len(y) - 1 == sum(map(sum, row["confusion_matrix"]))
    # 5 per label: 3 labels x 5 training photos in every fold; all: every used photo outside the fold
    assert rows[0]["training_photos_per_fold"] == [15, 15, 15]
    assert rows[2]["training_photos_per_fold"] == [
        sum(1 for i, f in enumerate(fold) if f != k and used[i]) for k in range(3)
    ]
    matrix = rows[2]["confusion_matrix"]
    right = sum(matrix[i][i] for i in range(3))
    assert rows[2]["intervals"]["accuracy"] == wilson_interval(right, len(y) - 1)
    assert rows[2]["intervals"]["recall"]["c"] == wilson_interval(matrix[2][2], sum(matrix[2]))
    assert rows[2]["accuracy"] > 0.9  # separable classes are learnt from the features


def test_without_augmented_views_the_heads_train_on_the_centre_and_flip_features() -> None:
    assert training_segments(dict.fromkeys(["centre", "flip", "view0"], np.zeros(1))) == ["view0"]
    assert training_segments(dict.fromkeys(["centre", "flip"], np.zeros(1))) == ["centre", "flip"]
    config = TrainConfig(epochs=2, threads=1)
    bank, y, shas = _bank([20, 20], ["centre"], separation=0.3)
    rows = curve(bank, ["a", "b"], y, [i % 2 for i in range(40)], shas, [True] * 40, [None], 1, config)
    assert rows[0]["tested"] == 40 and rows[0]["training_photos_per_fold"] == [20, 20]


def test_an_unfinished_feature_map_resumes_after_its_last_written_row() -> None:
    bank = np.zeros((5, 4), np.float32)
    bank[:3] = 1.0
    assert _leading_rows(bank) == 3
    assert _leading_rows(np.ones((5, 4), np.float32)) == 5


def test_the_target_verdict_reads_the_intervals() -> None:
    def row(accuracy: tuple[float, float], recalls: list[tuple[float, float]]) -> dict[str, object]:
        return {"intervals": {"accuracy": accuracy, "recall": {str(i): r for i, r in enumerate(recalls)}}}

    assert verdict(row((0.91, 0.95), [(0.81, 0.9), (0.85, 0.95)])) == "met"
    assert verdict(row((0.88, 0.95), [(0.81, 0.9), (0.85, 0.95)])) == "undecided"
    assert verdict(row((0.91, 0.95), [(0.70, 0.79), (0.85, 0.95)])) == "missed"


def test_without_the_photo_collection_it_says_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--data", str(tmp_path / "absent")]) == 0
    assert "skipped: no photo collection" in capsys.readouterr().out
