"""The fine-tuning stage (``finetune_epochs`` > 0; the CUDA schedule's default).

LP-FT: the head is first trained on cached pooled features (:func:`head.fit_tail`, the fast schedule),
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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from trashsorter_trainer.config import TrainConfig
from trashsorter_trainer.data import Sample, draw_view
from trashsorter_trainer.model import TrashClassifier
from trashsorter_trainer.optim import (
    EpochHook,
    autocast,
    cosine_decay,
    grad_scaler,
    loss_function,
    step,
)
from trashsorter_trainer.stream import Job, Photos, batches


@dataclass(frozen=True)
class Tuning:
    """The photos fine-tuning trains on: read from their files each epoch, never kept decoded."""

    photos: Sequence[Sample]
    sizes: Sequence[tuple[int, int]]  # each photo's size once resized for augmentation (stream.source_sizes)
    labels: torch.Tensor  # class indices
    workers: int  # data-loader workers


def finetune(
    model: TrashClassifier,
    tuning: Tuning,
    config: TrainConfig,
    rng: random.Random,
    on_epoch: EpochHook | None = None,
) -> tuple[float, float]:
    """Fine-tune ``model`` (its head already trained) on ``tuning``'s photos, a fresh augmented view of each
    per epoch (its random choices drawn in order here, the photos decoded by the data-loader workers);
    returns the last epoch's (loss, accuracy) on the augmented views. ``on_epoch(epoch, loss, accuracy)``
    after every epoch (1-based)."""
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
    count = len(tuning.photos)
    scheduler = cosine_decay(optimizer, math.ceil(count / batch) * config.finetune_epochs)
    labels = tuning.labels.to(device)
    loss_fn = loss_function(config, labels, model.num_classes)
    scaler = grad_scaler(config)
    loss_value = accuracy = 0.0
    for epoch in range(1, config.finetune_epochs + 1):
        model.train_tail()
        order = list(range(count))
        rng.shuffle(order)
        jobs = [Job(i, draw_view(rng, *tuning.sizes[i])) for i in order]
        views = batches(
            Photos(tuning.photos, jobs, config.image_size), [count], batch, tuning.workers, config.device
        )
        loss_sum, correct = 0.0, 0
        for start, x in zip(range(0, count, batch), views, strict=True):
            y = labels[order[start : start + batch]]
            with autocast(config):
                logits = model.logits(x.to(device, non_blocking=True))
                loss = loss_fn(logits.float(), y)
            step(loss, optimizer, scaler, scheduler)
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.detach().argmax(1) == y).sum())
        loss_value, accuracy = loss_sum / count, correct / count
        if on_epoch is not None:
            on_epoch(epoch, loss_value, accuracy)
    model.eval()
    return loss_value, accuracy


def graph_probabilities(
    model: TrashClassifier, images: Iterable[torch.Tensor], config: TrainConfig
) -> torch.Tensor:
    """What the exported graph answers, computed by torch: ``model`` (normalisation, the whole network,
    softmax, the flip average) over batches of preprocessed images; float32 on the CPU."""
    device = next(model.parameters()).device
    model.eval()
    outputs = []
    with torch.inference_mode(), autocast(config):
        for x in images:
            outputs.append(model(x.to(device)).float().cpu())
    return torch.cat(outputs)
