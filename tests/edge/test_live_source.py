"""A live source delivers frames faster than the app classifies them: the capture thread keeps only the
newest frame, the app takes that one, counts what it skipped, and ends when the stream ends. The stream here
is stepped by the test (a burst of frames arrives while each frame is classified), so which frame comes next
is the code's decision, not the machine's speed; how far behind a real 30 fps stream the app stays is
measured in ``benchmarks/bench_live.py``. Cameras that cannot be opened are retried with a status, not
fatal."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.support.recorder import Recorder
from tests.support.tiny_model import TinyModel
from trashsorter_edge.app import EdgeApp, Settings
from trashsorter_edge.sources import Frame, LatestFrame, SourceError, VideoSource, open_source

pytestmark = pytest.mark.slow  # the session's tiny trained model

BURST = 3  # frames the camera delivers while one frame is classified
TOTAL = 1 + 10 * BURST


class SteppedStream:
    """A camera whose frames arrive only when the test releases them, numbered from 1; it ends after
    ``total``."""

    def __init__(self, image: Image.Image, total: int) -> None:
        self.image = image
        self.total = total
        self.produced = 0
        self._released = threading.Semaphore(0)
        self._stopped = False

    def release(self, frames: int) -> None:
        for _ in range(frames):
            self._released.release()

    def stop(self) -> None:
        self._stopped = True
        self._released.release()

    def __iter__(self) -> Iterator[Frame]:
        while self.produced < self.total:
            self._released.acquire()
            if self._stopped:
                return
            self.produced += 1
            yield Frame(self.image, "stream", str(self.produced))


def wait_until(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + 30
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


def test_an_app_slower_than_its_camera_takes_only_the_newest_frame_and_ends_with_the_stream(
    tiny_model: TinyModel,
) -> None:
    stream = SteppedStream(Image.open(tiny_model.unseen[0]).convert("RGB").resize((640, 480)), TOTAL)
    source = LatestFrame(stream, name="stream")
    classified: list[int] = []

    def camera_runs_on(frame: Frame, _result: dict[str, Any]) -> None:
        """While this frame is classified the camera delivers a burst; the classification ends once the
        capture thread has read all of it."""
        classified.append(int(frame.name))
        burst = min(BURST, stream.total - stream.produced)
        captured = source.captured + burst
        stream.release(burst)
        wait_until(lambda: source.captured == captured, f"the capture of frame {captured}")

    app = EdgeApp(tiny_model.model_dir, Recorder(), Settings(publish_rate=0), hooks=[camera_runs_on])
    counts: dict[str, int] = {}
    stream.release(1)
    runner = threading.Thread(target=lambda: counts.update(app.run(source)), daemon=True)
    runner.start()
    runner.join(timeout=60)
    assert not runner.is_alive(), "the app did not end with the stream"

    assert classified == list(range(1, TOTAL + 1, BURST)), "not the newest frame each time"
    assert counts["frames"] == len(classified) and counts["errors"] == 0
    assert counts["skipped"] == (BURST - 1) * (len(classified) - 1)
    assert counts["frames"] + counts["skipped"] == stream.produced == source.captured == TOTAL


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
