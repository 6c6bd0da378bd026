"""The stack's three handlers fed with real events, each delivered once, three times or interleaved
(the replay and fault tests drive the same pipeline)."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import boto3

from tests.support.fixtures.greengrass import create_deeplens_group
from tests.support.fixtures.model_artifacts import mxnet_model_tar
from tests.support.sagemaker import sagemaker_reports
from tests.support.stack import REGION, SAMPLES_DIR, StackHandle, load_event
from trashsorter import aws, runs
from trashsorter.catalogue import Catalogue
from trashsorter.ddb import deserialize
from trashsorter.settings import IngestSettings, PackageSettings, TrainingSettings
from trashsorter.threshold import trigger_manual
from trashsorter_cli.local import moto_patches
from trashsorter_cli.local.dispatcher import make_context
from trashsorter_cli.local.stack import deploy_stack

LABELS = ("Compost", "Landfill", "Recycling")
OVERRIDES = {"MinImagesPerLabel": "4", "MinNewImages": "2"}
FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:deeplens-trash-sorter-inference:3"
EVENT_JOB = "deeplens-ts-3f9a1c2b7d4e5f60-20240514093012"
EVENT_RUN = "run-3f9a1c2b7d4e5f60-1"
EVENT_DATASET = "3f9a1c2b7d4e5f60"
EVENT_BUCKET = "trashsorter-images-example"
MODES = ("single", "triple", "interleaved")


def photos(label: str) -> list[tuple[str, bytes]]:
    """Real TrashNet photos of a label (samples/trashnet/mapping.json), materials interleaved."""
    mapping = json.loads((SAMPLES_DIR / "mapping.json").read_text(encoding="utf-8"))
    per_material = [sorted((SAMPLES_DIR / m).glob("*.jpg")) for m in mapping[label]]
    out: list[tuple[str, bytes]] = []
    for i in range(max(len(p) for p in per_material)):
        for paths in per_material:
            if i < len(paths):
                out.append((f"{paths[i].parent.name}-{paths[i].name}", paths[i].read_bytes()))
    return out


@contextmanager
def fresh_stack(overrides: dict[str, str] | None = None) -> Iterator[StackHandle]:
    """What the ``stack`` fixture does, usable several times in one test (one moto world each)."""
    from moto import mock_aws

    moto_patches.install()
    with mock_aws():
        aws.reset_clients()
        session = boto3.session.Session(region_name=REGION)
        created = deploy_stack(
            session,
            stack_name="ts-test",
            overrides={"IngestSettleSeconds": "0", **(overrides or OVERRIDES)},
            region=REGION,
        )
        try:
            yield StackHandle(created, session)
        finally:
            aws.reset_clients()


class Pipeline:
    """The stack's three handlers fed with real events, each delivered according to ``mode``."""

    def __init__(self, stack: StackHandle, mode: str = "single") -> None:
        assert mode in MODES
        self.stack, self.mode = stack, mode
        self.s3 = stack.client("s3")
        self.sqs = stack.client("sqs")
        self.ddb = stack.client("dynamodb")
        self.events = stack.client("events")
        self.sm = stack.client("sagemaker")
        self.gg = stack.client("greengrass")
        self.bucket = stack.outputs["ImagesBucketName"]
        self.deeplens_bucket = stack.outputs["DeepLensBucketName"]
        self.queue_url = stack.outputs["IngestQueueUrl"]
        self.queue_arn = self._arn(self.queue_url)
        self.ingest_settings = IngestSettings.from_env(stack.function_env("IngestFunction"))
        self.training_settings = TrainingSettings.from_env(stack.function_env("StartTrainingFunction"))
        self.table = self.training_settings.table_name
        self.catalogue = Catalogue(self.table, ddb=self.ddb)
        self.ready_queue = self._route_dataset_ready()
        self.notice_queue = self._subscribe_notices()
        self.group_id = create_deeplens_group(self.gg)
        self.package_env = {"DEEPLENS_GROUP_ID": self.group_id, "DEEPLENS_FUNCTION_ARN": FUNCTION_ARN}
        self.package_settings = PackageSettings.from_env(
            {**stack.function_env("PackageFunction"), **self.package_env}
        )
        self.ingest_app = stack.load_handler("IngestFunction")
        self.start_app = stack.load_handler("StartTrainingFunction")
        self.package_app = stack.load_handler("PackageFunction", **self.package_env)
        self.backlog: list[list[Any]] = []  # [delivery, copies still to come] (interleaved mode)
        self.published: list[dict[str, Any]] = []  # every "Dataset Ready" the stack put on its bus
        self.deliveries = 0  # handler invocations
        self.delivered: Counter[str] = Counter()  # distinct events, by type
        # Configuring the notification made S3 send an s3:TestEvent: delivered like any message (ignored).
        assert self.notified() == 1

    # ------------------------------------------------------------------ plumbing
    def _arn(self, url: str) -> str:
        attrs = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
        return str(attrs["QueueArn"])

    def _queue(self, prefix: str) -> tuple[str, str]:
        url = str(self.sqs.create_queue(QueueName=f"{prefix}-{uuid.uuid4().hex[:8]}")["QueueUrl"])
        return url, self._arn(url)

    def _route_dataset_ready(self) -> str:
        url, arn = self._queue("ready")
        bus = self.training_settings.event_bus_name
        pattern = {"source": ["trashsorter"], "detail-type": ["Dataset Ready"]}
        self.events.put_rule(Name="test-dataset-ready", EventBusName=bus, EventPattern=json.dumps(pattern))
        self.events.put_targets(
            Rule="test-dataset-ready", EventBusName=bus, Targets=[{"Id": "q", "Arn": arn}]
        )
        return url

    def _subscribe_notices(self) -> str:
        url, arn = self._queue("notices")
        self.stack.client("sns").subscribe(
            TopicArn=self.training_settings.topic_arn, Protocol="sqs", Endpoint=arn
        )
        return url

    def drain(self, url: str, **kwargs: Any) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            got = self.sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=300, AttributeNames=["All"], **kwargs
            ).get("Messages", [])
            if not got:
                return out
            for message in got:
                out.append(message)
                self.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])

    def deliver(self, kind: str, call: Callable[[], Any]) -> Any:
        """Deliver one event: once, 3 times in a row, or once now and twice later (after newer events)."""
        self.delivered[kind] += 1
        result = call()
        self.deliveries += 1
        if self.mode == "triple":
            for _ in range(2):
                call()
                self.deliveries += 1
        elif self.mode == "interleaved":
            for item in self.backlog:
                item[0]()
                item[1] -= 1
                self.deliveries += 1
            self.backlog = [item for item in self.backlog if item[1] > 0]
            self.backlog.append([call, 2])
        return result

    def flush(self) -> None:
        """Deliver every late copy still due (before an event a late trigger must not follow)."""
        while self.backlog:
            item = self.backlog.pop(0)
            for _ in range(item[1]):
                item[0]()
                self.deliveries += 1

    # ------------------------------------------------------------------ ingest
    def invoke_ingest(self, event: dict[str, Any]) -> None:
        response = self.ingest_app.handler(
            event, make_context("IngestFunction", region=REGION, memory_mb=2048)
        )
        assert response == {"batchItemFailures": []}, response

    def _sqs_event(self, message: dict[str, Any]) -> dict[str, Any]:
        return {
            "Records": [
                {
                    "messageId": message["MessageId"],
                    "receiptHandle": message["ReceiptHandle"],
                    "body": message["Body"],
                    "attributes": message.get("Attributes", {}),
                    "messageAttributes": {},
                    "md5OfBody": message["MD5OfBody"],
                    "eventSource": "aws:sqs",
                    "eventSourceARN": self.queue_arn,
                    "awsRegion": self.stack.region,
                }
            ]
        }

    def notified(self) -> int:
        """Deliver what the bucket put on the ingest queue since the last call; returns the message count."""
        messages = self.drain(self.queue_url)
        for message in messages:
            body = json.loads(message["Body"])
            kind = "s3:" + (body["Records"][0]["eventName"] if "Records" in body else body["Event"])
            self.deliver(kind, partial(self.invoke_ingest, self._sqs_event(message)))
        return len(messages)

    def put(self, key: str, data: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)
        assert self.notified() == 1

    def delete(self, key: str) -> None:
        """Delete every version (S3 notifies ObjectRemoved:Delete for each version deleted)."""
        deleted = 0
        for version in self.s3.list_object_versions(Bucket=self.bucket, Prefix=key).get("Versions", []):
            if version["Key"] == key:
                self.s3.delete_object(Bucket=self.bucket, Key=key, VersionId=version["VersionId"])
                deleted += 1
        assert self.notified() == deleted

    # ------------------------------------------------------------------ start training
    def invoke_start(self, event: dict[str, Any]) -> dict[str, Any]:
        return dict(self.start_app.handler(event, make_context("StartTrainingFunction", region=REGION)))

    def dataset_ready(self) -> list[dict[str, Any]]:
        """Take the "Dataset Ready" events off the bus and deliver them; returns first-delivery outcomes."""
        events = [json.loads(m["Body"]) for m in self.drain(self.ready_queue)]
        self.published.extend(events)
        return [
            self.deliver(f"dataset-ready:{event['detail']['reason']}", partial(self.invoke_start, event))
            for event in events
        ]

    def trigger_manual(self) -> None:
        """What ``trashsorter train`` does: publish a manual "Dataset Ready" on the stack bus."""
        trigger_manual(self.ingest_settings, catalogue=self.catalogue, events=self.events)

    def active_run(self) -> dict[str, Any]:
        holder = runs.get_lock(self.table, ddb=self.ddb).get("holder")
        assert holder, "no run holds the training lock"
        run = runs.get_run(self.table, str(holder), ddb=self.ddb)
        assert run is not None
        return run

    # ------------------------------------------------------------------ package
    def invoke_package(self, event: dict[str, Any]) -> dict[str, Any]:
        return dict(
            self.package_app.handler(event, make_context("PackageFunction", region=REGION, memory_mb=2048))
        )

    def artifact_uri(self, job_name: str) -> str:
        described = self.sm.describe_training_job(TrainingJobName=job_name)
        return str(described["ModelArtifacts"]["S3ModelArtifacts"])

    def training_event(self, name: str, run: dict[str, Any]) -> dict[str, Any]:
        """events/<name> for the job the run record names (job, run, dataset and bucket substituted)."""
        event = load_event(
            name,
            **{
                EVENT_JOB: str(run["job_name"]),
                EVENT_RUN: str(run["run_id"]),
                EVENT_DATASET: str(run["dataset_id"]),
                EVENT_BUCKET: self.bucket,
            },
        )
        detail = event["detail"]
        assert detail["TrainingJobName"] == run["job_name"]
        if "ModelArtifacts" in detail:
            detail["ModelArtifacts"]["S3ModelArtifacts"] = self.artifact_uri(str(run["job_name"]))
        sagemaker_reports(str(run["job_name"]), detail)  # a genuine event: SageMaker says the same
        return event

    def training_finished(self, name: str, run: dict[str, Any]) -> dict[str, Any]:
        event = self.training_event(name, run)
        if "ModelArtifacts" in event["detail"]:  # what the built-in algorithm leaves where the event says
            uri = event["detail"]["ModelArtifacts"]["S3ModelArtifacts"]
            bucket, key = uri[5:].split("/", 1)
            self.s3.put_object(Bucket=bucket, Key=key, Body=mxnet_model_tar(epochs=(9, 10)))
        kind = f"training:{event['detail']['TrainingJobStatus']}"
        return dict(self.deliver(kind, partial(self.invoke_package, event)))

    # ------------------------------------------------------------------ reading back
    def table_items(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"TableName": self.table, "ConsistentRead": True}
        while True:
            page = self.ddb.scan(**kwargs)
            items.extend(deserialize(i) for i in page["Items"])
            if "LastEvaluatedKey" not in page:
                return sorted(items, key=lambda i: (i["pk"], i["sk"]))
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def objects(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """key -> sha256 of the content (the stack's random bucket names inside it replaced)."""
        out: dict[str, str] = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                body = self.s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                body = body.replace(self.bucket.encode(), b"<images>").replace(
                    self.deeplens_bucket.encode(), b"<deeplens>"
                )
                out[obj["Key"]] = hashlib.sha256(body).hexdigest()
        return out

    def notices(self) -> list[str]:
        return [json.loads(m["Body"])["Subject"] for m in self.drain(self.notice_queue)]

    def runs(self) -> list[dict[str, Any]]:
        return sorted(runs.list_runs(self.table, ddb=self.ddb), key=lambda r: str(r["created_at"]))


# ---------------------------------------------------------------------------------------------- scenario
