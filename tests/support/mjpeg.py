"""A network camera in a thread: MJPEG over HTTP (``multipart/x-mixed-replace``, as IP cameras and
mjpg-streamer serve it), real JPEG frames of photos at a steady frame rate; the stream ends after a set time.
The edge tests read it through OpenCV's FFmpeg backend, and ``benchmarks/bench_live.py`` measures how far
behind it the app stays."""

from __future__ import annotations

import io
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from PIL import Image

BOUNDARY = "trashsorterframe"


class MjpegCamera:
    """One client gets ``seconds`` of ``fps`` JPEG frames (640x480, named ``frame-<n>`` by the reader from
    1), then the server closes the stream."""

    def __init__(self, photos: list[Path], fps: float = 30.0, seconds: float = 4.0) -> None:
        self.fps = fps
        self.frames = int(fps * seconds)
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
                for n in range(camera.frames):
                    time.sleep(max(0.0, started + n / camera.fps - time.monotonic()))
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
