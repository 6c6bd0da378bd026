"""K-fold cross-validation of the local trainer's settings over ALL photos (how the defaults were chosen).

``python -m trashsorter_cli.trainer.crossval --samples samples/trashnet [--folds 5]
[--hyperparameters '{"epochs": "10"}'] [--grid '[{"local_dropout": "0.2"}, {"local_finetune_blocks": "1"}]']
[--train-fractions 0.75,1] [--seeds 0,1,2]``

Folds come from the content hash (fold = first 8 hex digits of the SHA-256 x folds / 2**32), so with 5
folds, fold 0 is exactly the trainer's 20 % hash validation split. The frozen part of the network runs
ONCE per image and view (centre crop, its flip, ``views`` augmented views) and is shared by every fold and
every grid entry with the same cut / views / size; each fold then trains a fresh tail with
:func:`head.fit_tail` and evaluates it with :func:`head.tail_probabilities` (the flip-TTA of the graph),
exactly as :func:`train.train` does. Settings with ``local_finetune_epochs`` change the network itself, so
no cache serves them: each fold runs the whole :func:`train.train` (without the refit), minutes per fold.
Prints one JSON document: per setting, the fold accuracies, mean and
standard deviation, the pooled confusion matrix, 95 % Wilson intervals of the pooled accuracy and of every
class's recall, and the errors by source folder.

One run of a setting is one random draw (augmented views, shuffling, dropout: ``local_seed``), and on a
few hundred photos draws of the same setting differ by several points. ``--seeds`` runs every setting once
per seed and adds ``draws``: per setting, each draw's mean, their mean and range, and the confusion matrix
pooled over the draws, which is how two settings should be compared.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from trashsorter_trainer import report
from trashsorter_trainer.data import (
    Sample,
    augment,
    decode,
    load_mapping,
    preprocess,
    resize_short_side,
    samples_from_directory,
)
from trashsorter_trainer.head import (
    build_model,
    fit_tail,
    flipped,
    frozen_features,
    tail_probabilities,
)
from trashsorter_trainer.train import TrainConfig, configure_process, train


def fold_of(data: bytes, folds: int) -> int:
    """Hash fold of an image's content (fold 0 of 5 == the trainer's 20 % validation split)."""
    return int(hashlib.sha256(data).hexdigest()[:8], 16) * folds // 0x1_0000_0000


def kept_for_training(data: bytes, fraction: float) -> bool:
    """Whether an image stays in a fold's training set when only ``fraction`` of it is used (the learning
    curve: hash digits 8-16, independent of the fold digits)."""
    return int(hashlib.sha256(data).hexdigest()[8:16], 16) / 0x1_0000_0000 < fraction


def _feature_key(config: TrainConfig) -> tuple[int, int, int]:
    return (config.finetune_blocks, config.image_size, config.seed)


def cached_features(samples: Sequence[Sample], config: TrainConfig, views: int) -> dict[str, torch.Tensor]:
    """Frozen features of every sample: ``center``, ``flip`` [N, ...] and ``views`` [V, N, ...]."""
    model = build_model(2, config)
    size = config.image_size
    rng = random.Random(config.seed)
    images = [decode(s.data, s.key) for s in samples]
    centers = [preprocess(image, size) for image in images]
    sources = [resize_short_side(image, round(size * 1.15)) for image in images]
    return {
        "center": frozen_features(model, centers, config.batch_size),
        "flip": frozen_features(model, [flipped(c) for c in centers], config.batch_size),
        "views": torch.stack(
            [
                frozen_features(model, [augment(src, rng, size) for src in sources], config.batch_size)
                for _ in range(views)
            ]
        ),
    }


def evaluate(
    samples: Sequence[Sample],
    labels: Sequence[str],
    folds: Sequence[int],
    config: TrainConfig,
    features: Mapping[str, torch.Tensor],
    train_fraction: float = 1.0,
) -> dict[str, Any]:
    """Train a fresh tail per fold on the cached features and score the held-out fold (training on the
    ``train_fraction`` of each fold's training images chosen by :func:`kept_for_training`)."""
    index = {label: i for i, label in enumerate(labels)}
    y = torch.tensor([index[s.label] for s in samples])
    fold_ids = torch.tensor(folds)
    kept = torch.tensor([kept_for_training(s.data, train_fraction) for s in samples])
    answers: list[tuple[list[int], list[int]]] = []
    for k in sorted(set(folds)):
        train_mask, test_mask = (fold_ids != k) & kept, fold_ids == k
        bank = features["views"][: config.views, train_mask].reshape(-1, *features["views"].shape[2:])
        y_bank = y[train_mask].repeat(config.views)
        model = build_model(len(labels), config)
        fit_tail(model, bank, y_bank, config)
        flip = features["flip"][test_mask] if config.flip_tta else None
        probs = tail_probabilities(model, features["center"][test_mask], flip, config.batch_size)
        answers.append((test_mask.nonzero().flatten().tolist(), probs.argmax(1).tolist()))
    return _scores(samples, labels, answers)


def evaluate_by_training(
    samples: Sequence[Sample],
    labels: Sequence[str],
    folds: Sequence[int],
    config: TrainConfig,
    train_fraction: float = 1.0,
) -> dict[str, Any]:
    """For settings no feature cache can serve (``finetune_epochs``: the network itself trains): the
    trainer's own :func:`train.train` per fold, the fold as its validation split, without the refit,
    scored on the exported ONNX graph's answers (what the trainer reports)."""
    answers: list[tuple[list[int], list[int]]] = []
    with tempfile.TemporaryDirectory(prefix="crossval-") as tmp:
        for k in sorted(set(folds)):
            chosen = [
                i
                for i, (s, f) in enumerate(zip(samples, folds, strict=True))
                if f == k or kept_for_training(s.data, train_fraction)
            ]
            fold = [replace(samples[i], split="validation" if folds[i] == k else "train") for i in chosen]
            result = train(fold, labels, Path(tmp) / f"fold-{k}", replace(config, refit=False))
            assert result.validation_probabilities is not None
            held_out = [i for i in chosen if folds[i] == k]  # train() keeps the samples' order
            answers.append((held_out, result.validation_probabilities.argmax(1).tolist()))
    return _scores(samples, labels, answers)


def _scores(
    samples: Sequence[Sample], labels: Sequence[str], answers: Sequence[tuple[list[int], list[int]]]
) -> dict[str, Any]:
    """Fold accuracies, pooled confusion and errors from (held-out sample indices, predictions) per fold."""
    index = {label: i for i, label in enumerate(labels)}
    accuracies: list[float] = []
    truth: list[int] = []
    predicted: list[int] = []
    errors: Counter[str] = Counter()
    for held_out, predictions in answers:
        fold_truth = [index[samples[i].label] for i in held_out]
        right = sum(int(p == t) for p, t in zip(predictions, fold_truth, strict=True))
        accuracies.append(right / len(held_out))
        truth.extend(fold_truth)
        predicted.extend(predictions)
        for i, p, t in zip(held_out, predictions, fold_truth, strict=True):
            if p != t:
                errors[f"{samples[i].key.split('/')[0]} -> {labels[p]}"] += 1
    matrix = report.confusion_matrix(truth, predicted, len(labels))
    scores = report.classification_metrics(matrix, labels)
    return {
        "fold_accuracy": [round(a, 4) for a in accuracies],
        "mean": round(statistics.mean(accuracies), 4),
        "std": round(statistics.pstdev(accuracies), 4),
        "pooled_accuracy": round(scores["accuracy"], 4),
        "recall": {label: c["recall"] for label, c in scores["per_class"].items()},
        # 95 % Wilson intervals over the pooled held-out answers: what the photos can tell apart
        "intervals": report.intervals(matrix, labels),
        "confusion_matrix": matrix,
        "errors_by_folder": dict(errors.most_common()),
    }


def crossvalidate(
    samples: Sequence[Sample],
    labels: Sequence[str],
    settings: Sequence[Mapping[str, Any]],
    folds: int = 5,
    base: Mapping[str, Any] | None = None,
    train_fractions: Sequence[float] = (1.0,),
) -> list[dict[str, Any]]:
    """Cross-validate each hyperparameter override in ``settings`` (merged onto ``base``), once per
    ``train_fractions`` entry: each fold trains on that share of its training images (a learning curve)."""
    fold_ids = [fold_of(s.data, folds) for s in samples]
    configs = [TrainConfig.from_hyperparameters({**(base or {}), **override}) for override in settings]
    configure_process(configs[0].threads)
    cache: dict[tuple[int, int, int], dict[str, torch.Tensor]] = {}
    results = []
    for override, config in zip(settings, configs, strict=True):
        key = _feature_key(config)
        started = time.perf_counter()
        if key not in cache and not config.finetune_epochs:
            needed = max(c.views for c in configs if _feature_key(c) == key)
            cache[key] = cached_features(samples, config, needed)
        for fraction in train_fractions:
            featured = time.perf_counter()
            if config.finetune_epochs:  # the whole trainer per fold
                result = evaluate_by_training(samples, labels, fold_ids, config, fraction)
            else:
                result = evaluate(samples, labels, fold_ids, config, cache[key], fraction)
            result["setting"] = dict(override)
            result["train_fraction"] = fraction
            result["seconds"] = {
                "features": round(featured - started, 2),
                "folds": round(time.perf_counter() - featured, 2),
            }
            results.append(result)
            started = time.perf_counter()
    return results


def with_seeds(settings: Sequence[Mapping[str, Any]], seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Every setting once per seed (``local_seed``), seeds innermost; without seeds, ``settings``."""
    if not seeds:
        return [dict(setting) for setting in settings]
    return [{**setting, "local_seed": str(seed)} for setting in settings for seed in seeds]


def pool_draws(results: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> list[dict[str, Any]]:
    """Results of the same setting and training share under different seeds, combined: each draw's mean,
    the mean and range of those, and the confusion matrix and recalls pooled over every draw's answers
    (the same photos once per draw, so no binomial interval is given for the pool)."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for result in results:
        setting = {k: v for k, v in result["setting"].items() if k != "local_seed"}
        key = json.dumps([setting, result["train_fraction"]], sort_keys=True)
        groups.setdefault(key, []).append(result)
    pooled = []
    for key, draws in groups.items():
        setting, fraction = json.loads(key)
        matrix = [
            [sum(d["confusion_matrix"][i][j] for d in draws) for j in range(len(labels))]
            for i in range(len(labels))
        ]
        scores = report.classification_metrics(matrix, labels)
        means = [float(d["mean"]) for d in draws]
        pooled.append(
            {
                "setting": setting,
                "train_fraction": fraction,
                "seeds": [d["setting"].get("local_seed") for d in draws],
                "draw_means": means,
                "mean_of_draws": round(statistics.mean(means), 4),
                "range": [min(means), max(means)],
                "pooled_accuracy": round(scores["accuracy"], 4),
                "recall": {label: c["recall"] for label, c in scores["per_class"].items()},
                "confusion_matrix": matrix,
            }
        )
    return pooled


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trashsorter_cli.trainer.crossval", description=__doc__)
    parser.add_argument("--samples", default="samples/trashnet", help="root with one folder per class")
    parser.add_argument(
        "--mapping", default=None, help="label -> folders JSON (default: <samples>/mapping.json)"
    )
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--hyperparameters", default="{}", help="JSON applied to every setting")
    parser.add_argument("--grid", default="[{}]", help="JSON list of hyperparameter overrides to compare")
    parser.add_argument(
        "--train-fractions",
        default="1",
        help="comma-separated shares of each fold's training images to train on (learning curve)",
    )
    parser.add_argument(
        "--seeds",
        default="",
        help="comma-separated seeds: every setting runs once per seed, and the draws are pooled",
    )
    args = parser.parse_args(argv)
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--seeds takes comma-separated whole numbers, got {args.seeds!r}")
    root = Path(args.samples)
    mapping_path = args.mapping or (root / "mapping.json" if (root / "mapping.json").is_file() else None)
    mapping = load_mapping(mapping_path) if mapping_path else None
    samples, labels = samples_from_directory(root, mapping)
    results = crossvalidate(
        samples,
        labels,
        with_seeds(json.loads(args.grid), seeds),
        args.folds,
        json.loads(args.hyperparameters),
        [float(x) for x in args.train_fractions.split(",")],
    )
    document: dict[str, Any] = {
        "labels": labels,
        "images": len(samples),
        "folds": args.folds,
        "results": results,
    }
    if seeds:
        document["draws"] = pool_draws(results, labels)
    print(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
