"""The edge app on a video file: frames per second against a bare onnxruntime loop, frame -> publish latency,
peak memory.

Method: a 640x480 MJPG video made of the TrashNet sample photos (each held for 3 frames); the model is the
trainer's graph (EfficientNet-Lite0 + a 3-class head, exported by ``export_onnx`` at 224 px in a separate
process; weights do not change the speed), so this process never loads torch. The bare loop is OpenCV
``read`` -> THE preprocessing -> ``session.run`` (the edge app's session options) over the same frames in
the same process; the edge app is
``EdgeApp.run(open_source(video))`` publishing every result (``publish_rate`` 0) to an in-memory publisher,
with the live view started and its frame hook attached but no viewer. The two alternate for 3 rounds (1 in
``--quick``); the median of each is reported, with the 1-minute load average (the machine may be shared).
Latency: frame capture (``Frame.captured_at``) -> the publisher receives the result. Peak memory: a fresh
Python process that runs ``trashsorter-edge --once --output jsonl`` on the same video and reports its own
``ru_maxrss`` (it checks that torch was never imported).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import SAMPLES, Result, Section, median


def make_model(directory: Path) -> Path:
    """The trainer's graph, exported in a child process (torch stays out of this one)."""
    script = (
        "import sys; from pathlib import Path; "
        "from trashsorter_trainer.model import TrashClassifier, export_onnx; "
        "export_onnx(TrashClassifier(3, pretrained=False), Path(sys.argv[1]) / 'model.onnx', 224)"
    )
    subprocess.run([sys.executable, "-c", script, str(directory)], check=True, timeout=600)
    (directory / "labels.txt").write_text("Compost\nLandfill\nRecycling\n")
    return directory


def make_video(path: Path, frames: int) -> Path:
    import cv2
    from PIL import Image

    photos = sorted(SAMPLES.glob("*/*.jpg"))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (640, 480))
    for i in range(frames):
        image = Image.open(photos[(i // 3) % len(photos)]).convert("RGB").resize((640, 480))
        writer.write(np.ascontiguousarray(np.asarray(image)[:, :, ::-1]))
    writer.release()
    return path


def bare_loop(model_dir: Path, video: Path) -> tuple[int, float]:
    import cv2
    import onnxruntime as ort

    from trashsorter_edge.model import session_options
    from trashsorter_edge.preprocessing import from_bgr, preprocess

    session = ort.InferenceSession(
        str(model_dir / "model.onnx"), session_options(), providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    capture = cv2.VideoCapture(str(video))
    frames = 0
    started = time.perf_counter()
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        session.run(None, {name: preprocess(from_bgr(frame), 224)[None]})
        frames += 1
    capture.release()
    return frames, time.perf_counter() - started


class Clock:
    """An in-memory publisher noting when each result arrives."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}

    def publish(self, topic: str, payload: dict[str, Any], qos: int = 0) -> None:
        if topic.endswith("/infer"):
            self.arrivals[str(payload["image"])] = time.time()

    def close(self) -> None:
        return None


def edge_app(model_dir: Path, video: Path) -> tuple[int, float, list[float]]:
    from trashsorter_edge.app import EdgeApp, Settings
    from trashsorter_edge.liveview import LiveView
    from trashsorter_edge.sources import open_source

    clock = Clock()
    captured: dict[str, float] = {}
    live = LiveView(port=0).start()  # serving, nobody watching
    app = EdgeApp(
        model_dir,
        clock,
        Settings(publish_rate=0),
        hooks=[lambda frame, _result: captured.__setitem__(frame.name, frame.captured_at), live.hook],
    )
    source = open_source(str(video), once=True)
    started = time.perf_counter()
    counts = app.run(source)
    wall = time.perf_counter() - started
    live.stop()
    latencies = [clock.arrivals[name] - captured[name] for name in captured if name in clock.arrivals]
    return counts["frames"], wall, latencies


MEMORY_PROBE = """
import json, resource, sys
from trashsorter_edge.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "torch": "torch" in sys.modules,
                  "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), file=sys.stderr)
"""


def peak_memory(model_dir: Path, video: Path) -> float:
    """Peak RSS of a fresh process running the edge app once over the video (never imports torch)."""
    command = [
        sys.executable,
        "-c",
        MEMORY_PROBE,
        "--model",
        str(model_dir),
        "--source",
        str(video),
        "--once",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=600)
    report = json.loads(done.stderr.strip().splitlines()[-1])
    if report["code"] != 0 or report["torch"]:
        raise RuntimeError(f"the edge app's memory probe is not a clean run: {report}")
    return float(report["max_rss_mib"])


def run(quick: bool = False) -> Section:
    section = Section("Edge app (video file)", method=__doc__ or "")
    frames_wanted, rounds = (60, 1) if quick else (180, 3)
    with tempfile.TemporaryDirectory(prefix="trashsorter-bench-edge-") as tmp:
        model_dir = make_model(Path(tmp))
        video = make_video(Path(tmp) / "bins.avi", frames_wanted)
        bare_fps, app_fps, latencies = [], [], []
        load = os.getloadavg()[0]
        for _ in range(rounds):
            n, wall = bare_loop(model_dir, video)
            bare_fps.append(n / wall)
            n_app, wall_app, lat = edge_app(model_dir, video)
            app_fps.append(n_app / wall_app)
            latencies += lat
        memory = peak_memory(model_dir, video)
        load = max(load, os.getloadavg()[0])
    ratio = median(app_fps) / median(bare_fps)
    lat_ms = sorted(1000 * v for v in latencies)
    section.results += [
        Result(
            "edge app",
            "fps: edge app / bare onnxruntime loop",
            f"{ratio:.2f}x",
            ">= 0.9x",
            ratio >= 0.9,
            notes=f"{median(app_fps):.1f} vs {median(bare_fps):.1f} fps, {frames_wanted} frames x {rounds}, "
            f"load average up to {load:.1f} on {os.cpu_count()} CPUs",
        ),
        Result(
            "edge app",
            "frame -> publish latency (median / p95)",
            f"{median(lat_ms):.1f} / {lat_ms[int(0.95 * (len(lat_ms) - 1))]:.1f} ms",
            notes=f"N={len(lat_ms)}",
        ),
        Result(
            "edge app",
            "peak memory (trashsorter-edge --once, a process without torch)",
            f"{memory:.0f} MiB",
        ),
    ]
    return section
