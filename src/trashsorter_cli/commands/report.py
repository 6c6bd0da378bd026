"""``trashsorter report [MODEL]``: the trainer's report.html of the champion (or MODEL), downloaded from
where the package step keeps it (``models/<id>/report.html`` in the DeepLens bucket, URI on the model
record) to ``.trashsorter/reports/<model>/report.html``; works against the local and a deployed stack.

Also the short summary ``train --wait`` and the demo end with: accuracy, the weakest class (per-class recall
of the model's evaluation) and the classes under the per-class bar: the gate's absolute floor MinClassRecall
when the stack sets one (> 0), else the stack's MinValidationAccuracy (the gate's other per-class guard,
MaxRecallDrop, is relative to the champion).
"""

from __future__ import annotations

import argparse
import webbrowser
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from trashsorter import registry
from trashsorter.artifacts import MAX_REPORT_BYTES, REPORT_FILE, parse_s3_uri
from trashsorter.errors import ConfigurationError
from trashsorter.gate import ACCURACY_METRIC, recognised
from trashsorter.settings import PackageSettings
from trashsorter_cli.local.server import STATE_DIR_NAME
from trashsorter_cli.targets import Target
from trashsorter_cli.ui import UI, CliError, shown
from trashsorter_trainer.report import wilson_interval


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("report", parents=[common], help="download (and open) a model's report.html")
    p.add_argument("model_id", nargs="?", metavar="MODEL", help="a registered model (default: the champion)")
    p.add_argument("--open", action="store_true", dest="open_browser", help="open it in the web browser")
    p.add_argument("--dest", type=Path, default=None, help=f"default {STATE_DIR_NAME}/reports")


def _model(target: Target, model_id: str | None, ddb: Any) -> dict[str, Any]:
    if model_id:
        model = registry.get_model(model_id, table_name=target.table, ddb=ddb)
        if model is None:
            raise CliError(f"no registered model {model_id}")
        return model
    champion = registry.get_champion(table_name=target.table, ddb=ddb)
    if champion is None:
        raise CliError("no champion model yet (train one first, or name a MODEL)")
    return champion


def recall_bar(target: Target) -> tuple[float, str] | None:
    """The bar a class's recall is held to and its parameter's name (see the module doc), as the package
    function runs with them, else the stack's parameters; None when neither can be read."""
    try:
        settings = target.settings(PackageSettings, "PackageFunction")
        values = {
            "MinClassRecall": float(settings.min_class_recall),
            "MinValidationAccuracy": float(settings.min_validation_accuracy),
        }
    except ConfigurationError:
        try:
            stacks = target.client("cloudformation").describe_stacks(StackName=target.stack_name)["Stacks"]
        except (ClientError, BotoCoreError):
            return None
        values = {
            str(p["ParameterKey"]): float(p["ParameterValue"])
            for p in (stacks[0].get("Parameters", []) if stacks else [])
            if p.get("ParameterKey") in ("MinClassRecall", "MinValidationAccuracy")
        }
    for name in ("MinClassRecall", "MinValidationAccuracy"):
        if values.get(name, 0.0) > 0:
            return values[name], name
    return None


def summary(model: dict[str, Any], bar: tuple[float, str] | None) -> dict[str, Any]:
    """Accuracy, the weakest class and the classes whose recall is under ``bar`` (from the evaluation the
    trainer wrote; the built-in algorithm has none: weakest None, below [])."""
    accuracy = (model.get("metrics") or {}).get(ACCURACY_METRIC)
    per_class = (model.get("evaluation") or {}).get("per_class") or {}
    recalls = {
        str(label): float(values["recall"])
        for label, values in per_class.items()
        if isinstance(values, dict) and values.get("recall") is not None
    }
    weakest = min(recalls.items(), key=lambda item: item[1]) if recalls else None
    return {
        "model_id": str(model.get("model_id", "")),
        "accuracy": float(accuracy) if accuracy is not None else None,
        "weakest": _weakest(weakest, per_class) if weakest else None,
        "recall_bar": bar[0] if bar else None,
        "recall_bar_parameter": bar[1] if bar else None,
        "below_bar": sorted(label for label, recall in recalls.items() if bar and recall < bar[0]),
        "report_uri": str(model.get("report_uri") or ""),
    }


