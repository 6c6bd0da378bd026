"""CPU transfer learning of EfficientNet-Lite0 on a small labelled set, exported as ONE ONNX graph.

Schedule (fast on 2 cores, see docs/local-training.md):

1. decode every image once; validation images and the device use :func:`data.preprocess`;
2. run the frozen part of the network ONCE per cached view: ``views`` augmented views of each training
   image, the preprocessed validation images (and their horizontal flips with ``flip_tta``). By default
   (``finetune_blocks = -1``) the whole backbone + head conv + pooling is frozen and the cache holds the
   pooled 1280-d features; ``finetune_blocks = k >= 0`` caches the activations before the last ``k``
   blocks and fine-tunes those blocks + the head conv;
3. train the tail (dropout + a new linear classifier, plus the fine-tuned blocks if any) with AdamW +
   cosine decay + label smoothing (optionally class-balanced) on those cached features for ``epochs``
   epochs (one epoch = every cached view once), reporting ``progress`` after each epoch;
4. export normalisation + backbone + head + softmax (+ the flip-TTA average) to ``model.onnx``, evaluate
   the validation set WITH onnxruntime (the shipped artifact), write ``labels.txt``, ``metrics.json``,
   ``confusion_matrix.png``, ``model.json`` and pack them into ``model.tar.gz``.

The model of the LAST epoch is exported (no selection on the validation set).
"""

from __future__ import annotations

import json
import math
import os
import random
import tarfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trashsorter_trainer import report
from trashsorter_trainer.data import (
    IMAGE_SIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Sample,
    augment,
    decode,
    load_mapping,
    preprocess,
    resize_short_side,
    samples_from_directory,
)
from trashsorter_trainer.errors import TrainerError
from trashsorter_trainer.model import (
    HEAD_ONLY,
    INPUT_NAME,
    MODEL_NAME,
    NUM_BLOCKS,
    OUTPUT_NAME,
    TrashClassifier,
    export_onnx,
)

ARTIFACT_MEMBERS = ("model.onnx", "labels.txt", "metrics.json", "confusion_matrix.png", "model.json")
Progress = Callable[[dict[str, Any]], None]

# The recipe's learning_rate (0.01) is an SGD rate for full fine-tuning; the tail here is trained with
# AdamW: lr = learning_rate * ADAMW_LR_SCALE (local_learning_rate overrides). 0.003 for the linear head
# on frozen features was chosen by 5-fold cross-validation (crossval.py; 0.001 under-fits in 10 epochs).
ADAMW_LR_SCALE = 0.3
# The CUDA schedule (see TrainConfig.for_device): the last 8 MBConv blocks + head conv fine-tuned.
GPU_SCHEDULE: dict[str, Any] = {"finetune_blocks": 8, "views": 16, "epochs": 20, "learning_rate": 1e-3}


