"""The local CPU trainer on real TrashNet photos: pretrained weights, a tiny training, the artifact."""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support.tiny_model import SAMPLES, TINY, tiny_samples, train_tiny
from trashsorter_cli.device import predictor
from trashsorter_cli.trainer import crossval
from trashsorter_trainer import data, report
from trashsorter_trainer.data import Sample, preprocess
from trashsorter_trainer.errors import TrainerError as TrainingError
from trashsorter_trainer.model import HEAD_ONLY, TrashClassifier, load_backbone, pretrained_weights_path
from trashsorter_trainer.train import (
    ARTIFACT_MEMBERS,
    SPLIT_MODEL_FILE,
    TrainConfig,
    TrainResult,
    run_onnx,
    train,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    out = tmp_path_factory.mktemp("model")
    (out / "model.tar.gz").write_bytes(b"an earlier run's archive")  # archive() must pack this run's
    return train_tiny(out, TINY)


def test_model_loads_the_imagenet_weights_shipped_in_the_wheel() -> None:
    pretrained = load_backbone(3)
    fresh = load_backbone(3, pretrained=False)
    checkpoint = torch.load(pretrained_weights_path(), map_location="cpu")
    stem = pretrained._conv_stem.weight.detach()
    assert torch.equal(stem, checkpoint["_conv_stem.weight"])
    assert not torch.allclose(stem, fresh._conv_stem.weight.detach())
    assert pretrained._fc.out_features == 3  # a new head, not ImageNet's 1000 classes


def test_only_the_tail_is_trainable() -> None:
    model = TrashClassifier(2, split=15)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in model.tail_parameters()}
    assert not any(id(p) in trainable for p in model.net._blocks[14].parameters())
    assert all(id(p) in trainable for p in model.net._blocks[15].parameters())


@pytest.mark.slow
def test_tiny_training_writes_the_artifact(trained: TrainResult) -> None:
    with tarfile.open(trained.archive()) as tar:
        assert sorted(tar.getnames()) == sorted([*ARTIFACT_MEMBERS, SPLIT_MODEL_FILE])  # refit by default
        labels = tar.extractfile("labels.txt").read().decode().split()  # type: ignore[union-attr]
        png = tar.extractfile("confusion_matrix.png").read()  # type: ignore[union-attr]
    assert labels == ["Compost", "Recycling"]
    image = Image.open(io.BytesIO(png))
    image.load()
    assert image.format == "PNG" and image.width > 100 and image.height > 100


@pytest.mark.slow
def test_onnx_graph_agrees_with_torch(trained: TrainResult) -> None:
    samples, _ = tiny_samples()
    batch = np.stack([preprocess(s.data, 128) for s in samples])
    with torch.inference_mode():
        expected = trained.model(torch.from_numpy(batch)).numpy()
    got = run_onnx(trained.output_dir / "model.onnx", batch)
    assert got.shape == (len(samples), 2)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)  # softmax inside the graph


@pytest.mark.slow
def test_metrics_json_fields(trained: TrainResult) -> None:
    metrics = json.loads((trained.output_dir / "metrics.json").read_text())
    assert metrics["train_count"] == 6 and metrics["validation_count"] == 4
    assert metrics["epochs"] == 1 and metrics["labels"] == ["Compost", "Recycling"]
    matrix = metrics["confusion_matrix"]
    assert sum(map(sum, matrix)) == 4
    correct = matrix[0][0] + matrix[1][1]
    assert metrics["validation_accuracy"] == pytest.approx(correct / 4)
    # every validation photo's label and answer (the paired gate's input) agree with the matrix
    truth, answers = metrics["validation_labels"], metrics["validation_answers"]
    assert len(truth) == 4 and set(answers) == set(truth)
    assert sum(answers[key] == label for key, label in truth.items()) == correct
    assert set(metrics["per_class"]) == {"Compost", "Recycling"}
    assert {"precision", "recall", "f1", "support"} <= set(metrics["per_class"]["Compost"])
    assert metrics["wall_time_seconds"] > 0 and metrics["images_per_second"] > 0
    assert metrics["onnx_max_abs_diff"] < 1e-4
    seen = trained.metrics["_progress_seen"]
    epochs = [entry for entry in seen if "phase" not in entry]
    features = [entry for entry in seen if entry.get("phase") == "features"]
    assert epochs == [dict(metrics["history"][0])]  # one progress report per epoch, the history's numbers
    # the feature pass reports before the first epoch, counting up to every image it runs through
    assert features and seen.index(features[-1]) < seen.index(epochs[0])
    assert [f["done"] for f in features] == sorted({f["done"] for f in features})
    config, n_train, n_val = metrics["config"], metrics["train_count"], metrics["validation_count"]
    views = config["views"]
    expected = (
        n_train * views + n_val * (2 if config["flip_tta"] else 1) + (n_val * views if config["refit"] else 0)
    )
    assert features[-1]["done"] == features[-1]["total"] == expected
    assert {"epoch", "epochs", "train_loss", "val_accuracy"} <= set(metrics["history"][0])


