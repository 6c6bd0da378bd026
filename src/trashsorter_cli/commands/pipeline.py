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

from botocore.exceptions import BotoCoreError, ClientError

from trashsorter import clock, lifecycle, registry, runs, threshold
from trashsorter.catalogue import Catalogue
from trashsorter.errors import Rejection
from trashsorter.gate import ACCURACY_METRIC as ACCURACY
from trashsorter.ingest import check_image
from trashsorter.schema import ImageStatus, image_gsi
from trashsorter.settings import CommonSettings, IngestSettings, PackageSettings
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
    """The run's progress in words: ``epoch n/N``, or ``features n/N images`` during the feature pass."""
    if "epoch" in progress and "epochs" in progress:
        return f"epoch {progress['epoch']}/{progress['epochs']}"
    if progress.get("phase") == "features" and "done" in progress and "total" in progress:
        return f"features {progress['done']}/{progress['total']} images"
    return ""


def _progress_fraction(progress: dict[str, Any]) -> tuple[float, float] | None:
    """(completed, total) for the progress bar, from the epoch or the feature-pass count."""
    if "epoch" in progress and "epochs" in progress:
        return float(progress["epoch"]), float(progress["epochs"])
    if progress.get("phase") == "features" and "done" in progress and "total" in progress:
        return float(progress["done"]), float(progress["total"])
    return None


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
                "note": str(d.get("note", "") or ""),
                "devices": {  # each core device's result (trashsorter.deploy.device_results)
                    thing: " ".join(filter(None, [str(r.get("status", "")), str(r.get("reason", "") or "")]))
                    for thing, r in sorted(dict(d.get("device_results") or {}).items())
                },
            }
            for d in registry.list_deployments(str(champion["model_id"]), table_name=target.table, ddb=ddb)
        ]
    lock = runs.get_lock(target.table, ddb=ddb)
    return {
        "target": target.describe(),
        "bucket": target.bucket,
        "rejected_other_folders": max(
            0,
            _count_status(ddb, target.table, ImageStatus.REJECTED)
            - sum(c["rejected"] for c in counts.values()),
        ),
        "ingest_queued": ingest_queued(target),
        "training_queued": (
            {
                "behind_run": str(lock.get("holder", "")),
                "since": str(lock.get("pending_since", "")),
                "reason": str(lock.get("pending_reason", "")),
            }
            if lock.get("pending") and lock.get("holder")
            else None
        ),
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


def _count_status(ddb: Any, table: str, status: str) -> int:
    """Image records with ``status`` under any folder, allowed label or not (the status index, COUNT)."""
    total, start = 0, None
    pk = image_gsi(status, "", "")["gsi1pk"]
    while True:
        kwargs: dict[str, Any] = {
            "TableName": table,
            "IndexName": "gsi1",
            "KeyConditionExpression": "gsi1pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": pk}},
            "Select": "COUNT",
        }
        if start:
            kwargs["ExclusiveStartKey"] = start
        page = ddb.query(**kwargs)
        total += int(page.get("Count", 0))
        start = page.get("LastEvaluatedKey")
        if not start:
            return total


def ingest_queued(target: Target) -> int:
    """Messages waiting for or being processed by ingest (0 when the queue cannot be read)."""
    url = target.outputs.get("IngestQueueUrl")
    if not url:
        return 0
    try:
        attrs = target.client("sqs").get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
    except (ClientError, BotoCoreError):
        return 0
    return int(attrs.get("ApproximateNumberOfMessages", 0)) + int(
        attrs.get("ApproximateNumberOfMessagesNotVisible", 0)
    )


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
    if status["rejected_other_folders"]:
        rows.append(["(other folders)", 0, status["rejected_other_folders"], 0, 0, "-"])
    ui.table("Images", ["label", "accepted", "rejected", "duplicate", "conflict", "threshold"], rows)
    if status["ingest_queued"]:
        ui.line(f"ingest in progress: {status['ingest_queued']} messages queued (counts are still changing)")
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
    queued = status["training_queued"]
    if queued:
        ui.line(
            f"a training request ({queued['reason'] or 'dataset ready'}, since {queued['since']}) is queued "
            f"behind the active run {queued['behind_run']}; it starts when that run finishes"
        )
    champion = status["champion"]
    if champion:
        acc = champion["accuracy"]
        ui.line(
            f"Champion: {champion['model_id']} (validation accuracy {acc:.3f})" if acc is not None else ""
        )
        deployments_table(ui, status["deployments"])
    else:
        ui.line("Champion: none yet")


