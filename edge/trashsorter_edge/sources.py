"""Where frames come from: a camera (OpenCV ``VideoCapture`` index), a video file or RTSP/HTTP stream, a
folder of images (new files are picked up as they arrive) or a single image file.

Every source yields :class:`Frame` objects. ``once=True`` means "what the source holds now": every image in
the folder, every frame of the video file, one frame of a camera/stream. OpenCV (``cv2``) is needed only for
camera and video sources; the folder source runs on Pillow alone.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from trashsorter_edge.preprocessing import IMAGE_EXTENSIONS, UndecodableImage, decode, from_bgr


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


class FolderSource:
    """Images in a folder, oldest name first; with ``once=False`` it keeps polling for new files."""

    continuous = False

    def __init__(self, folder: Path | str, *, once: bool, poll_s: float = 1.0) -> None:
        self.folder = Path(folder)
        self.once = once
        self.poll_s = poll_s
        self.errors: list[str] = []
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
                    continue
                yield Frame(image, str(self.folder), path.name, data=data)
            if self.once:
                return
            time.sleep(self.poll_s)


class VideoSource:
    """OpenCV ``VideoCapture``: a camera index (``"0"``), a video file, or an RTSP/HTTP URL."""

    def __init__(self, spec: str, *, once: bool, reconnect_s: float = 2.0) -> None:
        try:
            import cv2
        except ImportError as exc:
            raise SourceError(
                "camera and video sources need OpenCV: pip install opencv-python-headless"
            ) from exc
        self._cv2: Any = cv2
        self.spec = spec
        self.once = once
        self.reconnect_s = reconnect_s
        self.is_camera = spec.isdigit()
        self.is_file = not self.is_camera and "://" not in spec
        self.continuous = not self.is_file
        self._stopped = False
        self.capture = self._open()

    def _open(self) -> Any:
        target: int | str = int(self.spec) if self.is_camera else self.spec
        capture = self._cv2.VideoCapture(target)
        if not capture.isOpened():
            raise SourceError(f"OpenCV cannot open {self.spec!r}")
        return capture

    def stop(self) -> None:
        self._stopped = True

    def __iter__(self) -> Iterator[Frame]:
        number = 0
        try:
            while not self._stopped:
                ok, frame = self.capture.read()
                if not ok:
                    if self.is_file or self.once:
                        return
                    self.capture.release()  # a dropped stream: reconnect
                    time.sleep(self.reconnect_s)
                    try:
                        self.capture = self._open()
                    except SourceError:
                        continue
                    continue
                number += 1
                yield Frame(from_bgr(frame), self.spec, f"frame-{number:06d}")
                if self.once and not self.is_file:
                    return
        finally:
            self.capture.release()


def open_source(spec: str, *, once: bool = False, poll_s: float = 1.0) -> FolderSource | VideoSource:
    """``0``/``1``... camera; a directory -> folder; an image file -> that file; anything else -> OpenCV."""
    path = Path(spec)
    if path.is_dir():
        return FolderSource(path, once=once, poll_s=poll_s)
    if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
        single = FolderSource(path.parent, once=True)
        single._seen = {p.name for p in path.parent.iterdir() if p.name != path.name}
        return single
    if not spec.isdigit() and "://" not in spec and not path.exists():
        raise SourceError(f"source {spec!r} is neither a camera index, a folder, a file nor a URL")
    return VideoSource(spec, once=once)
