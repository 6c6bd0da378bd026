"""Dispatcher behaviour: the Lambda SQS event shape, partial batch failures, retries and the DLQ.

The queues are real SQS queues (moto in-process, created with a RedrivePolicy like template.yaml's); the
handlers are small functions recording what Lambda would have passed them.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from trashsorter_cli.local.dispatcher import Dispatcher, LambdaContext, Route, lambda_sqs_record
from trashsorter_cli.local.template import EventSource

REGION = "us-east-1"


@pytest.fixture
def sqs() -> Iterator[Any]:
    from moto import mock_aws

    with mock_aws():
        yield boto3.client("sqs", region_name=REGION)


def _queue(sqs: Any, name: str, max_receive: int = 3) -> tuple[str, str, str]:
    dlq_url = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    url = sqs.create_queue(
        QueueName=name,
        Attributes={
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive}),
            "VisibilityTimeout": "360",
        },
    )["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return url, arn, dlq_url


def _count(sqs: Any, url: str) -> int:
    attrs = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


def _route(url: str, arn: str, handler: Any, *, kind: str = "sqs", partial: bool = True) -> Route:
    source = EventSource(kind=kind, name="Src", queue_logical_id="Q", batch_size=10, partial_batch=partial)
    return Route(function_name="IngestFunction", source=source, queue_url=url, queue_arn=arn, handler=handler)


def test_sqs_event_has_the_lambda_shape_and_successes_are_deleted(sqs: Any) -> None:
    url, arn, _ = _queue(sqs, "shape")
    sqs.send_message(
        QueueUrl=url,
        MessageBody='{"Records": []}',
        MessageAttributes={"kind": {"DataType": "String", "StringValue": "test"}},
    )
    seen: list[tuple[dict[str, Any], Any]] = []

    def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        seen.append((event, context))
        return {"batchItemFailures": []}

    dispatcher = Dispatcher([_route(url, arn, handler)], sqs=sqs, region=REGION, wait_time=0)
    assert dispatcher.poll_once(dispatcher.routes[0]) == 1
    event, context = seen[0]
    record = event["Records"][0]
    assert set(record) == {
        "messageId",
        "receiptHandle",
        "body",
        "attributes",
        "messageAttributes",
        "md5OfBody",
        "eventSource",
        "eventSourceARN",
        "awsRegion",
    }
    assert record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"] == arn
    assert record["awsRegion"] == REGION
    assert record["md5OfBody"] == hashlib.md5(b'{"Records": []}').hexdigest()  # noqa: S324 - SQS's checksum
    assert record["attributes"]["ApproximateReceiveCount"] == "1"
    assert record["messageAttributes"]["kind"]["stringValue"] == "test"
    assert record["messageAttributes"]["kind"]["dataType"] == "String"
    assert context.function_name == "IngestFunction"
    assert context.invoked_function_arn.endswith(":function:IngestFunction")
    assert 0 < context.get_remaining_time_in_millis() <= 60_000
    assert context.aws_request_id
    assert _count(sqs, url) == 0


def test_partial_batch_failure_keeps_only_the_failed_message_and_retries_it(sqs: Any) -> None:
    url, arn, dlq = _queue(sqs, "partial")
    for body in ("good-1", "bad", "good-2"):
        sqs.send_message(QueueUrl=url, MessageBody=body)
    calls: list[list[str]] = []

    def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        calls.append([r["body"] for r in event["Records"]])
        failed = [r["messageId"] for r in event["Records"] if r["body"] == "bad"]
        return {"batchItemFailures": [{"itemIdentifier": m} for m in failed]}

    dispatcher = Dispatcher([_route(url, arn, handler)], sqs=sqs, region=REGION, retry_delay=1, wait_time=0)
    route = dispatcher.routes[0]
    total = 0
    while total < 3:
        total += dispatcher.poll_once(route)
    assert sorted(b for batch in calls for b in batch) == ["bad", "good-1", "good-2"]
    assert _count(sqs, url) == 1  # only "bad" stays
    time.sleep(1.1)  # the dispatcher's short visibility: retried within seconds, not after 360 s
    assert dispatcher.poll_once(route) == 1
    assert calls[-1] == ["bad"]
    assert dispatcher.stats["IngestFunction:Src"].messages_failed == 2
    assert _count(sqs, dlq) == 0


def test_handler_exception_leaves_the_batch_and_the_dlq_gets_it_after_max_receive_count(sqs: Any) -> None:
    url, arn, dlq = _queue(sqs, "crash", max_receive=2)
    sqs.send_message(QueueUrl=url, MessageBody="poison")
    attempts: list[str] = []

    def handler(event: dict[str, Any], context: LambdaContext) -> None:
        attempts.append(event["Records"][0]["attributes"]["ApproximateReceiveCount"])
        raise RuntimeError("boom")

    dispatcher = Dispatcher([_route(url, arn, handler)], sqs=sqs, region=REGION, retry_delay=1, wait_time=0)
    route = dispatcher.routes[0]
    deadline = time.monotonic() + 10
    while _count(sqs, dlq) == 0 and time.monotonic() < deadline:
        dispatcher.poll_once(route)
        time.sleep(0.2)
    assert attempts == ["1", "2"]  # maxReceiveCount 2: two invocations, then the DLQ
    assert _count(sqs, url) == 0
    moved = sqs.receive_message(QueueUrl=dlq)["Messages"]
    assert moved[0]["Body"] == "poison"
    assert dispatcher.stats["IngestFunction:Src"].errors == 2
    assert "RuntimeError: boom" in dispatcher.stats["IngestFunction:Src"].last_error


def test_unknown_item_identifier_fails_the_whole_batch_as_lambda_does(sqs: Any) -> None:
    url, arn, _ = _queue(sqs, "unknown")
    sqs.send_message(QueueUrl=url, MessageBody="a")
    sqs.send_message(QueueUrl=url, MessageBody="b")

    def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        return {"batchItemFailures": [{"itemIdentifier": ""}]}

    dispatcher = Dispatcher([_route(url, arn, handler)], sqs=sqs, region=REGION, wait_time=0)
    while dispatcher.stats["IngestFunction:Src"].messages_failed < 2:
        dispatcher.poll_once(dispatcher.routes[0])
    assert _count(sqs, url) == 2


def test_rule_mirror_passes_the_eventbridge_event_one_at_a_time(sqs: Any) -> None:
    url, arn, dlq = _queue(sqs, "mirror", max_receive=1)
    events = [
        {"version": "0", "id": str(i), "source": "trashsorter", "detail-type": "Dataset Ready", "detail": {}}
        for i in range(2)
    ]
    for event in events:
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps(event))
    sqs.send_message(QueueUrl=url, MessageBody="not json")
    received: list[dict[str, Any]] = []

    def handler(event: dict[str, Any], context: LambdaContext) -> None:
        received.append(event)

    dispatcher = Dispatcher(
        [_route(url, arn, handler, kind="rule", partial=False)],
        sqs=sqs,
        region=REGION,
        retry_delay=0,
        wait_time=0,
    )
    route = dispatcher.routes[0]
    deadline = time.monotonic() + 5
    while _count(sqs, dlq) == 0 and time.monotonic() < deadline:
        dispatcher.poll_once(route)
    assert sorted(e["id"] for e in received) == ["0", "1"]
    assert sqs.receive_message(QueueUrl=dlq)["Messages"][0]["Body"] == "not json"


def test_threads_dispatch_until_stopped(sqs: Any) -> None:
    url, arn, _ = _queue(sqs, "threads")
    done: list[str] = []
    dispatcher = Dispatcher(
        [_route(url, arn, lambda e, c: done.extend(r["body"] for r in e["Records"]))],
        sqs=sqs,
        region=REGION,
        wait_time=1,
    )
    dispatcher.start()
    try:
        for i in range(5):
            sqs.send_message(QueueUrl=url, MessageBody=str(i))
        assert dispatcher.wait_idle(timeout=10, settle=0.2)
    finally:
        dispatcher.stop(timeout=5)
    assert sorted(done) == ["0", "1", "2", "3", "4"]
    assert not dispatcher.running


def test_lambda_record_keeps_binary_attributes() -> None:
    record = lambda_sqs_record(
        {
            "MessageId": "m",
            "ReceiptHandle": "r",
            "Body": "b",
            "MD5OfBody": "x",
            "Attributes": {"ApproximateReceiveCount": "3"},
            "MessageAttributes": {"bin": {"DataType": "Binary", "BinaryValue": b"\x00"}},
        },
        queue_arn="arn:aws:sqs:us-east-1:123456789012:q",
        region=REGION,
    )
    assert record["messageAttributes"]["bin"] == {
        "binaryValue": b"\x00",
        "stringListValues": [],
        "binaryListValues": [],
        "dataType": "Binary",
    }
    assert record["attributes"] == {"ApproximateReceiveCount": "3"}
