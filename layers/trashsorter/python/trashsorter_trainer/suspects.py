"""Suspected mislabels: the photos whose label the model most doubts (confident learning), listed, never
changed.

Every photo gets probabilities from a model that did not train on it: a training photo's are out-of-fold
(:func:`out_of_fold`: ``FOLDS`` heads, each trained with the run's schedule on the cached features of the
other folds' photos, the mean over the photo's cached views), a validation photo's are the split run's
graph's answers. Then confident learning (Northcutt, Jiang & Chuang, "Confident Learning: Estimating
Uncertainty in Dataset Labels", JAIR 2021), the rule the ``cleanlab`` library applies, written out here:

* the threshold of class ``j`` is the mean probability of ``j`` over the photos labelled ``j`` (how sure
  the model is of that class when the label is right);
* a photo's confident class is, among the classes whose probability reaches their threshold, the most
  probable; a photo whose confident class is not its label is a suspect (an off-diagonal entry of the
  confident joint);
* suspects are ranked by normalised margin, the label's probability minus the best other class's, lowest
  first (the label the model doubts most at the top).

Nothing is relabelled or removed: the list goes to ``suspects.json``, ``report.html`` and ``trashsorter
suspects``; a person moves a photo to another label if the label was wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from trashsorter_trainer.config import TrainConfig
from trashsorter_trainer.contract import SUSPECTS_FILE
from trashsorter_trainer.data import Sample
from trashsorter_trainer.head import fit_tail, tail_probabilities
from trashsorter_trainer.model import TrashClassifier

FOLDS = 5
METHOD = "confident learning on out-of-fold probabilities (5 folds of the head on the cached features)"


def out_of_fold(
    make_model: Callable[[], TrashClassifier],
    bank: np.ndarray,
    y_train: torch.Tensor,
    config: TrainConfig,
    folds: int = FOLDS,
) -> np.ndarray | None:
    """Out-of-fold class probabilities [photos, classes] of the training photos from their cached views
    (``bank``: ``views`` blocks of one row per photo, view-major, as the trainer caches them). Folds are
    drawn per class with ``config.seed``. None when the run does not train on pooled features
    (``finetune_blocks`` >= 0: a fold would retrain network blocks, not a linear head)."""
    if config.finetune_blocks != -1:
        return None
    labels = y_train.numpy()
    photos = len(labels)
    views = len(bank) // photos
    fold_of = np.empty(photos, dtype=np.int64)
    generator = np.random.default_rng(config.seed)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        generator.shuffle(members)
        fold_of[members] = np.arange(len(members)) % folds
    y_bank = y_train.repeat(views)
    offsets = photos * np.arange(views)[:, None]
    probabilities: np.ndarray | None = None
    for fold in range(folds):
        held = np.flatnonzero(fold_of == fold)
        kept = np.flatnonzero(fold_of != fold)
        if not len(held) or not len(kept):
            continue
        model = make_model().to(config.device)
        fit_tail(model, bank, y_bank, config, rows=torch.from_numpy((kept[None, :] + offsets).ravel()))
        held_rows = np.ascontiguousarray(bank[(held[None, :] + offsets).ravel()])
        answers = tail_probabilities(model, held_rows, None, config.batch_size).numpy()
        if probabilities is None:
            probabilities = np.zeros((photos, answers.shape[1]), dtype=np.float64)
        probabilities[held] = answers.reshape(views, len(held), -1).mean(0)
    return probabilities


def confident_learning(probabilities: np.ndarray, given: Sequence[int]) -> list[tuple[int, int, float]]:
    """(photo, confident class, normalised margin) of every suspect, lowest margin first."""
    probs = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(given, dtype=np.int64)
    classes = probs.shape[1]
    thresholds = np.full(classes, np.inf)
    for label in range(classes):
        mine = labels == label
        if mine.any():
            thresholds[label] = probs[mine, label].mean()
    found = []
    for photo, (row, label) in enumerate(zip(probs, labels, strict=True)):
        above = np.flatnonzero(row >= thresholds)
        if not len(above):
            continue
        confident = int(above[np.argmax(row[above])])
        if confident == label:
            continue
        others = np.delete(row, label)
        found.append((photo, confident, float(row[label] - others.max())))
    return sorted(found, key=lambda item: (item[2], item[0]))


def find(
    train_probabilities: np.ndarray | None,
    validation_probabilities: np.ndarray,
    photos: Sequence[Sample],
    index: Mapping[str, int],
    labels: Sequence[str],
) -> list[dict[str, Any]]:
    """The suspects among ``photos`` (the training photos, then the validation photos, as the trainer
    orders them), most doubted first; without training probabilities only the validation photos."""
    n_val = len(validation_probabilities)
    checked = list(photos[len(photos) - n_val :]) if train_probabilities is None else list(photos)
    parts = (
        [validation_probabilities]
        if train_probabilities is None
        else [train_probabilities, validation_probabilities]
    )
    probs = np.concatenate([np.asarray(p, dtype=np.float64) for p in parts])
    given = [index[s.label] for s in checked]
    return [
        {
            "rank": rank,
            "key": checked[photo].key,
            "label": checked[photo].label,
            "suggested": labels[confident],
            "label_probability": round(float(probs[photo, given[photo]]), 4),
            "suggested_probability": round(float(probs[photo, confident]), 4),
            "margin": round(margin, 4),
            "split": checked[photo].split,
            "answered_by": "held-out fold" if checked[photo].split == "train" else "split run's graph",
        }
        for rank, (photo, confident, margin) in enumerate(confident_learning(probs, given), start=1)
    ]


def summary(suspects: Sequence[Mapping[str, Any]], checked: int, train_checked: bool) -> dict[str, Any]:
    """What metrics.json says about the suspects (the list itself is in suspects.json)."""
    return {
        "count": len(suspects),
        "checked": checked,
        "file": SUSPECTS_FILE,
        "method": METHOD
        if train_checked
        else "confident learning on the validation photos only "
        "(finetune_blocks >= 0: training photos not checked)",
    }
