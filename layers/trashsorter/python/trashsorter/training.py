"""Start training: one "Dataset Ready" event -> at most one training run (single flight).

Flow of :func:`start_training`:

1. ``threshold``/``pending`` events re-evaluate the training rule with the current counts (a manual event
   was checked by the trigger). Not met -> ``not_ready``.
2. The dataset snapshot is *planned* (pure, see :mod:`trashsorter.dataset`): its id is known before
   anything is written.
3. The lock item ``LOCK/TRAINING`` (attribute ``holder`` = run id) decides:

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
or was blocked), job names ``deeplens-ts-<dataset_id>-<UTC yyyymmddHHMMSS>[-a<attempt>]`` (unique per
account and region, as SageMaker requires; DeepLens requires the ``deeplens-`` prefix).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

from boto3.dynamodb.types import TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError

from trashsorter import aws, images
from trashsorter.catalogue import Catalogue, deserialize
from trashsorter.dataset import (
    TRAIN,
    VALIDATION,
    DatasetPlan,
    check_trainable,
    plan_from_catalogue,
    save_dataset_record,
    write_dataset,
)
from trashsorter.errors import (
    ConcurrencyConflict,
    ConfigurationError,
    NotFoundError,
    TrainingQuotaExceeded,
    TrainingRuleNotMet,
    TrainingStartError,
    TransientError,
)
from trashsorter.notify import notify
from trashsorter.observability import logger
from trashsorter.schema import (
    ACTIVE_RUN_STATUSES,
    JOB_PREFIX,
    LOCK_KEY,
    RunStatus,
    job_key,
    run_key,
)
from trashsorter.settings import CommonSettings, TrainingSettings
from trashsorter.threshold import RuleResult, evaluate_rule, publish_dataset_ready

FINAL_RUN_STATUSES = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.STOPPED, RunStatus.BLOCKED)
RESUME_AFTER_SECONDS = 90  # a run "starting" for longer than this was abandoned by a failed invocation
MAX_LOCK_ROUNDS = 5
MAX_ATTEMPTS = 20
RUNS_GSI_PK = "RUNS"
TRAINING_OUTPUT_PREFIX = "training-output/"
CHECKPOINTS_PREFIX = "checkpoints/"
JOB_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")

# The recipe's hyperparameters (AWS DeepLens trash sorter: ResNet-18 fine-tuning).
RECIPE_HYPERPARAMETERS: dict[str, str] = {
    "num_layers": "18",
    "use_pretrained_model": "1",
    "image_shape": "3,224,224",
    "epochs": "10",
    "learning_rate": "0.01",
    "top_k": "2",
    "resize": "224",
    "precision_dtype": "float32",
    "mini_batch_size": "32",
}
PROTECTED_HYPERPARAMETERS = ("num_classes", "num_training_samples")
IMAGE_CONTENT_TYPE = "application/x-image"
THROTTLING_CODES = frozenset(
    {"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded"}
)
SERVER_CODES = frozenset({"InternalFailure", "InternalServerError", "ServiceUnavailable", "InternalError"})

_SER = TypeSerializer()


# ---------------------------------------------------------------- outcomes and launches


@dataclass(frozen=True)
class StartOutcome:
    status: str  # started | pending | duplicate | not_ready | blocked | failed
    run_id: str = ""
    job_name: str = ""
    dataset_id: str = ""
    message: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class TrainingLaunch:
    """Everything a backend needs to start one run."""

    run_id: str
    job_name: str
    dataset_id: str
    bucket: str
    table_name: str
    request: dict[str, Any]  # the CreateTrainingJob request

    @property
    def hyperparameters(self) -> dict[str, str]:
        return dict(self.request["HyperParameters"])

    @property
    def manifest_uri(self) -> str:
        return f"s3://{self.bucket}/datasets/{self.dataset_id}/manifest.jsonl"

    @property
    def output_uri(self) -> str:
        return str(self.request["OutputDataConfig"]["S3OutputPath"])


class TrainingBackend(Protocol):
    """Starts a training job. Raises TrainingQuotaExceeded / TrainingStartError / TransientError."""

    name: str

    def start(self, launch: TrainingLaunch) -> None: ...

    def exists(self, launch: TrainingLaunch) -> bool:
        """Whether the job was already started (resuming an interrupted start)."""
        ...


# ---------------------------------------------------------------- algorithm image and request


def algorithm_image_uri(region: str, override: str = "") -> str:
    """The built-in image-classification image of ``region`` (``override`` = ALGORITHM_IMAGE_URI wins)."""
    return images.image_uri(
        images.IMAGE_CLASSIFICATION,
        region,
        override,
        what="image-classification algorithm",
        setting="ALGORITHM_IMAGE_URI",
    )


def build_hyperparameters(
    *, num_classes: int, num_training_samples: int, overrides: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The recipe's hyperparameters, overrides merged on top, exact counts, mini_batch_size capped."""
    if num_training_samples < 1:
        raise ConfigurationError("a training job needs at least one training image")
    overrides = dict(overrides or {})
    protected = sorted(set(overrides) & set(PROTECTED_HYPERPARAMETERS))
    if protected:
        raise ConfigurationError(
            f"HYPERPARAMETER_OVERRIDES may not set {', '.join(protected)}: they are computed from the dataset"
        )
    merged = {**RECIPE_HYPERPARAMETERS, **{str(k): str(v) for k, v in overrides.items()}}
    try:
        batch = int(merged["mini_batch_size"])
    except ValueError as exc:
        raise ConfigurationError(
            f"mini_batch_size must be an integer, got {merged['mini_batch_size']!r}"
        ) from exc
    if batch < 1:
        raise ConfigurationError(f"mini_batch_size must be at least 1, got {batch}")
    merged["mini_batch_size"] = str(min(batch, num_training_samples))
    merged["num_classes"] = str(num_classes)
    merged["num_training_samples"] = str(num_training_samples)
    return merged


