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
   is ``model.onnx``. Write ``labels.txt``, ``metrics.json``, ``confusion_matrix.png`` and ``model.json``.
   The artifact is these files; :meth:`TrainResult.archive` packs them into ``model.tar.gz`` when a caller
   needs the archive (a SageMaker job does not: SageMaker packs the model folder itself).

The model of the LAST epoch is exported (no selection on the validation set).
"""

from __future__ import annotations

import json
import os
import random
import tarfile
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trashsorter_edge.contract import CARD_FILE, LABELS_FILE, METRICS_FILE, MODEL_FILE, write_labels
from trashsorter_trainer import process, report, suspects
from trashsorter_trainer.config import TrainConfig
from trashsorter_trainer.contract import memory_gb, out_of_memory_reason
from trashsorter_trainer.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Sample,
    load_mapping,
    samples_from_directory,
)
from trashsorter_trainer.errors import TrainerError
from trashsorter_trainer.model import (
    INPUT_NAME,
    MODEL_NAME,
    OUTPUT_NAME,
    TrashClassifier,
)
from trashsorter_trainer.steps import (
    SPLIT_MODEL_FILE,
    Progress,
    Training,
    TrainRun,
    draw_views,
    run_onnx_batches,
)

ARTIFACT_MEMBERS = (MODEL_FILE, LABELS_FILE, METRICS_FILE, "confusion_matrix.png", CARD_FILE)
ARCHIVE_FILE = "model.tar.gz"  # the name SageMaker gives a packed model folder


@dataclass(frozen=True)
class TrainResult:
    output_dir: Path
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

    def archive(self) -> Path:
        """``output_dir/model.tar.gz``: the artifact's ``members`` at its root, as SageMaker packs a model
        folder (packed on the first call)."""
        archive = self.output_dir / ARCHIVE_FILE
        if not archive.is_file():
            pack(self.output_dir, archive, self.members)
        return archive


def configure_process(threads: int) -> int:
    """Limit torch to the machine (never more threads than cores) and keep its large buffers in the heap
    (:func:`process.keep_large_blocks_in_the_heap`); returns the thread count."""
    process.keep_large_blocks_in_the_heap()
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
    (out / ARCHIVE_FILE).unlink(missing_ok=True)  # an earlier run's: TrainResult.archive() packs this one's
    threads = configure_process(config.threads)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    index = {label: i for i, label in enumerate(labels)}
    train_samples = [s for s in samples if s.split == "train"]
    val_samples = [s for s in samples if s.split == "validation"]
    try:
        with tempfile.TemporaryDirectory(prefix="trashsorter-features-") as scratch:
            run = TrainRun(
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
            return _train(run)
    except (MemoryError, torch.OutOfMemoryError) as exc:
        how = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
        raise TrainerError(out_of_memory_reason(len(samples), memory_gb(), how=how)) from exc


def _train(run: TrainRun) -> TrainResult:
    steps = Training(run, draw_views(run))
    steps.features()
    steps.fit()
    steps.evaluate()
    shipped, shipped_probs, refit = steps.refit()
    out, labels = run.out, run.labels
    write_labels(out / LABELS_FILE, labels)
    (out / suspects.SUSPECTS_FILE).write_text(json.dumps(steps.doubts, indent=2))
    report.draw_confusion_matrix(steps.matrix, labels, out / "confusion_matrix.png")
    steps.at["finished"] = time.perf_counter()
    metrics = steps.metrics(refit)
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    (out / CARD_FILE).write_text(json.dumps(model_card(labels, run.config.image_size), indent=2))
    members = ARTIFACT_MEMBERS + ((SPLIT_MODEL_FILE,) if run.config.refit else ())
    return TrainResult(
        output_dir=out,
        metrics=metrics,
        model=shipped,
        validation_probabilities=steps.onnx_probs,
        validation_samples=tuple(run.val_samples),
        members=members,
        shipped_probabilities=shipped_probs,
        suspects=tuple(steps.doubts),
    )


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
