"""A training lock that heals: reconcile a run whose final "Training Job State Change" was lost.

A run ``in_progress`` (or ``starting``) for longer than its job's maximum runtime (``StoppingCondition``:
``MaxRuntimeInSeconds``, or ``MaxWaitTimeInSeconds`` for spot) plus :data:`MARGIN_SECONDS` cannot still be
training. :func:`reconcile_training` (called by every "Dataset Ready" and by the scheduled "Reconcile
Training" event, both in the start-training function) asks ``DescribeTrainingJob`` and:

* SageMaker says ``Completed`` / ``Failed`` / ``Stopped`` -> the state change is re-published on the stack
  bus as "Training Job Reconciled" (its detail is the state-change detail), which the package function
  handles exactly like the lost event (:func:`trashsorter.completion.handle_training_state_change`: gate,
  package, register, finish the run, release the lock, re-publish the pending dataset; idempotent, so a
  late original event is a ``duplicate``);
* SageMaker still says ``InProgress`` / ``Stopping`` past the limit + margin -> the job cannot be doing
  anything useful: ``StopTrainingJob`` (for ``InProgress``) and the run is failed with the reason
  (``ended_by=reconcile``); the job's own final "Stopped" event, when it comes, is a late event that
  changes nothing;
* SageMaker does not know the job (or says anything else) -> the run is failed with a reason
  (``ended_by=reconcile``), which releases the lock and re-publishes the pending dataset; a notice goes
  out.

A re-publication is not repeated within :data:`REPUBLISH_AFTER_SECONDS` (the package step's lease).

A start time in the future (a writer's wrong clock, or a tampered record) would keep a run "not overdue"
until that time; the check treats it as now and writes now over it (the original is kept on the run as
``start_time_in_future``), so the limit counts from the first check that saw it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from botocore.exceptions import ClientError

from trashsorter import aws, clock, lifecycle, runs
from trashsorter.clients import Clients
from trashsorter.errors import TransientError
from trashsorter.events import TrainingStateChange
from trashsorter.lifecycle import RUNNING_JOB_STATUSES, HealAction
from trashsorter.notify import notify
from trashsorter.observability import logger
from trashsorter.run_end import finish_run
from trashsorter.schema import EVENT_SOURCE, TRAINING_RECONCILED, RunStatus
from trashsorter.settings import TrainingSettings

MARGIN_SECONDS = 1800  # beyond the job's own limit: SageMaker's final event comes within minutes
REPUBLISH_AFTER_SECONDS = runs.CLAIM_LEASE_SECONDS
DEFAULT_MAX_RUNTIME_SECONDS = 24 * 3600  # SageMaker's default MaxRuntimeInSeconds


@dataclass(frozen=True)
class ReconcileOutcome:
    status: str  # free | running | republished | failed
    run_id: str = ""
    job_name: str = ""
    message: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def max_runtime_seconds(run: Mapping[str, Any]) -> int:
    """The longest the run's job may take, from the request it was started with."""
    try:
        request = json.loads(str(run.get("request") or "{}"))
    except json.JSONDecodeError:
        request = {}
    stopping = request.get("StoppingCondition") if isinstance(request, dict) else None
    if not isinstance(stopping, dict):
        return DEFAULT_MAX_RUNTIME_SECONDS
    limits = [int(stopping.get(name) or 0) for name in ("MaxRuntimeInSeconds", "MaxWaitTimeInSeconds")]
    return max(limits) or DEFAULT_MAX_RUNTIME_SECONDS


def overdue_seconds(run: Mapping[str, Any]) -> float:
    """How far past its maximum runtime + margin the run is (<= 0: it may still be training)."""
    since = str(run.get("started_at") or run.get("created_at") or "")
    return clock.age_seconds(since) - max_runtime_seconds(run) - MARGIN_SECONDS


def _unknown(_: ClientError) -> dict[str, Any]:
    return {}


def describe_job(job_name: str, sagemaker: Any) -> dict[str, Any]:
    """DescribeTrainingJob; ``{}`` when SageMaker does not know the job; TransientError otherwise."""
    return aws.call(
        lambda: dict(sagemaker.describe_training_job(TrainingJobName=job_name)),
        what=f"describe training job {job_name}",
        codes={"ValidationException": _unknown, "ResourceNotFound": _unknown},
    )


def start_not_in_future(run: Mapping[str, Any], table: str, ddb: Any) -> Mapping[str, Any]:
    """The run, its start time (``started_at``, else ``created_at``) no later than now (written back)."""
    field = "started_at" if run.get("started_at") else "created_at"
    since = str(run.get(field) or "")
    if clock.age_seconds(since) >= 0:
        return run
    now = clock.now_iso()
    runs.update_run(
        str(run["run_id"]), {field: now, "start_time_in_future": since}, table_name=table, ddb=ddb
    )
    logger.warning(
        "run start time in the future treated as now", extra={"run_id": run["run_id"], field: since}
    )
    return {**run, field: now}