def make_job_name(
    dataset_id: str, attempt: int, now: datetime | None = None, *, prefix: str = JOB_PREFIX
) -> str:
    """``<prefix>ts-<dataset>-<stamp>[-a<n>]``; ``prefix`` = JOB_NAME_PREFIX carries the stack's part."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S")
    name = f"{prefix}ts-{dataset_id}-{stamp}" + (f"-a{attempt}" if attempt > 1 else "")
    if not JOB_NAME_RE.match(name):
        raise ConfigurationError(f"invalid training job name {name!r}")
    return name


def make_run_id(dataset_id: str, attempt: int) -> str:
    return f"run-{dataset_id}-{attempt}"


def channel(
    name: str, s3_uri: str, data_type: str, content_type: str | None = IMAGE_CONTENT_TYPE
) -> dict[str, Any]:
    """One InputDataConfig channel (``content_type`` None: none, as script mode takes it)."""
    spec: dict[str, Any] = {
        "ChannelName": name,
        "DataSource": {
            "S3DataSource": {
                "S3DataType": data_type,
                "S3Uri": s3_uri,
                "S3DataDistributionType": "FullyReplicated",
            }
        },
        "ContentType": content_type,
        "CompressionType": "None",
    }
    if content_type is None:
        del spec["ContentType"]
    return spec


def build_training_request(
    settings: TrainingSettings,
    plan: DatasetPlan,
    *,
    job_name: str,
    run_id: str,
    source_uri: str = "",
    source_sha256: str = "",
    champion_uri: str = "",
) -> dict[str, Any]:
    """The CreateTrainingJob request for ``plan``: the project's trainer in script mode (TRAINING_ALGORITHM
    ``trashsorter``, see :mod:`trashsorter.script_mode`) or the recipe's built-in image-classification."""
    if settings.training_algorithm == "trashsorter":
        from trashsorter import script_mode

        return script_mode.build_request(
            settings,
            plan,
            job_name=job_name,
            run_id=run_id,
            source_uri=source_uri,
            source_sha256=source_sha256,
            champion_uri=champion_uri,
        )
    if settings.training_backend == "sagemaker":
        image = algorithm_image_uri(settings.aws_region, settings.algorithm_image_uri)
    else:
        try:
            image = algorithm_image_uri(settings.aws_region, settings.algorithm_image_uri)
        except ConfigurationError:
            image = "local"
    hyperparameters = build_hyperparameters(
        num_classes=len(plan.labels),
        num_training_samples=plan.num_train,
        overrides=settings.hyperparameter_overrides,
    )
    return {
        **job_envelope(settings, plan, job_name=job_name, run_id=run_id),
        "AlgorithmSpecification": {"TrainingImage": image, "TrainingInputMode": "File"},
        "HyperParameters": hyperparameters,
        "InputDataConfig": [
            channel(TRAIN, plan.uri("train.manifest"), "ManifestFile"),
            channel(VALIDATION, plan.uri("validation.manifest"), "ManifestFile"),
            channel("train_lst", plan.uri("train.lst"), "S3Prefix"),
            channel("validation_lst", plan.uri("validation.lst"), "S3Prefix"),
        ],
    }


