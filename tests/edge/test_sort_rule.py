"""The sort-command rule on scripted sequences of classifications: one command per item, none for unsure
frames, a flicker or a held label, and files as items of their own."""

from __future__ import annotations

from trashsorter_edge.app import SortRule

C, L, R, U = "Compost", "Landfill", "Recycling", None  # U: an unsure frame


def play(rule: SortRule, frames: list[str | None], fps: float = 30.0, *, separate: bool = False) -> list[str]:
    out = []
    for i, label in enumerate(frames):
        fired = rule.update(label or "Landfill", label is None, i / fps, separate=separate)
        if fired is not None:
            out.append(fired)
    return out


def test_one_command_per_item_after_n_frames() -> None:
    # three items (Compost, Compost again after a gap, Recycling) with background (unsure) between them
    frames = [U] * 3 + [C] * 8 + [U] * 3 + [C] * 6 + [U] * 2 + [R] * 9 + [U] * 4
    assert play(SortRule(frames=5, ms=0, gap=2), frames) == [C, C, R]


def test_the_command_fires_when_the_label_has_held_n_frames() -> None:
    rule = SortRule(frames=3, ms=0, gap=2)
    fired = [rule.update(C, False, i / 30) for i in range(6)]
    assert fired == [None, None, C, None, None, None]


def test_ms_rule_fires_a_slow_camera_s_item_before_n_frames() -> None:
    # 2 frames a second: five frames would take 2.5 s; 500 ms of the same label is enough
    assert play(SortRule(frames=5, ms=500, gap=2), [U, C, C, U, U], fps=2) == [C]
    assert play(SortRule(frames=5, ms=0, gap=2), [U, C, C, U, U], fps=2) == []


def test_unsure_frames_never_make_an_item_and_a_blip_does_not_split_one() -> None:
    assert play(SortRule(frames=3, ms=0, gap=2), [U] * 50) == []
    # confident frames interrupted by ONE unsure frame: still the same item, one command
    assert play(SortRule(frames=3, ms=0, gap=2), [C, C, U, C, C, C, U, C, C]) == [C]
    # unsure frames do not count towards the 3 frames: two confident frames are not an item yet
    assert play(SortRule(frames=3, ms=0, gap=3), [C, U, U, C, U, U]) == []


def test_a_flicker_is_not_a_flood_and_a_change_of_label_is_a_new_item() -> None:
    rule = SortRule(frames=3, ms=0, gap=2)
    # A A A (command) B (flicker) A A A: the same item, nothing more
    assert play(rule, [C, C, C, R, C, C, C, C]) == [C]
    # a label that flips every frame never holds: nothing
    assert play(SortRule(frames=3, ms=0, gap=2), [C, R] * 30) == []
    # a real change of label (held) is a new item
    assert play(SortRule(frames=3, ms=0, gap=2), [C] * 4 + [L] * 4 + [C] * 4) == [C, L, C]


def test_files_are_items_of_their_own() -> None:
    rule = SortRule(frames=5, ms=500, gap=2)
    assert play(rule, [C, C, U, R, L], separate=True) == [C, C, R, L]
