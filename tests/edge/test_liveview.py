"""The live view for real: the MJPEG stream carries the labelled frames, /latest and /health answer, /flag
reaches the inbox, and a real browser (headless Chromium from the OS packages) renders the page with frames:
a screenshot is saved in the test's tmp dir and its pixels must show the drawn label banner."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
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
from trashsorter_edge.liveview import BANNER_SURE, BANNER_UNSURE, BOUNDARY, LiveView, annotate
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
    def publish(self, topic: str, payload: dict[str, Any], qos: int = 0) -> None:
        return None

    def publish_local(self, topic: str, payload: dict[str, Any]) -> None:
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
    token = {"X-Flag-Token": view.token}
    request = urllib.request.Request(f"{view.url}/flag", method="POST", headers=token)  # noqa: S310
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


def post(url: str, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, method="POST", headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_flag_needs_the_page_token_this_host_and_this_origin(
    live: tuple[LiveView, EdgeApp, list[int]],
) -> None:
    view, _app, flags = live
    page = urllib.request.urlopen(f"{view.url}/", timeout=10).read().decode()  # noqa: S310
    assert f"'{view.token}'" in page  # the page carries the token the button sends
    token = {"X-Flag-Token": view.token}
    assert post(f"{view.url}/flag", {}) == 403  # no token (a form posted from anywhere)
    assert post(f"{view.url}/flag", {"X-Flag-Token": "guess"}) == 403
    assert post(f"{view.url}/flag", {**token, "Origin": "http://evil.example"}) == 403  # cross-site
    port = view.url.rsplit(":", 1)[1]
    assert post(f"{view.url}/flag", {**token, "Host": f"evil.example:{port}"}) == 403  # DNS rebinding
    assert flags == []
    assert post(f"{view.url}/flag", {**token, "Origin": view.url}) == 200
    assert flags == [1]


def test_banner_and_caption_are_the_same_numbers_and_the_text_scales(
    live: tuple[LiveView, EdgeApp, list[int]],
) -> None:
    view, _app, _ = live
    deadline = time.monotonic() + 20
    while get(f"{view.url}/health")["frames"] < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    with urllib.request.urlopen(f"{view.url}/frame.jpg", timeout=10) as response:  # noqa: S310
        caption = urllib.parse.unquote(response.headers["X-Caption"])
        shown = Image.open(io.BytesIO(response.read()))
    label, percent = caption.split(" ")[:2]
    assert label in ("Compost", "Recycling") and percent.endswith("%")
    # the banner drawn on that frame is the same caption: draw it again and compare the pixels
    redrawn = Image.open(
        io.BytesIO(annotate(Image.new("RGB", shown.size, (0, 0, 0)), caption_result(caption)))
    )
    banner_rows = int((np.asarray(redrawn.convert("L"))[:, 0] > 40).sum())  # the rest is black
    band = (0, 0, shown.width, banner_rows)
    difference = np.abs(
        np.asarray(shown.crop(band), np.int32) - np.asarray(redrawn.crop(band), np.int32)
    ).mean()
    assert difference < 12, f"the banner is not the caption {caption!r}"
    for width, height in ((320, 240), (640, 480), (1920, 1080)):
        frame = Image.open(io.BytesIO(annotate(Image.new("RGB", (width, height)), caption_result(caption))))
        white = np.argwhere(np.asarray(frame.convert("L")) > 200)
        text_height = white[:, 0].max() - white[:, 0].min()
        assert text_height >= frame.height / 20, (width, text_height)  # not a fixed 10 px font


def caption_result(caption: str) -> dict[str, Any]:
    label, percent = caption.split(" ")[:2]
    return {"label": label, "confidence": float(percent.rstrip("%")) / 100, "unsure": "unsure" in caption}


def test_latest_lists_the_last_sort_commands_and_the_unsure_rate() -> None:
    view = LiveView(port=0, recent_commands=3).start()
    try:
        image = Image.new("RGB", (64, 48))
        labels = ["Compost", "Landfill", "Recycling", "Compost", "Landfill"]
        for n in range(40):
            command = {"object": labels[n // 8]} if n % 8 == 4 else None
            result = {"label": "x", "confidence": 0.5, "unsure": n % 4 == 0, "command": command}
            view.hook(Frame(image, "camera", str(n)), {**result, "timestamp": f"t{n}"})
        latest = get(f"{view.url}/latest")
    finally:
        view.stop()
    assert latest["commands"] == [  # newest first, the last 3
        {"object": "Landfill", "timestamp": "t36"},
        {"object": "Compost", "timestamp": "t28"},
        {"object": "Recycling", "timestamp": "t20"},
    ]
    assert latest["unsure_rate"] == 0.25 and latest["unsure_of"] == 40


def test_1100_idle_connections_and_the_app_still_classifies_and_serves(
    live: tuple[LiveView, EdgeApp, list[int]],
) -> None:
    view, app, _ = live
    host, port = view.url.removeprefix("http://").split(":")
    idle = []
    try:
        for _ in range(1100):
            connection = socket.create_connection((host, int(port)), timeout=10)
            idle.append(connection)
        frames_before = app.counts["frames"]
        started = time.monotonic()
        health = None
        while health is None and time.monotonic() - started < 30:
            try:
                health = get(f"{view.url}/health")
            except (OSError, urllib.error.URLError):
                time.sleep(0.2)
        assert health is not None and health["status"] == "ok", "the live view stopped serving"
        while app.counts["frames"] <= frames_before + 3 and time.monotonic() - started < 30:
            time.sleep(0.1)
        assert app.counts["frames"] > frames_before + 3, "the app stopped classifying"
    finally:
        for connection in idle:
            connection.close()
    assert get(f"{view.url}/health")["status"] == "ok"


def test_a_busy_port_is_a_clear_error_and_classifying_goes_on(
    tiny_model: TinyModel, tmp_path: Path, capsys: Any
) -> None:
    from trashsorter_edge import cli

    (tmp_path / "photos").mkdir()
    for path in tiny_model.unseen[:2]:
        (tmp_path / "photos" / path.name).write_bytes(path.read_bytes())
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        argv = ["--model", str(tiny_model.model_dir), "--source", str(tmp_path / "photos"), "--once"]
        assert cli.main([*argv, "--live-port", str(port)]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 2  # both photos classified
    assert f"the live view cannot listen on 127.0.0.1:{port}" in err and "in use" in err


def test_the_page_reads_on_a_phone(live: tuple[LiveView, EdgeApp, list[int]], tmp_path: Path) -> None:
    chromium = chromium_or_skip()
    view, _, _ = live
    shot_path = tmp_path / "phone.png"
    subprocess.run(
        [
            *(chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=390,844"),
            *(f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot_path}"),
            *("--virtual-time-budget=4000", f"{view.url}/"),
        ],
        capture_output=True,
        timeout=90,
        check=False,
    )
    shot = Image.open(shot_path)
    rows = np.argwhere(
        np.logical_or(
            *[
                np.abs(np.asarray(shot.convert("RGB"), np.int32) - c).sum(axis=2) < 60
                for c in (BANNER_SURE, BANNER_UNSURE)
            ]
        )
    )[:, 0]
    assert rows.size and rows.max() - rows.min() >= 30, "no banner, or a banner too thin to read on a phone"
    dom = dump_dom(chromium, f"{view.url}/")
    assert "Flag this frame" in dom and "% of the last" in dom, dom[-800:]
