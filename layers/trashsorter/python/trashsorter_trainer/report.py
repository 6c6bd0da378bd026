"""Classification metrics, the confusion-matrix PNG (drawn with Pillow; no matplotlib) and ``report.html``."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from trashsorter_trainer.contract import REPORT_DECISION_END, REPORT_DECISION_START


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


Z95 = 1.959963984540054  # the standard normal quantile of a two-sided 95 % interval


def wilson_interval(successes: int, total: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval (95 % by default) of the rate ``successes / total``: the true rates a rate
    measured on ``total`` photos is compatible with. 34 right of 41 (0.83) spans 0.69-0.91, so a small
    validation split cannot tell 0.83 from 0.90. ``(0.0, 1.0)`` when nothing was measured."""
    if not 0 <= successes <= total:
        raise ValueError(f"need 0 <= successes <= total, got {successes} of {total}")
    if total == 0:
        return 0.0, 1.0
    rate = successes / total
    spread = z * z / total
    centre = (rate + spread / 2) / (1 + spread)
    half = z * math.sqrt(rate * (1 - rate) / total + spread / (4 * total)) / (1 + spread)
    return round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)


def intervals(matrix: Sequence[Sequence[int]], labels: Sequence[str]) -> dict[str, Any]:
    """Wilson intervals of the accuracy and of every class's recall from a confusion matrix
    (``matrix[true][predicted]``): ``{"accuracy": (low, high), "recall": {label: (low, high)}}``."""
    total = sum(sum(row) for row in matrix)
    correct = sum(matrix[i][i] for i in range(len(labels)))
    return {
        "accuracy": wilson_interval(correct, total),
        "recall": {label: wilson_interval(matrix[i][i], sum(matrix[i])) for i, label in enumerate(labels)},
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


THUMBNAIL = 160


def thumbnail_data_uri(image: Image.Image, side: int = THUMBNAIL) -> str:
    """A small JPEG of ``image`` as a data: URI (the report stays one self-contained file)."""
    copy = image.copy()
    copy.thumbnail((side, side))
    buffer = io.BytesIO()
    copy.convert("RGB").save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A table in a box that scrolls sideways by itself on a narrow screen (the page never does)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<div class=scroll><table><tr>{head}</tr>{body}</table></div>"


UNDECIDED = (
    "<section id=decision class=undecided><p><b>Not yet decided.</b> The trainer wrote this report before "
    "the quality gate compared the model with the champion; the copy kept beside the packaged model "
    "(<code>trashsorter report</code>) says whether it was deployed or rejected, and why.</p></section>"
)


def _span(interval: tuple[float, float]) -> str:
    return f"{interval[0]:.2f}-{interval[1]:.2f}"


def _refit_note(refit: Mapping[str, Any] | None) -> str:
    if not refit:
        return "<p>The shipped model.onnx is the graph these numbers were measured on.</p>"
    keys = ("on", "reported_metrics_from", "evaluated_graph")
    on, source, graph = (html.escape(str(refit[k])) for k in keys)
    return (
        f"<p>The shipped model.onnx was refit on {on} ({refit['images']} images) with the same schedule; "
        f"every number on this page is from the {source} ({graph}, trained without the validation "
        "images).</p>"
    )


def _right(values: Mapping[str, Any]) -> str:
    """``recall (right/photos)`` of one class's scores."""
    support = int(values.get("support") or 0)
    recall = float(values["recall"])
    return f"{recall:.3f} ({round(recall * support)}/{support})" if support else f"{recall:.3f}"


def _champion_section(metrics: Mapping[str, Any], labels: Sequence[str]) -> str:
    """This model beside the champion on the same validation photos; the paired comparison (photo by
    photo) when the evaluation carries one (``champion["paired"]``: name -> value)."""
    champion = metrics.get("champion") or None
    head = "<h2>Against the champion, on the same validation photos</h2>"
    if not champion:
        return head + "<p>No champion was evaluated (none yet, or a different label set).</p>"
    per_class, theirs = metrics["per_class"], champion["per_class"]
    rows = [
        [
            "this model",
            f"{float(metrics['validation_accuracy']):.3f}",
            *(_right(per_class[x]) for x in labels),
        ],
        [
            "champion",
            f"{float(champion['validation_accuracy']):.3f}",
            *(_right(theirs[x]) if x in theirs else "-" for x in labels),
        ],
    ]
    parts = [head, _table(["", "accuracy", *(f"recall {x}" for x in labels)], rows)]
    paired = champion.get("paired")
    if isinstance(paired, Mapping) and paired:
        parts.append("<h3>Photo by photo</h3>")
        parts.append(
            _table(
                ["", "value"],
                [[k, json.dumps(v) if not isinstance(v, str) else v] for k, v in paired.items()],
            )
        )
    return "".join(parts)


def render_html(
    metrics: Mapping[str, Any],
    misclassified: Sequence[Mapping[str, Any]],
    title: str = "trashsorter training report",
    suspects: Sequence[Mapping[str, Any]] = (),
) -> str:
    """``report.html``: accuracy, per-class precision/recall/F1, the confusion matrix, the class balance of
    the splits, a thumbnail of every misclassified validation photo (true, predicted, confidence) and the
    champion comparison on the same images. ``misclassified`` items: key, true, predicted, confidence,
    thumbnail (a data: URI)."""
    labels = list(metrics["labels"])
    per_class = metrics["per_class"]
    spans = intervals(metrics["confusion_matrix"], labels)
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        REPORT_DECISION_START + UNDECIDED + REPORT_DECISION_END,
        f"<p>validation accuracy <b>{float(metrics['validation_accuracy']):.4f}</b> on "
        f"{metrics['validation_count']} images (the exported ONNX graph; 95 % interval "
        f"{_span(spans['accuracy'])}); train accuracy "
        f"{float(metrics['train_accuracy']):.4f}; {metrics['train_count']} training images.</p>",
        _refit_note(metrics.get("refit")),
        "<p>A 95 % interval is the range of true rates a rate measured on this many photos is compatible "
        "with (Wilson score interval): where two numbers' intervals overlap widely, the validation split "
        "is too small to tell them apart.</p>",
        _champion_section(metrics, labels),
        "<h2>Per class</h2>",
        _table(
            ["class", "precision", "recall", "recall 95 % interval", "F1", "support"],
            [
                [
                    label,
                    per_class[label]["precision"],
                    per_class[label]["recall"],
                    _span(spans["recall"][label]),
                    per_class[label]["f1"],
                    per_class[label]["support"],
                ]
                for label in labels
            ],
        ),
        "<h2>Confusion matrix (rows true, columns predicted)</h2>",
        _table(
            ["true \\ predicted", *labels],
            [[label, *row] for label, row in zip(labels, metrics["confusion_matrix"], strict=True)],
        ),
        "<h2>Class balance</h2>",
        _table(
            ["split", *labels],
            [
                [split, *(counts.get(label, 0) for label in labels)]
                for split, counts in metrics["class_counts"].items()
            ],
        ),
    ]
    parts.append(f"<h2>Misclassified validation photos ({len(misclassified)})</h2><div class=grid>")
    for item in misclassified:
        name = html.escape(str(item.get("name") or item["key"]))
        parts.append(
            f'<figure><img src="{item["thumbnail"]}" alt="{name}" title="{html.escape(str(item["key"]))}">'
            f"<figcaption><span class=name>{name}</span>true <b>{html.escape(str(item['true']))}</b>, "
            f"predicted <b>{html.escape(str(item['predicted']))}</b> ({float(item['confidence']):.2f})"
            "</figcaption></figure>"
        )
    parts.append("</div>")
    parts.extend([_suspects_section(metrics.get("suspects"), suspects), _resources_section(metrics)])
    style = (
        "body{font-family:sans-serif;margin:1em auto;padding:0 1em;max-width:1100px;line-height:1.35}"
        "p{overflow-wrap:anywhere}code{overflow-wrap:anywhere}"
        ".scroll{max-width:100%;overflow-x:auto}table{border-collapse:collapse;margin:.5em 0}"
        "td,th{border:1px solid #bbb;padding:.25em .6em;text-align:right}"
        "#decision{border-radius:6px;padding:.2em 1em;margin:.5em 0 1em}"
        ".deployed{background:#e3f4e1;border:2px solid #3a8a32}.rejected{background:#fbe4e1;border:2px solid"
        " #b3362b}.registered,.undecided{background:#fff4d6;border:2px solid #b8860b}"
        ".grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:1em}"
        "figure{margin:0;min-width:0;font-size:.8em}figure img{display:block;max-width:100%;height:auto}"
        ".name{display:block;font-weight:bold;overflow-wrap:anywhere;margin:.2em 0}"
    )
    return (
        "<!doctype html><html><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>"
    )


