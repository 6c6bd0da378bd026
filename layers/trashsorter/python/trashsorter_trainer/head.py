"""The head on cached features: the frozen part run over images, the tail trained on its cached output
(:func:`fit_tail`: AdamW, cosine decay, label smoothing) and the tail's answers (:func:`tail_probabilities`).
A cache is a tensor or the trainer's memory map on disk (:mod:`stream`); both are read batch by batch."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from trashsorter_trainer.config import TrainConfig
from trashsorter_trainer.model import HEAD_ONLY, NUM_BLOCKS, TrashClassifier
from trashsorter_trainer.optim import (
    EpochHook,
    autocast,
    cosine_decay,
    grad_scaler,
    loss_function,
    step,
)


def build_model(num_classes: int, config: TrainConfig) -> TrashClassifier:
    """The classifier cut where ``config`` says (``finetune_blocks`` -1 -> only the classifier trains)."""
    split = HEAD_ONLY if config.finetune_blocks < 0 else NUM_BLOCKS - config.finetune_blocks
    model = TrashClassifier(num_classes, split=split, flip_tta=config.flip_tta, dropout=config.dropout)
    model.eval()
    return model


def frozen_features(
    model: TrashClassifier,
    arrays: Sequence[np.ndarray],
    batch_size: int,
    config: TrainConfig | None = None,
    tick: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """The frozen part of ``model`` over preprocessed images (float32 CHW 0..1), batched, no gradient.

    On the model's device (the result stays there, float32); ``tick(n)`` after each batch of n images."""
    device = next(model.parameters()).device
    outputs = []
    with torch.no_grad(), autocast(config):
        for start in range(0, len(arrays), batch_size):
            batch = torch.from_numpy(np.stack(arrays[start : start + batch_size])).to(device)
            outputs.append(model.frozen(batch).float())
            if tick is not None:
                tick(len(batch))
    return torch.cat(outputs)


def flipped(array: np.ndarray) -> np.ndarray:
    """Left-right flip of a CHW image (what the graph's flip-TTA branch sees)."""
    return np.ascontiguousarray(array[:, :, ::-1])


Bank = torch.Tensor | np.ndarray  # cached features: a tensor, or the trainer's memory map on disk


def take(bank: Bank, rows: torch.Tensor | slice, device: torch.device | str) -> torch.Tensor:
    """Rows of a feature bank (a tensor or a memory-mapped array) as a tensor on ``device``."""
    if isinstance(bank, torch.Tensor):
        return bank[rows.to(bank.device) if isinstance(rows, torch.Tensor) else rows].to(device)
    picked = bank[rows.numpy() if isinstance(rows, torch.Tensor) else rows]
    return torch.from_numpy(np.ascontiguousarray(picked)).to(device)


def tail_probabilities(
    model: TrashClassifier, bank: Bank, flip_bank: Bank | None, batch_size: int
) -> torch.Tensor:
    """Softmax of the tail over cached features; the mean with the flipped views' softmax (as the graph)."""
    model.eval()
    device = next(model.parameters()).device
    with torch.inference_mode():
        probs = [
            torch.softmax(model.tail(take(part, slice(i, i + batch_size), device)), dim=1)
            for part in ([bank] if flip_bank is None else [bank, flip_bank])
            for i in range(0, len(part), batch_size)
        ]
        stacked = torch.cat(probs).float().cpu()
        return stacked if flip_bank is None else stacked.reshape(2, len(bank), -1).mean(0)


def fit_tail(
    model: TrashClassifier,
    bank: Bank,
    y_bank: torch.Tensor,
    config: TrainConfig,
    on_epoch: EpochHook | None = None,
    rows: torch.Tensor | None = None,
) -> tuple[float, float]:
    """Train the tail of ``model`` on cached features; returns the last epoch's (train_loss, train_accuracy).

    ``rows``: the bank rows to train on (default all; ``y_bank`` is indexed like the bank). AdamW + cosine
    decay + label smoothing (+ class-balanced weights inverse to the class frequency when
    ``config.class_balanced``); ``on_epoch(epoch, train_loss, train_accuracy)`` after every epoch.
    """
    torch.manual_seed(config.seed)
    device = next(model.parameters()).device
    count = len(bank) if rows is None else len(rows)
    params = [p for p in model.tail_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = cosine_decay(optimizer, math.ceil(count / config.batch_size) * config.epochs)
    y_used = y_bank if rows is None else y_bank[rows]
    loss_fn = loss_function(config, y_used.to(device), model.num_classes)
    generator = torch.Generator().manual_seed(config.seed)
    scaler = grad_scaler(config)
    train_loss = train_accuracy = 0.0
    for epoch in range(1, config.epochs + 1):
        model.train_tail()
        order = torch.randperm(count, generator=generator)
        loss_sum, correct = 0.0, 0
        for start in range(0, count, config.batch_size):
            idx = order[start : start + config.batch_size]
            picked = idx if rows is None else rows[idx]
            x, y = take(bank, picked, device), y_bank[picked].to(device)
            with autocast(config):
                logits = model.tail(x)
                loss = loss_fn(logits.float(), y)
            step(loss, optimizer, scaler, scheduler)
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.detach().argmax(1) == y).sum())
        train_loss = loss_sum / count
        train_accuracy = correct / count
        if on_epoch is not None:
            on_epoch(epoch, train_loss, train_accuracy)
    model.eval()
    return train_loss, train_accuracy
