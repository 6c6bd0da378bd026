"""The local endpoint's Greengrass v2 control plane (moto has none): the API the package step, the plain
``aws greengrassv2 ...`` CLI and boto3 call, answered with the documented semantics (docs/deploy.md,
"The local Greengrass v2 control plane", names the guide page of each rule):

* The component versions: :mod:`trashsorter_cli.local.greengrass_v2_components`.
* ``CreateDeployment``: one deployment per target; a new one replaces the previous one (a new revision, the
  previous deployment becomes ``INACTIVE`` and not ``isLatestForTarget``). Every component version must exist
  and be deployable. The target must be an existing thing group or thing. Each core device in the target
  gets the deployment (``QUEUED``) through its :class:`CoreConnection` and reports its result.
* ``GetDeployment``, ``ListDeployments`` (``historyFilter`` ``LATEST_ONLY`` by default), ``CancelDeployment``,
  ``ListEffectiveDeployments`` (each core device's result), ``GetCoreDevice``, ``ListCoreDevices``,
  ``ListInstalledComponents``.

:func:`install` adds the ``/greengrass/v2/...`` routes (:mod:`trashsorter_cli.local.greengrass_v2_routes`) to
moto's Greengrass (v1) service, which shares the signing name ``greengrass`` with v2, so both the local
endpoint (server mode) and ``mock_aws`` answer them.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from trashsorter_cli.local import greengrass_v2_state
from trashsorter_cli.local.greengrass_v2_components import (
    ACCOUNT,
    REGION,
    ComponentStore,
    ServiceError,
    not_found_error,
    validation_error,
)
from trashsorter_cli.local.greengrass_v2_state import PlaneStore

LOG = logging.getLogger(__name__)
_THING_NAME = re.compile(r"^[A-Za-z0-9:_-]{1,128}$")
_TARGET = re.compile(r"^arn:aws[a-z-]*:iot:[a-z0-9-]+:\d{12}:(thinggroup|thing)/([A-Za-z0-9:_-]{1,128})$")
FAILURE_POLICIES = ("ROLLBACK", "DO_NOTHING")
UPDATE_ACTIONS = ("NOTIFY_COMPONENTS", "SKIP_NOTIFY_COMPONENTS")
# How a core device's result of a deployment is reported (EffectiveDeploymentExecutionStatus).
FINAL_STATUSES = ("SUCCEEDED", "FAILED", "COMPLETED", "TIMED_OUT", "CANCELED", "REJECTED")
# The results that send a "Greengrass V2 Effective Deployment Status Change" event (Developer Guide, "Get
# deployment and component health status notifications").
EVENT_STATUSES = ("FAILED", "SUCCEEDED", "COMPLETED", "REJECTED", "CANCELED")
UNFINISHED = ("QUEUED", "IN_PROGRESS")  # a deployment a core device has received and not finished


@dataclass
class Deployment:
    deployment_id: str
    target_arn: str
    revision: int
    request: dict[str, Any]
    created: float
    status: str = "ACTIVE"
    latest: bool = True

    def summary(self) -> dict[str, Any]:
        return {
            "targetArn": self.target_arn,
            "revisionId": str(self.revision),
            "deploymentId": self.deployment_id,
            "deploymentName": self.request.get("deploymentName", ""),
            "creationTimestamp": self.created,
            "deploymentStatus": self.status,
            "isLatestForTarget": self.latest,
        }

    def describe(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "components": self.request.get("components", {}),
            "deploymentPolicies": self.request.get("deploymentPolicies", {}),
            "iotJobConfiguration": self.request.get("iotJobConfiguration", {}),
            "iotJobId": self.deployment_id,
            "iotJobArn": f"arn:aws:iot:{REGION}:{ACCOUNT}:job/{self.deployment_id}",
            "tags": {},
        }


@dataclass
class CoreConnection:
    """A core device connected to the control plane: its thing, and how a deployment reaches it."""

    thing: str
    deliver: Callable[[dict[str, Any]], None] | None  # None: known (restored state), not connected now
    platform: str = "linux"
    architecture: str = "amd64"
    core_version: str = "2.12.0"
    status: str = "HEALTHY"
    updated: float = field(default_factory=time.time)
    effective: dict[str, dict[str, Any]] = field(default_factory=dict)  # deployment id -> record
    installed: dict[str, str] = field(default_factory=dict)  # component -> version


class ControlPlane(ComponentStore):
    """The state behind the routes (one per process, like a moto backend); thread-safe."""

    def __init__(
        self,
        group_members: Callable[[str], list[str]] | None = None,
        s3_exists: Any = None,
        emit: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        super().__init__(s3_exists)
        self.deployments: dict[str, Deployment] = {}
        self.cores: dict[str, CoreConnection] = {}
        self.group_members = group_members or _moto_group_members
        self.emit = emit or _moto_put_event
        self.store: PlaneStore | None = None

    def reset(self) -> None:
        with self._lock:
            self.store = None
            self.components.clear()
            self.deployments.clear()
            self.cores.clear()
            self.tokens.clear()

    def attach(self, store: PlaneStore) -> bool:
        """Restore the state ``store`` holds (the plane must be empty) and write every later change to it;
        False when it held none."""
        with self._lock:
            if self.components or self.deployments or self.cores:
                raise RuntimeError("the Greengrass v2 control plane already holds state")
            found = store.read(self)
            self.store = store
            return found

    def detach(self) -> None:
        with self._lock:
            self.store = None

    def _changed(self) -> None:
        """After a change (lock held): the whole state to the attached store."""
        if self.store is not None:
            self.store.write(greengrass_v2_state.dump(self))

    # ------------------------------------------------------------------------------------- deployments
    def create_deployment(self, body: Mapping[str, Any]) -> dict[str, Any]:
        target = str(body.get("targetArn") or "")
        match = _TARGET.match(target)
        if not match:
            raise validation_error(f"targetArn {target!r} is not a thing or thing group ARN")
        components = body.get("components") or {}
        if not isinstance(components, dict):
            raise validation_error("components must be a map")
        policies = body.get("deploymentPolicies") or {}
        if policies.get("failureHandlingPolicy", "ROLLBACK") not in FAILURE_POLICIES:
            raise validation_error(f"failureHandlingPolicy must be one of {FAILURE_POLICIES}")
        timeout = in_progress_timeout_s(body)
        if timeout is not None and not 60 <= timeout <= 10080 * 60:
            raise validation_error("timeoutConfig.inProgressTimeoutInMinutes must lie in 1..10080 (7 days)")
        update = policies.get("componentUpdatePolicy") or {}
        if update and update.get("action", "NOTIFY_COMPONENTS") not in UPDATE_ACTIONS:
            raise validation_error(f"componentUpdatePolicy.action must be one of {UPDATE_ACTIONS}")
        with self._lock:
            for name, spec in components.items():
                version = str((spec or {}).get("componentVersion") or "")
                item = self.components.get(name, {}).get(version)
                if item is None:
                    raise validation_error(f"component {name} version {version!r} does not exist")
                if item.state != "DEPLOYABLE":
                    raise validation_error(f"component {name} {version} is not deployable: {item.message}")
                merge = ((spec or {}).get("configurationUpdate") or {}).get("merge")
                if merge is not None:
                    try:
                        json.loads(merge)
                    except ValueError as exc:
                        raise validation_error(
                            f"{name}: configurationUpdate.merge is not JSON: {exc}"
                        ) from exc
            kind, name = match.groups()
            things = self.group_members(name) if kind == "thinggroup" else [name]

            def make() -> dict[str, Any]:
                previous = [d for d in self.deployments.values() if d.target_arn == target and d.latest]
                for old in previous:
                    old.latest = False
                    if old.status == "ACTIVE":
                        old.status = "INACTIVE"
                revision = 1 + max(
                    (d.revision for d in self.deployments.values() if d.target_arn == target), default=0
                )
                deployment = Deployment(str(uuid.uuid4()), target, revision, dict(body), self.clock())
                self.deployments[deployment.deployment_id] = deployment
                for thing in things:
                    self._queue(thing, deployment)
                return {
                    "deploymentId": deployment.deployment_id,
                    "iotJobId": deployment.deployment_id,
                    "iotJobArn": deployment.describe()["iotJobArn"],
                }

            fingerprint = json.dumps({k: v for k, v in body.items() if k != "clientToken"}, sort_keys=True)
            result: dict[str, Any] = self._idempotent(body.get("clientToken"), fingerprint, make)
            self._changed()
            return result

    def _queue(self, thing: str, deployment: Deployment) -> None:
        core = self.cores.get(thing)
        if core is None:
            return  # a thing that never connected: it gets the deployment when it connects
        record = {
            "deploymentId": deployment.deployment_id,
            "deploymentName": deployment.request.get("deploymentName", ""),
            "iotJobId": deployment.deployment_id,
            "iotJobArn": deployment.describe()["iotJobArn"],
            "targetArn": deployment.target_arn,
            "coreDeviceExecutionStatus": "QUEUED",
            "reason": "",
            "creationTimestamp": self.clock(),
            "modifiedTimestamp": self.clock(),
            "statusDetails": {"errorStack": [], "errorTypes": []},
        }
        core.effective[deployment.deployment_id] = record
        self._deliver(core, deployment)

    def _deliver(self, core: CoreConnection, deployment: Deployment) -> None:
        if core.deliver is None:
            return  # known from the restored state, not connected: it gets the deployment when it connects
        thing = core.thing
        document = {**deployment.describe(), "recipes": self._recipes(deployment)}
        threading.Thread(
            target=core.deliver, args=(document,), name=f"gg-deliver-{thing}", daemon=True
        ).start()

    def _recipes(self, deployment: Deployment) -> dict[str, dict[str, Any]]:
        return {
            name: self.components[name][spec["componentVersion"]].recipe
            for name, spec in deployment.request.get("components", {}).items()
        }

    def get_deployment(self, deployment_id: str) -> dict[str, Any]:
        with self._lock:
            deployment = self.deployments.get(deployment_id)
            if deployment is None:
                raise not_found_error(f"deployment {deployment_id} does not exist")
            return deployment.describe()

    def list_deployments(self, target: str | None, history: str) -> dict[str, Any]:
        if history not in ("ALL", "LATEST_ONLY"):
            raise validation_error("historyFilter must be ALL or LATEST_ONLY")
        with self._lock:
            # newest first; deployments made within one clock tick in the order they were made
            made = sorted(enumerate(self.deployments.values()), key=lambda n_d: (n_d[1].created, n_d[0]))
            found = [
                d.summary()
                for _, d in reversed(made)
                if (not target or d.target_arn == target) and (history == "ALL" or d.latest)
            ]
        return {"deployments": found}

    def cancel_deployment(self, deployment_id: str) -> dict[str, Any]:
        with self._lock:
            deployment = self.deployments.get(deployment_id)
            if deployment is None:
                raise not_found_error(f"deployment {deployment_id} does not exist")
            if deployment.status != "ACTIVE":
                raise ServiceError(409, "ConflictException", f"deployment {deployment_id} is not active")
            deployment.status = "CANCELED"
            self._changed()
        return {"message": "CANCELED"}

    # ------------------------------------------------------------------------------------ core devices
    def connect(self, core: CoreConnection, groups: list[str]) -> None:
        """A core device comes online: it gets the latest deployment of each of its groups (and its own)."""
        if not _THING_NAME.match(core.thing):
            raise ValueError(f"invalid thing name {core.thing!r}")
        with self._lock:
            known = self.cores.get(core.thing)
            if known is not None:
                core.effective = known.effective
                core.installed = known.installed
            self.cores[core.thing] = core
            for deployment in self.deployments.values():
                kind, name = _TARGET.match(deployment.target_arn).groups()  # type: ignore[union-attr]
                member = name in groups if kind == "thinggroup" else name == core.thing
                if not member or not deployment.latest:
                    continue
                record = core.effective.get(deployment.deployment_id)
                if record is None:
                    self._queue(core.thing, deployment)
                elif record["coreDeviceExecutionStatus"] in UNFINISHED:  # a restarted core resumes it
                    self._deliver(core, deployment)
            self._changed()

    def report(
        self,
        thing: str,
        deployment_id: str,
        status: str,
        reason: str = "",
        error_stack: list[str] | None = None,
        installed: Mapping[str, str] | None = None,
    ) -> None:
        """What the core device says about one deployment (IN_PROGRESS, then SUCCEEDED / FAILED ...)."""
        with self._lock:
            core = self.cores[thing]
            record = core.effective.get(deployment_id)
            if record is None:
                raise KeyError(deployment_id)
            self._time_out(core)
            if record["coreDeviceExecutionStatus"] == "TIMED_OUT":  # a terminal job execution: IoT refuses
                LOG.warning("%s reported %s on %s after it timed out: ignored", thing, status, deployment_id)
                return
            record.update(
                coreDeviceExecutionStatus=status,
                reason=reason,
                modifiedTimestamp=self.clock(),
                statusDetails={"errorStack": list(error_stack or []), "errorTypes": []},
            )
            core.updated = self.clock()
            core.status = "UNHEALTHY" if status == "FAILED" else "HEALTHY"
            if installed is not None:
                core.installed = dict(installed)
            event = dict(record) if status in EVENT_STATUSES else None
            self._changed()
        if event is not None:
            try:  # Greengrass sends these events best-effort: a lost one does not fail the report
                self.emit(status_change_event(thing, event))
            except Exception:  # the bus of a stopping endpoint
                LOG.warning("could not send the deployment status change of %s", thing, exc_info=True)

    def effective_deployments(self, thing: str) -> dict[str, Any]:
        with self._lock:
            core = self.cores.get(thing)
            if core is None:
                raise not_found_error(f"core device {thing} does not exist")
            self._time_out(core)
            records = sorted(core.effective.values(), key=lambda r: r["creationTimestamp"], reverse=True)
            return {"effectiveDeployments": [dict(r) for r in records]}

    def get_core_device(self, thing: str) -> dict[str, Any]:
        with self._lock:
            core = self.cores.get(thing)
            if core is None:
                raise not_found_error(f"core device {thing} does not exist")
            return {
                "coreDeviceThingName": core.thing,
                "coreVersion": core.core_version,
                "platform": core.platform,
                "architecture": core.architecture,
                "runtime": "aws_nucleus_classic",
                "status": core.status,
                "lastStatusUpdateTimestamp": core.updated,
                "tags": {},
            }

    def _time_out(self, core: CoreConnection) -> None:
        """A deployment ``IN_PROGRESS`` on the core for longer than its IoT job's
        ``timeoutConfig.inProgressTimeoutInMinutes`` is ``TIMED_OUT`` (the timer starts at ``IN_PROGRESS``;
        a ``QUEUED`` one, on a core that never took it, never times out). No status change event is sent."""
        for deployment_id, record in core.effective.items():
            deployment = self.deployments.get(deployment_id)
            if record["coreDeviceExecutionStatus"] != "IN_PROGRESS" or deployment is None:
                continue
            timeout = in_progress_timeout_s(deployment.request)
            started = float(record["modifiedTimestamp"])
            if timeout is not None and self.clock() >= started + timeout:
                record.update(
                    coreDeviceExecutionStatus="TIMED_OUT",
                    reason=f"the deployment did not complete within {timeout / 60:g} minutes",
                    modifiedTimestamp=started + timeout,
                )
                self._changed()

    def list_core_devices(self, group_arn: str | None) -> dict[str, Any]:
        """Every core device; with ``group_arn`` only those that have *successfully* deployed a deployment
        targeting that group (API Reference ``ListCoreDevices``: one removed from the group stays listed; one
        that never completed a deployment of the group is not)."""
        with self._lock:
            things = sorted(
                thing
                for thing, core in self.cores.items()
                if not group_arn
                or any(
                    r["targetArn"] == group_arn
                    and r["coreDeviceExecutionStatus"] in ("SUCCEEDED", "COMPLETED")
                    for r in core.effective.values()
                )
            )
        return {"coreDevices": [self.get_core_device(t) for t in things]}

    def installed_components(self, thing: str) -> dict[str, Any]:
        with self._lock:
            core = self.cores.get(thing)
            if core is None:
                raise not_found_error(f"core device {thing} does not exist")
            return {
                "installedComponents": [
                    {"componentName": n, "componentVersion": v, "lifecycleState": "RUNNING", "isRoot": True}
                    for n, v in sorted(core.installed.items())
                ]
            }


def in_progress_timeout_s(request: Mapping[str, Any]) -> float | None:
    """The deployment's IoT job ``timeoutConfig.inProgressTimeoutInMinutes`` in seconds (``None``: none)."""
    minutes = ((request.get("iotJobConfiguration") or {}).get("timeoutConfig") or {}).get(
        "inProgressTimeoutInMinutes"
    )
    return float(minutes) * 60 if minutes else None


