"""trashsorter inference on AWS DeepLens: the recipe's Lambda, brought to Python 3 and cleaned up.

Runs as a pinned (long-lived) Greengrass v1 Lambda on the camera. The package step deploys the model as a
Greengrass machine-learning resource unpacked to ``MODEL_PATH`` (``image-classification-symbol.json``,
``image-classification-0000.params``, ``labels.txt``); this function

1. reads ``labels.txt`` (one label per line, surrounding whitespace removed),
2. optimizes the MXNet model for the camera's GPU: ``mo.optimize("image-classification", 224, 224)``,
3. loads it with ``awscam.Model(model_path, {"GPU": 1})``,
4. loops: ``awscam.getLastFrame()`` -> resize to 224x224 -> ``doInference`` ->
   ``parseResult("classification")`` -> publishes the top-k labels as JSON to
   ``$aws/things/<thing>/infer`` (greengrasssdk iot-data client),
5. draws the label and probability on the frame and hands it to :class:`LocalDisplay`, which writes it to
   ``/tmp/results.mjpeg`` - the FIFO the DeepLens project stream shows (the recipe's overlay),
6. publishes ``{"object": <label>}`` on ``ACTUATOR_TOPIC`` (the recipe's Raspberry Pi actuator) when the
   top label changes and is at least ``THRESHOLD`` sure.

Status messages (``{"status": "loading model" | "model loaded"}``) and errors go to the infer topic; after
an error the loop goes on (a camera glitch must not stop the sorter).

Legacy: AWS DeepLens reached end of life on 2024-01-31 and AWS IoT Greengrass v1 ends support on
2026-10-07. Living devices run the Greengrass v2 component (``edge/trashsorter_edge``).
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import awscam  # type: ignore[import-not-found]
import greengrasssdk  # type: ignore[import-not-found]
import mo  # type: ignore[import-not-found]

MODEL_NAME = "image-classification"
INPUT_WIDTH = 224
INPUT_HEIGHT = 224
MODEL_PATH = os.environ.get("MODEL_PATH", "/trashsorter_model")
OPTIMIZED_DIR = os.environ.get("OPTIMIZED_MODEL_DIR", "/tmp/trashsorter_model")  # noqa: S108 - camera-local
TOP_K = int(os.environ.get("TOP_K", "3"))
THING_NAME = os.environ.get("AWS_IOT_THING_NAME", "deeplens")
TOPIC = f"$aws/things/{THING_NAME}/infer"
ACTUATOR_TOPIC = os.environ.get("ACTUATOR_TOPIC", f"trashsorter/{THING_NAME}/object")
THRESHOLD = float(os.environ.get("THRESHOLD", "0.6"))
RESULTS_PATH = os.environ.get("RESULTS_PATH", "/tmp/results.mjpeg")  # noqa: S108 - the project stream's FIFO
ERROR_PAUSE_S = 1.0


class LocalDisplay(threading.Thread):
    """Writes the latest labelled frame, JPEG-encoded, to the FIFO the DeepLens project stream reads.

    The FIFO is created when missing; the thread waits (without blocking forever) until the stream, its
    reader, is there. Each new frame is written once.
    """

    def __init__(self, path: str = RESULTS_PATH, size: tuple[int, int] = (858, 480)) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.size = size
        self._jpeg: bytes | None = None
        self._changed = threading.Condition()
        self._halt = threading.Event()

    def set_frame_data(self, frame: Any) -> None:
        import cv2  # type: ignore[import-not-found]

        ok, jpeg = cv2.imencode(".jpg", cv2.resize(frame, self.size))
        if ok:
            with self._changed:
                self._jpeg = jpeg.tobytes()
                self._changed.notify_all()

    def run(self) -> None:
        if not os.path.exists(self.path):
            os.mkfifo(self.path)
        fd = -1
        while fd < 0 and not self._halt.is_set():  # no reader yet: try again (never block forever)
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                self._halt.wait(0.5)
        if fd < 0:
            return
        os.set_blocking(fd, True)
        with os.fdopen(fd, "wb") as fifo:
            while not self._halt.is_set():
                with self._changed:
                    self._changed.wait(timeout=1.0)
                    jpeg, self._jpeg = self._jpeg, None
                if jpeg:
                    fifo.write(jpeg)
                    fifo.flush()

    def join(self, timeout: float | None = None) -> None:
        self._halt.set()
        with self._changed:
            self._changed.notify_all()
        super().join(timeout)


def draw_label(frame: Any, label: str, probability: float) -> Any:
    """The recipe's overlay: the label and probability written on the frame (orange, top left)."""
    import cv2  # type: ignore[import-not-found]

    labelled = frame.copy()
    cv2.putText(
        labelled, f"{label} {probability:.2f}", (10, 60), cv2.FONT_HERSHEY_SIMPLEX, 2.0, (20, 165, 255), 6
    )
    return labelled