def job_envelope(
    settings: TrainingSettings, plan: DatasetPlan, *, job_name: str, run_id: str
) -> dict[str, Any]:
    """What every algorithm's request shares: name, role, output, instance, stopping, spot, tags."""
    bucket = settings.images_bucket
    stopping: dict[str, int] = {"MaxRuntimeInSeconds": settings.max_runtime_seconds}
    request: dict[str, Any] = {
        "TrainingJobName": job_name,
        "RoleArn": settings.training_role_arn,
        "OutputDataConfig": {"S3OutputPath": f"s3://{bucket}/{TRAINING_OUTPUT_PREFIX}"},
        "ResourceConfig": {
            "InstanceType": settings.instance_type,
            "InstanceCount": settings.instance_count,
            "VolumeSizeInGB": settings.volume_gb,
        },
        "StoppingCondition": stopping,
        "EnableManagedSpotTraining": settings.use_spot,
        "Tags": [
            {"Key": "trashsorter:dataset-id", "Value": plan.dataset_id},
            {"Key": "trashsorter:run-id", "Value": run_id},
            {"Key": "trashsorter:table", "Value": settings.table_name},
        ],
    }
    if settings.use_spot:
        stopping["MaxWaitTimeInSeconds"] = settings.max_wait_seconds
        request["CheckpointConfig"] = {"S3Uri": f"s3://{bucket}/{CHECKPOINTS_PREFIX}{job_name}/"}
    return request


def quota_message(instance_type: str, region: str, detail: str, *, spot: bool = False) -> str:
    """A notice a person can act on: which quota, where, and how to raise it."""
    quota = f"{instance_type} for {'spot ' if spot else ''}training job usage"
    return (
        f"SageMaker refused the training job: the account's quota '{quota}' in {region} is too low "
        f"(ResourceLimitExceeded: {detail}). Request an increase in the Service Quotas console "
        f"(AWS services > Amazon SageMaker > '{quota}', region {region}) or with the CLI: "
        f"aws service-quotas list-service-quotas --service-code sagemaker --region {region} "
        f"--query \"Quotas[?QuotaName=='{quota}'].QuotaCode\" and then "
        "aws service-quotas request-service-quota-increase --service-code sagemaker "
        f"--quota-code <QuotaCode> --desired-value 1 --region {region}. "
        "Or deploy with TrainingInstanceType set to a type you have quota for (ml.g4dn.xlarge is the "
        "modern choice). The trigger is kept pending: the next 'Dataset Ready' (threshold or "
        "`trashsorter train`) starts the run again."
    )


# ---------------------------------------------------------------- backends


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
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if code == "ResourceLimitExceeded":
                instance = launch.request["ResourceConfig"]["InstanceType"]
                spot = bool(launch.request.get("EnableManagedSpotTraining"))
                raise TrainingQuotaExceeded(quota_message(instance, self.region, message, spot=spot)) from exc
            if code == "ResourceInUse" and self.exists(launch):
                return  # created by an earlier, interrupted attempt of this very run
            if code in THROTTLING_CODES or code in SERVER_CODES or status >= 500:
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


def default_log_dir() -> Path:
    return Path(os.environ.get("TRASHSORTER_LOG_DIR") or Path.cwd() / ".trashsorter" / "logs")


