"""The local endpoint's Greengrass v2 control plane with plain boto3, against the documented rules: component
versions immutable, one deployment per target (a new one replaces it), unknown versions and targets refused,
retries idempotent, and the deployment request the package step sends (which keeps the group's other
components) against the one it sent before (which dropped them)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from tests.support.waiting import wait_for
from trashsorter.deploy import greengrass_v2
from trashsorter.errors import ConfigurationError
from trashsorter.settings import PackageSettings
from trashsorter_cli.local import greengrass_v2 as control_plane
from trashsorter_cli.local import greengrass_v2_state

pytestmark = pytest.mark.integration


def recipe(name: str, version: str, **extra: Any) -> bytes:
    body = {"RecipeFormatVersion": "2020-01-25", "ComponentName": name, "ComponentVersion": version, **extra}
    return json.dumps(body).encode()


@pytest.fixture
def endpoint() -> Iterator[None]:
    from moto import mock_aws

    control_plane.install()
    control_plane.PLANE.reset()
    with mock_aws():
        yield
    control_plane.PLANE.reset()


@pytest.fixture
def v2(endpoint: None) -> Any:
    return boto3.client("greengrassv2", region_name="us-east-1")


@pytest.fixture
def group(endpoint: None) -> str:
    iot = boto3.client("iot", region_name="us-east-1")
    return str(iot.create_thing_group(thingGroupName="cameras")["thingGroupArn"])


def test_component_versions_are_immutable_and_readable(v2: Any) -> None:
    created = v2.create_component_version(inlineRecipe=recipe("com.example.A", "1.0.0"))
    assert created["status"]["componentState"] == "DEPLOYABLE"
    with pytest.raises(ClientError) as conflict:
        v2.create_component_version(inlineRecipe=recipe("com.example.A", "1.0.0", ComponentDescription="x"))
    assert conflict.value.response["Error"]["Code"] == "ConflictException"
    again = v2.create_component_version(inlineRecipe=recipe("com.example.A", "1.0.1"), clientToken="t-1")
    assert (
        v2.create_component_version(inlineRecipe=recipe("com.example.A", "1.0.1"), clientToken="t-1") == again
    )
    assert json.loads(v2.get_component(arn=created["arn"])["recipe"])["ComponentVersion"] == "1.0.0"
    listed = v2.list_components()["components"]
    assert [(c["componentName"], c["latestVersion"]["componentVersion"]) for c in listed] == [
        ("com.example.A", "1.0.1")
    ]
    for bad in (b"not a recipe {", recipe("com.example.A", "one")):
        with pytest.raises(ClientError, match="ValidationException"):
            v2.create_component_version(inlineRecipe=bad)


def test_an_artifact_the_service_cannot_read_makes_the_version_undeployable(v2: Any, group: str) -> None:
    manifests = [{"Artifacts": [{"URI": "s3://no-such-bucket/app.zip"}]}]
    created = v2.create_component_version(inlineRecipe=recipe("com.example.B", "1.0.0", Manifests=manifests))
    assert created["status"]["componentState"] == "FAILED"
    with pytest.raises(ClientError, match="not deployable"):
        v2.create_deployment(targetArn=group, components={"com.example.B": {"componentVersion": "1.0.0"}})


def test_deployments_made_within_one_clock_tick_list_newest_first(
    v2: Any, group: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control_plane.PLANE, "clock", lambda: 1_796_000_000.0)  # the clock does not move
    v2.create_component_version(inlineRecipe=recipe("com.example.A", "1.0.0"))
    made = [
        v2.create_deployment(targetArn=group, components={"com.example.A": {"componentVersion": "1.0.0"}})
        for _ in range(3)
    ]
    history = v2.list_deployments(targetArn=group, historyFilter="ALL")["deployments"]
    assert [d["deploymentId"] for d in history] == [m["deploymentId"] for m in reversed(made)]
    assert [d["revisionId"] for d in history] == ["3", "2", "1"]


def test_one_deployment_per_target_and_unknown_versions_or_groups_are_refused(v2: Any, group: str) -> None:
    v2.create_component_version(inlineRecipe=recipe("com.example.A", "1.0.0"))
    first = v2.create_deployment(targetArn=group, components={"com.example.A": {"componentVersion": "1.0.0"}})
    second = v2.create_deployment(
        targetArn=group, components={"com.example.A": {"componentVersion": "1.0.0"}}
    )
    latest = v2.list_deployments(targetArn=group)["deployments"]
    assert [d["deploymentId"] for d in latest] == [second["deploymentId"]]
    history = v2.list_deployments(targetArn=group, historyFilter="ALL")["deployments"]
    assert [(d["revisionId"], d["isLatestForTarget"]) for d in history] == [("2", True), ("1", False)]
    assert v2.get_deployment(deploymentId=first["deploymentId"])["deploymentStatus"] == "INACTIVE"
    with pytest.raises(ClientError, match="does not exist"):
        v2.create_deployment(targetArn=group, components={"com.example.A": {"componentVersion": "9.9.9"}})
    with pytest.raises(ClientError) as missing:
        v2.create_deployment(
            targetArn=group.replace("cameras", "nobody"),
            components={"com.example.A": {"componentVersion": "1.0.0"}},
        )
    assert missing.value.response["Error"]["Code"] == "ResourceNotFoundException"
    with pytest.raises(ClientError, match="failureHandlingPolicy"):
        v2.create_deployment(
            targetArn=group, components={}, deploymentPolicies={"failureHandlingPolicy": "RETRY"}
        )


def _users_component(v2: Any, group: str) -> dict[str, Any]:
    v2.create_component_version(inlineRecipe=recipe("com.example.Actuator", "2.1.0"))
    spec = {"componentVersion": "2.1.0", "configurationUpdate": {"merge": '{"Pin": 17}'}}
    v2.create_deployment(targetArn=group, components={"com.example.Actuator": spec})
    return spec


def test_a_deployment_of_only_our_component_removes_the_users_component(v2: Any, group: str) -> None:
    """The request as the package step sent it before: a new deployment replaces the target's deployment, so
    the group's devices lose every component it does not list."""
    _users_component(v2, group)
    v2.create_component_version(inlineRecipe=recipe("com.trashsorter.s.classifier", "1.0.1"))
    v2.create_deployment(
        targetArn=group, components={"com.trashsorter.s.classifier": {"componentVersion": "1.0.1"}}
    )
    current = greengrass_v2.current_deployment(v2, group)
    assert current is not None and list(current["components"]) == ["com.trashsorter.s.classifier"]


