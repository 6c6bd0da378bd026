"""A real network camera stream: MJPEG over HTTP (``multipart/x-mixed-replace``, as IP cameras and
mjpg-streamer serve it) from a server in a thread, real JPEG frames of sample photos at 30 frames a second,
read by OpenCV's FFmpeg backend. The edge app with ``--once`` classifies only the newest frames, never
falls behind, and ends within a second of the stream's end: the real program (``python -m trashsorter_edge``)
and, slowed down by a hook, its run loop in this process."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.support.recorder import Recorder
from tests.support.tiny_model import TinyModel
from trashsorter_edge.app import EdgeApp, Settings
from trashsorter_edge.sources import Frame, LatestFrame, open_source

cv2 = pytest.importorskip("cv2")
if "FFMPEG:                      YES" not in cv2.getBuildInformation():
    pytest.skip(
        "this OpenCV has no FFmpeg backend (cv2.getBuildInformation(): FFMPEG NO): no HTTP stream to read",
        allow_module_level=True,
    )

pytestmark = pytest.mark.slow  # seconds of stream, the session's tiny trained model

FPS = 30.0
SECONDS = 4.0
BOUNDARY = "trashsorterframe"


class MjpegCamera:
    """One client gets ``SECONDS`` of ``FPS`` JPEG frames (640x480), then the server closes the stream."""

    def __init__(self, photos: list[Path]) -> None:
        self.jpegs = []
        for photo in photos:
            out = io.BytesIO()
            Image.open(photo).convert("RGB").resize((640, 480)).save(out, "JPEG", quality=85)
            self.jpegs.append(out.getvalue())
        self.sent_at: list[float] = []  # wall-clock time (time.time()) frame i+1 was written
        self.ended_at = 0.0  # time.monotonic() when the last frame was out and the stream closed
        self.connections = 0
        camera = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                camera.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                started = time.monotonic()
                for n in range(int(FPS * SECONDS)):
                    time.sleep(max(0.0, started + n / FPS - time.monotonic()))
                    jpeg = camera.jpegs[n % len(camera.jpegs)]
                    head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                    self.wfile.write(head.encode() + jpeg + b"\r\n")
                    self.wfile.flush()
                    camera.sent_at.append(time.time())
                self.close_connection = True
                self.wfile.flush()
                self.connection.shutdown(1)  # the stream ends here: the client reads end of file
                camera.ended_at = time.monotonic()

            def log_message(self, *_args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stream.mjpg"

    def __enter__(self) -> MjpegCamera:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def sent_by(self, wall: float) -> int:
        """How many frames were out at wall-clock time ``wall``."""
        return sum(at <= wall for at in self.sent_at)


def frame_number(name: str) -> int:
    return int(name.removeprefix("frame-"))


def wall(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def test_the_edge_program_reads_an_http_mjpeg_stream_and_exits_with_it(tiny_model: TinyModel) -> None:
    with MjpegCamera(tiny_model.unseen) as camera:
        command = [sys.executable, "-m", "trashsorter_edge", "--model", str(tiny_model.model_dir)]
        command += ["--source", camera.url, "--once", "--output", "jsonl", "--publish-rate", "0"]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = process.communicate(timeout=120)
        finally:
            process.kill()
        exited_at = time.monotonic()
    assert process.returncode == 0, err
    assert camera.connections == 1 and len(camera.sent_at) == FPS * SECONDS
    exit_after = exited_at - camera.ended_at  # the interpreter's teardown included
    assert exit_after <= 1.5, f"exited {exit_after:.2f} s after the stream"
    results = [json.loads(line) for line in out.splitlines()]
    statuses = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    (stopped,) = [s["payload"] for s in statuses if s["payload"].get("status") == "stopped"]
    stopped_after = wall(stopped["timestamp"]) - camera.sent_at[-1]
    assert stopped_after <= 1.0, f"the loop ended {stopped_after:.2f} s after the last frame"
    numbers = [frame_number(r["image"]) for r in results]
    assert numbers == sorted(set(numbers)) and len(numbers) == stopped["frames"] > 0
    assert stopped["frames"] + stopped["skipped"] == len(camera.sent_at)  # every frame read, once
    assert {r["label"] for r in results} <= {"Compost", "Recycling"} and stopped["errors"] == 0
    assert {r["source"] for r in results} == {camera.url}
    # the newest frame each time: never more than half a second of stream behind when classified
    behind = [camera.sent_by(wall(r["timestamp"])) - frame_number(r["image"]) for r in results]
    assert max(behind) <= FPS / 2, f"fell {max(behind)} frames behind the stream"


def test_a_slow_run_loop_on_an_http_stream_takes_only_the_newest_frames(tiny_model: TinyModel) -> None:
    seen: list[tuple[int, float]] = []  # (frame number, wall-clock time classified)

    def slow_device(frame: Frame, _result: dict[str, Any]) -> None:
        seen.append((frame_number(frame.name), time.time()))
        time.sleep(0.1)  # a device where a frame costs ~3 stream frames

    with MjpegCamera(tiny_model.unseen) as camera:
        app = EdgeApp(tiny_model.model_dir, Recorder(), Settings(publish_rate=0), hooks=[slow_device])
        source = open_source(camera.url, once=True)  # after the model, as the program does
        assert isinstance(source, LatestFrame)
        counts = app.run(source)
        returned_at = time.monotonic()
    ended_after = returned_at - camera.ended_at
    assert ended_after <= 1.0, f"ended {ended_after:.2f} s after the stream"
    assert counts["frames"] == len(seen) and counts["errors"] == 0
    assert counts["frames"] + counts["skipped"] == len(camera.sent_at) == FPS * SECONDS
    assert counts["skipped"] > counts["frames"]  # a 100+ ms per frame loop on a 30 fps stream
    numbers = [number for number, _ in seen]
    assert numbers == sorted(set(numbers))
    behind = [camera.sent_by(at) - number for number, at in seen]
    assert max(behind) <= FPS / 2, f"fell {max(behind)} frames behind the stream: {behind}"
