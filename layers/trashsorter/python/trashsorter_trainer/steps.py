"""The steps of one training run (:func:`trashsorter_trainer.train.train` runs them in order; the schedule
is :mod:`trashsorter_trainer.train`'s docstring): the views drawn, the frozen features, the tail's fit,
the ONNX evaluation and suspects, the refit, and ``metrics.json``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trashsorter_edge.contract import MODEL_FILE
from trashsorter_trainer import report, suspects
from trashsorter_trainer.config import TrainConfig
from trashsorter_trainer.contract import feature_progress
from trashsorter_trainer.data import Sample, draw_view
from trashsorter_trainer.finetune import Tuning, finetune, graph_probabilities
from trashsorter_trainer.head import build_model, fit_tail, tail_probabilities
from trashsorter_trainer.model import INPUT_NAME, MODEL_NAME, OUTPUT_NAME, TrashClassifier, export_onnx
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

# with the refit: the split run's graph (trained without the validation images), beside the shipped one
SPLIT_MODEL_FILE = "split_model.onnx"
Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class TrainRun:
    """One training run's inputs: the split photos, the labels, where to write, the config and its clocks."""

    train_samples: list[Sample]
    val_samples: list[Sample]
    labels: list[str]
    index: dict[str, int]  # label -> class index
    out: Path
    config: TrainConfig
    progress: Progress | None
    rng: random.Random
    started: float  # perf_counter at the start
    threads: int
    scratch: Path  # the feature cache's folder

    @property
    def photos(self) -> list[Sample]:  # job index: training photos first, then validation photos
        return [*self.train_samples, *self.val_samples]

    @property
    def n_train(self) -> int:
        return len(self.train_samples)

    @property
    def n_val(self) -> int:
        return len(self.val_samples)


@dataclass(frozen=True)
class Views:
    """Every cached view (step 1): the jobs of the frozen pass, in the order of the feature bank."""

    sizes: list[tuple[int, int]]
    jobs: list[Job]
    val_jobs: list[Job]
    segments: list[int]
    y_train: torch.Tensor
    y_val: list[int]
    workers: int


def draw_views(run: TrainRun) -> Views:
    """1. the photos' sizes from their file headers (nothing decoded, nothing kept); every augmented view's
    random choices drawn in order: the views the frozen part runs on below, then (with the refit) views of
    the validation photos, drawn last so the split run sees the views it would see without the refit."""
    config, n_train, n_val = run.config, run.n_train, run.n_val
    size = config.image_size
    sizes = source_sizes(run.train_samples, size) + (
        source_sizes(run.val_samples, size) if config.refit else []
    )
    refit_views = config.views if config.refit else 0
    val_jobs = [Job(n_train + j) for j in range(n_val)]
    segments = [n_val] * (2 if config.flip_tta else 1) + [n_train] * config.views + [n_val] * refit_views
    jobs = [
        *val_jobs,
        *(Job(n_train + j, flip=True) for j in range(n_val) if config.flip_tta),
        *(Job(i, draw_view(run.rng, *sizes[i])) for _ in range(config.views) for i in range(n_train)),
        *(
            Job(n_train + j, draw_view(run.rng, *sizes[n_train + j]))
            for _ in range(refit_views)
            for j in range(n_val)
        ),
    ]
    return Views(
        sizes,
        jobs,
        val_jobs,
        segments,
        y_train=torch.tensor([run.index[s.label] for s in run.train_samples]),
        y_val=[run.index[s.label] for s in run.val_samples],
        workers=worker_count(config.loader_workers, config.device),
    )


