"""After a Greengrass v2 deployment each core device's result reaches the registry: the local control plane
sends the "Greengrass V2 Effective Deployment Status Change" event when a core device reports, the stack's
rule (template.yaml) routes it to the package function, which reads the result with
ListEffectiveDeployments, writes it on the deployment record and sends one notice per failed device."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest

from tests.support.fixtures.model_artifacts import onnx_model_tar
from tests.support.pack import JOB, Pack, handle
from tests.support.stack import REGION
from trashsorter import clock, registry
from trashsorter_cli.local import greengrass_v2 as control_plane
from trashsorter_cli.local.dispatcher import make_context
from trashsorter_cli.local.template import load_template

pytestmark = pytest.mark.integration

MIRROR = "PackageFunctionCoreDeviceDeploymentStatusChangeLocalMirror"
USERS_RECIPE = {
    "RecipeFormatVersion": "2020-01-25",
    "ComponentName": "com.example.A",
    "ComponentVersion": "1.0.0",
}
REASON = "FAILED_ROLLBACK_COMPLETE: com.trashsorter classifier: Startup: the model cannot be loaded"


@pytest.fixture
def plane() -> Iterator[control_plane.ControlPlane]:
    control_plane.install()
    control_plane.PLANE.reset()
    yield control_plane.PLANE
    control_plane.PLANE.reset()


def _deployed_to_two_cores(pack: Pack, plane: control_plane.ControlPlane) -> str:
    """The package step's deployment of JOB to a thing group with two connected core devices."""
    iot = boto3.client("iot", region_name=REGION)
    group = iot.create_thing_group(thingGroupName="trashsorter-edge")["thingGroupArn"]
    for thing in ("cam-kitchen", "cam-garage"):
        iot.create_thing(thingName=thing)
        iot.add_thing_to_thing_group(thingGroupName="trashsorter-edge", thingName=thing)
        plane.connect(
            control_plane.CoreConnection(thing, deliver=lambda document: None), ["trashsorter-edge"]
        )
    pack.start_run(JOB, backend="local", artifact=onnx_model_tar(accuracy=0.9125))
    event = pack.event("training_completed.json", JOB)
    event["detail"]["AlgorithmSpecification"]["TrainingImage"] = "trashsorter/local-efficientnet-lite0"
    v2 = boto3.client("greengrassv2", region_name=REGION)
    outcome = handle(
        event, pack.settings(EDGE_THING_GROUP_ARN=group), ddb=pack.ddb, s3=pack.s3, greengrassv2=v2
    )
    assert outcome.outcome == "deployed", outcome
    return str(outcome.deployments[0]["deployment_id"])


def _routed_events(pack: Pack) -> list[dict[str, Any]]:
    """What the stack's rule delivered to the package function (its local mirror queue)."""
    url = pack.stack.stack.resources[MIRROR]
    got = pack.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
    return [json.loads(m["Body"]) for m in got.get("Messages", [])]


def test_a_failed_core_device_is_recorded_on_the_deployment_and_noticed_once(
    pack: Pack, plane: control_plane.ControlPlane
) -> None:
    deployment_id = _deployed_to_two_cores(pack, plane)
    pack.notices_received()  # the "deployed" notice of the package step
    plane.report("cam-kitchen", deployment_id, "IN_PROGRESS")  # no event: not a final state
    plane.report("cam-kitchen", deployment_id, "FAILED", reason=REASON, error_stack=["DEPLOYMENT_FAILURE"])
    plane.report("cam-garage", deployment_id, "SUCCEEDED")
    events = _routed_events(pack)
    assert sorted(
        (e["resources"][0].rsplit(":", 1)[-1], e["detail"]["coreDeviceExecutionStatus"]) for e in events
    ) == [
        ("cam-garage", "SUCCEEDED"),
        ("cam-kitchen", "FAILED"),
    ]
    app = pack.stack.load_handler("PackageFunction")
    context = make_context("PackageFunction", region=REGION, memory_mb=2048)
    results = [app.handler(event, context) for event in [*events, *events]]  # every event delivered twice
    assert sorted(r["outcome"] for r in results) == ["recorded", "recorded", "unchanged", "unchanged"]
    record = registry.get_deployment(JOB, "greengrass-v2", "initial", table_name=pack.table, ddb=pack.ddb)
    assert record is not None and record["deployment_id"] == deployment_id
    devices = record["device_results"]
    assert devices["cam-kitchen"]["status"] == "FAILED"
    assert devices["cam-kitchen"]["reason"] == REASON
    assert devices["cam-kitchen"]["error_stack"] == ["DEPLOYMENT_FAILURE"]
    assert devices["cam-garage"]["status"] == "SUCCEEDED"
    notices = pack.notices_received()
    assert len(notices) == 1, notices
    body = notices[0]["body"]
    assert "cam-kitchen" in body and "the model cannot be loaded" in body and "cam-garage" not in body


def test_a_deployment_without_our_component_is_ignored(pack: Pack, plane: control_plane.ControlPlane) -> None:
    iot = boto3.client("iot", region_name=REGION)
    group = iot.create_thing_group(thingGroupName="others")["thingGroupArn"]
    iot.create_thing(thingName="cam-1")
    iot.add_thing_to_thing_group(thingGroupName="others", thingName="cam-1")
    plane.connect(control_plane.CoreConnection("cam-1", deliver=lambda document: None), ["others"])
    v2 = boto3.client("greengrassv2", region_name=REGION)
    recipe = {
        "RecipeFormatVersion": "2020-01-25",
        "ComponentName": "com.example.A",
        "ComponentVersion": "1.0.0",
    }
    v2.create_component_version(inlineRecipe=json.dumps(recipe).encode())
    deployment = v2.create_deployment(
        targetArn=group, components={"com.example.A": {"componentVersion": "1.0.0"}}
    )
    plane.report("cam-1", deployment["deploymentId"], "FAILED", reason="not ours")
    (event,) = _routed_events(pack)
    app = pack.stack.load_handler("PackageFunction")
    result = app.handler(event, make_context("PackageFunction", region=REGION, memory_mb=2048))
    assert result["outcome"] == "ignored"
    assert pack.notices_received() == []