def deployments_table(ui: UI, deployments: Sequence[dict[str, Any]]) -> None:
    """One row per deployment; a skipped or failed one says why (its note), and each core device that
    reported its result says how it ended (and why, when it failed)."""
    ui.table(
        "Deployments",
        ["target", "status", "deployment", "recorded", "devices"],
        [
            [
                d["target"],
                f"{d['status']} ({d['note']})" if d.get("note") else d["status"],
                d["deployment_id"],
                d["recorded_at"],
                "; ".join(f"{thing}: {result}" for thing, result in dict(d.get("devices") or {}).items()),
            ]
            for d in deployments
        ],
    )


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


def run_to_follow(target: Target, *, ddb: Any = None) -> dict[str, Any] | None:
    """What ``train`` follows instead of asking for another run (None: nothing; ask for one).

    ``{"kind": "active", "run": ...}`` - a run holds the training lock and is not final;
    ``{"kind": "batch", ...}`` - photos are still being catalogued (the ingest queue holds messages) or the
    settle timer is armed for a crossing not yet published, or its "Dataset Ready" is out and the run not
    recorded yet: the batch's own run starts once ingest is quiet (docs/training.md, "Once per batch").
    """
    ddb = ddb or target.client("dynamodb")
    holder = str(runs.get_lock(target.table, ddb=ddb).get("holder") or "")
    active = runs.get_run(target.table, holder, ddb=ddb) if holder else None
    if active is not None and not lifecycle.is_final(active):
        summary = run_summary(active)
        return {
            "kind": "active",
            "run": summary,
            "message": f"run {summary['job_name']} is {summary['status']}",
        }
    if holder and active is None:  # the lock is taken before the run record: a run is being started
        return {"kind": "batch", "run": None, "message": f"training run {holder} is starting"}
    queued = ingest_queued(target)
    if queued:
        return {
            "kind": "batch",
            "run": None,
            "message": f"ingest is cataloguing the upload ({queued} queued)",
        }
    state = Catalogue(target.table, ddb=ddb).state()
    published = state["fired"] and state["fired_baseline"] == state["baseline_seq"]
    if state["settle_due"] and not published:
        return {
            "kind": "batch",
            "run": None,
            "message": "the batch's training starts once ingest has been quiet for the settle time",
        }
    if published and state["published"] and clock.age_seconds(state["fired_at"]) < threshold.RECLAIM_AFTER_S:
        newest = runs.list_runs(target.table, limit=1, ddb=ddb)
        if not newest or str(newest[0].get("created_at", "")) < state["fired_at"]:
            # the batch's "Dataset Ready" is out and its run is not recorded yet
            return {"kind": "batch", "run": None, "message": "the batch's training run is starting"}
    return None


def await_batch(target: Target, ui: UI, *, timeout: float, poll: float = 1.0) -> dict[str, Any] | None:
    """Wait while a batch is being catalogued or settling; then what to follow (None: nothing started)."""
    deadline = time.monotonic() + timeout
    with ui.progress("waiting for the upload to settle", total=None) as bar:
        while time.monotonic() < deadline:
            follow = run_to_follow(target)
            if follow is None or follow["kind"] == "active":
                return follow
            bar.update(description=str(follow["message"]))
            time.sleep(poll)
    raise CliError(f"timed out after {timeout:.0f}s waiting for the upload to settle")


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
                fraction = _progress_fraction(progress)
                if fraction is not None:
                    text += f" {_epoch_text(progress)}"
                    bar.update(completed=fraction[0], total=fraction[1], description=text)
                else:
                    bar.update(description=text)
                if on_update is not None:
                    on_update(run)
                if lifecycle.is_done(run):
                    return run
            else:
                bar.update(description=_waiting_text(target, ddb, since))
            time.sleep(poll)
    where = f"run {run['job_name']} is {run['status']}" if run else "no run started"
    raise CliError(f"timed out after {timeout:.0f}s waiting for training ({where})")