def _moto_group_members(group: str) -> list[str]:
    """The things in an IoT thing group of the local endpoint (moto's IoT backend); raises when none."""
    from moto.iot.models import iot_backends

    backend = iot_backends[ACCOUNT][REGION]
    for thing_group in backend.thing_groups.values():
        if thing_group.thing_group_name == group:
            return [arn.rsplit("/", 1)[-1] for arn in thing_group.things]
    raise not_found_error(f"thing group {group} does not exist")


def status_change_event(thing: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """The EventBridge entry Greengrass sends when a core device's deployment ends (the guide's format)."""
    detail = {
        "deploymentId": record["deploymentId"],
        "coreDeviceExecutionStatus": record["coreDeviceExecutionStatus"],
        "statusDetails": record.get("statusDetails") or {"errorStack": [], "errorTypes": []},
    }
    return {
        "Source": "aws.greengrass",
        "DetailType": "Greengrass V2 Effective Deployment Status Change",
        "Detail": json.dumps(detail),
        "Resources": [f"arn:aws:greengrass:{REGION}:{ACCOUNT}:coreDevices:{thing}"],
        "EventBusName": "default",
    }


def _moto_put_event(entry: dict[str, Any]) -> None:
    """Put the event on the local endpoint's default bus (moto's EventBridge backend), where the stack's
    rules route it as on AWS."""
    from moto.events.models import events_backends

    events_backends[ACCOUNT][REGION].put_events([entry])


PLANE = ControlPlane()


def install() -> None:
    """Answer the Greengrass v2 API on the local endpoint (the routes of ``greengrass_v2_routes``)."""
    from trashsorter_cli.local import greengrass_v2_routes

    greengrass_v2_routes.install()