class Clock:
    """The time the control plane and the package function read (``trashsorter.clock.now``)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def utc(self) -> datetime:
        return datetime.fromtimestamp(self.now, UTC)


def test_core_devices_that_never_report_are_recorded_and_noticed_once_after_the_jobs_timeout(
    pack: Pack, plane: control_plane.ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No event comes from a core device that is offline (its IoT job execution stays QUEUED) or that never
    finishes (TIMED_OUT after the job's in-progress timeout sends none): the package function's schedule finds
    them once the group's current deployment is past its timeout."""
    now = Clock()
    plane.clock = now
    monkeypatch.setattr(clock, "now", now.utc)
    iot = boto3.client("iot", region_name=REGION)
    group = iot.create_thing_group(thingGroupName="trashsorter-edge")["thingGroupArn"]
    things = ("cam-garage", "cam-hall", "cam-kitchen")
    for thing in things:
        iot.create_thing(thingName=thing)
        iot.add_thing_to_thing_group(thingGroupName="trashsorter-edge", thingName=thing)
        plane.connect(control_plane.CoreConnection(thing, deliver=lambda d: None), ["trashsorter-edge"])
    v2 = boto3.client("greengrassv2", region_name=REGION)
    v2.create_component_version(inlineRecipe=json.dumps(USERS_RECIPE).encode())
    first = v2.create_deployment(targetArn=group, components={"com.example.A": {"componentVersion": "1.0.0"}})
    for thing in things:  # every camera ran the group's deployment once: core devices of the group
        plane.report(thing, first["deploymentId"], "SUCCEEDED")
    assert [d["coreDeviceThingName"] for d in v2.list_core_devices(thingGroupArn=group)["coreDevices"]] == [
        *things
    ]
    pack.start_run(JOB, backend="local", artifact=onnx_model_tar(accuracy=0.9125))
    event = pack.event("training_completed.json", JOB)
    event["detail"]["AlgorithmSpecification"]["TrainingImage"] = "trashsorter/local-efficientnet-lite0"
    outcome = handle(
        event, pack.settings(EDGE_THING_GROUP_ARN=group), ddb=pack.ddb, s3=pack.s3, greengrassv2=v2
    )
    deployment_id = str(outcome.deployments[0]["deployment_id"])
    plane.report("cam-hall", deployment_id, "SUCCEEDED")
    plane.report(
        "cam-kitchen", deployment_id, "IN_PROGRESS"
    )  # took it, never finishes; cam-garage is offline
    pack.notices_received()
    _routed_events(pack)  # the events of the reports above: cam-hall's result is not what this test checks

    app = pack.stack.load_handler("PackageFunction", EDGE_THING_GROUP_ARN=group)
    context = make_context("PackageFunction", region=REGION, memory_mb=2048)
    schedule = load_template()["Resources"]["PackageFunction"]["Properties"]["Events"][
        "CoreDeviceResultsCheck"
    ]
    check = json.loads(schedule["Properties"]["Input"])  # what EventBridge sends on schedule
    now.now += 29 * 60
    assert app.handler(check, context)["outcome"] == "waiting"  # within the job's 30 minutes
    now.now += 2 * 60
    first_check = app.handler(check, context)
    assert first_check["outcome"] == "checked" and first_check["unreported"] == ["cam-garage", "cam-kitchen"]
    kitchen = next(
        r
        for r in v2.list_effective_deployments(coreDeviceThingName="cam-kitchen")["effectiveDeployments"]
        if r["deploymentId"] == deployment_id
    )
    assert kitchen["coreDeviceExecutionStatus"] == "TIMED_OUT"  # the job's timeout, as IoT applies it
    assert _routed_events(pack) == []  # TIMED_OUT sends no status change event
    record = registry.get_deployment(JOB, "greengrass-v2", "initial", table_name=pack.table, ddb=pack.ddb)
    assert record is not None
    devices = record["device_results"]
    assert devices["cam-garage"]["status"] == "NOT_REPORTED" and "QUEUED" in devices["cam-garage"]["reason"]
    assert devices["cam-kitchen"]["status"] == "TIMED_OUT"
    assert "cam-hall" not in devices  # it reported (its event records it)
    (notice,) = pack.notices_received()
    assert "no result from" in notice["body"]
    assert (
        "cam-garage" in notice["body"]
        and "cam-kitchen" in notice["body"]
        and "cam-hall" not in notice["body"]
    )

    plane.report("cam-kitchen", deployment_id, "SUCCEEDED")  # too late: a timed-out execution is terminal
    again = app.handler(check, context)
    assert again["outcome"] == "checked" and "unreported" not in again and again["noticed"] is False
    record = registry.get_deployment(JOB, "greengrass-v2", "initial", table_name=pack.table, ddb=pack.ddb)
    assert record is not None and record["device_results"]["cam-kitchen"]["status"] == "TIMED_OUT"
    assert pack.notices_received() == []  # a later check sends nothing new