class Training:
    """Steps 2-5 of one run (see the module docstring); each step one method, the clocks in ``at``."""

    def __init__(self, run: TrainRun, views: Views) -> None:
        self.run, self.views, self.config = run, views, run.config
        self.at: dict[str, float] = {"started": run.started, "decoded": time.perf_counter()}
        self.history: list[dict[str, Any]] = []
        self.model = build_model(len(run.labels), run.config).to(run.config.device)

    # 2. frozen features of every job, streamed from the files into a memory map on disk
    def features(self) -> None:
        run, views, config = self.run, self.views, self.config
        tick = feature_progress(run.progress, len(views.jobs))
        # On the CPU, oneDNN runs this network's depthwise convolutions about 1.4x faster in the channels-last
        # layout (the features agree to float rounding, ~3e-6 relative); the model is back in the default
        # layout for everything after the pass.
        layout = torch.channels_last if config.device == "cpu" else torch.contiguous_format
        self.model.to(memory_format=layout)
        try:
            with autocast(config):
                self.bank = feature_pass(
                    self.model.frozen,
                    Photos(run.photos, views.jobs, config.image_size),
                    views.segments,
                    config.batch_size,
                    views.workers,
                    run.scratch / "features.npy",
                    config.device,
                    tick,
                    layout,
                )
        finally:
            self.model.to(memory_format=torch.contiguous_format)
        n_val = run.n_val
        self.val_bank = self.bank[:n_val]
        self.val_flip_bank = self.bank[n_val : 2 * n_val] if config.flip_tta else None
        self.first_view = n_val * (2 if config.flip_tta else 1)
        self.train_bank = self.bank[self.first_view : self.first_view + config.views * run.n_train]
        self.y_bank = views.y_train.repeat(config.views)
        self.at["features"] = time.perf_counter()

    def val_batches(self) -> Iterator[torch.Tensor]:
        """The validation photos, THE preprocessing, streamed in batches."""
        photos = Photos(self.run.photos, self.views.val_jobs, self.config.image_size)
        return batches(
            photos, [self.run.n_val], self.config.batch_size, self.views.workers, self.config.device
        )

    def record(self, epoch: int, train_loss: float, train_accuracy: float, probs: torch.Tensor) -> None:
        y_val = self.views.y_val
        val_pred = probs.argmax(1).tolist()
        entry = {
            "epoch": epoch,
            "epochs": self.config.epochs + self.config.finetune_epochs,
            "train_loss": round(train_loss, 5),
            "train_accuracy": round(train_accuracy, 5),
            "val_loss": round(cross_entropy(probs.numpy(), y_val), 5),
            "val_accuracy": round(
                sum(int(p == t) for p, t in zip(val_pred, y_val, strict=True)) / len(y_val), 5
            ),
        }
        self.history.append(entry)
        if self.run.progress is not None:
            self.run.progress(dict(entry))

    # 3. train the tail on the cached features (then, with finetune_epochs, the whole network on photos)
    def fit(self) -> None:
        config, views, model = self.config, self.views, self.model

        def after_epoch(epoch: int, train_loss: float, train_accuracy: float) -> None:
            probs = tail_probabilities(model, self.val_bank, self.val_flip_bank, config.batch_size)
            self.record(epoch, train_loss, train_accuracy, probs)

        def after_finetune_epoch(epoch: int, train_loss: float, train_accuracy: float) -> None:
            probs = graph_probabilities(model, self.val_batches(), config)
            self.record(config.epochs + epoch, train_loss, train_accuracy, probs)

        n_train = self.run.n_train
        tuning = Tuning(self.run.photos[:n_train], views.sizes[:n_train], views.y_train, views.workers)
        _, self.train_accuracy = fit_tail(model, self.train_bank, self.y_bank, config, after_epoch)
        if config.finetune_epochs:
            _, self.train_accuracy = finetune(model, tuning, config, self.run.rng, after_finetune_epoch)
        self.at["trained"] = time.perf_counter()

    def torch_answers(self, trained: TrashClassifier) -> torch.Tensor:
        """The torch model's answers on the validation images, to compare with its ONNX graph's."""
        if self.config.finetune_epochs:  # the cached features no longer describe the fine-tuned network
            return graph_probabilities(trained, self.val_batches(), self.config)
        return tail_probabilities(trained, self.val_bank, self.val_flip_bank, self.config.batch_size)

    # 4. export, evaluate the split run's ONNX graph (every reported metric); the suspected mislabels
    def evaluate(self) -> None:
        run, config, labels = self.run, self.config, self.run.labels
        split_file = SPLIT_MODEL_FILE if config.refit else MODEL_FILE
        self.onnx_probs, self.max_diff = export_and_run(
            self.model, run.out / split_file, self.val_batches, self.torch_answers, config
        )
        self.predicted = self.onnx_probs.argmax(1).tolist()
        self.matrix = report.confusion_matrix(self.views.y_val, self.predicted, len(labels))
        self.scores = report.classification_metrics(self.matrix, labels)
        self.at["evaluated"] = time.perf_counter()
        # the photos whose label the model most doubts: out-of-fold answers on the cached features
        with torch.random.fork_rng(devices=[]):  # the folds' fresh heads leave the refit's draws as they were
            self.out_of_fold = suspects.out_of_fold(
                lambda: build_model(len(labels), config), self.train_bank, self.views.y_train, config
            )
        self.doubts = suspects.find(self.out_of_fold, self.onnx_probs, run.photos, run.index, labels)
        self.at["suspects"] = time.perf_counter()

    # 5. the refit: the same schedule on train + validation images; THAT graph ships as model.onnx
    def refit(self) -> tuple[TrashClassifier, np.ndarray, dict[str, Any] | None]:
        run, config, views = self.run, self.config, self.views
        if not config.refit:
            return self.model, self.onnx_probs, None
        shipped = build_model(len(run.labels), config).to(config.device)
        y_refit = torch.cat([self.y_bank, torch.tensor(views.y_val).repeat(config.views)])
        loss, accuracy = fit_tail(shipped, self.bank[self.first_view :], y_refit, config)
        if config.finetune_epochs:
            y_all = torch.cat([views.y_train, torch.tensor(views.y_val)])
            loss, accuracy = finetune(
                shipped, Tuning(run.photos, views.sizes, y_all, views.workers), config, run.rng
            )
        shipped_probs, refit_diff = export_and_run(
            shipped, run.out / MODEL_FILE, self.val_batches, self.torch_answers, config
        )
        self.max_diff = max(self.max_diff, refit_diff)
        return (
            shipped,
            shipped_probs,
            {
                "on": "train+validation",
                "images": run.n_train + run.n_val,
                "reported_metrics_from": "split run",
                "evaluated_graph": SPLIT_MODEL_FILE,
                "epochs": config.epochs,
                "finetune_epochs": config.finetune_epochs,
                "train_loss": round(loss, 5),
                "train_accuracy": round(accuracy, 5),
                # the shipped graph's answers on the validation images, which it was trained on: what the
                # device must reproduce, NOT a held-out estimate (that is validation_accuracy, the split run)
                "shipped_validation_confusion_matrix": report.confusion_matrix(
                    views.y_val, shipped_probs.argmax(1).tolist(), len(run.labels)
                ),
                "seconds": round(time.perf_counter() - self.at["suspects"], 3),
            },
        )

    def metrics(self, refit: dict[str, Any] | None) -> dict[str, Any]:
        """metrics.json (every reported number is the split run's ONNX graph's)."""
        run, config, labels, scores, at = self.run, self.config, self.run.labels, self.scores, self.at
        n_train, n_val, y_val = run.n_train, run.n_val, self.views.y_val
        wall = at["finished"] - at["started"]
        class_counts = {
            split: {label: sum(1 for s in group if s.label == label) for label in labels}
            for split, group in (("train", run.train_samples), ("validation", run.val_samples))
        }
        return {
            "validation_accuracy": round(scores["accuracy"], 5),
            "validation_loss": round(cross_entropy(self.onnx_probs, y_val), 5),
            "train_accuracy": round(self.train_accuracy, 5),
            "train_loss": self.history[-1]["train_loss"],
            "labels": labels,
            "per_class": scores["per_class"],
            "macro_precision": scores["macro_precision"],
            "macro_recall": scores["macro_recall"],
            "confusion_matrix": self.matrix,
            "train_count": n_train,
            "validation_count": n_val,
            # every validation photo's true label and this model's answer: the gate pairs them with the
            # champion's answers on the same photos (trashsorter.gate, exact McNemar test)
            "validation_labels": {s.key: s.label for s in run.val_samples},
            "validation_answers": {
                s.key: labels[int(i)] for s, i in zip(run.val_samples, self.predicted, strict=True)
            },
            "class_counts": class_counts,
            "epochs": config.epochs,
            "finetune_epochs": config.finetune_epochs,
            "history": self.history,
            "refit": refit,
            "wall_time_seconds": round(wall, 3),
            "phase_seconds": {
                phase: round(at[end] - at[begin], 3)
                for phase, begin, end in (
                    ("decode", "started", "decoded"),
                    ("features", "decoded", "features"),
                    ("train", "features", "trained"),
                    ("export_and_evaluate", "trained", "evaluated"),
                    ("suspects", "evaluated", "suspects"),
                    ("refit", "suspects", "finished"),
                )
            },
            "images_per_second": round(n_train * config.epochs / wall, 3),
            "backbone_images_per_second": round(
                len(self.views.jobs) / max(at["features"] - at["decoded"], 1e-9), 3
            ),
            "resources": resources(n_train + n_val, wall, self.bank, self.views.workers),
            "suspects": suspects.summary(
                self.doubts,
                n_val + (n_train if self.out_of_fold is not None else 0),
                self.out_of_fold is not None,
            ),
            "onnx_max_abs_diff": self.max_diff,
            "threads": run.threads,
            "config": asdict(config),
            "model": MODEL_NAME,
        }


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


def export_and_run(
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


def run_onnx_batches(path: Path, batches: Iterable[np.ndarray]) -> np.ndarray:
    """The graph at ``path`` (onnxruntime, CPU) over ``batches`` of images; the probabilities in order."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    results = [session.run([OUTPUT_NAME], {INPUT_NAME: b.astype(np.float32)})[0] for b in batches]
    return np.concatenate([np.asarray(r) for r in results])
