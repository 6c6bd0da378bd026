"""The edge app: frames from a source -> THE preprocessing -> ONNX -> results published.

Every result is ``{model_id, label, confidence, top_k, unsure, timestamp, source}`` (plus ``image`` - the
file name or frame number). ``unsure`` means ``confidence < threshold``. Topics (``thing`` substituted):

* ``trashsorter/<thing>/infer`` - every result (from a camera/stream at most ``publish_rate`` per second);
* ``trashsorter/<thing>/status`` - ``{"status": "loading" | "loaded" | "error" | "source" | "stopped", ...}``;
* the sort command ``{"object": <label>}``, once per item (:class:`SortRule`), to IoT Core at QoS 1 on the
  actuator topic (``trashsorter/<thing>/object``) AND to the Greengrass local pub/sub topic
  ``trashsorter/sort`` (an actuator component on the same core hears it offline).

A live source hands over only its newest frame; ``counts["skipped"]`` says how many frames were never
classified. A frame that cannot be classified is counted (``errors``) and reported on the status topic; the
loop goes on.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from trashsorter_edge.frames import normalise
from trashsorter_edge.model import ModelHandle
from trashsorter_edge.outputs import Publisher
from trashsorter_edge.preprocessing import UndecodableImage
from trashsorter_edge.scene import DEFAULT_THRESHOLD, SceneChange
from trashsorter_edge.sources import Frame, SourceError

LOCAL_SORT_TOPIC = "trashsorter/sort"  # Greengrass local pub/sub; fixed (the recipe's accessControl names it)

FrameHook = Callable[[Frame, dict[str, Any]], None]


@dataclass(frozen=True)
class Topics:
    infer: str
    status: str
    actuator: str
    local: str = LOCAL_SORT_TOPIC

    @classmethod
    def for_thing(
        cls,
        thing: str,
        infer: str = "trashsorter/<thing>/infer",
        status: str = "trashsorter/<thing>/status",
        actuator: str = "trashsorter/<thing>/object",
        local: str = LOCAL_SORT_TOPIC,
    ) -> Topics:
        """``<thing>`` in a topic is replaced by the thing name."""
        return cls(*(topic.replace("<thing>", thing) for topic in (infer, status, actuator, local)))


@dataclass
class Settings:
    thing: str = "local"
    threshold: float = 0.6
    top_k: int = 3
    publish_rate: float = 2.0  # infer messages per second from continuous sources; 0 = every frame
    debounce: int = 5  # SortRule.frames
    sort_ms: float = 500.0  # SortRule.ms
    sort_gap: int = 2  # SortRule.gap
    scene_change: float = DEFAULT_THRESHOLD  # SceneChange.threshold (grey levels); 0 = off
    recent_commands: int = 10  # sort commands the live view shows


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class SortRule:
    """Classifications -> sort commands, one per item in front of the camera.

    A live stream: an ITEM is what is in front of the camera between two boundaries: a scene change
    (``changed``: :class:`~trashsorter_edge.scene.SceneChange`), ``gap`` unsure frames in a row, or the
    start. Unsure frames never make an item and count for nothing; fewer than ``gap`` are a blip inside it.
    The item's command goes out once, when the item has lasted ``frames`` confident frames or ``ms``
    milliseconds (at least two frames), whichever comes first, with the item's MAJORITY label over its
    confident frames so far (a tie: the label with the higher mean confidence, then the one seen first). A
    label that held through the whole item is its majority; a label that flickers (A, B, A, B) still gets its
    one command. After that, the item gets another command only when a different label holds ``frames``
    frames or ``ms`` milliseconds in a row (a real change of object with no scene change); a run of a label
    already commanded for the item sends nothing. An item shorter than ``frames`` frames and ``ms`` (a
    glimpse) gets none. Files and folders (``separate=True``): every confident picture is an item of its own.
    So an item that lasts gets one command (a flickering one too: its majority label, never more than one),
    and another only for a different label that then holds a full run: never a flood.
    """

    def __init__(self, frames: int = 5, ms: float = 500.0, gap: int = 2) -> None:
        self.frames, self.ms, self.gap = max(1, frames), max(0.0, ms), max(1, gap)
        self._label: str | None = None  # the current run of one label
        self._count = 0
        self._started = 0.0
        self._tally: dict[str, tuple[int, float]] = {}  # the item's confident frames: label -> (n, sum conf)
        self._frames = 0  # the item's confident frames
        self._item_started = 0.0
        self._sent: str | None = None  # the label commanded for the item in front now
        self._unsure = 0

    def _end_item(self) -> None:
        self._label, self._count, self._sent, self._tally, self._frames = None, 0, None, {}, 0

    def _held(self, count: int, started: float, at_s: float) -> bool:
        held_ms = (at_s - started) * 1000.0
        return count >= self.frames or (self.ms > 0 and count >= 2 and held_ms >= self.ms)

    def majority(self) -> str | None:
        """The item's most frequent confident label (a tie: the higher mean confidence), None before any."""
        if not self._tally:
            return None
        return max(
            self._tally,
            key=lambda label: (self._tally[label][0], self._tally[label][1] / self._tally[label][0]),
        )

    def update(
        self,
        label: str,
        unsure: bool,
        at_s: float,
        *,
        confidence: float = 1.0,
        separate: bool = False,
        changed: bool = False,
    ) -> str | None:
        """One classification (``at_s``: its time in seconds; ``confidence``: of ``label``; ``changed``: the
        scene changed with this frame) -> the label to command, or None."""
        if separate:
            return None if unsure else label
        if changed:
            self._end_item()
        if unsure:
            self._unsure += 1
            if self._unsure >= self.gap:
                self._end_item()
            return None
        self._unsure = 0
        if not self._frames:
            self._item_started = at_s
        self._frames += 1
        count, total = self._tally.get(label, (0, 0.0))
        self._tally[label] = (count + 1, total + confidence)
        if label != self._label:
            self._label, self._count, self._started = label, 0, at_s
        self._count += 1
        if self._sent is None:  # the item's first command: its majority once the item has lasted
            if self._held(self._frames, self._item_started, at_s):
                self._sent = self.majority()
                return self._sent
            return None
        if self._sent != label and self._held(self._count, self._started, at_s):
            self._sent = label  # a different label held a full run: a real change of object
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
        self.counts = {
            "frames": 0,
            "skipped": 0,
            "published": 0,
            "commands": 0,
            "errors": 0,
            "publish_errors": 0,
        }
        self.handle = ModelHandle(
            model_dir, on_status=self.status, model_id=model_id
        )  # publishes loading/loaded/error
        self.hooks = list(hooks)
        self.sorter = SortRule(settings.debounce, settings.sort_ms, settings.sort_gap)
        self.scene = SceneChange(settings.scene_change)
        self.commands: deque[dict[str, Any]] = deque(maxlen=max(1, settings.recent_commands))
        self.latest: dict[str, Any] | None = None
        self._last_publish = float("-inf")

    def publish(self, topic: str, payload: dict[str, Any], *, qos: int = 0, local: bool = False) -> None:
        """Publish (to IoT Core, or the core's local pub/sub with ``local``); an output that fails
        (offline, throttled) is counted and reported, never fatal."""
        try:
            if local:
                self.publisher.publish_local(topic, payload)
            elif qos:
                self.publisher.publish(topic, payload, qos=qos)
            else:
                self.publisher.publish(topic, payload)
        except Exception as exc:  # noqa: BLE001 - boto/awscrt raise many types; classification goes on
            self.counts["publish_errors"] += 1
            print(f"trashsorter-edge: cannot publish to {topic}: {exc}", file=sys.stderr, flush=True)

    def command(self, label: str, result: dict[str, Any]) -> dict[str, Any]:
        """A sort command: the core's local topic first (works offline), then IoT Core at QoS 1."""
        payload = {"object": label}
        self.counts["commands"] += 1
        self.commands.append({"object": label, "timestamp": result["timestamp"], "image": result["image"]})
        if hasattr(self.publisher, "publish_local"):
            self.publish(self.topics.local, payload, local=True)
        self.publish(self.topics.actuator, payload, qos=1)
        return payload

    def status(self, message: dict[str, Any]) -> None:
        self.publish(self.topics.status, {**message, "thing": self.settings.thing, "timestamp": utc_now()})

    def classify(self, frame: Frame) -> dict[str, Any]:
        model = self.handle.current()
        prediction = model.predict(normalise(frame.image))
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

    def handle_frame(
        self, frame: Frame, *, continuous: bool, separate: bool = False
    ) -> dict[str, Any] | None:
        """Classify one frame, publish, command; ``separate``: every frame is an item (a folder's files)."""
        self.counts["frames"] += 1
        try:
            result = self.classify(frame)
        except Exception as exc:  # noqa: BLE001 - any frame a device produces: reported, the loop goes on
            self.counts["errors"] += 1
            error = str(exc) if isinstance(exc, UndecodableImage) else f"{type(exc).__name__}: {exc}"
            self.status({"status": "error", "error": error, "image": frame.name})
            return None
        self.latest = result
        now = time.monotonic()
        rate = self.settings.publish_rate
        if not continuous or rate <= 0 or now - self._last_publish >= 1.0 / rate:
            self._last_publish = now
            self.publish(self.topics.infer, result)
            self.counts["published"] += 1
        changed = not separate and self.scene.changed(frame.image)
        label = self.sorter.update(
            result["label"],
            result["unsure"],
            now,
            confidence=result["confidence"],
            separate=separate,
            changed=changed,
        )
        command = self.command(label, result) if label is not None else None
        seen = {**result, "command": command, "skipped": self.counts["skipped"]}
        for hook in self.hooks:
            hook(frame, seen)
        return result

    def run(self, source: Any) -> dict[str, int]:
        """Classify every frame the source yields (until it ends or :meth:`stop`)."""
        self._source = source
        continuous = bool(getattr(source, "continuous", False))
        separate = bool(getattr(source, "separate_items", False))
        if hasattr(source, "on_error"):
            source.on_error = self._source_error
        if hasattr(source, "on_status"):
            source.on_status = self.status
        try:
            for frame in source:
                self.counts["skipped"] = getattr(source, "skipped", 0)
                self.handle_frame(frame, continuous=continuous, separate=separate)
        except SourceError as exc:
            self.counts["errors"] += 1
            self.status({"status": "error", "error": str(exc)})
        self.counts["skipped"] = getattr(source, "skipped", 0)
        return dict(self.counts)

    def _source_error(self, name: str, error: str) -> None:
        self.counts["errors"] += 1
        self.status({"status": "error", "error": error, "image": name})

    def stop(self) -> None:
        source = getattr(self, "_source", None)
        if source is not None:
            source.stop()