@pytest.mark.slow
def test_refit_ships_a_graph_trained_on_train_and_validation(
    trained: TrainResult, tmp_path_factory: pytest.TempPathFactory
) -> None:
    metrics = json.loads((trained.output_dir / "metrics.json").read_text())
    refit = metrics["refit"]
    assert refit["on"] == "train+validation" and refit["images"] == 10
    assert refit["reported_metrics_from"] == "split run" and refit["evaluated_graph"] == SPLIT_MODEL_FILE
    samples, labels = tiny_samples()
    validation = [s for s in samples if s.split == "validation"]
    batch = np.stack([preprocess(s.data, 128) for s in validation])
    split_probs = run_onnx(trained.output_dir / SPLIT_MODEL_FILE, batch)
    shipped_probs = run_onnx(trained.output_dir / "model.onnx", batch)
    # the reported metrics describe the split run's graph; the refit recorded what the shipped one answers
    truth = [labels.index(s.label) for s in validation]
    assert report.confusion_matrix(truth, split_probs.argmax(1).tolist(), 2) == metrics["confusion_matrix"]
    assert (
        report.confusion_matrix(truth, shipped_probs.argmax(1).tolist(), 2)
        == (refit["shipped_validation_confusion_matrix"])
    )
    np.testing.assert_allclose(trained.validation_probabilities, split_probs, atol=1e-6)  # type: ignore[arg-type]
    np.testing.assert_allclose(trained.shipped_probabilities, shipped_probs, atol=1e-6)  # type: ignore[arg-type]
    assert not np.allclose(split_probs, shipped_probs, atol=1e-4)  # another tail really ships

    # switched off (local_refit=0): one graph, the split run's, ships as model.onnx
    off = TrainConfig.from_hyperparameters({"local_refit": "0", "epochs": "1", "local_views": "1"})
    assert not off.refit and TrainConfig().refit
    plain = train(samples, labels, tmp_path_factory.mktemp("no-refit"), replace(TINY, refit=False))
    assert plain.metrics["refit"] is None and SPLIT_MODEL_FILE not in plain.members
    assert not (plain.output_dir / SPLIT_MODEL_FILE).exists()
    np.testing.assert_allclose(run_onnx(plain.output_dir / "model.onnx", batch), split_probs, atol=1e-5)


@pytest.mark.slow
def test_trainer_evaluation_and_device_share_one_preprocessing(trained: TrainResult) -> None:
    assert predictor.preprocess is data.preprocess
    photo = sorted((SAMPLES / "glass").glob("*.jpg"))[0].read_bytes()
    classifier = predictor.Classifier(trained.output_dir)
    assert classifier.image_size == 128
    expected = run_onnx(trained.output_dir / "model.onnx", preprocess(photo, 128)[None])[0]
    np.testing.assert_allclose(classifier.probabilities([photo])[0], expected, rtol=1e-6)
    # a PIL image and its encoded bytes give the same tensor
    np.testing.assert_array_equal(preprocess(Image.open(io.BytesIO(photo)), 128), preprocess(photo, 128))


def test_preprocess_shape_range_and_exif_orientation() -> None:
    image = Image.new("RGB", (300, 200), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 150, 200))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif, quality=95)
    array = preprocess(buffer.getvalue(), 64)
    assert array.shape == (3, 64, 64) and array.dtype == np.float32
    assert 0.0 <= array.min() and array.max() <= 1.0
    # upright: the blue half is now on top
    assert array[2, 5, 32] > 0.8 and array[0, 60, 32] > 0.8


