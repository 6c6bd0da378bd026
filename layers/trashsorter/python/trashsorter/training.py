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
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from botocore.exceptions import ClientError

from trashsorter import aws, lifecycle, runs, script_mode
from trashsorter.catalogue import Catalogue
from trashsorter.clients import Clients
from trashsorter.clock import age_seconds
from trashsorter.dataset import DatasetPlan, check_trainable, plan_from_catalogue, save_dataset_record
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
from trashsorter.lifecycle import LockAction
from trashsorter.notify import notify
from trashsorter.observability import logger
from trashsorter.reconcile import reconcile_training
from trashsorter.run_end import finish_run
from trashsorter.schema import RunStatus
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
        aws.call(
            lambda: self.sagemaker.create_training_job(**launch.request),
            what=f"create training job {launch.job_name}",
            codes={"ResourceLimitExceeded": lambda exc: self._quota(launch, exc),
                   "ResourceInUse": lambda exc: self._in_use(launch, exc)},
            refused=lambda message: TrainingStartError(f"SageMaker refused {launch.job_name}: {message}"),
        )  # fmt: skip

    def _quota(self, launch: TrainingLaunch, exc: ClientError) -> None:
        instance = launch.request["ResourceConfig"]["InstanceType"]
        spot = bool(launch.request.get("EnableManagedSpotTraining"))
        message = str(exc.response.get("Error", {}).get("Message", ""))
        raise TrainingQuotaExceeded(quota_message(instance, self.region, message, spot=spot)) from exc

    def _in_use(self, launch: TrainingLaunch, exc: ClientError) -> None:
        if not self.exists(launch):  # else: created by an earlier, interrupted attempt of this very run
            message = str(exc.response.get("Error", {}).get("Message", ""))
            raise TrainingStartError(
                f"SageMaker refused {launch.job_name}: ResourceInUse: {message}"
            ) from exc

    def exists(self, launch: TrainingLaunch) -> bool:
        return aws.call(
            lambda: self.sagemaker.describe_training_job(TrainingJobName=launch.job_name) is not None,
            what=f"describe training job {launch.job_name}",
            codes={"ValidationException": _missing(launch), "ResourceNotFound": _missing(launch)},
        )


