"""The live view served by the device (the DeepLens project stream's equivalent): an HTML page with an
MJPEG stream of the camera, the label and confidence drawn on each frame, plus ``/latest`` (the latest
result as JSON), ``/health`` and ``POST /flag`` (send the next frame to the inbox).

It listens on ``127.0.0.1`` unless told otherwise: the stream has no authentication, so exposing it on the
network is a deliberate choice (``--live-host 0.0.0.0``).
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image, ImageDraw

from trashsorter_edge.sources import Frame

BOUNDARY = "trashsorterframe"
BANNER_SURE = (24, 160, 72)  # green: a sure label
BANNER_UNSURE = (214, 120, 20)  # orange: below the threshold
MAX_WIDTH = 640

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>trashsorter live view</title>
<style>body{font-family:sans-serif;margin:1em;background:#111;color:#eee}img{max-width:100%}</style></head>
<body><h1>trashsorter - <span id="thing">THING</span></h1>
<img id="stream" src="/stream.mjpeg" alt="live camera with labels">
<p id="latest">waiting for the first frame...</p>
<script>
async function poll() {
  try {
    const r = await fetch('/latest');
    const j = await r.json();
    if (j.label) {
      const pct = (100 * j.confidence).toFixed(1) + '%';
      document.getElementById('latest').textContent =
        j.label + ' ' + pct + (j.unsure ? ' (unsure)' : '') + ' - ' + j.model_id;
    }
  } catch (e) {}
  setTimeout(poll, 500);
}
poll();
</script></body></html>
"""


def annotate(image: Image.Image, result: dict[str, Any]) -> bytes:
    """The frame (at most MAX_WIDTH wide) with a banner: label, confidence; JPEG bytes."""
    frame = image.convert("RGB")
    if frame.width > MAX_WIDTH:
        frame = frame.resize((MAX_WIDTH, round(frame.height * MAX_WIDTH / frame.width)))
    else:
        frame = frame.copy()
    draw = ImageDraw.Draw(frame)
    height = max(18, frame.height // 8)
    color = BANNER_UNSURE if result.get("unsure") else BANNER_SURE
    draw.rectangle((0, 0, frame.width, height), fill=color)
    text = f"{result.get('label')} {100 * float(result.get('confidence', 0)):.1f}%"
    draw.text((6, height // 4), text + (" ?" if result.get("unsure") else ""), fill=(255, 255, 255))
    buffer = io.BytesIO()
    frame.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


class LiveView:
    """``LiveView(port=8080).start()``; :meth:`hook` is an EdgeApp frame hook; ``url`` after start."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        thing: str = "",
        on_flag: Callable[[], None] | None = None,
    ) -> None:
        self.host, self.port, self.thing = host, port, thing
        self.on_flag = on_flag
        self._changed = threading.Condition()
        self._jpeg: bytes | None = None
        self._latest: dict[str, Any] = {}
        self._count = 0
        self._stopping = False
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        return f"http://{self.host}:{self._server.server_address[1]}"

    def hook(self, frame: Frame, result: dict[str, Any]) -> None:
        jpeg = annotate(frame.image, result)
        with self._changed:
            self._jpeg, self._latest = jpeg, dict(result)
            self._count += 1
            self._changed.notify_all()

    def next_frame(self, after: int, timeout: float = 5.0) -> tuple[int, bytes | None]:
        with self._changed:
            self._changed.wait_for(lambda: self._count > after or self._stopping, timeout=timeout)
            return self._count, self._jpeg

    def latest(self) -> dict[str, Any]:
        with self._changed:
            return dict(self._latest)

    def health(self) -> dict[str, Any]:
        with self._changed:
            return {"status": "ok", "frames": self._count, "model_id": self._latest.get("model_id")}

    def start(self) -> LiveView:
        server = ThreadingHTTPServer((self.host, self.port), _handler(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="live-view", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def stopping(self) -> bool:
        return self._stopping


def _handler(view: LiveView) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "trashsorter-edge/1"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, body: dict[str, Any], status: int = HTTPStatus.OK) -> None:
            self._send(status, json.dumps(body).encode(), "application/json")

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, PAGE.replace("THING", view.thing or "edge").encode(), "text/html")
            elif path == "/latest":
                self._json(view.latest())
            elif path == "/health":
                self._json(view.health())
            elif path == "/stream.mjpeg":
                self._stream()
            else:
                self._json({"error": f"no route {path}"}, HTTPStatus.NOT_FOUND)

        def do_POST(self) -> None:
            if self.path.split("?", 1)[0] == "/flag" and view.on_flag is not None:
                view.on_flag()
                self._json({"status": "flagged"})
            else:
                self._json({"error": "no route (or no inbox configured)"}, HTTPStatus.NOT_FOUND)

        def _stream(self) -> None:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            seen = -1
            try:
                while not view.stopping:
                    seen_now, jpeg = view.next_frame(seen)
                    if jpeg is None or seen_now == seen:
                        continue
                    seen = seen_now
                    head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                    self.wfile.write(head.encode() + jpeg + b"\r\n")
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                return  # the viewer went away

    return Handler
