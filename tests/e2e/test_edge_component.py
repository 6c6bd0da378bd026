"""Done-when of the edge component, on the embedded local stack: a model trained through the stack, bundled
with ``trashsorter edge bundle`` and run with ``trashsorter edge run --once`` on photos it never saw, gives
the same labels (and probabilities) as ``trashsorter predict`` - which goes through the local device, i.e.
the same component started by the same runner - and ``trashsorter watch`` shows the device's IoT messages."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.support.cli import run_cli as cli
from tests.support.stack import SAMPLES_DIR as SAMPLES
from tests.support.stack import tiny_training
from tests.support.waiting import wait_for as wait
from trashsorter import registry, runs
from trashsorter.catalogue import Catalogue
from trashsorter_cli.local.runtime import LocalRuntime
from trashsorter_edge.inbox import Inbox
from trashsorter_edge.sources import Frame

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BINS = {"Compost": "paper", "Landfill": "trash", "Recycling": "glass"}
PER_LABEL = 5
UNSEEN = 2


@pytest.fixture(scope="module")
def local_stack(local_stack_factory: Any) -> Iterator[LocalRuntime]:
    yield local_stack_factory(tiny_training(PER_LABEL), device=True)


@pytest.fixture(scope="module")
def deployed(local_stack: LocalRuntime, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """Photos uploaded -> ingest -> training -> package -> the local device runs the component."""
    assert local_stack.state is not None
    outputs = local_stack.state.outputs
    s3, ddb, table = local_stack.client("s3"), local_stack.client("dynamodb"), outputs["CatalogueTableName"]
    unseen = tmp_path_factory.mktemp("unseen")
    for label, folder in BINS.items():
        photos = sorted((SAMPLES / folder).glob("*.jpg"))
        for path in photos[:PER_LABEL]:
            s3.put_object(
                Bucket=outputs["ImagesBucketName"], Key=f"images/{label}/{path.name}", Body=path.read_bytes()
            )
        for path in photos[-UNSEEN:]:
            shutil.copy(path, unseen / path.name)

    def finished() -> dict[str, Any] | None:
        done = [r for r in runs.list_runs(table, ddb=ddb) if r.get("package_outcome")]
        return done[0] if done else None

    run = wait(finished, 300, "training and packaging")
    assert run["package_outcome"] == "deployed", run
    assert registry.get_champion(table_name=table, ddb=ddb)["model_id"] == run["model_id"]  # type: ignore[index]
    return str(run["model_id"]), unseen


def predict(capsys: pytest.CaptureFixture[str], state: str, unseen: Path) -> list[dict[str, Any]]:
    code, out, err = cli(
        capsys, "predict", "--json", "--local-state", state, *map(str, sorted(unseen.iterdir()))
    )
    assert code == 0, err + out
    rows: list[dict[str, Any]] = json.loads(out)
    return rows


def test_edge_run_once_gives_the_labels_of_trashsorter_predict(
    local_stack: LocalRuntime, deployed: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_id, unseen = deployed
    state = str(local_stack.state_path)
    predicted = {Path(r["image"]).name: r for r in predict(capsys, state, unseen)}
    assert len(predicted) == len(BINS) * UNSEEN and {r["model_id"] for r in predicted.values()} == {model_id}

    bundle = tmp_path / "bundle"
    code, out, err = cli(
        capsys, "edge", "bundle", "--model", model_id, "--out", str(bundle), "--local-state", state
    )
    assert code == 0, err
    assert sorted(p.name for p in (bundle / "artifacts").iterdir()) == ["trashsorter-edge.zip"]
    (model,) = (bundle / "dependencies").iterdir()  # the app's model component
    assert model.name.endswith("Model") and [p.name for p in (model / "artifacts").iterdir()] == [
        "model.onnx.tar.gz"
    ]

    work = tmp_path / "nucleus"
    code, out, err = cli(
        capsys, "edge", "run", str(bundle), "--source", str(unseen), "--once", "--work", str(work)
    )
    assert code == 0, err
    results = {r["image"]: r for r in map(json.loads, out.splitlines())}
    assert set(results) == set(predicted)
    for name, result in results.items():
        assert result["label"] == predicted[name]["label"], name
        assert result["confidence"] == pytest.approx(predicted[name]["confidence"], abs=1e-5)
        assert result["model_id"] == model_id
        assert result["unsure"] == predicted[name]["unsure"]  # predict marks what the app calls unsure

    code, out, err = cli(
        capsys,
        "watch",
        "--json",
        "--replay",  # the messages of the predictions above
        "--count",
        str(len(predicted)),
        "--timeout",
        "30",
        "--topic",
        "trashsorter/local-device/infer",
        "--local-state",
        state,
    )
    assert code == 0, err
    seen = [json.loads(line) for line in out.splitlines()]
    assert len(seen) == len(predicted)
    assert {m["payload"]["label"] for m in seen} <= set(BINS)
    assert all(m["payload"]["model_id"] == model_id for m in seen)
    code, out, err = cli(capsys, "watch", "--json", "--timeout", "2", "--local-state", state)
    assert out == "" and code == 1, "without --replay, watch prints only what arrives after it started"


def test_unsure_frames_reach_the_inbox_and_label_makes_them_training_images(
    local_stack: LocalRuntime, deployed: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert local_stack.state is not None and local_stack.dispatcher is not None
    model_id, unseen = deployed
    state = str(local_stack.state_path)
    outputs = local_stack.state.outputs
    s3, bucket = local_stack.client("s3"), outputs["ImagesBucketName"]
    catalogue = Catalogue(outputs["CatalogueTableName"], ddb=local_stack.client("dynamodb"))

    def inbox_rows(thing: str) -> list[dict[str, Any]]:
        code, out, err = cli(capsys, "inbox", "--json", "--thing", thing, "--local-state", state)
        assert code == 0, err
        rows: list[dict[str, Any]] = json.loads(out)
        return rows

    # the device's own component uploads what it was unsure about (threshold 0.6): exactly those photos,
    # each once - predicting the same photos again (this module's first test did) files no repeats
    component = local_stack.state.environments["PackageFunction"]["EDGE_COMPONENT_NAME"]
    spool = local_stack.state_dir / "device" / "nucleus" / "work" / component / "inbox"
    results = predict(capsys, state, unseen)
    results += predict(capsys, state, unseen)  # the same photos again
    unsure = len({r["image"] for r in results if r["confidence"] < 0.6})
    assert all(r["unsure"] == (r["confidence"] < 0.6) for r in results)  # predict marks them
    # the one-epoch model (seed 0, deterministic) is unsure of some frames; without any, nothing is tested
    assert unsure > 0, "the test model was sure of every frame: the inbox path would go untested"
    wait(lambda: len(inbox_rows("local-device")) >= unsure, 30, "the device's unsure frames")
    wait(lambda: not list(spool.glob("*.jpg")), 30, "the device's upload queue to empty")
    assert len(inbox_rows("local-device")) == unsure

    # an unsure frame from another camera, through the edge app's uploader
    photo = sorted(unseen.iterdir())[0]
    inbox = Inbox(local_stack.state_dir / "cam-2-spool", bucket, "cam-2", s3=s3)
    prediction = {"model_id": model_id, "label": "Compost", "confidence": 0.3, "top_k": [], "unsure": True}
    inbox.hook(Frame(Image.open(photo).convert("RGB"), "0", photo.name, data=photo.read_bytes()), prediction)
    assert inbox.drain() == 1
    rows = inbox_rows("cam-2")
    assert len(rows) == 1 and rows[0]["label"] == "Compost" and rows[0]["reason"] == "unsure"
    key = rows[0]["key"]
    assert local_stack.dispatcher.wait_idle(timeout=30, settle=0.5)
    assert catalogue.get_image(key) is None  # nothing under inbox/ is catalogued, so never trained on

    code, out, err = cli(capsys, "label", key, "recycling", "--json", "--local-state", state)
    assert code == 0, err
    image_key = json.loads(out)["image_key"]
    assert image_key.startswith("images/Recycling/inbox-cam-2-")
    record = wait(lambda: catalogue.get_image(image_key), 60, "the labelled frame to be catalogued")
    assert record["label"] == "Recycling" and record["status"] in ("accepted", "duplicate"), record
    assert s3.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount", 0) == 0  # it left the inbox
    assert cli(capsys, "label", image_key, "Recycling", "--local-state", state)[0] == 2  # not an inbox key
