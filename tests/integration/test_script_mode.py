"""The script-mode contract: the trainer's sourcedir.tar.gz run exactly as the SageMaker PyTorch container
runs it (``python train.py`` in /opt/ml/code, SM_* environment, channels under /opt/ml/input/data,
hyperparameters.json), here in a temporary /opt/ml layout on real TrashNet photos.

The model dir is then packed as SageMaker packs it (model.tar.gz), unpacked, and served by the device's
Classifier: its predictions on the validation photos must reproduce the trainer's own evaluation.
"""

from __future__ import annotations

import ast
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from trashsorter_cli.device.predictor import Classifier
from trashsorter_trainer import contract, report, sourcedir
from trashsorter_trainer.data import load_mapping, samples_from_directory

pytestmark = pytest.mark.slow
SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "trashnet"
PER_FOLDER = 6  # a few photos of each TrashNet folder keep the job fast on 2 cores


def lay_out_opt_ml(root: Path, champion: Path | None = None) -> tuple[dict[str, str], list[str]]:
    """/opt/ml as SageMaker lays it out for the trashsorter request's channels; returns (env, labels)."""
    samples, labels = samples_from_directory(SAMPLES, load_mapping(SAMPLES / "mapping.json"))
    kept: dict[str, int] = {}
    data = root / "input" / "data"
    lst: dict[str, list[str]] = {"train": [], "validation": []}
    for sample in samples:
        folder = sample.key.split("/")[0]
        if kept.get(folder, 0) >= PER_FOLDER:
            continue
        kept[folder] = kept.get(folder, 0) + 1
        key = f"images/{sample.label}/{sample.key.replace('/', '-')}"  # the S3 key under the channel
        path = data / sample.split / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(sample.data)
        lst[sample.split].append(f"{len(lst[sample.split])}\t{labels.index(sample.label)}\t{key}")
    for split, lines in lst.items():
        (data / f"{split}_lst").mkdir(parents=True)
        (data / f"{split}_lst" / f"{split}.lst").write_text("\n".join(lines) + "\n")
    (data / "labels").mkdir()
    (data / "labels" / "labels.txt").write_text("".join(f"{label}\n" for label in labels))
    channels = ["train", "validation", "train_lst", "validation_lst", "labels"]
    if champion is not None:
        (data / "champion").mkdir()
        (data / "champion" / "model.tar.gz").write_bytes(champion.read_bytes())
        channels.append("champion")
    config = root / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps({"epochs": "2", "local_views": "1"}))
    code = root / "code"
    with tarfile.open(fileobj=io.BytesIO(sourcedir.build().data)) as tar:
        tar.extractall(code, filter="data")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        "SM_MODEL_DIR": str(root / "model"),
        "SM_OUTPUT_DIR": str(root / "output"),
        "SM_INPUT_CONFIG_DIR": str(config),
        "SM_HPS": (config / "hyperparameters.json").read_text(),
        **{f"SM_CHANNEL_{name.upper()}": str(data / name) for name in channels},
    }
    return env, labels


def run_container(root: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, contract.PROGRAM],
        cwd=root / "code",
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def pack_model_dir(model_dir: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(model_dir.iterdir()):
            tar.add(path, arcname=path.name)
    return archive


EDGE_MODULES_IN_SOURCEDIR = ("__init__.py", "contract.py", "decoding.py", "imagefile.py", "preprocessing.py")


def test_sourcedir_is_self_contained_and_deterministic() -> None:
    first, second = sourcedir.build(), sourcedir.build()
    assert first.data == second.data and first.sha256 == second.sha256
    with tarfile.open(fileobj=io.BytesIO(first.data)) as tar:
        names = tar.getnames()
        assert {
            contract.PROGRAM,
            contract.REQUIREMENTS,
            "trashsorter_trainer/entry.py",
            "trashsorter_edge/preprocessing.py",  # THE preprocessing, shared with the device and edge app
            "trashsorter_edge/contract.py",  # THE exchanged formats (labels.txt, model folder, metric names)
        } <= set(names)
        assert not [
            n
            for n in names
            if n.startswith("trashsorter_edge/") and n.rsplit("/", 1)[1] not in EDGE_MODULES_IN_SOURCEDIR
        ]
        for name in names:
            if not name.endswith(".py"):
                continue
            member = tar.extractfile(name)
            assert member is not None
            tree = ast.parse(member.read())
            imported = {
                alias.name.split(".")[0]
                for node in ast.walk(tree)
                if isinstance(node, ast.Import)
                for alias in node.names
            } | {
                (node.module or "").split(".")[0]
                for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom)
            }
            assert not imported & {"trashsorter", "trashsorter_cli", "boto3", "botocore"}, name
        requirements = tar.extractfile(contract.REQUIREMENTS)
        assert requirements is not None
        pins = [x for x in requirements.read().decode().splitlines() if x and not x.startswith("#")]
        assert pins and all("==" in pin for pin in pins)