def _missing(launch: TrainingLaunch) -> Callable[[ClientError], bool]:
    """DescribeTrainingJob's "no such job" answer is False; any other refusal is transient."""

    def answer(exc: ClientError) -> bool:
        message = str(exc.response.get("Error", {}).get("Message", "")).lower()
        if any(m in message for m in ("not found", "could not find", "does not exist")):
            return False
        raise TransientError(f"DescribeTrainingJob {launch.job_name}: {exc}") from exc

    return answer


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
        finish_run(settings, run_id=launch.run_id, status=RunStatus.BLOCKED, message=message, ddb=ddb,
                   events=events, keep_pending=True)  # fmt: skip
        _notify(settings, sns, f"Training blocked: {settings.instance_type} quota", message, details)
        logger.warning("training blocked", extra={**details, "reason": message})
        return StartOutcome("blocked", launch.run_id, launch.job_name, launch.dataset_id, message)
    except TrainingStartError as exc:
        message = str(exc)
        finish_run(settings, run_id=launch.run_id, status=RunStatus.FAILED, message=message, ddb=ddb,
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
    catalogue = catalogue or Catalogue(settings.table_name, ddb=clients.ddb)
    healed = reconcile_training(settings, clients)  # an overdue holder whose final event was lost
    if healed.status in ("failed", "republished"):
        logger.warning("training lock reconciled", extra={"reconcile": healed.as_dict()})
    result, state = evaluate_current(settings, catalogue)  # every event, manual ones too
    if not result.met:
        if not (ready.reason == "manual" and ready.force):
            logger.info("training rule not met", extra={"reason": ready.reason, "why": result.reason})
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
    start = _Start(
        settings,
        clients,
        backend or make_backend(settings, clients),
        plan,
        ready.reason,
        int(state["accepted_seq"]),
    )
    for _ in range(MAX_LOCK_ROUNDS):
        outcome = start.round()
        if outcome is not None:
            return outcome
    raise ConcurrencyConflict(f"the training lock changed hands {MAX_LOCK_ROUNDS} times; retry")


@dataclass(frozen=True)
class _Start:
    """One start of ``plan``: each :meth:`round` reads the lock and acts on :func:`lifecycle.decide_lock`."""

    settings: TrainingSettings
    clients: Clients
    backend: TrainingBackend
    plan: DatasetPlan
    reason: str
    accepted_seq: int

    def round(self) -> StartOutcome | None:
        """An outcome, or None when the lock changed hands (read it again)."""
        ddb, table, dataset_id = self.clients.ddb, self.settings.table_name, self.plan.dataset_id
        lock = runs.get_lock(table, ddb=ddb)
        holder = str(lock.get("holder") or "")
        if not holder:
            return self.take()
        run = runs.get_run(table, holder, ddb=ddb)
        view = lifecycle.LockView(
            lock,
            run,
            lock_age=runs.lock_age_seconds(ddb, table, lock) if run is None else 0.0,
            run_age=age_seconds(str((run or {}).get("created_at", ""))),
        )
        action = lifecycle.decide_lock(
            view, dataset_id, start_timeout=START_TIMEOUT_SECONDS, resume_after=RESUME_AFTER_SECONDS
        )
        if action == LockAction.RETRY:
            if run is None:
                raise TransientError(f"run {holder} is writing the snapshot of {dataset_id}; retry")
            raise TransientError(f"run {holder} of dataset {dataset_id} is being started; retry")
        if action == LockAction.RELEASE_STALE:
            logger.warning("releasing a stale training lock", extra={"holder": holder})
            runs.release_lock(ddb, table, holder, keep_pending=bool(lock.get("pending")), reason="stale")
            return None
        if action == LockAction.RESUME:
            return _resume(dict(run or {}), self.settings, self.backend, self.clients)
        if action == LockAction.DUPLICATE:
            return StartOutcome(
                "duplicate",
                holder,
                str((run or {})["job_name"]),
                dataset_id,
                f"run {holder} is already training dataset {dataset_id}",
            )
        if not runs.mark_pending(ddb, table, holder, reason=self.reason, dataset_id=dataset_id):
            return None
        what = "is writing its snapshot" if run is None else "is active"
        return StartOutcome(
            "pending",
            holder,
            str((run or {}).get("job_name", "")),
            dataset_id,
            f"run {holder} {what}; dataset {dataset_id} will be re-checked when it ends",
        )

    def take(self) -> StartOutcome | None:
        """The lock is free: the dataset's earlier runs decide; then take it, write the snapshot and run."""
        settings, ddb, table, plan = self.settings, self.clients.ddb, self.settings.table_name, self.plan
        earlier = runs.runs_for_dataset(table, plan.dataset_id, ddb=ddb)
        done = [r for r in earlier if lifecycle.blocks_new_attempt(r)]
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
        try:
            request = build_training_request(
                settings, plan, job_name=job_name, run_id=run_id, **self.source()
            )
        except ConfigurationError as exc:
            details = {"dataset_id": plan.dataset_id, "job_name": job_name}
            _notify(settings, self.clients.sns, "Training not started: configuration", str(exc), details)
            return StartOutcome("failed", run_id, job_name, plan.dataset_id, str(exc))
        launch = TrainingLaunch(run_id, job_name, plan.dataset_id, settings.images_bucket, table, request)
        if not runs.acquire_lock(ddb, table, run_id, plan.dataset_id):
            return None
        try:
            reuse = reuse_window(settings.dataset_object_days, settings.longest_job_seconds)
            write_dataset(plan, s3=self.clients.s3, reuse_within=reuse)
            save_dataset_record(plan, accepted_seq=self.accepted_seq, table_name=table, ddb=ddb)
            runs.create_run(
                ddb,
                settings,
                launch,
                backend=self.backend.name,
                attempt=attempt,
                accepted_seq=self.accepted_seq,
            )
        except Exception:
            runs.release_lock(ddb, table, run_id, keep_pending=False)
            raise
        return _run_backend(launch, settings, self.backend, self.clients)

    def source(self) -> dict[str, str]:
        """The project's trainer (script mode): its uploaded sourcedir and the champion's artifact."""
        if self.settings.training_algorithm != script_mode.ALGORITHM:
            return {}
        uri, sha256 = script_mode.upload_source(self.clients.s3, self.settings.images_bucket)
        champion = script_mode.champion_artifact_uri(self.settings.table_name, ddb=self.clients.ddb)
        return {"source_uri": uri, "source_sha256": sha256, "champion_uri": champion}
