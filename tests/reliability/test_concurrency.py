"""1,000 uploads ingested by 8 parallel workers against a local endpoint, with duplicates and conflicts.

A ThreadedMotoServer on a free port carries the stack from template.yaml (``deploy_stack(endpoint_url=...)``);
S3 delivers the notifications to the real ingest queue; 8 workers (each with its own cold-started copy of
functions/ingest/app.py, like 8 Lambda instances) receive batches from that queue and call the handler. The
"Dataset Ready" events are routed to an SQS queue and counted: exactly one when the threshold is crossed.
"""

from __future__ import annotations

import io
import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from botocore.config import Config
from PIL import Image

from tests.support.stack import REGION
from trashsorter import aws
from trashsorter.catalogue import Catalogue
from trashsorter_cli.local import moto_patches
from trashsorter_cli.local.dispatcher import load_module, make_context
from trashsorter_cli.local.server import free_port
from trashsorter_cli.local.stack import LocalStack, deploy_stack

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.slow,
]

LABELS = ("Compost", "Landfill", "Recycling")
PER_LABEL = 300  # unique images per label
DUPLICATES = 60  # same bytes, same label, another key
CONFLICTS = 40  # same bytes as an original, another label: both become "conflict"
WORKERS = 8


def unique_jpeg(index: int, side: int = 64) -> bytes:
    pixels = random.Random(index).randbytes(side * side * 3)
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), pixels).save(out, "JPEG", quality=80)
    return out.getvalue()


@dataclass
class LocalEndpoint:
    url: str
    session: boto3.session.Session
    stack: LocalStack

    def client(self, service: str) -> Any:
        return self.session.client(
            service,
            endpoint_url=self.url,
            config=Config(max_pool_connections=32, retries={"max_attempts": 8}),
        )


@pytest.fixture
def endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalEndpoint]:
    from moto.server import ThreadedMotoServer

    # 1,000 uploads through a moto server, as `local up` runs it: the lock and the local stack's speed patches
    # (without them every transaction deep-copies the whole table), removed again for the tests after this.
    moto_patches.install(speed=True)

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    monkeypatch.setenv("POWERTOOLS_LOG_LEVEL", "WARNING")
    aws.reset_clients()
    try:
        session = boto3.session.Session(region_name="us-east-1")
        stack = deploy_stack(
            session,
            stack_name=f"conc-{uuid.uuid4().hex[:6]}",
            overrides={
                "MinImagesPerLabel": "250",
                "MinNewImages": "0",
                "IngestSettleSeconds": "0",
            },  # no settle timer: the rule publishes at once
            endpoint_url=url,
        )
        handle = LocalEndpoint(url, session, stack)
        yield handle
    finally:
        aws.reset_clients()
        server.stop()
        moto_patches.remove_speed_patches()


def load_ingest_handler(stack: LocalStack, index: int) -> ModuleType:
    env = {**stack.function_env("IngestFunction"), "POWERTOOLS_LOG_LEVEL": "WARNING"}
    return load_module(stack.functions["IngestFunction"].module_path, env, label=f"ingest{index}")


def route_dataset_ready(endpoint: LocalEndpoint, bus: str) -> str:
    sqs, events = endpoint.client("sqs"), endpoint.client("events")
    url = sqs.create_queue(QueueName=f"ready-{uuid.uuid4().hex[:6]}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(
        Name="count-ready",
        EventBusName=bus,
        EventPattern=json.dumps({"source": ["trashsorter"], "detail-type": ["Dataset Ready"]}),
    )
    events.put_targets(Rule="count-ready", EventBusName=bus, Targets=[{"Id": "q", "Arn": arn}])
    return str(url)


def plan_uploads() -> tuple[list[tuple[str, bytes]], dict[str, Counter[str]]]:
    uploads: list[tuple[str, bytes]] = []
    originals: dict[str, list[tuple[str, bytes]]] = {label: [] for label in LABELS}
    for n, label in enumerate(LABELS):
        for i in range(PER_LABEL):
            item = (f"images/{label}/u{i:04d}.jpg", unique_jpeg(n * 10_000 + i))
            originals[label].append(item)
            uploads.append(item)
    expected = {label: Counter(accepted=PER_LABEL) for label in LABELS}
    for d in range(DUPLICATES):
        label = LABELS[d % 3]
        _key, data = originals[label][d]  # originals 0..59 get a duplicate
        uploads.append((f"images/{label}/dup/{d:03d}.jpg", data))
        expected[label]["duplicate"] += 1
    for c in range(CONFLICTS):
        label = LABELS[c % 3]
        other = LABELS[(c + 1) % 3]
        _key, data = originals[label][100 + c]  # originals 100..139: disjoint from the duplicated ones
        uploads.append((f"images/{other}/conflict/{c:03d}.jpg", data))
        expected[label]["accepted"] -= 1
        expected[label]["conflict"] += 1
        expected[other]["conflict"] += 1
    random.Random(7).shuffle(uploads)
    return uploads, expected


