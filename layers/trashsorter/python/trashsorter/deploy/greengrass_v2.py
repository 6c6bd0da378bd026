"""Publish an ONNX model to living edge devices as Greengrass v2 components and deploy them.

* Two components: the model component :func:`model_component_name` (``<app>Model``: ``model.onnx.tar.gz``,
  readable by its dependents, and ``ModelId``; its ``Startup`` checks the model) with version ``1.0.<n>``
  from an atomic counter in the table (``EDGE/COMPONENT#<name>``), and the app component
  ``EDGE_COMPONENT_NAME`` (the edge app ``trashsorter_edge``, installed by ``Install`` into an isolated venv
  under ``{work:path}`` with pinned requirements, run by ``Run``, publishing only to its own topics) whose
  version follows the app archive's content (:func:`app_component_version`), so a new model does not
  reinstall the app. The app depends (HARD) on its model component and reads the model through the
  dependency's recipe variables.
* The recipes are files, ``trashsorter/data/greengrass_v2_recipe.json`` and
  ``greengrass_v2_model_recipe.json``: :func:`component_recipe` and :func:`model_component_recipe` fill in
  names, versions, ``ModelId``, defaults and the artifacts in the DeepLens bucket
  (``models/<job>/trashsorter-edge.zip``, :func:`write_app_archive`; ``models/<job>/model.onnx.tar.gz``).
* ``create_deployment`` to ``EDGE_THING_GROUP_ARN`` with both components merged into the group's deployment
  and ``failureHandlingPolicy = ROLLBACK``: a device on which the new model (or app) fails goes back to the
  previous versions.
* Idempotency tokens (``clientToken``) are derived from the component names and versions, so a retried call
  does not create a second component version or deployment.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import uuid
import zipfile
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from trashsorter import aws
from trashsorter.ddb import serialize
from trashsorter.deploy import TARGET_GREENGRASS_V2, DeploymentResult, refused
from trashsorter.errors import DeploymentError
from trashsorter.observability import logger
from trashsorter.schema import edge_component_key
from trashsorter.settings import PackageSettings

_TOKEN_NAMESPACE = uuid.UUID("6f1d4bde-5c55-4b8e-9a39-2f6f2b8c7a10")
RECIPE_FILE = "greengrass_v2_recipe.json"
MODEL_RECIPE_FILE = "greengrass_v2_model_recipe.json"
MODEL_CHECK = "greengrass_model_check.py"  # the model component's Startup program (``python3 -c``)
MODEL_PLACEHOLDER = "MODEL_COMPONENT"  # the app recipe file's name for its model component
MODEL_SUFFIX = "Model"
DEPENDENCIES = "dependencies"  # a bundle's folder of its dependencies' bundles
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
    response = aws.call(
        lambda: (ddb or aws.client("dynamodb")).update_item(
            TableName=table_name,
            Key=serialize(edge_component_key(component_name)),
            UpdateExpression="ADD seq :one",
            ExpressionAttributeValues={":one": {"N": "1"}},
            ReturnValues="UPDATED_NEW",
        ),
        what=f"allocate a component version for {component_name}",
    )
    return f"1.0.{int(response['Attributes']['seq']['N'])}"


def app_component_version(component_name: str, app_uri: str, *, table_name: str, ddb: Any, s3: Any) -> str:
    """The app component's version follows the app's content: the version last published for these bytes
    (sha-256 of ``trashsorter-edge.zip``, kept on the counter item), else a new ``1.0.<n>``. So a new model
    with the same app deploys the same app version and the core does not install the app again."""
    bucket, _, key = app_uri.removeprefix("s3://").partition("/")
    item_key = serialize(edge_component_key(component_name))

    def read() -> tuple[str, dict[str, Any]]:
        digest = hashlib.sha256(s3.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()
        return digest, ddb.get_item(TableName=table_name, Key=item_key, ConsistentRead=True).get("Item") or {}

    what = f"read the app component {app_uri}"
    digest, item = aws.call(read, what=what, refused=refused(f"could not {what}"))
    if item.get("app_sha256", {}).get("S") == digest and item.get("app_version", {}).get("S"):
        return str(item["app_version"]["S"])
    version = next_component_version(component_name, table_name=table_name, ddb=ddb)
    aws.call(
        lambda: ddb.update_item(
            TableName=table_name,
            Key=item_key,
            UpdateExpression="SET app_sha256 = :sha, app_version = :version",
            ExpressionAttributeValues={":sha": {"S": digest}, ":version": {"S": version}},
        ),
        what=f"record the app component version {version}",
    )
    return version


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Greengrass's configuration ``MERGE``: nested objects merge key by key, everything else replaces."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def model_component_name(app_component_name: str) -> str:
    """The model component of an app component (``<app>Model``): the one place the name is derived."""
    return f"{app_component_name}{MODEL_SUFFIX}"


def recipe_template(file: str = RECIPE_FILE) -> dict[str, Any]:
    """A component recipe as kept in the repo (``trashsorter/data/<file>``)."""
    text = resources.files("trashsorter").joinpath("data", file).read_text(encoding="utf-8")
    recipe: dict[str, Any] = json.loads(text)
    return recipe


def _named_artifact(uri: str, name: str) -> str:
    if uri.rsplit("/", 1)[-1] != name:  # a nucleus names a downloaded artifact after its URI
        raise DeploymentError(f"the component artifact must be named {name}, got {uri!r}")
    return uri


def component_recipe(
    *,
    component_name: str,
    version: str,
    app_uri: str,
    defaults: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The app component: the recipe file with the package step's values filled in: name, version, the edge
    app zip (unarchived), any ``defaults`` over the configuration, and its model component
    (:func:`model_component_name`) as a HARD dependency whose artifacts and ``ModelId`` the lifecycle reads
    (``{<model>:artifacts:path}``, ``{<model>:configuration:/ModelId}``)."""
    _named_artifact(app_uri, APP_ARCHIVE)
    model = model_component_name(component_name)
    text = json.dumps(recipe_template()).replace(MODEL_PLACEHOLDER, model)
    recipe: dict[str, Any] = json.loads(text)
    recipe["ComponentName"] = component_name
    recipe["ComponentVersion"] = version
    configuration = merge(recipe["ComponentConfiguration"]["DefaultConfiguration"], dict(defaults or {}))
    configuration["accessControl"] = unique_policy_ids(configuration.get("accessControl", {}), component_name)
    recipe["ComponentConfiguration"]["DefaultConfiguration"] = configuration
    for manifest in recipe["Manifests"]:
        for artifact in manifest["Artifacts"]:
            artifact["URI"] = app_uri
    return recipe


