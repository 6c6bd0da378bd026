"""Faults after ingest, through the handlers of a stack built from template.yaml.

* Greengrass failing at the DeepLens deployment (a before-call hook raising a ClientError on
  ``greengrass:CreateDeployment`` of the package handler's client):

  - throttling raises (TransientError: EventBridge retries the event, then dead-letters it to PackageDLQ);
    the retry deploys exactly once and keeps the registry entry of the first attempt;
  - the answer of a successful ``CreateDeployment`` lost (a read timeout after the call): the retry adopts
    that deployment (recorded group version + ``ListDeployments``) instead of deploying a second time;
  - AccessDenied / BadRequest end in a recorded, explained state: the model stays registered (champion),
    the deployment is recorded ``failed`` with the reason, the run completes, a notice says so, a replay
    changes nothing, and the kept registry entry can be redeployed once the permission is fixed.

* No lost trigger: a "Dataset Ready" that arrives while a run is active is kept pending and re-published
  when the package step finishes that run (Completed), and the start-training handler then trains the newer
  dataset; a pending trigger whose rule no longer holds after the new baseline is dropped, and the photos
  are not lost: the next threshold crossing includes them.

The artifact missing / corrupt at packaging is covered by
tests/integration/test_package.py::test_missing_or_corrupt_artifact_is_a_recorded_failure.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.exceptions import ClientError, ReadTimeoutError

from tests.support.fixtures.model_artifacts import mxnet_model_tar
from tests.support.pipeline import LABELS, OVERRIDES, Pipeline, photos
from tests.support.stack import StackHandle, load_event
from trashsorter import aws, registry, runs
from trashsorter.clients import Clients
from trashsorter.dataset_store import read_manifest
from trashsorter.deploy.orchestrate import redeploy
from trashsorter.errors import TransientError
from trashsorter_cli.local.template import load_template

# usefixtures: the shared ``stack`` fixture reads ``stack_overrides`` only when the test requests it
pytestmark = [pytest.mark.reliability, pytest.mark.usefixtures("stack_overrides")]


@pytest.fixture
def stack_overrides() -> dict[str, str]:
    return dict(OVERRIDES)  # MinImagesPerLabel=4, MinNewImages=2


class FailCreateDeployment:
    """A before-call hook: ``greengrass:CreateDeployment`` answers ``code`` for the first ``times`` calls."""

    def __init__(self, code: str, status: int, times: int = 1) -> None:
        self.code, self.status, self.left, self.raised = code, status, times, 0

    def __call__(self, model: Any, **_: Any) -> None:
        if self.left > 0:
            self.left -= 1
            self.raised += 1
            raise ClientError(
                {
                    "Error": {"Code": self.code, "Message": f"{self.code} from the fault hook"},
                    "ResponseMetadata": {"HTTPStatusCode": self.status},
                },
                model.name,
            )


def trained_pipeline(stack: StackHandle) -> tuple[Pipeline, dict[str, Any]]:
    """4 real photos per label ingested -> threshold -> run 1 in progress."""
    p = Pipeline(stack)
    for label in LABELS:
        for name, data in photos(label)[:4]:
            p.put(f"images/{label}/{name}", data)
    [started] = p.dataset_ready()
    assert started["status"] == "started", started
    assert [e["detail"]["reason"] for e in p.published] == ["threshold"]
    p.published.clear()
    return p, p.active_run()


def completed_event(p: Pipeline, run: dict[str, Any]) -> dict[str, Any]:
    """events/training_completed.json for the run's job, with a realistic model.tar.gz where it says."""
    event = p.training_event("training_completed.json", run)
    bucket, key = event["detail"]["ModelArtifacts"]["S3ModelArtifacts"][5:].split("/", 1)
    p.s3.put_object(Bucket=bucket, Key=key, Body=mxnet_model_tar(epochs=(9, 10)))
    return event


def run_status(p: Pipeline, run: dict[str, Any]) -> str:
    found = runs.get_run(p.table, str(run["run_id"]), ddb=p.ddb)
    assert found is not None
    return str(found["status"])


