"""The local stack's emulated SageMaker job: CreateTrainingJob (trashsorter algorithm) on moto really trains.

The start-training handler creates the script-mode job exactly as on AWS; the emulation fetches the source
and channels from S3 into an /opt/ml layout, runs train.py in a child process, applies MetricDefinitions to
its log, uploads model.tar.gz and answers DescribeTrainingJob with the real outcome; the state-change event
reaches the default bus. Real photos, real (tiny) training.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from tests.support.stack import REGION, StackHandle, load_event
from tests.support.world import World
from trashsorter import runs
from trashsorter_cli.local import sagemaker_jobs
from trashsorter_cli.local.dispatcher import make_context
from trashsorter_trainer.contract import FEATURES_LINE, features_line

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PYTORCH_IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.10.0-gpu-py313"


@pytest.fixture
def stack_overrides() -> dict[str, str]:
    return {
        "MinImagesPerLabel": "3",
        "MinNewImages": "4",
        "HyperparameterOverrides": json.dumps({"epochs": "2", "local_views": "1"}),
    }


def test_a_trashsorter_job_runs_on_the_local_endpoint(
    stack_overrides: dict[str, str], stack: StackHandle, tmp_path: Path
) -> None:
    world = World(stack)
    world.upload(per_material=2)
    world.ingest()
    sqs, events = stack.client("sqs"), stack.client("events")
    queue = sqs.create_queue(QueueName="sagemaker-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="sm", EventPattern=json.dumps({"source": ["aws.sagemaker"]}))
    events.put_targets(Rule="sm", Targets=[{"Id": "q", "Arn": arn}])
    emulator = sagemaker_jobs.install(sagemaker_jobs.JobEmulator(client=stack.client, work_root=tmp_path))
    try:
        app = stack.load_handler("StartTrainingFunction")
        result = app.handler(
            load_event("dataset_ready.json"), make_context("StartTrainingFunction", region=REGION)
        )
        assert result["status"] == "started", result
        job = result["job_name"]
        assert world.sm.describe_training_job(TrainingJobName=job)["TrainingJobStatus"] == "InProgress"
        emulator.threads[job].join(timeout=900)
        assert not emulator.threads[job].is_alive()
    finally:
        sagemaker_jobs.uninstall()

    described = world.sm.describe_training_job(TrainingJobName=job)
    assert described["TrainingJobStatus"] == "Completed", described.get("FailureReason")
    log = (tmp_path / job / "training.log").read_text().splitlines()
    assert any("validation:accuracy=" in line for line in log)
    # the feature pass reports as it goes (every tenth), before the first epoch, ending at its total
    features = [tuple(map(int, m.groups())) for m in map(FEATURES_LINE.match, log) if m]
    first_epoch = next(i for i, line in enumerate(log) if line.startswith("epoch 1/"))
    assert len(features) >= 2 and features[-1][0] == features[-1][1]
    assert [done for done, _ in features] == sorted({done for done, _ in features})
    assert all(log.index(features_line(*f)) < first_epoch for f in features)
    # ... and the emulation turns such a line into the run's progress (what `train --wait` shows)
    request = {
        "TrainingJobName": job,
        "AlgorithmSpecification": {},
        "Tags": [
            {"Key": "trashsorter:run-id", "Value": result["run_id"]},
            {"Key": "trashsorter:table", "Value": world.table},
        ],
    }
    emulator.progress(request, features_line(7, 40))
    progress = runs.get_run(world.table, result["run_id"], ddb=world.ddb)["progress"]  # type: ignore[index]
    assert {k: progress[k] for k in ("phase", "done", "total")} == {
        "phase": "features",
        "done": 7,
        "total": 40,
    }
    assert described["AlgorithmSpecification"]["TrainingImage"] == PYTORCH_IMAGE
    names = [d["Name"] for d in described["AlgorithmSpecification"]["MetricDefinitions"]]
    assert "validation:accuracy" in names  # the request's definitions, not moto's canned ones
    final = {m["MetricName"]: m["Value"] for m in described["FinalMetricDataList"]}
    assert {"validation:accuracy", "train:accuracy", "validation:loss", "train:loss"} <= set(final)

    # the artifact is where DescribeTrainingJob says, and its metrics are the ones the log reported
    artifact = described["ModelArtifacts"]["S3ModelArtifacts"]
    assert artifact == f"s3://{world.bucket}/training-output/{job}/output/model.tar.gz"
    body = world.s3.get_object(Bucket=world.bucket, Key=artifact.split("/", 3)[3])["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        assert {"model.onnx", "labels.txt", "metrics.json", "model.json"} <= set(tar.getnames())
        member = tar.extractfile("metrics.json")
        assert member is not None
        metrics = json.loads(member.read())
    assert final["validation:accuracy"] == pytest.approx(metrics["validation_accuracy"], abs=1e-6)
    accepted = list(world.catalogue.accepted_images())
    assert metrics["train_count"] + metrics["validation_count"] == len(accepted)
    # the container layout the entry point saw
    opt_ml = tmp_path / job / "opt" / "ml"
    assert (opt_ml / "code" / "train.py").is_file()
    assert (
        opt_ml / "input" / "data" / "labels" / "labels.txt"
    ).read_text() == "Compost\nLandfill\nRecycling\n"

    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
    details = [json.loads(m["Body"]) for m in messages]
    done = [d for d in details if d["detail-type"] == "SageMaker Training Job State Change"]
    assert done and done[-1]["detail"]["TrainingJobName"] == job
    assert done[-1]["detail"]["TrainingJobStatus"] == "Completed"