def test_corrupt_image_fails_with_a_readable_reason(tmp_path: Path) -> None:
    samples, labels = tiny_samples(2, 1)
    broken = Sample("paper/broken.jpg", "Compost", "train", b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(TrainingError, match=r"cannot decode paper/broken\.jpg"):
        train([*samples, broken], labels, tmp_path, TINY)


def test_missing_validation_or_unknown_label_fails(tmp_path: Path) -> None:
    samples, labels = tiny_samples(2, 1)
    only_train = [s for s in samples if s.split == "train"]
    with pytest.raises(TrainingError, match="no validation images"):
        train(only_train, labels, tmp_path, TINY)
    with pytest.raises(TrainingError, match=r"not in labels\.txt"):
        train(samples, ["Compost", "Landfill"], tmp_path, TINY)


def test_recipe_hyperparameters_map_onto_the_local_schedule() -> None:
    recipe = {"epochs": "10", "learning_rate": "0.01", "mini_batch_size": "32", "image_shape": "3,224,224"}
    config = TrainConfig.from_hyperparameters({**recipe, "num_layers": "18", "use_pretrained_model": "1"})
    assert (config.epochs, config.batch_size, config.image_size) == (10, 32, 224)
    assert config.learning_rate == pytest.approx(0.003)  # SGD 0.01 -> AdamW 0.003 (head, crossval)
    assert TrainConfig.from_hyperparameters({"local_learning_rate": "0.0005"}).learning_rate == 0.0005
    with pytest.raises(TrainingError, match="epochs must be >= 1"):
        TrainConfig.from_hyperparameters({"epochs": "0"})
    with pytest.raises(TrainingError, match="invalid hyperparameters"):
        TrainConfig.from_hyperparameters({"epochs": "ten"})


def test_hash_split_is_deterministic_and_near_the_fraction() -> None:
    import hashlib

    splits = [data.hash_split(hashlib.sha256(str(i).encode()).hexdigest(), 0.2) for i in range(2000)]
    share = splits.count("validation") / len(splits)
    assert 0.17 < share < 0.23
    assert splits == [data.hash_split(hashlib.sha256(str(i).encode()).hexdigest(), 0.2) for i in range(2000)]


def test_classification_metrics_from_a_confusion_matrix() -> None:
    matrix = report.confusion_matrix([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2], 3)
    assert matrix == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    scores = report.classification_metrics(matrix, ["a", "b", "c"])
    assert scores["accuracy"] == pytest.approx(4 / 6)
    assert scores["per_class"]["a"]["recall"] == pytest.approx(2 / 3, abs=1e-4)
    assert scores["per_class"]["b"]["precision"] == pytest.approx(0.5)
    assert scores["per_class"]["c"]["precision"] == pytest.approx(0.5)


def test_wilson_interval_of_a_measured_rate() -> None:
    # no success: the upper bound has the closed form z^2 / (n + z^2)
    z2 = report.Z95**2
    assert report.wilson_interval(0, 10) == (0.0, pytest.approx(z2 / (10 + z2), abs=1e-4))
    assert report.wilson_interval(10, 10) == (pytest.approx(10 / (10 + z2), abs=1e-4), 1.0)
    low, high = report.wilson_interval(5, 10)  # symmetric around one half
    assert low == pytest.approx(1 - high, abs=1e-4) and 0.23 < low < 0.24
    assert report.wilson_interval(24, 30) == pytest.approx((0.6269, 0.9049), abs=1e-4)
    # more photos, the same rate: a narrower interval that still holds the rate
    narrow = report.wilson_interval(240, 300)
    assert 0.6269 < narrow[0] < 0.8 < narrow[1] < 0.9049
    assert report.wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        report.wilson_interval(3, 2)


def test_intervals_from_a_confusion_matrix_and_in_the_report() -> None:
    matrix = [[13, 1, 0], [2, 2, 2], [1, 1, 19]]
    labels = ["Compost", "Landfill", "Recycling"]
    spans = report.intervals(matrix, labels)
    assert spans["accuracy"] == report.wilson_interval(34, 41)
    assert spans["recall"] == {
        "Compost": report.wilson_interval(13, 14),
        "Landfill": report.wilson_interval(2, 6),
        "Recycling": report.wilson_interval(19, 21),
    }
    scores = report.classification_metrics(matrix, labels)
    metrics = {**scores, "labels": labels, "validation_accuracy": scores["accuracy"], "validation_count": 41,
               "train_accuracy": 1.0, "train_count": 139, "class_counts": {}}  # fmt: skip
    page = report.render_html(metrics, [])
    assert "95 % interval 0.69-0.91" in page  # 34 / 41
    assert "<td>0.10-0.70</td>" in page  # Landfill, 2 / 6: a recall measured on six photos says little


def test_head_only_cut_trains_only_the_classifier() -> None:
    model = TrashClassifier(3, split=HEAD_ONLY, dropout=0.5)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in model.net._fc.parameters()}
    assert model.net._dropout.p == 0.5
    photo = preprocess(sorted((SAMPLES / "paper").glob("*.jpg"))[0].read_bytes(), 96)
    features = model.frozen(torch.from_numpy(photo[None]))
    assert features.shape == (1, 1280)  # pooled features are what gets cached
    assert model.tail(features).shape == (1, 3)


