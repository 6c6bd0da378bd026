"""Each Greengrass v2 core device's result of a deployment, recorded on the deployment record, and a notice
for each device on which it failed.

A deployment is asynchronous: the package step cannot wait for the devices. Greengrass sends a
"Greengrass V2 Effective Deployment Status Change" event (source ``aws.greengrass``, the core device's ARN in
``resources``) when a core device's deployment ends ``SUCCEEDED``, ``FAILED``, ``COMPLETED``, ``REJECTED`` or
``CANCELED`` (Greengrass v2 Developer Guide, "Get deployment and component health status notifications").
Events are best-effort, may repeat and may come out of order, so the event only says *which* core device and
deployment to look at; the result itself is read from ``ListEffectiveDeployments`` for that core device
(``coreDeviceExecutionStatus``, ``reason``, ``statusDetails``). The deployment's model is the ``ModelId`` our
component's configuration update merges (``GetDeployment``); a deployment without our component is ignored.

The result lands on the model's ``MODEL#<id>/DEPLOY#greengrass-v2#<request>`` record as
``device_results.<thing> = {status, reason, error_stack, modified_at}``; the write is conditional on the
status changing, so a repeated event neither writes twice nor sends a second notice.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from trashsorter import aws, registry
from trashsorter.clients import Clients
from trashsorter.ddb import serialize
from trashsorter.deploy import TARGET_GREENGRASS_V2, aws_failure, greengrass_v2
from trashsorter.errors import TransientError
from trashsorter.notify import notify
from trashsorter.observability import logger
from trashsorter.schema import deployment_key
from trashsorter.settings import PackageSettings

SOURCE = "aws.greengrass"
DETAIL_TYPE = "Greengrass V2 Effective Deployment Status Change"
# The results that mean the device does not run what the deployment asked for.
FAILED_STATUSES = ("FAILED", "REJECTED", "TIMED_OUT", "CANCELED")
_CORE_DEVICE_ARN = re.compile(
    r"^arn:aws[a-z-]*:greengrass:[a-z0-9-]+:\d{12}:coreDevices:([A-Za-z0-9:_-]{1,128})$"
)


@dataclass(frozen=True)
class CoreDeviceStatusChange:
    """Which core device reported on which deployment (what the event says; the result is read back)."""

    thing: str
    deployment_id: str


@dataclass(frozen=True)
class DeviceResultOutcome:
    outcome: str  # recorded, unchanged, ignored
    thing: str
    deployment_id: str
    status: str = ""
    reason: str = ""
    model_id: str = ""
    noticed: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in ("", None)}


def parse_status_change(event: Mapping[str, Any]) -> CoreDeviceStatusChange | None:
    """The core device and deployment of a status change event; ``None`` for any other event."""
    if event.get("source") != SOURCE or event.get("detail-type") != DETAIL_TYPE:
        return None
    detail = event.get("detail") or {}
    deployment_id = str(detail.get("deploymentId") or "")
    things = [m.group(1) for r in event.get("resources") or [] if (m := _CORE_DEVICE_ARN.match(str(r)))]
    if not deployment_id or len(things) != 1:
        logger.warning("a deployment status change without one core device and a deployment id")
        return None
    return CoreDeviceStatusChange(things[0], deployment_id)


def model_of_deployment(deployment: Mapping[str, Any], component_name: str) -> str:
    """The ``ModelId`` the deployment merges into ``component_name``'s configuration (our model component's,
    :func:`greengrass_v2.model_component_name`); ``""`` when it has none."""
    spec = dict((deployment.get("components") or {}).get(component_name) or {})
    try:
        merged = json.loads((spec.get("configurationUpdate") or {}).get("merge") or "{}")
    except json.JSONDecodeError:
        return ""
    return str(merged.get("ModelId") or "") if isinstance(merged, dict) else ""


def effective_result(gg: Any, thing: str, deployment_id: str) -> dict[str, Any] | None:
    """The core device's current record of ``deployment_id`` (``ListEffectiveDeployments``, every page)."""
    kwargs: dict[str, Any] = {"coreDeviceThingName": thing}
    while True:
        page = gg.list_effective_deployments(**kwargs)
        for row in page.get("effectiveDeployments", []):
            if row.get("deploymentId") == deployment_id:
                return dict(row)
        if not page.get("nextToken"):
            return None
        kwargs["nextToken"] = page["nextToken"]