def stop_job(job_name: str, sagemaker: Any) -> None:
    """StopTrainingJob; a job already stopping or ended (ValidationException) is fine."""
    aws.call(
        lambda: sagemaker.stop_training_job(TrainingJobName=job_name),
        what=f"stop training job {job_name}",
        codes={"ValidationException": _unknown, "ResourceNotFound": _unknown},
    )


def reconcile_training(settings: TrainingSettings, clients: Clients | None = None) -> ReconcileOutcome:
    """Heal the training lock if its holder is overdue (see the module docstring); idempotent."""
    clients = clients or Clients()
    ddb, table = clients.ddb, settings.table_name
    holder = str(runs.get_lock(table, ddb=ddb).get("holder") or "")
    run = runs.get_run(table, holder, ddb=ddb) if holder else None
    if run is None or not lifecycle.is_active(run):
        return ReconcileOutcome("free", holder)  # a stale lock of a final run: start_training releases it
    run_id, job_name = str(run["run_id"]), str(run.get("job_name") or "")
    run = start_not_in_future(run, table, ddb)
    overdue = overdue_seconds(run)
    if overdue <= 0:
        return ReconcileOutcome("running", run_id, job_name, f"within its limit ({-overdue:.0f} s left)")
    described = describe_job(job_name, clients.sagemaker)
    job_status = str(described.get("TrainingJobStatus") or "")
    extra = {"run_id": run_id, "job_name": job_name, "job_status": job_status, "overdue_s": round(overdue)}
    action = lifecycle.reconcile_action(overdue, job_status)
    if action == HealAction.REPUBLISH:
        if clock.age_seconds(str(run.get("reconcile_published_at") or "")) < REPUBLISH_AFTER_SECONDS:
            return ReconcileOutcome("republished", run_id, job_name, "already re-published; waiting")
        _publish(TrainingStateChange.from_detail(described), settings, clients)
        runs.update_run(run_id, {"reconcile_published_at": clock.now_iso()}, table_name=table, ddb=ddb)
        logger.warning("lost training state change re-published", extra=extra)
        return ReconcileOutcome("republished", run_id, job_name, f"SageMaker reports {job_status}")
    if action == HealAction.STOP_AND_FAIL:
        stop_job(job_name, clients.sagemaker)
    if job_status in RUNNING_JOB_STATUSES:
        reason = (
            f"SageMaker still reports {job_status} {round(overdue)} s after the job's limit "
            f"({max_runtime_seconds(run)} s) and the margin ({MARGIN_SECONDS} s); the job was stopped"
        )
        logger.warning("overdue run: job stopped and run failed", extra={**extra, "reason": reason})
        return fail_run(settings, run_id, job_name, reason, clients)
    reason = f"no final state change arrived {round(overdue)} s after the job's limit and SageMaker " + (
        f"reports {job_status}" if job_status else f"does not know job {job_name}"
    )
    logger.warning("overdue run failed by the reconciler", extra={**extra, "reason": reason})
    return fail_run(settings, run_id, job_name, reason, clients)


def fail_run(
    settings: TrainingSettings, run_id: str, job_name: str, reason: str, clients: Clients
) -> ReconcileOutcome:
    """Fail a run whose job cannot end by itself: releases the lock, re-publishes the pending dataset and
    sends a notice (idempotent: a run already final is left as it is)."""
    if finish_run(
        settings,
        run_id=run_id,
        status=RunStatus.FAILED,
        message=reason,
        ddb=clients.ddb,
        events=clients.events,
        ended_by=lifecycle.RECONCILE,
        attributes={"failure_reason": reason},
    ):
        notify(
            settings.topic_arn,
            f"Training failed: {job_name}",
            f"Training run {run_id} ({job_name}) was failed by the reconciler: {reason}",
            details={"job_name": job_name, "run_id": run_id, "reason": reason},
            sns=clients.sns,
        )
    return ReconcileOutcome("failed", run_id, job_name, reason)


def _publish(change: TrainingStateChange, settings: TrainingSettings, clients: Clients) -> None:
    entry = {
        "Source": EVENT_SOURCE,
        "DetailType": TRAINING_RECONCILED,
        "Detail": json.dumps(change.as_detail(), sort_keys=True, default=str),
        "EventBusName": settings.event_bus_name,
    }
    response = aws.call(
        lambda: clients.events.put_events(Entries=[entry]), what=f"publish {TRAINING_RECONCILED}"
    )
    if response.get("FailedEntryCount", 0):
        raise TransientError(f"{TRAINING_RECONCILED} refused by EventBridge: {response.get('Entries')}")
