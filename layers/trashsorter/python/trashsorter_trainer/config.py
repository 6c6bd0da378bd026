"""What the trainer does (:class:`TrainConfig`) and how the SageMaker hyperparameters map onto it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from trashsorter_trainer.data import IMAGE_SIZE
from trashsorter_trainer.errors import TrainerError
from trashsorter_trainer.model import NUM_BLOCKS

# The recipe's learning_rate (0.01) is an SGD rate for full fine-tuning; the tail here is trained with
# AdamW: lr = learning_rate * ADAMW_LR_SCALE (local_learning_rate overrides). 0.003 for the linear head
# on frozen features was chosen by 5-fold cross-validation (crossval.py; 0.001 under-fits in 10 epochs).
ADAMW_LR_SCALE = 0.3
# The CUDA schedule (see TrainConfig.for_device): after the head, 8 epochs fine-tuning the whole network
# on freshly augmented photos (LP-FT). Its accuracy was measured by 5-fold cross-validation on CPU (the same
# schedule, only slower there; docs/local-training.md); its GPU wall time has not been measured.
GPU_SCHEDULE: dict[str, Any] = {"finetune_epochs": 8}


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
    # after the split run (which produces every reported metric), train the deployed tail again with the
    # same schedule on train + validation images and ship THAT graph (model.onnx); the split run's graph
    # is kept as split_model.onnx (what the metrics describe and what a later job evaluates as champion)
    refit: bool = True
    # after the head: epochs fine-tuning every block + head conv + classifier (the stem stays frozen) on a
    # FRESH augmented view of every training photo per epoch, BatchNorm statistics kept (LP-FT); 0 = off.
    # Needs finetune_blocks -1 (the head is trained on pooled features first). ~9 photos/s on 2 cores.
    finetune_epochs: int = 0
    finetune_learning_rate: float = 2e-4  # AdamW, the blocks and head conv
    finetune_head_learning_rate: float = 1e-3  # AdamW, the classifier
    finetune_batch_size: int = 16
    seed: int = 0
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    device: str = "cpu"  # "cpu" or "cuda" (from_hyperparameters picks cuda when torch sees a GPU)
    amp: bool = True  # mixed precision (float16 autocast + grad scaling), on CUDA only
    # processes that read and decode the photos while the network runs (-1: one per two cores on the CPU,
    # one per core up to 8 beside a GPU; 0: in the trainer's process); the results do not depend on it
    loader_workers: int = -1

    @classmethod
    def for_device(cls, device: str) -> TrainConfig:
        """The default schedule of a device: CPU = the fast schedule (frozen features + linear head);
        CUDA = the same head, then the whole network fine-tuned on fresh augmented views, with mixed
        precision (time is cheap there). Its accuracy is measured (on CPU); its GPU wall time is not."""
        if device == "cuda":
            return cls(device="cuda", **GPU_SCHEDULE)
        return cls(device="cpu")

    @classmethod
    def from_hyperparameters(cls, hyperparameters: Mapping[str, Any] | None = None) -> TrainConfig:
        """Map SageMaker image-classification hyperparameters (strings) onto the local schedule.

        ``epochs`` -> epochs; ``learning_rate`` (SGD) -> AdamW lr x0.3 (``local_learning_rate`` overrides);
        ``mini_batch_size`` -> batch size; ``image_shape`` ("3,224,224") -> input size; ``local_views``,
        ``local_finetune_blocks``, ``local_finetune_epochs``, ``local_seed``, ``local_threads``,
        ``local_refit`` (1/0) ... tune the local schedule. Other recipe
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
                ("local_finetune_epochs", "finetune_epochs", int),
                ("local_finetune_learning_rate", "finetune_learning_rate", float),
                ("local_finetune_head_learning_rate", "finetune_head_learning_rate", float),
                ("local_finetune_batch_size", "finetune_batch_size", int),
                ("local_loader_workers", "loader_workers", int),
            ):
                if key in hp:
                    updates[name] = kind(hp[key])
            for key, name in (
                ("local_flip_tta", "flip_tta"),
                ("local_class_balanced", "class_balanced"),
                ("local_refit", "refit"),
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
        if self.finetune_epochs < 0:
            problems.append("finetune_epochs must be >= 0")
        if self.finetune_epochs and self.finetune_blocks != -1:
            problems.append("finetune_epochs needs finetune_blocks -1 (the head is trained first)")
        if not (0 < self.finetune_learning_rate < 1 and 0 < self.finetune_head_learning_rate < 1):
            problems.append("fine-tuning learning rates must be in (0, 1)")
        if self.finetune_batch_size < 1:
            problems.append("finetune batch size must be >= 1")
        if not 0 <= self.dropout < 1:
            problems.append("dropout must be in [0, 1)")
        if not 0 <= self.label_smoothing < 1:
            problems.append("label smoothing must be in [0, 1)")
        if self.loader_workers < -1:
            problems.append("loader_workers must be >= -1 (-1 = automatic)")
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
