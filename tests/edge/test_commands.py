"""Sort commands reach a local actuator when IoT Core cannot be reached: the command goes to the core's
local pub/sub topic (Greengrass IPC ``PublishToTopic``) whatever happens to the IoT Core publish (QoS 1)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from tests.support.tiny_model import TinyModel
from trashsorter_edge.app import LOCAL_SORT_TOPIC, EdgeApp, Settings
from trashsorter_edge.outputs import FanOut, GreengrassIpcPublisher, IotDataPublisher
from trashsorter_edge.sources import open_source

pytestmark = pytest.mark.slow


@dataclass
class JsonMessage:  # awsiot.greengrasscoreipc.model.JsonMessage's shape
    message: dict[str, Any]


@dataclass
class PublishMessage:  # awsiot.greengrasscoreipc.model.PublishMessage's shape
    json_message: JsonMessage


class OfflineNucleus:
    """Stand-in for GreengrassCoreIPCClientV2 (a nucleus cannot run here): the local pub/sub delivers to
    its subscribers, the IoT Core publish fails as it does when the core has no connection."""

    PublishMessage = PublishMessage
    JsonMessage = JsonMessage

    def __init__(self) -> None:
        self.local: list[tuple[str, dict[str, Any]]] = []
        self.iot_core_tries: list[tuple[str, str]] = []

    def publish_to_topic(self, *, topic: str, publish_message: PublishMessage) -> None:
        self.local.append((topic, publish_message.json_message.message))

    def publish_to_iot_core(self, *, topic_name: str, qos: str, payload: bytes) -> None:
        self.iot_core_tries.append((topic_name, qos))
        raise TimeoutError("no connection to AWS IoT Core")

    def close(self) -> None:
        return None


def test_commands_reach_the_local_topic_with_iot_core_unreachable(
    tiny_model: TinyModel, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in tiny_model.unseen:
        shutil.copy(path, photos / path.name)
    nucleus = OfflineNucleus()
    unreachable = boto3.client(  # a real client to an address where nothing listens
        "iot-data",
        region_name="us-east-1",
        endpoint_url="http://127.0.0.1:9",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1),
    )
    publisher = FanOut([IotDataPublisher(client=unreachable), GreengrassIpcPublisher(nucleus, nucleus)])
    app = EdgeApp(tiny_model.model_dir, publisher, Settings(thing="cam-3", threshold=0.0))
    counts = app.run(open_source(str(photos), once=True))

    assert counts["frames"] == len(tiny_model.unseen) == counts["commands"]
    assert [topic for topic, _ in nucleus.local] == [LOCAL_SORT_TOPIC] * counts["commands"]
    assert [m for _, m in nucleus.local] == [{"object": c["object"]} for c in app.commands]
    assert ("trashsorter/cam-3/object", "1") in nucleus.iot_core_tries  # QoS 1 on IoT Core
    assert counts["publish_errors"] > 0  # IoT Core's failures are counted, not fatal
