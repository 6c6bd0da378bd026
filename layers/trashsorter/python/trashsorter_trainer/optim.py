"""The training pieces both stages share (the head on cached features, the fine-tuning on photos): the
loss, the cosine learning-rate decay, mixed precision, the optimisation step and the per-epoch callback."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from trashsorter_trainer.config import TrainConfig

# called after every epoch with (epoch, train_loss, train_accuracy)
EpochHook = Callable[[int, float, float], None]


def autocast(config: TrainConfig | None) -> Any:
    """float16 autocast on CUDA when ``config.amp`` (mixed precision); a no-op context elsewhere."""
    if config is None or config.device != "cuda" or not config.amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=torch.float16)


def grad_scaler(config: TrainConfig) -> torch.amp.GradScaler:
    """Loss scaling for mixed precision (disabled, a pass-through, off CUDA)."""
    return torch.amp.GradScaler("cuda", enabled=config.device == "cuda" and config.amp)


def loss_function(config: TrainConfig, labels: torch.Tensor, num_classes: int) -> nn.CrossEntropyLoss:
    """Cross-entropy with label smoothing; with ``config.class_balanced`` weighted inverse to the class
    frequency in ``labels``."""
    weight = None
    if config.class_balanced:
        counts = torch.bincount(labels, minlength=num_classes).float().clamp(min=1)
        weight = (counts.sum() / (num_classes * counts)).to(labels.device)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)


def cosine_decay(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate from its initial value down to 0 over ``total_steps`` steps (half a cosine)."""
    total = max(1, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    )


def step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> None:
    """One optimisation step on ``loss`` (scaled under mixed precision), then the learning-rate decay."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