class LocalBackend:
    """The embedded mode's CPU trainer, started as a detached process (``python -m trashsorter_cli.trainer``).

    The child inherits the environment (AWS_ENDPOINT_URL ...), writes ``<log_dir>/<job>.log``, uploads
    ``<output>/<job>/output/model.tar.gz`` and puts the "SageMaker Training Job State Change" event.
    """

    name = "local"

    def __init__(
        self, *, log_dir: Path | None = None, python: str = sys.executable, event_bus: str = "default"
    ):
        self.log_dir = log_dir
        self.python = python
        self.event_bus = event_bus

    def command(self, launch: TrainingLaunch) -> list[str]:
        return [
            self.python,
            "-m",
            "trashsorter_cli.trainer",
            "--job-name",
            launch.job_name,
            "--manifest",
            launch.manifest_uri,
            "--output",
            launch.output_uri,
            "--hyperparameters",
            json.dumps(launch.hyperparameters, sort_keys=True),
            "--run-id",
            launch.run_id,
            "--table",
            launch.table_name,
            "--event-bus",
            self.event_bus,
        ]

    def log_path(self, launch: TrainingLaunch) -> Path:
        return (self.log_dir or default_log_dir()) / f"{launch.job_name}.log"

    def start(self, launch: TrainingLaunch) -> None:
        path = self.log_path(launch)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("ab") as log:
                subprocess.Popen(
                    self.command(launch),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env=dict(os.environ),
                    close_fds=True,
                )
        except OSError as exc:
            raise TrainingStartError(
                f"could not start the local trainer for {launch.job_name}: {exc}"
            ) from exc

    def exists(self, launch: TrainingLaunch) -> bool:
        return self.log_path(launch).exists()


def make_backend(settings: TrainingSettings, *, sagemaker: Any = None) -> TrainingBackend:
    if settings.training_backend == "local":
        return LocalBackend()
    return SageMakerBackend(sagemaker, region=settings.aws_region)


# ---------------------------------------------------------------- DynamoDB helpers (client API)


