"""The live view for real: the MJPEG stream carries the labelled frames, /latest and /health answer, /flag
reaches the inbox, and a real browser (headless Chromium from the OS packages) renders the page with frames:
a screenshot is saved in the test's tmp dir and its pixels must show the drawn label banner."""

from __future__ import annotations

import io
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.support.browser import chromium_or_skip, dump_dom, screenshot
from tests.support.tiny_model import TinyModel
from trashsorter_edge.app import EdgeApp, Settings
from trashsorter_edge.liveview import BANNER_SURE, BANNER_UNSURE, BOUNDARY, LiveView
from trashsorter_edge.sources import Frame

pytestmark = pytest.mark.slow


class Camera:
    """A camera-like source: the photos again and again, 10 frames a second, until stopped."""

    continuous = True

    def __init__(self, photos: list[Path]) -> None:
        self.images = [Image.open(p).convert("RGB") for p in photos]
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def __iter__(self) -> Iterator[Frame]:
        n = 0
        while not self._stop.is_set():
            yield Frame(self.images[n % len(self.images)], "camera", f"frame-{n:06d}")
            n += 1
            time.sleep(0.1)


class Null:
    def publish(self, topic: str, payload: dict[str, Any]) -> None:
        return None

    def close(self) -> None:
        return None


@pytest.fixture
def live(tiny_model: TinyModel) -> Iterator[tuple[LiveView, EdgeApp, list[int]]]:
    flags: list[int] = []
    view = LiveView(port=0, thing="cam-9", on_flag=lambda: flags.append(1)).start()
    app = EdgeApp(tiny_model.model_dir, Null(), Settings(thing="cam-9"), hooks=[view.hook])
    source = Camera(tiny_model.unseen[:2])
    worker = threading.Thread(target=app.run, args=(source,), daemon=True)
    worker.start()
    try:
        yield view, app, flags
    finally:
        app.stop()
        worker.join(timeout=10)
        view.stop()


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - the local live view
        return json.loads(response.read())


def banner_pixels(image: Image.Image) -> int:
    """Pixels close to either banner colour (JPEG moves colours a little)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.int32)
    near = [np.abs(rgb - np.array(colour)).sum(axis=2) < 60 for colour in (BANNER_SURE, BANNER_UNSURE)]
    return int(np.logical_or(*near).sum())


def test_stream_latest_health_and_flag(live: tuple[LiveView, EdgeApp, list[int]]) -> None:
    view, _app, flags = live
    deadline = time.monotonic() + 20
    while get(f"{view.url}/health")["frames"] < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    health = get(f"{view.url}/health")
    assert health["status"] == "ok" and health["frames"] >= 3 and health["model_id"]
    latest = get(f"{view.url}/latest")
    assert latest["label"] in ("Compost", "Recycling") and latest["source"] == "camera"
    with urllib.request.urlopen(f"{view.url}/stream.mjpeg", timeout=10) as stream:  # noqa: S310
        assert stream.headers["Content-Type"] == f"multipart/x-mixed-replace; boundary={BOUNDARY}"
        parts = []
        for _ in range(2):
            assert stream.readline().strip() == f"--{BOUNDARY}".encode()
            headers = {}
            while (line := stream.readline().strip()) != b"":
                name, _, value = line.decode().partition(":")
                headers[name.lower()] = value.strip()
            parts.append(stream.read(int(headers["content-length"])))
            stream.readline()
    frame = Image.open(io.BytesIO(parts[1]))
    assert frame.format == "JPEG" and frame.width <= 640
    top = frame.crop((0, 0, frame.width, 10))
    assert banner_pixels(top) > 0.8 * top.width * top.height  # the label banner is drawn on every frame
    request = urllib.request.Request(f"{view.url}/flag", method="POST")  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        assert json.loads(response.read()) == {"status": "flagged"}
    assert flags == [1]


def test_a_real_browser_shows_labelled_frames(
    live: tuple[LiveView, EdgeApp, list[int]], tmp_path: Path
) -> None:
    chromium = chromium_or_skip()
    view, _, _ = live
    shot_path = tmp_path / "live-view.png"
    screenshot(chromium, f"{view.url}/", shot_path)
    shot = Image.open(shot_path)
    assert banner_pixels(shot) > 2000, "the screenshot shows no labelled frame"
    dom = dump_dom(chromium, f"{view.url}/")
    assert "cam-9" in dom and ("Compost" in dom or "Recycling" in dom), dom[-500:]
