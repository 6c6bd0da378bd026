"""Publish an ONNX model to living edge devices as a Greengrass v2 component and deploy it.

* Component ``EDGE_COMPONENT_NAME``, version ``1.0.<n>`` with ``n`` from an atomic counter in the table
  (``EDGE/COMPONENT#<name>``), so versions only grow, whatever order models finish in.
* The recipe is a file, ``trashsorter/data/greengrass_v2_recipe.json``: the edge app (``trashsorter_edge``)
  installed by ``Install`` into an isolated venv under ``{work:path}`` with pinned requirements (no
  system-wide pip, no root), run by ``Run``, publishing only to its own topics (IPC access control).
  :func:`component_recipe` fills in the name, version, ``ModelId``, defaults and the two artifacts in the
  DeepLens bucket: ``models/<job>/trashsorter-edge.zip`` (``Unarchive: ZIP``, :func:`write_app_archive`)
  and ``models/<job>/model.onnx.tar.gz`` (model.onnx, labels.txt, metrics.json; extracted by ``Install``).
* ``create_deployment`` to ``EDGE_THING_GROUP_ARN`` with ``failureHandlingPolicy = ROLLBACK``: a device
  on which the new version fails to start goes back to the previous one.
* Idempotency tokens (``clientToken``) are derived from the model id and version, so a retried call does
  not create a second component version or deployment.
"""

from __future__ import annotations

import importlib.util
import json
import re
import uuid
import zipfile
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from trashsorter import aws
from trashsorter.ddb import serialize
from trashsorter.deploy import TARGET_GREENGRASS_V2, DeploymentResult, aws_failure
from trashsorter.errors import DeploymentError, TransientError
from trashsorter.observability import logger
from trashsorter.schema import edge_component_key
from trashsorter.settings import PackageSettings

_TOKEN_NAMESPACE = uuid.UUID("6f1d4bde-5c55-4b8e-9a39-2f6f2b8c7a10")
RECIPE_FILE = "greengrass_v2_recipe.json"
LAUNCHER = "greengrass_launch.py"  # the lifecycle steps, ``launch.py`` in the app archive
APP_ARCHIVE = "trashsorter-edge.zip"
MODEL_ARCHIVE = "model.onnx.tar.gz"
# What may enter the component as a model id (it reaches the app's arguments and names folders on a core).
IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
POLICY_ID_PREFIX = "trashsorter.edge:"  # the recipe file's policy ids; renamed per component
_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same sources give the same zip bytes


def checked_identifier(value: Any, what: str) -> str:
    """``value`` if it is a plain identifier (letters, digits and ``._:-``), else DeploymentError."""
    if not isinstance(value, str) or not IDENTIFIER.match(value):
        raise DeploymentError(f"{what} {str(value)[:80]!r} is not an identifier ({IDENTIFIER.pattern})")
    return value


def next_component_version(component_name: str, *, table_name: str, ddb: Any = None) -> str:
    """Allocate the next ``1.0.<n>`` (atomic ADD on the counter item)."""
    try:
        response = (ddb or aws.client("dynamodb")).update_item(
            TableName=table_name,
            Key=serialize(edge_component_key(component_name)),
            UpdateExpression="ADD seq :one",
            ExpressionAttributeValues={":one": {"N": "1"}},
            ReturnValues="UPDATED_NEW",
        )
    except (ClientError, BotoCoreError) as exc:
        raise TransientError(f"could not allocate a component version for {component_name}: {exc}") from exc
    return f"1.0.{int(response['Attributes']['seq']['N'])}"


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Greengrass's configuration ``MERGE``: nested objects merge key by key, everything else replaces."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def recipe_template() -> dict[str, Any]:
    """The component recipe as kept in the repo (``trashsorter/data/greengrass_v2_recipe.json``)."""
    text = resources.files("trashsorter").joinpath("data", RECIPE_FILE).read_text(encoding="utf-8")
    recipe: dict[str, Any] = json.loads(text)
    return recipe


