"""Done-when of the edge component, on the embedded local stack: a model trained through the stack, bundled
with ``trashsorter edge bundle`` and run with ``trashsorter edge run --once`` on photos it never saw, gives
the same labels (and probabilities) as ``trashsorter predict`` - which goes through the local device, i.e.
the same component started by the same runner - and ``trashsorter watch`` shows the device's IoT messages."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import SAMPLES
from tests.e2e.test_local_pipeline import _wait as wait
from trashsorter import registry, runs
from trashsorter_cli.local.runtime import LocalRuntime
from trashsorter_cli.main import main

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BINS = {"Compost": "paper", "Landfill": "trash", "Recycling": "glass"}
PER_LABEL = 5
UNSEEN = 2


@pytest.fixture(scope="module")
def local_stack(local_stack_factory: Any) -> Iterator[LocalRuntime]:
    yield local_stack_factory(
        {
            "MinImagesPerLabel": str(PER_LABEL),
            "MinNewImages": "1",
            "HyperparameterOverrides": json.dumps(
                {"epochs": "1", "image_shape": "3,96,96", "local_views": "1"}
            ),
            "MinValidationAccuracy": "0.0",
        },
        device=True,
    )


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    capsys.readouterr()
    return code, out.getvalue(), err.getvalue()


def test_edge_run_once_gives_the_labels_of_trashsorter_predict(
    local_stack: LocalRuntime, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert local_stack.state is not None
    outputs = local_stack.state.outputs
    s3, ddb, table = local_stack.client("s3"), local_stack.client("dynamodb"), outputs["CatalogueTableName"]
    unseen = tmp_path / "unseen"
    unseen.mkdir()
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
    model_id = run["model_id"]
    assert registry.get_champion(table_name=table, ddb=ddb)["model_id"] == model_id  # type: ignore[index]
    state = str(local_stack.state_path)

    code, out, err = cli(
        capsys, "predict", "--json", "--local-state", state, *map(str, sorted(unseen.iterdir()))
    )
    assert code == 0, err
    predicted = {Path(r["image"]).name: r for r in json.loads(out)}
    assert len(predicted) == len(BINS) * UNSEEN and {r["model_id"] for r in predicted.values()} == {model_id}

    bundle = tmp_path / "bundle"
    code, out, err = cli(
        capsys, "edge", "bundle", "--model", model_id, "--out", str(bundle), "--local-state", state
    )
    assert code == 0, err
    assert sorted(p.name for p in (bundle / "artifacts").iterdir()) == [
        "model.onnx.tar.gz",
        "trashsorter-edge.zip",
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

    code, out, err = cli(
        capsys,
        "watch",
        "--json",
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