@dataclass(frozen=True)
class TrainConfig:
    """What the local trainer does; :meth:`from_hyperparameters` maps the SageMaker recipe onto it."""

    epochs: int = 10
    learning_rate: float = 3e-3  # AdamW
    batch_size: int = 32
    image_size: int = IMAGE_SIZE
    views: int = 4  # augmented views cached per training image
    # trailing MBConv blocks trained: -1 = classifier only on frozen pooled features (default, chosen by
    # 5-fold cross-validation, see crossval.py), 0 = head conv + classifier, k = last k blocks too
    finetune_blocks: int = -1
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    dropout: float = 0.5  # before the classifier
    flip_tta: bool = True  # the exported graph averages the image and its left-right flip
    class_balanced: bool = False  # loss weights inverse to class frequency
    seed: int = 0
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    device: str = "cpu"  # "cpu" or "cuda" (from_hyperparameters picks cuda when torch sees a GPU)
    amp: bool = True  # mixed precision (float16 autocast + grad scaling), on CUDA only

    @classmethod
    def for_device(cls, device: str) -> TrainConfig:
        """The default schedule of a device: CPU = today's fast schedule (frozen features + linear head);
        CUDA = fine-tune the last blocks of the backbone too, more augmented views and epochs, mixed
        precision (time is cheap there). The CUDA schedule has not been measured on a GPU yet."""
        if device == "cuda":
            return cls(device="cuda", **GPU_SCHEDULE)
        return cls(device="cpu")

    @classmethod
    def from_hyperparameters(cls, hyperparameters: Mapping[str, Any] | None = None) -> TrainConfig:
        """Map SageMaker image-classification hyperparameters (strings) onto the local schedule.

        ``epochs`` -> epochs; ``learning_rate`` (SGD) -> AdamW lr x0.3 (``local_learning_rate`` overrides);
        ``mini_batch_size`` -> batch size; ``image_shape`` ("3,224,224") -> input size; ``local_views``,
        ``local_finetune_blocks``, ``local_seed``, ``local_threads`` tune the local schedule. Other recipe
        keys (num_layers, use_pretrained_model, num_training_samples ...) do not apply and are ignored.
        """
        hp = dict(hyperparameters or {})
        try:
            device = str(hp.get("device", "auto"))
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            if device not in ("cpu", "cuda"):
                raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
            config = cls.for_device(device)
            updates: dict[str, Any] = {}
            if "epochs" in hp:
                updates["epochs"] = int(hp["epochs"])
            if "local_learning_rate" in hp:
                updates["learning_rate"] = float(hp["local_learning_rate"])
            elif "learning_rate" in hp:
                updates["learning_rate"] = float(hp["learning_rate"]) * ADAMW_LR_SCALE
            if "mini_batch_size" in hp:
                updates["batch_size"] = int(hp["mini_batch_size"])
            if "image_shape" in hp:
                updates["image_size"] = int(str(hp["image_shape"]).split(",")[-1])
            for key, name, kind in (
                ("local_views", "views", int),
                ("local_finetune_blocks", "finetune_blocks", int),
                ("local_seed", "seed", int),
                ("local_threads", "threads", int),
                ("local_weight_decay", "weight_decay", float),
                ("local_dropout", "dropout", float),
                ("local_label_smoothing", "label_smoothing", float),
            ):
                if key in hp:
                    updates[name] = kind(hp[key])
            for key, name in (
                ("local_flip_tta", "flip_tta"),
                ("local_class_balanced", "class_balanced"),
                ("amp", "amp"),
            ):
                if key in hp:
                    updates[name] = _flag(key, hp[key])
        except (TypeError, ValueError) as exc:
            raise TrainerError(f"invalid hyperparameters {hp}: {exc}") from exc
        config = replace(config, **updates)
        config.validate()
        return config

    def validate(self) -> None:
        problems = []
        if self.epochs < 1:
            problems.append("epochs must be >= 1")
        if not 0 < self.learning_rate < 1:
            problems.append("learning rate must be in (0, 1)")
        if self.batch_size < 1:
            problems.append("batch size must be >= 1")
        if not 32 <= self.image_size <= 512:
            problems.append("image size must be in [32, 512]")
        if self.views < 1:
            problems.append("views must be >= 1")
        if not -1 <= self.finetune_blocks <= NUM_BLOCKS:
            problems.append(f"finetune_blocks must be in [-1, {NUM_BLOCKS}]")
        if not 0 <= self.dropout < 1:
            problems.append("dropout must be in [0, 1)")
        if not 0 <= self.label_smoothing < 1:
            problems.append("label smoothing must be in [0, 1)")
        if self.device not in ("cpu", "cuda"):
            problems.append("device must be cpu or cuda")
        if problems:
            raise TrainerError("invalid training configuration: " + "; ".join(problems))


def _flag(key: str, value: Any) -> bool:
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{key} must be a boolean (1/0/true/false), got {value!r}")


@dataclass(frozen=True)
class TrainResult:
    output_dir: Path
    archive: Path
    metrics: dict[str, Any]
    model: TrashClassifier  # the trained torch model (eval mode), for tests and comparisons
    # the shipped ONNX graph's probabilities on the validation samples (their order), for the report
    validation_probabilities: np.ndarray | None = None
    validation_samples: tuple[Sample, ...] = ()


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


def build_model(num_classes: int, config: TrainConfig) -> TrashClassifier:
    """The classifier cut where ``config`` says (``finetune_blocks`` -1 -> only the classifier trains)."""
    split = HEAD_ONLY if config.finetune_blocks < 0 else NUM_BLOCKS - config.finetune_blocks
    model = TrashClassifier(num_classes, split=split, flip_tta=config.flip_tta, dropout=config.dropout)
    model.eval()
    return model


def _autocast(config: TrainConfig | None) -> Any:
    """float16 autocast on CUDA when ``config.amp`` (mixed precision); a no-op context elsewhere."""
    enabled = config is not None and config.device == "cuda" and config.amp
    return torch.autocast(device_type="cuda", dtype=torch.float16, enabled=enabled)


