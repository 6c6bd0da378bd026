"""``trashsorter demo`` / ``make demo``: the whole pipeline on the shipped TrashNet sample, offline.

Local stack on a free port (never 4566) -> upload the sample under the recipe's labels (mapping.json),
holding back a few photos per label (chosen by content hash, deterministic, all from the training side of
the hash-stable split, so the validation split is the one a full upload gets) -> ingest -> threshold ->
CPU training -> package -> deploy to the local device -> classify the held-back photos -> stop.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trashsorter import registry
from trashsorter.catalogue import Catalogue
from trashsorter.dataset import TRAIN, split_for, split_score
from trashsorter.gate import ACCURACY_METRIC, recognised
from trashsorter.settings import PackageSettings
from trashsorter_cli.commands import data, pipeline, report
from trashsorter_cli.local.runtime import LocalRuntime
from trashsorter_cli.local.template import REPO_ROOT, load_template
from trashsorter_cli.targets import Target, local_target
from trashsorter_cli.ui import UI, CliError, shown

SAMPLES = REPO_ROOT / "samples" / "trashnet"
ATTRIBUTION = (
    "Sample photos: TrashNet by Gary Thung and Mindy Yang (MIT licence), "
    "https://github.com/garythung/trashnet - see samples/trashnet/LICENSE"
)
HOLD_BACK_PER_LABEL = 3
# MinImagesPerLabel is set to the upload count of the smallest label, which is uploaded last: the rule
# is crossed by the very last photo, so the training snapshot holds every uploaded photo.
DEMO_OVERRIDES = {
    "MinNewImages": "20",
    # A demo on ~170 photos: the gate is lowered from the recipe's 0.8 so a small model still deploys.
    "MinValidationAccuracy": "0.6",
}


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def validation_fraction() -> float:
    """The stack's ValidationFraction as the demo's stack runs it (template.yaml's default)."""
    return float(load_template()["Parameters"]["ValidationFraction"]["Default"])


def choose_held_back(
    samples: Path,
    mapping: Mapping[str, Sequence[str]],
    per_label: int = HOLD_BACK_PER_LABEL,
    fraction: float | None = None,
) -> set[Path]:
    """The ``per_label`` photos of each label whose content hash lies deepest in the training side of the
    hash-stable split (:func:`trashsorter.dataset.split_for`): deterministic, and the validation split is
    exactly the one the whole sample gets (holding back validation photos would shrink it)."""
    fraction = validation_fraction() if fraction is None else fraction
    chosen: set[Path] = set()
    for folders in mapping.values():
        files = [p for folder in folders for p in sorted((samples / folder).glob("*")) if p.is_file()]
        hashes = {p: sha256_file(p) for p in files}
        train_side = [p for p in files if split_for(hashes[p], fraction) == TRAIN]
        chosen.update(sorted(train_side, key=lambda p: (-split_score(hashes[p]), hashes[p]))[:per_label])
    return chosen


def why_deployed(model: Mapping[str, Any], settings: PackageSettings) -> str:
    """One line when a class the model recognises poorly is below the accuracy bar and it deployed anyway:
    which bar the gate held it to and which per-class floor (none when MinClassRecall is 0)."""
    per_class = (model.get("evaluation") or {}).get("per_class") or {}
    recalls = {
        str(label): float(c["recall"]) for label, c in per_class.items() if c.get("recall") is not None
    }
    if not recalls:
        return ""
    label, recall = min(recalls.items(), key=lambda item: item[1])
    bar = float(settings.min_validation_accuracy)
    if recall >= bar:
        return ""
    counted = recognised(per_class[label])
    photos = f" ({counted[0]} of {counted[1]} photos)" if counted else ""
    accuracy = float((model.get("metrics") or {}).get(ACCURACY_METRIC, 0.0))
    floor = float(settings.min_class_recall)
    floor_text = (
        "no per-class floor applies (MinClassRecall is 0, off)"
        if floor <= 0
        else f"the per-class floor MinClassRecall is {floor:.2f}"
    )
    return (
        f"deployed although {label} recall is {recall:.3f}{photos}: the gate holds the accuracy to "
        f"MinValidationAccuracy {bar:.2f} (this model {accuracy:.3f}) and {floor_text}"
    )


def smallest_label_last(plan: data.UploadPlan) -> tuple[data.UploadPlan, int]:
    """Reorder the upload so the label with the fewest photos comes last; returns it and that count."""
    label_of = {key: key.split("/")[1] for _path, key in plan.files}
    counts: dict[str, int] = {}
    for label in label_of.values():
        counts[label] = counts.get(label, 0) + 1
    if not counts:
        raise CliError("nothing to upload: the samples folder has no photos")
    smallest = min(sorted(counts), key=lambda label: counts[label])
    plan.files.sort(key=lambda item: label_of[item[1]] == smallest)  # stable: others keep their order
    return plan, counts[smallest]


def wait_ingested(
    target: Target, ui: UI, expected: int, *, timeout: float, ddb: Any
) -> dict[str, dict[str, int]]:
    catalogue = Catalogue(target.table, ddb=ddb)
    deadline = time.monotonic() + timeout
    with ui.progress("ingest: validating and cataloguing", total=expected) as bar:
        while True:
            counts = catalogue.label_counts(target.labels)
            done = sum(
                c["accepted"] + c["rejected"] + c["duplicate"] + c["conflict"] for c in counts.values()
            )
            bar.update(completed=done, description=f"ingest: {done}/{expected} catalogued")
            if done >= expected:
                return counts
            if time.monotonic() > deadline:
                raise CliError(
                    f"ingest timed out: {done} of {expected} images catalogued after {timeout:.0f}s"
                )
            time.sleep(0.5)


def wait_device_model(target: Target, model_id: str, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = pipeline.device_status(target) or {}
        if model_id in json.dumps(status):
            return
        time.sleep(0.5)
    raise CliError(f"the local device did not load model {model_id} within {timeout:.0f}s")


def run_demo(
    ui: UI, *, samples: Path | None = None, timeout: float = 600.0, state_dir: Path | None = None
) -> int:
    samples = samples or SAMPLES
    state_dir = state_dir or Path.cwd() / ".trashsorter"
    mapping = data.load_mapping(samples / "mapping.json")
    started = time.monotonic()
    deadline = started + timeout
    ui.line(ATTRIBUTION)
    held_back = choose_held_back(samples, mapping)
    labels = [label for label in mapping if not label.startswith("_")]
    plan, minimum = smallest_label_last(
        data.plan_upload(samples, labels, mapping=mapping, hold_back=lambda p, _label: p in held_back)
    )
    overrides = {**DEMO_OVERRIDES, "MinImagesPerLabel": str(minimum)}
    ui.line(f"training rule for the demo: {minimum} accepted photos per label, 20 new")
    ui.line("starting the local stack (moto endpoint + functions + local device) ...")
    runtime = LocalRuntime(
        port=None,
        overrides=overrides,
        state_path=state_dir / "demo.json",
        log_file=state_dir / "demo.log",
        persist=False,  # the demo starts empty every time and never touches `local up`'s state
    )
    with runtime:
        assert runtime.state is not None
        target = local_target(runtime.state, check=False)
        ddb = target.client("dynamodb")
        ui.line(
            f"local endpoint {runtime.endpoint_url}, bucket {target.bucket} "
            f"(function logs: {shown(state_dir / 'demo.log')})"
        )
        since = datetime.now(UTC).isoformat()
        result = data.upload(target, plan, ui, s3=target.client("s3"))
        ui.line(f"uploaded {result['uploaded']} photos; held back {len(plan.held_back)} for the end")
        counts = wait_ingested(
            target, ui, result["uploaded"], timeout=max(10.0, deadline - time.monotonic()), ddb=ddb
        )
        ui.table(
            "Dataset",
            ["label", "accepted", "rejected", "duplicate", "conflict"],
            [
                [label, c["accepted"], c["rejected"], c["duplicate"], c["conflict"]]
                for label, c in counts.items()
            ],
        )
        ui.line("threshold crossed -> Dataset Ready -> training on the CPU (feature pass, then epochs) ...")
        run = pipeline.wait_for_run(
            target, ui, since=since, timeout=max(10.0, deadline - time.monotonic()), ddb=ddb
        )
        pipeline.check_run(run)
        status = pipeline.gather_status(target, ddb=ddb)
        champion = status["champion"]
        if not champion:
            raise CliError(f"run {run['job_name']} finished but no champion model is registered")
        metrics = ", ".join(f"{k} {v:.3f}" for k, v in sorted(champion["metrics"].items()))
        ui.line(f"model {champion['model_id']}: {metrics}")
        report.wait_summary(target, ui, str(champion["model_id"]), state_dir / "reports")
        model = registry.get_model(str(champion["model_id"]), table_name=target.table, ddb=ddb) or {}
        why = why_deployed(model, target.settings(PackageSettings, "PackageFunction"))
        if why:
            ui.line(why)
        pipeline.deployments_table(ui, status["deployments"])
        wait_device_model(target, champion["model_id"], timeout=max(5.0, deadline - time.monotonic()))
        labels_of = {p: label for p, label in plan.held_back}
        predictions = pipeline.predict(target, sorted(labels_of))
        rows = []
        correct = 0
        for item in predictions:
            truth = labels_of[Path(item["image"])]
            correct += int(item["label"] == truth)
            rows.append(
                [
                    Path(item["image"]).relative_to(samples).as_posix(),
                    truth,
                    item["label"],
                    f"{item['confidence']:.2f}",
                    "ok" if item["label"] == truth else "MISS",
                ]
            )
        ui.table(
            "Held-back photos on the local device", ["photo", "true", "predicted", "confidence", ""], rows
        )
        ui.line(f"{correct}/{len(predictions)} held-back photos classified correctly")
    ui.line(f"demo finished in {time.monotonic() - started:.0f}s; the local stack is stopped")
    if ui.json_mode:  # one document at the end (the steps above print nothing with --json)
        ui.emit_json(
            {
                "run": {k: run.get(k) for k in ("job_name", "status", "package_outcome", "model_id")},
                "champion": {k: champion.get(k) for k in ("model_id", "accuracy", "metrics")},
                "deployments": status["deployments"],
                "held_back": predictions,
                "held_back_correct": correct,
                "seconds": round(time.monotonic() - started, 1),
            }
        )
    return 0