@pytest.mark.slow
def test_flip_tta_is_inside_the_one_onnx_graph(trained: TrainResult) -> None:
    samples, _ = tiny_samples()
    batch = np.stack([preprocess(s.data, 128) for s in samples])
    assert trained.model.flip_tta  # the default configuration
    got = run_onnx(trained.output_dir / "model.onnx", batch)
    mirrored = run_onnx(trained.output_dir / "model.onnx", np.ascontiguousarray(batch[..., ::-1]))
    np.testing.assert_allclose(got, mirrored, atol=1e-5)  # image and mirror image: same answer
    with torch.inference_mode():
        x = torch.from_numpy(batch)
        plain = torch.softmax(trained.model.logits(x), 1)
        flip = torch.softmax(trained.model.logits(torch.flip(x, dims=[3])), 1)
    np.testing.assert_allclose(got, ((plain + flip) / 2).numpy(), atol=1e-4)
    assert not np.allclose(plain.numpy(), flip.numpy(), atol=1e-4)  # the flip really changes the pass


def test_local_hyperparameters_for_the_new_settings() -> None:
    config = TrainConfig.from_hyperparameters(
        {
            "local_flip_tta": "0",
            "local_class_balanced": "true",
            "local_dropout": "0.3",
            "local_finetune_blocks": "1",
        }
    )
    assert (config.flip_tta, config.class_balanced, config.dropout, config.finetune_blocks) == (
        False,
        True,
        0.3,
        1,
    )
    assert TrainConfig().finetune_blocks == -1 and TrainConfig().flip_tta  # defaults chosen by crossval
    with pytest.raises(TrainingError, match="local_flip_tta must be a boolean"):
        TrainConfig.from_hyperparameters({"local_flip_tta": "maybe"})
    with pytest.raises(TrainingError, match=r"finetune_blocks must be in \[-1, 16\]"):
        TrainConfig.from_hyperparameters({"local_finetune_blocks": "-2"})


def test_crossval_fold_zero_is_the_hash_validation_split() -> None:
    import hashlib

    for path in sorted(SAMPLES.glob("*/*.jpg"))[::7]:
        content = path.read_bytes()
        is_validation = data.hash_split(hashlib.sha256(content).hexdigest(), 0.2) == "validation"
        assert (crossval.fold_of(content, 5) == 0) == is_validation
        assert 0 <= crossval.fold_of(content, 5) < 5


def test_crossval_learning_curve_keeps_a_hash_chosen_share_of_the_training_images() -> None:
    photos = [p.read_bytes() for p in sorted(SAMPLES.glob("*/*.jpg"))]
    kept = [crossval.kept_for_training(content, 0.75) for content in photos]
    assert 0.65 < sum(kept) / len(photos) < 0.85
    assert all(crossval.kept_for_training(content, 1.0) for content in photos)
    # independent of the fold: every fold keeps part of its photos
    assert {crossval.fold_of(c, 5) for c, k in zip(photos, kept, strict=True) if k} == set(range(5))
    assert kept == [crossval.kept_for_training(content, 0.75) for content in photos]  # deterministic


