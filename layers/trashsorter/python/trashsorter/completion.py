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
* the run's final state (status, message, metrics, model, deployments, failure reason) is ONE write
  (:func:`trashsorter.run_end.finish_run`); after the notice, the receipt (:func:`trashsorter.runs.
  mark_handled`) sets ``package_outcome`` (what followers wait for, so a follower that sees it also has the
  notice) and marks the status handled; a crash between the two re-sends the notice (at-least-once).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trashsorter import lifecycle, registry, runs, threshold
from trashsorter.artifacts import MAX_METRICS_BYTES, PackagedModel, package_artifact
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
from trashsorter.gate import ACCURACY_METRIC, decide, final_metrics
from trashsorter.job_check import verified_job
from trashsorter.labels import read_dataset_labels
from trashsorter.notify import notify
from trashsorter.observability import logger
from trashsorter.report_decision import write_decision
from trashsorter.run_end import finish_run
from trashsorter.schema import (
    JOB_PREFIX,
    ModelStatus,
    RunStatus,
    dataset_key,
    dataset_manifest_key,
)
from trashsorter.settings import PackageSettings

FAILED_JOB_STATUSES = lifecycle.JOB_TO_RUN  # SageMaker's final job statuses other than Completed
# metrics.json parts not copied into the registry record: its size grows with the classes, not the photos
STORED_WITHOUT = ("history", "config", "phase_seconds", "validation_labels", "validation_answers")


# ----------------------------------------------------------------------------------------------- handler
def handle_training_state_change(
    change: TrainingStateChange, settings: PackageSettings, clients: Clients | None = None
) -> PackageOutcome:
    """Handle one "SageMaker Training Job State Change" (Completed / Failed / Stopped), idempotently."""
    clients = clients or Clients()
    job_name, job_status = change.job_name, change.status
    if not job_name.startswith(JOB_PREFIX) or job_status not in lifecycle.FINAL_JOB_STATUSES:
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
    if not lifecycle.may_end(run, job_status):
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
    reason = change.failure_reason  # SageMaker's (the change is DescribeTrainingJob's)
    if not reason:
        reason = "stopped on request" if job_status == "Stopped" else "SageMaker reported no failure reason"
    status = lifecycle.job_to_run_status(job_status)
    metrics = final_metrics(change.final_metrics)
    outcome = "failed" if status == RunStatus.FAILED else "stopped"
    ended = _finish(
        change,
        run,
        settings,
        clients,
        status=status,
        message=reason,
        metrics=metrics,
        attributes={"failure_reason": reason},
    )
    if ended is not None:
        return ended
    notify(
        settings.topic_arn,
        f"Training {outcome}: {job_name}",
        f"Training job {job_name} (run {run_id}) {outcome}: {reason}",
        details={"job_name": job_name, "run_id": run_id, "status": job_status, "reason": reason},
        sns=clients.sns,
    )
    runs.mark_handled(run_id, job_status, outcome=outcome, table_name=settings.table_name, ddb=clients.ddb)
    return PackageOutcome(job_name, job_status, outcome, run_id=run_id, reason=reason, metrics=metrics)


def _finish(
    change: TrainingStateChange,
    run: Mapping[str, Any],
    settings: PackageSettings,
    clients: Clients,
    **final: Any,
) -> PackageOutcome | None:
    """The run's final state in one write (lock released, follow-up re-published); an ``ignored`` outcome
    when another event ended the run between our read and now (the notice and the handled mark are
    written after this: a crash between them re-sends the notice, never loses it)."""
    run_id = str(run["run_id"])
    if finish_run(
        settings, run_id=run_id, ddb=clients.ddb, events=clients.events, ended_by=change.status, **final
    ):
        return None
    fresh = runs.get_run(settings, run_id, ddb=clients.ddb) or run
    return _ignored_final(change, fresh, settings, clients.ddb)


@dataclass(frozen=True)
class Completion:
    """What a completed job comes to (pure, from the registered model and its deployments)."""

    outcome: str  # deployed | registered | rejected | failed
    reason: str
    run_status: RunStatus
    run_message: str
    subject: str
    message: str


