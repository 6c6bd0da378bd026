"""Training finished: metrics, quality gate, packaging, model registry, deploy, notices.

Entry point: :func:`handle_training_state_change` (one "SageMaker Training Job State Change" event);
the gate is :mod:`trashsorter.gate`, the artifacts :mod:`trashsorter.artifacts`, the run writes
:mod:`trashsorter.runs`, deployment and rollback :mod:`trashsorter.deploy.orchestrate`.

Idempotency (a replayed event changes nothing; a crash half-way is safe to retry):

* the run carries ``handled_statuses`` (a string set); a status already in it -> ``duplicate`` at once;
* while a status is being handled the run carries ``package_claim_<status>`` (a lease of
  :data:`trashsorter.runs.CLAIM_LEASE_SECONDS`), so two concurrent deliveries do not both deploy;
* every step below is idempotent on its own, and the status is marked handled only after the last one:
  S3 puts of byte-identical, deterministic tarballs at fixed keys; a conditional registry put (a second
  attempt reads the first record and continues from its gate decision); promotion is a no-op for the
  champion; each deployment target writes ``MODEL#<id>/DEPLOY#<target>#initial`` and a target already
  recorded as requested is not called again (the Greengrass v2 component version is recorded *before*
  publishing and calls carry idempotency tokens); ``finish_run`` is idempotent; the baseline only grows.
  A crash after the notice and before the mark can send one notice twice (at-least-once notices).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from trashsorter import registry, runs, threshold
from trashsorter.artifacts import MAX_METRICS_BYTES, package_artifact
from trashsorter.clients import Clients
from trashsorter.dataset_store import retain_dataset
from trashsorter.ddb import get_item
from trashsorter.deploy import DeploymentResult
from trashsorter.deploy.orchestrate import (
    INITIAL_REQUEST,
    PackageOutcome,
    deploy_model,
    deploy_notes,
    summary,
)
from trashsorter.errors import PackagingError, TransientError
from trashsorter.events import TrainingStateChange
from trashsorter.gate import (
    ACCURACY_METRIC,
    GateDecision,
    champion_accuracy,
    dataset_support,
    evaluate_fair_gate,
    evaluate_gate,
    final_metrics,
    not_enough_data,
)
from trashsorter.job_check import verified_job
from trashsorter.labels import read_dataset_labels
from trashsorter.notify import notify
from trashsorter.observability import logger
from trashsorter.report_decision import write_decision
from trashsorter.schema import (
    JOB_PREFIX,
    ModelStatus,
    RunStatus,
    dataset_key,
    dataset_manifest_key,
)
from trashsorter.settings import PackageSettings

# SageMaker's final job statuses -> the run status they end in ("Completed" -> completed or failed packaging)
FAILED_JOB_STATUSES = {"Failed": RunStatus.FAILED, "Stopped": RunStatus.STOPPED}
# metrics.json parts not copied into the registry record: its size grows with the classes, not the photos
STORED_WITHOUT = ("history", "config", "phase_seconds", "validation_labels", "validation_answers")


# ----------------------------------------------------------------------------------------------- handler
def handle_training_state_change(
    change: TrainingStateChange, settings: PackageSettings, clients: Clients | None = None
) -> PackageOutcome:
    """Handle one "SageMaker Training Job State Change" (Completed / Failed / Stopped), idempotently."""
    clients = clients or Clients()
    job_name, job_status = change.job_name, change.status
    if not job_name.startswith(JOB_PREFIX) or job_status not in ("Completed", *FAILED_JOB_STATUSES):
        return PackageOutcome(
            job_name, job_status, "ignored", reason="not a trashsorter job in a final state"
        )
    ddb = clients.ddb
    run = runs.find_run_by_job(job_name, settings, ddb=ddb)
    if run is None:
        logger.warning("training job has no run record", extra={"job_name": job_name})
        return PackageOutcome(
            job_name, job_status, "ignored", reason=f"no trashsorter run for job {job_name}"
        )
    run_id = str(run["run_id"])
    if job_status in (run.get("handled_statuses") or []):
        return _duplicate(job_name, job_status, run)
    check = verified_job(change, clients.sagemaker)  # from here on: the job as SageMaker describes it
    if check.refused:
        return _refused(change, run, check.refused, settings, ddb)
    change = check.job
    if runs.is_final(run) and str(run.get("ended_by") or "") != job_status:
        return _ignored_final(change, run, settings, ddb)
    if not runs.claim(run_id, job_status, table_name=settings.table_name, ddb=ddb):
        fresh = runs.find_run_by_job(job_name, settings, ddb=ddb) or run
        if job_status in (fresh.get("handled_statuses") or []):
            return _duplicate(job_name, job_status, fresh)
        raise TransientError(f"{job_name} {job_status} is being handled by another delivery; retry later")
    if job_status in FAILED_JOB_STATUSES:
        return _handle_failed(change, run, settings, clients)
    return _handle_completed(change, run, settings, clients)


def _duplicate(job_name: str, job_status: str, run: Mapping[str, Any]) -> PackageOutcome:
    logger.info("training state change already handled", extra={"job_name": job_name, "status": job_status})
    return PackageOutcome(
        job_name,
        job_status,
        "duplicate",
        run_id=str(run.get("run_id", "")),
        model_id=str(run.get("model_id", "")),
        reason=f"{job_status} already handled ({run.get('package_outcome', '')})",
    )


def _refused(
    change: TrainingStateChange, run: Mapping[str, Any], reason: str, settings: PackageSettings, ddb: Any
) -> PackageOutcome:
    """An event SageMaker contradicts (forged or stale): recorded on the run, nothing else changes."""
    run_id = str(run["run_id"])
    runs.record_ignored_event(
        run_id,
        f"refused:{change.status}",
        reason,
        table_name=settings.table_name,
        ddb=ddb,
        note="event refused: it disagrees with DescribeTrainingJob",
    )
    return PackageOutcome(change.job_name, change.status, "refused", run_id=run_id, reason=reason)


def _ignored_final(
    change: TrainingStateChange, run: Mapping[str, Any], settings: PackageSettings, ddb: Any
) -> PackageOutcome:
    """A state change for a run another event already ended: recorded as ignored, no notice, no rewrite."""
    run_id = str(run["run_id"])
    reason = f"run {run_id} is already {run.get('status')}; a late {change.status} event changes nothing"
    runs.record_ignored_event(run_id, change.status, reason, table_name=settings.table_name, ddb=ddb)
    return PackageOutcome(change.job_name, change.status, "ignored", run_id=run_id, reason=reason)


def _handle_failed(
    change: TrainingStateChange, run: Mapping[str, Any], settings: PackageSettings, clients: Clients
) -> PackageOutcome:
    job_name, job_status = change.job_name, change.status
    run_id = str(run["run_id"])
    ddb = clients.ddb
    reason = change.failure_reason  # SageMaker's (the change is DescribeTrainingJob's)
    if not reason:
        reason = "stopped on request" if job_status == "Stopped" else "SageMaker reported no failure reason"
    status = FAILED_JOB_STATUSES[job_status]
    metrics = final_metrics(change.final_metrics)
    if not runs.finish_run(
        settings,
        run_id=run_id,
        status=status,
        message=reason,
        metrics=metrics,
        ddb=ddb,
        events=clients.events,
        ended_by=job_status,
    ):  # another event ended the run between our read and now
        return _ignored_final(change, runs.get_run(settings, run_id, ddb=ddb) or run, settings, ddb)
    outcome = "failed" if status == RunStatus.FAILED else "stopped"
    notify(
        settings.topic_arn,
        f"Training {outcome}: {job_name}",
        f"Training job {job_name} (run {run_id}) {outcome}: {reason}",
        details={"job_name": job_name, "run_id": run_id, "status": job_status, "reason": reason},
        sns=clients.sns,
    )
    runs.update_run(
        run_id,
        {"failure_reason": reason, "package_outcome": outcome},
        table_name=settings.table_name,
        ddb=ddb,
        handled=job_status,
    )
    return PackageOutcome(job_name, job_status, outcome, run_id=run_id, reason=reason, metrics=metrics)


def _handle_completed(
    change: TrainingStateChange, run: Mapping[str, Any], settings: PackageSettings, clients: Clients
) -> PackageOutcome:
    job_name = change.job_name
    run_id = str(run["run_id"])
    table = settings.table_name
    ddb = clients.ddb
    metrics = final_metrics(change.final_metrics)
    source_uri = change.artifact_uri
    dataset_id = str(run.get("dataset_id") or "")
    dataset = get_item(dataset_key(dataset_id), table_name=table, ddb=ddb) if dataset_id else None
    manifest_uri = str(
        (dataset or {}).get("manifest_uri")
        or f"s3://{settings.images_bucket}/{dataset_manifest_key(dataset_id)}"
    )

    model = registry.get_model(job_name, table_name=table, ddb=ddb)
    if model is None:
        model = _register(
            job_name=job_name,
            run=run,
            dataset_id=dataset_id,
            dataset=dataset,
            manifest_uri=manifest_uri,
            source_uri=source_uri,
            metrics=metrics,
            settings=settings,
            clients=clients,
        )
    if dataset_id:  # every retry: the registered model's dataset objects must outlive the lifecycle rule
        retain_dataset(settings.images_bucket, dataset_id, s3=clients.s3)
    metrics = {k: float(v) for k, v in (model.get("metrics") or {}).items()}
    artifacts = {str(k): str(v) for k, v in (model.get("packaged_artifact_uris") or {}).items()}
    results: list[DeploymentResult] = []
    accuracy = metrics.get(ACCURACY_METRIC)
    acc_text = f"{accuracy:.4f}" if accuracy is not None else "n/a"
    details: dict[str, Any] = {
        "job_name": job_name,
        "run_id": run_id,
        "model_id": job_name,
        "dataset_id": dataset_id,
        "metrics": metrics,
        "artifacts": artifacts,
    }
    report_uri = str(model.get("report_uri") or "")
    if report_uri:
        details["report"] = report_uri
    if model.get("packaging_error"):
        outcome, reason = "failed", str(model["packaging_error"])
        run_status, run_message = RunStatus.FAILED, f"packaging failed: {reason}"
        subject = f"Model {job_name} failed packaging"
        message = f"Training job {job_name} completed but its artifact could not be packaged: {reason}"
    elif model.get("status") == ModelStatus.REJECTED:
        outcome, reason = "rejected", str(model.get("gate_reason", ""))
        run_status, run_message = RunStatus.COMPLETED, f"model rejected by the quality gate: {reason}"
        subject = f"Model {job_name} gated out (accuracy {acc_text})"
        message = f"Model {job_name} was not deployed: {reason}"
    else:
        if model.get("status") == ModelStatus.CANDIDATE:
            model = registry.promote(job_name, table_name=table, ddb=ddb)
        if model.get("status") == ModelStatus.CHAMPION:
            results = deploy_model(model, settings, request_id=INITIAL_REQUEST, clients=clients)
            registry.update_model(job_name, {"deployments": summary(results)}, table_name=table, ddb=ddb)
        deployed = any(r.status == "deployed" for r in results)
        failed = [r for r in results if r.status == "failed"]
        outcome = "deployed" if deployed and not failed else "registered"
        reason = deploy_notes(results) or f"model is {model.get('status')}"
        run_status = RunStatus.COMPLETED
        run_message = f"model {job_name} is {model.get('status')}; {reason}"
        if failed:
            subject = f"Model {job_name} champion, deployment FAILED"
            message = (
                f"Model {job_name} (accuracy {acc_text}) passed the gate but deployment failed: {reason}"
            )
        elif deployed:
            subject = f"Model {job_name} deployed (accuracy {acc_text})"
            message = f"Model {job_name} (accuracy {acc_text}) is the new champion and was deployed: {reason}"
        else:
            subject = f"Model {job_name} registered (accuracy {acc_text})"
            message = f"Model {job_name} (accuracy {acc_text}) is {model.get('status')}: {reason}"
        details["gate"] = model.get("gate_reason", "")
    details["deployments"] = summary(results)
    if dataset_id:  # before finish_run: a pending trigger is re-evaluated against the new baseline
        threshold.advance_baseline(dataset_id, table_name=table, ddb=ddb)
    if not runs.finish_run(
        settings,
        run_id=run_id,
        status=run_status,
        message=run_message,
        metrics=metrics,
        ddb=ddb,
        events=clients.events,
        ended_by="Completed",
    ):  # another event ended the run between our read and now
        return _ignored_final(change, runs.get_run(settings, run_id, ddb=ddb) or run, settings, ddb)
    if report_uri:  # "deployed", "registered" and "gated out" notices name the report
        if outcome != "failed":  # the page says first whether the model was deployed, and why
            write_decision(report_uri, outcome, str(model.get("gate_reason") or ""), reason, s3=clients.s3)
        message = f"{message}\nReport: {report_uri}"
    notify(settings.topic_arn, subject, message, details=details, sns=clients.sns)
    runs.update_run(
        run_id,
        {
            "model_id": job_name,
            "package_outcome": outcome,
            "package_reason": reason,
            "metrics": metrics,
            "deployments": summary(results),
            "deployment_ids": [r.deployment_id for r in results if r.deployment_id],
        },
        table_name=table,
        ddb=ddb,
        handled="Completed",
    )
    logger.info("training completion handled", extra={"job_name": job_name, "outcome": outcome})
    return PackageOutcome(
        job_name,
        "Completed",
        outcome,
        run_id=run_id,
        model_id=job_name,
        reason=reason,
        metrics=metrics,
        artifacts=artifacts,
        deployments=summary(results),
    )


def _register(
    *,
    job_name: str,
    run: Mapping[str, Any],
    dataset_id: str,
    dataset: Mapping[str, Any] | None,
    manifest_uri: str,
    source_uri: str,
    metrics: dict[str, float],
    settings: PackageSettings,
    clients: Clients,
) -> dict[str, Any]:
    """Package, gate and register a finished job (first attempt only; retries read the record)."""
    table = settings.table_name
    ddb, s3 = clients.ddb, clients.s3
    labels = read_dataset_labels(settings.images_bucket, dataset_id, s3=s3) if dataset_id else []
    if not labels and dataset:
        labels = [str(label) for label in dataset.get("labels") or []]
    common: dict[str, Any] = {
        "table_name": table,
        "model_id": job_name,
        "job_name": job_name,
        "run_id": str(run["run_id"]),
        "dataset_id": dataset_id,
        "dataset_manifest_uri": manifest_uri,
        "source_artifact_uri": source_uri,
        "ddb": ddb,
    }
    try:
        packaged = package_artifact(
            job_name=job_name, source_uri=source_uri, labels=labels, settings=settings, s3=s3
        )
    except PackagingError as exc:
        logger.warning("packaging failed", extra={"job_name": job_name, "error": str(exc)})
        return registry.register_model(
            **common,
            metrics=metrics,
            packaged_artifact_uris={},
            model_format="unknown",
            gate_passed=False,
            gate_reason=f"packaging failed: {exc}",
            status=ModelStatus.REJECTED,
            extra={"packaging_error": str(exc)},
        )
    champion = registry.get_champion(table_name=table, ddb=ddb)
    if packaged.evaluation and (packaged.evaluation.get("champion") or not champion):
        # the project's trainer evaluated the champion on this job's own validation split: the fair gate
        decision = evaluate_fair_gate(
            packaged.evaluation,
            min_accuracy=settings.min_validation_accuracy,
            tolerance=settings.champion_tolerance,
            max_recall_drop=settings.max_recall_drop,
            min_class_recall=settings.min_class_recall,
            champion_id=str((champion or {}).get("model_id", "")),
        )
    elif cannot_sort := not_enough_data(dataset_support(dataset)):  # built-in: the snapshot's own counts
        decision = GateDecision(False, cannot_sort)
    else:  # the built-in algorithm (or a champion the job could not evaluate): today's gate
        decision = evaluate_gate(
            metrics.get(ACCURACY_METRIC),
            champion_accuracy(champion, job_name),
            min_accuracy=settings.min_validation_accuracy,
            tolerance=settings.champion_tolerance,
            champion_id=str((champion or {}).get("model_id", "")),
        )
    extra: dict[str, Any] = {
        "labels": list(packaged.labels),
        "artifact_members": list(packaged.members),
        "artifact_sha256": packaged.sha256,
        "champion_at_gate": (champion or {}).get("model_id"),
    }
    if packaged.report_uri:
        extra["report_uri"] = packaged.report_uri
    if packaged.proof:  # what trashsorter.model_proof ran before anything was uploaded
        extra["proof"] = packaged.proof
    if packaged.evaluation:
        small = {k: v for k, v in packaged.evaluation.items() if k not in STORED_WITHOUT}
        if isinstance(small.get("champion"), Mapping):  # per-photo answers: the gate's, not the record's
            small["champion"] = {k: v for k, v in small["champion"].items() if k not in STORED_WITHOUT}
        if len(json.dumps(small, default=str)) <= MAX_METRICS_BYTES:
            extra["evaluation"] = small
    return registry.register_model(
        **common,
        metrics=metrics,
        packaged_artifact_uris=packaged.artifacts,
        model_format=packaged.model_format,
        gate_passed=decision.passed,
        gate_reason=decision.reason,
        status=ModelStatus.CANDIDATE if decision.passed else ModelStatus.REJECTED,
        extra=extra,
    )
