"""The whole flow on the embedded local stack: real photos uploaded through boto3 to the endpoint ->
ingest -> threshold -> CPU training (2 epochs) -> package -> local device -> a held-out photo classified."""

from __future__ import annotations

import hashlib
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.stack import SAMPLES_DIR as SAMPLES
from tests.support.stack import mapping
from tests.support.waiting import wait_for
from trashsorter import registry, runs
from trashsorter.catalogue import Catalogue
from trashsorter_cli.local.runtime import LocalRuntime
from trashsorter_cli.local.template import load_template

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PER_LABEL = 16  # uploaded per label
HELD_OUT_PER_LABEL = 2  # never uploaded, classified at the end


@pytest.fixture(scope="module")
def local_stack(local_stack_factory: Any) -> Iterator[LocalRuntime]:
    yield local_stack_factory(
        {
            "MinImagesPerLabel": "14",
            "MinNewImages": "10",
            "HyperparameterOverrides": json.dumps({"epochs": "2"}),
            "MinValidationAccuracy": "0.5",
            "IngestSettleSeconds": "2",  # the batch is all uploaded before ingest: a short settle suffices
        },
        device=True,
    )


def _split() -> tuple[list[tuple[Path, str]], list[tuple[Path, str]]]:
    upload: list[tuple[Path, str]] = []
    held: list[tuple[Path, str]] = []
    for label, folders in mapping().items():
        # Chosen by file name, NOT by content hash: the dataset's split is by content hash, and a
        # selection by hash would put (almost) every uploaded photo on the validation side.
        files = sorted(
            (path for folder in folders for path in (SAMPLES / folder).glob("*.jpg")),
            key=lambda p: hashlib.sha256(p.name.encode()).hexdigest(),
        )
        held.extend((p, label) for p in files[:HELD_OUT_PER_LABEL])
        upload.extend((p, label) for p in files[HELD_OUT_PER_LABEL : HELD_OUT_PER_LABEL + PER_LABEL])
    return upload, held


def _post(url: str, data: bytes, token: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    request = urllib.request.Request(url, data=data, method="POST", headers=headers)  # noqa: S310 - local device
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        result: dict[str, Any] = json.loads(response.read())
    return result


def test_local_resources_match_the_template(local_stack: LocalRuntime) -> None:
    assert local_stack.stack is not None
    template = load_template()
    for lid, res in template["Resources"].items():
        if res["Type"].startswith("AWS::Serverless::") or res.get("Condition"):
            continue
        assert local_stack.stack.resource_types[lid] == res["Type"], lid
    assert set(local_stack.stack.functions) == {
        lid for lid, r in template["Resources"].items() if r["Type"] == "AWS::Serverless::Function"
    }
    env = local_stack.stack.function_env("StartTrainingFunction")
    assert "TRAINING_BACKEND" not in env and env["TRAINING_ALGORITHM"] == "trashsorter"  # one switch
    assert local_stack.state is not None
    # the package step deploys to the local core device's thing group through Greengrass v2
    group = local_stack.state.environments["PackageFunction"]["EDGE_THING_GROUP_ARN"]
    assert group.endswith(":thinggroup/trashsorter-local") and local_stack.state.device_token


def test_photos_to_a_deployed_model_that_classifies_a_held_out_photo(local_stack: LocalRuntime) -> None:
    assert local_stack.state is not None
    outputs = local_stack.state.outputs
    s3 = local_stack.client("s3")
    ddb = local_stack.client("dynamodb")
    table = outputs["CatalogueTableName"]
    upload, held = _split()
    for path, label in upload:  # label by label, as a person would
        s3.put_object(
            Bucket=outputs["ImagesBucketName"], Key=f"images/{label}/{path.name}", Body=path.read_bytes()
        )

    catalogue = Catalogue(table, ddb=ddb)
    counts = wait_for(
        lambda: (
            (c := catalogue.label_counts(["Compost", "Landfill", "Recycling"]))
            and sum(v["accepted"] + v["rejected"] + v["duplicate"] + v["conflict"] for v in c.values())
            >= len(upload)
            and c
        ),
        60,
        "ingest",
    )
    assert all(c["accepted"] >= 14 for c in counts.values()), counts

    def finished() -> dict[str, Any] | None:
        listed = runs.list_runs(table, ddb=ddb)
        done = [r for r in listed if r.get("status") in ("completed", "failed") and r.get("package_outcome")]
        return done[0] if done else None

    run = wait_for(finished, 240, "the training run to be trained and packaged")
    assert run["status"] == "completed", run
    assert run["backend"] == "sagemaker" and run["algorithm"] == "trashsorter"  # the request AWS would run
    described = local_stack.client("sagemaker").describe_training_job(TrainingJobName=run["job_name"])
    assert described["TrainingJobStatus"] == "Completed"  # the emulated job, not moto's canned answer
    assert "/pytorch-training:" in described["AlgorithmSpecification"]["TrainingImage"]
    final = {m["MetricName"]: m["Value"] for m in described["FinalMetricDataList"]}
    assert 0.0 <= final["validation:accuracy"] <= 1.0
    assert run["source_sha256"] in run["source_uri"]  # the code's content hash, on the run
    assert run["package_outcome"] == "deployed", {
        k: run.get(k) for k in ("metrics", "status_message", "package_message")
    }
    assert run["progress"]["epoch"] == run["progress"]["epochs"] == 2

    champion = registry.get_champion(table_name=table, ddb=ddb)
    assert champion is not None and champion["model_id"] == run["model_id"]
    assert 0.0 <= float(champion["metrics"]["validation:accuracy"]) <= 1.0
    deeplens = s3.list_objects_v2(Bucket=outputs["DeepLensBucketName"], Prefix=f"models/{run['model_id']}/")
    assert deeplens.get("KeyCount", 0) >= 1
    # the trainer's report.html, copied beside the packaged model and recorded on the model
    report_key = f"models/{run['model_id']}/report.html"
    assert champion["report_uri"] == f"s3://{outputs['DeepLensBucketName']}/{report_key}"
    report = s3.get_object(Bucket=outputs["DeepLensBucketName"], Key=report_key)["Body"].read()
    assert b"Confusion matrix" in report and b"validation accuracy" in report
    deployments = registry.list_deployments(champion["model_id"], table_name=table, ddb=ddb)
    assert any(d.get("target") == "greengrass-v2" for d in deployments), deployments

    device = local_stack.device_url
    predictions = [
        (label, _post(f"{device}/predict", path.read_bytes(), local_stack.device.token))
        for path, label in held
    ]
    for _label, answer in predictions:
        assert answer["label"] in ("Compost", "Landfill", "Recycling")
        assert 0.0 <= float(answer["confidence"]) <= 1.0
    correct = sum(answer["label"] == label for label, answer in predictions)
    assert correct >= len(held) // 2 + 1, (
        predictions
    )  # a majority of the held-out photos, never seen in training