def _weakest(weakest: tuple[str, float], per_class: dict[str, Any]) -> dict[str, Any]:
    """The weakest class's recall, with the number of validation photos it was measured on and its 95 %
    Wilson interval when the evaluation says how many (``support``): 0.70 of 20 photos is 0.48-0.85."""
    label, recall = weakest
    counted = recognised(per_class[label])
    if counted is None:
        return {"label": label, "recall": recall}
    right, photos = counted
    return {
        "label": label,
        "recall": recall,
        "photos": photos,
        "interval": list(wilson_interval(right, photos)),
    }


def summary_lines(facts: dict[str, Any]) -> list[str]:
    accuracy = facts["accuracy"]
    lines = [f"accuracy {accuracy:.3f}" if accuracy is not None else "accuracy n/a"]
    weakest = facts["weakest"]
    if weakest:
        measured = f"recall {weakest['recall']:.3f}"
        if "photos" in weakest:
            low, high = weakest["interval"]
            measured += f" on {weakest['photos']} photos, 95 % interval {low:.2f}-{high:.2f}"
        lines[0] += f"; weakest class {weakest['label']} ({measured})"
    if facts["below_bar"]:
        lines.append(
            f"recall below {facts['recall_bar']:.2f} ({facts['recall_bar_parameter']}): "
            f"{', '.join(facts['below_bar'])}"
        )
    return lines


def fetch_report(target: Target, model: dict[str, Any], dest_root: Path, *, s3: Any = None) -> Path:
    """The model's report.html -> ``dest_root/<model>/report.html`` (at most MAX_REPORT_BYTES)."""
    model_id = str(model.get("model_id", ""))
    uri = str(model.get("report_uri") or "")
    if not uri:
        raise CliError(
            f"model {model_id} has no report (the built-in image-classification algorithm writes none; "
            "the project's trainer writes report.html)"
        )
    bucket, key = parse_s3_uri(uri)
    body = (s3 or target.client("s3")).get_object(Bucket=bucket, Key=key)["Body"]
    data = body.read(MAX_REPORT_BYTES + 1)
    if len(data) > MAX_REPORT_BYTES:
        raise CliError(f"{uri} is larger than {MAX_REPORT_BYTES} bytes")
    dest = dest_root / Path(model_id).name / REPORT_FILE
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    return dest


def handle(args: argparse.Namespace, ui: UI, target: Target) -> int:
    model = _model(target, args.model_id, target.client("dynamodb"))
    dest_root = args.dest or Path.cwd() / STATE_DIR_NAME / "reports"
    path = fetch_report(target, model, dest_root)
    facts = {**summary(model, recall_bar(target)), "path": shown(path)}
    if ui.json_mode:
        ui.emit_json(facts)
    else:
        for line in summary_lines(facts):
            ui.line(f"model {facts['model_id']}: {line}" if line.startswith("accuracy") else line)
        ui.line(shown(path))
    if args.open_browser:
        webbrowser.open(path.resolve().as_uri())
    return 0


def wait_summary(target: Target, ui: UI, model_id: str, dest_root: Path | None = None) -> None:
    """What ``train --wait`` (and the demo) end with: accuracy, the weakest class, the report's path."""
    model = (
        registry.get_model(model_id, table_name=target.table, ddb=target.client("dynamodb"))
        if model_id
        else None
    )
    if model is None:
        return
    for line in summary_lines(summary(model, recall_bar(target))):
        ui.line(line)
    if model.get("report_uri"):
        path = fetch_report(target, model, dest_root or Path.cwd() / STATE_DIR_NAME / "reports")
        ui.line(f"report: {shown(path)}")
    else:
        ui.line("report: none (the built-in algorithm writes none)")