def fail_deployments(code: str, status: int, times: int = 1) -> FailCreateDeployment:
    hook = FailCreateDeployment(code, status, times)
    aws.client("greengrass").meta.events.register("before-call.greengrass.CreateDeployment", hook)
    return hook


# ---------------------------------------------------------------------------------------------- Greengrass
def test_greengrass_throttled_at_deployment_raises_for_retry_then_deploys_once(
    stack: StackHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    p, run = trained_pipeline(stack)
    job = str(run["job_name"])
    event = completed_event(p, run)
    p.notices()  # the "training started" notice
    hook = fail_deployments("ThrottlingException", 429)

    throttled = r"could not create the group deployment of DeepLens group \S+: .*\(ThrottlingException\)"
    with pytest.raises(TransientError, match=throttled):
        p.invoke_package(event)

    assert hook.raised == 1
    # nothing lost: the model is registered as the champion, its DeepLens artifact is written
    model = registry.get_model(job, table_name=p.table, ddb=p.ddb)
    assert model is not None and model["status"] == "champion"
    p.s3.head_object(Bucket=p.deeplens_bucket, Key=f"models/{job}/model.tar.gz")
    # ... and nothing claimed done: no deployment, the run still active and holding the lock, no notice
    assert p.gg.list_deployments(GroupId=p.group_id)["Deployments"] == []
    pending = registry.get_deployment(job, "greengrass-v1", "initial", table_name=p.table, ddb=p.ddb)
    assert pending is not None and pending["status"] == "pending"  # the group version it will deploy
    versions_before_retry = p.gg.list_group_versions(GroupId=p.group_id)["Versions"]
    assert run_status(p, run) == "in_progress"
    assert runs.get_lock(p.table, ddb=p.ddb)["holder"] == run["run_id"]
    assert p.notices() == []
    # EventBridge retries the raised event (RetryPolicy), then dead-letters it to PackageDLQ
    rule = load_template()["Resources"]["PackageFunction"]["Properties"]["Events"]["TrainingJobStateChange"]
    assert rule["Properties"]["RetryPolicy"]["MaximumRetryAttempts"] >= 1
    assert rule["Properties"]["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": ["PackageDLQ", "Arn"]}}
    # a retry inside the crashed attempt's lease is told to come back later: no double deployment
    with pytest.raises(TransientError, match="another delivery"):
        p.invoke_package(event)

    monkeypatch.setattr(runs, "CLAIM_LEASE_SECONDS", 0)  # EventBridge's later retry
    result = p.invoke_package(event)

    assert result["outcome"] == "deployed", result
    deployments = p.gg.list_deployments(GroupId=p.group_id)["Deployments"]
    assert len(deployments) == 1
    latest = p.gg.get_group(GroupId=p.group_id)["LatestVersion"]
    assert deployments[0]["GroupArn"].endswith(latest)
    assert latest == pending["details"]["group_version_id"]  # the retry made no second group version
    assert p.gg.list_group_versions(GroupId=p.group_id)["Versions"] == versions_before_retry
    recorded = registry.get_deployment(job, "greengrass-v1", "initial", table_name=p.table, ddb=p.ddb)
    assert recorded is not None and recorded["deployment_id"] == deployments[0]["DeploymentId"]
    assert run_status(p, run) == "completed"
    assert "holder" not in runs.get_lock(p.table, ddb=p.ddb)
    [notice] = p.notices()
    assert notice == f"[trashsorter] Model {job} deployed (accuracy 0.9125)"
    assert p.invoke_package(event)["outcome"] == "duplicate"
    assert len(p.gg.list_deployments(GroupId=p.group_id)["Deployments"]) == 1


class LoseCreateDeploymentAnswer:
    """An after-call hook: ``greengrass:CreateDeployment`` succeeds in Greengrass, but its answer is lost
    (a read timeout) the first time - as if the function had died right after the call."""

    def __init__(self) -> None:
        self.lost = 0

    def __call__(self, **_: Any) -> None:
        if self.lost == 0:
            self.lost += 1
            raise ReadTimeoutError(endpoint_url="https://greengrass.us-east-1.amazonaws.com")


