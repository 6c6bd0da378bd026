"""The local training job end to end against moto: manifest + real photos in S3, run record in DynamoDB,
the "SageMaker Training Job State Change" event on the default bus routed to SQS by a rule."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from trashsorter.schema import run_key
from trashsorter.training_request import TrainingLaunch
from trashsorter_cli.local.training_backend import LocalBackend
from trashsorter_cli.trainer import job

pytestmark = pytest.mark.integration

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "trashnet"
BUCKET = "trashsorter-images"
TABLE = "trashsorter-catalogue"
DATASET = "datasets/ds-1"
HYPER = {
    "epochs": "1",
    "learning_rate": "0.01",
    "mini_batch_size": "8",
    "image_shape": "3,96,96",
    "local_views": "1",
}


class Env:
    def __init__(self) -> None:
        self.s3 = boto3.client("s3", region_name="us-east-1")
        self.ddb = boto3.client("dynamodb", region_name="us-east-1")
        self.events = boto3.client("events", region_name="us-east-1")
        self.sqs = boto3.client("sqs", region_name="us-east-1")
        self.s3.create_bucket(Bucket=BUCKET)
        self.ddb.create_table(
            TableName=TABLE,
            KeySchema=[
                {"AttributeName": "pk", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        self.queue_url = self.sqs.create_queue(QueueName="training-events")["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        self.events.put_rule(
            Name="training-state-change",
            EventPattern=json.dumps(
                {"source": ["aws.sagemaker"], "detail-type": ["SageMaker Training Job State Change"]}
            ),
        )
        self.events.put_targets(Rule="training-state-change", Targets=[{"Id": "q", "Arn": arn}])

    def put_dataset(self, missing: str | None = None) -> str:
        labels = ["Compost", "Recycling"]
        lines = []
        for label, folder in (("Compost", "paper"), ("Recycling", "metal")):
            for i, path in enumerate(sorted((SAMPLES / folder).glob("*.jpg"))[:3]):
                data = path.read_bytes()
                key = f"images/{label}/{path.name}"
                if key != missing:
                    self.s3.put_object(Bucket=BUCKET, Key=key, Body=data)
                entry = {
                    "key": key,
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "label": label,
                    "class_index": labels.index(label),
                    "split": "train" if i < 2 else "validation",
                    "s3_key": key,
                }
                lines.append(json.dumps(entry))
        self.s3.put_object(Bucket=BUCKET, Key=f"{DATASET}/manifest.jsonl", Body="\n".join(lines) + "\n")
        self.s3.put_object(Bucket=BUCKET, Key=f"{DATASET}/labels.txt", Body="Compost\nRecycling\n")
        return f"s3://{BUCKET}/{DATASET}/manifest.jsonl"

    def put_run(self, run_id: str) -> None:
        item = {k: {"S": v} for k, v in run_key(run_id).items()}
        item.update({"status": {"S": "in_progress"}, "backend": {"S": "local"}})
        self.ddb.put_item(TableName=TABLE, Item=item)

    def received(self) -> list[dict[str, Any]]:
        messages = self.sqs.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
        )
        return [json.loads(m["Body"]) for m in messages.get("Messages", [])]


@pytest.fixture
def env() -> Iterator[Env]:
    with mock_aws():
        yield Env()


@pytest.mark.slow
def test_job_trains_uploads_reports_progress_and_emits_completed(env: Env) -> None:
    manifest = env.put_dataset()
    env.put_run("r-1")
    detail = job.run_job(
        job_name="deeplens-job-1",
        manifest_uri=manifest,
        output_uri=f"s3://{BUCKET}/training-output/",
        hyperparameters=HYPER,
        run_id="r-1",
        table=TABLE,
        event_bus="default",
        s3=env.s3,
        ddb=env.ddb,
        events=env.events,
    )
    assert detail["TrainingJobStatus"] == "Completed", detail.get("FailureReason")

    body = env.s3.get_object(Bucket=BUCKET, Key="training-output/deeplens-job-1/output/model.tar.gz")["Body"]
    with tarfile.open(fileobj=io.BytesIO(body.read())) as tar:
        names = set(tar.getnames())
        metrics = json.loads(tar.extractfile("metrics.json").read())  # type: ignore[union-attr]
    assert {"model.onnx", "labels.txt", "metrics.json", "confusion_matrix.png"} <= names
    assert metrics["train_count"] == 4 and metrics["validation_count"] == 2

    events = env.received()
    assert len(events) == 1
    event = events[0]
    assert (
        event["source"] == "aws.sagemaker" and event["detail-type"] == "SageMaker Training Job State Change"
    )
    d = event["detail"]
    assert d["TrainingJobName"] == "deeplens-job-1"
    assert d["TrainingJobArn"] == "arn:aws:sagemaker:us-east-1:123456789012:training-job/deeplens-job-1"
    assert d["TrainingJobStatus"] == "Completed" and d["SecondaryStatus"] == "Completed"
    assert d["ModelArtifacts"]["S3ModelArtifacts"] == (
        f"s3://{BUCKET}/training-output/deeplens-job-1/output/model.tar.gz"
    )
    final = {m["MetricName"]: m["Value"] for m in d["FinalMetricDataList"]}
    assert final["validation:accuracy"] == pytest.approx(metrics["validation_accuracy"])
    assert "train:accuracy" in final
    assert d["HyperParameters"] == HYPER
    assert d["AlgorithmSpecification"] == {
        "TrainingImage": "trashsorter/local-efficientnet-lite0",
        "TrainingInputMode": "File",
    }
    assert d["OutputDataConfig"]["S3OutputPath"] == f"s3://{BUCKET}/training-output/"
    assert d["CreationTime"] <= d["TrainingStartTime"] <= d["TrainingEndTime"]
    assert "FailureReason" not in d

    run = env.ddb.get_item(TableName=TABLE, Key={k: {"S": v} for k, v in run_key("r-1").items()})["Item"]
    progress = run["progress"]["M"]
    assert progress["epoch"]["N"] == "1" and progress["epochs"]["N"] == "1"
    assert float(progress["val_accuracy"]["N"]) == pytest.approx(metrics["validation_accuracy"])
    assert progress["updated_at"]["S"].endswith("Z")
    assert run["status"]["S"] == "in_progress"  # the package step owns the status


def test_missing_image_becomes_a_failed_event_with_the_reason(env: Env) -> None:
    manifest = env.put_dataset(
        missing="images/Recycling/" + sorted((SAMPLES / "metal").glob("*.jpg"))[1].name
    )
    detail = job.run_job(
        job_name="deeplens-job-2",
        manifest_uri=manifest,
        output_uri=f"s3://{BUCKET}/training-output/",
        hyperparameters=HYPER,
        run_id="r-2",  # no run record: progress is skipped, never created
        table=TABLE,
        s3=env.s3,
        ddb=env.ddb,
        events=env.events,
    )
    assert detail["TrainingJobStatus"] == "Failed"
    event = env.received()[0]["detail"]
    assert event["TrainingJobStatus"] == "Failed"
    assert "missing image s3://trashsorter-images/images/Recycling/" in event["FailureReason"]
    assert "ModelArtifacts" not in event and event["FinalMetricDataList"] == []
    listed = env.s3.list_objects_v2(Bucket=BUCKET, Prefix="training-output/")
    assert listed.get("KeyCount", 0) == 0
    assert "Item" not in env.ddb.get_item(
        TableName=TABLE, Key={k: {"S": v} for k, v in run_key("r-2").items()}
    )


def test_bad_manifest_and_command_line(env: Env) -> None:
    env.s3.put_object(Bucket=BUCKET, Key="datasets/bad/manifest.jsonl", Body=b'{"label": "Compost"}\n')
    env.s3.put_object(Bucket=BUCKET, Key="datasets/bad/labels.txt", Body=b"Compost\nRecycling\n")
    detail = job.run_job(
        job_name="deeplens-job-3",
        manifest_uri=f"s3://{BUCKET}/datasets/bad/manifest.jsonl",
        output_uri=f"s3://{BUCKET}/training-output/",
        hyperparameters={},
        s3=env.s3,
        events=env.events,
    )
    assert detail["TrainingJobStatus"] == "Failed"
    assert "manifest line 1 lacks split, s3_key" in detail["FailureReason"]
    request = {"HyperParameters": {"epochs": "2"}, "OutputDataConfig": {"S3OutputPath": "s3://b/out/"}}
    argv = LocalBackend().command(TrainingLaunch("r", "j", "m", "b", "t", request))  # what the runtime starts
    assert argv[1:3] == ["-m", "trashsorter_cli.trainer"]
    assert argv[argv.index("--hyperparameters") + 1] == '{"epochs": "2"}'
    assert argv[argv.index("--run-id") + 1] == "r" and argv[argv.index("--table") + 1] == "t"


def test_command_line_exit_codes(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    from trashsorter_cli.trainer.__main__ import main

    common = ["--job-name", "deeplens-cli", "--output", f"s3://{BUCKET}/training-output/"]
    code = main([*common, "--manifest", f"s3://{BUCKET}/nope/manifest.jsonl", "--hyperparameters", "{oops"])
    assert code == 1
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "--hyperparameters is not JSON" in printed["FailureReason"]
    code = main([*common, "--manifest", f"s3://{BUCKET}/nope/manifest.jsonl"])
    assert code == 1
    reasons = [e["detail"]["FailureReason"] for e in env.received()]
    assert len(reasons) == 2 and "cannot read the dataset manifest" in reasons[1]