def test_crossval_seeds_expand_settings_and_pool_the_draws() -> None:
    assert crossval.with_seeds([{"a": "1"}, {}], []) == [{"a": "1"}, {}]
    assert crossval.with_seeds([{"a": "1"}, {}], [0, 7]) == [
        {"a": "1", "local_seed": "0"},
        {"a": "1", "local_seed": "7"},
        {"local_seed": "0"},
        {"local_seed": "7"},
    ]

    def draw(setting: dict[str, str], mean: float, matrix: list[list[int]]) -> dict[str, object]:
        return {"setting": setting, "train_fraction": 1.0, "mean": mean, "confusion_matrix": matrix}

    results = [
        draw({"a": "1", "local_seed": "0"}, 0.8, [[4, 1], [1, 4]]),
        draw({"a": "1", "local_seed": "7"}, 0.9, [[5, 0], [1, 4]]),
        draw({"local_seed": "0"}, 0.5, [[3, 2], [3, 2]]),
    ]
    first, second = crossval.pool_draws(results, ["x", "y"])
    assert first["setting"] == {"a": "1"} and first["seeds"] == ["0", "7"]
    assert first["confusion_matrix"] == [[9, 1], [2, 8]]  # summed over the draws
    assert first["pooled_accuracy"] == pytest.approx(17 / 20) and first["recall"] == {"x": 0.9, "y": 0.8}
    assert first["mean_of_draws"] == pytest.approx(0.85) and first["range"] == [0.8, 0.9]
    assert second["setting"] == {} and second["draw_means"] == [0.5]


@pytest.mark.slow
def test_crossval_command_runs_each_setting_once_per_seed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for folder in ("paper", "metal"):
        (tmp_path / folder).mkdir()
        for path in sorted((SAMPLES / folder).glob("*.jpg"))[:4]:
            (tmp_path / folder / path.name).write_bytes(path.read_bytes())
    base = {"epochs": "2", "local_views": "1", "image_shape": "3,64,64", "mini_batch_size": "8"}
    argv = [
        "--samples",
        str(tmp_path),
        "--folds",
        "2",
        "--seeds",
        "0,1",
        "--hyperparameters",
        json.dumps(base),
    ]
    assert crossval.main(argv) == 0
    document = json.loads(capsys.readouterr().out)
    assert [r["setting"] for r in document["results"]] == [{"local_seed": "0"}, {"local_seed": "1"}]
    [pooled] = document["draws"]
    assert pooled["seeds"] == ["0", "1"] and sum(map(sum, pooled["confusion_matrix"])) == 2 * 8
    assert pooled["draw_means"] == [r["mean"] for r in document["results"]]
    with pytest.raises(SystemExit):
        crossval.main(["--samples", str(tmp_path), "--seeds", "0,one"])
    assert "--seeds takes comma-separated whole numbers, got '0,one'" in capsys.readouterr().err


@pytest.mark.slow
def test_crossval_runs_every_fold_on_real_photos() -> None:
    samples, labels = tiny_samples(4, 0)
    settings = [{}, {"local_class_balanced": "1", "local_flip_tta": "0"}]
    base = {"epochs": "2", "local_views": "1", "image_shape": "3,64,64", "mini_batch_size": "8"}
    results = crossval.crossvalidate(samples, labels, settings, folds=2, base=base)
    assert [r["setting"] for r in results] == settings
    for result in results:
        matrix = result["confusion_matrix"]
        assert sum(map(sum, matrix)) == len(samples)  # every photo is held out exactly once
        assert len(result["fold_accuracy"]) == len({crossval.fold_of(s.data, 2) for s in samples})
        assert result["pooled_accuracy"] == pytest.approx(
            (matrix[0][0] + matrix[1][1]) / len(samples), abs=1e-4
        )
        assert sum(result["errors_by_folder"].values()) == len(samples) - matrix[0][0] - matrix[1][1]
        assert result["intervals"] == report.intervals(matrix, labels)
        low, high = result["intervals"]["accuracy"]
        assert low <= result["pooled_accuracy"] <= high
    assert results[1]["seconds"]["features"] < results[0]["seconds"]["features"]  # features cached once
