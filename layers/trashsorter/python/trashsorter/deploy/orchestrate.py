"""Deployment orchestration: push a registered model to every target of its format, record each one.

MXNet -> DeepLens (Greengrass v1); ONNX -> Greengrass v2 (on AWS, and in local mode the local endpoint's
control plane with the local core device in its thing group). Each target is a :class:`DeployTarget`;
:func:`deploy_model` is a loop over the targets of the model's format. Used by the completion step (request
``initial``) and by :func:`redeploy` (rollback / manual deploy).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from trashsorter import clock, registry
from trashsorter.clients import Clients
from trashsorter.deploy import (
    TARGET_GREENGRASS_V1,
    TARGET_GREENGRASS_V2,
    DeploymentResult,
    greengrass_v1,
    greengrass_v2,
)
from trashsorter.errors import ConfigurationError, DeploymentError, NotFoundError, PackagingError
from trashsorter.notify import notify
from trashsorter.observability import logger
from trashsorter.schema import ModelStatus
from trashsorter.settings import PackageSettings

INITIAL_REQUEST = "initial"


@dataclass
class PackageOutcome:
    """What handling one event (or one redeploy) did."""

    job_name: str
    job_status: str
    outcome: str  # deployed | registered | rejected | failed | stopped | duplicate | ignored | refused
    run_id: str = ""
    model_id: str = ""
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    deployments: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------------- deploy
RecordPending = Callable[[dict[str, Any]], None]


class DeployTarget(Protocol):
    """One place a model goes: ``deploy`` returns what it did (``skipped`` when not configured)."""

    name: str

    def deploy(
        self, model_id: str, uris: Mapping[str, str], pending: Mapping[str, Any] | None, record: RecordPending
    ) -> DeploymentResult: ...


@dataclass
class GreengrassV1Target:
    """DeepLens: a new Greengrass v1 group version (recorded before CreateDeployment: a retry of the same
    request deploys, or adopts, that version)."""

    settings: PackageSettings
    clients: Clients
    name: str = TARGET_GREENGRASS_V1

    def deploy(
        self, model_id: str, uris: Mapping[str, str], pending: Mapping[str, Any] | None, record: RecordPending
    ) -> DeploymentResult:
        return greengrass_v1.deploy(
            model_id=model_id,
            artifact_uri=uris["deeplens"],
            settings=self.settings,
            greengrass=self.clients.greengrass,
            prepared=dict(pending.get("details") or {}) if pending else None,
            on_group_version=lambda details: record({"details": details}),
        )


@dataclass
class GreengrassV2Target:
    """Greengrass v2 core devices of the configured thing group: a component version (allocated once per
    request, recorded before it is published) and a new revision of the group's deployment."""

    settings: PackageSettings
    clients: Clients
    name: str = TARGET_GREENGRASS_V2

    def deploy(
        self, model_id: str, uris: Mapping[str, str], pending: Mapping[str, Any] | None, record: RecordPending
    ) -> DeploymentResult:
        settings = self.settings
        if not settings.edge_thing_group_arn:
            return greengrass_v2.deploy(
                model_id=model_id, artifact_uri="", app_uri="", version="", app_version="", settings=settings
            )
        pending = pending or {}
        model_version = str(pending.get("model_component_version") or "")
        app_version = str(pending.get("component_version") or "")
        if not model_version or not app_version:
            model_version, app_version = component_versions(settings, self.clients, uris["edge_app"])
            record({"model_component_version": model_version, "component_version": app_version})
        return greengrass_v2.deploy(
            model_id=model_id,
            artifact_uri=uris["onnx"],
            app_uri=uris["edge_app"],
            version=model_version,
            app_version=app_version,
            settings=settings,
            greengrassv2=self.clients.greengrassv2,
        )


def component_versions(settings: PackageSettings, clients: Clients, app_uri: str) -> tuple[str, str]:
    """The next model component version and the app component version of ``app_uri``'s content."""
    name = settings.edge_component_name
    model_version = greengrass_v2.next_component_version(
        greengrass_v2.model_component_name(name), table_name=settings.table_name, ddb=clients.ddb
    )
    app_version = greengrass_v2.app_component_version(
        name, app_uri, table_name=settings.table_name, ddb=clients.ddb, s3=clients.s3
    )
    return model_version, app_version


def targets_for(model_format: Any, settings: PackageSettings, clients: Clients) -> list[DeployTarget]:
    if model_format == "mxnet":
        return [GreengrassV1Target(settings, clients)]
    if model_format == "onnx":
        return [GreengrassV2Target(settings, clients)]
    return []


def deploy_model(
    model: Mapping[str, Any],
    settings: PackageSettings,
    *,
    request_id: str,
    clients: Clients | None = None,
) -> list[DeploymentResult]:
    """Push a registered model to every target of its format and record each deployment.

    A target already recorded as deployed/skipped for ``request_id`` is not called again. Configuration
    errors and refusals become a ``failed`` result (recorded, noticed); throttling / 5xx raise
    TransientError (retry).
    """
    clients = clients or Clients()
    model_id = str(model["model_id"])
    targets = targets_for(model.get("format"), settings, clients)
    if not targets:
        raise PackagingError(f"model {model_id} has no deployable artifact (format {model.get('format')!r})")
    uris = dict(model.get("packaged_artifact_uris") or {})
    return [_deploy_to(target, model_id, uris, settings, request_id, clients) for target in targets]


