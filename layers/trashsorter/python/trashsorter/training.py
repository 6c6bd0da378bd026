"""Start training: one "Dataset Ready" event -> at most one training run (single flight).

Flow of :func:`start_training`:

0. An overdue lock holder (its final state change lost) is reconciled first (:mod:`trashsorter.reconcile`).
1. Every event re-evaluates the training rule with the current counts. Not met -> ``not_ready``, unless
   the event is ``manual`` with an explicit ``"force": true`` (logged as a forced run).
2. The dataset snapshot is *planned* (pure, see :mod:`trashsorter.dataset`): its id is known before
   anything is written.
3. The lock item ``LOCK/TRAINING`` (attribute ``holder`` = run id) decides:

   * held by an invocation still writing its snapshot (no run record yet, lock younger than
     :data:`START_TIMEOUT_SECONDS`) -> retry later (same dataset) or ``pending`` (another dataset); a lock
     with no run record that is older than that, or held by a finished run, is stale and released;
   * held by a run of the same dataset -> ``duplicate`` (a run still ``starting`` for more than
     :data:`RESUME_AFTER_SECONDS` is resumed instead: the job is created if it does not exist yet);
   * held by a run of another dataset -> ``pending`` (``pending=true`` on the lock item; the run's
     :func:`finish_run` re-publishes "Dataset Ready" with reason ``pending``);
   * free -> the dataset's earlier runs decide: a completed or active run -> ``duplicate``; otherwise the
     lock is taken with a conditional write, the snapshot written, the run record ``RUN#<run_id>/RUN``
     and the pointer ``JOB#<job>/RUN`` put in one transaction, and the backend starts the job.

4. Backend outcomes: started -> ``in_progress``; ``ResourceLimitExceeded`` -> ``blocked`` (SNS notice
   naming the instance type, region and the quota to raise; lock released, trigger kept pending);
   ``ValidationException`` and other refusals -> ``failed`` (SNS notice, lock released); throttling and
   5xx after botocore's retries -> :class:`TransientError` (EventBridge retries; the retry resumes the
   same run, never a second job).

Run ids are ``run-<dataset_id>-<attempt>`` (attempt n+1 only after every earlier attempt failed, stopped
or was blocked); the request and job names are built by :mod:`trashsorter.training_request`, the run,
job and lock items written by :mod:`trashsorter.runs`.

Backend: :class:`SageMakerBackend`, on AWS and on the local stack alike (there the local endpoint runs the
job, see ``trashsorter_cli.local.sagemaker_jobs``); tests may pass another ``backend``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from trashsorter import aws, runs
from trashsorter.catalogue import Catalogue
from trashsorter.clients import Clients
from trashsorter.clock import age_seconds
from trashsorter.dataset import check_trainable, plan_from_catalogue, save_dataset_record
from trashsorter.dataset_store import reuse_window, write_dataset
from trashsorter.errors import (
    ConcurrencyConflict,
    ConfigurationError,
    TrainingQuotaExceeded,
    TrainingRuleNotMet,
    TrainingStartError,
    TransientError,
)
from trashsorter.events import DatasetReady
from trashsorter.notify import notify
from trashsorter.observability import logger
from trashsorter.reconcile import reconcile_training
from trashsorter.schema import ACTIVE_RUN_STATUSES, FINAL_RUN_STATUSES, RunStatus
from trashsorter.settings import TrainingSettings
from trashsorter.threshold import evaluate_current
from trashsorter.training_request import (
    TrainingLaunch,
    build_training_request,
    make_job_name,
    quota_message,
)

# The start-training function's Timeout in template.yaml (a test keeps them equal): a lock whose holder has
# no run record yet is being snapshotted by a live invocation until then, and is stale after it.
START_TIMEOUT_SECONDS = 900
RESUME_AFTER_SECONDS = 90  # a run "starting" for longer than this was abandoned by a failed invocation
MAX_LOCK_ROUNDS = 5


# ---------------------------------------------------------------- outcomes and backends


@dataclass(frozen=True)
class StartOutcome:
    status: str  # started | pending | duplicate | not_ready | blocked | failed
    run_id: str = ""
    job_name: str = ""
    dataset_id: str = ""
    message: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


class TrainingBackend(Protocol):
    """Starts a training job. Raises TrainingQuotaExceeded / TrainingStartError / TransientError."""

    name: str

    def start(self, launch: TrainingLaunch) -> None: ...

    def exists(self, launch: TrainingLaunch) -> bool:
        """Whether the job was already started (resuming an interrupted start)."""
        ...


class SageMakerBackend:
    """CreateTrainingJob on SageMaker (the built-in algorithm runs on AWS)."""

    name = "sagemaker"

    def __init__(self, sagemaker: Any = None, region: str = "") -> None:
        self.sagemaker = sagemaker or aws.client("sagemaker")
        self.region = region or getattr(getattr(self.sagemaker, "meta", None), "region_name", "") or "?"

    def start(self, launch: TrainingLaunch) -> None:
        try:
            self.sagemaker.create_training_job(**launch.request)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code, message = str(error.get("Code", "")), str(error.get("Message", ""))
            if code == "ResourceLimitExceeded":
                instance = launch.request["ResourceConfig"]["InstanceType"]
                spot = bool(launch.request.get("EnableManagedSpotTraining"))
                raise TrainingQuotaExceeded(quota_message(instance, self.region, message, spot=spot)) from exc
            if code == "ResourceInUse" and self.exists(launch):
                return  # created by an earlier, interrupted attempt of this very run
            if aws.is_transient(exc):
                raise TransientError(f"CreateTrainingJob {launch.job_name}: {code}: {message}") from exc
            raise TrainingStartError(f"SageMaker refused {launch.job_name}: {code}: {message}") from exc
        except BotoCoreError as exc:
            raise TransientError(f"CreateTrainingJob {launch.job_name}: {exc}") from exc

    def exists(self, launch: TrainingLaunch) -> bool:
        try:
            self.sagemaker.describe_training_job(TrainingJobName=launch.job_name)
            return True
        except ClientError as exc:
            message = str(exc.response.get("Error", {}).get("Message", "")).lower()
            missing = ("not found", "could not find", "does not exist")
            if aws.error_code(exc) in (
                "ValidationException",
                "ResourceNotFound",
            ) and any(m in message for m in missing):
                return False
            raise TransientError(f"DescribeTrainingJob {launch.job_name}: {exc}") from exc
        except BotoCoreError as exc:
            raise TransientError(f"DescribeTrainingJob {launch.job_name}: {exc}") from exc


def make_backend(settings: TrainingSettings, clients: Clients | None = None) -> TrainingBackend:
    """SageMaker's CreateTrainingJob, on AWS or on the local endpoint (``AWS_ENDPOINT_URL``)."""
    return SageMakerBackend((clients or Clients()).sagemaker, region=settings.aws_region)


