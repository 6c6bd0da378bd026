"""Push a packaged MXNet model to an AWS DeepLens camera.

boto3 has no DeepLens client. A DeepLens camera is an AWS IoT Greengrass v1 core and a DeepLens project
deployment is a Greengrass group deployment, so this module does what the console does:

1. read the group's latest version (``get_group`` -> ``get_group_version``);
2. a new resource definition version (or a new definition when the group has none) holding every existing
   resource plus ``trashsorter-model``: an ``S3MachineLearningModelResourceData`` resource that Greengrass
   downloads from the DeepLens bucket and unpacks to ``DestinationPath`` on the camera;
3. a new function definition version: the group's other functions unchanged, plus the inference function
   (``DeepLensInferenceFunctionArn``) pinned (long-lived), with ``AccessSysfs``, ``MODEL_PATH`` and read-only
   access to the model resource;
4. a new group version keeping the core, device, subscription, logger and connector definitions;
5. ``create_deployment(DeploymentType="NewDeployment")``.

Exactly once across retries: the caller records the group version of step 4 (``on_group_version``) before
step 5. A retry passes that record back (``prepared``): if a deployment of that group version exists (the
first attempt's ``CreateDeployment`` succeeded but its answer was lost, or the function died before
recording it), it is adopted; otherwise only step 5 runs. No second group version, no second deployment.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from trashsorter import aws
from trashsorter.deploy import TARGET_GREENGRASS_V1, DeploymentResult, refused
from trashsorter.errors import ConfigurationError
from trashsorter.observability import logger
from trashsorter.settings import PackageSettings

MODEL_RESOURCE_ID = "trashsorter-model"
FUNCTION_ID = "trashsorter-inference"
MODEL_DESTINATION = "/trashsorter_model"
FUNCTION_MEMORY_KB = 1536 * 1024
FUNCTION_TIMEOUT_S = 300

_KEPT_DEFINITIONS = (
    "CoreDefinitionVersionArn",
    "DeviceDefinitionVersionArn",
    "SubscriptionDefinitionVersionArn",
    "LoggerDefinitionVersionArn",
    "ConnectorDefinitionVersionArn",
)


def _ids(version_arn: str) -> tuple[str, str]:
    """(definition id, version id) of a ``.../definition/<kind>/<id>/versions/<version>`` ARN."""
    parts = version_arn.rstrip("/").split("/")
    if len(parts) < 4 or parts[-2] != "versions":
        raise ConfigurationError(f"unexpected Greengrass definition version ARN {version_arn!r}")
    return parts[-3], parts[-1]


def _unqualified(function_arn: str) -> str:
    parts = function_arn.split(":")
    return ":".join(parts[:7]) if len(parts) > 7 else function_arn


def model_resource(artifact_uri: str) -> dict[str, Any]:
    return {
        "Id": MODEL_RESOURCE_ID,
        "Name": MODEL_RESOURCE_ID,
        "ResourceDataContainer": {
            "S3MachineLearningModelResourceData": {
                "S3Uri": artifact_uri,
                "DestinationPath": MODEL_DESTINATION,
            }
        },
    }


def inference_function(function_arn: str, model_id: str, previous: dict[str, Any] | None) -> dict[str, Any]:
    """The inference function entry; keeps access policies the previous entry had to other resources."""
    kept_policies = [
        policy
        for policy in ((previous or {}).get("FunctionConfiguration", {}).get("Environment", {}) or {}).get(
            "ResourceAccessPolicies", []
        )
        if policy.get("ResourceId") != MODEL_RESOURCE_ID
    ]
    return {
        "Id": (previous or {}).get("Id", FUNCTION_ID),
        "FunctionArn": function_arn,
        "FunctionConfiguration": {
            "Pinned": True,
            "MemorySize": FUNCTION_MEMORY_KB,
            "Timeout": FUNCTION_TIMEOUT_S,
            "EncodingType": "json",
            "Environment": {
                "AccessSysfs": True,
                "Variables": {"MODEL_PATH": MODEL_DESTINATION, "MODEL_ID": model_id},
                "ResourceAccessPolicies": [
                    *kept_policies,
                    {"ResourceId": MODEL_RESOURCE_ID, "Permission": "ro"},
                ],
            },
        },
    }


def _deployment_of(gg: Any, group_id: str, group_version_id: str) -> dict[str, Any] | None:
    """The group's deployment of ``group_version_id`` (its ``GroupArn`` ends with ``/versions/<id>``)."""
    kwargs: dict[str, Any] = {"GroupId": group_id}
    while True:
        page = gg.list_deployments(**kwargs)
        for deployment in page.get("Deployments", []):
            if str(deployment.get("GroupArn", "")).endswith(f"/versions/{group_version_id}"):
                return dict(deployment)
        if not page.get("NextToken"):
            return None
        kwargs["NextToken"] = page["NextToken"]