def load_labels(path: str) -> list[str]:
    """Labels in class-index order, without trailing newlines or spaces; blank lines skipped."""
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


def resize(frame: Any, width: int = INPUT_WIDTH, height: int = INPUT_HEIGHT) -> Any:
    """The frame scaled to the network input (OpenCV on the camera; nearest-neighbour without it)."""
    try:
        import cv2  # type: ignore[import-not-found]

        return cv2.resize(frame, (width, height))
    except ImportError:
        import numpy as np

        rows = (np.arange(height) * frame.shape[0] // height).astype(int)
        cols = (np.arange(width) * frame.shape[1] // width).astype(int)
        return frame[rows][:, cols]


def optimize_model() -> str:
    """Convert the MXNet model to the camera's format; returns the optimized model path."""
    error, model_path = mo.optimize(
        MODEL_NAME,
        INPUT_WIDTH,
        INPUT_HEIGHT,
        aux_inputs={"--models-dir": MODEL_PATH, "--output-dir": OPTIMIZED_DIR},
    )
    if error:
        raise RuntimeError(f"model optimizer failed for {MODEL_NAME} in {MODEL_PATH}: error {error}")
    return str(model_path)


def top_k(parsed: list[dict[str, Any]], labels: list[str], k: int = TOP_K) -> list[dict[str, Any]]:
    """``parseResult`` entries ``{"label": index, "prob": p}`` as the k most probable named labels."""
    ranked = sorted(parsed, key=lambda entry: float(entry["prob"]), reverse=True)[:k]
    return [
        {
            "label": labels[int(entry["label"])]
            if 0 <= int(entry["label"]) < len(labels)
            else str(entry["label"]),
            "probability": round(float(entry["prob"]), 4),
        }
        for entry in ranked
    ]


def infer_once(
    model: Any,
    labels: list[str],
    client: Any,
    display: LocalDisplay | None = None,
    last: list[str] | None = None,
) -> list[dict[str, Any]]:
    """One frame: classify it, publish the top-k result, draw it for the project stream, tell the actuator
    when the sure label changes (``last`` holds the label sent before)."""
    ret, frame = awscam.getLastFrame()
    if not ret:
        raise RuntimeError("failed to get a frame from the camera stream")
    inference = model.doInference(resize(frame))
    results = top_k(model.parseResult("classification", inference)["classification"], labels)
    client.publish(
        topic=TOPIC,
        payload=json.dumps({"model": MODEL_NAME, "top_k": results, "timestamp": round(time.time(), 3)}),
    )
    best = results[0] if results else None
    if display is not None and best is not None:
        display.set_frame_data(draw_label(frame, best["label"], best["probability"]))
    if last is not None and best is not None and best["probability"] >= THRESHOLD:
        if not last or last[-1] != best["label"]:
            client.publish(topic=ACTUATOR_TOPIC, payload=json.dumps({"object": best["label"]}))
            last[:] = [best["label"]]
    return results


def infinite_infer_run(max_frames: int | None = None) -> None:
    """The long-lived loop (``max_frames`` bounds it for tests)."""
    client = greengrasssdk.client("iot-data")
    display = LocalDisplay()
    display.start()
    try:
        client.publish(topic=TOPIC, payload=json.dumps({"status": "loading model"}))
        try:
            labels = load_labels(os.path.join(MODEL_PATH, "labels.txt"))
            model = awscam.Model(optimize_model(), {"GPU": 1})
        except Exception as exc:  # report why the camera does nothing, then fail the start
            client.publish(topic=TOPIC, payload=json.dumps({"error": f"could not load the model: {exc}"}))
            raise
        client.publish(topic=TOPIC, payload=json.dumps({"status": "model loaded", "labels": labels}))
        frames = 0
        last: list[str] = []
        while max_frames is None or frames < max_frames:
            frames += 1
            try:
                infer_once(model, labels, client, display, last)
            except Exception as exc:  # noqa: BLE001 - keep sorting after a bad frame
                client.publish(topic=TOPIC, payload=json.dumps({"error": str(exc)}))
                time.sleep(ERROR_PAUSE_S)
    finally:
        display.join(timeout=2)


def function_handler(event: Any, context: Any) -> None:
    """Pinned Lambdas are not invoked per message; the loop below does the work."""
    return None


if os.environ.get("TRASHSORTER_AUTOSTART", "1") == "1":
    infinite_infer_run()
