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

A core device that never finishes sends no event: offline, it never takes the deployment's IoT job (its
execution stays ``QUEUED``, and the job's in-progress timer only starts at ``IN_PROGRESS``); one that took it
and did not finish within the job's ``timeoutConfig.inProgressTimeoutInMinutes`` is ``TIMED_OUT``, which
sends no event either. :func:`check_unreported` (the package function's schedule, "Check Core Device
Results") therefore looks at the thing group's current deployment once its timeout has passed: every core
device of the group (``ListCoreDevices``) whose result of it (``ListEffectiveDeployments``) is still
``QUEUED`` / ``IN_PROGRESS`` is recorded ``NOT_REPORTED``, a ``TIMED_OUT`` one ``TIMED_OUT``, and one notice
names them all (conditional writes: a later check sends nothing new; a device that reports later overwrites
its entry through the event).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from trashsorter import aws, clock, registry
from trashsorter.clients import Clients
from trashsorter.ddb import serialize
from trashsorter.deploy import TARGET_GREENGRASS_V2, greengrass_v2, refused
from trashsorter.deploy.greengrass_v2 import JOB_TIMEOUT_MINUTES, current_deployment
from trashsorter.notify import notify
from trashsorter.observability import logger
from trashsorter.schema import deployment_key
from trashsorter.settings import PackageSettings

SOURCE = "aws.greengrass"
DETAIL_TYPE = "Greengrass V2 Effective Deployment Status Change"
# The results that mean the device does not run what the deployment asked for.
FAILED_STATUSES = ("FAILED", "REJECTED", "TIMED_OUT", "CANCELED")
# The package function's schedule (template.yaml, CoreDeviceResultsCheck): its constant input.
CHECK_SOURCE = "trashsorter"
CHECK_DETAIL_TYPE = "Check Core Device Results"
UNFINISHED = ("QUEUED", "IN_PROGRESS")  # no result yet; past the job's timeout: the device did not report
NOT_REPORTED = "NOT_REPORTED"
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


def model_of_deployment(deployment: Mapping[str, Any], app_component_name: str) -> str:
    """The ``ModelId`` the deployment merges into the configuration of the app's model component
    (:func:`greengrass_v2.model_component_name`); ``""`` when it has none."""
    model_component = greengrass_v2.model_component_name(app_component_name)
    spec = dict((deployment.get("components") or {}).get(model_component) or {})
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
    gg = clients.greengrassv2
    deployment, row = aws.call(
        lambda: (gg.get_deployment(deploymentId=deployment_id), effective_result(gg, thing, deployment_id)),
        what=f"read {thing}'s result of {deployment_id}",
        refused=refused(f"Greengrass v2: cannot read {thing}'s result of {deployment_id}"),
    )
    model_id = model_of_deployment(deployment, settings.edge_component_name)
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

    def write() -> None:
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

    return aws.conditional_write(write, what=f"record {thing}'s deployment result")


# ------------------------------------------------------------------------------- devices that never report
@dataclass(frozen=True)
class UnreportedOutcome:
    outcome: str  # checked, waiting, ignored
    deployment_id: str = ""
    model_id: str = ""
    unreported: tuple[str, ...] = ()  # newly recorded this time
    noticed: bool = False

    def as_dict(self) -> dict[str, Any]:
        shown = {k: v for k, v in self.__dict__.items() if v not in ("", (), None)}
        return {**shown, "unreported": list(self.unreported)} if self.unreported else shown


def is_check(event: Mapping[str, Any]) -> bool:
    return event.get("source") == CHECK_SOURCE and event.get("detail-type") == CHECK_DETAIL_TYPE


def _timeout_minutes(deployment: Mapping[str, Any]) -> float:
    """The IoT job's in-progress timeout (the package step sets one; a deployment without: ours)."""
    timeout = ((deployment.get("iotJobConfiguration") or {}).get("timeoutConfig") or {}).get(
        "inProgressTimeoutInMinutes"
    )
    return float(timeout or JOB_TIMEOUT_MINUTES)


def _deadline(deployment: Mapping[str, Any]) -> float:
    """When every core device should have finished: creation + the IoT job's in-progress timeout."""
    created = deployment.get("creationTimestamp")
    start = created.timestamp() if isinstance(created, datetime) else float(created or 0)
    return start + 60 * _timeout_minutes(deployment)


def _core_devices(gg: Any, group_arn: str) -> list[str]:
    kwargs: dict[str, Any] = {"thingGroupArn": group_arn}
    things: list[str] = []
    while True:
        page = gg.list_core_devices(**kwargs)
        things += [str(d["coreDeviceThingName"]) for d in page.get("coreDevices", [])]
        if not page.get("nextToken"):
            return things
        kwargs["nextToken"] = page["nextToken"]


def _unreported_result(row: Mapping[str, Any], minutes: float) -> dict[str, Any]:
    status = str(row.get("coreDeviceExecutionStatus") or "")
    reason = (
        str(row.get("reason") or "") or f"did not complete within {minutes:g} minutes"
        if status == "TIMED_OUT"
        else f"no result {minutes:g} minutes after the deployment (still {status}: offline?)"
    )
    return {
        "status": "TIMED_OUT" if status == "TIMED_OUT" else NOT_REPORTED,
        "reason": reason,
        "error_stack": [],
        "modified_at": str(row.get("modifiedTimestamp") or ""),
    }


def check_unreported(settings: PackageSettings, clients: Clients | None = None) -> UnreportedOutcome:
    """Record the core devices of the group's current deployment that did not report once its timeout has
    passed, and send one notice naming them (see the module docstring)."""
    clients = clients or Clients()
    group = settings.edge_thing_group_arn
    if not group:
        return UnreportedOutcome("ignored")
    gg = clients.greengrassv2

    def read() -> UnreportedOutcome | tuple[dict[str, Any], str, str, dict[str, dict[str, Any] | None]]:
        deployment = current_deployment(gg, group)
        if deployment is None:
            return UnreportedOutcome("ignored")
        deployment_id = str(deployment["deploymentId"])
        model_id = model_of_deployment(deployment, settings.edge_component_name)
        if not model_id:
            return UnreportedOutcome("ignored", deployment_id)
        if clock.now().timestamp() < _deadline(deployment):
            return UnreportedOutcome("waiting", deployment_id, model_id)
        rows = {thing: effective_result(gg, thing, deployment_id) for thing in _core_devices(gg, group)}
        return deployment, deployment_id, model_id, rows

    what = f"check the core devices of {group}"
    found = aws.call(read, what=what, refused=refused(f"Greengrass v2: cannot {what}"))
    if isinstance(found, UnreportedOutcome):
        return found
    deployment, deployment_id, model_id, rows = found
    records = registry.list_deployments(model_id, table_name=settings.table_name, ddb=clients.ddb)
    record = next((r for r in records if r.get("deployment_id") == deployment_id), None)
    if record is None:
        return UnreportedOutcome("ignored", deployment_id, model_id)
    key = deployment_key(model_id, TARGET_GREENGRASS_V2, str(record["request_id"]))
    minutes = _timeout_minutes(deployment)
    recorded: dict[str, dict[str, Any]] = {}
    for thing, row in sorted(rows.items()):
        if row is None or row.get("coreDeviceExecutionStatus") not in (*UNFINISHED, "TIMED_OUT"):
            continue  # finished (its event records it), or the deployment does not target it any more
        result = _unreported_result(row, minutes)
        if _write_result(clients.ddb, settings.table_name, key, thing, result):
            recorded[thing] = result
    if not recorded:
        return UnreportedOutcome("checked", deployment_id, model_id)
    lines = [f"{thing}: {r['status']} ({r['reason']})" for thing, r in recorded.items()]
    notify(
        settings.topic_arn,
        f"Model {model_id}: {len(recorded)} core device(s) did not report",
        f"Greengrass v2 deployment {deployment_id} of model {model_id}: no result from "
        + "; ".join(lines)
        + ". A device that comes online later takes the deployment and reports then.",
        details={"deployment_id": deployment_id, "devices": recorded},
        sns=clients.sns,
    )
    return UnreportedOutcome("checked", deployment_id, model_id, tuple(recorded), True)
