"""The local training job: S3 manifest in, ``model.tar.gz`` out, progress in DynamoDB, completion event.

It behaves like a SageMaker training job seen from the rest of the pipeline:

* reads ``manifest.jsonl`` (JSON lines: key, sha256, label, class_index, split, s3_key) and ``labels.txt``
  beside it, downloads the images;
* after every epoch sets ``progress`` = ``{epoch, epochs, train_loss, val_accuracy, updated_at}`` on the
  run record (through :func:`trashsorter.runs.record_progress`; only if that record exists);
* uploads ``<output>/<job>/output/model.tar.gz``;
* puts ONE "SageMaker Training Job State Change" event (source ``aws.sagemaker``) on the event bus whose
  detail is shaped like DescribeTrainingJob, ``Completed`` or ``Failed`` with a ``FailureReason``.

Run it as a subprocess (``python -m trashsorter_cli.trainer ...``, started by
:class:`trashsorter_cli.local.training_backend.LocalBackend`) so training never blocks the dispatcher;
AWS_ENDPOINT_URL in the environment points boto3 at the moto server.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from botocore.exceptions import BotoCoreError, ClientError

from trashsorter import aws, runs
from trashsorter import labels as labels_file
from trashsorter.clock import now_iso
from trashsorter.errors import TrainingError, TransientError
from trashsorter.gate import ACCURACY_METRIC
from trashsorter.schema import SAGEMAKER_SOURCE, TRAINING_STATE_CHANGE
from trashsorter_trainer.data import Sample
from trashsorter_trainer.errors import TrainerError

LOG = logging.getLogger("trashsorter.trainer")
TRAINING_IMAGE = "trashsorter/local-efficientnet-lite0"
DEFAULT_ACCOUNT = "123456789012"
MAX_FAILURE_REASON = 1024
DOWNLOAD_THREADS = 8


def parse_s3_uri(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise TrainingError(f"not an s3:// URI: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def artifact_uri(output_uri: str, job_name: str) -> str:
    """``<output>/<job>/output/model.tar.gz`` (the SageMaker layout)."""
    return f"{output_uri.rstrip('/')}/{job_name}/output/model.tar.gz"


def read_manifest(manifest_uri: str, s3: Any = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Manifest entries and the labels of ``labels.txt`` beside it (order = class_index)."""
    s3 = s3 or aws.client("s3")
    bucket, key = parse_s3_uri(manifest_uri)
    labels_key = f"{key.rsplit('/', 1)[0]}/labels.txt" if "/" in key else "labels.txt"
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")
        labels_body = s3.get_object(Bucket=bucket, Key=labels_key)["Body"].read().decode("utf-8")
    except ClientError as exc:
        raise TrainingError(f"cannot read the dataset manifest/labels at s3://{bucket}/{key}: {exc}") from exc
    labels = labels_file.parse(labels_body)
    entries = []
    for number, line in enumerate(body.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TrainingError(f"manifest line {number} is not JSON: {exc}") from exc
        missing = [f for f in ("label", "split", "s3_key") if not entry.get(f)]
        if missing:
            raise TrainingError(f"manifest line {number} lacks {', '.join(missing)}")
        if entry["label"] not in labels:
            raise TrainingError(f"manifest line {number}: label {entry['label']!r} is not in labels.txt")
        if "class_index" in entry and labels.index(entry["label"]) != int(entry["class_index"]):
            raise TrainingError(
                f"manifest line {number}: class_index {entry['class_index']} does not match labels.txt"
            )
        entries.append(entry)
    if not entries:
        raise TrainingError(f"manifest {manifest_uri} lists no images")
    return entries, labels


def download_samples(bucket: str, entries: list[dict[str, Any]], s3: Any = None) -> list[Sample]:
    """Fetch every image of the manifest (a few threads; one shared client); a missing one fails the job."""
    s3 = s3 or aws.client("s3")

    def fetch(entry: dict[str, Any]) -> Sample:
        key = entry["s3_key"]
        try:
            data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            raise TrainingError(f"missing image s3://{bucket}/{key} ({code})") from exc
        return Sample(key=entry.get("key", key), label=entry["label"], split=entry["split"], data=data)

    with ThreadPoolExecutor(max_workers=DOWNLOAD_THREADS) as pool:
        return list(pool.map(fetch, entries))


class ProgressWriter:
    """Sets ``progress`` on the run record after each epoch (never creates a record; failures only warn)."""

    def __init__(self, table: str, run_id: str, ddb: Any = None) -> None:
        self.table = table
        self.run_id = run_id
        self.ddb = ddb or aws.client("dynamodb")

    def __call__(self, entry: Mapping[str, Any]) -> None:
        if not self.table or not self.run_id:
            return
        progress = {
            "epoch": int(entry["epoch"]),
            "epochs": int(entry["epochs"]),
            "train_loss": float(entry["train_loss"]),
            "val_accuracy": float(entry["val_accuracy"]),
        }
        try:
            if not runs.record_progress(self.table, self.run_id, progress, ddb=self.ddb):
                LOG.warning("run record of %s does not exist; progress not recorded", self.run_id)
        except TransientError as exc:
            LOG.warning("progress update failed (training goes on): %s", exc)


def account_id(sts: Any = None) -> str:
    try:
        return str((sts or aws.client("sts")).get_caller_identity()["Account"])
    except (ClientError, BotoCoreError):
        return DEFAULT_ACCOUNT


def event_detail(
    *,
    job_name: str,
    status: str,
    output_uri: str,
    hyperparameters: Mapping[str, Any],
    region: str,
    account: str,
    created: str,
    started: str,
    ended: str,
    metrics: Mapping[str, Any] | None = None,
    failure_reason: str | None = None,
) -> dict[str, Any]:
    """DescribeTrainingJob-shaped detail of the state-change event."""
    detail: dict[str, Any] = {
        "TrainingJobName": job_name,
        "TrainingJobArn": f"arn:aws:sagemaker:{region}:{account}:training-job/{job_name}",
        "TrainingJobStatus": status,
        "SecondaryStatus": status,
        "HyperParameters": {str(k): str(v) for k, v in hyperparameters.items()},
        "AlgorithmSpecification": {"TrainingImage": TRAINING_IMAGE, "TrainingInputMode": "File"},
        "OutputDataConfig": {"S3OutputPath": output_uri},
        "CreationTime": created,
        "TrainingStartTime": started,
        "TrainingEndTime": ended,
        "LastModifiedTime": ended,
        "FinalMetricDataList": [],
    }
    if status == "Completed":
        detail["ModelArtifacts"] = {"S3ModelArtifacts": artifact_uri(output_uri, job_name)}
    if failure_reason is not None:
        detail["FailureReason"] = failure_reason[:MAX_FAILURE_REASON]
    if metrics:
        detail["FinalMetricDataList"] = [
            {"MetricName": name, "Value": float(metrics[field]), "Timestamp": ended}
            for name, field in (
                (ACCURACY_METRIC, "validation_accuracy"),
                ("train:accuracy", "train_accuracy"),
                ("train:loss", "train_loss"),
            )
            if field in metrics
        ]
        detail["TrainingTimeInSeconds"] = round(float(metrics.get("wall_time_seconds", 0)))
    return detail


def put_state_change(detail: Mapping[str, Any], event_bus: str, events: Any = None) -> None:
    events = events or aws.client("events")
    response = events.put_events(
        Entries=[
            {
                "Source": SAGEMAKER_SOURCE,
                "DetailType": TRAINING_STATE_CHANGE,
                "Detail": json.dumps(detail),
                "EventBusName": event_bus,
                "Resources": [detail["TrainingJobArn"]],
            }
        ]
    )
    if response.get("FailedEntryCount"):
        raise TrainingError(f"PutEvents refused the training event: {response.get('Entries')}")


def run_job(
    *,
    job_name: str,
    manifest_uri: str,
    output_uri: str,
    hyperparameters: Mapping[str, Any],
    run_id: str = "",
    table: str = "",
    event_bus: str = "default",
    work_dir: Path | str | None = None,
    s3: Any = None,
    ddb: Any = None,
    events: Any = None,
    sts: Any = None,
) -> dict[str, Any]:
    """Run the whole job; returns the event detail that was sent (``TrainingJobStatus`` says how it went).

    Any training failure becomes a ``Failed`` event with the reason; only a failure to SEND the event raises.
    """
    from trashsorter_trainer.train import TrainConfig, train

    s3 = s3 or aws.client("s3")
    events = events or aws.client("events")
    region = str(events.meta.region_name or "us-east-1")
    created = now_iso()
    metrics: dict[str, Any] | None = None
    failure: str | None = None
    started = created
    try:
        output_bucket, _ = parse_s3_uri(output_uri)
        config = TrainConfig.from_hyperparameters(hyperparameters)
        entries, labels = read_manifest(manifest_uri, s3=s3)
        bucket, _ = parse_s3_uri(manifest_uri)
        samples = download_samples(bucket, entries, s3=s3)
        started = now_iso()
        progress = ProgressWriter(table, run_id, ddb=ddb)
        with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
            result = train(samples, labels, Path(tmp), config, progress=progress)
            _, key = parse_s3_uri(artifact_uri(output_uri, job_name))
            with result.archive.open("rb") as body:
                s3.put_object(Bucket=output_bucket, Key=key, Body=body)
        metrics = result.metrics
        LOG.info("job %s completed: validation accuracy %.4f", job_name, metrics["validation_accuracy"])
    except (TrainingError, TrainerError) as exc:
        failure = str(exc)
    except (ClientError, BotoCoreError) as exc:
        failure = f"AWS error: {exc}"
    except Exception as exc:  # noqa: BLE001 - any crash must still become a Failed event with its reason
        failure = f"{type(exc).__name__}: {exc}"
    if failure is not None:
        LOG.error("job %s failed: %s", job_name, failure)
    detail = event_detail(
        job_name=job_name,
        status="Failed" if failure is not None else "Completed",
        output_uri=output_uri,
        hyperparameters=hyperparameters,
        region=region,
        account=account_id(sts),
        created=created,
        started=started,
        ended=now_iso(),
        metrics=metrics,
        failure_reason=failure,
    )
    put_state_change(detail, event_bus, events=events)
    return detail


def send_failed(
    *,
    job_name: str,
    output_uri: str,
    hyperparameters: Mapping[str, Any],
    reason: str,
    event_bus: str = "default",
    events: Any = None,
    sts: Any = None,
) -> dict[str, Any]:
    """Send a Failed event for a job that could not even start (e.g. unreadable arguments)."""
    events = events or aws.client("events")
    stamp = now_iso()
    detail = event_detail(
        job_name=job_name,
        status="Failed",
        output_uri=output_uri,
        hyperparameters=hyperparameters,
        region=str(events.meta.region_name or "us-east-1"),
        account=account_id(sts),
        created=stamp,
        started=stamp,
        ended=stamp,
        failure_reason=reason,
    )
    put_state_change(detail, event_bus, events=events)
    return detail
