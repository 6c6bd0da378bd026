"""Replay: every event type delivered once, three times, or three times interleaved -> the same end state.

One scenario drives the whole pipeline through the three handlers of a stack built from template.yaml:

* the ingest handler gets Lambda SQS events built from the real messages the bucket put on the ingest queue
  (S3 puts and deletes of real TrashNet photos, a duplicate, a conflict, a rejected file);
* the start-training handler gets the "Dataset Ready" events taken from the stack bus (routed to an SQS
  queue here): the threshold crossing, a manual trigger while a run is active (-> pending), the pending
  trigger re-published when that run fails, and the next threshold crossing after a completed model;
* the package handler gets "SageMaker Training Job State Change" events built from events/training_*.json
  for the job the run record names (Failed, Completed with a realistic model.tar.gz where the event says,
  Stopped), with a Greengrass v1 DeepLens group in moto configured through the handler environment.

The scenario runs in fresh stacks with single delivery, with each event delivered 3 times in a row, and
with each event's 2nd and 3rd delivery coming late, after newer events (put A, put B, put A, delete C,
put B, put A ...). A normalised dump (table scan, datasets/ and DeepLens objects with content hashes,
Greengrass group versions and deployments, SNS notices, "Dataset Ready" publications, training jobs) must
be identical. What legitimately differs between two stacks is normalised: ``*_at`` timestamps, ISO
timestamps inside values, UUIDs (deployment and Greengrass version ids), S3 version ids and sequencers, and
the job names (they embed the UTC start time: mapped to JOB1, JOB2 ... in run order).
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from functools import partial
from typing import Any

import boto3
import pytest

from tests.conftest import REGION, SAMPLES_DIR, StackHandle, load_event
from tests.fixtures.greengrass import create_deeplens_group
from tests.fixtures.model_artifacts import mxnet_model_tar
from trashsorter import aws, runs
from trashsorter.catalogue import Catalogue
from trashsorter.ddb import deserialize
from trashsorter.settings import IngestSettings, PackageSettings, TrainingSettings
from trashsorter.threshold import trigger_manual
from trashsorter_cli.local import moto_patches
from trashsorter_cli.local.dispatcher import make_context
from trashsorter_cli.local.stack import deploy_stack

pytestmark = pytest.mark.reliability

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
            session, stack_name="ts-test", overrides=dict(overrides or OVERRIDES), region=REGION
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
def scenario(p: Pipeline) -> None:
    """The whole pipeline, three training runs: failed (with a pending trigger), completed, stopped."""
    pictures = {label: photos(label) for label in LABELS}
    # 1. ingest: 5 real photos per label, a duplicate, a rejected file, a cross-label conflict, two deletes
    for label in LABELS:
        for name, data in pictures[label][:5]:
            p.put(f"images/{label}/{name}", data)
    compost = [f"images/Compost/{name}" for name, _ in pictures["Compost"][:2]]
    p.put("images/Compost/copy of the first.jpg", pictures["Compost"][0][1])  # duplicate
    p.put("images/Recycling/notes.txt", b"shopping list: not an image")  # rejected
    p.put("images/Landfill/looks+like+glass.jpg", pictures["Recycling"][4][1])  # conflict with Recycling
    p.delete(compost[0])  # the duplicate is promoted
    p.delete(compost[1])
    # 2. the threshold crossing starts run 1
    p.dataset_ready()
    run1 = p.active_run()
    # 3. new photos while run 1 trains, then a manual trigger: kept pending
    for label in LABELS:
        for name, data in pictures[label][5:7]:
            p.put(f"images/{label}/{name}", data)
    p.trigger_manual()
    p.dataset_ready()
    # 4. run 1 fails -> the pending trigger is re-published -> run 2 on the newer dataset
    p.training_finished("training_failed.json", run1)
    p.dataset_ready()
    run2 = p.active_run()
    assert run2["run_id"] != run1["run_id"]
    # 5. run 2 completes: packaged, registered, deployed to the DeepLens group
    p.training_finished("training_completed.json", run2)
    # 6. enough new photos since that model: the threshold fires again -> run 3
    for label in LABELS:
        for name, data in pictures[label][7:8]:
            p.put(f"images/{label}/{name}", data)
    p.dataset_ready()
    run3 = p.active_run()
    # A "Dataset Ready" redelivered after its run failed or stopped starts the next attempt (a retry by
    # design), so the late copies are delivered before run 3 stops.
    p.flush()
    # 7. run 3 is stopped
    p.training_finished("training_stopped.json", run3)
    p.flush()


_ISO = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# CloudFormation physical names: <stack>-<LogicalId>-<random suffix>
_PHYSICAL = re.compile(r"\b(ts-test-[A-Za-z0-9]+)-[A-Z0-9]{12,13}\b")
_DROPPED = ("version_id", "sequencer")  # S3 version ids and sequencers differ between two stacks


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if not k.endswith("_at") and k not in _DROPPED}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(_plain(v) for v in value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return hashlib.sha256(value).hexdigest()
    if isinstance(value, str) and value.startswith("{"):  # a stored JSON document (the training request)
        try:
            return _plain(json.loads(value))
        except json.JSONDecodeError:
            return value
    return value


def normalised_dump(p: Pipeline) -> dict[str, Any]:
    """Everything the pipeline wrote, with what legitimately differs between two stacks normalised."""
    jobs = {str(run["job_name"]): f"JOB{i}" for i, run in enumerate(p.runs(), 1)}
    deployments = p.gg.list_deployments(GroupId=p.group_id)["Deployments"]
    dump = {
        "table": _plain(p.table_items()),
        "datasets": p.objects(p.bucket, "datasets/"),
        "deeplens": p.objects(p.deeplens_bucket),
        "greengrass": {
            "group_versions": len(p.gg.list_group_versions(GroupId=p.group_id)["Versions"]),
            "deployments": sorted(d["DeploymentType"] for d in deployments),
        },
        "notices": sorted(p.notices()),
        "dataset_ready": [{k: v for k, v in e["detail"].items() if k != "requested_at"} for e in p.published],
        "training_jobs": sorted(
            j["TrainingJobName"] for j in p.sm.list_training_jobs()["TrainingJobSummaries"]
        ),
    }
    text = json.dumps(dump, sort_keys=True, default=str)
    for job, placeholder in sorted(jobs.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(job, placeholder)
    text = _PHYSICAL.sub(r"\1-<physical>", _UUID.sub("<uuid>", _ISO.sub("<time>", text)))
    result: dict[str, Any] = json.loads(text)
    return result


def run_scenario(mode: str) -> tuple[dict[str, Any], Pipeline]:
    with fresh_stack() as stack:
        pipeline = Pipeline(stack, mode)
        scenario(pipeline)
        return normalised_dump(pipeline), pipeline


_BASELINE: dict[str, Any] = {}


def single_delivery() -> tuple[dict[str, Any], Counter[str]]:
    """The reference run (once per test process)."""
    if "dump" not in _BASELINE:
        _BASELINE["dump"], pipeline = run_scenario("single")
        _BASELINE["delivered"] = pipeline.delivered
        assert pipeline.deliveries == sum(pipeline.delivered.values())
    return _BASELINE["dump"], _BASELINE["delivered"]


# ---------------------------------------------------------------------------------------------- tests
def test_single_delivery_scenario_reaches_the_intended_end_state() -> None:
    """The reference run is not vacuous: every event type did its job."""
    dump, delivered = single_delivery()
    assert delivered == {
        "s3:s3:TestEvent": 1,
        "s3:ObjectCreated:Put": 27,
        "s3:ObjectRemoved:Delete": 2,
        "dataset-ready:threshold": 2,
        "dataset-ready:manual": 1,
        "dataset-ready:pending": 1,
        "training:Failed": 1,
        "training:Completed": 1,
        "training:Stopped": 1,
    }
    items = dump["table"]
    runs = sorted((i for i in items if i["pk"].startswith("RUN#")), key=lambda r: r["job_name"])
    assert [(r["job_name"], r["status"]) for r in runs] == [
        ("JOB1", "failed"),
        ("JOB2", "completed"),
        ("JOB3", "stopped"),
    ]
    assert [r["handled_statuses"] for r in runs] == [["Failed"], ["Completed"], ["Stopped"]]
    assert len({r["dataset_id"] for r in runs}) == 3
    [model] = [i for i in items if i["pk"].startswith("MODEL#") and i["sk"] == "MODEL"]
    assert model["model_id"] == "JOB2" and model["status"] == "champion"
    counts = {i["pk"].split("#", 1)[1]: i for i in items if i["pk"].startswith("LABEL#")}
    kinds = ("accepted", "duplicate", "conflict", "rejected", "deleted")
    assert {label: tuple(c.get(k, 0) for k in kinds) for label, c in counts.items()} == {
        "Compost": (7, 0, 0, 0, 2),  # 5 + 2 + 1 uploaded, 2 deleted, the duplicate promoted
        "Landfill": (8, 0, 1, 0, 0),  # 5 + 2 + 1, and the copy of a Recycling photo
        "Recycling": (7, 0, 1, 1, 0),  # 5 + 2 + 1, one of them in conflict; notes.txt rejected
    }
    assert [e["reason"] for e in dump["dataset_ready"]] == ["threshold", "manual", "pending", "threshold"]
    assert dump["greengrass"] == {"group_versions": 2, "deployments": ["NewDeployment"]}
    assert sorted(dump["deeplens"]) == ["models/JOB2/model.tar.gz"]
    assert sorted(dump["training_jobs"]) == ["JOB1", "JOB2", "JOB3"]
    assert len(dump["notices"]) == 6  # 3 started, failed, deployed, stopped


@pytest.mark.parametrize("mode", ["triple", "interleaved"])
def test_every_event_delivered_three_times_ends_in_the_single_delivery_state(mode: str) -> None:
    expected, delivered = single_delivery()
    replayed, pipeline = run_scenario(mode)
    assert pipeline.delivered == delivered
    assert pipeline.deliveries == 3 * sum(delivered.values())  # every event really came three times
    for part in expected:
        assert replayed[part] == expected[part], part