def test_entry_point_runs_as_the_container_runs_it(tmp_path: Path) -> None:
    root = tmp_path / "opt" / "ml"
    env, labels = lay_out_opt_ml(root)
    done = run_container(root, env)
    assert done.returncode == 0, done.stdout + done.stderr
    model_dir = root / "model"
    assert {"model.onnx", "split_model.onnx", "labels.txt", "metrics.json", "model.json"} <= {
        p.name for p in model_dir.iterdir()
    }
    metrics = json.loads((model_dir / "metrics.json").read_text())
    # refit by default: model.onnx trained again on train + validation, the metrics from the split run
    refit = metrics["refit"]
    assert refit["on"] == "train+validation" and refit["reported_metrics_from"] == "split run"
    assert refit["images"] == metrics["train_count"] + metrics["validation_count"]
    logged = contract.parse_metrics(done.stdout.splitlines())
    # MetricDefinitions turn the log into the final metrics, equal to metrics.json's
    assert logged["validation:accuracy"] == pytest.approx(metrics["validation_accuracy"], abs=1e-6)
    assert logged["train:accuracy"] == pytest.approx(metrics["train_accuracy"], abs=1e-6)
    assert logged["validation:loss"] == pytest.approx(metrics["validation_loss"], abs=1e-6)
    assert "champion:validation:accuracy" not in logged
    assert len([x for x in done.stdout.splitlines() if x.startswith("epoch ")]) == 2

    # package as SageMaker does, unpack where the device reads it, classify the validation photos
    archive = pack_model_dir(model_dir, tmp_path / "model.tar.gz")
    device_dir = tmp_path / "device"
    with tarfile.open(archive) as tar:
        tar.extractall(device_dir, filter="data")
    classifier = Classifier(device_dir)
    lst = (root / "input" / "data" / "validation_lst" / "validation.lst").read_text().splitlines()
    truth, predicted = [], []
    for line in lst:
        _, class_index, key = line.split("\t")
        truth.append(int(class_index))
        image = (root / "input" / "data" / "validation" / key).read_bytes()
        predicted.append(labels.index(classifier.predict(image)[0][0]))
    # the device answers exactly as the trainer evaluated the SHIPPED graph on those photos
    shipped = refit["shipped_validation_confusion_matrix"]
    assert report.confusion_matrix(truth, predicted, len(labels)) == shipped

    # report.html: one self-contained file, a thumbnail for every validation photo the split run got wrong
    page = (model_dir / "report.html").read_text()
    wrong = len(truth) - sum(metrics["confusion_matrix"][i][i] for i in range(len(labels)))
    assert "was refit on train+validation" in page
    misclassified_part, suspects_part = page.split("<h2>Suspected mislabels")
    assert misclassified_part.count("<figure>") == wrong
    assert misclassified_part.count("data:image/jpeg;base64,") == wrong
    # the photos whose label the model doubts, with thumbnails, and the run's memory and speed
    listed = json.loads((model_dir / "suspects.json").read_text())
    assert metrics["suspects"]["count"] == len(listed) and metrics["suspects"]["file"] == "suspects.json"
    assert suspects_part.count("<figure>") == min(len(listed), 24)
    assert all(s["key"] in suspects_part for s in listed[:24])
    assert "<h2>Memory and speed</h2>" in page and metrics["resources"]["peak_memory_mb"] > 0
    assert f"{metrics['validation_accuracy']:.4f}" in page and 'src="http' not in page
    low, high = report.wilson_interval(len(truth) - wrong, len(truth))
    assert f"95 % interval {low:.2f}-{high:.2f}" in page
    assert "No champion was evaluated" in page

    # the same job with this model as the champion: evaluated on the challenger's validation split
    second = tmp_path / "second" / "opt" / "ml"
    env2, _ = lay_out_opt_ml(second, champion=archive)
    again = run_container(second, env2)
    assert again.returncode == 0, again.stdout + again.stderr
    metrics2 = json.loads((second / "model" / "metrics.json").read_text())
    champion = metrics2["champion"]
    # a refit champion is scored with its split run's graph (its model.onnx learnt these validation photos)
    assert champion["graph"] == "split_model.onnx"
    assert champion["confusion_matrix"] == metrics["confusion_matrix"]  # same split-run graph, same split
    assert "No champion was evaluated" not in (second / "model" / "report.html").read_text()
    assert contract.parse_metrics(again.stdout.splitlines())["champion:validation:accuracy"] == (
        pytest.approx(metrics["validation_accuracy"], abs=1e-6)
    )


def test_a_bad_channel_fails_the_job_with_a_reason(tmp_path: Path) -> None:
    root = tmp_path / "opt" / "ml"
    env, _ = lay_out_opt_ml(root)
    env.pop("SM_CHANNEL_LABELS")
    (root / "input" / "data" / "labels" / "labels.txt").unlink()
    done = run_container(root, env)
    assert done.returncode == 1
    assert "labels" in (root / "output" / "failure").read_text()
