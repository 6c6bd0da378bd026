"""The container entry point (SageMaker script mode): channels in, ``SM_MODEL_DIR`` out, metric lines out.

Exactly what the SageMaker training toolkit provides is read: ``SM_CHANNEL_<NAME>`` folders (see
:mod:`trashsorter_trainer.contract`), ``SM_MODEL_DIR`` (default ``/opt/ml/model``), and the hyperparameters
from ``<SM_INPUT_CONFIG_DIR or /opt/ml/input/config>/hyperparameters.json`` (string values). The model dir
receives ``model.onnx``, ``labels.txt``, ``metrics.json``, ``model.json`` and ``confusion_matrix.png``;
SageMaker packs it as ``model.tar.gz``. With a ``champion`` channel the champion's ONNX graph is evaluated
on THIS job's validation split and reported beside the challenger (``champion:validation:accuracy`` and
``metrics.json["champion"]``). Exit code 0 = success; a failure writes ``/opt/ml/output/failure`` (the
FailureReason SageMaker shows) and exits 1.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from trashsorter_edge.contract import (
    CHAMPION_VALIDATION_ACCURACY,
    IMAGES_PREFIX,
    LABELS_FILE,
    METRICS_FILE,
    MODEL_FILE,
    TRAIN_ACCURACY,
    TRAIN_LOSS,
    VALIDATION_ACCURACY,
    VALIDATION_LOSS,
    card_input_size,
)
from trashsorter_edge.contract import (
    read_labels as read_labels_file,
)
from trashsorter_trainer import report
from trashsorter_trainer.contract import (
    CHAMPION_CHANNEL,
    IMAGE_CHANNELS,
    LABELS_CHANNEL,
    LST_CHANNELS,
    MANIFEST_CHANNEL,
    OOM_SIGNAL,
    SUSPECTS_FILE,
    features_line,
    listed_photos,
    memory_gb,
    metric_line,
    out_of_memory_reason,
)
from trashsorter_trainer.data import Sample, preprocess, verify_content_address
from trashsorter_trainer.errors import TrainerError

OPT_ML = "/opt/ml"
CHAMPION_BATCH = 64  # validation photos decoded at a time for the champion's graph
SUSPECT_THUMBNAILS = 24  # the most doubted photos shown with a thumbnail in report.html


def channel_dir(name: str, env: Mapping[str, str]) -> Path | None:
    value = env.get(f"SM_CHANNEL_{name.upper()}")
    path = Path(value) if value else Path(OPT_ML, "input", "data", name)
    return path if path.is_dir() else None


def read_hyperparameters(env: Mapping[str, str]) -> dict[str, str]:
    path = Path(env.get("SM_INPUT_CONFIG_DIR", f"{OPT_ML}/input/config")) / "hyperparameters.json"
    if not path.is_file():
        return {}
    raw = json.loads(path.read_text())
    if not isinstance(raw, dict):
        raise TrainerError(f"{path} is not a JSON object")
    return {str(k): _decoded(v) for k, v in raw.items()}


def _decoded(value: object) -> str:
    """Values as the training toolkit reads them: JSON-encoded strings ('"train.py"') decoded."""
    text = str(value)
    try:
        decoded = json.loads(text)
    except ValueError:
        return text
    return decoded if isinstance(decoded, str) else text


def read_labels(env: Mapping[str, str]) -> list[str]:
    directory = channel_dir(LABELS_CHANNEL, env)
    if directory is None or not (directory / LABELS_FILE).is_file():
        raise TrainerError(f"the 'labels' channel with {LABELS_FILE} is missing")
    return read_labels_file(directory / LABELS_FILE)


def read_split(split: str, labels: list[str], env: Mapping[str, str]) -> list[Sample]:
    """The images of ``split``: ``<split>_lst/*.lst`` lines, files under the ``<split>`` channel."""
    images = channel_dir(split, env)
    lst_dir = channel_dir(f"{split}_lst", env)
    if images is None or lst_dir is None:
        raise TrainerError(f"the '{split}' and '{split}_lst' channels are required")
    samples = []
    for lst in sorted(lst_dir.glob("*.lst")):
        for number, line in enumerate(lst.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) != 3:
                raise TrainerError(f"{lst.name} line {number}: expected index<TAB>class<TAB>path")
            class_index, key = int(float(parts[1])), parts[2]
            if not 0 <= class_index < len(labels):
                raise TrainerError(f"{lst.name} line {number}: class {class_index} not in labels.txt")
            path = images / key
            if not path.is_file():
                raise TrainerError(f"{lst.name} line {number}: {key} is not in the '{split}' channel")
            try:  # read to check, not kept: the trainer streams
                verify_content_address(key, path.read_bytes())
            except TrainerError as exc:
                raise TrainerError(f"{exc}{_photos_named(key, env)}") from exc
            samples.append(Sample(key=key, label=labels[class_index], split=split, content=path))
    if not samples:
        raise TrainerError(f"the '{split}' split is empty")
    return samples


def _photos_named(key: str, env: Mapping[str, str]) -> str:
    """``; photo <catalogue key>, ...`` for a stored object, from the ``manifest`` channel ("" without it)."""
    directory = channel_dir(MANIFEST_CHANNEL, env)
    photos: list[str] = []
    for manifest in sorted(directory.glob("*.jsonl")) if directory is not None else []:
        with manifest.open(encoding="utf-8") as lines:
            photos += [row["key"] for row in map(json.loads, lines) if row.get("s3_key") == key]
    if not photos:
        return ""
    return (
        f"; photo {', '.join(photos)}: delete it if it is wrong, else the next snapshot stores its "
        "catalogued bytes again"
    )


def champion_model(env: Mapping[str, str], work: Path) -> Path | None:
    """The champion's folder (model.onnx + labels.txt [+ model.json]); unpacks a model.tar.gz."""
    directory = channel_dir(CHAMPION_CHANNEL, env)
    if directory is None:
        return None
    if (directory / MODEL_FILE).is_file():
        return directory
    for archive in sorted(directory.rglob("*.tar.gz")):
        target = work / "champion"
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
        if (target / MODEL_FILE).is_file():
            return target
    print(f"champion channel holds no model.onnx: {sorted(p.name for p in directory.iterdir())}", flush=True)
    return None


def evaluate_champion(folder: Path, samples: list[Sample], labels: list[str]) -> dict[str, Any] | None:
    """The champion's metrics on the challenger's validation samples (None when the labels differ).

    A refit champion (``split_model.onnx`` beside ``model.onnx``) is scored with its SPLIT run's graph: the
    deployed refit graph was trained on the champion's validation images, which the hash-stable split keeps
    on this job's validation side, so scoring it there would compare a model on images it learnt against
    one that never saw them. Both sides of the gate are then split-run graphs (no validation image seen)."""
    from trashsorter_trainer.train import SPLIT_MODEL_FILE, run_onnx_batches

    champion_labels = read_labels_file(folder / LABELS_FILE)
    if champion_labels != labels:
        print(f"champion labels {champion_labels} differ from {labels}: no comparison", flush=True)
        return None
    size = card_input_size(folder)
    graph = SPLIT_MODEL_FILE if (folder / SPLIT_MODEL_FILE).is_file() else MODEL_FILE
    batches = (
        np.stack([preprocess(s.data, size) for s in samples[start : start + CHAMPION_BATCH]])
        for start in range(0, len(samples), CHAMPION_BATCH)
    )
    predicted = run_onnx_batches(folder / graph, batches).argmax(1).tolist()
    truth = [labels.index(s.label) for s in samples]
    scores = report.classification_metrics(report.confusion_matrix(truth, predicted, len(labels)), labels)
    return {
        "validation_accuracy": round(scores["accuracy"], 5),
        "per_class": scores["per_class"],
        "confusion_matrix": scores["confusion_matrix"],
        "validation_count": len(samples),
        "validation_answers": {s.key: labels[int(i)] for s, i in zip(samples, predicted, strict=True)},
        "graph": graph,
    }


def original_names(env: Mapping[str, str]) -> dict[str, str]:
    """The ``manifest`` channel's ``manifest.jsonl``: content-addressed copy (``s3_key``) -> the image's
    original key without ``images/`` (``Compost/paper/paper12.jpg``); empty without the channel."""
    directory = channel_dir(MANIFEST_CHANNEL, env)
    names: dict[str, str] = {}
    for path in sorted(directory.glob("*.jsonl")) if directory is not None else []:
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict) and entry.get("s3_key") and entry.get("key"):
                names[str(entry["s3_key"])] = str(entry["key"]).removeprefix(IMAGES_PREFIX)
    return names


def misclassified(
    result: Any, labels: list[str], names: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """Every validation photo the shipped graph got wrong, with a thumbnail and its original name (from
    ``names``, else the key it was read under) for report.html."""
    from trashsorter_trainer.data import decode

    probs = result.validation_probabilities
    wrong = []
    for sample, row in zip(result.validation_samples, probs if probs is not None else [], strict=False):
        predicted = int(np.argmax(row))
        if labels[predicted] != sample.label:
            wrong.append(
                {
                    "key": sample.key,
                    "name": (names or {}).get(sample.key, sample.key),
                    "true": sample.label,
                    "predicted": labels[predicted],
                    "confidence": float(row[predicted]),
                    "thumbnail": report.thumbnail_data_uri(decode(sample.data, sample.key)),
                }
            )
    return wrong


def suspect_thumbnails(result: Any, samples: list[Sample]) -> list[dict[str, Any]]:
    """The most doubted photos (suspects.json's first) with a thumbnail, for report.html."""
    from trashsorter_trainer.data import decode

    by_key = {s.key: s for s in samples}
    shown = []
    for suspect in list(result.suspects)[:SUSPECT_THUMBNAILS]:
        sample = by_key[suspect["key"]]
        shown.append({**suspect, "thumbnail": report.thumbnail_data_uri(decode(sample.data, sample.key))})
    return shown


def run(env: Mapping[str, str]) -> dict[str, Any]:
    """Train from the channels into the model dir; returns metrics.json's content."""
    from trashsorter_trainer.train import TrainConfig, train

    model_dir = Path(env.get("SM_MODEL_DIR", f"{OPT_ML}/model"))
    model_dir.mkdir(parents=True, exist_ok=True)
    config = TrainConfig.from_hyperparameters(read_hyperparameters(env))
    labels = read_labels(env)
    samples = [s for split in IMAGE_CHANNELS for s in read_split(split, labels, env)]
    print(f"training on {config.device}: {len(samples)} images, labels {labels}", flush=True)

    def progress(entry: Mapping[str, Any]) -> None:
        if entry.get("phase") == "features":
            print(features_line(int(entry["done"]), int(entry["total"])), flush=True)
            return
        values = {
            TRAIN_LOSS: entry["train_loss"],
            TRAIN_ACCURACY: entry["train_accuracy"],
            VALIDATION_LOSS: entry["val_loss"],
            VALIDATION_ACCURACY: entry["val_accuracy"],
        }
        print(metric_line(f"epoch {entry['epoch']}/{entry['epochs']}", values), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result = train(samples, labels, work / "out", config, progress=progress)
        metrics = dict(result.metrics)
        champion_dir = champion_model(env, work)
        if champion_dir is not None:
            validation = [s for s in samples if s.split == "validation"]
            metrics["champion"] = evaluate_champion(champion_dir, validation, labels)
        for name in (*result.members, SUSPECTS_FILE):
            shutil.copy2(work / "out" / name, model_dir / name)
        (model_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
        page = report.render_html(
            metrics,
            misclassified(result, labels, original_names(env)),
            suspects=suspect_thumbnails(result, samples),
        )
        (model_dir / "report.html").write_text(page)
    final = {
        TRAIN_LOSS: metrics["train_loss"],
        TRAIN_ACCURACY: metrics["train_accuracy"],
        VALIDATION_LOSS: metrics["validation_loss"],
        VALIDATION_ACCURACY: metrics["validation_accuracy"],
    }
    if metrics.get("champion"):
        final[CHAMPION_VALIDATION_ACCURACY] = metrics["champion"]["validation_accuracy"]
    print(metric_line("final", final), flush=True)
    return metrics


def main(argv: list[str] | None = None) -> int:
    """Run the training in a child process and wait for it: a child the kernel kills for memory (SIGKILL)
    cannot say so itself, so this process writes the failure reason (photos, memory, what to choose)."""
    del argv  # script mode passes hyperparameters as --name value too; the JSON file is the one source
    env = dict(os.environ)
    if not hasattr(os, "fork"):
        return train_and_report(env)
    child = multiprocessing.get_context("fork").Process(target=_child, args=(env,), name="trainer")
    child.start()
    child.join()
    if child.exitcode == -OOM_SIGNAL:
        write_failure(env, out_of_memory_reason(_photos(env), memory_gb(), _instance_type(env)))
        return 1
    return 0 if child.exitcode == 0 else 1


def _child(env: dict[str, str]) -> None:
    sys.exit(train_and_report(env))


def train_and_report(env: dict[str, str]) -> int:
    """Train; a failure prints its reason and writes it as the job's FailureReason (exit code 1)."""
    try:
        run(env)
    except Exception as exc:  # noqa: BLE001 - any failure becomes the job's FailureReason
        reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, TrainerError) else str(exc)
        print(f"training failed: {reason}", file=sys.stderr, flush=True)
        write_failure(env, reason)
        return 1
    return 0


def write_failure(env: Mapping[str, str], reason: str) -> None:
    """``<SM_OUTPUT_DIR>/failure``: the FailureReason SageMaker shows for the job."""
    failure = Path(env.get("SM_OUTPUT_DIR", f"{OPT_ML}/output"))
    try:
        failure.mkdir(parents=True, exist_ok=True)
        (failure / "failure").write_text(reason)
    except OSError:
        pass


def _photos(env: Mapping[str, str]) -> int:
    try:
        return listed_photos(channel_dir(channel, env) for channel in LST_CHANNELS)
    except OSError:
        return 0


def _instance_type(env: Mapping[str, str]) -> str:
    """``current_instance_type`` of the job's resourceconfig.json ("" when it does not say)."""
    path = Path(env.get("SM_INPUT_CONFIG_DIR", f"{OPT_ML}/input/config")) / "resourceconfig.json"
    try:
        return str(json.loads(path.read_text()).get("current_instance_type", ""))
    except (OSError, ValueError, AttributeError):
        return ""