def summarize(job_name: str, model: Mapping[str, Any], results: list[DeploymentResult]) -> Completion:
    """The run's final state and the notice for a model after its gate and deployments (pure)."""
    accuracy = {k: float(v) for k, v in (model.get("metrics") or {}).items()}.get(ACCURACY_METRIC)
    acc = f"{accuracy:.4f}" if accuracy is not None else "n/a"
    status = model.get("status")
    if model.get("packaging_error"):
        reason = str(model["packaging_error"])
        return Completion(
            "failed",
            reason,
            lifecycle.job_to_run_status("Completed", packaged=False),
            f"packaging failed: {reason}",
            f"Model {job_name} failed packaging",
            f"Training job {job_name} completed but its artifact could not be packaged: {reason}",
        )
    if status == ModelStatus.REJECTED:
        reason = str(model.get("gate_reason", ""))
        return Completion(
            "rejected",
            reason,
            RunStatus.COMPLETED,
            f"model rejected by the quality gate: {reason}",
            f"Model {job_name} gated out (accuracy {acc})",
            f"Model {job_name} was not deployed: {reason}",
        )
    deployed = any(r.status == "deployed" for r in results)
    failed = any(r.status == "failed" for r in results)
    reason = deploy_notes(results) or f"model is {status}"
    if failed:
        subject = f"Model {job_name} champion, deployment FAILED"
        message = f"Model {job_name} (accuracy {acc}) passed the gate but deployment failed: {reason}"
    elif deployed:
        subject = f"Model {job_name} deployed (accuracy {acc})"
        message = f"Model {job_name} (accuracy {acc}) is the new champion and was deployed: {reason}"
    else:
        subject = f"Model {job_name} registered (accuracy {acc})"
        message = f"Model {job_name} (accuracy {acc}) is {status}: {reason}"
    outcome = "deployed" if deployed and not failed else "registered"
    return Completion(
        outcome, reason, RunStatus.COMPLETED, f"model {job_name} is {status}; {reason}", subject, message
    )


def _handle_completed(
    change: TrainingStateChange, run: Mapping[str, Any], settings: PackageSettings, clients: Clients
) -> PackageOutcome:
    job_name, run_id, table = change.job_name, str(run["run_id"]), settings.table_name
    dataset_id = str(run.get("dataset_id") or "")
    model = registry.get_model(job_name, table_name=table, ddb=clients.ddb)
    if model is None:
        model = _register(change, run, settings, clients)
    if dataset_id:  # every retry: the registered model's dataset objects must outlive the lifecycle rule
        retain_dataset(settings.images_bucket, dataset_id, s3=clients.s3)
    model, results = _deploy(model, settings, clients)
    done = summarize(job_name, model, results)
    metrics, artifacts = _metrics(model), _artifacts(model)
    deployments = summary(results)
    if dataset_id:  # before the run ends: a pending trigger is re-evaluated against the new baseline
        threshold.advance_baseline(dataset_id, table_name=table, ddb=clients.ddb)
    ended = _finish(
        change,
        run,
        settings,
        clients,
        status=done.run_status,
        message=done.run_message,
        metrics=metrics,
        attributes={
            "model_id": job_name,
            "package_reason": done.reason,
            "deployments": deployments,
            "deployment_ids": [r.deployment_id for r in results if r.deployment_id],
        },
    )
    if ended is not None:
        return ended
    report_uri = str(model.get("report_uri") or "")
    if report_uri and done.outcome != "failed":  # the page says first whether the model was deployed, and why
        gate_reason = str(model.get("gate_reason") or "")
        write_decision(report_uri, done.outcome, gate_reason, done.reason, s3=clients.s3)
    details = notice_details(run, model, done, deployments)
    notify(settings.topic_arn, done.subject, notice_text(done, report_uri), details=details, sns=clients.sns)
    runs.mark_handled(run_id, "Completed", outcome=done.outcome, table_name=table, ddb=clients.ddb)
    logger.info("training completion handled", extra={"job_name": job_name, "outcome": done.outcome})
    return PackageOutcome(
        job_name,
        "Completed",
        done.outcome,
        run_id=run_id,
        model_id=job_name,
        reason=done.reason,
        metrics=metrics,
        artifacts=artifacts,
        deployments=deployments,
    )


