"""Learning curve of the CPU default schedule: accuracy and per-class recall (95 % Wilson intervals) against
training photos per label, by cross-validation on a real photo collection.

``python -m benchmarks.learning_curve --data ../shared/datasets/trashnet [--sizes 30,60,120,250,all]
[--folds 5] [--draws 3] [--cache DIR] [--out FILE] [--write]``

Development data (the shared TrashNet set): nothing in the product needs it; when ``--data`` is absent the
benchmark says so and exits 0 (skipped).

Method. Photos are read from their files as the pass needs them (the trainer's own streaming:
``stream.Photos`` + data-loader worker), never all decoded in memory. The frozen part of the CPU default
network (EfficientNet-Lite0 up to the pooled 1280-d features, 224 px) runs ONCE per photo and job, exactly
the jobs the trainer runs: THE preprocessing (centre), its left-right flip (the graph's flip-TTA), and
``views`` = 4 augmented views drawn with ``data.draw_view``; the features go to a float32 ``.npy`` memory map
(kept in ``--cache``: a second run with the same photos reuses it). Then, per label scheme (the six materials;
the recipe's three bins by samples/trashnet/mapping.json), per size n, per draw and per fold, a fresh tail is
trained with ``head.fit_tail`` (the default schedule: 10 epochs of AdamW + cosine decay + label smoothing
0.1, dropout 0.5, batch 32, over the 4 views of each training photo) on n training photos per label (all of
them when a label has fewer), and scores every photo of the held-out fold with ``head.tail_probabilities``
(centre + flip averaged, as the exported graph). Answers are pooled over the folds (every photo answered once
per draw) and ``trashsorter_trainer.report.intervals`` gives the Wilson intervals.

Folds: 5 by content hash (fold 0 = the trainer's 20 % validation split), near-twins (``trashsorter.
near_twins``, the snapshot's rule) kept in one fold, and near-twins under two labels left out (the
snapshot holds them out of training). The n photos per label of a draw are the first n of the fold's
training photos of that label in an order given by a hash of (draw, content): nested sizes, a different
subset per draw. Differences from one trainer run: the views are drawn for every photo (the trainer draws
them for its training photos only: other crops, the same distribution); the tail's answers in torch, not
through the exported ONNX graph (the trainer records their difference, ~1e-6); no refit (the reported
metrics of a run are those of the split run too). Fine-tuning (the GPU schedule) is not measured here.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import random
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks.common import SAMPLES, Result, Section, write_report

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "trashnet"
DEFAULT_CACHE = Path(os.environ.get("TMPDIR", "/tmp")) / "trashsorter-learning-curve"
TARGET_ACCURACY, TARGET_RECALL = 0.90, 0.80


def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S", time.gmtime())
    print(f"{stamp} load {os.getloadavg()[0]:.2f} {message}", file=sys.stderr, flush=True)


def describe(paths: Sequence[Path]) -> tuple[list[str], list[str]]:
    """Content hash and difference hash (the ingest step's near-twin hash) of every photo, one at a time."""
    from trashsorter.near_twins import difference_hash

    shas, phashes = [], []
    for path in paths:
        data = path.read_bytes()
        shas.append(hashlib.sha256(data).hexdigest())
        with Image.open(path) as image:
            image.load()
            phashes.append(difference_hash(image, image.getexif().get(0x0112, 1)) or "")
    return shas, phashes


class OutOfTime(Exception):
    """The feature pass reached its deadline (``--until``)."""


def _leading_rows(bank: np.ndarray) -> int:
    """Rows written from the start of an unfinished map (a pooled feature row is never all zero)."""
    written = np.abs(np.asarray(bank)).sum(axis=1) > 0
    return len(written) if written.all() else int(np.argmin(written))


def features(
    samples: Sequence[Any], config: Any, cache: Path, key: str, until: float | None = None
) -> tuple[dict[str, np.ndarray], int]:
    """The frozen features of every photo, one segment at a time, in this order: ``centre`` (THE
    preprocessing), ``flip`` and ``view0`` .. ``view<views-1>`` (augmented views, drawn in that order with
    ``draw_view``), each a float32 ``.npy`` file in ``cache`` once complete (a later run reuses it). A
    segment left unfinished (``partial-<key>.npy``, rows in the same order) resumes at its first missing
    row. At ``until`` (``time.time()``) the pass stops: the segments completed so far are returned, with
    the number of images this call ran through the backbone."""
    from trashsorter_trainer.data import draw_view
    from trashsorter_trainer.head import build_model
    from trashsorter_trainer.stream import Job, Photos, feature_pass, source_sizes, worker_count

    cache.mkdir(parents=True, exist_ok=True)
    n = len(samples)
    rng = random.Random(config.seed)
    sizes = source_sizes(samples, config.image_size)
    segments: dict[str, list[Any]] = {"centre": [Job(i) for i in range(n)]}
    segments["flip"] = [Job(i, flip=True) for i in range(n)]
    for v in range(config.views):
        segments[f"view{v}"] = [Job(i, draw_view(rng, *sizes[i])) for i in range(n)]
    partial = cache / f"partial-{key}.npy"
    earlier = np.load(partial, mmap_mode="r") if partial.is_file() else None
    model = build_model(2, config)
    done: dict[str, np.ndarray] = {}
    started, computed = time.perf_counter(), 0
    for offset, (name, jobs) in enumerate(segments.items()):
        path = cache / f"features-{key}-{name}.npy"
        if not path.is_file():
            kept = np.zeros((0, 1280), np.float32)
            if earlier is not None and len(earlier) >= (offset + 1) * n:
                kept = np.array(
                    earlier[offset * n : offset * n + _leading_rows(earlier[offset * n : (offset + 1) * n])]
                )
                log(f"{name}: {len(kept)} rows from an earlier run")
            if len(kept) < n:
                if until is not None and time.time() > until:
                    log(f"out of time before {name}")
                    break

                def tick(count: int, name: str = name) -> None:
                    nonlocal computed
                    computed += count
                    if computed % 320 < count:
                        rate = computed / (time.perf_counter() - started)
                        log(f"{name}: {computed} images computed ({rate:.2f} images/s)")
                    if until is not None and time.time() > until:
                        raise OutOfTime(name)

                rest = jobs[len(kept) :]
                try:
                    bank = feature_pass(
                        model.frozen,
                        Photos(samples, rest, config.image_size),
                        [len(rest)],
                        config.batch_size,
                        worker_count(config.loader_workers, "cpu"),
                        cache / f"rest-{key}-{name}.npy",
                        tick=tick,
                    )
                except OutOfTime:
                    log(f"out of time in {name}")
                    break
                kept = np.concatenate([kept, np.asarray(bank)])
                del bank
                (cache / f"rest-{key}-{name}.npy").unlink()
            np.save(cache / f"tmp-{key}.npy", kept)
            (cache / f"tmp-{key}.npy").rename(path)
        done[name] = np.load(path, mmap_mode="r")
        log(f"{name} ready")
    seconds = time.perf_counter() - started
    log(f"{computed} images computed in {seconds:.0f} s ({computed / max(seconds, 1e-9):.2f} images/s)")
    return done, computed


def units(keys: Sequence[str], labels: Sequence[str], shas: Sequence[str], phashes: Sequence[str]) -> Any:
    """(fold score per photo, photos left out): near-twins share their group's smallest content hash; a
    group under two labels is left out, as the snapshot does."""
    from trashsorter.near_twins import Photo, near_conflicts, twin_groups

    photos = [Photo(k, lab, p) for k, lab, p in zip(keys, labels, phashes, strict=True) if p]
    groups = twin_groups(photos)
    left_out = set(near_conflicts(groups))
    index = {k: i for i, k in enumerate(keys)}
    score = [int(sha[:8], 16) for sha in shas]
    for group in groups:
        members = [index[p.key] for p in group]
        low = min(score[i] for i in members)
        for i in members:
            score[i] = low
    return score, left_out


def training_segments(feats: Mapping[str, np.ndarray]) -> list[str]:
    """What the heads train on: the augmented views computed (the default: all ``views`` of them), else the
    centre (and flip) features alone."""
    views = [name for name in feats if name.startswith("view")]
    return views or [name for name in ("centre", "flip") if name in feats]


def curve(
    feats: Mapping[str, np.ndarray],
    labels: Sequence[str],
    y: Sequence[int],
    fold: Sequence[int],
    shas: Sequence[str],
    used: Sequence[bool],
    sizes: Sequence[int | None],
    draws: int,
    config: Any,
) -> list[dict[str, Any]]:
    """Per size and draw: the pooled held-out confusion matrix, the scores and their Wilson intervals."""
    from trashsorter_trainer import report
    from trashsorter_trainer.head import build_model, fit_tail, tail_probabilities

    n = len(y)
    centre = np.asarray(feats["centre"])
    flip = np.asarray(feats["flip"]) if "flip" in feats else None
    train_on = training_segments(feats)
    views = np.concatenate([np.asarray(feats[name]) for name in train_on])
    y_bank = torch.tensor(list(y)).repeat(len(train_on))
    torch.set_num_threads(1)  # the heads are tiny: one thread beats two on a shared machine
    fresh = build_model(
        len(labels), config
    )  # built once (the pretrained backbone loads slowly); a copy per head
    rows_out = []
    for size in sizes:
        for draw in range(draws if size is not None else 1):
            order = sorted(range(n), key=lambda i: hashlib.sha256(f"{draw}:{shas[i]}".encode()).digest())
            truth: list[int] = []
            answers: list[int] = []
            trained: list[int] = []
            for k in sorted(set(fold)):
                taken: dict[int, int] = {}
                chosen = []
                for i in order:
                    if fold[i] != k and used[i] and (size is None or taken.get(y[i], 0) < size):
                        taken[y[i]] = taken.get(y[i], 0) + 1
                        chosen.append(i)
                rows = torch.tensor([v * n + i for v in range(len(train_on)) for i in chosen])
                model = copy.deepcopy(fresh)
                fit_tail(model, views, y_bank, config, rows=rows)
                test = [i for i in range(n) if fold[i] == k and used[i]]
                probs = tail_probabilities(
                    model, centre[test], None if flip is None else flip[test], config.batch_size
                )
                truth += [y[i] for i in test]
                answers += probs.argmax(1).tolist()
                trained.append(len(chosen))
            matrix = report.confusion_matrix(truth, answers, len(labels))
            scores = report.classification_metrics(matrix, labels)
            rows_out.append(
                {
                    "per_label": size or "all",
                    "draw": draw,
                    "training_photos_per_fold": trained,
                    "tested": len(truth),
                    "accuracy": round(scores["accuracy"], 4),
                    "recall": {label: c["recall"] for label, c in scores["per_class"].items()},
                    "intervals": report.intervals(matrix, labels),
                    "confusion_matrix": matrix,
                }
            )
            log(f"{len(labels)} labels, {size or 'all'} per label, draw {draw}: {scores['accuracy']:.3f}")
    return rows_out


def run(
    data: Path,
    sizes: Sequence[int | None],
    folds: int,
    draws: int,
    cache: Path,
    until: float | None,
    class_balanced: bool = False,
) -> dict[str, Any]:
    from trashsorter_trainer.config import TrainConfig
    from trashsorter_trainer.data import samples_from_directory
    from trashsorter_trainer.train import configure_process

    config = TrainConfig.for_device("cpu")
    configure_process(config.threads)
    samples, materials = samples_from_directory(data)
    started = time.perf_counter()
    shas, phashes = describe([data / s.key for s in samples])
    log(f"{len(samples)} photos hashed in {time.perf_counter() - started:.0f} s")
    digest = hashlib.sha256(
        json.dumps([shas, config.image_size, config.views, config.seed]).encode()
    ).hexdigest()[:16]
    featured = time.perf_counter()
    feats, computed = features(samples, config, cache, digest, until)
    feature_seconds = time.perf_counter() - featured
    if "centre" not in feats:
        raise SystemExit("out of time before the centre features were complete: no curve")
    bins = {k: v for k, v in json.loads((SAMPLES / "mapping.json").read_text()).items() if not k[0] == "_"}
    bin_of = {folder: label for label, folders in bins.items() for folder in folders}
    keys = [s.key for s in samples]
    folder = [k.split("/")[0] for k in keys]
    out: dict[str, Any] = {
        "photos": len(samples),
        "folds": folds,
        "draws": draws,
        "config": {"image_size": config.image_size, "views": config.views, "epochs": config.epochs},
        "feature_segments": list(feats),
        "trained_on": training_segments(feats),
        "test_time_flip": "flip" in feats,
        "feature_seconds": round(feature_seconds, 1),
        "images_computed": computed,
        "schemes": {},
    }
    for scheme, names in (("materials", materials), ("bins", sorted(bins))):
        label_of = [f if scheme == "materials" else bin_of[f] for f in folder]
        score, left_out = units(keys, label_of, shas, phashes)
        fold = [s * folds // 0x1_0000_0000 for s in score]
        used = [k not in left_out for k in keys]
        y = [names.index(lab) for lab in label_of]
        for balanced in (False, True) if class_balanced else (False,):
            trained = time.perf_counter()
            setting = replace(config, class_balanced=balanced)
            rows = curve(feats, names, y, fold, shas, used, sizes, draws, setting)
            out["schemes"][scheme + (", class-balanced loss" if balanced else "")] = {
                "labels": list(names),
                "photos_per_label": {lab: label_of.count(lab) for lab in names},
                "left_out_near_conflicts": sorted(left_out),
                "heads_seconds": round(time.perf_counter() - trained, 1),
                "rows": rows,
            }
    return out


def verdict(row: dict[str, Any]) -> str:
    """Whether the accuracy target holds, with its intervals: met (every lower bound at or above its
    target), missed (an upper bound under its target), or undecided."""
    ci = row["intervals"]
    lows = [ci["accuracy"][0] >= TARGET_ACCURACY] + [lo >= TARGET_RECALL for lo, _ in ci["recall"].values()]
    highs = [ci["accuracy"][1] < TARGET_ACCURACY] + [hi < TARGET_RECALL for _, hi in ci["recall"].values()]
    if any(highs):
        return "missed"
    return "met" if all(lows) else "undecided"


def section(result: dict[str, Any], load: tuple[float, float]) -> Section:
    results, details = [], []
    for scheme, found in result["schemes"].items():
        labels = found["labels"]
        details += [
            f"**{scheme}** ({', '.join(f'{k} {v}' for k, v in found['photos_per_label'].items())} photos; "
            f"{len(found['left_out_near_conflicts'])} near-twins under two labels left out)",
            "",
            "| photos per label | draw | accuracy (95 % interval) | "
            + " | ".join(f"{lab} recall" for lab in labels)
            + " |",
            "|---|---|---|" + "---|" * len(labels),
        ]
        for row in found["rows"]:
            ci = row["intervals"]
            cells = [
                f"{row['recall'][lab]:.2f} ({ci['recall'][lab][0]:.2f}-{ci['recall'][lab][1]:.2f})"
                for lab in labels
            ]
            details.append(
                f"| {row['per_label']} | {row['draw']} | {row['accuracy']:.3f} "
                f"({ci['accuracy'][0]:.3f}-{ci['accuracy'][1]:.3f}) | " + " | ".join(cells) + " |"
            )
        details.append("")
        for size in dict.fromkeys(r["per_label"] for r in found["rows"]):
            draws = [r for r in found["rows"] if r["per_label"] == size]
            accs = [r["accuracy"] for r in draws]
            ci = draws[0]["intervals"]["accuracy"]
            worst = min(labels, key=lambda lab: draws[0]["recall"][lab])
            spread = f"; draws {min(accs):.3f}-{max(accs):.3f}" if len(accs) > 1 else ""
            results.append(
                Result(
                    f"learning curve, {scheme}",
                    f"{size} photos per label",
                    f"{accs[0]:.3f} ({ci[0]:.3f}-{ci[1]:.3f})",
                    ">= 0.90, every class >= 0.80" if size == "all" else "",
                    {"met": True, "missed": False}.get(verdict(draws[0])) if size == "all" else None,
                    f"lowest recall {worst} {draws[0]['recall'][worst]:.2f}{spread}"
                    + (f"; {verdict(draws[0])} with the intervals" if size == "all" else ""),
                )
            )
    details.append(
        f"Features: segments {', '.join(result['feature_segments'])} of {result['photos']} photos "
        f"(heads trained on {', '.join(result['trained_on'])}; test-time flip {result['test_time_flip']}); "
        f"{result['images_computed']} backbone passes in this run, {result['feature_seconds']} s; "
        f"load average {load[0]:.2f} -> {load[1]:.2f} on {os.cpu_count()} CPUs"
        + (" (timings are upper bounds: the machine was shared)" if max(load) > 2 else "")
        + "; heads: "
        + ", ".join(f"{s} {f['heads_seconds']} s" for s, f in result["schemes"].items())
    )
    return Section(
        "Learning curve (cross-validation)", results=results, method=__doc__ or "", details=details
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.learning_curve", description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="one folder of photos per material")
    parser.add_argument("--sizes", default="30,60,120,250,all", help="training photos per label")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--draws", type=int, default=3, help="subsets drawn per size (all: one)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="folder for the feature map")
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    parser.add_argument(
        "--until", help="HH:MM (UTC, today): stop the feature pass then, use the segments completed"
    )
    parser.add_argument(
        "--class-balanced",
        action="store_true",
        help="also every curve with local_class_balanced (loss weights inverse to class frequency)",
    )
    parser.add_argument("--write", action="store_true", help="write the section into benchmarks/results.md")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"skipped: no photo collection at {args.data} (development data; see the module docstring)")
        return 0
    sizes = [None if s.strip() == "all" else int(s) for s in args.sizes.split(",")]
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
    load_before, started = os.getloadavg()[0], time.perf_counter()
    until = None
    if args.until:
        hour, minute = (int(x) for x in args.until.split(":"))
        today = datetime.now(UTC).replace(hour=hour, minute=minute, second=0, microsecond=0)
        until = today.timestamp()
    result = run(args.data, sizes, args.folds, args.draws, args.cache, until, args.class_balanced)
    result["load_average_before_after"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text)
    done = section(result, (load_before, os.getloadavg()[0]))
    done.seconds = time.perf_counter() - started
    print("\n".join(done.details))
    if args.write:
        write_report([done])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
