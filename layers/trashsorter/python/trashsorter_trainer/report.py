"""Classification metrics and the confusion-matrix PNG (drawn with Pillow; no matplotlib)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont


def confusion_matrix(truth: Sequence[int], predicted: Sequence[int], num_classes: int) -> list[list[int]]:
    """``matrix[true][predicted]`` counts."""
    if len(truth) != len(predicted):
        raise ValueError("truth and predicted differ in length")
    matrix = [[0] * num_classes for _ in range(num_classes)]
    for t, p in zip(truth, predicted, strict=True):
        matrix[t][p] += 1
    return matrix


def classification_metrics(matrix: list[list[int]], labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support and macro averages from a confusion matrix."""
    total = sum(sum(row) for row in matrix)
    correct = sum(matrix[i][i] for i in range(len(labels)))
    per_class: dict[str, dict[str, float | int]] = {}
    for i, label in enumerate(labels):
        support = sum(matrix[i])
        predicted = sum(row[i] for row in matrix)
        precision = matrix[i][i] / predicted if predicted else 0.0
        recall = matrix[i][i] / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "f1": round(f1, 4),
            "support": support,
        }
    count = len(labels) or 1
    return {
        "accuracy": correct / total if total else 0.0,
        "per_class": per_class,
        "macro_precision": round(sum(float(c["precision"]) for c in per_class.values()) / count, 4),
        "macro_recall": round(sum(float(c["recall"]) for c in per_class.values()) / count, 4),
        "confusion_matrix": matrix,
    }


def draw_confusion_matrix(
    matrix: list[list[int]], labels: Sequence[str], path: Path, title: str = "validation"
) -> Path:
    """A labelled heat-map PNG: rows = true label, columns = predicted label, cell = count (row %)."""
    font = ImageFont.load_default()
    n = len(labels)
    cell = 72
    margin_left = max(90, 8 + 7 * max((len(label) for label in labels), default=4))
    margin_top = 70
    width, height = margin_left + n * cell + 20, margin_top + n * cell + 40
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text(
        (10, 8), f"Confusion matrix ({title}): rows = true, columns = predicted", fill="black", font=font
    )
    for j, label in enumerate(labels):
        draw.text((margin_left + j * cell + 4, margin_top - 18), label[:11], fill="black", font=font)
    for i, label in enumerate(labels):
        row_total = sum(matrix[i]) or 1
        draw.text((8, margin_top + i * cell + cell // 2 - 6), label[:14], fill="black", font=font)
        for j in range(n):
            share = matrix[i][j] / row_total
            shade = int(255 - 200 * share)
            colour = (shade, shade, 255) if i == j else (255, shade, shade)
            x0, y0 = margin_left + j * cell, margin_top + i * cell
            draw.rectangle((x0, y0, x0 + cell - 2, y0 + cell - 2), fill=colour, outline="grey")
            text_colour = "white" if share > 0.6 else "black"
            draw.text((x0 + 8, y0 + cell // 2 - 12), str(matrix[i][j]), fill=text_colour, font=font)
            draw.text((x0 + 8, y0 + cell // 2 + 2), f"{share:.0%}", fill=text_colour, font=font)
    total = sum(sum(row) for row in matrix)
    correct = sum(matrix[i][i] for i in range(n))
    draw.text(
        (10, height - 24),
        f"accuracy {correct}/{total} = {correct / total if total else 0:.3f}",
        fill="black",
        font=font,
    )
    image.save(path, format="PNG")
    return path
