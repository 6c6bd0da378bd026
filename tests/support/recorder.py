"""An in-memory publisher for the edge app's tests: every (topic, payload) and its QoS, in order."""

from __future__ import annotations

from typing import Any


class Recorder:
    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.qos: list[int] = []

    def publish(self, topic: str, payload: dict[str, Any], qos: int = 0) -> None:
        self.messages.append((topic, payload))
        self.qos.append(qos)

    def close(self) -> None:
        return None

    def on(self, suffix: str) -> list[dict[str, Any]]:
        return [payload for topic, payload in self.messages if topic.endswith(suffix)]
