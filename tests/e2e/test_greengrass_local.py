"""The Greengrass v2 path end to end on the embedded local stack: a user's component deployed to the local
thing group beforehand, then photos -> training -> package -> the champion's deployment through
``CreateDeployment`` on the local endpoint -> the local core device. The plain ``aws greengrassv2`` CLI
(``--endpoint-url``, dummy credentials) shows the deployment and the core's result; the user's component is
still in the group's deployment; a model that cannot load fails on the core, is rolled back (the core keeps
serving the previous model), and the registry and a notice say so."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.cli import run_cli
from tests.support.fixtures.model_artifacts import tar_bytes
from tests.support.stack import SAMPLES_DIR as SAMPLES
from tests.support.stack import tiny_training
from tests.support.waiting import wait_for
from trashsorter import registry, runs
from trashsorter.deploy import greengrass_v2
from trashsorter_cli.commands.pipeline import device_request
from trashsorter_cli.device.server import THING_NAME
from trashsorter_cli.local.runtime import LOCAL_THING_GROUP, LocalRuntime

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BINS = {"Compost": "paper", "Landfill": "trash", "Recycling": "glass"}
PER_LABEL = 5
USERS = "com.example.Actuator"
USERS_SPEC = {"componentVersion": "1.2.0", "configurationUpdate": {"merge": '{"Pin": 17}'}}


@pytest.fixture(scope="module")
def local_stack(local_stack_factory: Any) -> Iterator[LocalRuntime]:
    yield local_stack_factory(tiny_training(PER_LABEL), device=True)


def aws_cli(runtime: LocalRuntime, *args: str) -> dict[str, Any]:
    """The real ``aws`` CLI against the local endpoint, with dummy credentials (no profile is read)."""
    if shutil.which("aws") is None:
        pytest.skip("the aws CLI is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION=runtime.region
    )
    done = subprocess.run(
        ["aws", *args, "--endpoint-url", runtime.endpoint_url, "--output", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def effective(runtime: LocalRuntime, deployment_id: str) -> dict[str, Any] | None:
    rows = runtime.client("greengrassv2").list_effective_deployments(coreDeviceThingName=THING_NAME)
    return next((r for r in rows["effectiveDeployments"] if r["deploymentId"] == deployment_id), None)


def finished(runtime: LocalRuntime, deployment_id: str) -> str:
    def status() -> str:
        row = effective(runtime, deployment_id)
        state = row["coreDeviceExecutionStatus"] if row else ""
        return "" if state in ("", "QUEUED", "IN_PROGRESS") else str(state)

    return str(wait_for(status, 600, f"the local core's result of {deployment_id}"))


@pytest.fixture(scope="module")
def users_component(local_stack: LocalRuntime) -> str:
    """A component of the user's (any inline recipe), deployed to the local thing group with boto3."""
    v2 = local_stack.client("greengrassv2")
    recipe = {
        "RecipeFormatVersion": "2020-01-25",
        "ComponentName": USERS,
        "ComponentVersion": USERS_SPEC["componentVersion"],
        "ComponentPublisher": "example",
        "ComponentConfiguration": {"DefaultConfiguration": {"Pin": 4}},
        "Manifests": [{"Platform": {"os": "linux"}, "Lifecycle": {"Run": "echo sorting"}}],
    }
    v2.create_component_version(inlineRecipe=json.dumps(recipe).encode())
    group = local_stack.client("iot").describe_thing_group(thingGroupName=LOCAL_THING_GROUP)["thingGroupArn"]
    deployment = v2.create_deployment(targetArn=group, deploymentName="users", components={USERS: USERS_SPEC})
    assert finished(local_stack, deployment["deploymentId"]) == "SUCCEEDED"
    return str(deployment["deploymentId"])