def _suspects_section(summary: Mapping[str, Any] | None, shown: Sequence[Mapping[str, Any]]) -> str:
    """The photos whose label the model most doubts (``shown``: suspects.json's first, with a thumbnail)."""
    if not summary:
        return ""
    parts = [
        f"<h2>Suspected mislabels ({summary['count']} of {summary['checked']} photos)</h2>",
        f"<p>Photos whose label the model doubts ({html.escape(str(summary['method']))}), most doubted "
        f"first; the whole list is {html.escape(str(summary['file']))} and <code>trashsorter suspects"
        "</code>. Nothing was relabelled: look at each, and move a photo to its right label only if its "
        "label is wrong.</p><div class=grid>",
    ]
    for item in shown:
        parts.append(
            f'<figure><img src="{item["thumbnail"]}" alt="{html.escape(str(item["key"]))}">'
            f"<figcaption>#{item['rank']} {html.escape(str(item['key']))}<br>labelled "
            f"<b>{html.escape(str(item['label']))}</b> ({float(item['label_probability']):.2f}), looks like "
            f"<b>{html.escape(str(item['suggested']))}</b> ({float(item['suggested_probability']):.2f})"
            "</figcaption></figure>"
        )
    parts.append("</div>")
    return "".join(parts)


def _resources_section(metrics: Mapping[str, Any]) -> str:
    """Peak memory and speed of the training run."""
    used = metrics.get("resources")
    if not used:
        return ""
    rows = [
        ["photos", used["photos"]],
        ["peak memory of the trainer (MiB, ru_maxrss)", used["peak_memory_mb"]],
        [
            "peak memory of its largest data-loader worker (MiB, shares most pages)",
            used["largest_worker_peak_memory_mb"],
        ],
        ["photos per second (wall time)", used["photos_per_second"]],
        ["backbone images per second (feature pass)", metrics.get("backbone_images_per_second", "")],
        ["data-loader workers", used["loader_workers"]],
        [f"cached features (MiB, {used['feature_cache']})", used["feature_cache_mb"]],
        ["wall time (s)", metrics.get("wall_time_seconds", "")],
    ]
    return "<h2>Memory and speed</h2>" + _table(["", "value"], rows)
