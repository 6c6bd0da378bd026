"""The forged-event attack through the local stack's real endpoints, refused.

Anyone who may call PutEvents can send a "Training Job Reconciled" (stack bus) or a "SageMaker Training Job
State Change" (default bus) naming a real job. Here the job really runs on the local SageMaker emulation; the
attacker puts a model under images/ and sends, through the local endpoint, a "Completed" naming it with a
0.99 accuracy and a "Failed" for the same job. The package function (the dispatcher, as Lambda would) asks
DescribeTrainingJob, refuses both and records them on the run: nothing packaged, registered or deployed, the
lock kept. The genuine end of the job (StopTrainingJob -> SageMaker's own "Stopped" event) is then handled.

The local bus stores the template's bus policy but does not evaluate it (no IAM locally: every caller is
the one local account, docs/security.md), so both forged events reach the package function here - which is
why the package step's own check is the boundary that holds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.fixtures.model_artifacts import onnx_model_tar
from tests.support.sagemaker import create_slow_job, seed_run
from tests.support.waiting import wait_for
from trashsorter import registry, runs
from trashsorter_cli.local.runtime import LocalRuntime

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def local_stack(local_stack_factory: Any) -> Iterator[LocalRuntime]:
    yield local_stack_factory({}, device=False)


def _put(events: Any, bus: str, source: str, detail_type: str, detail: dict[str, Any]) -> None:
    entry = {"Source": source, "DetailType": detail_type, "Detail": json.dumps(detail), "EventBusName": bus}
    assert events.put_events(Entries=[entry])["FailedEntryCount"] == 0  # the local bus accepts it


def test_forged_completed_and_failed_events_are_refused_by_the_package_function(
    local_stack: LocalRuntime,
) -> None:
    assert local_stack.stack is not None and local_stack.state is not None
    env = local_stack.stack.function_env("StartTrainingFunction")
    outputs = local_stack.state.outputs
    bucket, table, bus = outputs["ImagesBucketName"], outputs["CatalogueTableName"], outputs["EventBusName"]
    sm, s3, ddb, events = (local_stack.client(s) for s in ("sagemaker", "s3", "dynamodb", "events"))
    job, run_id = f"{env['JOB_NAME_PREFIX']}forged-1", "run-forged-1"
    create_slow_job(sm, s3, bucket, job, {"MaxRuntimeInSeconds": 600})
    seed_run(ddb, table, run_id=run_id, job_name=job, dataset_id="forged")
    wait_for(lambda: sm.describe_training_job(TrainingJobName=job)["TrainingJobStatus"] == "InProgress", 30,
             "the real job to run")  # fmt: skip
    s3.put_object(Bucket=bucket, Key="images/Compost/evil.tar.gz", Body=onnx_model_tar(accuracy=0.99))

    _put(events, bus, "trashsorter", "Training Job Reconciled", {
        "TrainingJobName": job, "TrainingJobStatus": "Completed",
        "ModelArtifacts": {"S3ModelArtifacts": f"s3://{bucket}/images/Compost/evil.tar.gz"},
        "FinalMetricDataList": [{"MetricName": "validation:accuracy", "Value": 0.99}],
    })  # fmt: skip
    _put(events, "default", "aws.sagemaker", "SageMaker Training Job State Change",
         {"TrainingJobName": job, "TrainingJobStatus": "Failed", "FailureReason": "forged"})  # fmt: skip

    def refused() -> dict[str, Any] | None:
        run = runs.get_run(table, run_id, ddb=ddb) or {}
        return (
            run if set(run.get("ignored_events") or []) == {"refused:Completed", "refused:Failed"} else None
        )

    run = wait_for(refused, 60, "both forged events to be refused")
    assert run["status"] == "in_progress" and "handled_statuses" not in run
    assert "SageMaker says InProgress" in run["last_ignored"]["reason"]
    assert runs.get_lock(table, ddb=ddb)["holder"] == run_id
    assert registry.get_model(job, table_name=table, ddb=ddb) is None
    assert s3.list_objects_v2(Bucket=outputs["DeepLensBucketName"]).get("KeyCount", 0) == 0
    assert sm.describe_training_job(TrainingJobName=job)["TrainingJobStatus"] == "InProgress"

    # the genuine end: SageMaker stops the job and its own state change is handled as usual
    sm.stop_training_job(TrainingJobName=job)

    def handled() -> dict[str, Any] | None:
        run = runs.get_run(table, run_id, ddb=ddb) or {}
        return run if run.get("package_outcome") else None

    ended = wait_for(handled, 60, "the genuine Stopped event")
    assert ended["status"] == "stopped" and ended["handled_statuses"] == ["Stopped"]
    assert runs.get_lock(table, ddb=ddb).get("holder") != run_id
