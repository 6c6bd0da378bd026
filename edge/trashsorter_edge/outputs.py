"""Where results go: stdout (JSON lines), Greengrass IPC (AWS IoT Core through the nucleus, and the core's
local pub/sub), or an AWS IoT data endpoint (boto3 ``iot-data``). Every publisher has
``publish(topic, payload, qos=0)`` (to AWS IoT Core) and ``close()``; those that reach the core's local
pub/sub also have ``publish_local(topic, payload)``.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any, Protocol, TextIO


class PublishError(RuntimeError):
    """The output cannot be reached or set up."""


class Publisher(Protocol):
    def publish(self, topic: str, payload: dict[str, Any], qos: int = 0) -> None: ...

    def close(self) -> None: ...


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


class StdoutPublisher:
    """``--output jsonl``: results (the ``infer`` topic) as one JSON line each on stdout; every other
    message (status, actuator) as ``{"topic", "payload"}`` on stderr, so stdout stays pure results."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None, results_suffix: str = "/infer"):
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.results_suffix = results_suffix
        self._lock = threading.Lock()

    def publish(self, topic: str, payload: dict[str, Any], qos: int = 0) -> None:
        with self._lock:
            if topic.endswith(self.results_suffix):
                self.out.write(json.dumps(payload, sort_keys=True) + "\n")
                self.out.flush()
            else:
                self.err.write(json.dumps({"topic": topic, "payload": payload}, sort_keys=True) + "\n")
                self.err.flush()

    def publish_local(self, topic: str, payload: dict[str, Any]) -> None:
        """The local topic's message on stderr too, marked ``"local": true``."""
        with self._lock:
            line = {"topic": topic, "payload": payload, "local": True}
            self.err.write(json.dumps(line, sort_keys=True) + "\n")
            self.err.flush()

    def close(self) -> None:
        return None


class GreengrassIpcPublisher:
    """``--output ggipc``: through the Greengrass v2 nucleus (awsiotsdk, imported only here):
    ``PublishToIoTCore`` (AWS IoT Core; QoS 1 messages wait in the nucleus's spooler while offline) and
    ``PublishToTopic`` (the core's local pub/sub: other components on the same core, no cloud needed). The
    component's recipe grants both operations on its own topics only."""

    def __init__(self, client: Any = None, messages: Any = None) -> None:
        if client is None or messages is None:
            try:
                from awsiot.greengrasscoreipc import model
                from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
            except ImportError as exc:
                raise PublishError(
                    "--output ggipc needs the AWS IoT Device SDK v2 (pip install awsiotsdk) and must run "
                    "inside a Greengrass v2 component (the nucleus provides the IPC socket)"
                ) from exc
            messages = messages or model
            if client is None:
                try:
                    client = GreengrassCoreIPCClientV2()
                except Exception as exc:
                    raise PublishError(f"cannot connect to the Greengrass nucleus IPC: {exc}") from exc
        self.client = client
        self.messages = messages  # awsiot.greengrasscoreipc.model (PublishMessage, JsonMessage)

    def publish(self, topic: str, payload: dict[str, Any], qos: int = 0) -> None:
        self.client.publish_to_iot_core(topic_name=topic, qos=str(qos), payload=encode(payload))

    def publish_local(self, topic: str, payload: dict[str, Any]) -> None:
        message = self.messages.PublishMessage(json_message=self.messages.JsonMessage(message=payload))
        self.client.publish_to_topic(topic=topic, publish_message=message)

    def close(self) -> None:
        self.client.close()


class IotDataPublisher:
    """``--output iot-data``: boto3 ``iot-data`` ``Publish`` (an AWS IoT data endpoint, or the local stack's
    with ``--endpoint-url``/``AWS_ENDPOINT_URL``)."""

    def __init__(self, endpoint_url: str | None = None, client: Any = None) -> None:
        if client is None:
            try:
                import boto3
            except ImportError as exc:
                raise PublishError("--output iot-data needs boto3 (pip install boto3)") from exc
            client = boto3.client("iot-data", endpoint_url=endpoint_url or None)
        self.client = client

    def publish(self, topic: str, payload: dict[str, Any], qos: int = 0) -> None:
        self.client.publish(topic=topic, qos=qos, payload=encode(payload))

    def close(self) -> None:
        return None


class FanOut:
    """Several publishers at once (e.g. stdout and iot-data); one that fails does not stop the others
    (the first error is raised after all were tried)."""

    def __init__(self, publishers: list[Publisher]) -> None:
        self.publishers = publishers

    def _each(self, send: Any) -> None:
        errors = []
        for publisher in self.publishers:
            try:
                send(publisher)
            except Exception as exc:  # noqa: BLE001 - re-raised below, after the others were tried
                errors.append(exc)
        if errors:
            raise errors[0]

    def publish(self, topic: str, payload: dict[str, Any], qos: int = 0) -> None:
        self._each(lambda publisher: publisher.publish(topic, payload, qos=qos))

    def publish_local(self, topic: str, payload: dict[str, Any]) -> None:
        local = [p for p in self.publishers if hasattr(p, "publish_local")]
        self._each(lambda publisher: publisher.publish_local(topic, payload) if publisher in local else None)

    def close(self) -> None:
        for publisher in self.publishers:
            publisher.close()


def make_publisher(outputs: list[str], *, endpoint_url: str | None = None) -> Publisher:
    made: list[Publisher] = []
    for name in outputs:
        if name in ("jsonl", "stdout"):
            made.append(StdoutPublisher())
        elif name == "ggipc":
            made.append(GreengrassIpcPublisher())
        elif name == "iot-data":
            made.append(IotDataPublisher(endpoint_url))
        else:
            raise PublishError(f"unknown output {name!r} (jsonl, ggipc, iot-data)")
    return made[0] if len(made) == 1 else FanOut(made)
