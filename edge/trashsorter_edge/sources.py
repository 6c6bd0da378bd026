"""Where frames come from: a camera (V4L2 index or ``/dev/videoN``, ``picamera2``), a GStreamer pipeline, a
video file or RTSP/HTTP stream, a folder of images (new files are picked up as they arrive) or one image file.

Every source yields :class:`Frame` objects. Files and folders are read in full, every frame in order. A LIVE
source (camera, stream, pipeline) is read by a capture thread that keeps only the newest frame
(:class:`LatestFrame`): the classifier always takes what is in front of the camera now and counts the frames
it skipped. A live source that cannot be opened or is lost is retried with backoff (doubling up to
``max_backoff_s``) and reported through ``on_status``; the app keeps running.

``once=True`` means "what the source holds now": every image in the folder, every frame of the video file,
one frame of a camera; a stream or pipeline is read until it ends (no reconnect), and the app exits as soon
as it does. OpenCV (``cv2``) is needed only for camera, stream and video sources; the folder source runs on
Pillow alone.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from trashsorter_edge.frames import from_array
from trashsorter_edge.install import camera_kind
from trashsorter_edge.preprocessing import IMAGE_EXTENSIONS, UndecodableImage, decode

StatusCallback = Callable[[dict[str, Any]], None]
ErrorCallback = Callable[[str, str], None]
STREAM_READ_TIMEOUT_MS = 1000  # a stream that sends nothing for this long has ended
STREAM_OPEN_TIMEOUT_MS = 5000
READ_AHEAD = 1  # frames of a video file waiting, decoded, for the classifier (one more is being decoded)


class SourceError(RuntimeError):
    """The source cannot be opened."""


@dataclass
class Frame:
    """One picture: ``image`` upright RGB; ``name`` says which (file name or frame number)."""

    image: Image.Image
    source: str
    name: str
    captured_at: float = field(default_factory=time.time)
    data: bytes | None = None  # the encoded bytes when the frame came from a file


@dataclass
class RawFrame:
    """A frame as the camera delivered it (converted to :class:`Frame` only if it is classified)."""

    array: Any
    number: int
    captured_at: float = field(default_factory=time.time)


class FolderSource:
    """Images in a folder, oldest name first; with ``once=False`` it keeps polling for new files. Every
    picture is an item of its own for the sort rule (``separate_items``)."""

    continuous = False
    separate_items = True

    def __init__(self, folder: Path | str, *, once: bool, poll_s: float = 1.0) -> None:
        self.folder = Path(folder)
        self.once = once
        self.poll_s = poll_s
        self.errors: list[str] = []
        self.on_error: ErrorCallback | None = None  # (file name, error) as it happens
        self._seen: set[str] = set()
        self._stopped = False

    def stop(self) -> None:
        self._stopped = True

    def _pending(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return [
            path
            for path in sorted(self.folder.iterdir())
            if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and path.name not in self._seen
        ]

    def __iter__(self) -> Iterator[Frame]:
        while not self._stopped:
            for path in self._pending():
                self._seen.add(path.name)
                try:
                    data = path.read_bytes()
                    image = decode(data, path.name)
                except (OSError, UndecodableImage) as exc:
                    self.errors.append(f"{path.name}: {exc}")
                    if self.on_error is not None:
                        self.on_error(path.name, str(exc))
                    continue
                yield Frame(image, str(self.folder), path.name, data=data)
            if self.once:
                return
            time.sleep(self.poll_s)


class Capture(Protocol):
    """What a camera backend offers (OpenCV ``VideoCapture`` and :class:`PiCamera` alike)."""

    def read(self) -> tuple[bool, Any]: ...

    def release(self) -> None: ...


class PiCamera:
    """A Raspberry Pi camera through picamera2 (libcamera), when the OS provides it."""

    def __init__(self, number: int, size: tuple[int, int] = (640, 480)) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError as exc:
            raise SourceError(
                "source 'picamera2' needs the picamera2 module (Raspberry Pi OS: sudo apt install "
                "python3-picamera2; the component's venv must see system packages)"
            ) from exc
        try:
            self.camera = Picamera2(number)
            config = self.camera.create_video_configuration(main={"format": "RGB888", "size": size})
            self.camera.configure(config)
            self.camera.start()
        except Exception as exc:  # libcamera raises RuntimeError, IndexError, ...
            raise SourceError(f"picamera2 cannot open camera {number}: {exc}") from exc

    def read(self) -> tuple[bool, Any]:
        try:
            return True, self.camera.capture_array()  # RGB888 is B, G, R in memory: OpenCV's order
        except Exception:  # noqa: BLE001 - a lost camera ends this capture; the source reconnects
            return False, None

    def release(self) -> None:
        try:
            self.camera.stop()
            self.camera.close()
        except Exception:  # noqa: BLE001, S110 - closing a lost camera
            pass


class VideoSource:
    """A camera, a GStreamer pipeline, a video file or an RTSP/HTTP URL (see :func:`camera_kind`).

    A video file is read in order, every frame. A live source reconnects with backoff when it cannot be
    opened or is lost, reporting ``{"status": "source", "state": "unavailable"|"connected", ...}`` through
    ``on_status``; with ``once`` it is opened once (a missing camera is a :class:`SourceError`)."""

    def __init__(
        self, spec: str, *, once: bool, reconnect_s: float = 1.0, max_backoff_s: float = 60.0
    ) -> None:
        self.kind = camera_kind(spec)
        self._cv2: Any = None
        if self.kind != "picamera2":
            try:
                import cv2
            except ImportError as exc:
                raise SourceError(
                    "camera and video sources need OpenCV: pip install opencv-python-headless"
                ) from exc
            self._cv2 = cv2
        self.spec = spec
        self.once = once
        self.reconnect_s = reconnect_s
        self.max_backoff_s = max_backoff_s
        self.is_file = self.kind == "file"
        self.continuous = not self.is_file
        self.on_status: StatusCallback | None = None
        self.on_error: ErrorCallback | None = None
        self._stopped = threading.Event()
        self.capture: Capture | None = None
        if self.is_file or once:
            self.capture = self._open()

    def _open(self) -> Capture:
        if self.kind == "picamera2":
            _, _, number = self.spec.partition(":")
            return PiCamera(int(number or 0))
        cv2 = self._cv2
        if self.kind == "gstreamer":
            if "GStreamer:                   YES" not in cv2.getBuildInformation():
                raise SourceError("this OpenCV has no GStreamer support: install the OS's python3-opencv")
            capture = cv2.VideoCapture(self.spec.removeprefix("gst:"), cv2.CAP_GSTREAMER)
        elif self.kind == "v4l2":
            device: int | str = int(self.spec) if self.spec.isdigit() else self.spec
            backend = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
            capture = cv2.VideoCapture(device, backend)
        elif self.kind == "stream":
            timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_OPEN_TIMEOUT_MS]
            timeouts += [cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_READ_TIMEOUT_MS]
            capture = cv2.VideoCapture(self.spec, cv2.CAP_ANY, timeouts)
        else:
            capture = cv2.VideoCapture(self.spec)
        if not capture.isOpened():
            hint = " (is the camera plugged in, and is this user in the 'video' group?)"
            raise SourceError(f"cannot open {self.spec!r}" + (hint if self.kind == "v4l2" else ""))
        return capture

    def stop(self) -> None:
        self._stopped.set()

    def _status(self, state: str, **extra: Any) -> None:
        if self.on_status is not None:
            self.on_status({"status": "source", "state": state, "source": self.spec, **extra})

    def _connect(self, backoff: float) -> tuple[Capture | None, float]:
        """One try to (re)open a live source; on failure report it and wait ``backoff`` (interruptible)."""
        try:
            capture = self._open()
        except SourceError as exc:
            self._status("unavailable", error=str(exc), retry_in_s=backoff)
            self._stopped.wait(backoff)
            return None, min(backoff * 2, self.max_backoff_s)
        self._status("connected")
        return capture, self.reconnect_s

    def raw_frames(self) -> Iterator[RawFrame]:
        """Frames as delivered (the capture thread's side): every frame, reconnecting a live source."""
        number, backoff = 0, self.reconnect_s
        try:
            while not self._stopped.is_set():
                if self.capture is None:
                    self.capture, backoff = self._connect(backoff)
                    continue
                ok, array = self.capture.read()
                if not ok:
                    if self.is_file or self.once:
                        return
                    self.capture.release()
                    self.capture = None
                    self._status("lost")
                    continue
                number += 1
                yield RawFrame(array, number)
                if self.once and self.kind in ("v4l2", "picamera2"):
                    return  # a camera's "now" is one frame
        finally:
            if self.capture is not None:
                self.capture.release()

    def to_frame(self, raw: RawFrame) -> Frame:
        return Frame(from_array(raw.array), self.spec, f"frame-{raw.number:06d}", captured_at=raw.captured_at)

    def __iter__(self) -> Iterator[Frame]:
        """Every frame in order; a reader thread decodes up to ``READ_AHEAD`` frames ahead (the decoding of
        the next frame overlaps the classification of this one; nothing is dropped)."""
        ahead: queue.Queue[Frame | BaseException | None] = queue.Queue(maxsize=READ_AHEAD)

        def read() -> None:
            try:
                for raw in self.raw_frames():
                    try:
                        ahead.put(self.to_frame(raw))
                    except UndecodableImage as exc:
                        ahead.put(exc)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
                ahead.put(exc)
            ahead.put(None)

        reader = threading.Thread(target=read, name=f"read-{self.spec}", daemon=True)
        reader.start()
        try:
            while (item := ahead.get()) is not None:
                if isinstance(item, UndecodableImage):
                    if self.on_error is not None:
                        self.on_error(self.spec, str(item))
                    continue
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.stop()
            while reader.is_alive():  # unblock a reader waiting on a full queue
                try:
                    ahead.get(timeout=0.1)
                except queue.Empty:
                    pass


class LatestFrame:
    """A live source read by a capture thread that keeps only the newest frame. ``reader`` is a
    :class:`VideoSource` (its ``raw_frames``) or any iterable of frames with ``stop()``.

    The consumer (the classifier) always gets the newest frame captured since its last one; ``skipped``
    counts the frames it never saw, ``captured`` all frames read. When the source ends the iteration ends
    as soon as the newest frame was taken. A frame that cannot be converted is reported through
    ``on_error`` and skipped."""

    continuous = True

    def __init__(
        self, reader: Any, to_frame: Callable[[Any], Frame] | None = None, name: str = "live"
    ) -> None:
        self.reader = reader
        self.to_frame = to_frame or (lambda frame: frame)
        self.name = name
        self.skipped = 0
        self.captured = 0
        self.on_error: ErrorCallback | None = None
        self.error: BaseException | None = None
        self._newest: Any = None
        self._taken = 0
        self._ended = False
        self._stopped = False
        self._changed = threading.Condition()

    @property
    def on_status(self) -> StatusCallback | None:
        return getattr(self.reader, "on_status", None)

    @on_status.setter
    def on_status(self, callback: StatusCallback | None) -> None:
        if hasattr(self.reader, "on_status"):
            self.reader.on_status = callback

    def _capture(self) -> None:
        try:
            frames = self.reader.raw_frames() if hasattr(self.reader, "raw_frames") else self.reader
            for frame in frames:
                with self._changed:
                    self._newest = frame
                    self.captured += 1
                    self._changed.notify_all()
                if self._stopped:
                    break
        except Exception as exc:  # noqa: BLE001 - reported by the consumer: the app reports and ends
            self.error = exc
        finally:
            with self._changed:
                self._ended = True
                self._changed.notify_all()

    def _take(self) -> Any:
        """The newest frame not taken yet, or None when the source ended (or stop)."""
        with self._changed:
            while True:
                if self._stopped:
                    return None
                if self.captured > self._taken:
                    frame, self._newest = self._newest, None
                    self.skipped += self.captured - self._taken - 1
                    self._taken = self.captured
                    return frame
                if self._ended:
                    return None
                self._changed.wait(0.5)

    def __iter__(self) -> Iterator[Frame]:
        thread = threading.Thread(target=self._capture, name=f"capture-{self.name}", daemon=True)
        thread.start()
        try:
            while (raw := self._take()) is not None:
                try:
                    frame = self.to_frame(raw)
                except UndecodableImage as exc:
                    if self.on_error is not None:
                        self.on_error(str(getattr(raw, "number", "frame")), str(exc))
                    continue
                yield frame
        finally:
            self.stop()
            thread.join(timeout=5)
        if self.error is not None:
            raise SourceError(f"the capture of {self.name} failed: {self.error}") from self.error

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify_all()
        stop = getattr(self.reader, "stop", None)
        if stop is not None:
            stop()


def open_source(
    spec: str, *, once: bool = False, poll_s: float = 1.0
) -> FolderSource | VideoSource | LatestFrame:
    """A camera/pipeline/stream -> :class:`LatestFrame`; a directory -> folder; an image file -> that file;
    a video file -> :class:`VideoSource` (every frame). Relative paths are from the working directory."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return FolderSource(path.resolve(), once=once, poll_s=poll_s)
    if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
        path = path.resolve()
        single = FolderSource(path.parent, once=True)
        single._seen = {p.name for p in path.parent.iterdir() if p.name != path.name}
        return single
    kind = camera_kind(spec)
    if kind == "file":
        if not path.exists():
            raise SourceError(f"source {spec!r} is neither a camera, a folder, a file nor a URL")
        return VideoSource(str(path.resolve()), once=once)
    video = VideoSource(spec, once=once)
    return LatestFrame(video, video.to_frame, name=spec)
