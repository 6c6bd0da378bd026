"""The edge app: frames from a source -> THE preprocessing -> ONNX -> results published.

Every result is ``{model_id, label, confidence, top_k, unsure, timestamp, source}`` (plus ``image`` - the
file name or frame number). ``unsure`` means ``confidence < threshold``. Topics (``thing`` substituted):

* ``trashsorter/<thing>/infer`` - every result (from a camera/stream at most ``publish_rate`` per second);
* ``trashsorter/<thing>/status`` - ``{"status": "loading" | "loaded" | "error", ...}``;
* the actuator topic (the recipe's Raspberry Pi topic) - ``{"object": <label>}`` when the STABLE label
  changes: the same confident label ``debounce`` frames in a row; never sent while unsure.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trashsorter_edge.model import ModelHandle
from trashsorter_edge.outputs import Publisher
from trashsorter_edge.preprocessing import UndecodableImage
from trashsorter_edge.sources import Frame

FrameHook = Callable[[Frame, dict[str, Any]], None]


@dataclass(frozen=True)
class Topics:
    infer: str
    status: str
    actuator: str

    @classmethod
    def for_thing(
        cls,
        thing: str,
        infer: str = "trashsorter/<thing>/infer",
        status: str = "trashsorter/<thing>/status",
        actuator: str = "trashsorter/<thing>/object",
    ) -> Topics:
        """``<thing>`` in a topic is replaced by the thing name."""
        return cls(*(topic.replace("<thing>", thing) for topic in (infer, status, actuator)))


@dataclass
class Settings:
    thing: str = "local"
    threshold: float = 0.6
    top_k: int = 3
    publish_rate: float = 2.0  # infer messages per second from continuous sources; 0 = every frame
    debounce: int = 5


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Debouncer:
    """The stable label: the same confident label ``frames`` times in a row; returns it when it changes."""

    def __init__(self, frames: int) -> None:
        self.frames = max(1, frames)
        self.stable: str | None = None
        self._candidate: str | None = None
        self._count = 0

    def update(self, label: str, unsure: bool) -> str | None:
        if unsure:
            self._candidate, self._count = None, 0
            return None
        if label == self._candidate:
            self._count += 1
        else:
            self._candidate, self._count = label, 1
        if self._count >= self.frames and label != self.stable:
            self.stable = label
            return label
        return None


class EdgeApp:
    """``EdgeApp(model_dir, publisher, settings, topics).run(source)``; hooks see every (frame, result)."""

    def __init__(
        self,
        model_dir: Path | str,
        publisher: Publisher,
        settings: Settings,
        topics: Topics | None = None,
        hooks: Iterable[FrameHook] = (),
        model_id: str | None = None,
    ) -> None:
        self.publisher = publisher
        self.settings = settings
        self.topics = topics or Topics.for_thing(settings.thing)
        self.handle = ModelHandle(
            model_dir, on_status=self.status, model_id=model_id
        )  # publishes loading/loaded/error
        self.hooks = list(hooks)
        self.debouncer = Debouncer(settings.debounce)
        self.latest: dict[str, Any] | None = None
        self.counts = {"frames": 0, "published": 0, "errors": 0}
        self._last_publish = float("-inf")

    def status(self, message: dict[str, Any]) -> None:
        self.publisher.publish(
            self.topics.status, {**message, "thing": self.settings.thing, "timestamp": utc_now()}
        )

    def classify(self, frame: Frame) -> dict[str, Any]:
        model = self.handle.current()
        prediction = model.predict(frame.image)
        ranked = prediction.ranked
        label, confidence = ranked[0]
        return {
            "model_id": model.model_id,
            "label": label,
            "confidence": confidence,
            "top_k": [{"label": name, "confidence": value} for name, value in ranked[: self.settings.top_k]],
            "unsure": confidence < self.settings.threshold,
            "timestamp": utc_now(),
            "source": frame.source,
            "image": frame.name,
        }

    def handle_frame(self, frame: Frame, *, continuous: bool) -> dict[str, Any] | None:
        self.counts["frames"] += 1
        try:
            result = self.classify(frame)
        except UndecodableImage as exc:
            self.counts["errors"] += 1
            self.status({"status": "error", "error": str(exc), "image": frame.name})
            return None
        self.latest = result
        now = time.monotonic()
        rate = self.settings.publish_rate
        if not continuous or rate <= 0 or now - self._last_publish >= 1.0 / rate:
            self._last_publish = now
            self.publisher.publish(self.topics.infer, result)
            self.counts["published"] += 1
        changed = self.debouncer.update(result["label"], result["unsure"])
        if changed is not None:
            self.publisher.publish(self.topics.actuator, {"object": changed})
        for hook in self.hooks:
            hook(frame, result)
        return result

    def run(self, source: Any) -> dict[str, int]:
        """Classify every frame the source yields (until it ends or :meth:`stop`)."""
        self._source = source
        continuous = bool(getattr(source, "continuous", False))
        for frame in source:
            self.handle_frame(frame, continuous=continuous)
        for error in getattr(source, "errors", []):
            self.counts["errors"] += 1
            self.status({"status": "error", "error": error})
        return dict(self.counts)

    def stop(self) -> None:
        source = getattr(self, "_source", None)
        if source is not None:
            source.stop()
