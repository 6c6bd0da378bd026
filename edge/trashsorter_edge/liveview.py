"""The live view served by the device (the DeepLens project stream's equivalent): a page with the camera's
newest frame, its label drawn on it, the last sort commands and the unsure rate, and a button that flags the
frame shown into the inbox.

Routes: ``/`` the page; ``/frame.jpg`` the newest labelled frame (its caption in the ``X-Caption`` header, so
the page's caption and the frame's banner are the same numbers); ``/stream.mjpeg`` an MJPEG stream;
``/latest`` the newest result + ``commands`` + ``unsure_rate`` (JSON); ``/health``; ``POST /flag`` (needs the
page's token in ``X-Flag-Token``, a ``Host`` naming this server and, when sent, an ``Origin`` of this server).

It listens on ``127.0.0.1`` unless told otherwise: the stream has no authentication, so exposing it on the
network is a deliberate choice (``--live-host 0.0.0.0``). Frames are labelled only when someone asks for
them (no viewer, no cost). At most ``max_connections`` connections are served at once (more are closed at
once) and a connection that sends nothing for ``timeout_s`` is closed.
"""

from __future__ import annotations

import io
import ipaddress
import json
import secrets
import threading
import urllib.parse
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from trashsorter_edge.sources import Frame

BOUNDARY = "trashsorterframe"
BANNER_SURE = (24, 160, 72)  # green: a sure label
BANNER_UNSURE = (214, 120, 20)  # orange: below the threshold
MAX_WIDTH = 640
UNSURE_WINDOW = 100  # results the unsure rate is computed over

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>trashsorter live view</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font-family:sans-serif;margin:0.5em;background:#111;color:#eee;font-size:1.1em}
img{width:100%;max-width:640px;display:block}#caption{font-size:1.6em;margin:0.3em 0}
button{font-size:1.2em;padding:0.4em 1em}li{margin:0.2em 0}</style></head>
<body><h1>trashsorter - <span id="thing">THING</span></h1>
<img id="frame" alt="the camera's newest frame with its label">
<p id="caption">waiting for the first frame...</p>
<p><button id="flag" type="button">Flag this frame</button> <span id="flagged"></span></p>
<p>unsure: <span id="unsure">-</span></p>
<h2>Sort commands</h2><ol id="commands"></ol>
<script>
const token = 'TOKEN';
let shown = null;
async function frame() {
  try {
    const r = await fetch('/frame.jpg', {cache: 'no-store'});
    if (r.status === 200) {
      const url = URL.createObjectURL(await r.blob());
      const img = document.getElementById('frame');
      if (img.src) URL.revokeObjectURL(img.src);
      img.src = url;
      shown = r.headers.get('X-Frame');
      document.getElementById('caption').textContent = decodeURIComponent(r.headers.get('X-Caption'));
    }
  } catch (e) {}
  setTimeout(frame, 200);
}
async function latest() {
  try {
    const j = await (await fetch('/latest', {cache: 'no-store'})).json();
    if (j.unsure_rate !== undefined) {
      document.getElementById('unsure').textContent = (100 * j.unsure_rate).toFixed(0) + '% of the last '
        + j.unsure_of + ' frames';
      const list = document.getElementById('commands');
      list.replaceChildren(...j.commands.map(c => {
        const li = document.createElement('li'); li.textContent = c.object + ' - ' + c.timestamp; return li;
      }));
    }
  } catch (e) {}
  setTimeout(latest, 1000);
}
document.getElementById('flag').onclick = async () => {
  const r = await fetch('/flag', {method: 'POST', headers: {'X-Flag-Token': token, 'X-Frame': shown || ''}});
  document.getElementById('flagged').textContent = r.ok ? 'flagged' : 'not flagged (' + r.status + ')';
};
frame(); latest();
</script></body></html>
"""


def caption(result: dict[str, Any]) -> str:
    """THE text of a result, on the frame's banner and under it: ``Compost 94.8%`` (+ `` (unsure)``)."""
    text = f"{result.get('label')} {100 * float(result.get('confidence', 0)):.1f}%"
    return text + (" (unsure)" if result.get("unsure") else "")


