"""The fine-tuning stage (``finetune_epochs``, the CUDA schedule's default) on real photos, on the CPU."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.support.tiny_model import TINY, tiny_samples, train_tiny
from trashsorter_cli.trainer import crossval
from trashsorter_trainer.config import GPU_SCHEDULE, TrainConfig
from trashsorter_trainer.data import preprocess
from trashsorter_trainer.errors import TrainerError
from trashsorter_trainer.model import HEAD_ONLY, TrashClassifier, pretrained_weights_path
from trashsorter_trainer.train import SPLIT_MODEL_FILE, TrainResult, run_onnx

FINETUNE = replace(TINY, finetune_epochs=2)


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    return train_tiny(tmp_path_factory.mktemp("ft"), FINETUNE)


def test_unfreeze_makes_everything_but_the_stem_trainable() -> None:
    model = TrashClassifier(2, split=HEAD_ONLY)
    assert {id(p) for p in model.parameters() if p.requires_grad} == {id(p) for p in model.head_parameters()}
    model.unfreeze()
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    stem = {id(p) for p in [*model.net._conv_stem.parameters(), *model.net._bn0.parameters()]}
    assert trainable == {id(p) for p in model.parameters()} - stem
    assert trainable == {id(p) for p in model.tail_parameters()}


@pytest.mark.slow
def test_fine_tuning_trains_the_backbone_and_the_shipped_graph_is_that_network(
    finetuned: TrainResult,
) -> None:
    checkpoint = torch.load(pretrained_weights_path(), map_location="cpu")
    net = finetuned.model.net
    assert torch.equal(net._conv_stem.weight, checkpoint["_conv_stem.weight"])  # the stem stays frozen
    for name in ("_blocks.0._depthwise_conv.weight", "_blocks.15._project_conv.weight", "_conv_head.weight"):
        assert not torch.equal(net.state_dict()[name], checkpoint[name]), name  # the backbone trained
    # BatchNorm keeps the ImageNet statistics (batches of a few photos cannot estimate them)
    assert torch.equal(net._blocks[5]._bn1.running_mean, checkpoint["_blocks.5._bn1.running_mean"])

    samples, _ = tiny_samples()
    batch = np.stack([preprocess(s.data, 128) for s in samples])
    with torch.inference_mode():
        expected = finetuned.model(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(run_onnx(finetuned.output_dir / "model.onnx", batch), expected, atol=1e-4)
    metrics = json.loads((finetuned.output_dir / "metrics.json").read_text())
    assert metrics["onnx_max_abs_diff"] < 1e-4  # the split run's graph against the fine-tuned torch model
    validation = [s for s in samples if s.split == "validation"]
    split_probs = run_onnx(
        finetuned.output_dir / SPLIT_MODEL_FILE, batch[[samples.index(s) for s in validation]]
    )
    np.testing.assert_allclose(finetuned.validation_probabilities, split_probs, atol=1e-6)  # type: ignore[arg-type]


@pytest.mark.slow
def test_fine_tuning_epochs_continue_the_history_and_the_progress(finetuned: TrainResult) -> None:
    metrics = json.loads((finetuned.output_dir / "metrics.json").read_text())
    total = FINETUNE.epochs + FINETUNE.finetune_epochs
    assert metrics["finetune_epochs"] == 2 and metrics["refit"]["finetune_epochs"] == 2
    assert [h["epoch"] for h in metrics["history"]] == list(range(1, total + 1))
    assert {h["epochs"] for h in metrics["history"]} == {total}
    epochs = [e for e in finetuned.metrics["_progress_seen"] if "phase" not in e]
    assert epochs == metrics["history"]
    # the fine-tuning epochs' validation numbers come from the whole network, not the stale cached features
    last = metrics["history"][-1]
    assert 0 <= last["val_accuracy"] <= 1 and last["val_loss"] > 0


def test_fine_tuning_settings_and_the_cuda_schedule() -> None:
    config = TrainConfig.from_hyperparameters(
        {"local_finetune_epochs": "3", "local_finetune_learning_rate": "0.0001", "device": "cpu"}
    )
    assert (config.finetune_epochs, config.finetune_learning_rate, config.device) == (3, 1e-4, "cpu")
    assert TrainConfig().finetune_epochs == 0  # the CPU keeps the fast schedule
    cuda = TrainConfig.for_device("cuda")
    assert cuda.device == "cuda" and cuda.finetune_epochs == GPU_SCHEDULE["finetune_epochs"] > 0
    with pytest.raises(TrainerError, match="finetune_epochs needs finetune_blocks -1"):
        TrainConfig.from_hyperparameters({"local_finetune_epochs": "2", "local_finetune_blocks": "1"})
    with pytest.raises(TrainerError, match="finetune_epochs must be >= 0"):
        TrainConfig.from_hyperparameters({"local_finetune_epochs": "-1"})


@pytest.mark.slow
def test_crossval_of_a_fine_tuning_setting_runs_the_trainer_per_fold(monkeypatch: pytest.MonkeyPatch) -> None:
    samples, labels = tiny_samples(4, 0)
    calls: list[tuple[int, bool]] = []
    real_train = crossval.train

    def recording_train(fold, labels, out, config):  # type: ignore[no-untyped-def]
        calls.append((sum(s.split == "validation" for s in fold), config.refit))
        return real_train(fold, labels, out, config)

    monkeypatch.setattr(crossval, "train", recording_train)
    base = {"epochs": "1", "local_views": "1", "image_shape": "3,64,64", "mini_batch_size": "8"}
    [result] = crossval.crossvalidate(samples, labels, [{"local_finetune_epochs": "1"}], folds=2, base=base)
    folds = [crossval.fold_of(s.data, 2) for s in samples]
    assert sorted(n for n, _ in calls) == sorted(folds.count(k) for k in set(folds))  # one run per fold
    assert not any(refit for _, refit in calls)  # scored on the split run's graph
    matrix = result["confusion_matrix"]
    assert sum(map(sum, matrix)) == len(samples)  # every photo held out exactly once
    assert result["pooled_accuracy"] == pytest.approx((matrix[0][0] + matrix[1][1]) / len(samples), abs=1e-4)
