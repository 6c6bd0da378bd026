"""Faults on the ingest path: each ends in a recorded, explained state, a retry where it helps, the DLQ where
it cannot, and no lost trigger.

* a message that keeps failing lands in the ingest DLQ through the queue's redrive policy from template.yaml;
* the object deleted before the ingest Lambda reads it;
* DynamoDB throttling (a botocore event hook raising ProvisionedThroughputExceededException n times);
* DynamoDB conditional-check races: two writers with the same bytes at the same time.
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import quote_plus

import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from botocore.exceptions import ClientError

from tests.support import hostile
from tests.support.stack import REGION, StackHandle, put_s3_record
from trashsorter.catalogue import Catalogue
from trashsorter.errors import TransientError
from trashsorter.ingest import process_s3_record
from trashsorter.settings import IngestSettings
from trashsorter_cli.local.dispatcher import make_context
from trashsorter_cli.local.template import load_template

pytestmark = pytest.mark.reliability
LABELS = ("Compost", "Landfill", "Recycling")


class Env:
    def __init__(self, stack: StackHandle) -> None:
        self.stack = stack
        self.s3 = stack.client("s3")
        self.ddb = stack.client("dynamodb")
        self.sqs = stack.client("sqs")
        self.events = stack.client("events")
        self.bucket = stack.outputs["ImagesBucketName"]
        self.settings = IngestSettings.from_env(stack.function_env("IngestFunction"))
        self.catalogue = Catalogue(self.settings.table_name, ddb=self.ddb)

    def put(self, key: str, data: bytes) -> dict[str, Any]:
        return put_s3_record(self.s3, self.bucket, key, data)

    def ingest(self, record: dict[str, Any], ddb: Any = None) -> Any:
        return process_s3_record(record, self.settings, s3=self.s3, ddb=ddb or self.ddb, events=self.events)


def test_poison_message_lands_in_ingest_dlq_via_template_redrive(stack: StackHandle) -> None:
    env = Env(stack)
    template = load_template()
    max_receive = int(template["Resources"]["IngestQueue"]["Properties"]["RedrivePolicy"]["maxReceiveCount"])
    queue, dlq = stack.outputs["IngestQueueUrl"], stack.outputs["IngestDLQUrl"]
    while env.sqs.receive_message(QueueUrl=queue, VisibilityTimeout=0).get("Messages"):
        env.sqs.purge_queue(QueueUrl=queue)  # the s3:TestEvent of the notification configuration
    app = stack.load_handler("IngestFunction")
    env.sqs.send_message(QueueUrl=queue, MessageBody="this is not an S3 notification")
    receives = 0
    for _ in range(max_receive + 1):
        got = env.sqs.receive_message(QueueUrl=queue, VisibilityTimeout=0, AttributeNames=["All"]).get(
            "Messages", []
        )
        if not got:
            break
        receives += 1
        message = got[0]
        event = {
            "Records": [
                {
                    "messageId": message["MessageId"],
                    "receiptHandle": message["ReceiptHandle"],
                    "body": message["Body"],
                    "attributes": message["Attributes"],
                    "messageAttributes": {},
                    "md5OfBody": message["MD5OfBody"],
                    "eventSource": "aws:sqs",
                    "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:ingest",
                    "awsRegion": "us-east-1",
                }
            ]
        }
        # The handler keeps failing it (a whole failed batch raises, as Lambda expects); it is never deleted,
        # so the queue's redrive policy decides.
        with pytest.raises(BatchProcessingError, match="All records failed"):
            app.handler(event, make_context("IngestFunction", region=REGION, memory_mb=2048))
    assert receives == max_receive
    dead = env.sqs.receive_message(QueueUrl=dlq, WaitTimeSeconds=1).get("Messages", [])
    assert [m["Body"] for m in dead] == ["this is not an S3 notification"]


def test_object_deleted_before_ingest_reads_it_is_recorded_deleted_not_lost(stack: StackHandle) -> None:
    env = Env(stack)
    key = "images/Compost/gone-before-read.jpg"
    created = env.put(key, hostile.real_photo_bytes("paper"))
    versions = env.s3.list_object_versions(Bucket=env.bucket, Prefix=key)["Versions"]
    for version in versions:
        env.s3.delete_object(Bucket=env.bucket, Key=key, VersionId=version["VersionId"])
    outcome = env.ingest(created)
    assert outcome.status == "ignored" and outcome.reason_code == "gone"
    removed = {
        "eventName": "ObjectRemoved:Delete",
        "s3": {"bucket": {"name": env.bucket}, "object": {"key": quote_plus(key)}},
    }
    assert env.ingest(removed).status == "deleted"
    record = env.catalogue.get_image(key)
    assert record is not None and record["status"] == "deleted"
    assert env.catalogue.label_counts(["Compost"])["Compost"]["accepted"] == 0


class Throttle:
    """A before-call hook raising ProvisionedThroughputExceededException for the first ``times`` calls."""

    def __init__(self, operation: str, times: int) -> None:
        self.operation = operation
        self.left = times
        self.raised = 0

    def __call__(self, model: Any, **_: Any) -> None:
        if model.name == self.operation and self.left > 0:
            self.left -= 1
            self.raised += 1
            raise ClientError(
                {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "throttled"}},
                model.name,
            )


@pytest.mark.parametrize("operation", ["TransactWriteItems", "GetItem"])
def test_dynamodb_throttling_raises_transient_and_the_retry_counts_once(
    stack: StackHandle, operation: str
) -> None:
    env = Env(stack)
    ddb = stack.client("dynamodb")
    throttle = Throttle(operation, times=2)
    ddb.meta.events.register(f"before-call.dynamodb.{operation}", throttle)
    record = env.put("images/Recycling/throttled.jpg", hostile.real_photo_bytes("metal"))
    attempts = 0
    outcome = None
    while outcome is None:
        attempts += 1
        try:
            outcome = env.ingest(record, ddb=ddb)
        except TransientError as exc:
            assert "Throughput" in str(exc) or "throttled" in str(exc)
    assert throttle.raised == 2 and attempts == 3
    assert outcome.status == "accepted"
    assert env.ingest(record, ddb=ddb).changed is False  # a late duplicate delivery changes nothing
    assert env.catalogue.label_counts(["Recycling"])["Recycling"]["accepted"] == 1
    assert env.catalogue.state()["accepted_seq"] == 1


def test_two_writers_with_the_same_bytes_race_to_one_accepted_and_one_duplicate(stack: StackHandle) -> None:
    """Writer A reads (no owners yet), then is held before its transaction until writer B has written the
    same bytes under another key: A's conditional write must fail, re-plan and end as the duplicate.

    The interleaving is forced with a before-call hook, so moto (not thread-safe in-process) is never
    entered by both threads at once and the race is the same on every run.
    """
    env = Env(stack)
    data = hostile.real_photo_bytes("glass", 3)
    record_a = env.put("images/Recycling/race-a.jpg", data)
    record_b = env.put("images/Recycling/race-b.jpg", data)
    ddb_a = stack.client("dynamodb")
    b_done = threading.Event()
    a_waiting = threading.Event()
    transactions = {"a": 0}

    def hold_first_transaction(**_: Any) -> None:
        transactions["a"] += 1
        if transactions["a"] == 1:
            a_waiting.set()
            assert b_done.wait(30)

    ddb_a.meta.events.register("before-call.dynamodb.TransactWriteItems", hold_first_transaction)
    outcomes: dict[str, Any] = {}
    errors: list[BaseException] = []

    def writer_a() -> None:
        try:
            outcomes["a"] = env.ingest(record_a, ddb=ddb_a)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=writer_a)
    thread.start()
    assert a_waiting.wait(30)
    outcomes["b"] = env.ingest(record_b, ddb=stack.client("dynamodb"))
    b_done.set()
    thread.join(60)
    assert not errors, errors
    assert transactions["a"] >= 2, "A's first transaction should have lost the race and been retried"
    assert outcomes["b"].status == "accepted" and outcomes["a"].status == "duplicate"
    counts = env.catalogue.label_counts(["Recycling"])["Recycling"]
    assert counts["accepted"] == 1 and counts["duplicate"] == 1
    assert env.catalogue.state()["accepted_seq"] == 1
    first = env.catalogue.get_image("images/Recycling/race-b.jpg")
    assert first is not None
    item = env.ddb.get_item(
        TableName=env.settings.table_name, Key={"pk": {"S": f"HASH#{first['sha256']}"}, "sk": {"S": "OWNERS"}}
    )["Item"]
    assert [v["S"] for v in item["owners"]["M"]["Recycling"]["L"]] == [
        "images/Recycling/race-b.jpg",
        "images/Recycling/race-a.jpg",
    ]
