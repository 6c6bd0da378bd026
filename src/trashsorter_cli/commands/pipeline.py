"""``status``, ``train [--wait]``, ``predict`` and ``deploy --model``: the pipeline after ingest."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trashsorter import registry, runs, threshold
from trashsorter.catalogue import Catalogue
from trashsorter.gate import ACCURACY_METRIC as ACCURACY
from trashsorter.schema import FINAL_RUN_STATUSES
from trashsorter.settings import CommonSettings, PackageSettings
from trashsorter_cli.targets import Target
from trashsorter_cli.ui import UI, CliError, UsageError

GOOD_OUTCOMES = {"deployed", "registered"}


def _accuracy(model: dict[str, Any] | None) -> float | None:
    if not model:
        return None
    value = (model.get("metrics") or {}).get(ACCURACY)
    return float(value) if value is not None else None


def run_summary(run: dict[str, Any]) -> dict[str, Any]:
    progress = run.get("progress") or {}
    if isinstance(progress, str):
        try:
            progress = json.loads(progress)
        except json.JSONDecodeError:
            progress = {}
    return {
        "run_id": str(run.get("run_id", "")),
        "job_name": str(run.get("job_name", "")),
        "backend": str(run.get("backend", "")),
        "status": str(run.get("status", "")),
        "status_message": str(run.get("status_message", "") or run.get("failure_reason", "") or ""),
        "dataset_id": str(run.get("dataset_id", "")),
        "created_at": str(run.get("created_at", "")),
        "progress": progress if isinstance(progress, dict) else {},
        "metrics": {str(k): float(v) for k, v in (run.get("metrics") or {}).items()},
        "package_outcome": str(run.get("package_outcome", "") or ""),
        "package_reason": str(run.get("package_reason", "") or ""),
        "model_id": str(run.get("model_id", "") or ""),
    }


def _epoch_text(progress: dict[str, Any]) -> str:
    if "epoch" in progress and "epochs" in progress:
        return f"epoch {progress['epoch']}/{progress['epochs']}"
    return ""


def gather_status(target: Target, *, ddb: Any = None) -> dict[str, Any]:
    ddb = ddb or target.client("dynamodb")
    settings = target.settings(CommonSettings, "IngestFunction")
    catalogue = Catalogue(target.table, ddb=ddb)
    rule, state = threshold.evaluate_current(settings, catalogue)
    counts = catalogue.label_counts(settings.allowed_labels)
    recent_runs = [run_summary(r) for r in runs.list_runs(target.table, limit=10, ddb=ddb)]
    champion = registry.get_champion(table_name=target.table, ddb=ddb)
    deployments: list[dict[str, Any]] = []
    champion_out: dict[str, Any] | None = None
    if champion:
        champion_out = {
            "model_id": str(champion["model_id"]),
            "accuracy": _accuracy(champion),
            "metrics": {str(k): float(v) for k, v in (champion.get("metrics") or {}).items()},
            "dataset_id": str(champion.get("dataset_id", "")),
            "created_at": str(champion.get("created_at", "")),
            "artifact_uri": str(champion.get("source_artifact_uri", "")),
        }
        deployments = [
            {
                "target": str(d.get("target", "")),
                "status": str(d.get("status", "")),
                "deployment_id": str(d.get("deployment_id", "") or ""),
                "recorded_at": str(d.get("recorded_at", "")),
            }
            for d in registry.list_deployments(str(champion["model_id"]), table_name=target.table, ddb=ddb)
        ]
    return {
        "target": target.describe(),
        "bucket": target.bucket,
        "labels": {
            label: {**c, "needed": rule.missing.get(label, 0), "required": settings.min_images_per_label}
            for label, c in counts.items()
        },
        "threshold": {
            "met": rule.met,
            "reason": rule.reason,
            "min_images_per_label": settings.min_images_per_label,
            "min_new_images": settings.min_new_images,
            "new_images": rule.new_images,
            "fired": bool(state.get("fired")),
        },
        "runs": recent_runs,
        "champion": champion_out,
        "deployments": deployments,
    }


def render_status(ui: UI, status: dict[str, Any]) -> None:
    ui.line(f"{status['target']}  (bucket {status['bucket']})")
    rows = [
        [
            label,
            c["accepted"],
            c["rejected"],
            c["duplicate"],
            c["conflict"],
            f"{c['accepted']}/{c['required']}",
        ]
        for label, c in status["labels"].items()
    ]
    ui.table("Images", ["label", "accepted", "rejected", "duplicate", "conflict", "threshold"], rows)
    rule = status["threshold"]
    ui.line(
        f"Training rule: {'met' if rule['met'] else 'not met'} - {rule['reason']} "
        f"(new images since the last model: {rule['new_images']}/{rule['min_new_images']})"
    )
    run_rows = [
        [
            r["job_name"] or r["run_id"],
            r["status"],
            _epoch_text(r["progress"]),
            f"{r['metrics'][ACCURACY]:.3f}" if ACCURACY in r["metrics"] else "",
            r["package_outcome"],
            r["created_at"],
        ]
        for r in status["runs"]
    ]
    ui.table("Runs", ["job", "status", "progress", "accuracy", "outcome", "created"], run_rows)
    champion = status["champion"]
    if champion:
        acc = champion["accuracy"]
        ui.line(
            f"Champion: {champion['model_id']} (validation accuracy {acc:.3f})" if acc is not None else ""
        )
        ui.table(
            "Deployments",
            ["target", "status", "deployment", "recorded"],
            [[d["target"], d["status"], d["deployment_id"], d["recorded_at"]] for d in status["deployments"]],
        )
    else:
        ui.line("Champion: none yet")


# ------------------------------------------------------------------------------------------------ train


def trigger_training(target: Target, *, force: bool = False) -> dict[str, Any]:
    """The manual trigger (``threshold.trigger_manual``); TrainingRuleNotMet says what is missing.

    ``force`` sends ``"force": true``: training starts although the rule is not met."""
    settings = target.settings(CommonSettings, "IngestFunction")
    catalogue = Catalogue(target.table, ddb=target.client("dynamodb"))
    requested_at = datetime.now(UTC).isoformat()
    result = threshold.trigger_manual(
        settings, catalogue=catalogue, events=target.client("events"), force=force
    )
    return {
        "requested_at": requested_at,
        "counts": result.counts,
        "reason": result.reason,
        "forced": force and not result.met,
    }


def wait_for_run(
    target: Target,
    ui: UI,
    *,
    since: str,
    timeout: float = 1800.0,
    poll: float = 1.0,
    ddb: Any = None,
    on_update: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Follow the newest run created at/after ``since`` until it is finished AND packaged; returns it."""
    ddb = ddb or target.client("dynamodb")
    deadline = time.monotonic() + timeout
    run: dict[str, Any] | None = None
    with ui.progress("waiting for the training run", total=None) as bar:
        while time.monotonic() < deadline:
            candidates = [
                run_summary(r)
                for r in runs.list_runs(target.table, limit=5, ddb=ddb)
                if str(r.get("created_at", "")) >= since[:19]
            ]
            if candidates:
                run = candidates[0]
                progress = run["progress"]
                text = f"{run['job_name']}: {run['status']}"
                if _epoch_text(progress):
                    text += f" {_epoch_text(progress)}"
                    bar.update(
                        completed=float(progress["epoch"]), total=float(progress["epochs"]), description=text
                    )
                else:
                    bar.update(description=text)
                if on_update is not None:
                    on_update(run)
                if run["status"] in FINAL_RUN_STATUSES and (
                    run["package_outcome"] or run["status"] != "completed"
                ):
                    return run
            time.sleep(poll)
    where = f"run {run['job_name']} is {run['status']}" if run else "no run started"
    raise CliError(f"timed out after {timeout:.0f}s waiting for training ({where})")


