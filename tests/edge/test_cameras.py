"""Cameras: which backend a source names, a Raspberry Pi camera through picamera2 (a stand-in module: no Pi
camera here), a GStreamer pipeline on an OpenCV without GStreamer, and the Install step's advice when the
component's user cannot open /dev/video* (only the devices the configured source opens, and one that is not
there named)."""

from __future__ import annotations

import grp
import os
import sys
import types
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from trashsorter_edge.install import camera_access, camera_devices
from trashsorter_edge.sources import LatestFrame, SourceError, VideoSource, camera_kind, open_source


def test_a_source_names_its_camera_backend() -> None:
    assert [camera_kind(s) for s in ("0", "2", "/dev/video1")] == ["v4l2"] * 3
    assert [camera_kind(s) for s in ("picamera2", "picamera2:1")] == ["picamera2"] * 2
    pipeline = "nvarguscamerasrc ! video/x-raw(memory:NVMM) ! nvvidconv ! video/x-raw,format=BGRx ! appsink"
    assert [camera_kind(s) for s in (pipeline, "gst:v4l2src ! appsink")] == ["gstreamer"] * 2
    assert [camera_kind(s) for s in ("rtsp://cam/1", "http://cam/mjpg")] == ["stream"] * 2
    assert camera_kind("bins.avi") == "file"


class FakePicamera2:
    """picamera2.Picamera2's calls the source makes; frames are RGB888 (B, G, R in memory)."""

    opened: ClassVar[list[int]] = []

    def __init__(self, number: int) -> None:
        self.opened.append(number)
        self.frames = 0

    def create_video_configuration(self, main: dict[str, Any]) -> dict[str, Any]:
        assert main["format"] == "RGB888"
        return {"main": main}

    def configure(self, config: dict[str, Any]) -> None:
        self.size = config["main"]["size"]

    def start(self) -> None:
        return None

    def capture_array(self) -> np.ndarray:
        self.frames += 1
        if self.frames > 3:
            raise RuntimeError("camera unplugged")
        frame = np.zeros((self.size[1], self.size[0], 3), np.uint8)
        frame[:, :, 0] = 255  # blue in B, G, R order
        return frame

    def stop(self) -> None:
        return None

    def close(self) -> None:
        return None


def test_picamera2_frames_are_read_in_opencv_order(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("picamera2")
    module.Picamera2 = FakePicamera2  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "picamera2", module)
    source = open_source("picamera2:1", once=True)
    assert isinstance(source, LatestFrame)
    frames = list(source)
    assert FakePicamera2.opened == [1] and len(frames) == 1  # a camera's "now" is one frame
    assert frames[0].image.size == (640, 480)
    assert np.asarray(frames[0].image)[0, 0].tolist() == [0, 0, 255]  # blue stays blue


def test_picamera2_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import fails
    with pytest.raises(SourceError, match="python3-picamera2"):
        VideoSource("picamera2", once=True)


def test_a_gstreamer_pipeline_needs_an_opencv_with_gstreamer() -> None:
    cv2 = pytest.importorskip("cv2")
    if "GStreamer:                   YES" in cv2.getBuildInformation():
        pytest.skip("this OpenCV has GStreamer: the refusal cannot be shown")
    with pytest.raises(SourceError, match="no GStreamer support"):
        VideoSource("videotestsrc ! videoconvert ! appsink", once=True)


def test_install_says_which_group_the_user_needs(tmp_path: Path) -> None:
    try:
        video = grp.getgrnam("video").gr_gid
    except KeyError:
        pytest.skip("no 'video' group on this system")
    device = tmp_path / "video0"
    device.write_bytes(b"")
    os.chown(device, 0, video)
    device.chmod(0o660)  # crw-rw---- root video, as udev creates it
    advice = camera_access([device], uid=4242, gids=[4242])
    assert advice is not None and "'video' group" in advice and "usermod -aG video" in advice
    assert str(device) in advice
    assert camera_access([device], uid=4242, gids=[4242, video]) is None  # in the group: fine
    assert camera_access([], uid=4242, gids=[]) is None  # no camera: nothing to say


def test_install_checks_the_devices_the_configured_source_opens(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in ("video0", "video1", "media0"):
        (dev / name).write_bytes(b"")
    every = [dev / "video0", dev / "video1"]
    assert camera_devices("1", dev) == [dev / "video1"]
    assert camera_devices("7", dev) == [dev / "video7"]  # not there: the check names it
    assert camera_devices("/dev/video2", dev) == [Path("/dev/video2")]
    assert camera_devices("picamera2", dev) == [*every, dev / "media0"]  # libcamera opens both kinds
    pipeline = "v4l2src device=/dev/video3 ! videoconvert ! appsink"
    assert camera_devices(pipeline, dev) == [Path("/dev/video3")]
    assert camera_devices("gst:nvarguscamerasrc ! nvvidconv ! appsink", dev) == every
    for no_camera in ("rtsp://cam/1", "http://cam/mjpg", "photos", "bins.avi"):
        assert camera_devices(no_camera, dev) == []
    assert camera_devices("", dev) == every  # the source is not known: every camera
    advice = camera_access([dev / "video0", dev / "video7"], uid=0, gids=[0])
    assert advice is not None and f"no camera at {dev / 'video7'}" in advice and "video0" not in advice
