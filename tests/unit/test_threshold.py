from __future__ import annotations

import pytest

from trashsorter.catalogue_model import derive_statuses, sequencer_newer
from trashsorter.threshold import evaluate_rule


def test_rule_met_when_every_label_has_enough_and_enough_new_images() -> None:
    result = evaluate_rule(
        {"Compost": 50, "Landfill": 61, "Recycling": 50},
        accepted_seq=161,
        baseline_seq=0,
        min_per_label=50,
        min_new=20,
    )
    assert result.met
    assert result.missing == {} and result.needed_new == 0 and result.new_images == 161
    assert "every label has at least 50 images" in result.reason


def test_missing_images_per_label_are_reported() -> None:
    result = evaluate_rule(
        {"Compost": 38, "Landfill": 47, "Recycling": 50},
        accepted_seq=135,
        baseline_seq=0,
        min_per_label=50,
        min_new=20,
    )
    assert not result.met
    assert result.missing == {"Compost": 12, "Landfill": 3}
    assert result.reason == "need 12 more Compost, 3 more Landfill"


def test_new_images_since_the_last_model_are_required() -> None:
    result = evaluate_rule(
        {"Compost": 80, "Landfill": 80, "Recycling": 80},
        accepted_seq=245,
        baseline_seq=230,
        min_per_label=50,
        min_new=20,
    )
    assert not result.met
    assert (result.new_images, result.needed_new) == (15, 5)
    assert result.reason == "need 5 more new images"


def test_one_new_image_reads_singular() -> None:
    result = evaluate_rule({"A": 5}, accepted_seq=10, baseline_seq=0, min_per_label=5, min_new=11)
    assert result.reason == "need 1 more new image"


def test_zero_min_new_only_needs_the_per_label_minimum() -> None:
    result = evaluate_rule({"A": 5, "B": 5}, accepted_seq=10, baseline_seq=10, min_per_label=5, min_new=0)
    assert result.met and result.new_images == 0


def test_baseline_ahead_of_accepted_seq_counts_as_zero_new() -> None:
    result = evaluate_rule({"A": 5}, accepted_seq=3, baseline_seq=9, min_per_label=1, min_new=1)
    assert not result.met and result.new_images == 0 and result.needed_new == 1


def test_no_labels_never_meets_the_rule() -> None:
    assert not evaluate_rule({}, accepted_seq=100, baseline_seq=0, min_per_label=1, min_new=0).met


@pytest.mark.parametrize(
    ("new", "old", "newer"),
    [
        ("0065F1E5B7C2A1D4F0", "0065F1E5B7C2A1D4E7", True),
        ("0065F1E5B7C2A1D4E7", "0065F1E5B7C2A1D4E7", False),
        ("FF", "0100", False),  # left-padded: 00FF < 0100
        ("1000", "FFF", True),
        ("00a1", "009F", True),  # case-insensitive hex
    ],
)
def test_sequencers_compare_as_left_padded_hex(new: str, old: str, newer: bool) -> None:
    assert sequencer_newer(new, old) is newer


def test_owners_map_decides_accepted_duplicate_conflict() -> None:
    assert derive_statuses({"Compost": ["a", "b"]}) == {"a": "accepted", "b": "duplicate"}
    assert derive_statuses({"Compost": ["a", "b"], "Landfill": ["c"]}) == {
        "a": "conflict",
        "b": "conflict",
        "c": "conflict",
    }
    assert derive_statuses({"Compost": [], "Landfill": ["c"]}) == {"c": "accepted"}
