"""The DeepLens inference function against stand-ins for ``awscam``, ``mo`` and ``greengrasssdk``.

The stand-ins are injected through ``sys.modules`` here, never in the function itself; frames are real
TrashNet photos decoded with Pillow.
"""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.support.stack import REPO_ROOT, SAMPLES_DIR

FUNCTION = REPO_ROOT / "edge" / "deeplens" / "lambda_function.py"


class FakeModel:
    def __init__(self, path: str, options: dict[str, int]) -> None:
        self.path, self.options = path, options
        self.inputs: list[Any] = []

    def doInference(self, frame: Any) -> dict[str, Any]:
        self.inputs.append(frame)
        return {"SoftMax": [0.07, 0.2, 0.73]}

    def parseResult(self, kind: str, inference: dict[str, Any]) -> dict[str, list[dict[str, float]]]:
        assert kind == "classification"
        return {kind: [{"label": i, "prob": p} for i, p in enumerate(inference["SoftMax"])]}


class Stand:
    """The three DeepLens modules, recording every call."""

    def __init__(self, frames: list[Any]) -> None:
        self.frames = list(frames)
        self.published: list[dict[str, Any]] = []
        self.optimize_calls: list[tuple[Any, ...]] = []
        self.models: list[FakeModel] = []
        self.optimize_error = 0

        awscam = types.ModuleType("awscam")

        def get_last_frame() -> tuple[bool, Any]:
            return (True, self.frames.pop(0)) if self.frames else (False, None)

        def model(path: str, options: dict[str, int]) -> FakeModel:
            self.models.append(FakeModel(path, options))
            return self.models[-1]

        awscam.getLastFrame = get_last_frame  # type: ignore[attr-defined]
        awscam.Model = model  # type: ignore[attr-defined]

        mo = types.ModuleType("mo")

        def optimize(name: str, width: int, height: int, **kwargs: Any) -> tuple[int, str]:
            self.optimize_calls.append((name, width, height, kwargs))
            return self.optimize_error, f"/tmp/trashsorter_model/{name}_FP16.xml"

        mo.optimize = optimize  # type: ignore[attr-defined]

        gg = types.ModuleType("greengrasssdk")
        stand = self

        class IotData:
            def publish(self, *, topic: str, payload: str) -> None:
                stand.published.append({"topic": topic, "payload": json.loads(payload)})

        def client(kind: str) -> IotData:
            assert kind == "iot-data"
            return IotData()

        gg.client = client  # type: ignore[attr-defined]
        self.modules = {"awscam": awscam, "mo": mo, "greengrasssdk": gg}


def load_function(monkeypatch: pytest.MonkeyPatch, stand: Stand, model_dir: Path) -> Any:
    for name, module in stand.modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setenv("TRASHSORTER_AUTOSTART", "0")
    monkeypatch.setenv("MODEL_PATH", str(model_dir))
    monkeypatch.setenv("AWS_IOT_THING_NAME", "deeplens_trashcam")
    monkeypatch.setenv("RESULTS_PATH", str(model_dir / "results.mjpeg"))
    spec = importlib.util.spec_from_file_location("deeplens_lambda_function", FUNCTION)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def photo_frame(material: str) -> np.ndarray:
    path = sorted((SAMPLES_DIR / material).glob("*.jpg"))[0]
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))[:, :, ::-1]  # the camera gives BGR


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "labels.txt").write_text("Compost\nLandfill \nRecycling\n\n", encoding="utf-8")
    return tmp_path


