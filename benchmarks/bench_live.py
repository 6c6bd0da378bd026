"""The edge app on a live camera stream: how far behind the stream it classifies, and how soon it ends after
the stream does.

Method: an MJPEG-over-HTTP camera in a thread (``tests.support.mjpeg``: 640x480 JPEGs of TrashNet sample
photos at 30 frames a second for 10 s, 4 s in ``--quick``), read by OpenCV's FFmpeg backend. The model is the
trainer's graph, exported as in the edge benchmark. Two runs per round:

- the run loop in this process (``EdgeApp.run(open_source(url, once=True))``) with a hook that costs 100 ms a
  frame, a device three stream frames slower than its camera: "behind" is the frames the camera had sent when
  a frame was classified minus that frame's number, in seconds of stream; "ended" is from the camera closing
  the stream to ``run`` returning;
- the real program (``python -m trashsorter_edge --once --output jsonl``) at its own speed: "exited" is from
  the camera closing the stream to the process's exit, the interpreter's teardown included; its CPU time
  (user + system, every thread) divided by the frames it classified.

3 rounds (1 in ``--quick``); the worst of each is reported, with the 1-minute load average. The tests check
the logic (the newest frame taken each time, every frame read once, the run ends with the stream); these are
the numbers a camera station depends on.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_edge import Clock, make_model
from benchmarks.common import SAMPLES, Result, Section

FRAME_COST_S = 0.1  # the slow device's time per frame
FPS = 30.0


def slow_loop(model_dir: Path, photos: list[Path], seconds: float) -> tuple[float, float, dict[str, int]]:
    """(most seconds of stream behind, seconds from the stream's end to ``run`` returning, the counts)."""
    from tests.support.mjpeg import MjpegCamera, frame_number
    from trashsorter_edge.app import EdgeApp, Settings
    from trashsorter_edge.sources import open_source

    classified: list[tuple[int, float]] = []

    def slow_device(frame: Any, _result: dict[str, Any]) -> None:
        classified.append((frame_number(frame.name), time.time()))
        time.sleep(FRAME_COST_S)

    with MjpegCamera(photos, FPS, seconds) as camera:
        app = EdgeApp(model_dir, Clock(), Settings(publish_rate=0), hooks=[slow_device])
        counts = app.run(open_source(camera.url, once=True))
        ended = time.monotonic() - camera.ended_at
    behind = max(camera.sent_by(at) - number for number, at in classified)
    return behind / FPS, ended, counts


def program_exit(model_dir: Path, photos: list[Path], seconds: float) -> tuple[float, float]:
    """Seconds from the stream's end to the edge program's exit, and the program's CPU seconds per frame
    it classified."""
    from tests.support.mjpeg import MjpegCamera

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with MjpegCamera(photos, FPS, seconds) as camera:
        command = [
            sys.executable,
            "-m",
            "trashsorter_edge",
            "--model",
            str(model_dir),
            "--source",
            camera.url,
        ]
        command += ["--once", "--output", "jsonl", "--publish-rate", "0"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        exited = time.monotonic() - camera.ended_at
    if done.returncode != 0:
        raise RuntimeError(f"the edge program failed on the stream: {done.stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    frames = sum(1 for line in done.stdout.splitlines() if line.startswith("{"))
    return exited, cpu / max(1, frames)


def run(quick: bool = False) -> Section:
    section = Section("Edge app (live stream)", method=__doc__ or "")
    seconds, rounds = (4.0, 1) if quick else (10.0, 3)
    photos = sorted(SAMPLES.glob("*/*.jpg"))[::10]
    behind, ended, exited, skipped, cpu = [], [], [], [], []
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="trashsorter-bench-live-") as tmp:
        model_dir = make_model(Path(tmp))
        for _ in range(rounds):
            lag, end, counts = slow_loop(model_dir, photos, seconds)
            behind.append(lag)
            ended.append(end)
            skipped.append(counts["skipped"] / (counts["skipped"] + counts["frames"]))
            exit_after, cpu_per_frame = program_exit(model_dir, photos, seconds)
            exited.append(exit_after)
            cpu.append(cpu_per_frame)
            load = max(load, os.getloadavg()[0])
    where = (
        f"{seconds:.0f} s at {FPS:.0f} fps x {rounds}, load average up to {load:.1f} on {os.cpu_count()} CPUs"
    )
    section.results += [
        Result(
            "live stream, 100 ms per frame",
            "behind the stream when classified (worst)",
            f"{max(behind):.2f} s",
            "<= 0.5 s",
            max(behind) <= 0.5,
            notes=f"{100 * min(skipped):.0f}-{100 * max(skipped):.0f} % of frames skipped; {where}",
        ),
        Result(
            "live stream, 100 ms per frame",
            "run loop ended after the stream (worst)",
            f"{max(ended):.2f} s",
            "<= 1.0 s",
            max(ended) <= 1.0,
            notes=where,
        ),
        Result(
            "live stream, the program",
            "exited after the stream (worst, interpreter teardown included)",
            f"{max(exited):.2f} s",
            "<= 1.5 s",
            max(exited) <= 1.5,
            notes=where,
        ),
        Result(
            "live stream, the program",
            "CPU per classified frame (worst)",
            f"{1000 * max(cpu):.0f} ms",
            notes=f"all cores together, the stream's decoding included; {where}",
        ),
    ]
    return section
