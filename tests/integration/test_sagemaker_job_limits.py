"""The local SageMaker emulation keeps SageMaker's time limits: StoppingCondition and StopTrainingJob.

SageMaker's documented rules (API reference: StoppingCondition, StopTrainingJob, SecondaryStatusTransition):
MaxRuntimeInSeconds in 1..28 days, MaxWaitTimeInSeconds not below it; a job past MaxRuntimeInSeconds, or
asked to stop, gets SIGTERM and a grace period to save its model, then ends ``Stopped`` (SecondaryStatus
``MaxRuntimeExceeded`` / ``Stopped``) with the model it saved. Real child processes, real signals.
"""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.support.sagemaker import create_slow_job
from tests.support.stack import StackHandle
from trashsorter_cli.local import sagemaker_jobs

pytestmark = pytest.mark.integration


def _create(stack: StackHandle, name: str, stopping: dict[str, int], **hyper: str) -> None:
    bucket = stack.outputs["ImagesBucketName"]
    create_slow_job(stack.client("sagemaker"), stack.client("s3"), bucket, name, stopping, **hyper)


def _ended(stack: StackHandle, emulator: Any, name: str) -> dict[str, Any]:
    emulator.threads[name].join(timeout=60)
    assert not emulator.threads[name].is_alive()
    return dict(stack.client("sagemaker").describe_training_job(TrainingJobName=name))


@pytest.fixture
def emulator(stack: StackHandle, tmp_path: Path) -> Any:
    emulator = sagemaker_jobs.install(
        sagemaker_jobs.JobEmulator(client=stack.client, work_root=tmp_path, grace_s=2.0)
    )
    yield emulator
    sagemaker_jobs.uninstall()


def test_a_job_past_max_runtime_is_stopped_with_the_model_it_saved(stack: StackHandle, emulator: Any) -> None:
    started = time.monotonic()
    _create(stack, "deeplens-limit-1", {"MaxRuntimeInSeconds": 2})

    described = _ended(stack, emulator, "deeplens-limit-1")

    assert 2 <= time.monotonic() - started < 30
    assert described["TrainingJobStatus"] == "Stopped"
    assert described["SecondaryStatus"] == "MaxRuntimeExceeded"
    uri = described["ModelArtifacts"]["S3ModelArtifacts"]
    assert uri.endswith("training-output/deeplens-limit-1/output/model.tar.gz")
    body = stack.client("s3").get_object(Bucket=uri[5:].split("/", 1)[0], Key=uri[5:].split("/", 1)[1])
    with tarfile.open(fileobj=io.BytesIO(body["Body"].read()), mode="r:gz") as tar:
        member = tar.extractfile("model.onnx")
        assert member is not None and member.read() == b"saved on SIGTERM"


def test_stop_training_job_stops_a_job_that_ignores_sigterm_after_the_grace(
    stack: StackHandle, emulator: Any
) -> None:
    sm = stack.client("sagemaker")
    _create(stack, "deeplens-limit-2", {"MaxRuntimeInSeconds": 600}, mode="ignore")
    time.sleep(1.0)  # running
    stopped_at = time.monotonic()

    sm.stop_training_job(TrainingJobName="deeplens-limit-2")

    assert sm.describe_training_job(TrainingJobName="deeplens-limit-2")["TrainingJobStatus"] == "Stopping"
    described = _ended(stack, emulator, "deeplens-limit-2")
    assert time.monotonic() - stopped_at >= 2.0  # SIGTERM ignored: SIGKILL only after the grace period
    assert (described["TrainingJobStatus"], described["SecondaryStatus"]) == ("Stopped", "Stopped")
    assert "ModelArtifacts" not in described or not described["ModelArtifacts"].get("S3ModelArtifacts")
    with pytest.raises(ClientError, match="not InProgress"):  # a job that is not running cannot be stopped
        sm.stop_training_job(TrainingJobName="deeplens-limit-2")
    with pytest.raises(ClientError, match="not found"):
        sm.stop_training_job(TrainingJobName="deeplens-no-such-job")


@pytest.mark.parametrize(
    "stopping",
    [  # (MaxRuntimeInSeconds < 1 is refused by botocore itself, before any request)
        {"MaxRuntimeInSeconds": 28 * 24 * 3600 + 1},
        {"MaxRuntimeInSeconds": 7200, "MaxWaitTimeInSeconds": 3600},
    ],
)
def test_create_training_job_refuses_what_sagemaker_refuses(
    stack: StackHandle, emulator: Any, stopping: dict[str, int]
) -> None:
    with pytest.raises(ClientError) as refused:
        _create(stack, "deeplens-limit-3", stopping)
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    assert "deeplens-limit-3" not in emulator.threads