def test_thousand_uploads_eight_workers_exact_counts_and_one_training_start(endpoint: LocalEndpoint) -> None:
    stack = endpoint.stack
    env = stack.function_env("IngestFunction")
    bucket, queue_url = stack.outputs["ImagesBucketName"], stack.outputs["IngestQueueUrl"]
    ready_url = route_dataset_ready(endpoint, env["EVENT_BUS_NAME"])
    uploads, expected = plan_uploads()
    assert len(uploads) >= 1000

    s3 = endpoint.client("s3")
    started = time.perf_counter()
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(lambda item: s3.put_object(Bucket=bucket, Key=item[0], Body=item[1]), uploads))

    handlers = [load_ingest_handler(stack, i) for i in range(WORKERS)]
    sqs = endpoint.client("sqs")
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    processed: Counter[str] = Counter()
    failures: list[str] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        handler = handlers[index]
        idle = 0
        while idle < 3:
            got = sqs.receive_message(
                QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=120
            ).get("Messages", [])
            if not got:
                idle += 1
                continue
            idle = 0
            event = {
                "Records": [
                    {
                        "messageId": m["MessageId"],
                        "receiptHandle": m["ReceiptHandle"],
                        "body": m["Body"],
                        "attributes": {"ApproximateReceiveCount": "1"},
                        "messageAttributes": {},
                        "md5OfBody": m["MD5OfBody"],
                        "eventSource": "aws:sqs",
                        "eventSourceARN": queue_arn,
                        "awsRegion": "us-east-1",
                    }
                    for m in got
                ]
            }
            try:
                response = handler.handler(
                    event, make_context("IngestFunction", region=REGION, memory_mb=2048)
                )
                failed = {f["itemIdentifier"] for f in response.get("batchItemFailures", [])}
            except BatchProcessingError:  # the whole batch failed: Lambda retries every message of it
                failed = {m["MessageId"] for m in got}
            done = [m for m in got if m["MessageId"] not in failed]
            for m in got:
                if m["MessageId"] in failed:
                    # make it visible again at once (a Lambda would wait for the visibility timeout)
                    sqs.change_message_visibility(
                        QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0
                    )
            if done:
                sqs.delete_message_batch(
                    QueueUrl=queue_url,
                    Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)],
                )
            with lock:
                processed["messages"] += len(done)
                processed["retried"] += len(failed)
                failures.extend(sorted(failed))

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(worker, range(WORKERS)))
    elapsed = time.perf_counter() - started

    catalogue = Catalogue(env["TABLE_NAME"], ddb=endpoint.client("dynamodb"))
    counts = catalogue.label_counts(LABELS)
    for label in LABELS:
        got = {k: v for k, v in counts[label].items() if v}
        assert got == dict(expected[label]), (label, got, dict(expected[label]))
    by_status = Counter(str(r["status"]) for r in catalogue.iter_images())
    assert sum(by_status.values()) == len(uploads)
    assert by_status == Counter(
        accepted=3 * PER_LABEL - CONFLICTS, duplicate=DUPLICATES, conflict=2 * CONFLICTS
    ), by_status
    assert catalogue.state()["accepted_seq"] >= 3 * PER_LABEL - CONFLICTS

    ready = sqs.receive_message(QueueUrl=ready_url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
        "Messages", []
    )
    assert len(ready) == 1, f"{len(ready)} Dataset Ready events"
    detail = json.loads(ready[0]["Body"])["detail"]
    assert detail["reason"] == "threshold"
    assert sqs.receive_message(QueueUrl=ready_url, WaitTimeSeconds=1).get("Messages", []) == []
    dlq = stack.outputs["IngestDLQUrl"]
    assert sqs.receive_message(QueueUrl=dlq, WaitTimeSeconds=0).get("Messages", []) == []
    assert processed["messages"] >= len(uploads)
    print(f"{len(uploads)} uploads, {WORKERS} workers, {elapsed:.1f} s, retried {processed['retried']}")
