"""The fine-tuning stage (``finetune_epochs`` > 0; the CUDA schedule's default).

LP-FT: the head is first trained on cached pooled features (:func:`train.fit_tail`, the fast schedule),
then the WHOLE network but the stem (every MBConv block, the head conv and the classifier) trains for
``finetune_epochs`` epochs on a fresh augmented view of every photo per epoch (:func:`data.augment`, the
same augmentation as the cached views): AdamW with a small rate for the pretrained layers and a larger one
for the classifier, cosine decay, label smoothing. BatchNorm keeps its ImageNet statistics (batches of 16
photos are too small to estimate them) while its scale and shift train. Starting from the trained head keeps
the pretrained features from being torn up by a random classifier's gradients in the first steps.

Cross-validated on the sample (docs/local-training.md): about one point above the head on average, within
the draw-to-draw noise of 180 photos. It costs a full forward and backward pass per photo and epoch (~9
photos/s on 2 CPU cores).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from trashsorter_trainer.config import TrainConfig
from trashsorter_trainer.data import augment
from trashsorter_trainer.model import TrashClassifier
from trashsorter_trainer.optim import (
    EpochHook,
    autocast,
    cosine_decay,
    grad_scaler,
    loss_function,
    step,
)


def finetune(
    model: TrashClassifier,
    sources: Sequence[Image.Image],
    labels: torch.Tensor,
    config: TrainConfig,
    rng: random.Random,
    on_epoch: EpochHook | None = None,
) -> tuple[float, float]:
    """Fine-tune ``model`` (its head already trained) on ``sources`` (decoded photos, short side resized as
    for :func:`data.augment`) with class indices ``labels``; returns the last epoch's (loss, accuracy) on
    the augmented views. ``on_epoch(epoch, loss, accuracy)`` after every epoch (1-based)."""
    device = next(model.parameters()).device
    model.unfreeze()
    head_ids = {id(p) for p in model.head_parameters()}
    body = [p for p in model.tail_parameters() if id(p) not in head_ids]
    optimizer = torch.optim.AdamW(
        [
            {"params": body, "lr": config.finetune_learning_rate},
            {"params": model.head_parameters(), "lr": config.finetune_head_learning_rate},
        ],
        weight_decay=config.weight_decay,
    )
    batch = config.finetune_batch_size
    scheduler = cosine_decay(optimizer, math.ceil(len(sources) / batch) * config.finetune_epochs)
    labels = labels.to(device)
    loss_fn = loss_function(config, labels, model.num_classes)
    scaler = grad_scaler(config)
    loss_value = accuracy = 0.0
    for epoch in range(1, config.finetune_epochs + 1):
        model.train_tail()
        order = list(range(len(sources)))
        rng.shuffle(order)
        loss_sum, correct = 0.0, 0
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            views = np.stack([augment(sources[i], rng, config.image_size) for i in idx])
            x, y = torch.from_numpy(views).to(device), labels[idx]
            with autocast(config):
                logits = model.logits(x)
                loss = loss_fn(logits.float(), y)
            step(loss, optimizer, scaler, scheduler)
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.detach().argmax(1) == y).sum())
        loss_value, accuracy = loss_sum / len(sources), correct / len(sources)
        if on_epoch is not None:
            on_epoch(epoch, loss_value, accuracy)
    model.eval()
    return loss_value, accuracy


def graph_probabilities(
    model: TrashClassifier, arrays: Sequence[np.ndarray], batch_size: int, config: TrainConfig
) -> torch.Tensor:
    """What the exported graph answers, computed by torch: ``model`` (normalisation, the whole network,
    softmax, the flip average) over preprocessed images; float32 on the CPU."""
    device = next(model.parameters()).device
    model.eval()
    outputs = []
    with torch.inference_mode(), autocast(config):
        for start in range(0, len(arrays), batch_size):
            x = torch.from_numpy(np.stack(arrays[start : start + batch_size])).to(device)
            outputs.append(model(x).float().cpu())
    return torch.cat(outputs)
