"""The trainer streams its photos from their files, caches features in a memory map on disk, records its
peak memory and speed, and a trainer killed for memory fails with a plain reason."""

from __future__ import annotations

import io
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support.streaming_photos import two_bins
from trashsorter_cli.local.sagemaker_jobs import JobEmulator
from trashsorter_trainer import entry, stream
from trashsorter_trainer.contract import out_of_memory_reason
from trashsorter_trainer.data import Sample, decode, upright_size
from trashsorter_trainer.train import TrainConfig, train

TINY = TrainConfig(epochs=2, views=2, image_size=96, batch_size=4, threads=2)


def test_feature_pass_writes_a_memory_map_in_job_order(tmp_path: Path) -> None:
    samples, _ = two_bins(from_files=True)
    jobs = [stream.Job(0), stream.Job(0, flip=True), stream.Job(1), stream.Job(2)]
    photos = stream.Photos(samples, jobs, 32)
    bank = stream.feature_pass(lambda x: x.mean(dim=(2, 3)), photos, [2, 2], 3, 0, tmp_path / "features.npy")
    assert isinstance(bank, np.memmap) and (tmp_path / "features.npy").is_file()
    expected = np.stack([photos[i].mean(axis=(1, 2)) for i in range(4)])
    np.testing.assert_allclose(bank, expected, rtol=1e-6)
    # batches never cross a segment: [2, 2] in batches of 3 -> 2 + 2
    assert [len(b) for b in stream.SegmentBatches([2, 2], 3)] == [2, 2]


def test_feature_pass_hands_the_batches_over_in_the_models_layout(tmp_path: Path) -> None:
    samples, _ = two_bins(from_files=True)
    photos = stream.Photos(samples, [stream.Job(0), stream.Job(1), stream.Job(2)], 32)
    layouts: list[bool] = []

    def frozen(x: torch.Tensor) -> torch.Tensor:
        layouts.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        return x.mean(dim=(2, 3))

    last = stream.feature_pass(frozen, photos, [3], 2, 0, tmp_path / "a.npy", layout=torch.channels_last)
    assert layouts == [True, True]
    default = stream.feature_pass(lambda x: x.mean(dim=(2, 3)), photos, [3], 2, 0, tmp_path / "b.npy")
    np.testing.assert_allclose(last, default, rtol=1e-6)


def test_a_photo_a_worker_cannot_decode_fails_with_its_own_reason(tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    photos = stream.Photos([Sample("paper/broken.jpg", "Compost", "train", broken)], [stream.Job(0)], 32)
    with pytest.raises(Exception, match=r"^cannot decode paper/broken.jpg") as caught:
        list(stream.batches(photos, [1], 1, 1))
    assert "Traceback" not in str(caught.value)


def test_the_size_read_from_the_header_is_the_decoded_size_with_the_exif_orientation() -> None:
    image = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: decode turns it upright, 20 x 40
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif)
    assert upright_size(buffer.getvalue()) == decode(buffer.getvalue()).size == (20, 40)


def _job(tmp_path: Path, photos: int) -> dict[str, str]:
    for split, count in (("train", photos - 1), ("validation", 1)):
        lst = tmp_path / "input" / "data" / f"{split}_lst"
        lst.mkdir(parents=True)
        (lst / f"{split}.lst").write_text("".join(f"{i}\t0\tx/{i}.jpg\n" for i in range(count)))
    return {
        "SM_OUTPUT_DIR": str(tmp_path / "output"),
        "SM_INPUT_CONFIG_DIR": str(tmp_path / "input" / "config"),
        "SM_CHANNEL_TRAIN_LST": str(tmp_path / "input" / "data" / "train_lst"),
        "SM_CHANNEL_VALIDATION_LST": str(tmp_path / "input" / "data" / "validation_lst"),
    }


def test_a_trainer_the_kernel_kills_fails_the_job_with_the_memory_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the out-of-memory killer's SIGKILL, sent for real to the training child (the memory is not filled)
    for name, value in _job(tmp_path, 2467).items():
        monkeypatch.setenv(name, value)
    (tmp_path / "input" / "config").mkdir(parents=True)
    (tmp_path / "input" / "config" / "resourceconfig.json").write_text(
        json.dumps({"current_host": "algo-1", "current_instance_type": "ml.g4dn.xlarge"})
    )
    monkeypatch.setattr(entry, "train_and_report", lambda env: os.kill(os.getpid(), signal.SIGKILL))
    assert entry.main() == 1
    reason = (tmp_path / "output" / "failure").read_text()
    assert reason.startswith("ran out of memory at 2467 photos on an instance with ")
    assert "(ml.g4dn.xlarge)" in reason and "choose a training instance type with more memory" in reason


def test_a_local_job_killed_with_exit_code_minus_9_reports_the_memory(tmp_path: Path) -> None:
    _job(tmp_path, 20000)
    reason = JobEmulator.failure_reason(tmp_path, -9, ["epoch 6/10 train:loss=0.4"])
    assert reason.startswith("ran out of memory at 20000 photos on an instance with ")
    assert "(this machine)" in reason
    (tmp_path / "output").mkdir()
    (tmp_path / "output" / "failure").write_text("the trainer's own reason")
    assert JobEmulator.failure_reason(tmp_path, -9, []) == "the trainer's own reason"
    assert JobEmulator.failure_reason(tmp_path / "none", 1, ["a", "b"]) == "a\nb"


def test_memory_errors_in_training_become_the_memory_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    from trashsorter_trainer import train as train_module
    from trashsorter_trainer.errors import TrainerError

    def fail(*args: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(train_module, "_train", fail)
    samples, labels = two_bins(from_files=True)
    with pytest.raises(TrainerError, match=r"^ran out of memory at 10 photos on an instance with .* GB: "):
        train(samples, labels, "/nonexistent-never-written", TINY)
    assert "OutOfMemoryError" in out_of_memory_reason(1, 1.0, how="OutOfMemoryError: x")


def test_a_pass_over_the_photos_leaves_torchs_random_draws_as_they_were() -> None:
    # dropout and a new classifier's weights draw from torch's global generator: reading photos must not
    samples, _ = two_bins(from_files=True)
    photos = stream.Photos(samples, [stream.Job(0), stream.Job(1)], 32)
    before = torch.random.get_rng_state()
    for workers in (0, 1):
        assert len(list(stream.batches(photos, [2], 1, workers))) == 2
    assert torch.equal(before, torch.random.get_rng_state())
