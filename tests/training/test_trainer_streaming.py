"""The streaming trainer: photos read from their files by data-loader workers train the same model as
photos in memory read in the trainer's process; metrics.json records its peak memory and speed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.support.streaming_photos import two_bins
from trashsorter_trainer.train import TrainConfig, train

TINY = TrainConfig(epochs=2, views=2, image_size=96, batch_size=4, threads=2)


@pytest.mark.slow
def test_photos_streamed_from_files_by_workers_train_the_same_model(tmp_path: Path) -> None:
    on_disk, labels = two_bins(from_files=True)
    in_memory, _ = two_bins(from_files=False)
    streamed = train(on_disk, labels, tmp_path / "a", TrainConfig(**{**TINY.__dict__, "loader_workers": 2}))
    inline = train(in_memory, labels, tmp_path / "b", TrainConfig(**{**TINY.__dict__, "loader_workers": 0}))
    assert streamed.validation_probabilities is not None and inline.validation_probabilities is not None
    np.testing.assert_array_equal(streamed.validation_probabilities, inline.validation_probabilities)
    np.testing.assert_array_equal(streamed.shipped_probabilities, inline.shipped_probabilities)
    used = json.loads((tmp_path / "a" / "metrics.json").read_text())["resources"]
    assert used["photos"] == 10 and used["loader_workers"] == 2
    assert 100 < used["peak_memory_mb"] < 8000 and used["photos_per_second"] > 0
    # 2 views x 6 training photos + (with the refit) 2 views x 4 validation photos + 4 + 4 flipped, 1280-d
    assert used["feature_cache_mb"] == pytest.approx((12 + 8 + 8) * 1280 * 4 / 1024**2, abs=0.05)