@pytest.fixture(scope="module")
def notices(local_stack: LocalRuntime) -> str:
    """An SQS queue subscribed to the stack's notices topic."""
    assert local_stack.state is not None
    sqs = local_stack.client("sqs")
    url = sqs.create_queue(QueueName=f"notices-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    topic = local_stack.state.environments["PackageFunction"]["TOPIC_ARN"]
    local_stack.client("sns").subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
    return str(url)


def received(runtime: LocalRuntime, url: str) -> list[dict[str, Any]]:
    got = runtime.client("sqs").receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
    return [json.loads(m["Body"]) for m in got.get("Messages", [])]


@pytest.fixture(scope="module")
def champion(local_stack: LocalRuntime, users_component: str, notices: str) -> dict[str, Any]:
    """Photos uploaded -> ingest -> training -> package -> the champion's deployment on the local core."""
    assert local_stack.state is not None
    outputs = local_stack.state.outputs
    s3, ddb, table = local_stack.client("s3"), local_stack.client("dynamodb"), outputs["CatalogueTableName"]
    for label, folder in BINS.items():
        for path in sorted((SAMPLES / folder).glob("*.jpg"))[:PER_LABEL]:
            s3.put_object(
                Bucket=outputs["ImagesBucketName"], Key=f"images/{label}/{path.name}", Body=path.read_bytes()
            )

    def packaged() -> dict[str, Any] | None:
        done = [r for r in runs.list_runs(table, ddb=ddb) if r.get("package_outcome")]
        return done[0] if done else None

    run = wait_for(packaged, 600, "training and packaging")
    assert run["package_outcome"] == "deployed", run
    model_id = str(run["model_id"])
    (record,) = [
        d
        for d in registry.list_deployments(model_id, table_name=table, ddb=ddb)
        if d.get("target") == "greengrass-v2"
    ]
    assert finished(local_stack, str(record["deployment_id"])) == "SUCCEEDED"
    return {"model_id": model_id, "deployment_id": str(record["deployment_id"]), "table": table}


def test_the_aws_cli_shows_the_champions_deployment_completed_on_the_local_core(
    local_stack: LocalRuntime, champion: dict[str, Any]
) -> None:
    deployment = aws_cli(
        local_stack, "greengrassv2", "get-deployment", "--deployment-id", champion["deployment_id"]
    )
    assert deployment["targetArn"].endswith(f":thinggroup/{LOCAL_THING_GROUP}")
    assert deployment["deploymentStatus"] == "ACTIVE" and deployment["isLatestForTarget"] is True
    assert deployment["deploymentPolicies"]["failureHandlingPolicy"] == "ROLLBACK"
    ours = sorted(n for n in deployment["components"] if n != USERS)
    app, model = ours  # the app and the model component it depends on
    assert model == greengrass_v2.model_component_name(app)
    merge = json.loads(deployment["components"][model]["configurationUpdate"]["merge"])
    assert merge["ModelId"] == champion["model_id"]

    rows = aws_cli(
        local_stack, "greengrassv2", "list-effective-deployments", "--core-device-thing-name", THING_NAME
    )["effectiveDeployments"]
    row = next(r for r in rows if r["deploymentId"] == champion["deployment_id"])
    assert row["coreDeviceExecutionStatus"] == "SUCCEEDED"  # a thing group's deployment completed
    # the core's result reached the registry through the status change event, as on AWS
    ddb = local_stack.client("dynamodb")
    record = wait_for(
        lambda: next(
            (
                d
                for d in registry.list_deployments(
                    champion["model_id"], table_name=champion["table"], ddb=ddb
                )
                if (d.get("device_results") or {}).get(THING_NAME)
            ),
            None,
        ),
        60,
        "the core's result on the deployment record",
    )
    assert record["device_results"][THING_NAME]["status"] == "SUCCEEDED"


def test_the_users_component_deployed_beforehand_stays_in_the_groups_deployment(
    local_stack: LocalRuntime, users_component: str, champion: dict[str, Any]
) -> None:
    deployment = aws_cli(
        local_stack, "greengrassv2", "get-deployment", "--deployment-id", champion["deployment_id"]
    )
    assert deployment["components"][USERS] == USERS_SPEC
    assert int(deployment["revisionId"]) >= 2  # a new revision of the group's deployment, not a new one
    first = aws_cli(local_stack, "greengrassv2", "get-deployment", "--deployment-id", users_component)
    assert first["deploymentStatus"] == "INACTIVE" and first["isLatestForTarget"] is False
    installed = local_stack.client("greengrassv2").list_installed_components(coreDeviceThingName=THING_NAME)
    assert {c["componentName"]: c["componentVersion"] for c in installed["installedComponents"]}[
        USERS
    ] == "1.2.0"


def test_a_model_that_cannot_load_fails_on_the_core_is_rolled_back_and_noticed(
    local_stack: LocalRuntime,
    champion: dict[str, Any],
    notices: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The champion's ONNX artifact replaced by one the core cannot load (the package step proves every model
    it registers, so only an artifact changed after packaging reaches a core broken), then deployed again with
    ``trashsorter deploy --model``: a new component version through the same Greengrass v2 path."""
    assert local_stack.state is not None
    ddb, table = local_stack.client("dynamodb"), champion["table"]
    model = registry.get_model(champion["model_id"], table_name=table, ddb=ddb)
    assert model is not None
    bucket, _, key = str(model["packaged_artifact_uris"]["onnx"]).removeprefix("s3://").partition("/")
    broken = tar_bytes([("model.onnx", b"not an onnx graph"), ("labels.txt", "\n".join(BINS).encode())])
    local_stack.client("s3").put_object(Bucket=bucket, Key=key, Body=broken)
    photo = sorted((SAMPLES / "glass").glob("*.jpg"))[-1].read_bytes()
    token = str(local_stack.device.token)
    before = device_request(f"{local_stack.device_url}/predict", data=photo, token=token)
    served = device_request(f"{local_stack.device_url}/status")
    received(local_stack, notices)  # what came before

    code, out, err = run_cli(
        capsys,
        "deploy",
        "--model",
        champion["model_id"],
        "--json",
        "--local-state",
        str(local_stack.state_path),
    )
    assert code == 0, err + out
    (record,) = [
        d
        for d in registry.list_deployments(champion["model_id"], table_name=table, ddb=ddb)
        if d.get("target") == "greengrass-v2" and str(d.get("request_id", "")).startswith("redeploy-")
    ]
    deployment_id = str(record["deployment_id"])
    assert finished(local_stack, deployment_id) == "FAILED"
    row = aws_cli(
        local_stack, "greengrassv2", "list-effective-deployments", "--core-device-thing-name", THING_NAME
    )["effectiveDeployments"]
    reason = next(r for r in row if r["deploymentId"] == deployment_id)["reason"]
    assert "rolled back" in reason

    # the core keeps serving the previous model, from the previous deployment
    status = device_request(f"{local_stack.device_url}/status")
    assert status["model_id"] == served["model_id"] == champion["model_id"]
    assert status["deployment_id"] == served["deployment_id"]
    after = device_request(f"{local_stack.device_url}/predict", data=photo, token=token)
    assert after["label"] == before["label"] and after["confidence"] == pytest.approx(before["confidence"])

    # the registry records the core's failure, and one notice names the core and the reason
    def device_result() -> Any:
        record_now = registry.get_deployment(
            champion["model_id"], "greengrass-v2", str(record["request_id"]), table_name=table, ddb=ddb
        )
        return (record_now or {}).get("device_results", {}).get(THING_NAME)

    result = wait_for(
        device_result,
        60,
        "the core's failure on the deployment record",
    )
    assert result["status"] == "FAILED" and "rolled back" in result["reason"]
    failed = wait_for(
        lambda: [
            n for n in received(local_stack, notices) if "failed on core device" in n.get("Subject", "")
        ],
        30,
        "the notice",
    )
    assert len(failed) == 1 and THING_NAME in failed[0]["Message"] and "rolled back" in failed[0]["Message"]