def test_greengrass_deployment_whose_answer_was_lost_is_adopted_not_repeated(
    stack: StackHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    p, run = trained_pipeline(stack)
    job = str(run["job_name"])
    event = completed_event(p, run)
    hook = LoseCreateDeploymentAnswer()
    aws.client("greengrass").meta.events.register("after-call.greengrass.CreateDeployment", hook)

    timed_out = r"could not create the group deployment of DeepLens group \S+: Read timeout"
    with pytest.raises(TransientError, match=timed_out):
        p.invoke_package(event)
    [created] = p.gg.list_deployments(GroupId=p.group_id)["Deployments"]  # Greengrass did deploy
    versions = p.gg.list_group_versions(GroupId=p.group_id)["Versions"]

    monkeypatch.setattr(runs, "CLAIM_LEASE_SECONDS", 0)  # EventBridge's retry
    result = p.invoke_package(event)

    assert hook.lost == 1 and result["outcome"] == "deployed", result
    assert p.gg.list_deployments(GroupId=p.group_id)["Deployments"] == [created]  # not deployed twice
    assert p.gg.list_group_versions(GroupId=p.group_id)["Versions"] == versions
    recorded = registry.get_deployment(job, "greengrass-v1", "initial", table_name=p.table, ddb=p.ddb)
    assert recorded is not None and recorded["status"] == "deployed"
    assert recorded["deployment_id"] == created["DeploymentId"]
    assert recorded["note"] == "adopted the deployment an earlier attempt created"
    assert created["GroupArn"].endswith("/versions/" + recorded["details"]["group_version_id"])
    assert run_status(p, run) == "completed"
    assert p.invoke_package(event)["outcome"] == "duplicate"


@pytest.mark.parametrize(("code", "status"), [("AccessDeniedException", 403), ("BadRequestException", 400)])
def test_greengrass_refusing_the_deployment_is_recorded_explained_and_keeps_the_model(
    stack: StackHandle, code: str, status: int
) -> None:
    p, run = trained_pipeline(stack)
    job = str(run["job_name"])
    event = completed_event(p, run)
    p.notices()
    hook = fail_deployments(code, status)

    result = p.invoke_package(event)

    assert hook.raised == 1
    assert result["outcome"] == "registered"
    [deployment] = result["deployments"]
    assert deployment["target"] == "greengrass-v1" and deployment["status"] == "failed"
    assert f"could not create the group deployment: {code}" in deployment["note"]
    # the registry entry is kept: champion, packaged artifact, the failed deployment recorded with its reason
    model = registry.get_model(job, table_name=p.table, ddb=p.ddb)
    assert model is not None and model["status"] == "champion"
    assert model["packaged_artifact_uris"] == {
        "deeplens": f"s3://{p.deeplens_bucket}/models/{job}/model.tar.gz"
    }
    assert model["deployments"][0]["status"] == "failed"
    recorded = registry.get_deployment(job, "greengrass-v1", "initial", table_name=p.table, ddb=p.ddb)
    assert recorded is not None and recorded["status"] == "failed" and code in recorded["note"]
    # the run is over (the training itself succeeded), its lock released, the reason on the run
    finished = runs.get_run(p.table, str(run["run_id"]), ddb=p.ddb)
    assert finished is not None and finished["status"] == "completed"
    assert code in finished["status_message"] and finished["package_outcome"] == "registered"
    assert "holder" not in runs.get_lock(p.table, ddb=p.ddb)
    assert p.gg.list_deployments(GroupId=p.group_id)["Deployments"] == []
    [notice] = p.notices()
    assert notice == f"[trashsorter] Model {job} champion, deployment FAILED"
    # a replay of the event changes nothing (the refusal is not retried behind the operator's back)
    assert p.invoke_package(event)["outcome"] == "duplicate"
    assert p.notices() == []

    # once the permission / request is fixed, the kept registry entry is redeployed (CLI `trashsorter deploy`)
    again = redeploy(job, p.package_settings, clients=Clients(ddb=p.ddb))
    assert again.outcome == "deployed"
    deployments = p.gg.list_deployments(GroupId=p.group_id)["Deployments"]
    assert [d["DeploymentId"] for d in deployments] == [again.deployments[0]["deployment_id"]]


# ------------------------------------------------------------------------------------------ no lost trigger
def test_dataset_ready_during_an_active_run_is_kept_pending_and_republished_when_it_completes(
    stack: StackHandle,
) -> None:
    p, run1 = trained_pipeline(stack)
    first_dataset = str(run1["dataset_id"])
    new_keys = []
    for label in LABELS:  # new photos while run 1 trains: the threshold already fired for this baseline
        for name, data in photos(label)[4:6]:
            new_keys.append(f"images/{label}/{name}")
            p.put(new_keys[-1], data)
    assert p.dataset_ready() == []

    # a "Dataset Ready" arrives now (events/dataset_ready.json as EventBridge delivers it)
    result = p.invoke_start(load_event("dataset_ready.json"))

    assert result["status"] == "pending", result
    lock = runs.get_lock(p.table, ddb=p.ddb)
    assert lock["holder"] == run1["run_id"] and lock["pending"] is True
    pending_dataset = str(lock["pending_dataset_id"])
    assert pending_dataset != first_dataset
    assert len(p.sm.list_training_jobs()["TrainingJobSummaries"]) == 1

    outcome = p.invoke_package(completed_event(p, run1))

    assert outcome["outcome"] == "deployed", outcome
    state = p.catalogue.state()
    assert state["baseline_seq"] == run1["accepted_seq"]
    # the package step re-published the trigger, and the start-training handler trains the newer dataset
    [started] = p.dataset_ready()
    [republished] = p.published
    assert republished["detail"]["reason"] == "pending"
    assert republished["detail"]["new_images"] == len(new_keys)
    assert started["status"] == "started" and started["dataset_id"] == pending_dataset
    run2 = p.active_run()
    assert run2["run_id"] == started["run_id"] and run2["status"] == "in_progress"
    assert "pending" not in runs.get_lock(p.table, ddb=p.ddb)
    manifest = {row["key"] for row in read_manifest(p.bucket, pending_dataset, s3=p.s3)}
    assert set(new_keys) <= manifest and len(manifest) == 12 + len(new_keys)
    assert len(p.sm.list_training_jobs()["TrainingJobSummaries"]) == 2


def test_pending_trigger_without_enough_new_photos_is_dropped_and_the_next_crossing_includes_them(
    stack: StackHandle,
) -> None:
    p, run1 = trained_pipeline(stack)
    late = photos("Landfill")[4:6]
    p.put(f"images/Landfill/{late[0][0]}", late[0][1])  # 1 new photo < MinNewImages 2
    assert p.invoke_start(load_event("dataset_ready.json"))["status"] == "pending"

    assert p.invoke_package(completed_event(p, run1))["outcome"] == "deployed"

    assert p.dataset_ready() == []  # the rule no longer holds against the new baseline: nothing published
    lock = runs.get_lock(p.table, ddb=p.ddb)
    assert "holder" not in lock and "pending" not in lock
    # the next photo crosses the threshold for the new baseline: both late photos are trained
    p.put(f"images/Landfill/{late[1][0]}", late[1][1])
    [started] = p.dataset_ready()
    assert [e["detail"]["reason"] for e in p.published] == ["threshold"]
    assert p.published[0]["detail"]["new_images"] == 2
    assert started["status"] == "started"
    manifest = {row["key"] for row in read_manifest(p.bucket, str(started["dataset_id"]), s3=p.s3)}
    assert {f"images/Landfill/{name}" for name, _ in late} <= manifest


def test_notices_name_the_failed_target_and_reason_in_the_message(stack: StackHandle) -> None:
    """The SNS body (not only the subject) explains a refused deployment to the person who reads it."""
    p, run = trained_pipeline(stack)
    event = completed_event(p, run)
    p.drain(p.notice_queue)
    fail_deployments("AccessDeniedException", 403)
    p.invoke_package(event)
    [message] = [json.loads(m["Body"])["Message"] for m in p.drain(p.notice_queue)]
    assert "passed the gate but deployment failed" in message
    assert "greengrass-v1: failed" in message and "AccessDeniedException" in message