def _deployed(
    group_id: str, model_id: str, deployment: Mapping[str, Any], details: Mapping[str, Any], note: str = ""
) -> DeploymentResult:
    logger.info(
        "DeepLens deployment requested",
        extra={"group_id": group_id, "deployment_id": deployment["DeploymentId"], "model_id": model_id},
    )
    return DeploymentResult(
        TARGET_GREENGRASS_V1,
        "deployed",
        deployment_id=str(deployment["DeploymentId"]),
        note=note,
        details={**details, "deployment_arn": deployment.get("DeploymentArn", "")},
    )


def deploy(
    *,
    model_id: str,
    artifact_uri: str,
    settings: PackageSettings,
    greengrass: Any = None,
    prepared: Mapping[str, Any] | None = None,
    on_group_version: Callable[[dict[str, Any]], None] | None = None,
) -> DeploymentResult:
    """Deploy ``artifact_uri`` (``s3://deeplens-.../models/<job>/model.tar.gz``) to the DeepLens group.

    Not configured (no ``DEEPLENS_GROUP_ID``) -> ``skipped``. A group without an inference function ARN
    -> :class:`ConfigurationError` naming ``DeepLensInferenceFunctionArn``. Greengrass refusing ->
    :class:`DeploymentError`; throttling / 5xx -> :class:`TransientError`.

    ``on_group_version(details)`` is called with the new group version (``group_version_id`` and the
    definition version ARNs) before the deployment is requested; ``prepared`` = those details from an
    earlier attempt of the same request: that group version is deployed (or its deployment adopted).
    """
    group_id = settings.deeplens_group_id
    if not group_id:
        return DeploymentResult(TARGET_GREENGRASS_V1, "skipped", note="no DeepLens device configured")
    if not settings.deeplens_function_arn:
        raise ConfigurationError(
            "DeepLensGroupId is set but DeepLensInferenceFunctionArn (DEEPLENS_FUNCTION_ARN) is empty: "
            "deploy edge/deeplens as a Lambda version and set its ARN"
        )
    gg = greengrass or aws.client("greengrass")
    if (
        prepared
        and prepared.get("group_id") == group_id
        and prepared.get("artifact_uri") == artifact_uri
        and prepared.get("group_version_id")
    ):
        return _deploy_prepared(gg, group_id, model_id, prepared)
    details = _new_group_version(gg, group_id, model_id, artifact_uri, settings.deeplens_function_arn)
    if on_group_version is not None:
        on_group_version(details)
    deployment = _step(
        group_id,
        "create the group deployment",
        lambda: gg.create_deployment(
            GroupId=group_id, GroupVersionId=details["group_version_id"], DeploymentType="NewDeployment"
        ),
    )
    return _deployed(group_id, model_id, deployment, details)


def _step(group_id: str, step: str, call: Callable[[], Any]) -> Any:
    """One Greengrass call of the deployment; an AWS error says which step failed."""
    return aws.call(
        call,
        what=f"{step} of DeepLens group {group_id}",
        refused=refused(f"DeepLens group {group_id}: could not {step}"),
    )


def _deploy_prepared(gg: Any, group_id: str, model_id: str, prepared: Mapping[str, Any]) -> DeploymentResult:
    """A retry of a request whose group version is recorded: adopt its deployment, or deploy it."""
    version_id = str(prepared["group_version_id"])
    found = _step(
        group_id,
        "look for the deployment of the recorded group version",
        lambda: _deployment_of(gg, group_id, version_id),
    )
    if found is not None:
        note = "adopted the deployment an earlier attempt created"
        return _deployed(group_id, model_id, found, prepared, note=note)
    deployment = _step(
        group_id,
        "create the group deployment",
        lambda: gg.create_deployment(
            GroupId=group_id, GroupVersionId=version_id, DeploymentType="NewDeployment"
        ),
    )
    return _deployed(group_id, model_id, deployment, prepared)