def record_device_result(
    change: CoreDeviceStatusChange, settings: PackageSettings, clients: Clients | None = None
) -> DeviceResultOutcome:
    """Write the core device's result onto the deployment record; a failed one is noticed once."""
    clients = clients or Clients()
    thing, deployment_id = change.thing, change.deployment_id
    try:
        deployment = clients.greengrassv2.get_deployment(deploymentId=deployment_id)
        row = effective_result(clients.greengrassv2, thing, deployment_id)
    except (ClientError, BotoCoreError) as exc:
        raise aws_failure(f"Greengrass v2: cannot read {thing}'s result of {deployment_id}", exc) from exc
    model_id = model_of_deployment(
        deployment, greengrass_v2.model_component_name(settings.edge_component_name)
    )
    if not model_id or row is None:
        return DeviceResultOutcome("ignored", thing, deployment_id, model_id=model_id)
    records = registry.list_deployments(model_id, table_name=settings.table_name, ddb=clients.ddb)
    record = next((r for r in records if r.get("deployment_id") == deployment_id), None)
    if record is None:
        return DeviceResultOutcome("ignored", thing, deployment_id, model_id=model_id)
    status = str(row.get("coreDeviceExecutionStatus") or "")
    reason = str(row.get("reason") or "")
    result: dict[str, Any] = {
        "status": status,
        "reason": reason,
        "error_stack": list((row.get("statusDetails") or {}).get("errorStack") or []),
        "modified_at": str(row.get("modifiedTimestamp") or ""),
    }
    key = deployment_key(model_id, TARGET_GREENGRASS_V2, str(record["request_id"]))
    if not _write_result(clients.ddb, settings.table_name, key, thing, result):
        return DeviceResultOutcome("unchanged", thing, deployment_id, status, reason, model_id)
    noticed = status in FAILED_STATUSES
    if noticed:
        notify(
            settings.topic_arn,
            f"Model {model_id} failed on core device {thing}",
            f"Greengrass v2 deployment {deployment_id} of model {model_id} ended {status} on core device "
            f"{thing}: {reason or 'no reason given'}. With ROLLBACK the device keeps the previous "
            "deployment's components.",
            details={"thing": thing, "deployment_id": deployment_id, **result},
            sns=clients.sns,
        )
    return DeviceResultOutcome("recorded", thing, deployment_id, status, reason, model_id, noticed)


def _write_result(ddb: Any, table: str, key: Mapping[str, str], thing: str, result: dict[str, Any]) -> bool:
    """Set ``device_results.<thing>`` unless it already has this status; False when it had it."""
    names = {"#r": "device_results", "#t": thing, "#s": "status"}
    try:
        ddb.update_item(  # the map must exist before a path inside it can be set
            TableName=table,
            Key=serialize(dict(key)),
            UpdateExpression="SET #r = if_not_exists(#r, :empty)",
            ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeNames={"#r": "device_results"},
            ExpressionAttributeValues={":empty": {"M": {}}},
        )
        ddb.update_item(
            TableName=table,
            Key=serialize(dict(key)),
            UpdateExpression="SET #r.#t = :result",
            ConditionExpression="attribute_not_exists(#r.#t) OR #r.#t.#s <> :status",
            ExpressionAttributeNames=names,
            ExpressionAttributeValues={
                ":result": serialize({"v": result})["v"],
                ":status": {"S": result["status"]},
            },
        )
    except ClientError as exc:
        if aws.error_code(exc) == "ConditionalCheckFailedException":
            return False
        raise TransientError(f"could not record {thing}'s deployment result: {exc}") from exc
    except BotoCoreError as exc:
        raise TransientError(f"could not record {thing}'s deployment result: {exc}") from exc
    return True
