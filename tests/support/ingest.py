"""The ingest flow driven for real on the moto stack (S3 put -> notification -> SQS -> handler)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from tests.support.stack import REGION, StackHandle
from trashsorter.catalogue import Catalogue
from trashsorter.settings import IngestSettings
from trashsorter_cli.local.dispatcher import make_context

LABELS = ("Compost", "Landfill", "Recycling")


class Ingest:
    """Drives the real flow: S3 puts/deletes, queue receive, handler call, queue delete."""

    def __init__(self, stack: StackHandle) -> None:
        self.stack = stack
        self.s3 = stack.client("s3")
        self.sqs = stack.client("sqs")
        self.events = stack.client("events")
        self.bucket = stack.outputs["ImagesBucketName"]
        self.queue_url = stack.outputs["IngestQueueUrl"]
        self.queue_arn = self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        self.env = stack.function_env("IngestFunction")
        self.settings = IngestSettings.from_env(self.env)
        self.app = stack.load_handler("IngestFunction")
        self.catalogue = Catalogue(self.settings.table_name, ddb=stack.client("dynamodb"))
        self.ready_queue = self._route_dataset_ready()
        # Configuring the notification makes S3 send an s3:TestEvent first; it must be consumed quietly.
        self.initial = self.drain()

    def _route_dataset_ready(self) -> str:
        """An SQS queue subscribed to "Dataset Ready" on the stack bus, to count publications."""
        url = self.sqs.create_queue(QueueName=f"ready-{uuid.uuid4().hex[:8]}")["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        bus = self.settings.event_bus_name
        self.events.put_rule(
            Name="count-dataset-ready",
            EventBusName=bus,
            EventPattern=json.dumps({"source": ["trashsorter"], "detail-type": ["Dataset Ready"]}),
        )
        self.events.put_targets(
            Rule="count-dataset-ready", EventBusName=bus, Targets=[{"Id": "q", "Arn": arn}]
        )
        return str(url)

    def put(self, key: str, data: bytes) -> str:
        return str(self.s3.put_object(Bucket=self.bucket, Key=key, Body=data).get("VersionId", ""))

    def delete_permanently(self, key: str) -> None:
        """Delete every version (moto notifies ObjectRemoved:Delete when the last one goes)."""
        versions = self.s3.list_object_versions(Bucket=self.bucket, Prefix=key).get("Versions", [])
        for v in versions:
            if v["Key"] == key:
                self.s3.delete_object(Bucket=self.bucket, Key=key, VersionId=v["VersionId"])

    def receive_all(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        while True:
            got = self.sqs.receive_message(
                QueueUrl=self.queue_url, MaxNumberOfMessages=10, VisibilityTimeout=0, AttributeNames=["All"]
            ).get("Messages", [])
            if not got:
                return messages
            messages.extend(got)
            for m in got:  # hide them until we decide (the handler's response says what to keep)
                self.sqs.change_message_visibility(
                    QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=300
                )

    def lambda_event(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "Records": [
                {
                    "messageId": m["MessageId"],
                    "receiptHandle": m["ReceiptHandle"],
                    "body": m["Body"],
                    "attributes": m.get("Attributes", {}),
                    "messageAttributes": {},
                    "md5OfBody": m["MD5OfBody"],
                    "eventSource": "aws:sqs",
                    "eventSourceARN": self.queue_arn,
                    "awsRegion": self.stack.region,
                }
                for m in messages
            ]
        }

    def invoke(self, event: dict[str, Any]) -> dict[str, Any]:
        return dict(self.app.handler(event, make_context("IngestFunction", region=REGION, memory_mb=2048)))

    def drain(self) -> dict[str, Any]:
        """Receive what the bucket notified, run the handler in batches of 10, delete what succeeded."""
        messages = self.receive_all()
        failures: list[str] = []
        for i in range(0, len(messages), 10):
            batch = messages[i : i + 10]
            response = self.invoke(self.lambda_event(batch))
            failed = {f["itemIdentifier"] for f in response["batchItemFailures"]}
            failures.extend(failed)
            for m in batch:
                if m["MessageId"] not in failed:
                    self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"])
                else:  # as if the visibility timeout expired: SQS delivers it again
                    self.sqs.change_message_visibility(
                        QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0
                    )
        return {"messages": len(messages), "batchItemFailures": failures}

    def counts(self) -> dict[str, dict[str, int]]:
        return self.catalogue.label_counts(LABELS)

    def accepted(self) -> dict[str, int]:
        return {label: c["accepted"] for label, c in self.counts().items()}

    def status(self, key: str) -> str | None:
        rec = self.catalogue.get_image(key)
        return None if rec is None else str(rec["status"])

    def dataset_ready_events(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            got = self.sqs.receive_message(QueueUrl=self.ready_queue, MaxNumberOfMessages=10).get(
                "Messages", []
            )
            if not got:
                return out
            for m in got:
                out.append(json.loads(m["Body"]))
                self.sqs.delete_message(QueueUrl=self.ready_queue, ReceiptHandle=m["ReceiptHandle"])

    def tags(self, key: str) -> dict[str, str]:
        tagset = self.s3.get_object_tagging(Bucket=self.bucket, Key=key)["TagSet"]
        return {t["Key"]: t["Value"] for t in tagset}

    def snapshot(self) -> list[dict[str, Any]]:
        """Every catalogue item except timestamps (for 'replay changes nothing')."""
        items = self.stack.client("dynamodb").scan(TableName=self.settings.table_name)["Items"]
        return sorted(
            ({k: v for k, v in i.items() if k not in ("updated_at", "fired_at")} for i in items),
            key=lambda i: (i["pk"]["S"], i["sk"]["S"]),
        )
