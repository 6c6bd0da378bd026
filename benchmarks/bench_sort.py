"""The sort-command rule on a belt of held-back photos: commands per item and false extra commands.

Method: a model trained by the project's trainer (``trashsorter_trainer.train``, 2 epochs at 128 px) on the
first 10 TrashNet sample photos of three folders (paper -> Compost, trash -> Landfill, glass -> Recycling);
the held-back photos are the last 4 of each folder (12, never seen in training). A sequence of M = 60 items
(random order, seed 1; half of the items have the label of the item before them, back to back: the case a
label-only rule merges) is shown k frames per item (k = 5 and 10) at 320x240, each frame with camera-like
noise (+-3 px jitter, +-4 % light, sensor noise sigma 3), through the real ``EdgeApp.run`` (default
settings, ``threshold`` 0 so that no frame is unsure: no unsure gap separates items, the hardest case) into
an in-memory publisher. An item's commands are those sent while its frames are shown; a command beyond the
first of an item is a false extra. Reported: commands / items, extras / items, how many items' first command
names their true label (the classifier's accuracy shows there, not the rule's), the scene-change test's cost
per frame, with the 1-minute load average (the machine may be shared). To tell the rule from the
classifier, the same frames also go through ``SortRule`` + ``SceneChange`` alone, every frame labelled with
its item's true label (30 fps), with the scene-change test on and off.
"""

from __future__ import annotations

import itertools
import os
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

from benchmarks.common import SAMPLES, Result, Section, median

BINS = (("Compost", "paper"), ("Landfill", "trash"), ("Recycling", "glass"))
TRAIN, HELD_BACK = 10, 4


def make_model(directory: Path) -> dict[str, list[Path]]:
    """Train the small model; returns the held-back photos of each label."""
    from trashsorter_trainer.data import Sample
    from trashsorter_trainer.train import TrainConfig, train

    samples, held = [], {}
    for label, folder in BINS:
        paths = sorted((SAMPLES / folder).glob("*.jpg"))
        for i, path in enumerate(paths[: TRAIN + 1]):
            split = "train" if i < TRAIN else "validation"
            samples.append(Sample(f"{folder}/{path.name}", label, split, path.read_bytes()))
        held[label] = paths[-HELD_BACK:]
    config = TrainConfig(epochs=2, views=1, image_size=128, batch_size=8, threads=2)
    train(samples, [label for label, _ in BINS], directory, config)
    return held


def belt(held: dict[str, list[Path]], items: int, rng: random.Random) -> list[Path]:
    """M items; half repeat the label before them (another photo: another object)."""
    labels = sorted(held)
    order: list[Path] = []
    for _ in range(items):
        folder_label = {folder: label for label, folder in BINS}
        label = folder_label[order[-1].parent.name] if order and rng.random() < 0.5 else rng.choice(labels)
        choices = [p for p in held[label] if not order or p != order[-1]]
        order.append(rng.choice(choices))
    return order


def shots(path: Path, frames: int, rng: random.Random) -> Iterator[Image.Image]:
    photo = Image.open(path).convert("RGB").resize((320, 240))
    for _ in range(frames):
        dx, dy = rng.randint(-3, 3), rng.randint(-3, 3)
        shot = photo.transform(photo.size, Image.Transform.AFFINE, (1, 0, dx, 0, 1, dy), fillcolor=(128,) * 3)
        shot = ImageEnhance.Brightness(shot).enhance(1 + rng.uniform(-0.04, 0.04))
        noise = np.random.default_rng(rng.randrange(1 << 30)).normal(0, 3, (240, 320, 3))
        yield Image.fromarray(np.clip(np.asarray(shot) + noise, 0, 255).astype(np.uint8))


class Belt:
    """A continuous source: the items' frames, noting which item each frame shows."""

    continuous = True

    def __init__(self, order: list[Path], k: int, seed: int) -> None:
        self.order, self.k, self.rng = order, k, random.Random(seed)
        self.showing = -1

    def __iter__(self) -> Iterator[Any]:
        from trashsorter_edge.sources import Frame

        for item, path in enumerate(self.order):
            self.showing = item
            for n, image in enumerate(shots(path, self.k, self.rng)):
                yield Frame(image=image, source="belt", name=f"{item}-{n}")

    def stop(self) -> None:
        return None


class Commands:
    def __init__(self, source: Belt) -> None:
        self.source = source
        self.per_item: dict[int, list[str]] = {}

    def publish(self, topic: str, payload: dict[str, Any], qos: int = 0) -> None:
        if topic.endswith("/object"):
            self.per_item.setdefault(self.source.showing, []).append(payload["object"])

    def close(self) -> None:
        return None