def test_the_package_steps_deployment_keeps_the_users_component_and_its_configuration(
    v2: Any, group: str
) -> None:
    spec = _users_component(v2, group)
    settings = PackageSettings.from_env(
        {
            "TABLE_NAME": "t",
            "IMAGES_BUCKET": "images",
            "EVENT_BUS_NAME": "bus",
            "EDGE_THING_GROUP_ARN": group,
            "EDGE_COMPONENT_NAME": "com.trashsorter.s.classifier",
            "DEEPLENS_BUCKET": "deeplens-models",
            "ALLOWED_LABELS": "Compost,Recycling",
        }
    )
    app, model_component = "com.trashsorter.s.classifier", "com.trashsorter.s.classifierModel"
    v2.create_component_version(inlineRecipe=recipe(app, "1.0.1"))
    for version, model in (("1.0.1", "job-1"), ("1.0.2", "job-2")):
        v2.create_component_version(inlineRecipe=recipe(model_component, version))
        updates = greengrass_v2.configuration_update(model, settings)
        ours = {
            app: {"componentVersion": "1.0.1", "configurationUpdate": updates[app]},
            model_component: {"componentVersion": version, "configurationUpdate": updates[model_component]},
        }
        request = greengrass_v2.deployment_request(
            greengrass_v2.current_deployment(v2, group), ours, target_arn=group, name=model
        )
        v2.create_deployment(**request)
    current = greengrass_v2.current_deployment(v2, group)
    assert current is not None
    assert current["components"]["com.example.Actuator"] == spec
    assert current["components"][app]["componentVersion"] == "1.0.1"  # the app did not change
    assert current["components"][model_component]["componentVersion"] == "1.0.2"
    merged = json.loads(current["components"][app]["configurationUpdate"]["merge"])
    assert merged == {"Inbox": {"Bucket": "images"}}
    merged = json.loads(current["components"][model_component]["configurationUpdate"]["merge"])
    assert merged == {"ModelId": "job-2"}
    assert current["deploymentPolicies"]["failureHandlingPolicy"] == "ROLLBACK"