def _new_group_version(
    gg: Any, group_id: str, model_id: str, artifact_uri: str, function_arn: str
) -> dict[str, Any]:
    """A new group version: the latest one's definitions plus the model resource and inference function."""

    def latest_definition() -> dict[str, Any]:
        latest = gg.get_group(GroupId=group_id).get("LatestVersion")
        if not latest:
            return {}
        found: dict[str, Any] = gg.get_group_version(GroupId=group_id, GroupVersionId=latest).get(
            "Definition", {}
        )
        return found

    definition = _step(group_id, "read the DeepLens group", latest_definition)
    resource_version_arn = _step(
        group_id,
        "create the model resource definition",
        lambda: _resource_definition_version(gg, group_id, definition, artifact_uri),
    )
    function_version_arn = _step(
        group_id,
        "create the inference function definition",
        lambda: _function_definition_version(gg, group_id, definition, function_arn, model_id),
    )
    group_version_args = {key: definition[key] for key in _KEPT_DEFINITIONS if definition.get(key)}
    group_version = _step(
        group_id,
        "create the group version",
        lambda: gg.create_group_version(
            GroupId=group_id,
            FunctionDefinitionVersionArn=function_version_arn,
            ResourceDefinitionVersionArn=resource_version_arn,
            **group_version_args,
        ),
    )
    return {
        "group_id": group_id,
        "group_version_id": group_version["Version"],
        "resource_definition_version_arn": resource_version_arn,
        "function_definition_version_arn": function_version_arn,
        "artifact_uri": artifact_uri,
    }


def _resource_definition_version(
    gg: Any, group_id: str, definition: Mapping[str, Any], artifact_uri: str
) -> str:
    """A new resource definition version: the group's resources with ``trashsorter-model`` replaced."""
    resource = model_resource(artifact_uri)
    if not definition.get("ResourceDefinitionVersionArn"):
        created = gg.create_resource_definition(
            Name=f"trashsorter-{group_id}"[:128], InitialVersion={"Resources": [resource]}
        )
        return str(created["LatestVersionArn"])
    res_id, res_version = _ids(definition["ResourceDefinitionVersionArn"])
    existing = gg.get_resource_definition_version(
        ResourceDefinitionId=res_id, ResourceDefinitionVersionId=res_version
    )
    resources = [
        r for r in existing.get("Definition", {}).get("Resources", []) if r.get("Id") != MODEL_RESOURCE_ID
    ]
    created = gg.create_resource_definition_version(
        ResourceDefinitionId=res_id, Resources=[*resources, resource]
    )
    return str(created["Arn"])


def _function_definition_version(
    gg: Any, group_id: str, definition: Mapping[str, Any], function_arn: str, model_id: str
) -> str:
    """A new function definition version: the group's other functions unchanged, plus the inference
    function (its earlier settings, such as resource access policies, carried over)."""
    wanted = _unqualified(function_arn)
    functions: list[dict[str, Any]] = []
    previous: dict[str, Any] | None = None
    default_config: dict[str, Any] | None = None
    if not definition.get("FunctionDefinitionVersionArn"):
        functions.append(inference_function(function_arn, model_id, previous))
        return str(
            gg.create_function_definition(
                Name=f"trashsorter-{group_id}"[:128], InitialVersion={"Functions": functions}
            )["LatestVersionArn"]
        )
    function_def_id, fn_version = _ids(definition["FunctionDefinitionVersionArn"])
    existing_fn = gg.get_function_definition_version(
        FunctionDefinitionId=function_def_id, FunctionDefinitionVersionId=fn_version
    ).get("Definition", {})
    default_config = existing_fn.get("DefaultConfig") or None
    for fn in existing_fn.get("Functions", []):
        if fn.get("Id") == FUNCTION_ID or _unqualified(str(fn.get("FunctionArn", ""))) == wanted:
            previous = fn
        else:
            functions.append(fn)
    functions.append(inference_function(function_arn, model_id, previous))
    kwargs: dict[str, Any] = {"FunctionDefinitionId": function_def_id, "Functions": functions}
    if default_config:
        kwargs["DefaultConfig"] = default_config
    return str(gg.create_function_definition_version(**kwargs)["Arn"])
