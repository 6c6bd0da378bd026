"""Trust SageMaker, not the event: the package step acts only on what DescribeTrainingJob says.

Each test delivers a forged "SageMaker Training Job State Change" / "Training Job Reconciled" (what anyone
who may PutEvents could send) and shows it refused: recorded on the run, nothing packaged, registered or
deployed, the lock kept; the genuine event that follows is handled as usual. The jobs live in moto's
SageMaker; :func:`tests.support.sagemaker.sagemaker_reports` sets what SageMaker says about them.
"""

from __future__ import annotations

import pytest

from tests.support.fixtures.model_artifacts import mxnet_model_tar, onnx_model_tar
from tests.support.pack import JOB, Pack, handle
from tests.support.sagemaker import sagemaker_reports, training_job
from trashsorter import registry
from trashsorter.schema import LOCK_KEY, run_key

pytestmark = pytest.mark.integration


def _attacker_artifact(pack: Pack) -> str:
    """A model the attacker can write: any key the attacker may put (here under images/)."""
    key = "images/Compost/evil.tar.gz"
    pack.s3.put_object(Bucket=pack.bucket, Key=key, Body=onnx_model_tar(accuracy=0.99))
    return f"s3://{pack.bucket}/{key}"


def _forged(pack: Pack, status: str, **detail: object) -> dict[str, object]:
    event = {
        "source": "trashsorter",
        "detail-type": "Training Job Reconciled",
        "detail": {"TrainingJobName": JOB, "TrainingJobStatus": status, **detail},
    }
    return event


def _nothing_happened(pack: Pack, run_id: str) -> dict[str, object]:
    run = pack.get(run_key(run_id))
    assert run["status"] == "in_progress" and "handled_statuses" not in run
    assert pack.get(LOCK_KEY)["holder"] == run_id
    assert registry.get_model(JOB, table_name=pack.table, ddb=pack.ddb) is None
    assert "Contents" not in pack.s3.list_objects_v2(Bucket=pack.deeplens_bucket)
    assert pack.deployments() == []
    return run


def test_forged_completed_while_the_job_still_runs_is_refused(pack: Pack) -> None:
    run_id = pack.start_run(JOB)
    sagemaker_reports(JOB, {"TrainingJobStatus": "InProgress"})
    forged = _forged(
        pack,
        "Completed",
        ModelArtifacts={"S3ModelArtifacts": _attacker_artifact(pack)},
        FinalMetricDataList=[{"MetricName": "validation:accuracy", "Value": 0.99}],
    )

    outcome = handle(forged, pack.settings(), ddb=pack.ddb, s3=pack.s3, greengrass=pack.gg, sagemaker=pack.sm)

    assert outcome.outcome == "refused"
    assert outcome.reason == "the event says Completed, SageMaker says InProgress"
    run = _nothing_happened(pack, run_id)
    assert run["ignored_events"] == ["refused:Completed"] and run["last_ignored"]["reason"] == outcome.reason

    # the real job finishes later: its genuine event is handled as usual
    pack.s3.put_object(
        Bucket=pack.bucket, Key=f"training-output/{JOB}/output/model.tar.gz", Body=mxnet_model_tar()
    )
    genuine = handle(pack.event("training_completed.json", JOB), pack.settings(), ddb=pack.ddb, s3=pack.s3,
                     greengrass=pack.gg, sagemaker=pack.sm)  # fmt: skip
    assert genuine.outcome == "deployed"
    model = registry.get_model(JOB, table_name=pack.table, ddb=pack.ddb)
    assert model is not None and model["source_artifact_uri"].endswith(
        f"training-output/{JOB}/output/model.tar.gz"
    )
    assert model["metrics"]["validation:accuracy"] == pytest.approx(0.9125)


def test_forged_failed_does_not_throw_a_real_model_away(pack: Pack) -> None:
    run_id = pack.start_run(JOB, artifact=mxnet_model_tar())
    genuine = pack.event("training_completed.json", JOB)  # SageMaker: Completed, with its metrics
    forged = _forged(pack, "Failed", FailureReason="ClientError: forged")

    outcome = handle(forged, pack.settings(), ddb=pack.ddb, s3=pack.s3, greengrass=pack.gg, sagemaker=pack.sm)

    assert outcome.outcome == "refused"
    assert outcome.reason == "the event says Failed, SageMaker says Completed"
    _nothing_happened(pack, run_id)
    assert (
        handle(genuine, pack.settings(), ddb=pack.ddb, s3=pack.s3, greengrass=pack.gg).outcome == "deployed"
    )


def test_completed_event_naming_another_artifact_or_other_metrics_is_refused(pack: Pack) -> None:
    run_id = pack.start_run(JOB, artifact=mxnet_model_tar())
    genuine = pack.event("training_completed.json", JOB, accuracy=0.5)  # SageMaker: Completed at 0.5
    attacker = _attacker_artifact(pack)
    other_artifact = _forged(pack, "Completed", ModelArtifacts={"S3ModelArtifacts": attacker})
    other_metrics = _forged(
        pack, "Completed", FinalMetricDataList=[{"MetricName": "validation:accuracy", "Value": 0.97}]
    )

    first = handle(other_artifact, pack.settings(), ddb=pack.ddb, s3=pack.s3, greengrass=pack.gg)
    second = handle(other_metrics, pack.settings(), ddb=pack.ddb, s3=pack.s3, greengrass=pack.gg)

    assert first.outcome == second.outcome == "refused"
    assert attacker in first.reason
    assert second.reason == "the event says validation:accuracy=0.97, SageMaker says 0.5"
    _nothing_happened(pack, run_id)
    # the genuine event: SageMaker's 0.5 is gated out, the attacker's 0.97 never counted
    assert (
        handle(genuine, pack.settings(), ddb=pack.ddb, s3=pack.s3, greengrass=pack.gg).outcome == "rejected"
    )


def test_an_artifact_outside_the_stacks_output_prefix_is_never_read(pack: Pack) -> None:
    """Even SageMaker's own word: a job whose artifact is not training-output/<job>/ fails packaging."""
    run_id = pack.start_run(JOB)
    attacker = _attacker_artifact(pack)
    training_job(JOB).model_artifacts = {"S3ModelArtifacts": attacker}
    event = pack.event("training_completed.json", JOB)
    assert event["detail"]["ModelArtifacts"]["S3ModelArtifacts"] == attacker  # SageMaker and event agree

    outcome = handle(event, pack.settings(), ddb=pack.ddb, s3=pack.s3, greengrass=pack.gg)

    assert outcome.outcome == "failed"
    assert "is not this stack's output" in outcome.reason and attacker in outcome.reason
    assert pack.get(run_key(run_id))["status"] == "failed"
    assert "Contents" not in pack.s3.list_objects_v2(Bucket=pack.deeplens_bucket)
    assert pack.deployments() == []