def frozen_features(
    model: TrashClassifier,
    arrays: Sequence[np.ndarray],
    batch_size: int,
    config: TrainConfig | None = None,
) -> torch.Tensor:
    """The frozen part of ``model`` over preprocessed images (float32 CHW 0..1), batched, no gradient.

    On the model's device (the result stays there, float32)."""
    device = next(model.parameters()).device
    outputs = []
    with torch.no_grad(), _autocast(config):
        for start in range(0, len(arrays), batch_size):
            batch = torch.from_numpy(np.stack(arrays[start : start + batch_size])).to(device)
            outputs.append(model.frozen(batch).float())
    return torch.cat(outputs)


def flipped(array: np.ndarray) -> np.ndarray:
    """Left-right flip of a CHW image (what the graph's flip-TTA branch sees)."""
    return np.ascontiguousarray(array[:, :, ::-1])


def tail_probabilities(
    model: TrashClassifier, bank: torch.Tensor, flip_bank: torch.Tensor | None, batch_size: int
) -> torch.Tensor:
    """Softmax of the tail over cached features; the mean with the flipped views' softmax (as the graph)."""
    model.eval()
    with torch.inference_mode():
        probs = [
            torch.softmax(model.tail(part[i : i + batch_size]), dim=1)
            for part in ([bank] if flip_bank is None else [bank, flip_bank])
            for i in range(0, len(part), batch_size)
        ]
        stacked = torch.cat(probs).float().cpu()
        return stacked if flip_bank is None else stacked.reshape(2, len(bank), -1).mean(0)


EpochHook = Callable[[int, float, float], None]


