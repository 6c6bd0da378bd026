"""A real network camera stream: MJPEG over HTTP from a server in a thread (``tests.support.mjpeg``), real
JPEG frames of sample photos at 30 frames a second, read by OpenCV's FFmpeg backend. The edge app with
``--once`` reads every frame once, classifies the newest ones in order, skips the rest and ends with the
stream: the real program (``python -m trashsorter_edge``) and, slowed down by a hook, its run loop in this
process. How many seconds behind the stream it stays and how soon it exits are measured in
``benchmarks/bench_live.py``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.support.mjpeg import MjpegCamera, frame_number
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

SECONDS = 4.0


def test_the_edge_program_reads_an_http_mjpeg_stream_and_exits_with_it(tiny_model: TinyModel) -> None:
    with MjpegCamera(tiny_model.unseen, seconds=SECONDS) as camera:
        command = [sys.executable, "-m", "trashsorter_edge", "--model", str(tiny_model.model_dir)]
        command += ["--source", camera.url, "--once", "--output", "jsonl", "--publish-rate", "0"]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = process.communicate(timeout=120)
        finally:
            process.kill()
    assert process.returncode == 0, err
    assert camera.connections == 1 and len(camera.sent_at) == camera.frames
    results = [json.loads(line) for line in out.splitlines()]
    statuses = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    (stopped,) = [s["payload"] for s in statuses if s["payload"].get("status") == "stopped"]
    numbers = [frame_number(r["image"]) for r in results]
    assert numbers == sorted(set(numbers)) and len(numbers) == stopped["frames"] > 0
    assert stopped["frames"] + stopped["skipped"] == len(camera.sent_at)  # every frame read, once
    assert {r["label"] for r in results} <= {"Compost", "Recycling"} and stopped["errors"] == 0
    assert {r["source"] for r in results} == {camera.url}


def test_a_slow_run_loop_on_an_http_stream_takes_only_the_newest_frames(tiny_model: TinyModel) -> None:
    seen: list[int] = []  # frame numbers, in the order classified

    def slow_device(frame: Frame, _result: dict[str, Any]) -> None:
        seen.append(frame_number(frame.name))
        time.sleep(0.1)  # a device where a frame costs ~3 stream frames

    with MjpegCamera(tiny_model.unseen, seconds=SECONDS) as camera:
        app = EdgeApp(tiny_model.model_dir, Recorder(), Settings(publish_rate=0), hooks=[slow_device])
        source = open_source(camera.url, once=True)  # after the model, as the program does
        assert isinstance(source, LatestFrame)
        counts = app.run(source)
    assert counts["frames"] == len(seen) and counts["errors"] == 0
    assert counts["frames"] + counts["skipped"] == len(camera.sent_at) == camera.frames
    assert counts["skipped"] > counts["frames"]  # a 100+ ms per frame loop on a 30 fps stream
    assert seen == sorted(set(seen)) and seen[-1] <= camera.frames
