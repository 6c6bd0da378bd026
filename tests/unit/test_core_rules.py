"""The emulated core's IPC rules against the component's recipe: what a default Greengrass v2 core refuses
(recipe variables in ``accessControl`` stay literal unless ``interpolateComponentConfiguration`` is on, so a
policy naming ``{iot:thingName}`` allows nothing), the MQTT wildcard rules, unique policy ids, and a denied
publish answered as an error the component's AWS IoT client raises."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from trashsorter.deploy import greengrass_v2
from trashsorter_cli.device.core_rules import (
    MQTT_PROXY,
    PUBLISH_TO_IOT_CORE,
    IotGateway,
    NucleusSettings,
    PolicyConflict,
    authorized,
    check_policy_ids,
    effective_access_control,
    mqtt_matches,
)

THING = "cam-1"
# The component's IPC policy as it was shipped before: the thing's topics through a recipe variable, one
# policy id for every stack.
POLICY_WITH_RECIPE_VARIABLES = {
    MQTT_PROXY: {
        "trashsorter.edge:mqttproxy:publish": {
            "operations": [PUBLISH_TO_IOT_CORE],
            "resources": [
                "trashsorter/{iot:thingName}/infer",
                "trashsorter/{iot:thingName}/status",
                "trashsorter/{iot:thingName}/object",
            ],
        }
    }
}
DEFAULT_CORE = NucleusSettings()
INTERPOLATING_CORE = NucleusSettings(interpolate_component_configuration=True)


def recipe_configuration(name: str = "com.trashsorter.stack-a.classifier") -> dict[str, Any]:
    recipe = greengrass_v2.component_recipe(
        component_name=name,
        version="1.0.1",
        app_uri="s3://b/models/job-1/trashsorter-edge.zip",
    )
    configuration: dict[str, Any] = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    return configuration


def own_topics(configuration: dict[str, Any], thing: str = THING) -> list[str]:
    return [t.replace("<thing>", thing) for t in configuration["Topics"].values()]


def publish_allowed(access: dict[str, Any], topic: str) -> bool:
    return authorized(access, MQTT_PROXY, PUBLISH_TO_IOT_CORE, topic)


def test_recipe_variables_in_access_control_allow_nothing_on_a_default_core() -> None:
    configuration = {**recipe_configuration(), "accessControl": POLICY_WITH_RECIPE_VARIABLES}
    default = effective_access_control(configuration, THING, DEFAULT_CORE)
    assert not any(publish_allowed(default, t) for t in own_topics(configuration))
    interpolating = effective_access_control(configuration, THING, INTERPOLATING_CORE)
    assert all(publish_allowed(interpolating, t) for t in own_topics(configuration))


def test_the_component_publishes_its_own_topics_on_a_default_core_and_nothing_else() -> None:
    configuration = recipe_configuration()
    access = effective_access_control(configuration, THING, DEFAULT_CORE)
    assert not re.search(r"\{[a-z]+:", json.dumps(access))  # no recipe variable for a core to interpolate
    assert all(publish_allowed(access, t) for t in own_topics(configuration))
    for topic in (
        "trashsorter/cam-1/secret",
        "other/cam-1/infer",
        "trashsorter/infer",
        "trashsorter/a/b/infer",
    ):
        assert not publish_allowed(access, topic), topic
    assert not authorized(access, MQTT_PROXY, "aws.greengrass#SubscribeToIoTCore", "trashsorter/cam-1/infer")
    assert not authorized(access, "aws.greengrass.ipc.pubsub", PUBLISH_TO_IOT_CORE, "trashsorter/cam-1/infer")


def test_mqtt_wildcards_and_star() -> None:
    assert mqtt_matches("a/+/c", "a/b/c") and not mqtt_matches("a/+/c", "a/b/x/c")
    assert mqtt_matches("a/#", "a/b/c") and mqtt_matches("a/#", "a") and not mqtt_matches("a/#", "b/c")
    access = {MQTT_PROXY: {"p": {"operations": ["*"], "resources": ["*"]}}}
    assert publish_allowed(access, "any/topic")
    glob = {MQTT_PROXY: {"p": {"operations": [PUBLISH_TO_IOT_CORE], "resources": ["ts/*"]}}}
    assert publish_allowed(glob, "ts/a/b") and not publish_allowed(glob, "other")


def test_policy_ids_are_unique_per_stack_on_one_core() -> None:
    with pytest.raises(PolicyConflict, match=r"trashsorter\.edge:mqttproxy:publish"):
        check_policy_ids({"com.a": POLICY_WITH_RECIPE_VARIABLES, "com.b": POLICY_WITH_RECIPE_VARIABLES})
    a = recipe_configuration("com.trashsorter.stack-a.classifier")["accessControl"]
    b = recipe_configuration("com.trashsorter.stack-b.classifier")["accessControl"]
    check_policy_ids({"com.trashsorter.stack-a.classifier": a, "com.trashsorter.stack-b.classifier": b})
    assert list(a[MQTT_PROXY]) == ["com.trashsorter.stack-a.classifier:mqttproxy:publish"]


@pytest.fixture
def endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    from trashsorter_cli.local.server import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def test_a_denied_publish_is_an_error_the_component_sees_and_an_allowed_one_arrives(endpoint: str) -> None:
    from moto.iotdata.models import iotdata_backends

    configuration = recipe_configuration()
    for policy, thing_topic_allowed in ((POLICY_WITH_RECIPE_VARIABLES, False), (None, True)):
        access = effective_access_control(
            {**configuration, **({"accessControl": policy} if policy else {})}, THING, DEFAULT_CORE
        )
        gateway = IotGateway(endpoint, access, "com.trashsorter.stack-a.classifier").start()
        try:
            client = boto3.client("iot-data", region_name="us-east-1", endpoint_url=gateway.url)
            if thing_topic_allowed:
                client.publish(topic=f"trashsorter/{THING}/infer", qos=0, payload=b'{"label": "Compost"}')
                published = [
                    t for b in iotdata_backends.values() for r in b.values() for t, _ in r.published_payloads
                ]
                assert f"trashsorter/{THING}/infer" in published
            else:
                with pytest.raises(ClientError) as denied:
                    client.publish(topic=f"trashsorter/{THING}/infer", qos=0, payload=b"{}")
                assert denied.value.response["Error"]["Code"] == "ForbiddenException"
            with pytest.raises(ClientError, match="not authorized"):
                client.publish(topic="elsewhere/topic", qos=0, payload=b"{}")
            # everything that is not an IoT publish goes on to the endpoint unchanged
            s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=gateway.url)
            s3.create_bucket(Bucket=f"gateway-{int(thing_topic_allowed)}")
            assert f"gateway-{int(thing_topic_allowed)}" in [b["Name"] for b in s3.list_buckets()["Buckets"]]
        finally:
            gateway.stop()