# ---------------------------------------------------------------- start


def _launch_from_run(run: Mapping[str, Any], settings: TrainingSettings) -> TrainingLaunch:
    return TrainingLaunch(
        run_id=str(run["run_id"]),
        job_name=str(run["job_name"]),
        dataset_id=str(run["dataset_id"]),
        bucket=settings.images_bucket,
        table_name=settings.table_name,
        request=json.loads(str(run["request"])),
    )


def _notify(
    settings: TrainingSettings, sns: Any, subject: str, message: str, details: dict[str, Any]
) -> None:
    try:
        notify(settings.topic_arn, subject, message, details=details, sns=sns)
    except TransientError:
        logger.exception("notice not sent", extra={"subject": subject})


def _run_backend(
    launch: TrainingLaunch, settings: TrainingSettings, backend: TrainingBackend, clients: Clients
) -> StartOutcome:
    ddb, sns, events = clients.ddb, clients.sns, clients.events
    details = {"run_id": launch.run_id, "job_name": launch.job_name, "dataset_id": launch.dataset_id}
    try:
        backend.start(launch)
    except TrainingQuotaExceeded as exc:
        message = str(exc)
        runs.finish_run(settings, run_id=launch.run_id, status=RunStatus.BLOCKED, message=message, ddb=ddb,
                   events=events, keep_pending=True)  # fmt: skip
        _notify(settings, sns, f"Training blocked: {settings.instance_type} quota", message, details)
        logger.warning("training blocked", extra={**details, "reason": message})
        return StartOutcome("blocked", launch.run_id, launch.job_name, launch.dataset_id, message)
    except TrainingStartError as exc:
        message = str(exc)
        runs.finish_run(settings, run_id=launch.run_id, status=RunStatus.FAILED, message=message, ddb=ddb,
                   events=events)  # fmt: skip
        _notify(settings, sns, f"Training failed to start: {launch.job_name}", message, details)
        logger.error("training refused", extra={**details, "reason": message})
        return StartOutcome("failed", launch.run_id, launch.job_name, launch.dataset_id, message)
    runs.mark_started(ddb, settings.table_name, launch.run_id)
    message = f"training job {launch.job_name} started ({backend.name}) on dataset {launch.dataset_id}"
    _notify(settings, sns, f"Training started: {launch.job_name}", message, details)
    logger.info("training started", extra=details)
    return StartOutcome("started", launch.run_id, launch.job_name, launch.dataset_id, message)


