"""Every frame a device produces: grey, 4-channel, 16-bit (scaled, not clipped), float, palette, CMYK, odd
sizes are classified the way the trainer preprocesses them; an empty or shapeless frame is counted and
reported and the loop goes on."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.support.recorder import Recorder
from tests.support.tiny_model import TinyModel
from trashsorter_edge.app import EdgeApp, Settings
from trashsorter_edge.frames import from_array
from trashsorter_edge.model import Model
from trashsorter_edge.preprocessing import UndecodableImage, to_rgb8
from trashsorter_edge.sources import Frame, LatestFrame, RawFrame
from trashsorter_trainer import data


def photo(tiny_model: TinyModel, size: tuple[int, int] = (160, 120)) -> np.ndarray:
    return np.asarray(Image.open(tiny_model.unseen[0]).convert("RGB").resize(size))


def test_frame_conversions_scale_and_never_clip() -> None:
    grey = np.arange(0, 256, dtype=np.uint8).reshape(16, 16)
    assert np.array_equal(np.asarray(from_array(grey)), np.repeat(grey[:, :, None], 3, axis=2))
    assert np.array_equal(np.asarray(from_array(grey[:, :, None])), np.asarray(from_array(grey)))
    deep = grey.astype(np.uint16) * 257  # the same picture in 16 bits
    assert np.array_equal(np.asarray(from_array(deep)), np.asarray(from_array(grey)))
    dim = np.full((4, 4), 1000, dtype=np.uint16)  # a dark 16-bit frame stays dark (clipping gives 255)
    assert np.asarray(from_array(dim)).max() == 4  # 1000 * 255 / 65535 = 3.9, rounded
    ramp = np.arange(0, 65536, 97, dtype=np.uint16).reshape(1, -1)  # a 16-bit frame and a 16-bit file agree
    assert np.array_equal(np.asarray(from_array(ramp)), np.asarray(to_rgb8(Image.fromarray(ramp))))
    bgr = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    bgra = np.concatenate([bgr, np.zeros((5, 7, 1), np.uint8)], axis=2)
    assert np.array_equal(np.asarray(from_array(bgra)), np.asarray(from_array(bgr)))
    assert np.array_equal(np.asarray(from_array(bgr)), bgr[:, :, ::-1])
    assert np.asarray(from_array(np.ones((2, 2)))).min() == 255  # float frames are 0..1
    for bad in (np.zeros((0, 0, 3), np.uint8), np.zeros((4, 0), np.uint8), np.zeros(5, np.uint8)):
        with pytest.raises(UndecodableImage, match="empty or shapeless"):
            from_array(bad)
    with pytest.raises(UndecodableImage, match="5 channels"):
        from_array(np.zeros((4, 4, 5), np.uint8))
    i16 = Image.fromarray(deep)
    assert i16.mode == "I;16"
    assert np.array_equal(np.asarray(to_rgb8(i16))[:, :, 0], grey)  # Pillow's convert would clip


class OneAtATime:
    """A live reader that hands over its next frame only once the previous one was taken (no skips)."""

    def __init__(self, frames: list[Any]) -> None:
        self.frames = frames
        self.taken = threading.Semaphore(1)

    def __iter__(self) -> Iterator[RawFrame]:
        for number, array in enumerate(self.frames, 1):
            self.taken.acquire()
            yield RawFrame(array, number)

    def to_frame(self, raw: RawFrame) -> Frame:
        self.taken.release()
        return Frame(from_array(raw.array), "camera", f"frame-{raw.number}")

    def stop(self) -> None:
        return None


@pytest.mark.slow
def test_odd_camera_frames_are_classified_or_reported_and_the_loop_goes_on(tiny_model: TinyModel) -> None:
    rgb = photo(tiny_model)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    frames = [
        bgr[:, :, 1],  # grey
        np.zeros((0, 0, 3), np.uint8),  # empty
        np.concatenate([bgr, np.full((*bgr.shape[:2], 1), 255, np.uint8)], axis=2),  # BGRA
        bgr.astype(np.uint16) * 257,  # 16-bit
        bgr[:1, :1],  # 1x1
        np.ascontiguousarray(np.resize(bgr, (7, 3001, 3))),  # a thin odd size
        np.zeros((4, 4, 5), np.uint8),  # not a picture
        bgr,
    ]
    reader = OneAtATime(frames)
    recorder = Recorder()
    app = EdgeApp(tiny_model.model_dir, recorder, Settings(publish_rate=0))
    counts = app.run(LatestFrame(reader, reader.to_frame))
    results = [p for t, p in recorder.messages if t.endswith("/infer")]
    errors = [p for t, p in recorder.messages if t.endswith("/status") and p["status"] == "error"]
    assert [r["image"] for r in results] == ["frame-1", "frame-3", "frame-4", "frame-5", "frame-6", "frame-8"]
    assert [e["image"] for e in errors] == ["2", "7"] and counts["errors"] == 2
    model = Model(tiny_model.model_dir)
    for result, array in zip(results, [frames[i] for i in (0, 2, 3, 4, 5, 7)], strict=True):
        expected = model.predict(data.decode(from_array(array))).ranked[0]
        assert result["label"] == expected[0]
        assert result["confidence"] == pytest.approx(expected[1], abs=1e-6)
    by_name = {r["image"]: r["confidence"] for r in results}
    assert by_name["frame-3"] == by_name["frame-4"] == by_name["frame-8"]  # BGRA, 16-bit, BGR: one picture


@pytest.mark.slow
def test_pictures_of_any_mode_classify_like_the_trainer_and_empty_ones_are_reported(
    tiny_model: TinyModel,
) -> None:
    base = Image.fromarray(photo(tiny_model))
    pictures = {
        "L": base.convert("L"),
        "LA": base.convert("LA"),
        "RGBA": base.convert("RGBA"),
        "P": base.convert("P"),
        "CMYK": base.convert("CMYK"),
        "odd": base.resize((37, 251)),
    }
    recorder = Recorder()
    app = EdgeApp(tiny_model.model_dir, recorder, Settings(publish_rate=0))
    model = Model(tiny_model.model_dir)
    for name, picture in pictures.items():
        result = app.handle_frame(Frame(picture, "camera", name), continuous=True)
        expected = model.predict(data.decode(picture)).ranked[0]  # the trainer's decode + preprocessing
        assert result is not None and result["label"] == expected[0], name
        assert result["confidence"] == pytest.approx(expected[1], abs=1e-6), name
    deep = Image.fromarray(np.asarray(base.convert("L")).astype(np.uint16) * 257)
    deep_result = app.handle_frame(Frame(deep, "camera", "16-bit"), continuous=True)
    grey_result = app.handle_frame(Frame(base.convert("L"), "camera", "grey"), continuous=True)
    assert deep_result and grey_result and deep_result["confidence"] == grey_result["confidence"]
    assert app.handle_frame(Frame(Image.new("RGB", (0, 0)), "camera", "empty"), continuous=True) is None
    assert app.counts["errors"] == 1 and app.counts["frames"] == len(pictures) + 3