def _deploy_to(
    target: DeployTarget,
    model_id: str,
    uris: Mapping[str, str],
    settings: PackageSettings,
    request_id: str,
    clients: Clients,
) -> DeploymentResult:
    """One target of :func:`deploy_model`: reuse what this request already recorded, call the target, record
    what it did."""
    table, client = settings.table_name, clients.ddb
    existing = registry.get_deployment(model_id, target.name, request_id, table_name=table, ddb=client)
    if existing and existing.get("status") in ("deployed", "skipped"):
        return DeploymentResult(
            target.name,
            str(existing["status"]),
            deployment_id=str(existing.get("deployment_id", "")),
            note=str(existing.get("note", "")),
            details=dict(existing.get("details") or {}),
        )

    def record_pending(fields: dict[str, Any]) -> None:
        """What a retry of this request must reuse, recorded before the target is called."""
        registry.record_deployment(
            model_id, target.name, request_id, {"status": "pending", **fields}, table_name=table, ddb=client
        )

    pending = existing if existing and existing.get("status") == "pending" else None
    try:
        result = target.deploy(model_id, uris, pending, record_pending)
    except (ConfigurationError, DeploymentError, KeyError) as exc:
        note = str(exc) if not isinstance(exc, KeyError) else f"no packaged artifact {exc} for {target.name}"
        logger.warning(
            "deployment failed", extra={"model_id": model_id, "target": target.name, "error": note}
        )
        result = DeploymentResult(target.name, "failed", note=note)
    details: dict[str, Any] = {
        "status": result.status,
        "deployment_id": result.deployment_id,
        "note": result.note,
        "details": result.details,
    }
    for key in ("component_version", "model_component_version"):  # lineage: both components' versions
        if result.details.get(key):
            details[key] = result.details[key]
    registry.record_deployment(model_id, target.name, request_id, details, table_name=table, ddb=client)
    return result


def summary(results: Sequence[DeploymentResult]) -> list[dict[str, Any]]:
    return [
        {"target": r.target, "status": r.status, "deployment_id": r.deployment_id, "note": r.note}
        for r in results
    ]


def deploy_notes(results: Sequence[DeploymentResult]) -> str:
    return "; ".join(f"{r.target}: {r.status}{' (' + r.note + ')' if r.note else ''}" for r in results)


# ----------------------------------------------------------------------------------------------- rollback
def redeploy(
    model_id: str,
    settings: PackageSettings,
    *,
    force: bool = False,
    clients: Clients | None = None,
) -> PackageOutcome:
    """Rollback / manual deploy: make ``model_id`` the champion and push it with the same deploy path.

    A gate-rejected model needs ``force=True``; a model whose packaging failed cannot be deployed.
    """
    clients = clients or Clients()
    client = clients.ddb
    table = settings.table_name
    model = registry.get_model(model_id, table_name=table, ddb=client)
    if model is None:
        raise NotFoundError(f"model {model_id} is not registered")
    if model.get("packaging_error") or not model.get("packaged_artifact_uris"):
        raise PackagingError(f"model {model_id} has no packaged artifact: {model.get('packaging_error', '')}")
    if model.get("status") == ModelStatus.REJECTED and not force:
        raise DeploymentError(
            f"model {model_id} was rejected by the quality gate ({model.get('gate_reason')}); "
            "use force to deploy"
        )
    model = registry.promote(model_id, table_name=table, ddb=client)
    request_id = "redeploy-" + clock.now().strftime("%Y%m%dT%H%M%S%fZ")
    results = deploy_model(model, settings, request_id=request_id, clients=clients)
    registry.update_model(model_id, {"deployments": summary(results)}, table_name=table, ddb=client)
    metrics = {k: float(v) for k, v in (model.get("metrics") or {}).items()}
    failed = [r for r in results if r.status == "failed"]
    deployed = any(r.status == "deployed" for r in results)
    outcome = "deployed" if deployed and not failed else "registered"
    notes = deploy_notes(results)
    notify(
        settings.topic_arn,
        f"Model {model_id} redeployed"
        if outcome == "deployed"
        else f"Model {model_id} champion, not deployed",
        f"Model {model_id} is the champion again: {notes}",
        details={"model_id": model_id, "metrics": metrics, "deployments": summary(results)},
        sns=clients.sns,
    )
    return PackageOutcome(
        model_id,
        "Redeploy",
        outcome,
        run_id=str(model.get("run_id", "")),
        model_id=model_id,
        reason=notes,
        metrics=metrics,
        artifacts={str(k): str(v) for k, v in (model.get("packaged_artifact_uris") or {}).items()},
        deployments=summary(results),
    )
