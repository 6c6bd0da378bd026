"""Suspected mislabels: the confident-learning rule on given probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from trashsorter_trainer import suspects


def test_confident_learning_flags_the_photos_another_class_claims_confidently() -> None:
    # three classes, labels given; photos 2 and 5 look confidently like another class
    probs = np.array(
        [
            [0.9, 0.05, 0.05],
            [0.8, 0.1, 0.1],
            [0.1, 0.85, 0.05],  # labelled 0, looks like 1
            [0.1, 0.8, 0.1],
            [0.2, 0.7, 0.1],
            [0.05, 0.15, 0.8],  # labelled 1, looks like 2
            [0.1, 0.1, 0.8],
            [0.45, 0.1, 0.45],  # labelled 2, unsure: 0.45 is under class 0's threshold -> not flagged
        ]
    )
    given = [0, 0, 0, 1, 1, 1, 2, 2]
    found = suspects.confident_learning(probs, given)
    assert [(photo, confident) for photo, confident, _ in found] == [(2, 1), (5, 2)]
    margins = [margin for _, _, margin in found]
    assert margins == sorted(margins) and margins[0] == pytest.approx(0.1 - 0.85)


def test_a_class_nobody_is_labelled_never_claims_a_photo() -> None:
    probs = np.array([[0.2, 0.8], [0.3, 0.7]])
    assert suspects.confident_learning(probs, [0, 0]) == []  # class 1 has no photos: no threshold