def test_the_state_written_to_its_file_comes_back_in_a_new_plane(v2: Any, group: str, tmp_path: Path) -> None:
    """What ``local up`` restores after a restart: versions, deployments, core results, client tokens; a core
    device that reconnects gets the deployment it had not finished."""
    store = greengrass_v2_state.PlaneStore(tmp_path / "state" / "greengrass_v2-s.json")
    assert control_plane.PLANE.attach(store) is False  # no file yet: a first start
    iot = boto3.client("iot", region_name="us-east-1")
    iot.create_thing(thingName="cam-1")
    iot.add_thing_to_thing_group(thingGroupName="cameras", thingName="cam-1")
    control_plane.PLANE.connect(control_plane.CoreConnection("cam-1", deliver=lambda d: None), ["cameras"])
    spec = _users_component(v2, group)
    first = greengrass_v2.current_deployment(v2, group)
    assert first is not None
    control_plane.PLANE.report(
        "cam-1", first["deploymentId"], "SUCCEEDED", installed={"com.example.Actuator": "2.1.0"}
    )
    v2.create_component_version(inlineRecipe=recipe("com.example.B", "1.0.0"), clientToken="tok-b")
    queued = v2.create_deployment(
        targetArn=group, components={**first["components"], "com.example.B": {"componentVersion": "1.0.0"}}
    )  # cam-1 gets it, does not finish: the process stops
    before = {
        "components": v2.list_components()["components"],
        "deployment": v2.get_deployment(deploymentId=first["deploymentId"]),
        "effective": v2.list_effective_deployments(coreDeviceThingName="cam-1")["effectiveDeployments"],
    }

    control_plane.PLANE.reset()  # a new process: an empty plane, then the file
    assert control_plane.PLANE.attach(greengrass_v2_state.PlaneStore(store.path)) is True
    assert v2.list_components()["components"] == before["components"]
    assert v2.get_deployment(deploymentId=first["deploymentId"]) == before["deployment"]
    effective = v2.list_effective_deployments(coreDeviceThingName="cam-1")["effectiveDeployments"]
    assert effective == before["effective"]
    assert [r["coreDeviceExecutionStatus"] for r in effective] == ["QUEUED", "SUCCEEDED"]
    again = v2.create_component_version(inlineRecipe=recipe("com.example.B", "1.0.0"), clientToken="tok-b")
    assert again["componentVersion"] == "1.0.0"  # a retry after the restart answers the first result
    delivered: list[str] = []
    control_plane.PLANE.connect(
        control_plane.CoreConnection("cam-1", deliver=lambda d: delivered.append(d["deploymentId"])),
        ["cameras"],
    )
    wait_for(lambda: delivered, 10, "the unfinished deployment delivered again")
    assert delivered == [queued["deploymentId"]]
    # a new deployment still merges with the restored one: the user's components stay
    v2.create_component_version(inlineRecipe=recipe("com.trashsorter.s.classifier", "1.0.1"))
    current = greengrass_v2.current_deployment(v2, group)
    ours = {"com.trashsorter.s.classifier": {"componentVersion": "1.0.1"}}
    v2.create_deployment(**greengrass_v2.deployment_request(current, ours, target_arn=group, name="job-1"))
    merged = greengrass_v2.current_deployment(v2, group)
    assert merged is not None and merged["revisionId"] == "3"
    assert merged["components"]["com.example.Actuator"] == spec
    assert set(merged["components"]) == {
        "com.example.Actuator",
        "com.example.B",
        "com.trashsorter.s.classifier",
    }


@pytest.mark.parametrize("content", [b'{"components": [', b'{"format": 99}', b"\xff\xfe"])
def test_an_unreadable_state_file_is_a_clear_error_naming_it(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "greengrass_v2-s.json"
    path.write_bytes(content)
    plane = control_plane.ControlPlane()
    with pytest.raises(
        ConfigurationError, match=r"cannot read the local Greengrass v2 state .*greengrass_v2-s"
    ):
        plane.attach(greengrass_v2_state.PlaneStore(path))
    assert plane.store is None and not plane.components
