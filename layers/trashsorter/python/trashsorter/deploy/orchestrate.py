"""Deployment orchestration: push a registered model to every target of its format, record each one.

MXNet -> DeepLens (Greengrass v1); ONNX -> Greengrass v2 and the local device. Used by the completion
step (request ``initial``) and by :func:`redeploy` (rollback / manual deploy).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from trashsorter import clock, registry
from trashsorter.clients import Clients
from trashsorter.deploy import (
    TARGET_GREENGRASS_V1,
    TARGET_GREENGRASS_V2,
    TARGET_LOCAL_DEVICE,
    DeploymentResult,
    greengrass_v1,
    greengrass_v2,
    local_device,
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
def deploy_model(
    model: Mapping[str, Any],
    settings: PackageSettings,
    *,
    request_id: str,
    clients: Clients | None = None,
) -> list[DeploymentResult]:
    """Push a registered model to every configured target and record each deployment.

    MXNet -> DeepLens (Greengrass v1); ONNX -> Greengrass v2 and the local device. A target already
    recorded for ``request_id`` is not called again. Configuration errors and refusals become a
    ``failed`` result (recorded, noticed); throttling / 5xx raise TransientError (retry).
    """
    clients = clients or Clients()
    client = clients.ddb
    model_id = str(model["model_id"])
    uris = dict(model.get("packaged_artifact_uris") or {})
    table = settings.table_name
    results: list[DeploymentResult] = []
    if model.get("format") == "mxnet":
        targets = [TARGET_GREENGRASS_V1]
    elif model.get("format") == "onnx":
        targets = [TARGET_GREENGRASS_V2, TARGET_LOCAL_DEVICE]
    else:
        raise PackagingError(f"model {model_id} has no deployable artifact (format {model.get('format')!r})")

    def record_pending(target: str, fields: dict[str, Any]) -> None:
        """What a retry of this request must reuse, recorded before the target is called."""
        registry.record_deployment(
            model_id, target, request_id, {"status": "pending", **fields}, table_name=table, ddb=client
        )

    for target in targets:
        existing = registry.get_deployment(model_id, target, request_id, table_name=table, ddb=client)
        if existing and existing.get("status") in ("deployed", "skipped"):
            results.append(
                DeploymentResult(
                    target,
                    str(existing["status"]),
                    deployment_id=str(existing.get("deployment_id", "")),
                    note=str(existing.get("note", "")),
                    details=dict(existing.get("details") or {}),
                )
            )
            continue
        try:
            if target == TARGET_GREENGRASS_V1:
                pending = existing if existing and existing.get("status") == "pending" else None
                # recorded before CreateDeployment: a retry of this request deploys (or adopts) that version
                result = greengrass_v1.deploy(
                    model_id=model_id,
                    artifact_uri=uris["deeplens"],
                    settings=settings,
                    greengrass=clients.greengrass,
                    prepared=dict(pending.get("details") or {}) if pending else None,
                    on_group_version=lambda details: record_pending(
                        TARGET_GREENGRASS_V1, {"details": details}
                    ),
                )
            elif target == TARGET_GREENGRASS_V2:
                if not settings.edge_thing_group_arn:
                    result = greengrass_v2.deploy(
                        model_id=model_id, artifact_uri="", app_uri="", version="", settings=settings
                    )
                else:
                    version = str((existing or {}).get("component_version") or "")
                    if not version:
                        version = greengrass_v2.next_component_version(
                            settings.edge_component_name, table_name=table, ddb=client
                        )
                        record_pending(target, {"component_version": version})
                    result = greengrass_v2.deploy(
                        model_id=model_id,
                        artifact_uri=uris["onnx"],
                        app_uri=uris["edge_app"],
                        version=version,
                        settings=settings,
                        greengrassv2=clients.greengrassv2,
                    )
            else:
                result = local_device.deploy(
                    model_id=model_id,
                    artifact_uri=uris["onnx"],
                    deployment_id=f"{model_id}-{request_id}",
                    settings=settings,
                )
        except (ConfigurationError, DeploymentError, KeyError) as exc:
            note = str(exc) if not isinstance(exc, KeyError) else f"no packaged artifact {exc} for {target}"
            logger.warning("deployment failed", extra={"model_id": model_id, "target": target, "error": note})
            result = DeploymentResult(target, "failed", note=note)
        details: dict[str, Any] = {
            "status": result.status,
            "deployment_id": result.deployment_id,
            "note": result.note,
            "details": result.details,
        }
        if target == TARGET_GREENGRASS_V2 and result.details.get("component_version"):
            details["component_version"] = result.details["component_version"]
        registry.record_deployment(model_id, target, request_id, details, table_name=table, ddb=client)
        results.append(result)
    return results


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