def test_loop_classifies_frames_and_publishes_top_k(monkeypatch: pytest.MonkeyPatch, model_dir: Path) -> None:
    stand = Stand([photo_frame("plastic"), photo_frame("cardboard")])
    fn = load_function(monkeypatch, stand, model_dir)

    fn.infinite_infer_run(max_frames=2)

    assert stand.optimize_calls == [
        (
            "image-classification",
            224,
            224,
            {"aux_inputs": {"--models-dir": str(model_dir), "--output-dir": "/tmp/trashsorter_model"}},
        )
    ]
    assert len(stand.models) == 1
    model = stand.models[0]
    assert model.path == "/tmp/trashsorter_model/image-classification_FP16.xml"
    assert model.options == {"GPU": 1}
    assert [frame.shape for frame in model.inputs] == [(224, 224, 3), (224, 224, 3)]
    infer = [p["payload"] for p in stand.published if p["topic"] == "$aws/things/deeplens_trashcam/infer"]
    loading, loaded, *results = infer
    assert loading == {"status": "loading model"}
    assert loaded == {"status": "model loaded", "labels": ["Compost", "Landfill", "Recycling"]}
    assert len(results) == 2
    # the recipe's actuator topic: once, when the sure label appears (not again for the same label)
    actuator = [p for p in stand.published if p["topic"] != "$aws/things/deeplens_trashcam/infer"]
    assert actuator == [{"topic": "trashsorter/deeplens_trashcam/object", "payload": {"object": "Recycling"}}]
    assert results[0]["top_k"] == [
        {"label": "Recycling", "probability": 0.73},
        {"label": "Landfill", "probability": 0.2},
        {"label": "Compost", "probability": 0.07},
    ]


def test_a_missing_frame_is_reported_and_the_loop_goes_on(
    monkeypatch: pytest.MonkeyPatch, model_dir: Path
) -> None:
    stand = Stand([])
    fn = load_function(monkeypatch, stand, model_dir)
    monkeypatch.setattr(fn, "ERROR_PAUSE_S", 0)
    fn.infinite_infer_run(max_frames=1)
    stand.frames.append(photo_frame("glass"))
    fn.infinite_infer_run(max_frames=1)
    payloads = [p["payload"] for p in stand.published if p["topic"].endswith("/infer")]
    assert {"error": "failed to get a frame from the camera stream"} in payloads
    assert payloads[-1]["top_k"][0]["label"] == "Recycling"


def test_optimizer_failure_is_published_and_raised(monkeypatch: pytest.MonkeyPatch, model_dir: Path) -> None:
    stand = Stand([])
    stand.optimize_error = 1
    fn = load_function(monkeypatch, stand, model_dir)
    with pytest.raises(RuntimeError, match="model optimizer failed"):
        fn.infinite_infer_run(max_frames=1)
    assert "could not load the model" in stand.published[-1]["payload"]["error"]
    assert stand.models == []


def test_top_k_limits_and_names_labels(monkeypatch: pytest.MonkeyPatch, model_dir: Path) -> None:
    fn = load_function(monkeypatch, Stand([]), model_dir)
    parsed = [{"label": 0, "prob": 0.1}, {"label": 2, "prob": 0.6}, {"label": 1, "prob": 0.3}]
    assert fn.top_k(parsed, ["Compost", "Landfill", "Recycling"], 2) == [
        {"label": "Recycling", "probability": 0.6},
        {"label": "Landfill", "probability": 0.3},
    ]
    assert fn.load_labels(str(model_dir / "labels.txt")) == ["Compost", "Landfill", "Recycling"]


def test_project_stream_gets_the_labelled_frame(monkeypatch: pytest.MonkeyPatch, model_dir: Path) -> None:
    """LocalDisplay writes the frame with the label drawn to the FIFO the project stream reads."""
    fn = load_function(monkeypatch, Stand([]), model_dir)
    fifo_path = model_dir / "stream.mjpeg"
    display = fn.LocalDisplay(str(fifo_path), size=(320, 240))
    display.start()
    frame = photo_frame("glass")
    labelled = fn.draw_label(frame, "Recycling", 0.73)
    assert not np.array_equal(labelled, frame) and np.array_equal(frame, photo_frame("glass"))  # a copy
    received: list[bytes] = []

    def read() -> None:
        with open(fifo_path, "rb") as stream:
            received.append(stream.read(200_000))

    deadline = time.monotonic() + 10
    while not fifo_path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.7)  # the writer finds its reader
    display.set_frame_data(labelled)
    time.sleep(0.3)
    display.join(timeout=5)
    reader.join(timeout=5)
    assert received and received[0][:2] == b"\xff\xd8"
    shown = np.asarray(Image.open(io.BytesIO(received[0])).convert("RGB"), dtype=np.int32)
    assert shown.shape == (240, 320, 3)
    orange = (np.abs(shown - np.array([255, 165, 20])).sum(axis=2) < 90).sum()  # BGR (20,165,255) drawn
    assert orange > 100, "the label is not drawn on the project stream"