def fit_tail(
    model: TrashClassifier,
    bank: torch.Tensor,
    y_bank: torch.Tensor,
    config: TrainConfig,
    on_epoch: EpochHook | None = None,
) -> tuple[float, float]:
    """Train the tail of ``model`` on cached features; returns the last epoch's (train_loss, train_accuracy).

    AdamW + cosine decay + label smoothing (+ class-balanced weights inverse to the class frequency when
    ``config.class_balanced``); ``on_epoch(epoch, train_loss, train_accuracy)`` after every epoch.
    """
    torch.manual_seed(config.seed)
    params = [p for p in model.tail_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(bank) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    )
    weight = None
    if config.class_balanced:
        counts = torch.bincount(y_bank, minlength=model.num_classes).float().clamp(min=1)
        weight = counts.sum() / (model.num_classes * counts)
    loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)
    generator = torch.Generator().manual_seed(config.seed)
    scaler = torch.amp.GradScaler("cuda", enabled=config.device == "cuda" and config.amp)
    train_loss = train_accuracy = 0.0
    for epoch in range(1, config.epochs + 1):
        model.train_tail()
        order = torch.randperm(len(bank), generator=generator).to(bank.device)
        loss_sum, correct = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            idx = order[start : start + config.batch_size]
            with _autocast(config):
                logits = model.tail(bank[idx])
                loss = loss_fn(logits.float(), y_bank[idx])
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.detach().argmax(1) == y_bank[idx]).sum())
        train_loss = loss_sum / len(bank)
        train_accuracy = correct / len(bank)
        if on_epoch is not None:
            on_epoch(epoch, train_loss, train_accuracy)
    model.eval()
    return train_loss, train_accuracy


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
        return _train(
            train_samples, val_samples, list(labels), index, out, config, progress, rng, started, threads
        )
    except (MemoryError, torch.OutOfMemoryError) as exc:
        raise TrainerError(f"out of memory while training: {exc}") from exc


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
) -> TrainResult:
    size = config.image_size
    # 1. decode once
    sources = [resize_short_side(decode(s.data, s.key), round(size * 1.15)) for s in train_samples]
    val_arrays = [preprocess(decode(s.data, s.key), size) for s in val_samples]
    y_train = torch.tensor([index[s.label] for s in train_samples])
    y_val = [index[s.label] for s in val_samples]
    decoded_at = time.perf_counter()

    # 2. frozen features of the cached views (and of the flipped validation images for the flip-TTA)
    model = build_model(len(labels), config).to(config.device)
    val_bank = frozen_features(model, val_arrays, config.batch_size, config)
    val_flip_bank = (
        frozen_features(model, [flipped(a) for a in val_arrays], config.batch_size, config)
        if config.flip_tta
        else None
    )
    views = [
        frozen_features(model, [augment(src, rng, size) for src in sources], config.batch_size, config)
        for _ in range(config.views)
    ]
    bank = torch.cat(views)
    y_bank = y_train.repeat(config.views).to(bank.device)
    features_at = time.perf_counter()
    feature_images = len(bank) + len(val_bank) + (0 if val_flip_bank is None else len(val_flip_bank))

    # 3. train the tail on the cached features
    history: list[dict[str, Any]] = []

    def after_epoch(epoch: int, train_loss: float, train_accuracy: float) -> None:
        probs = tail_probabilities(model, val_bank, val_flip_bank, config.batch_size)
        val_pred = probs.argmax(1).tolist()
        val_accuracy = sum(int(p == t) for p, t in zip(val_pred, y_val, strict=True)) / len(y_val)
        entry = {
            "epoch": epoch,
            "epochs": config.epochs,
            "train_loss": round(train_loss, 5),
            "train_accuracy": round(train_accuracy, 5),
            "val_loss": round(cross_entropy(probs.numpy(), y_val), 5),
            "val_accuracy": round(val_accuracy, 5),
        }
        history.append(entry)
        if progress is not None:
            progress(dict(entry))

    _, train_accuracy = fit_tail(model, bank, y_bank, config, after_epoch)
    trained_at = time.perf_counter()

    # 4. export, evaluate the shipped ONNX graph, write the artifact
    model.cpu().eval()
    val_bank = val_bank.cpu()
    val_flip_bank = None if val_flip_bank is None else val_flip_bank.cpu()
    onnx_path = export_onnx(model, out / "model.onnx", size)
    torch_probs = tail_probabilities(model, val_bank, val_flip_bank, config.batch_size).numpy()
    onnx_probs = run_onnx(onnx_path, np.stack(val_arrays))
    max_diff = float(np.abs(onnx_probs - torch_probs).max())
    predicted = onnx_probs.argmax(1).tolist()
    matrix = report.confusion_matrix(y_val, predicted, len(labels))
    scores = report.classification_metrics(matrix, labels)
    (out / "labels.txt").write_text("".join(f"{label}\n" for label in labels))
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
        "train_count": len(train_samples),
        "validation_count": len(val_samples),
        "class_counts": class_counts,
        "epochs": config.epochs,
        "history": history,
        "wall_time_seconds": round(wall, 3),
        "phase_seconds": {
            "decode": round(decoded_at - started, 3),
            "features": round(features_at - decoded_at, 3),
            "train": round(trained_at - features_at, 3),
            "export_and_evaluate": round(finished - trained_at, 3),
        },
        "images_per_second": round(len(train_samples) * config.epochs / wall, 3),
        "backbone_images_per_second": round(feature_images / max(features_at - decoded_at, 1e-9), 3),
        "onnx_max_abs_diff": max_diff,
        "threads": threads,
        "config": asdict(config),
        "model": MODEL_NAME,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "model.json").write_text(json.dumps(model_card(labels, size), indent=2))
    archive = pack(out, out / "model.tar.gz")
    return TrainResult(
        output_dir=out,
        archive=archive,
        metrics=metrics,
        model=model,
        validation_probabilities=onnx_probs,
        validation_samples=tuple(val_samples),
    )


def cross_entropy(probabilities: np.ndarray, truth: Sequence[int]) -> float:
    """Mean negative log-likelihood of the true class (the reported ``validation:loss``)."""
    picked = np.asarray(probabilities, dtype=np.float64)[np.arange(len(truth)), np.asarray(truth)]
    return float(-np.log(np.clip(picked, 1e-12, 1.0)).mean())


def model_card(labels: Sequence[str], image_size: int) -> dict[str, Any]:
    """How to feed ``model.onnx`` (also shipped in the tarball as ``model.json``)."""
    return {
        "format": "onnx",
        "model": MODEL_NAME,
        "file": "model.onnx",
        "labels_file": "labels.txt",
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
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    result = session.run([OUTPUT_NAME], {INPUT_NAME: batch.astype(np.float32)})
    return np.asarray(result[0])


def pack(directory: Path, archive: Path) -> Path:
    """``model.tar.gz`` with the artifact members at its root."""
    with tarfile.open(archive, "w:gz") as tar:
        for name in ARTIFACT_MEMBERS:
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