def _dynamo(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, float | int):
        return Decimal(str(value))
    if isinstance(value, Mapping):
        return {str(k): _dynamo(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_dynamo(v) for v in value]
    return value


def _ser(item: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _SER.serialize(_dynamo(v)) for k, v in item.items()}


def _deser(item: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return deserialize(item) if item else None


def _vals(**values: Any) -> dict[str, Any]:
    return {f":{k}": _SER.serialize(_dynamo(v)) for k, v in values.items()}


def _table_name(source: str | CommonSettings) -> str:
    return source if isinstance(source, str) else source.table_name


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _age_seconds(iso: str) -> float:
    try:
        then = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return float("inf")
    return (datetime.now(UTC) - then).total_seconds()


# ---------------------------------------------------------------- runs: queries


def get_run(table: str | CommonSettings, run_id: str, *, ddb: Any = None) -> dict[str, Any] | None:
    """The run record ``RUN#<run_id>/RUN`` (plain Python values; ``request`` is a JSON string) or None."""
    ddb = ddb or aws.client("dynamodb")
    found = ddb.get_item(TableName=_table_name(table), Key=_ser(run_key(run_id)), ConsistentRead=True)
    return _deser(found.get("Item"))


def find_run_by_job(job_name: str, table: str | CommonSettings, *, ddb: Any = None) -> dict[str, Any] | None:
    """The run that owns training job ``job_name`` via the ``JOB#<job>/RUN`` pointer (strongly consistent)."""
    ddb = ddb or aws.client("dynamodb")
    found = ddb.get_item(TableName=_table_name(table), Key=_ser(job_key(job_name)), ConsistentRead=True)
    pointer = _deser(found.get("Item"))
    if not pointer:
        return None
    return get_run(table, str(pointer["run_id"]), ddb=ddb)


def list_runs(table: str | CommonSettings, *, limit: int = 50, ddb: Any = None) -> list[dict[str, Any]]:
    """Runs newest first (gsi1 ``RUNS`` / created_at)."""
    ddb = ddb or aws.client("dynamodb")
    runs: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {
        "TableName": _table_name(table),
        "IndexName": "gsi1",
        "KeyConditionExpression": "gsi1pk = :pk",
        "ExpressionAttributeValues": _vals(pk=RUNS_GSI_PK),
        "ScanIndexForward": False,
    }
    while len(runs) < limit:
        page = ddb.query(**kwargs, Limit=limit - len(runs))
        runs.extend(item for item in (_deser(raw) for raw in page.get("Items", [])) if item)
        if "LastEvaluatedKey" not in page:
            break
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    return runs


def runs_for_dataset(
    table: str | CommonSettings, dataset_id: str, *, ddb: Any = None
) -> list[dict[str, Any]]:
    """Every attempt of ``dataset_id`` in attempt order (run ids are ``run-<dataset_id>-<n>``)."""
    runs: list[dict[str, Any]] = []
    for attempt in range(1, MAX_ATTEMPTS + 1):
        run = get_run(table, make_run_id(dataset_id, attempt), ddb=ddb)
        if run is None:
            break
        runs.append(run)
    return runs


def get_lock(table: str | CommonSettings, *, ddb: Any = None) -> dict[str, Any]:
    ddb = ddb or aws.client("dynamodb")
    found = ddb.get_item(TableName=_table_name(table), Key=_ser(LOCK_KEY), ConsistentRead=True)
    return _deser(found.get("Item")) or {}


# ---------------------------------------------------------------- lock


def _acquire_lock(ddb: Any, table: str, run_id: str, dataset_id: str) -> bool:
    return aws.conditional_write(
        lambda: ddb.update_item(
            TableName=table,
            Key=_ser(LOCK_KEY),
            UpdateExpression=(
                "SET holder = :run, holder_dataset_id = :ds, acquired_at = :now "
                "REMOVE pending, pending_since, pending_reason, pending_dataset_id"
            ),
            ConditionExpression="attribute_not_exists(holder)",
            ExpressionAttributeValues=_vals(run=run_id, ds=dataset_id, now=_now()),
        ),
        what="take the training lock",
    )


def _mark_pending(ddb: Any, table: str, holder: str, *, reason: str, dataset_id: str) -> bool:
    return aws.conditional_write(
        lambda: ddb.update_item(
            TableName=table,
            Key=_ser(LOCK_KEY),
            UpdateExpression=(
                "SET pending = :t, pending_since = if_not_exists(pending_since, :now), "
                "pending_reason = :reason, pending_dataset_id = :ds"
            ),
            ConditionExpression="holder = :holder",
            ExpressionAttributeValues=_vals(t=True, now=_now(), reason=reason, ds=dataset_id, holder=holder),
        ),
        what="record the pending trigger",
    )


def _release_lock(
    ddb: Any, table: str, run_id: str, *, keep_pending: bool, reason: str = ""
) -> dict[str, Any]:
    """Release the lock if ``run_id`` holds it; returns the lock item as it was ({} if not held)."""
    now = _now()
    if keep_pending:
        update = (
            "SET released_at = :now, last_run_id = :run, pending = :t, "
            "pending_since = if_not_exists(pending_since, :now), pending_reason = :reason "
            "REMOVE holder, holder_dataset_id, acquired_at"
        )
        values = _vals(now=now, run=run_id, t=True, reason=reason or "blocked")
    else:
        update = (
            "SET released_at = :now, last_run_id = :run "
            "REMOVE holder, holder_dataset_id, acquired_at, pending, pending_since, pending_reason, "
            "pending_dataset_id"
        )
        values = _vals(now=now, run=run_id)
    try:
        response = ddb.update_item(
            TableName=table,
            Key=_ser(LOCK_KEY),
            UpdateExpression=update,
            ConditionExpression="holder = :run",
            ExpressionAttributeValues=values,
            ReturnValues="ALL_OLD",
        )
    except ClientError as exc:
        if aws.error_code(exc) == "ConditionalCheckFailedException":
            return {}
        raise TransientError(f"could not release the training lock: {exc}") from exc
    return _deser(response.get("Attributes")) or {}


def _restore_pending(ddb: Any, table: str, old: Mapping[str, Any]) -> None:
    try:
        ddb.update_item(
            TableName=table,
            Key=_ser(LOCK_KEY),
            UpdateExpression="SET pending = :t, pending_since = if_not_exists(pending_since, :since)",
            ExpressionAttributeValues=_vals(t=True, since=str(old.get("pending_since") or _now())),
        )
    except (ClientError, BotoCoreError):
        logger.exception("could not restore the pending trigger")


# ---------------------------------------------------------------- runs: writes


def _create_run(ddb: Any, settings: TrainingSettings, launch: TrainingLaunch, *, backend: str, attempt: int,
                accepted_seq: int) -> dict[str, Any]:  # fmt: skip
    now = _now()
    record = {
        **run_key(launch.run_id),
        "gsi1pk": RUNS_GSI_PK,
        "gsi1sk": now,
        "run_id": launch.run_id,
        "dataset_id": launch.dataset_id,
        "job_name": launch.job_name,
        "backend": backend,
        "algorithm": settings.training_algorithm,
        **_source_lineage(launch.request),
        "attempt": attempt,
        "request": json.dumps(launch.request, sort_keys=True),
        "status": str(RunStatus.STARTING),
        "status_message": "",
        "instance_type": settings.instance_type,
        "region": settings.aws_region,
        "accepted_seq": accepted_seq,
        "created_at": now,
    }
    pointer = {**job_key(launch.job_name), "run_id": launch.run_id, "created_at": now}
    try:
        ddb.transact_write_items(
            TransactItems=[
                {
                    "Put": {
                        "TableName": settings.table_name,
                        "Item": _ser(record),
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                },
                {
                    "Put": {
                        "TableName": settings.table_name,
                        "Item": _ser(pointer),
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                },
            ]
        )
    except ClientError as exc:
        raise TransientError(f"could not record run {launch.run_id}: {exc}") from exc
    return record


def _source_lineage(request: Mapping[str, Any]) -> dict[str, str]:
    """The trainer code a run executes (script mode): its content hash and S3 object, for lineage."""
    tags = {t["Key"]: t["Value"] for t in request.get("Tags", [])}
    if "trashsorter:source-sha256" not in tags:
        return {}
    submit = json.loads(request["HyperParameters"]["sagemaker_submit_directory"])
    return {"source_sha256": tags["trashsorter:source-sha256"], "source_uri": str(submit)}


def champion_artifact_uri(table: str, *, ddb: Any = None) -> str:
    """The current champion's ``model.tar.gz`` when it is an ONNX model (the job's ``champion`` channel)."""
    from trashsorter import registry

    champion = registry.get_champion(table_name=table, ddb=ddb)
    if not champion or champion.get("format") != "onnx":
        return ""
    return str(champion.get("source_artifact_uri") or "")


def _mark_started(ddb: Any, table: str, run_id: str) -> None:
    try:
        ddb.update_item(
            TableName=table,
            Key=_ser(run_key(run_id)),
            UpdateExpression="SET #s = :ip, started_at = if_not_exists(started_at, :now)",
            ConditionExpression="#s = :starting",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=_vals(
                ip=str(RunStatus.IN_PROGRESS), now=_now(), starting=str(RunStatus.STARTING)
            ),
        )
    except ClientError as exc:
        # the local trainer may already report progress
        if aws.error_code(exc) != "ConditionalCheckFailedException":
            raise TransientError(f"could not mark run {run_id} started: {exc}") from exc


def finish_run(
    settings: CommonSettings,
    *,
    run_id: str,
    status: RunStatus,
    message: str = "",
    metrics: dict[str, Any] | None = None,
    ddb: Any = None,
    events: Any = None,
    keep_pending: bool = False,
) -> None:
    """End a run (completed / failed / stopped / blocked). Idempotent.

    Updates the run record unless it is already final, releases the lock if this run holds it and, when
    the lock carried a pending trigger, clears it and re-publishes "Dataset Ready" (reason ``pending``) if
    the training rule is met again. ``keep_pending=True`` (blocked starts) releases the lock but leaves the
    trigger pending without re-publishing (re-publishing would hit the same quota at once).
    """
    status = RunStatus(status)
    if status not in FINAL_RUN_STATUSES:
        raise ValueError(f"finish_run needs a final status, got {status}")
    ddb = ddb or aws.client("dynamodb")
    table = settings.table_name
    names = {"#s": "status"}
    values: dict[str, Any] = {
        "status": str(status),
        "msg": message,
        "now": _now(),
        **{f"f{i}": str(final) for i, final in enumerate(FINAL_RUN_STATUSES)},
    }
    update = "SET #s = :status, status_message = :msg, ended_at = :now"
    if metrics:
        update += ", #m = :metrics"
        names["#m"] = "metrics"
        values["metrics"] = metrics
    final_list = ", ".join(f":f{i}" for i in range(len(FINAL_RUN_STATUSES)))
    try:
        ddb.update_item(
            TableName=table,
            Key=_ser(run_key(run_id)),
            UpdateExpression=update,
            ConditionExpression=f"attribute_exists(pk) AND NOT #s IN ({final_list})",
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=_vals(**values),
        )
    except ClientError as exc:
        if aws.error_code(exc) != "ConditionalCheckFailedException":
            raise TransientError(f"could not finish run {run_id}: {exc}") from exc
        if get_run(table, run_id, ddb=ddb) is None:
            raise NotFoundError(f"run {run_id} is not recorded") from exc
        logger.info("run already final", extra={"run_id": run_id})
    old = _release_lock(ddb, table, run_id, keep_pending=keep_pending, reason=str(status))
    if keep_pending or not old.get("pending"):
        return
    try:
        _republish_pending(settings, ddb=ddb, events=events)
    except Exception:
        _restore_pending(ddb, table, old)
        raise


# ---------------------------------------------------------------- the training rule (trashsorter.threshold)


def evaluate_current_rule(settings: CommonSettings, catalogue: Catalogue) -> tuple[RuleResult, int]:
    """The training rule on the catalogue's current counters; returns (result, accepted_seq)."""
    state = catalogue.state()
    counts = catalogue.label_counts(settings.allowed_labels)
    result = evaluate_rule(
        {label: c["accepted"] for label, c in counts.items()},
        accepted_seq=int(state["accepted_seq"]),
        baseline_seq=int(state["baseline_seq"]),
        min_per_label=settings.min_images_per_label,
        min_new=settings.min_new_images,
    )
    return result, int(state["accepted_seq"])


def _republish_pending(settings: CommonSettings, *, ddb: Any, events: Any) -> bool:
    result, accepted_seq = evaluate_current_rule(settings, Catalogue(settings.table_name, ddb=ddb))
    if not result.met:
        logger.info(
            "pending trigger dropped: the training rule is no longer met", extra={"why": result.reason}
        )
        return False
    publish_dataset_ready(settings, reason="pending", result=result, accepted_seq=accepted_seq, events=events)
    return True


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
    launch: TrainingLaunch,
    settings: TrainingSettings,
    backend: TrainingBackend,
    *,
    ddb: Any,
    sns: Any,
    events: Any,
) -> StartOutcome:
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
    _mark_started(ddb, settings.table_name, launch.run_id)
    message = f"training job {launch.job_name} started ({backend.name}) on dataset {launch.dataset_id}"
    _notify(settings, sns, f"Training started: {launch.job_name}", message, details)
    logger.info("training started", extra=details)
    return StartOutcome("started", launch.run_id, launch.job_name, launch.dataset_id, message)


def _resume(
    run: Mapping[str, Any],
    settings: TrainingSettings,
    backend: TrainingBackend,
    *,
    ddb: Any,
    sns: Any,
    events: Any,
) -> StartOutcome:
    """Finish the start of a run left ``starting`` by an interrupted invocation (never a second job)."""
    launch = _launch_from_run(run, settings)
    if backend.exists(launch):
        _mark_started(ddb, settings.table_name, launch.run_id)
        return StartOutcome(
            "started", launch.run_id, launch.job_name, launch.dataset_id, "resumed: the job already existed"
        )
    return _run_backend(launch, settings, backend, ddb=ddb, sns=sns, events=events)


def start_training(
    event_detail: Mapping[str, Any],
    settings: TrainingSettings,
    *,
    ddb: Any = None,
    s3: Any = None,
    sagemaker: Any = None,
    events: Any = None,
    sns: Any = None,
    backend: TrainingBackend | None = None,
    catalogue: Catalogue | None = None,
) -> StartOutcome:
    """Handle one "Dataset Ready" detail: at most one training run per stack, one per dataset."""
    ddb = ddb or aws.client("dynamodb")
    s3 = s3 or aws.client("s3")
    table = settings.table_name
    reason = str(event_detail.get("reason") or "threshold")
    catalogue = catalogue or Catalogue(table, ddb=ddb)
    accepted_seq = int(catalogue.state()["accepted_seq"]) or int(event_detail.get("accepted_seq") or 0)
    if reason != "manual":
        result, accepted_seq = evaluate_current_rule(settings, catalogue)
        if not result.met:
            return StartOutcome("not_ready", message=result.reason)
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
    backend = backend or make_backend(settings, sagemaker=sagemaker)

    for _ in range(MAX_LOCK_ROUNDS):
        lock = get_lock(table, ddb=ddb)
        holder = str(lock.get("holder") or "")
        if holder:
            holder_run = get_run(table, holder, ddb=ddb)
            if holder_run is None or holder_run.get("status") in FINAL_RUN_STATUSES:
                logger.warning("releasing a stale training lock", extra={"holder": holder})
                _release_lock(ddb, table, holder, keep_pending=bool(lock.get("pending")), reason="stale")
                continue
            starting = holder_run.get("status") == RunStatus.STARTING
            same = holder_run.get("dataset_id") == plan.dataset_id
            if starting and same:
                if _age_seconds(str(holder_run.get("created_at", ""))) < RESUME_AFTER_SECONDS:
                    raise TransientError(f"run {holder} of dataset {plan.dataset_id} is being started; retry")
                return _resume(holder_run, settings, backend, ddb=ddb, sns=sns, events=events)
            if same:
                return StartOutcome(
                    "duplicate",
                    str(holder_run["run_id"]),
                    str(holder_run["job_name"]),
                    plan.dataset_id,
                    f"run {holder} is already training dataset {plan.dataset_id}",
                )
            if _mark_pending(ddb, table, holder, reason=reason, dataset_id=plan.dataset_id):
                return StartOutcome(
                    "pending",
                    holder,
                    str(holder_run.get("job_name", "")),
                    plan.dataset_id,
                    f"run {holder} is active; dataset {plan.dataset_id} will be re-checked when it ends",
                )
            continue

        earlier = runs_for_dataset(table, plan.dataset_id, ddb=ddb)
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
        if attempt > MAX_ATTEMPTS:
            return StartOutcome("failed", dataset_id=plan.dataset_id, message="too many failed attempts")
        run_id = make_run_id(plan.dataset_id, attempt)
        job_name = make_job_name(plan.dataset_id, attempt, prefix=settings.job_name_prefix)
        source: dict[str, str] = {}
        if settings.training_algorithm == "trashsorter":
            from trashsorter import script_mode

            uri, sha256 = script_mode.upload_source(s3, settings.images_bucket)
            champion = champion_artifact_uri(table, ddb=ddb)
            source = {"source_uri": uri, "source_sha256": sha256, "champion_uri": champion}
        try:
            request = build_training_request(settings, plan, job_name=job_name, run_id=run_id, **source)
        except ConfigurationError as exc:
            details = {"dataset_id": plan.dataset_id, "job_name": job_name}
            _notify(settings, sns, "Training not started: configuration", str(exc), details)
            return StartOutcome("failed", run_id, job_name, plan.dataset_id, str(exc))
        launch = TrainingLaunch(run_id, job_name, plan.dataset_id, settings.images_bucket, table, request)
        if not _acquire_lock(ddb, table, run_id, plan.dataset_id):
            continue
        try:
            write_dataset(plan, s3=s3)
            save_dataset_record(plan, accepted_seq=accepted_seq, table_name=table, ddb=ddb)
            _create_run(
                ddb, settings, launch, backend=backend.name, attempt=attempt, accepted_seq=accepted_seq
            )
        except Exception:
            _release_lock(ddb, table, run_id, keep_pending=False)
            raise
        return _run_backend(launch, settings, backend, ddb=ddb, sns=sns, events=events)
    raise ConcurrencyConflict(f"the training lock changed hands {MAX_LOCK_ROUNDS} times; retry")


__all__: Sequence[str] = (
    "LocalBackend",
    "SageMakerBackend",
    "StartOutcome",
    "TrainingBackend",
    "TrainingLaunch",
    "algorithm_image_uri",
    "build_hyperparameters",
    "build_training_request",
    "find_run_by_job",
    "finish_run",
    "get_lock",
    "get_run",
    "list_runs",
    "runs_for_dataset",
    "start_training",
)