def _metrics(model: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in (model.get("metrics") or {}).items()}


def _artifacts(model: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in (model.get("packaged_artifact_uris") or {}).items()}


def notice_details(
    run: Mapping[str, Any], model: Mapping[str, Any], done: Completion, deployments: list[dict[str, Any]]
) -> dict[str, Any]:
    """The structured part of a completion notice (pure)."""
    job_name = str(model.get("model_id") or model.get("job_name") or "")
    details: dict[str, Any] = {
        "job_name": job_name,
        "run_id": str(run["run_id"]),
        "model_id": job_name,
        "dataset_id": str(run.get("dataset_id") or ""),
        "metrics": _metrics(model),
        "artifacts": _artifacts(model),
    }
    if model.get("report_uri"):
        details["report"] = str(model["report_uri"])
    if done.outcome in ("deployed", "registered"):
        details["gate"] = model.get("gate_reason", "")
    details["deployments"] = deployments
    return details


def notice_text(done: Completion, report_uri: str) -> str:
    """The notice's text: "deployed", "registered", "gated out" and "failed" notices name the report."""
    return f"{done.message}\nReport: {report_uri}" if report_uri else done.message


def _deploy(
    model: dict[str, Any], settings: PackageSettings, clients: Clients
) -> tuple[dict[str, Any], list[DeploymentResult]]:
    """A model that passed the gate: promoted, then deployed as the champion (idempotent per target)."""
    if model.get("packaging_error") or model.get("status") == ModelStatus.REJECTED:
        return model, []
    table, model_id = settings.table_name, str(model["model_id"])
    if model.get("status") == ModelStatus.CANDIDATE:
        model = registry.promote(model_id, table_name=table, ddb=clients.ddb)
    if model.get("status") != ModelStatus.CHAMPION:
        return model, []
    results = deploy_model(model, settings, request_id=INITIAL_REQUEST, clients=clients)
    registry.update_model(model_id, {"deployments": summary(results)}, table_name=table, ddb=clients.ddb)
    return model, results


def _register(
    change: TrainingStateChange, run: Mapping[str, Any], settings: PackageSettings, clients: Clients
) -> dict[str, Any]:
    """Package, gate and register a finished job (first attempt only; retries read the record)."""
    job_name, table = change.job_name, settings.table_name
    ddb, s3 = clients.ddb, clients.s3
    dataset_id = str(run.get("dataset_id") or "")
    dataset = get_item(dataset_key(dataset_id), table_name=table, ddb=ddb) if dataset_id else None
    manifest_uri = str(
        (dataset or {}).get("manifest_uri")
        or f"s3://{settings.images_bucket}/{dataset_manifest_key(dataset_id)}"
    )
    metrics = final_metrics(change.final_metrics)
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
        "source_artifact_uri": change.artifact_uri,
        "ddb": ddb,
        "metrics": metrics,
    }
    try:
        packaged = package_artifact(
            job_name=job_name, source_uri=change.artifact_uri, labels=labels, settings=settings, s3=s3
        )
    except PackagingError as exc:
        logger.warning("packaging failed", extra={"job_name": job_name, "error": str(exc)})
        return registry.register_model(
            **common,
            packaged_artifact_uris={},
            model_format="unknown",
            gate_passed=False,
            gate_reason=f"packaging failed: {exc}",
            status=ModelStatus.REJECTED,
            extra={"packaging_error": str(exc)},
        )
    champion = registry.get_champion(table_name=table, ddb=ddb)
    decision = decide(
        model_id=job_name,
        metrics=metrics,
        evaluation=packaged.evaluation,
        champion=champion,
        dataset=dataset,
        settings=settings,
    )
    return registry.register_model(
        **common,
        packaged_artifact_uris=packaged.artifacts,
        model_format=packaged.model_format,
        gate_passed=decision.passed,
        gate_reason=decision.reason,
        status=ModelStatus.CANDIDATE if decision.passed else ModelStatus.REJECTED,
        extra=_model_extra(packaged, champion),
    )


def _model_extra(packaged: PackagedModel, champion: Mapping[str, Any] | None) -> dict[str, Any]:
    """What the model record keeps of the packaged artifact (the evaluation only when it stays small)."""
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
    return extra