def _waiting_text(target: Target, ddb: Any, since: str) -> str:
    """What the request waits for before its run shows: an earlier run holding the lock, or its own start.

    The lock is taken before the run record is written, so a lock taken after this request was sent is the
    request's own run starting, not an earlier run it is queued behind.
    """
    lock = runs.get_lock(target.table, ddb=ddb)
    holder = str(lock.get("holder", ""))
    if not holder:
        return "waiting for the training run to start"
    active = runs.get_run(target.table, holder, ddb=ddb) or {}
    if str(lock.get("acquired_at", "")) >= since[:19]:
        return f"starting training run {active.get('job_name') or holder}"
    progress = _epoch_text(dict(active.get("progress") or {}))
    return f"queued behind the active run {active.get('job_name') or holder}" + (
        f" ({progress})" if progress else ""
    )


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


def device_request(
    url: str, *, data: bytes | None = None, timeout: float = 30.0, token: str = ""
) -> dict[str, Any]:
    headers = {"Content-Type": "application/octet-stream"} if data is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"  # the device's control token, from the state file
    request = urllib.request.Request(  # noqa: S310 - the local device URL from the state file
        url, data=data, method="POST" if data is not None else "GET", headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            body = response.read()
    except urllib.error.HTTPError as exc:
        raise CliError(f"the local device answered {exc.code}: {_device_error(exc.read())}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise CliError(f"the local device at {url} is not answering: {exc}") from exc
    try:
        result = json.loads(body)
    except json.JSONDecodeError as exc:
        raise CliError(f"the local device returned something that is not JSON: {body[:100]!r}") from exc
    if not isinstance(result, dict):
        raise CliError("the local device returned an unexpected answer")
    return result


def _device_error(body: bytes) -> str:
    """The ``error`` of the device's JSON answer (with its ``code``), else the start of the raw answer."""
    try:
        answer = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        answer = None
    if isinstance(answer, dict) and answer.get("error"):
        code = f"{answer['code']}: " if answer.get("code") else ""
        return f"{code}{answer['error']}"
    return body.decode("utf-8", "replace")[:300]


def predict(target: Target, images: Sequence[Path]) -> list[dict[str, Any]]:
    """One entry per image, in order: ``{"image", "label", "confidence", "unsure", "model_id"}`` (``unsure``:
    the confidence is under the component's threshold) or ``{"image", "error"}``.

    Each file is first checked exactly as ingest checks an upload (:mod:`trashsorter.validation`, with the
    ingest function's limits), so a file ingest would refuse gets ingest's reason here; a failure of one
    file never stops the batch.
    """
    if not target.is_local:
        raise UsageError(
            f"prediction runs on the device: {target.describe()} deploys to DeepLens / Greengrass, "
            "where the camera classifies; `trashsorter predict` works with the local device only"
        )
    if not target.device_url:
        raise CliError("the local stack runs without a device (started with --no-device)")
    settings = target.settings(IngestSettings, "IngestFunction")
    url = f"{target.device_url.rstrip('/')}/predict"
    results: list[dict[str, Any]] = []
    for image in images:
        try:
            data = _checked_image(image, settings)
            answer = device_request(url, data=data, token=target.device_token)
            if "label" not in answer:
                raise CliError(str(answer.get("error") or answer.get("message") or "no model deployed"))
        except CliError as exc:
            results.append({"image": str(image), "error": str(exc)})
            continue
        results.append(
            {
                "image": str(image),
                "label": str(answer["label"]),
                "confidence": float(answer.get("confidence", 0.0)),
                "unsure": bool(answer.get("unsure", False)),
                "model_id": str(answer.get("model_id", "")),
            }
        )
    return results


def _checked_image(image: Path, settings: IngestSettings) -> bytes:
    """The file's bytes if ingest would accept them, else a CliError with ingest's reason."""
    try:
        data = image.read_bytes()
    except IsADirectoryError as exc:
        raise CliError("is a directory, not an image file") from exc
    except OSError as exc:
        raise CliError(f"cannot read it: {exc.strerror or exc}") from exc
    try:
        check_image(data, settings)
    except Rejection as exc:
        raise CliError(f"ingest would refuse it: {exc.code}: {exc.message}") from exc
    return data


def device_status(target: Target) -> dict[str, Any] | None:
    if not target.is_local or not target.device_url:
        return None
    try:
        return device_request(f"{target.device_url.rstrip('/')}/status", timeout=5)
    except CliError:
        return None