def play(model_dir: Path, order: list[Path], k: int, debounce: int) -> tuple[int, int, int, int]:
    """-> (commands, false extras, items whose frames the model gave more than one top label, items whose
    first command names their true label). ``BENCH_SORT_TRACE=1`` prints every item's frames and commands."""
    from trashsorter_edge.app import EdgeApp, Settings

    source = Belt(order, k, seed=k)
    commands = Commands(source)
    labels: dict[int, list[str]] = {}

    def hook(_frame: Any, result: dict[str, Any]) -> None:
        mark = f"*{result['command']['object']}" if result["command"] else ""  # *<label commanded>
        labels.setdefault(source.showing, []).append(f"{result['label'][0]}{result['confidence']:.2f}{mark}")

    settings = Settings(threshold=0.0, publish_rate=0, debounce=debounce)
    EdgeApp(model_dir, commands, settings, hooks=[hook]).run(source)
    folder_label = {folder: label for label, folder in BINS}
    truth = [folder_label[path.parent.name] for path in order]
    if os.environ.get("BENCH_SORT_TRACE"):
        for item, seen in sorted(labels.items()):
            print(f"k={k} debounce={debounce} item {item} {truth[item]}: {' '.join(seen)}", flush=True)
    sent = commands.per_item.values()
    flickering = sum(len({frame[0] for frame in seen}) > 1 for seen in labels.values())
    right = sum(cmds[0] == truth[item] for item, cmds in commands.per_item.items())
    return sum(map(len, sent)), sum(len(c) - 1 for c in sent if len(c) > 1), flickering, right


def rule_alone(order: list[Path], k: int, scene_change: float) -> tuple[int, int]:
    """The same noisy frames through SortRule + SceneChange with every frame labelled with its item's true
    label (no classifier): -> (commands, false extras)."""
    from trashsorter_edge.app import SortRule
    from trashsorter_edge.scene import SceneChange

    rule, scene, rng = SortRule(), SceneChange(scene_change), random.Random(k)
    folder_label = {folder: label for label, folder in BINS}
    per_item = []
    for n, path in enumerate(order):
        fired = [
            rule.update(folder_label[path.parent.name], False, (n * k + i) / 30, changed=scene.changed(image))
            for i, image in enumerate(shots(path, k, rng))
        ]
        per_item.append(sum(f is not None for f in fired))
    return sum(per_item), sum(c - 1 for c in per_item if c > 1)


def scene_cost(held: dict[str, list[Path]]) -> float:
    from trashsorter_edge.scene import SceneChange

    scene, images = SceneChange(), [Image.open(p).convert("RGB").resize((640, 480)) for p in held["Compost"]]
    times = []
    for i in range(400):
        started = time.perf_counter()
        scene.changed(images[i % len(images)])
        times.append(time.perf_counter() - started)
    return median(times) * 1e6


def run(quick: bool = False) -> Section:
    section = Section("Sort commands (a belt of held-back photos)", method=__doc__ or "")
    items = 20 if quick else 60
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="trashsorter-bench-sort-") as tmp:
        held = make_model(Path(tmp))
        order = belt(held, items, random.Random(1))
        repeats = sum(a.parent == b.parent for a, b in itertools.pairwise(order))
        for k, debounce in ((5, 5), (5, 3), (10, 5)):
            sent, extras, flickering, right = play(Path(tmp), order, k, debounce)
            load = max(load, os.getloadavg()[0])
            name = f"k = {k}, --debounce {debounce}"
            section.results += [
                Result(
                    name,
                    "commands / items",
                    f"{sent / items:.2f} ({sent} / {items})",
                    ">= 0.95",
                    sent >= 0.95 * items,
                    notes=f"{repeats} items follow one of the same label; the model's top label changes "
                    f"within {flickering} items; {right} items' first command names their true label",
                ),
                Result(
                    name,
                    "false extra commands",
                    f"{100 * extras / items:.1f} %",
                    "<= 5 %",
                    extras <= 0.05 * items,
                ),
            ]
        for k, scene_change in ((5, 10.0), (5, 0.0)):
            sent, extras = rule_alone(order, k, scene_change)
            section.results.append(
                Result(
                    f"the rule alone, k = {k}, --scene-change {scene_change:g}",
                    "commands / items; false extras",
                    f"{sent / items:.2f} ({sent} / {items}); {100 * extras / items:.1f} %",
                    notes="every frame labelled with its item's true label, 30 fps, default settings",
                )
            )
        cost = scene_cost(held)
    section.results.append(
        Result(
            "scene-change test",
            "cost per 640x480 frame (median)",
            f"{cost:.0f} us",
            notes=f"load average up to {load:.1f} on {os.cpu_count()} CPUs",
        )
    )
    return section
