"""The sort-command rule on scripted sequences of classifications: one command per item (a flickering item:
one, with its majority label), none for unsure frames, a glimpse, a flicker inside a commanded item or a held
label, files as items of their own, and a new object (a scene change) as a new item even with the same
label."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from trashsorter_edge.app import SortRule
from trashsorter_edge.scene import SceneChange

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
    # a real change of label (held) is a new item
    assert play(SortRule(frames=3, ms=0, gap=2), [C] * 4 + [L] * 4 + [C] * 4) == [C, L, C]


def test_an_item_whose_label_flips_every_frame_gets_one_command_with_its_majority_label() -> None:
    # 60 frames, never two of a label in a row: one command, at the item's 3rd frame (C, R, C: C twice)
    rule = SortRule(frames=3, ms=0, gap=2)
    fired = [rule.update(label, False, i / 30) for i, label in enumerate([C, R] * 30)]
    assert [f for f in fired if f] == [C] and fired[2] == C
    # the majority wins even when the item starts with the minority label: R, C, C, R, C, C, ...
    assert play(SortRule(frames=5, ms=0, gap=2), [R, C, C] * 20) == [C]
    # the 500 ms rule takes the majority too: 2 frames a second, R C C R C C ... fires at the 2nd frame
    # (R and C tie 1:1 at 500 ms; C comes with the higher mean confidence)
    rule = SortRule(frames=5, ms=500, gap=2)
    confidence = {C: 0.9, R: 0.7}
    fired = [rule.update(x, False, i / 2, confidence=confidence[x]) for i, x in enumerate([R, C, C] * 4)]
    assert [f for f in fired if f] == [C] and fired[1] == C


def test_a_tie_goes_to_the_label_with_the_higher_mean_confidence() -> None:
    for r_conf, c_conf, winner in ((0.9, 0.7, R), (0.7, 0.9, C)):
        rule = SortRule(frames=4, ms=0, gap=2)
        confidence = {C: c_conf, R: r_conf}
        fired = [rule.update(x, False, i / 30, confidence=confidence[x]) for i, x in enumerate([C, R] * 10)]
        assert [f for f in fired if f] == [winner] and fired[3] == winner


def test_a_flickering_item_then_a_scene_change_is_two_items_one_command_each() -> None:
    rule = SortRule(frames=3, ms=0, gap=2)
    first = [(C, False), (R, False)] * 5  # majority C (C first: 2 of 3 at frame 3)
    second = [(R, True)] + [(C, False), (R, False)] * 5  # a new object: R, C, R, ...: majority R
    fired = [rule.update(x, False, i / 30, changed=changed) for i, (x, changed) in enumerate(first + second)]
    assert [f for f in fired if f] == [C, R] and fired[2] == C and fired[12] == R
    # a flicker, then a scene change, then nothing: only the first item's command
    rule = SortRule(frames=3, ms=0, gap=2)
    fired = [rule.update(x, False, i / 30) for i, x in enumerate([C, R] * 5)]
    fired.append(rule.update(C, True, 10 / 30, changed=True))  # the scene changed to the background
    fired += [rule.update(C, True, (11 + i) / 30) for i in range(20)]  # unsure frames only
    assert [f for f in fired if f] == [C]


def test_an_unsure_only_item_and_a_glimpse_get_no_command() -> None:
    rule = SortRule(frames=5, ms=500, gap=2)
    # an item seen only with unsure frames (with scene changes between): nothing, whatever its labels say
    fired = [rule.update([C, R][i % 2], True, i / 30, changed=i % 7 == 0) for i in range(70)]
    assert [f for f in fired if f] == []
    # a glimpse: two confident frames between unsure gaps, shorter than 5 frames and 500 ms: nothing
    assert play(SortRule(frames=5, ms=500, gap=2), [U, U, C, R, U, U, R, U, U] * 5) == []


def test_files_are_items_of_their_own() -> None:
    rule = SortRule(frames=5, ms=500, gap=2)
    assert play(rule, [C, C, U, R, L], separate=True) == [C, C, R, L]


SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "trashnet"


def camera(path: Path, frames: int, rng: random.Random) -> list[Image.Image]:
    """A photo as a camera shows it ``frames`` times: a few pixels of jitter, +-4 % light, sensor noise."""
    photo = Image.open(path).convert("RGB").resize((320, 240))
    shots = []
    for _ in range(frames):
        dx, dy = rng.randint(-3, 3), rng.randint(-3, 3)
        shot = photo.transform(photo.size, Image.Transform.AFFINE, (1, 0, dx, 0, 1, dy), fillcolor=(128,) * 3)
        shot = ImageEnhance.Brightness(shot).enhance(1 + rng.uniform(-0.04, 0.04))
        noise = np.random.default_rng(rng.randrange(1 << 30)).normal(0, 3, (240, 320, 3))
        shots.append(Image.fromarray(np.clip(np.asarray(shot) + noise, 0, 255).astype(np.uint8)))
    return shots


def play_scene(rule: SortRule, scene: SceneChange, shots: list[Image.Image], label: str) -> list[str]:
    fired = [rule.update(label, False, i / 30, changed=scene.changed(shot)) for i, shot in enumerate(shots)]
    return [f for f in fired if f is not None]


def test_a_new_object_with_the_same_label_is_a_new_item_and_a_held_one_is_not() -> None:
    rng = random.Random(7)
    first, second = sorted((SAMPLES / "glass").glob("*.jpg"))[:2]
    k = 5
    # two bottles back to back, every frame confident Recycling, no unsure frame between them: two commands
    shots = camera(first, k, rng) + camera(second, k, rng)
    assert play_scene(SortRule(frames=k, ms=0, gap=2), SceneChange(), shots, R) == [R, R]
    # without the scene-change test they merge into one item
    assert play_scene(SortRule(frames=k, ms=0, gap=2), SceneChange(0), shots, R) == [R]
    # one bottle held still for 3k noisy frames: one command
    assert play_scene(SortRule(frames=k, ms=0, gap=2), SceneChange(), camera(first, 3 * k, rng), R) == [R]


def test_a_scene_change_ends_the_item_even_mid_flicker() -> None:
    rule = SortRule(frames=3, ms=0, gap=2)
    fired = [rule.update(C, False, i / 30, changed=(i == 4)) for i in range(8)]
    # frames 0-2 make the first item; the change at frame 4 starts a second one, held 3 frames at frame 6
    assert [f for f in fired if f] == [C, C] and fired[2] == C and fired[6] == C
