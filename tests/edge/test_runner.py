"""The components as the package step publishes them, run the way a Greengrass nucleus would: the real
package step (``artifacts.package_artifact``) writes the artifacts to S3 (moto), ``write_bundle`` fetches
them with the recipes (the app, and its model component in ``dependencies/``), and :class:`ComponentRunner`
runs the model component's ``Startup`` check, then resolves the app's recipe variables (its model
component's artifacts path included), runs ``Install`` (its own venv under the work path) and
``Run --once``; the results equal the trainer's evaluation of the same photos."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from moto import mock_aws

from tests.support.tiny_model import IMAGE_SIZE, TinyModel
from trashsorter import artifacts
from trashsorter.deploy import greengrass_v2
from trashsorter.settings import PackageSettings
from trashsorter_cli.device.runner import ComponentRunner, RecipeError, dependency_runners
from trashsorter_trainer import data
from trashsorter_trainer.train import run_onnx

pytestmark = pytest.mark.slow  # a venv is created by the component's Install step

BUCKET = "deeplens-trashsorter-test"


@pytest.fixture(scope="module")
def bundle_dir(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle")
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        s3.create_bucket(Bucket="images")  # the job's output: this stack's prefix for job-1 only
        s3.upload_file(
            str(tiny_model.result.archive()), "images", "training-output/job-1/output/model.tar.gz"
        )
        settings = PackageSettings.from_env(
            {
                "TABLE_NAME": "t",
                "IMAGES_BUCKET": "images",
                "EVENT_BUS_NAME": "bus",
                "ALLOWED_LABELS": "Compost,Recycling",
                "DEEPLENS_BUCKET": BUCKET,
            }
        )
        packaged = artifacts.package_artifact(
            job_name="job-1",
            source_uri="s3://images/training-output/job-1/output/model.tar.gz",
            labels=["Compost", "Recycling"],
            settings=settings,
            s3=s3,
        )
        greengrass_v2.write_bundle(
            out,
            component_name="com.trashsorter.test",
            version="1.0.3",
            model_id="job-1",
            artifact_uri=packaged.artifacts["onnx"],
            app_uri=packaged.artifacts["edge_app"],
            s3=s3,
        )
    return out


def test_bundle_is_the_published_recipe_and_artifacts(bundle_dir: Path) -> None:
    recipe = json.loads((bundle_dir / "recipe.json").read_text())
    assert recipe == greengrass_v2.component_recipe(
        component_name="com.trashsorter.test",
        version="1.0.3",
        app_uri=f"s3://{BUCKET}/models/job-1/trashsorter-edge.zip",
    )
    assert sorted(p.name for p in (bundle_dir / "artifacts").iterdir()) == ["trashsorter-edge.zip"]
    model = bundle_dir / "dependencies" / "com.trashsorter.testModel"
    assert json.loads((model / "recipe.json").read_text()) == greengrass_v2.model_component_recipe(
        app_component_name="com.trashsorter.test",
        version="1.0.3",
        model_id="job-1",
        artifact_uri=f"s3://{BUCKET}/models/job-1/model.onnx.tar.gz",
    )
    assert sorted(p.name for p in (model / "artifacts").iterdir()) == ["model.onnx.tar.gz"]


def test_runner_installs_and_runs_the_bundle_like_a_nucleus(
    bundle_dir: Path, tiny_model: TinyModel, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in tiny_model.unseen:
        shutil.copy(path, photos / path.name)
    dependencies = dependency_runners(bundle_dir, tmp_path / "nucleus", thing="cam-7")  # Startup: checked
    runner = ComponentRunner(
        bundle_dir,
        tmp_path / "nucleus",
        configuration={
            "Source": str(photos),
            "Output": "jsonl",
            "ExtraArgs": "--once --top-k 5",
            "LiveView": {"Port": 0},
        },
        thing="cam-7",
        dependencies=dependencies,
    )
    runner.install()
    log = (tmp_path / "nucleus" / "lifecycle.log").read_text().splitlines()
    assert log == ["com.trashsorter.testModel 1.0.3 Startup", "com.trashsorter.test 1.0.3 Install"]
    assert (runner.work_path / "venv" / "bin" / "python").exists()  # its own environment
    assert (runner.work_path / "model.next" / "model.onnx").is_file()  # switched in by Run
    assert (runner.decompressed_path / "trashsorter-edge" / "trashsorter_edge" / "app.py").is_file()
    done = runner.run(timeout=300)
    assert done.returncode == 0, done.stderr
    assert (runner.work_path / "model" / "model.onnx").is_file() and not (
        runner.work_path / "model.next"
    ).exists()
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["image"] for r in results] == sorted(p.name for p in tiny_model.unseen)
    # it ran the bundle's copy of the app, inside the component's venv
    status = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert [s["topic"] for s in status][:2] == ["trashsorter/cam-7/status"] * 2
    batch = np.stack(
        [data.preprocess(data.decode((photos / r["image"]).read_bytes()), IMAGE_SIZE) for r in results]
    )
    expected = run_onnx(tiny_model.model_dir / "model.onnx", batch)
    for row, result in zip(expected, results, strict=True):
        got = {e["label"]: e["confidence"] for e in result["top_k"]}
        np.testing.assert_allclose([got["Compost"], got["Recycling"]], row, atol=1e-5, rtol=0)
        assert result["model_id"] == "job-1"


def test_recipe_variables_resolve_and_a_missing_key_is_named(bundle_dir: Path, tmp_path: Path) -> None:
    runner = ComponentRunner(
        bundle_dir, tmp_path, configuration={"Topics": {"Infer": "x/<thing>/i"}}, thing="t1"
    )
    text = "{artifacts:path}|{work:path}|{iot:thingName}|{configuration:/Topics/Infer}"
    text += "|{configuration:/Topics/Status}"
    assert runner.resolve(text) == (
        f"{(bundle_dir / 'artifacts').resolve()}|{runner.work_path}|t1|x/<thing>/i|trashsorter/<thing>/status"
    )
    with pytest.raises(RecipeError, match="/Nope"):
        runner.resolve("{configuration:/Nope}")


def test_the_edge_app_takes_the_bundle_or_its_tarball_and_a_relative_source(
    bundle_dir: Path, tiny_model: TinyModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from trashsorter_edge import cli

    (tmp_path / "photos").mkdir()
    shutil.copy(tiny_model.unseen[0], tmp_path / "photos" / "one.jpg")
    elsewhere = tmp_path / "models" / "job-7"
    elsewhere.mkdir(parents=True)
    tarball = bundle_dir / "dependencies" / "com.trashsorter.testModel" / "artifacts" / "model.onnx.tar.gz"
    shutil.copy(tarball, elsewhere)
    monkeypatch.chdir(tmp_path)
    ids = []
    for model in (bundle_dir, tarball, "models/job-7/model.onnx.tar.gz"):
        assert cli.main(["--model", str(model), "--source", "photos", "--once"]) == 0
        (line,) = capsys.readouterr().out.splitlines()
        result = json.loads(line)
        assert result["image"] == "one.jpg" and result["label"] in ("Compost", "Recycling")
        ids.append(result["model_id"])
    assert ids == ["job-1", "job-1", "job-7"]
    assert cli.main(["--model", "photos", "--source", "photos", "--once"]) == 1  # not a model: a clear error
    assert "not a model folder" in capsys.readouterr().err


def test_install_checks_the_camera_the_configuration_names(bundle_dir: Path, tmp_path: Path) -> None:
    """The configured ``Source`` reaches the Install step's camera check through the environment (the
    recipe's ``Setenv``, then the launcher), never as shell text: the check names that device and only it."""
    marker = tmp_path / "pwned"
    hostile = f"/dev/video9'; touch {marker}; echo '"
    seen = []
    for source in ("7", hostile, str(tmp_path)):  # a camera that is not there, shell text, a folder
        nucleus = tmp_path / "nucleus"
        runner = ComponentRunner(
            bundle_dir,
            nucleus,
            configuration={"Source": source},
            dependencies=dependency_runners(bundle_dir, nucleus),
        )
        runner.log_path.unlink(missing_ok=True)
        runner.install()  # a missing camera is a warning: the Install step succeeds
        seen.append(runner.log_path.read_text())
    assert "WARNING: no camera at /dev/video7 " in seen[0]
    assert f"WARNING: no camera at {hostile} " in seen[1] and not marker.exists()
    assert "camera" not in seen[2]  # a folder needs no camera device
