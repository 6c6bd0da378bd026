"""The edge app for real: video files through OpenCV, a folder that receives new files, the sort-command
rule, the publish rate, a new model version picked up live, and the outputs."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

import boto3
import cv2
import numpy as np
import pytest
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID
from moto.iotdata.models import iotdata_backends
from PIL import Image

from tests.support.recorder import Recorder
from tests.support.tiny_model import TinyModel
from trashsorter_edge.app import EdgeApp, Settings
from trashsorter_edge.model import Model
from trashsorter_edge.outputs import GreengrassIpcPublisher, IotDataPublisher, PublishError
from trashsorter_edge.preprocessing import from_bgr
from trashsorter_edge.sources import FolderSource, open_source

pytestmark = pytest.mark.slow  # uses the session's tiny trained model


def write_video(path: Path, photos: list[Path], repeat: int = 3, size: tuple[int, int] = (320, 240)) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, size)
    assert writer.isOpened()
    for photo in photos:
        frame = np.asarray(Image.open(photo).convert("RGB").resize(size))[:, :, ::-1]
        for _ in range(repeat):
            writer.write(np.ascontiguousarray(frame))
    writer.release()


def test_video_file_every_frame_classified_like_the_decoded_frame(
    tiny_model: TinyModel, tmp_path: Path
) -> None:
    video = tmp_path / "bin.avi"
    write_video(video, tiny_model.unseen[:2])
    recorder = Recorder()
    app = EdgeApp(tiny_model.model_dir, recorder, Settings(thing="cam1", publish_rate=0, debounce=2))
    counts = app.run(open_source(str(video), once=True))

    results = recorder.on("cam1/infer")
    assert counts["frames"] == len(results) == 6
    capture = cv2.VideoCapture(str(video))
    model = Model(tiny_model.model_dir)
    for result in results:
        ok, frame = capture.read()
        assert ok
        expected = model.predict(from_bgr(frame)).ranked[0]
        assert (result["label"], result["confidence"]) == (expected[0], pytest.approx(expected[1], abs=1e-6))
        assert result["source"] == str(video)
    assert [m["status"] for m in recorder.on("cam1/status")] == ["loading", "loaded"]


def test_the_model_s_threads_sleep_between_frames(tiny_model: TinyModel) -> None:
    """A camera station waits for each next frame: onnxruntime's threads may not spin through the wait."""
    options = Model(tiny_model.model_dir).session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_folder_source_picks_up_new_files(tiny_model: TinyModel, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(tiny_model.unseen[0], inbox / "a.jpg")
    recorder = Recorder()
    app = EdgeApp(tiny_model.model_dir, recorder, Settings())
    source = FolderSource(inbox, once=False, poll_s=0.05)
    worker = threading.Thread(target=app.run, args=(source,))
    worker.start()
    try:
        deadline = time.monotonic() + 20
        while len(recorder.on("/infer")) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        shutil.copy(tiny_model.unseen[-1], inbox / "b.jpg")
        (inbox / "notes.txt").write_text("not an image")
        while len(recorder.on("/infer")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        app.stop()
        worker.join(timeout=10)
    assert [r["image"] for r in recorder.on("/infer")] == ["a.jpg", "b.jpg"]


def test_a_new_model_version_is_picked_up_without_restart(tiny_model: TinyModel, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model.model_dir, model_dir)
    photo = Image.open(tiny_model.unseen[0])
    recorder = Recorder()
    app = EdgeApp(model_dir, recorder, Settings())
    app.handle._check_every_s = 0
    first = app.handle_frame(_frame(photo), continuous=False)
    (model_dir / "labels.txt").write_text("Bin-A\nBin-B\n")  # the deployment of a new version
    second = app.handle_frame(_frame(photo), continuous=False)
    assert (
        first
        and second
        and first["label"] in {"Compost", "Recycling"}
        and second["label"] in {"Bin-A", "Bin-B"}
    )
    (model_dir / "labels.txt").write_text("only-one\n")  # a broken version: keep serving the last good one
    third = app.handle_frame(_frame(photo), continuous=False)
    assert third and third["label"] in {"Bin-A", "Bin-B"}
    statuses = [m["status"] for m in recorder.on("/status")]
    assert statuses == ["loading", "loaded", "loading", "loaded", "loading", "error"]


def _frame(image: Image.Image) -> Any:
    from trashsorter_edge.sources import Frame

    return Frame(image.convert("RGB"), "test", "frame")


def test_publish_rate_limits_a_continuous_source_and_one_command_per_item(tiny_model: TinyModel) -> None:
    recorder = Recorder()
    app = EdgeApp(tiny_model.model_dir, recorder, Settings(publish_rate=1.0, debounce=3, threshold=0.0))
    frame = _frame(Image.open(tiny_model.unseen[0]))
    for _ in range(10):
        app.handle_frame(frame, continuous=True)
    assert app.counts["frames"] == 10 and len(recorder.on("/infer")) == 1  # 10 frames within a second
    objects = recorder.on("/object")
    assert objects == [{"object": app.latest["label"]}]  # type: ignore[index]
    assert recorder.qos[recorder.messages.index(("trashsorter/local/object", objects[0]))] == 1


def test_iot_data_output_publishes_to_the_data_plane() -> None:
    with mock_aws():
        publisher = IotDataPublisher(client=boto3.client("iot-data", region_name="us-east-1"))
        publisher.publish("trashsorter/cam1/infer", {"label": "Compost", "confidence": 0.9})
        published = iotdata_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].published_payloads
    assert published == [("trashsorter/cam1/infer", b'{"confidence":0.9,"label":"Compost"}')]


def test_greengrass_ipc_output_says_what_is_missing() -> None:
    try:
        import awsiot  # noqa: F401
    except ImportError:
        with pytest.raises(PublishError, match="awsiotsdk"):
            GreengrassIpcPublisher()
    else:  # the SDK is there but no nucleus: the connection error is named
        with pytest.raises(PublishError, match="Greengrass nucleus IPC"):
            GreengrassIpcPublisher()
