"""CPU transfer learning of EfficientNet-Lite0 on a small labelled set, exported as ONE ONNX graph.

Schedule (fast on 2 cores, see docs/local-training.md):

1. read every photo's size from its file header and draw the random choices of every augmented view in
   order (nothing is decoded or kept: the photos stream from their files through data-loader workers,
   :mod:`stream`); validation images and the device use :func:`data.preprocess`;
2. run the frozen part of the network ONCE per cached view: ``views`` augmented views of each training
   image, the preprocessed validation images (and their horizontal flips with ``flip_tta``), with
   ``refit`` also ``views`` augmented views of each validation image (drawn last), into a float32 memory
   map on disk that the epochs read (peak memory grows with the network, not with the photos). By default
   (``finetune_blocks = -1``) the whole backbone + head conv + pooling is frozen and the cache holds the
   pooled 1280-d features; ``finetune_blocks = k >= 0`` caches the activations before the last ``k``
   blocks and fine-tunes those blocks + the head conv;
3. train the tail (dropout + a new linear classifier, plus the fine-tuned blocks if any) with AdamW +
   cosine decay + label smoothing (optionally class-balanced) on those cached features for ``epochs``
   epochs (one epoch = every cached view once), reporting ``progress`` after each epoch (and at every
   tenth of the feature pass, ``{"phase": "features", "done", "total"}``); with ``finetune_epochs`` the
   whole network then trains on fresh augmented photos (:mod:`finetune`, LP-FT; progress continues);
4. export normalisation + backbone + head + softmax (+ the flip-TTA average) of this split run, evaluate
   the validation set WITH onnxruntime on that graph: every reported metric; then the suspected mislabels
   (:mod:`suspects`: out-of-fold heads on the cached features, confident learning) -> ``suspects.json``;
5. with ``refit`` (default): train a fresh tail with the same schedule on the train + validation views and
   export THAT as ``model.onnx`` (the split run's graph stays as ``split_model.onnx``; ``metrics["refit"]``
   records it and the shipped graph's answers on the validation images); without it the split run's graph
   is ``model.onnx``. Write ``labels.txt``, ``metrics.json``, ``confusion_matrix.png``, ``model.json`` and
   pack them into ``model.tar.gz``.

The model of the LAST epoch is exported (no selection on the validation set).
"""

from __future__ import annotations

import json
import os
import random
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trashsorter_edge.contract import CARD_FILE, LABELS_FILE, METRICS_FILE, MODEL_FILE, write_labels
from trashsorter_trainer import report, suspects
from trashsorter_trainer.config import TrainConfig
from trashsorter_trainer.contract import feature_progress, memory_gb, out_of_memory_reason
from trashsorter_trainer.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Sample,
    draw_view,
    load_mapping,
    samples_from_directory,
)
from trashsorter_trainer.errors import TrainerError
from trashsorter_trainer.finetune import Tuning, finetune, graph_probabilities
from trashsorter_trainer.head import build_model, fit_tail, tail_probabilities
from trashsorter_trainer.model import (
    INPUT_NAME,
    MODEL_NAME,
    OUTPUT_NAME,
    TrashClassifier,
    export_onnx,
)
from trashsorter_trainer.optim import autocast
from trashsorter_trainer.stream import (
    Job,
    Photos,
    batches,
    feature_pass,
    peak_memory_mb,
    source_sizes,
    worker_count,
)

ARTIFACT_MEMBERS = (MODEL_FILE, LABELS_FILE, METRICS_FILE, "confusion_matrix.png", CARD_FILE)
# with the refit: the split run's graph (trained without the validation images), beside the shipped one
SPLIT_MODEL_FILE = "split_model.onnx"
Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class TrainResult:
    output_dir: Path
    archive: Path
    metrics: dict[str, Any]
    model: TrashClassifier  # the shipped torch model (eval mode), for tests and comparisons
    # the split run's ONNX graph's probabilities on the validation samples (their order): the reported
    # metrics and the report's misclassified photos
    validation_probabilities: np.ndarray | None = None
    validation_samples: tuple[Sample, ...] = ()
    members: tuple[str, ...] = ARTIFACT_MEMBERS  # the files of the artifact
    # the SHIPPED graph's (model.onnx) probabilities on the same samples (== validation_probabilities
    # without the refit): what the device answers
    shipped_probabilities: np.ndarray | None = None
    # the photos whose label the model most doubts (suspects.json), most doubted first
    suspects: tuple[dict[str, Any], ...] = ()