def annotate(image: Image.Image, result: dict[str, Any]) -> bytes:
    """The frame (at most MAX_WIDTH wide) with a banner whose text scales with the frame; JPEG bytes."""
    frame = image.convert("RGB")
    if frame.width > MAX_WIDTH:
        frame = frame.resize((MAX_WIDTH, max(1, round(frame.height * MAX_WIDTH / frame.width))))
    else:
        frame = frame.copy()
    draw = ImageDraw.Draw(frame)
    text = caption(result)
    size = max(10, min(frame.height // 9, frame.width // 12))
    font = ImageFont.load_default(size=size)
    while size > 10 and draw.textlength(text, font=font) > frame.width - 2 * (size // 3):
        size -= 2
        font = ImageFont.load_default(size=size)
    height = round(size * 1.5)
    color = BANNER_UNSURE if result.get("unsure") else BANNER_SURE
    draw.rectangle((0, 0, frame.width, height), fill=color)
    draw.text((size // 3, height // 2), text, fill=(255, 255, 255), font=font, anchor="lm")
    buffer = io.BytesIO()
    frame.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


class LimitedServer(ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` at once: the ones over are closed at once."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: Any, max_connections: int) -> None:
        self.max_connections = max_connections
        self.active = 0
        self.refused = 0
        self._count_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._count_lock:
            full = self.active >= self.max_connections
            if not full:
                self.active += 1
        if full:
            self.refused += 1
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._count_lock:
                self.active -= 1


class LiveView:
    """``LiveView(port=8080).start()``; :meth:`hook` is an EdgeApp frame hook; ``url`` after start."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        thing: str = "",
        on_flag: Callable[[], None] | None = None,
        *,
        max_connections: int = 32,
        timeout_s: float = 5.0,
        recent_commands: int = 10,
    ) -> None:
        self.host, self.port, self.thing = host, port, thing
        self.on_flag = on_flag
        self.max_connections, self.timeout_s = max_connections, timeout_s
        self.token = secrets.token_urlsafe(24)
        self._changed = threading.Condition()
        self._frame: Image.Image | None = None
        self._jpeg: tuple[int, bytes] | None = None  # (frame count, labelled JPEG), made on demand
        self._latest: dict[str, Any] = {}
        self._commands: deque[dict[str, Any]] = deque(maxlen=max(1, recent_commands))
        self._unsure: deque[bool] = deque(maxlen=UNSURE_WINDOW)
        self._count = 0
        self._stopping = False
        self._server: LimitedServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        return f"http://{self.host}:{self._server.server_address[1]}"

    def hook(self, frame: Frame, result: dict[str, Any]) -> None:
        """Keeps a reference to the frame and its result (no drawing, no encoding: that is per viewer)."""
        with self._changed:
            self._frame, self._latest = frame.image, dict(result)
            self._unsure.append(bool(result.get("unsure")))
            command = result.get("command")
            if command:
                self._commands.appendleft({**command, "timestamp": result.get("timestamp")})
            self._count += 1
            self._changed.notify_all()

    def labelled(self) -> tuple[int, bytes | None, dict[str, Any]]:
        """(frame count, the newest frame labelled as JPEG, its result); drawn once per frame."""
        with self._changed:
            count, image, result, cached = self._count, self._frame, dict(self._latest), self._jpeg
        if image is None:
            return count, None, result
        if cached is None or cached[0] != count:
            cached = (count, annotate(image, result))
            with self._changed:
                if self._count == count:
                    self._jpeg = cached
        return count, cached[1], result

    def next_frame(self, after: int, timeout: float = 5.0) -> tuple[int, bytes | None]:
        with self._changed:
            self._changed.wait_for(lambda: self._count > after or self._stopping, timeout=timeout)
        count, jpeg, _ = self.labelled()
        return count, jpeg

    def latest(self) -> dict[str, Any]:
        with self._changed:
            unsure = list(self._unsure)
            return {
                **self._latest,
                "commands": list(self._commands),
                "unsure_rate": sum(unsure) / len(unsure) if unsure else 0.0,
                "unsure_of": len(unsure),
            }

    def health(self) -> dict[str, Any]:
        with self._changed:
            return {"status": "ok", "frames": self._count, "model_id": self._latest.get("model_id")}

    def allowed_host(self, host_header: str) -> bool:
        """A ``Host`` naming this server (DNS rebinding defence): localhost, the bound address, or any IP
        address literal when bound to all interfaces."""
        assert self._server is not None
        parts = urllib.parse.urlsplit("//" + host_header)
        try:
            port = parts.port or 80
        except ValueError:
            return False
        if port != self._server.server_address[1]:
            return False
        host = (parts.hostname or "").lower()
        if host in ("localhost", self.host):
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return address.is_loopback or self.host in ("0.0.0.0", "::", "")  # noqa: S104 - comparing

    def start(self) -> LiveView:
        """Binds the port (a busy port raises OSError) and serves in a thread."""
        server = LimitedServer((self.host, self.port), _handler(self), self.max_connections)
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
        timeout = view.timeout_s  # an idle or stalled connection is closed

        def log_message(self, format: str, *args: Any) -> None:
            return

        def _send(
            self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, body: dict[str, Any], status: int = HTTPStatus.OK) -> None:
            self._send(status, json.dumps(body).encode(), "application/json")

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if not view.allowed_host(self.headers.get("Host", "")):
                self._json({"error": "unknown Host"}, HTTPStatus.MISDIRECTED_REQUEST)
            elif path in ("/", "/index.html"):
                page = PAGE.replace("THING", view.thing or "edge").replace("TOKEN", view.token)
                self._send(HTTPStatus.OK, page.encode(), "text/html; charset=utf-8")
            elif path == "/frame.jpg":
                self._frame()
            elif path == "/latest":
                self._json(view.latest())
            elif path == "/health":
                self._json(view.health())
            elif path == "/stream.mjpeg":
                self._stream()
            else:
                self._json({"error": f"no route {path}"}, HTTPStatus.NOT_FOUND)

        def _frame(self) -> None:
            count, jpeg, result = view.labelled()
            if jpeg is None:
                self._json({"error": "no frame yet"}, HTTPStatus.SERVICE_UNAVAILABLE)
                return
            headers = {"X-Frame": str(count), "X-Caption": urllib.parse.quote(caption(result))}
            self._send(HTTPStatus.OK, jpeg, "image/jpeg", headers)

        def do_POST(self) -> None:
            host = self.headers.get("Host", "")
            origin = self.headers.get("Origin")
            if self.path.split("?", 1)[0] != "/flag" or view.on_flag is None:
                self._json({"error": "no route (or no inbox configured)"}, HTTPStatus.NOT_FOUND)
            elif not view.allowed_host(host) or (origin is not None and origin != f"http://{host}"):
                self._json({"error": "cross-site request refused"}, HTTPStatus.FORBIDDEN)
            elif not secrets.compare_digest(self.headers.get("X-Flag-Token", ""), view.token):
                self._json({"error": "missing or wrong X-Flag-Token (reload the page)"}, HTTPStatus.FORBIDDEN)
            else:
                view.on_flag()
                self._json({"status": "flagged"})

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
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                return  # the viewer went away

    return Handler