def model_check_script() -> str:
    """The model component's Startup: :data:`MODEL_CHECK` (comments dropped) as ``python3 -c '...'``."""
    program = resources.files("trashsorter").joinpath("data", MODEL_CHECK).read_text(encoding="utf-8")
    lines = [line for line in program.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    body = "\n".join(lines)
    if any(c in body for c in "{}'"):  # a nucleus would read braces as recipe variables
        raise DeploymentError(f"{MODEL_CHECK} must hold no braces or single quotes")
    return f"python3 -c '{body}' {{artifacts:path}}/{MODEL_ARCHIVE}"


def model_component_recipe(
    *, app_component_name: str, version: str, model_id: str, artifact_uri: str
) -> dict[str, Any]:
    """The model component (``model.onnx.tar.gz``, readable by the app that depends on it; ``ModelId``): its
    ``Startup`` checks the model, so a model that cannot be used fails the deployment (ROLLBACK)."""
    _named_artifact(artifact_uri, MODEL_ARCHIVE)
    checked_identifier(model_id, "model id")
    recipe = recipe_template(MODEL_RECIPE_FILE)
    recipe["ComponentName"] = model_component_name(app_component_name)
    recipe["ComponentVersion"] = version
    recipe["ComponentDescription"] = f"{recipe['ComponentDescription']} (model {model_id})"
    recipe["ComponentConfiguration"]["DefaultConfiguration"]["ModelId"] = model_id
    for manifest in recipe["Manifests"]:
        manifest["Lifecycle"]["Startup"]["Script"] = model_check_script()
        for artifact in manifest["Artifacts"]:
            artifact["URI"] = artifact_uri
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
    """The components exactly as the package step publishes them, on disk: the app's ``recipe.json`` and
    ``artifacts/<file>`` (the same :func:`component_recipe` and S3 objects), and its model component in
    ``dependencies/<model component>/`` (:func:`model_component_recipe`), the layout of a Greengrass local
    deployment's recipe and artifact directories. Returns ``out_dir/recipe.json``."""
    model = model_component_recipe(
        app_component_name=component_name, version=version, model_id=model_id, artifact_uri=artifact_uri
    )
    write_recipe_bundle(out_dir / DEPENDENCIES / model["ComponentName"], model, s3=s3)
    recipe = component_recipe(
        component_name=component_name, version=version, app_uri=app_uri, defaults=defaults
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
        aws.call(
            lambda bucket=bucket, key=key, name=name: client.download_file(
                bucket, key, str(artifacts / name)
            ),
            what=f"download the component artifact {uri}",
            refused=refused(f"cannot download the component artifact {uri}"),
        )
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


def configuration_update(model_id: str, settings: PackageSettings) -> dict[str, dict[str, Any]]:
    """What each deployment merges into the two components' configuration on the device, by component name:
    a core keeps the configuration it has when a component is updated (new defaults apply only to keys it
    does not have), so the model id (model component) and inbox bucket (app) are merged explicitly."""
    app = settings.edge_component_name
    return {
        app: {"merge": json.dumps(component_defaults(settings), sort_keys=True)},
        model_component_name(app): {"merge": json.dumps({"ModelId": model_id}, sort_keys=True)},
    }


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


def _publish(gg: Any, recipe: dict[str, Any]) -> str:
    """``CreateComponentVersion`` (idempotent); a version that exists already is this same recipe published
    before (the app: same content, same version; the model: an earlier attempt of this request)."""
    name, version = recipe["ComponentName"], recipe["ComponentVersion"]
    what = f"publish {name} {version}"
    component = aws.call(
        lambda: gg.create_component_version(
            inlineRecipe=recipe_bytes(recipe), clientToken=_token("component", name, version)
        ),
        what=what,
        codes={"ConflictException": lambda _: {}},  # published before: no ARN to report
        refused=refused(f"Greengrass v2: could not {what}"),
    )
    return str(component.get("arn", ""))


def deploy(
    *,
    model_id: str,
    artifact_uri: str,
    app_uri: str,
    version: str,
    app_version: str,
    settings: PackageSettings,
    greengrassv2: Any = None,
) -> DeploymentResult:
    """Publish the model component ``version`` and the app component ``app_version`` and deploy both to the
    thing group (a new revision of its deployment, ROLLBACK on failure).

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
    model = model_component_name(name)
    model_arn = _publish(
        gg,
        model_component_recipe(
            app_component_name=name, version=version, model_id=model_id, artifact_uri=artifact_uri
        ),
    )
    app_recipe = component_recipe(
        component_name=name, version=app_version, app_uri=app_uri, defaults=component_defaults(settings)
    )
    app_arn = _publish(gg, app_recipe)
    updates = configuration_update(model_id, settings)
    ours = {
        name: {"componentVersion": app_version, "configurationUpdate": updates[name]},
        model: {"componentVersion": version, "configurationUpdate": updates[model]},
    }
    target = settings.edge_thing_group_arn

    def create() -> dict[str, Any]:
        request = deployment_request(
            current_deployment(gg, target), ours, target_arn=target, name=f"trashsorter {model_id}"
        )
        created: dict[str, Any] = gg.create_deployment(
            **request, clientToken=_token("deployment", name, app_version, model, version, target)
        )
        return created

    what = f"deploy {model} {version} with {name} {app_version}"
    deployment = aws.call(create, what=what, refused=refused(f"Greengrass v2: could not {what}"))
    logger.info(
        "Greengrass v2 deployment requested",
        extra={
            "component": name,
            "version": app_version,
            "model_version": version,
            "deployment_id": deployment.get("deploymentId"),
        },
    )
    return DeploymentResult(
        TARGET_GREENGRASS_V2,
        "deployed",
        deployment_id=str(deployment.get("deploymentId", "")),
        details={
            "component_name": name,
            "component_version": app_version,
            "component_arn": app_arn,
            "model_component_name": model,
            "model_component_version": version,
            "model_component_arn": model_arn,
            "target_arn": target,
            "artifact_uri": artifact_uri,
        },
    )