def configure_threads(threads: int) -> int:
    """Limit torch to the machine (never more threads than cores)."""
    count = max(1, min(threads, os.cpu_count() or 1))
    torch.set_num_threads(count)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once in this process (only allowed before parallel work starts)
        pass
    return count


def _check(samples: Sequence[Sample], labels: Sequence[str]) -> None:
    if len(labels) < 2:
        raise TrainerError(f"need at least 2 labels, got {list(labels)}")
    if len(set(labels)) != len(labels):
        raise TrainerError(f"duplicate labels in {list(labels)}")
    unknown = sorted({s.label for s in samples} - set(labels))
    if unknown:
        raise TrainerError(f"samples carry labels not in labels.txt: {unknown}")
    bad_split = sorted({s.split for s in samples} - {"train", "validation"})
    if bad_split:
        raise TrainerError(f"unknown split(s) {bad_split}: expected train / validation")
    if not any(s.split == "train" for s in samples):
        raise TrainerError("no training images")
    if not any(s.split == "validation" for s in samples):
        raise TrainerError("no validation images")


def train(
    samples: Sequence[Sample],
    labels: Sequence[str],
    output_dir: Path | str,
    config: TrainConfig | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train on ``samples`` (split train/validation) and write the artifact into ``output_dir``.

    Raises :class:`TrainerError` with a readable reason for bad data (no images, undecodable bytes,
    unknown labels) and wraps out-of-memory.
    """
    config = config or TrainConfig()
    config.validate()
    _check(samples, labels)
    started = time.perf_counter()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    threads = configure_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    index = {label: i for i, label in enumerate(labels)}
    train_samples = [s for s in samples if s.split == "train"]
    val_samples = [s for s in samples if s.split == "validation"]
    try:
        with tempfile.TemporaryDirectory(prefix="trashsorter-features-") as scratch:
            return _train(
                train_samples,
                val_samples,
                list(labels),
                index,
                out,
                config,
                progress,
                rng,
                started,
                threads,
                Path(scratch),
            )
    except (MemoryError, torch.OutOfMemoryError) as exc:
        how = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
        raise TrainerError(out_of_memory_reason(len(samples), memory_gb(), how=how)) from exc


def _train(
    train_samples: list[Sample],
    val_samples: list[Sample],
    labels: list[str],
    index: dict[str, int],
    out: Path,
    config: TrainConfig,
    progress: Progress | None,
    rng: random.Random,
    started: float,
    threads: int,
    scratch: Path,
) -> TrainResult:
    size, batch = config.image_size, config.batch_size
    workers = worker_count(config.loader_workers, config.device)
    photos = [*train_samples, *val_samples]  # job index: training photos first, then validation photos
    n_train, n_val = len(train_samples), len(val_samples)
    # 1. the photos' sizes from their file headers (nothing decoded, nothing kept); every augmented view's
    # random choices drawn in order: the views the frozen part runs on below, then (with the refit) views
    # of the validation photos, drawn last so the split run sees the views it would see without the refit
    sizes = source_sizes(train_samples, size) + (source_sizes(val_samples, size) if config.refit else [])
    y_train = torch.tensor([index[s.label] for s in train_samples])
    y_val = [index[s.label] for s in val_samples]
    refit_views = config.views if config.refit else 0
    val_jobs = [Job(n_train + j) for j in range(n_val)]
    segments = [n_val] * (2 if config.flip_tta else 1) + [n_train] * config.views + [n_val] * refit_views
    jobs = [
        *val_jobs,
        *(Job(n_train + j, flip=True) for j in range(n_val) if config.flip_tta),
        *(Job(i, draw_view(rng, *sizes[i])) for _ in range(config.views) for i in range(n_train)),
        *(
            Job(n_train + j, draw_view(rng, *sizes[n_train + j]))
            for _ in range(refit_views)
            for j in range(n_val)
        ),
    ]
    decoded_at = time.perf_counter()

    # 2. frozen features of every job, streamed from the files into a memory map on disk
    model = build_model(len(labels), config).to(config.device)
    tick = feature_progress(progress, len(jobs))
    with autocast(config):
        bank = feature_pass(
            model.frozen,
            Photos(photos, jobs, size),
            segments,
            batch,
            workers,
            scratch / "features.npy",
            config.device,
            tick,
        )
    val_bank = bank[:n_val]
    val_flip_bank = bank[n_val : 2 * n_val] if config.flip_tta else None
    first_view = n_val * (2 if config.flip_tta else 1)
    train_bank = bank[first_view : first_view + config.views * n_train]
    y_bank = y_train.repeat(config.views)
    features_at = time.perf_counter()

    def val_batches() -> Iterator[torch.Tensor]:
        """The validation photos, THE preprocessing, streamed in batches."""
        return batches(Photos(photos, val_jobs, size), [n_val], batch, workers, config.device)

    # 3. train the tail on the cached features (then, with finetune_epochs, the whole network on photos)
    history: list[dict[str, Any]] = []
    total_epochs = config.epochs + config.finetune_epochs

    def record(epoch: int, train_loss: float, train_accuracy: float, probs: torch.Tensor) -> None:
        val_pred = probs.argmax(1).tolist()
        val_accuracy = sum(int(p == t) for p, t in zip(val_pred, y_val, strict=True)) / len(y_val)
        entry = {
            "epoch": epoch,
            "epochs": total_epochs,
            "train_loss": round(train_loss, 5),
            "train_accuracy": round(train_accuracy, 5),
            "val_loss": round(cross_entropy(probs.numpy(), y_val), 5),
            "val_accuracy": round(val_accuracy, 5),
        }
        history.append(entry)
        if progress is not None:
            progress(dict(entry))

    def after_epoch(epoch: int, train_loss: float, train_accuracy: float) -> None:
        probs = tail_probabilities(model, val_bank, val_flip_bank, config.batch_size)
        record(epoch, train_loss, train_accuracy, probs)

    def after_finetune_epoch(epoch: int, train_loss: float, train_accuracy: float) -> None:
        probs = graph_probabilities(model, val_batches(), config)
        record(config.epochs + epoch, train_loss, train_accuracy, probs)

    tuning = Tuning(photos[:n_train], sizes[:n_train], y_train, workers)
    _, train_accuracy = fit_tail(model, train_bank, y_bank, config, after_epoch)
    if config.finetune_epochs:
        _, train_accuracy = finetune(model, tuning, config, rng, after_finetune_epoch)
    trained_at = time.perf_counter()

    def torch_answers(trained: TrashClassifier) -> torch.Tensor:
        """The torch model's answers on the validation images, to compare with its ONNX graph's."""
        if config.finetune_epochs:  # the cached features no longer describe the fine-tuned network
            return graph_probabilities(trained, val_batches(), config)
        return tail_probabilities(trained, val_bank, val_flip_bank, config.batch_size)

    # 4. export, evaluate the split run's ONNX graph (every reported metric), write the artifact
    split_file = SPLIT_MODEL_FILE if config.refit else MODEL_FILE
    onnx_probs, max_diff = _export_and_run(model, out / split_file, val_batches, torch_answers, config)
    predicted = onnx_probs.argmax(1).tolist()
    matrix = report.confusion_matrix(y_val, predicted, len(labels))
    scores = report.classification_metrics(matrix, labels)
    evaluated_at = time.perf_counter()

    # the photos whose label the model most doubts: out-of-fold answers on the cached features
    with torch.random.fork_rng(devices=[]):  # the folds' fresh heads leave the refit's draws as they were
        out_of_fold = suspects.out_of_fold(
            lambda: build_model(len(labels), config), train_bank, y_train, config
        )
    doubts = suspects.find(out_of_fold, onnx_probs, photos, index, labels)
    suspects_at = time.perf_counter()

    # 5. the refit: the same schedule on train + validation images; THAT graph ships as model.onnx
    shipped, shipped_probs, refit = model, onnx_probs, None
    if config.refit:
        shipped = build_model(len(labels), config).to(config.device)
        y_refit = torch.cat([y_bank, torch.tensor(y_val).repeat(config.views)])
        refit_loss, refit_accuracy = fit_tail(shipped, bank[first_view:], y_refit, config)
        if config.finetune_epochs:
            everything = Tuning(photos, sizes, torch.cat([y_train, torch.tensor(y_val)]), workers)
            refit_loss, refit_accuracy = finetune(shipped, everything, config, rng)
        shipped_probs, refit_diff = _export_and_run(
            shipped, out / MODEL_FILE, val_batches, torch_answers, config
        )
        max_diff = max(max_diff, refit_diff)
        refit = {
            "on": "train+validation",
            "images": n_train + n_val,
            "reported_metrics_from": "split run",
            "evaluated_graph": SPLIT_MODEL_FILE,
            "epochs": config.epochs,
            "finetune_epochs": config.finetune_epochs,
            "train_loss": round(refit_loss, 5),
            "train_accuracy": round(refit_accuracy, 5),
            # the shipped graph's answers on the validation images, which it was trained on: what the
            # device must reproduce, NOT a held-out estimate (that is validation_accuracy, the split run)
            "shipped_validation_confusion_matrix": report.confusion_matrix(
                y_val, shipped_probs.argmax(1).tolist(), len(labels)
            ),
            "seconds": round(time.perf_counter() - suspects_at, 3),
        }
    write_labels(out / LABELS_FILE, labels)
    (out / suspects.SUSPECTS_FILE).write_text(json.dumps(doubts, indent=2))
    report.draw_confusion_matrix(matrix, labels, out / "confusion_matrix.png")
    finished = time.perf_counter()
    wall = finished - started
    class_counts = {
        split: {label: sum(1 for s in group if s.label == label) for label in labels}
        for split, group in (("train", train_samples), ("validation", val_samples))
    }
    metrics: dict[str, Any] = {
        "validation_accuracy": round(scores["accuracy"], 5),
        "validation_loss": round(cross_entropy(onnx_probs, y_val), 5),
        "train_accuracy": round(train_accuracy, 5),
        "train_loss": history[-1]["train_loss"],
        "labels": labels,
        "per_class": scores["per_class"],
        "macro_precision": scores["macro_precision"],
        "macro_recall": scores["macro_recall"],
        "confusion_matrix": matrix,
        "train_count": n_train,
        "validation_count": n_val,
        # every validation photo's true label and this model's answer: the gate pairs them with the
        # champion's answers on the same photos (trashsorter.gate, exact McNemar test)
        "validation_labels": {s.key: s.label for s in val_samples},
        "validation_answers": {s.key: labels[int(i)] for s, i in zip(val_samples, predicted, strict=True)},
        "class_counts": class_counts,
        "epochs": config.epochs,
        "finetune_epochs": config.finetune_epochs,
        "history": history,
        "refit": refit,
        "wall_time_seconds": round(wall, 3),
        "phase_seconds": {
            "decode": round(decoded_at - started, 3),
            "features": round(features_at - decoded_at, 3),
            "train": round(trained_at - features_at, 3),
            "export_and_evaluate": round(evaluated_at - trained_at, 3),
            "suspects": round(suspects_at - evaluated_at, 3),
            "refit": round(finished - suspects_at, 3),
        },
        "images_per_second": round(n_train * config.epochs / wall, 3),
        "backbone_images_per_second": round(len(jobs) / max(features_at - decoded_at, 1e-9), 3),
        "resources": resources(n_train + n_val, wall, bank, workers),
        "suspects": suspects.summary(
            doubts, n_val + (n_train if out_of_fold is not None else 0), out_of_fold is not None
        ),
        "onnx_max_abs_diff": max_diff,
        "threads": threads,
        "config": asdict(config),
        "model": MODEL_NAME,
    }
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    (out / CARD_FILE).write_text(json.dumps(model_card(labels, size), indent=2))
    members = ARTIFACT_MEMBERS + ((SPLIT_MODEL_FILE,) if config.refit else ())
    archive = pack(out, out / "model.tar.gz", members)
    return TrainResult(
        output_dir=out,
        archive=archive,
        metrics=metrics,
        model=shipped,
        validation_probabilities=onnx_probs,
        validation_samples=tuple(val_samples),
        members=members,
        shipped_probabilities=shipped_probs,
        suspects=tuple(doubts),
    )


def resources(photos: int, wall: float, bank: np.ndarray, workers: int) -> dict[str, Any]:
    """What the run took: peak resident memory (``ru_maxrss``, MiB) of the trainer and of its largest
    data-loader worker (they share most pages: not to be added), photos per second of wall time, the size of
    the cached features (a memory map on disk, read by the epochs)."""
    peak = peak_memory_mb()
    return {
        "photos": photos,
        "peak_memory_mb": peak["trainer"],
        "largest_worker_peak_memory_mb": peak["largest_worker"],
        "photos_per_second": round(photos / max(wall, 1e-9), 3),
        "loader_workers": workers,
        "feature_cache_mb": round(bank.nbytes / 1024**2, 1),
        "feature_cache": "float32 memory map on disk",
    }


def _export_and_run(
    model: TrashClassifier,
    path: Path,
    val_batches: Callable[[], Iterable[torch.Tensor]],
    torch_answers: Callable[[TrashClassifier], torch.Tensor],
    config: TrainConfig,
) -> tuple[np.ndarray, float]:
    """Export ``model`` to ``path``, run the graph with onnxruntime on the validation photos; returns its
    probabilities and the largest difference to the torch model's answers on the same images."""
    model.cpu().eval()
    export_onnx(model, path, config.image_size)
    torch_probs = torch_answers(model).numpy()
    onnx_probs = run_onnx_batches(path, (b.numpy() for b in val_batches()))
    return onnx_probs, float(np.abs(onnx_probs - torch_probs).max())


def cross_entropy(probabilities: np.ndarray, truth: Sequence[int]) -> float:
    """Mean negative log-likelihood of the true class (the reported ``validation:loss``)."""
    picked = np.asarray(probabilities, dtype=np.float64)[np.arange(len(truth)), np.asarray(truth)]
    return float(-np.log(np.clip(picked, 1e-12, 1.0)).mean())


def model_card(labels: Sequence[str], image_size: int) -> dict[str, Any]:
    """How to feed ``model.onnx`` (also shipped in the tarball as ``model.json``)."""
    return {
        "format": "onnx",
        "model": MODEL_NAME,
        "file": MODEL_FILE,
        "labels_file": LABELS_FILE,
        "labels": list(labels),
        "input": {
            "name": INPUT_NAME,
            "dtype": "float32",
            "layout": "NCHW",
            "shape": [-1, 3, image_size, image_size],
        },
        "output": {"name": OUTPUT_NAME, "softmax": True, "shape": [-1, len(labels)]},
        "preprocessing": {
            "color": "RGB",
            "resize_short_side": image_size,
            "center_crop": image_size,
            "scale": "0..1 (pixel / 255)",
            "normalisation": "inside the graph",
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        },
    }


def run_onnx(path: Path, batch: np.ndarray) -> np.ndarray:
    return run_onnx_batches(path, [batch])


def run_onnx_batches(path: Path, batches: Iterable[np.ndarray]) -> np.ndarray:
    """The graph at ``path`` (onnxruntime, CPU) over ``batches`` of images; the probabilities in order."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    results = [session.run([OUTPUT_NAME], {INPUT_NAME: b.astype(np.float32)})[0] for b in batches]
    return np.concatenate([np.asarray(r) for r in results])


def pack(directory: Path, archive: Path, members: Sequence[str] = ARTIFACT_MEMBERS) -> Path:
    """``model.tar.gz`` with the artifact ``members`` at its root."""
    with tarfile.open(archive, "w:gz") as tar:
        for name in members:
            tar.add(directory / name, arcname=name)
    return archive


def train_from_directory(
    root: Path | str,
    output_dir: Path | str,
    mapping: Mapping[str, Sequence[str]] | Path | str | None = None,
    validation_fraction: float = 0.2,
    config: TrainConfig | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train from ``root/<folder>/*.jpg`` (``mapping``: dict or mapping.json path), hash split 80/20."""
    if isinstance(mapping, str | Path):
        mapping = load_mapping(mapping)
    samples, labels = samples_from_directory(root, mapping, validation_fraction)
    return train(samples, labels, output_dir, config, progress)
