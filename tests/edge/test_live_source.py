"""A live source at 30 frames a second for 20 s, classified by an app slower than the stream: the capture
thread keeps only the newest frame, the app never falls behind, reports what it skipped, and ends within a
second of the stream's end. Cameras that cannot be opened are retried with a status, not fatal."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.support.recorder import Recorder
from tests.support.tiny_model import TinyModel
from trashsorter_edge.app import EdgeApp, Settings
from trashsorter_edge.sources import Frame, LatestFrame, SourceError, VideoSource, open_source

pytestmark = pytest.mark.slow  # 20 s of stream, the session's tiny trained model

FPS = 30.0
SECONDS = 20.0


class Stream:
    """A camera-like stream: one frame every 1/30 s for ``seconds``, numbered, then it ends."""

    def __init__(self, photos: list[Path], seconds: float) -> None:
        self.images = [Image.open(p).convert("RGB").resize((640, 480)) for p in photos]
        self.seconds = seconds
        self.produced = 0
        self.ended_at = 0.0
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def __iter__(self) -> Iterator[Frame]:
        started = time.monotonic()
        while not self._stop.is_set() and time.monotonic() - started < self.seconds:
            self.produced += 1
            image = self.images[self.produced % len(self.images)]
            yield Frame(image, "stream", str(self.produced))
            next_at = started + self.produced / FPS
            time.sleep(max(0.0, next_at - time.monotonic()))
        self.ended_at = time.monotonic()


def test_a_slow_app_classifies_only_the_newest_frames_and_ends_with_the_stream(tiny_model: TinyModel) -> None:
    stream = Stream(tiny_model.unseen[:2], SECONDS)
    taken: list[tuple[int, int]] = []  # (frame number, frames produced when the classifier took it)
    seen: list[tuple[int, float]] = []  # (frame number, seconds behind the capture once classified)

    def take(frame: Frame) -> Frame:
        taken.append((int(frame.name), stream.produced))
        return frame

    def slow_classifier(frame: Frame, _result: dict[str, Any]) -> None:
        seen.append((int(frame.name), time.time() - frame.captured_at))
        time.sleep(0.1)  # a device where a frame costs ~3 stream frames

    app = EdgeApp(tiny_model.model_dir, Recorder(), Settings(publish_rate=0), hooks=[slow_classifier])
    source = LatestFrame(stream, take, name="stream")
    counts = app.run(source)
    returned_at = time.monotonic()

    assert returned_at - stream.ended_at <= 1.0, "the app did not end with the stream"
    numbers = [number for number, _ in seen]
    assert numbers == sorted(set(numbers)) == [number for number, _ in taken], "out of order or twice"
    assert counts["frames"] == len(seen) and counts["errors"] == 0
    assert counts["frames"] + counts["skipped"] == stream.produced == source.captured
    assert counts["skipped"] > counts["frames"]  # a 100+ ms per frame app on a 30 fps stream
    # every frame taken was the newest (or the one before, if the next arrived while it was taken)
    assert max(produced - number for number, produced in taken) <= 1
    lags = [lag for _, lag in seen]
    assert max(lags) < 0.5, f"the app fell behind the stream: {max(lags):.2f} s"
    assert np.median(lags[-20:]) < 0.2  # no growing gap at the end of 20 s


def test_a_missing_camera_is_retried_with_backoff_and_a_status(tiny_model: TinyModel, tmp_path: Path) -> None:
    pytest.importorskip("cv2")
    missing = "/dev/video99"  # no such device
    with pytest.raises(SourceError, match="video"):
        open_source(missing, once=True)  # a one-shot run says so at once
    source = open_source(missing, once=False)
    assert isinstance(source, LatestFrame)
    assert isinstance(source.reader, VideoSource)
    source.reader.reconnect_s = 0.05
    recorder = Recorder()
    app = EdgeApp(tiny_model.model_dir, recorder, Settings())
    worker = threading.Thread(target=app.run, args=(source,), daemon=True)
    worker.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        tries = [p for t, p in recorder.messages if t.endswith("/status") and p["status"] == "source"]
        if len(tries) >= 3:
            break
        time.sleep(0.05)
    assert worker.is_alive(), "the app ended without its camera"
    app.stop()
    worker.join(timeout=5)
    assert not worker.is_alive()
    assert [t["state"] for t in tries[:3]] == ["unavailable"] * 3
    assert [t["retry_in_s"] for t in tries[:3]] == [0.05, 0.1, 0.2]  # backoff doubles
    assert "video" in tries[0]["error"] and tries[0]["source"] == missing