def _resume(
    run: Mapping[str, Any], settings: TrainingSettings, backend: TrainingBackend, clients: Clients
) -> StartOutcome:
    """Finish the start of a run left ``starting`` by an interrupted invocation (never a second job)."""
    launch = _launch_from_run(run, settings)
    if backend.exists(launch):
        runs.mark_started(clients.ddb, settings.table_name, launch.run_id)
        return StartOutcome(
            "started", launch.run_id, launch.job_name, launch.dataset_id, "resumed: the job already existed"
        )
    return _run_backend(launch, settings, backend, clients)


def start_training(
    ready: DatasetReady,
    settings: TrainingSettings,
    clients: Clients | None = None,
    *,
    backend: TrainingBackend | None = None,
    catalogue: Catalogue | None = None,
) -> StartOutcome:
    """Handle one "Dataset Ready": at most one training run per stack, one per dataset.

    ``backend`` defaults to :func:`make_backend` of the settings.
    """
    clients = clients or Clients()
    ddb, s3, sns = clients.ddb, clients.s3, clients.sns
    table = settings.table_name
    reason = ready.reason
    catalogue = catalogue or Catalogue(table, ddb=ddb)
    healed = reconcile_training(settings, clients)  # an overdue holder whose final event was lost
    if healed.status in ("failed", "republished"):
        logger.warning("training lock reconciled", extra={"reconcile": healed.as_dict()})
    result, state = evaluate_current(settings, catalogue)  # every event, manual ones too
    accepted_seq = int(state["accepted_seq"])
    if not result.met:
        if not (reason == "manual" and ready.force):
            logger.info("training rule not met", extra={"reason": reason, "why": result.reason})
            return StartOutcome("not_ready", message=result.reason)
        logger.warning(
            "forced manual run: starting although the training rule is not met",
            extra={"why": result.reason, "requested_at": ready.requested_at},
        )
    plan = plan_from_catalogue(
        catalogue,
        labels=settings.allowed_labels,
        validation_fraction=settings.validation_fraction,
        bucket=settings.images_bucket,
    )
    try:
        check_trainable(plan)
    except TrainingRuleNotMet as exc:
        return StartOutcome("not_ready", dataset_id=plan.dataset_id, message=str(exc))
    backend = backend or make_backend(settings, clients)

    for _ in range(MAX_LOCK_ROUNDS):
        lock = runs.get_lock(table, ddb=ddb)
        holder = str(lock.get("holder") or "")
        if holder:
            holder_run = runs.get_run(table, holder, ddb=ddb)
            if holder_run is None and runs.lock_age_seconds(ddb, table, lock) < START_TIMEOUT_SECONDS:
                # taken by an invocation that is still writing its snapshot (the run record comes after)
                if lock.get("holder_dataset_id") == plan.dataset_id:
                    raise TransientError(f"run {holder} is writing the snapshot of {plan.dataset_id}; retry")
                if runs.mark_pending(ddb, table, holder, reason=reason, dataset_id=plan.dataset_id):
                    return StartOutcome(
                        "pending",
                        holder,
                        "",
                        plan.dataset_id,
                        f"run {holder} is writing its snapshot; dataset {plan.dataset_id} will be "
                        "re-checked when it ends",
                    )
                continue
            if holder_run is None or holder_run.get("status") in FINAL_RUN_STATUSES:
                logger.warning("releasing a stale training lock", extra={"holder": holder})
                runs.release_lock(ddb, table, holder, keep_pending=bool(lock.get("pending")), reason="stale")
                continue
            starting = holder_run.get("status") == RunStatus.STARTING
            same = holder_run.get("dataset_id") == plan.dataset_id
            if starting and same:
                if age_seconds(str(holder_run.get("created_at", ""))) < RESUME_AFTER_SECONDS:
                    raise TransientError(f"run {holder} of dataset {plan.dataset_id} is being started; retry")
                return _resume(holder_run, settings, backend, clients)
            if same:
                return StartOutcome(
                    "duplicate",
                    str(holder_run["run_id"]),
                    str(holder_run["job_name"]),
                    plan.dataset_id,
                    f"run {holder} is already training dataset {plan.dataset_id}",
                )
            if runs.mark_pending(ddb, table, holder, reason=reason, dataset_id=plan.dataset_id):
                return StartOutcome(
                    "pending",
                    holder,
                    str(holder_run.get("job_name", "")),
                    plan.dataset_id,
                    f"run {holder} is active; dataset {plan.dataset_id} will be re-checked when it ends",
                )
            continue

        earlier = runs.runs_for_dataset(table, plan.dataset_id, ddb=ddb)
        done = [r for r in earlier if r.get("status") in (RunStatus.COMPLETED, *ACTIVE_RUN_STATUSES)]
        if done:
            run = done[-1]
            return StartOutcome(
                "duplicate",
                str(run["run_id"]),
                str(run["job_name"]),
                plan.dataset_id,
                f"dataset {plan.dataset_id} already has run {run['run_id']} ({run['status']})",
            )
        attempt = len(earlier) + 1
        if attempt > runs.MAX_ATTEMPTS:
            return StartOutcome("failed", dataset_id=plan.dataset_id, message="too many failed attempts")
        run_id = runs.make_run_id(plan.dataset_id, attempt)
        job_name = make_job_name(plan.dataset_id, attempt, prefix=settings.job_name_prefix)
        source: dict[str, str] = {}
        if settings.training_algorithm == "trashsorter":
            from trashsorter import script_mode

            uri, sha256 = script_mode.upload_source(s3, settings.images_bucket)
            champion = script_mode.champion_artifact_uri(table, ddb=ddb)
            source = {"source_uri": uri, "source_sha256": sha256, "champion_uri": champion}
        try:
            request = build_training_request(settings, plan, job_name=job_name, run_id=run_id, **source)
        except ConfigurationError as exc:
            details = {"dataset_id": plan.dataset_id, "job_name": job_name}
            _notify(settings, sns, "Training not started: configuration", str(exc), details)
            return StartOutcome("failed", run_id, job_name, plan.dataset_id, str(exc))
        launch = TrainingLaunch(run_id, job_name, plan.dataset_id, settings.images_bucket, table, request)
        if not runs.acquire_lock(ddb, table, run_id, plan.dataset_id):
            continue
        try:
            reuse = reuse_window(settings.dataset_object_days, settings.longest_job_seconds)
            write_dataset(plan, s3=s3, reuse_within=reuse)
            save_dataset_record(plan, accepted_seq=accepted_seq, table_name=table, ddb=ddb)
            runs.create_run(
                ddb, settings, launch, backend=backend.name, attempt=attempt, accepted_seq=accepted_seq
            )
        except Exception:
            runs.release_lock(ddb, table, run_id, keep_pending=False)
            raise
        return _run_backend(launch, settings, backend, clients)
    raise ConcurrencyConflict(f"the training lock changed hands {MAX_LOCK_ROUNDS} times; retry")
