"""The training world shared by the start-training tests: real photos ingested into the template's stack,
notices and Dataset Ready routed to queues, and the one call the handler makes."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from tests.support.stack import SAMPLES_DIR, StackHandle
from trashsorter import training
from trashsorter.catalogue import Catalogue
from trashsorter.clients import Clients
from trashsorter.events import DatasetReady
from trashsorter.ingest import rebuild_catalogue
from trashsorter.runs import get_lock
from trashsorter.settings import IngestSettings, TrainingSettings
from trashsorter.training import start_training

MAPPING = {
    "Compost": ["cardboard", "paper"],
    "Landfill": ["plastic", "trash"],
    "Recycling": ["glass", "metal"],
}


def photos(material: str) -> list[Path]:
    return sorted((SAMPLES_DIR / material).glob("*.jpg"))


class World:
    def __init__(self, stack: StackHandle) -> None:
        self.stack = stack
        self.s3 = stack.client("s3")
        self.ddb = stack.client("dynamodb")
        self.sm = stack.client("sagemaker")
        self.sqs = stack.client("sqs")
        self.bucket = stack.outputs["ImagesBucketName"]
        self.env = stack.function_env("StartTrainingFunction")
        self.settings = TrainingSettings.from_env(self.env)
        self.ingest_settings = IngestSettings.from_env(stack.function_env("IngestFunction"))
        self.table = self.settings.table_name
        self.catalogue = Catalogue(self.table, ddb=self.ddb)
        self.notices = self._subscribe_notices()
        self.ready = self._route_dataset_ready()

    def _queue(self) -> tuple[str, str]:
        url = self.sqs.create_queue(QueueName=f"t-{uuid.uuid4().hex[:10]}")["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        return str(url), str(arn)

    def _subscribe_notices(self) -> str:
        url, arn = self._queue()
        self.stack.client("sns").subscribe(TopicArn=self.settings.topic_arn, Protocol="sqs", Endpoint=arn)
        return url

    def _route_dataset_ready(self) -> str:
        url, arn = self._queue()
        events = self.stack.client("events")
        bus = self.settings.event_bus_name
        pattern = {"source": ["trashsorter"], "detail-type": ["Dataset Ready"]}
        events.put_rule(Name="t-ready", EventBusName=bus, EventPattern=json.dumps(pattern))
        events.put_targets(Rule="t-ready", EventBusName=bus, Targets=[{"Id": "q", "Arn": arn}])
        return url

    def drain(self, url: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            got = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
            msgs = got.get("Messages", [])
            if not msgs:
                return out
            for m in msgs:
                out.append(json.loads(m["Body"]))
                self.sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])

    def upload(self, per_material: int, start: int = 0) -> None:
        for label, materials in MAPPING.items():
            for material in materials:
                for path in photos(material)[start : start + per_material]:
                    self.s3.put_object(Bucket=self.bucket, Key=f"images/{label}/{material}/{path.name}",
                                       Body=path.read_bytes())  # fmt: skip

    def put(self, key: str, data: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)

    def ingest(self) -> None:
        rebuild_catalogue(self.ingest_settings, s3=self.s3, ddb=self.ddb, events=self.stack.client("events"))
        self.drain(self.ready)  # threshold publications of the ingest step are not under test here

    def text(self, key: str) -> str:
        return str(self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read().decode("utf-8"))

    def lock(self) -> dict[str, Any]:
        return get_lock(self.table, ddb=self.ddb)

    def jobs(self) -> list[str]:
        return [j["TrainingJobName"] for j in self.sm.list_training_jobs()["TrainingJobSummaries"]]

    def start(self, reason: str = "threshold", sagemaker: Any = None, *, ready: DatasetReady | None = None
              ) -> training.StartOutcome:  # fmt: skip
        clients = Clients(ddb=self.ddb, s3=self.s3, sagemaker=sagemaker, sns=self.stack.client("sns"),
                          events=self.stack.client("events"))  # fmt: skip
        return start_training(ready or DatasetReady(reason=reason), self.settings, clients)