def check_run(run: dict[str, Any]) -> None:
    """Raise (exit 1) when the run failed or its model was gated out."""
    if run["status"] != "completed":
        raise CliError(
            f"training run {run['job_name']} {run['status']}: {run['status_message'] or 'no reason'}"
        )
    if run["package_outcome"] not in GOOD_OUTCOMES:
        raise CliError(
            f"model {run['model_id'] or run['job_name']} {run['package_outcome']}: "
            f"{run['package_reason'] or run['status_message']}"
        )


# ------------------------------------------------------------------------------------------------ deploy


def redeploy(target: Target, model_id: str, *, force: bool = False) -> dict[str, Any]:
    from trashsorter.clients import Clients
    from trashsorter.deploy import orchestrate

    settings = target.settings(PackageSettings, "PackageFunction")
    outcome = orchestrate.redeploy(
        model_id, settings, force=force, clients=Clients(ddb=target.client("dynamodb"))
    )
    return outcome.as_dict()


# ------------------------------------------------------------------------------------------------ predict


def device_request(url: str, *, data: bytes | None = None, timeout: float = 30.0) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 - the local device URL from the state file
        url,
        data=data,
        method="POST" if data is not None else "GET",
        headers={"Content-Type": "application/octet-stream"} if data is not None else {},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            body = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:300]
        raise CliError(f"the local device answered {exc.code}: {detail}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise CliError(f"the local device at {url} is not answering: {exc}") from exc
    try:
        result = json.loads(body)
    except json.JSONDecodeError as exc:
        raise CliError(f"the local device returned something that is not JSON: {body[:100]!r}") from exc
    if not isinstance(result, dict):
        raise CliError("the local device returned an unexpected answer")
    return result


def predict(target: Target, images: Sequence[Path]) -> list[dict[str, Any]]:
    if not target.is_local:
        raise UsageError(
            f"prediction runs on the device: {target.describe()} deploys to DeepLens / Greengrass, "
            "where the camera classifies; `trashsorter predict` works with the local device only"
        )
    if not target.device_url:
        raise CliError("the local stack runs without a device (started with --no-device)")
    results: list[dict[str, Any]] = []
    for image in images:
        if not image.is_file():
            raise UsageError(f"{image} is not a file")
        answer = device_request(f"{target.device_url.rstrip('/')}/predict", data=image.read_bytes())
        if "label" not in answer:
            raise CliError(f"{image}: {answer.get('error') or answer.get('message') or 'no model deployed'}")
        results.append(
            {
                "image": str(image),
                "label": str(answer["label"]),
                "confidence": float(answer.get("confidence", 0.0)),
                "model_id": str(answer.get("model_id", "")),
            }
        )
    return results


def device_status(target: Target) -> dict[str, Any] | None:
    if not target.is_local or not target.device_url:
        return None
    try:
        return device_request(f"{target.device_url.rstrip('/')}/status", timeout=5)
    except CliError:
        return None