def component_recipe(
    *,
    component_name: str,
    version: str,
    model_id: str,
    artifact_uri: str,
    app_uri: str,
    defaults: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The recipe file with the package step's values filled in: name, version, the two artifacts (the
    edge app zip, unarchived; the model tarball), ``ModelId`` and any ``defaults`` over the configuration."""
    for uri, name in ((artifact_uri, MODEL_ARCHIVE), (app_uri, APP_ARCHIVE)):
        if uri.rsplit("/", 1)[-1] != name:  # a nucleus names a downloaded artifact after its URI
            raise DeploymentError(f"the component artifact must be named {name}, got {uri!r}")
    checked_identifier(model_id, "model id")
    recipe = recipe_template()
    recipe["ComponentName"] = component_name
    recipe["ComponentVersion"] = version
    recipe["ComponentDescription"] = f"{recipe['ComponentDescription']} (model {model_id})"
    configuration = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    recipe["ComponentConfiguration"]["DefaultConfiguration"] = merge(
        configuration, {"ModelId": model_id, **dict(defaults or {})}
    )
    configuration = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    configuration["accessControl"] = unique_policy_ids(configuration.get("accessControl", {}), component_name)
    uris = {APP_ARCHIVE: app_uri, MODEL_ARCHIVE: artifact_uri}
    for manifest in recipe["Manifests"]:
        for artifact in manifest["Artifacts"]:
            name = artifact["URI"].rsplit("/", 1)[-1]
            artifact["URI"] = uris[name]
    return recipe


def unique_policy_ids(access_control: Mapping[str, Any], component_name: str) -> dict[str, Any]:
    """IPC authorization policy ids must be unique on a core (Greengrass v2 Developer Guide, "Authorize
    components to perform IPC operations"): every id of the recipe file (``trashsorter.edge:<what>``) becomes
    ``<component name>:<what>``, so two stacks' components on one core never share one."""
    renamed: dict[str, Any] = {}
    for service, policies in access_control.items():
        renamed[service] = {
            (f"{component_name}:{pid.split(':', 1)[1]}" if pid.startswith(POLICY_ID_PREFIX) else pid): policy
            for pid, policy in policies.items()
        }
    return renamed


def component_defaults(settings: PackageSettings) -> dict[str, Any]:
    """What the package step sets in the configuration: unsure frames go to this stack's images bucket."""
    return {"Inbox": {"Bucket": settings.images_bucket}}


def write_app_archive(destination: Path) -> Path | None:
    """``trashsorter-edge.zip``: the ``trashsorter_edge`` package (sources, pinned requirements, install
    script) as installed here (on AWS from the ``EdgeAppLayer``); ``None`` when this environment does not have
    it: the Greengrass v2 deployment then fails with "no packaged artifact 'edge_app'")."""
    spec = importlib.util.find_spec("trashsorter_edge")
    if spec is None or not spec.submodule_search_locations:
        logger.warning("trashsorter_edge is not installed here: no Greengrass v2 app artifact")
        return None
    package = Path(next(iter(spec.submodule_search_locations)))
    with zipfile.ZipFile(destination, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(package.rglob("*")):
            if (
                path.is_file()
                and "__pycache__" not in path.parts
                and path.suffix in (".py", ".txt", ".typed")
            ):
                info = zipfile.ZipInfo(f"trashsorter_edge/{path.relative_to(package).as_posix()}", _EPOCH)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                archive.writestr(info, path.read_bytes())
        launcher = resources.files("trashsorter").joinpath("data", LAUNCHER).read_bytes()
        info = zipfile.ZipInfo("launch.py", _EPOCH)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        archive.writestr(info, launcher)
    return destination


def write_bundle(
    out_dir: Path,
    *,
    component_name: str,
    version: str,
    model_id: str,
    artifact_uri: str,
    app_uri: str,
    defaults: Mapping[str, Any] | None = None,
    s3: Any = None,
) -> Path:
    """The component exactly as the package step publishes it, on disk: ``recipe.json`` (the same
    :func:`component_recipe`) and ``artifacts/<file>`` (the same S3 objects the recipe names), the layout
    of a Greengrass local deployment's recipe and artifact directories. Returns ``out_dir/recipe.json``."""
    recipe = component_recipe(
        component_name=component_name,
        version=version,
        model_id=model_id,
        artifact_uri=artifact_uri,
        app_uri=app_uri,
        defaults=defaults,
    )
    return write_recipe_bundle(out_dir, recipe, s3=s3)


def write_recipe_bundle(out_dir: Path, recipe: Mapping[str, Any], *, s3: Any = None) -> Path:
    """A published recipe on disk as a core keeps it: ``recipe.json`` and ``artifacts/<file>`` (each
    ``s3://`` artifact of its first manifest, named after its URI). Returns ``out_dir/recipe.json``."""
    client = s3 or aws.client("s3")
    artifacts = out_dir / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    for artifact in (recipe.get("Manifests") or [{}])[0].get("Artifacts", []):
        uri = str(artifact.get("URI", ""))
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        name = key.rsplit("/", 1)[-1]
        if not uri.startswith("s3://") or not name or name in (".", ".."):
            raise DeploymentError(f"the component artifact {uri!r} is not an s3://bucket/key URI")
        try:
            client.download_file(bucket, key, str(artifacts / name))
        except (ClientError, BotoCoreError) as exc:
            raise aws_failure(f"cannot download the component artifact {uri}", exc) from exc
    path = out_dir / "recipe.json"
    path.write_text(json.dumps(recipe, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


# Deployment policies (Greengrass v2 Developer Guide, "Create deployments"): a device on which the new
# component fails goes back to the previous deployment's components; running components are told before they
# are updated (and may defer it up to the timeout); configuration is validated for at most a minute.
DEPLOYMENT_POLICIES: dict[str, Any] = {
    "failureHandlingPolicy": "ROLLBACK",
    "componentUpdatePolicy": {"timeoutInSeconds": 60, "action": "NOTIFY_COMPONENTS"},
    "configurationValidationPolicy": {"timeoutInSeconds": 60},
}
# The AWS IoT job behind the deployment: a device that has not finished within this many minutes is
# TIMED_OUT (the user's own job settings of the target's deployment are kept; only a missing timeout is set).
JOB_TIMEOUT_MINUTES = 30
_SPEC_KEYS = ("componentVersion", "configurationUpdate", "runWith")


def configuration_update(model_id: str, settings: PackageSettings) -> dict[str, Any]:
    """What each deployment merges into the component's configuration on the device: a core keeps the
    configuration it has when a component is updated (new defaults apply only to keys it does not have), so
    the model id and inbox bucket are merged explicitly by every deployment."""
    return {"merge": json.dumps({"ModelId": model_id, **component_defaults(settings)}, sort_keys=True)}


def current_deployment(gg: Any, target_arn: str) -> dict[str, Any] | None:
    """The target's current deployment (``GetDeployment`` of its latest revision), ``None`` if it has none."""
    listed = gg.list_deployments(targetArn=target_arn, historyFilter="LATEST_ONLY").get("deployments", [])
    latest = [d for d in listed if d.get("isLatestForTarget", True) and d.get("targetArn") == target_arn]
    if not latest:
        return None
    current: dict[str, Any] = gg.get_deployment(deploymentId=latest[0]["deploymentId"])
    return current


def deployment_request(
    current: Mapping[str, Any] | None,
    ours: Mapping[str, Mapping[str, Any]],
    *,
    target_arn: str,
    name: str,
) -> dict[str, Any]:
    """A new revision of the target's deployment: a target has ONE deployment and a new one replaces it, so
    every component of the current one stays with its version, configuration update and user; only ours are
    replaced. The user's IoT job settings stay; ours are the deployment policies and a job timeout."""
    components: dict[str, Any] = {}
    for component, spec in dict((current or {}).get("components") or {}).items():
        if component not in ours:
            components[component] = {k: spec[k] for k in _SPEC_KEYS if k in spec}
    for component, spec in ours.items():
        previous = dict((current or {}).get("components", {}).get(component) or {})
        kept = dict(spec)
        if "configurationUpdate" in previous and "configurationUpdate" in spec:  # the user's settings stay
            mine = json.loads(spec["configurationUpdate"].get("merge") or "{}")
            theirs = json.loads(previous["configurationUpdate"].get("merge") or "{}")
            kept["configurationUpdate"] = {"merge": json.dumps(merge(theirs, mine), sort_keys=True)}
        if "runWith" in previous:
            kept["runWith"] = previous["runWith"]
        components[component] = kept
    job = dict((current or {}).get("iotJobConfiguration") or {})
    job.setdefault("timeoutConfig", {"inProgressTimeoutInMinutes": JOB_TIMEOUT_MINUTES})
    return {
        "targetArn": target_arn,
        "deploymentName": name[:256],
        "components": components,
        "deploymentPolicies": DEPLOYMENT_POLICIES,
        "iotJobConfiguration": job,
    }


def recipe_bytes(recipe: dict[str, Any]) -> bytes:
    return json.dumps(recipe, sort_keys=True, separators=(",", ":")).encode()


def _token(*parts: str) -> str:
    return str(uuid.uuid5(_TOKEN_NAMESPACE, "/".join(parts)))


def deploy(
    *,
    model_id: str,
    artifact_uri: str,
    app_uri: str,
    version: str,
    settings: PackageSettings,
    greengrassv2: Any = None,
) -> DeploymentResult:
    """Publish component ``version`` and deploy it to the thing group (ROLLBACK on failure).

    Not configured (no ``EDGE_THING_GROUP_ARN``) -> ``skipped`` with a note.
    """
    if not settings.edge_thing_group_arn:
        return DeploymentResult(
            TARGET_GREENGRASS_V2,
            "skipped",
            note="no Greengrass v2 thing group configured (EdgeThingGroupArn)",
        )
    gg = greengrassv2 or aws.client("greengrassv2")
    name = settings.edge_component_name
    recipe = component_recipe(
        component_name=name,
        version=version,
        model_id=model_id,
        artifact_uri=artifact_uri,
        app_uri=app_uri,
        defaults=component_defaults(settings),
    )
    try:
        component = gg.create_component_version(
            inlineRecipe=recipe_bytes(recipe), clientToken=_token("component", name, version)
        )
        component_arn = str(component.get("arn", ""))
    except ClientError as exc:
        if aws.error_code(exc) != "ConflictException":
            raise aws_failure(f"Greengrass v2: could not publish {name} {version}", exc) from exc
        component_arn = ""  # published by an earlier attempt of this same request
    except BotoCoreError as exc:
        raise aws_failure(f"Greengrass v2: could not publish {name} {version}", exc) from exc
    ours = {
        name: {"componentVersion": version, "configurationUpdate": configuration_update(model_id, settings)}
    }
    try:
        current = current_deployment(gg, settings.edge_thing_group_arn)
        request = deployment_request(
            current, ours, target_arn=settings.edge_thing_group_arn, name=f"trashsorter {model_id}"
        )
        deployment = gg.create_deployment(
            **request, clientToken=_token("deployment", name, version, settings.edge_thing_group_arn)
        )
    except (ClientError, BotoCoreError) as exc:
        raise aws_failure(f"Greengrass v2: could not deploy {name} {version}", exc) from exc
    logger.info(
        "Greengrass v2 deployment requested",
        extra={"component": name, "version": version, "deployment_id": deployment.get("deploymentId")},
    )
    return DeploymentResult(
        TARGET_GREENGRASS_V2,
        "deployed",
        deployment_id=str(deployment.get("deploymentId", "")),
        details={
            "component_name": name,
            "component_version": version,
            "component_arn": component_arn,
            "target_arn": settings.edge_thing_group_arn,
            "artifact_uri": artifact_uri,
        },
    )
