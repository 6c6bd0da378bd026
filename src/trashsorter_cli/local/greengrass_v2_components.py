"""The component half of the local Greengrass v2 control plane: the recipe checks and the component store
(docs/deploy.md, "The local Greengrass v2 control plane", names the guide page of each rule).

* ``CreateComponentVersion`` (inline recipe, JSON or YAML): the recipe must name ``RecipeFormatVersion``,
  ``ComponentName`` and ``ComponentVersion`` (semantic version); a component version is immutable (a second
  one with the same name and version is a ``ConflictException``); a retried request with the same
  ``clientToken`` answers the first result. Its state is ``DEPLOYABLE`` when every ``s3://`` artifact exists
  in the local S3, else ``FAILED`` with the reason (the service checks that it can read each artifact).
* ``GetComponent`` (the recipe, JSON or YAML), ``DescribeComponent``, ``ListComponents``,
  ``ListComponentVersions``.

:class:`ComponentStore` is the base of :class:`trashsorter_cli.local.greengrass_v2.ControlPlane`, which adds
deployments and core devices.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

REGION = "us-east-1"
ACCOUNT = "123456789012"
# A component name and version as the recipe reference allows them (semantic version, no build metadata).
_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?$")
_COMPONENT_NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class ServiceError(Exception):
    """An error answer: HTTP status, error code (``x-amzn-ErrorType``) and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def validation_error(message: str) -> ServiceError:
    return ServiceError(400, "ValidationException", message)


def not_found_error(message: str) -> ServiceError:
    return ServiceError(404, "ResourceNotFoundException", message)


def component_arn(name: str, version: str | None = None) -> str:
    base = f"arn:aws:greengrass:{REGION}:{ACCOUNT}:components:{name}"
    return f"{base}:versions:{version}" if version else base


def parse_recipe(raw: bytes) -> dict[str, Any]:
    """A recipe (JSON or YAML) as the service validates it when a component version is created."""
    try:
        recipe: Any = json.loads(raw)
    except ValueError:
        try:
            import yaml

            recipe = yaml.safe_load(raw)
        except Exception as exc:  # any YAML error is the same refusal
            raise validation_error(f"the recipe is neither JSON nor YAML: {exc}") from exc
    if not isinstance(recipe, dict):
        raise validation_error("the recipe must be an object")
    for key in ("RecipeFormatVersion", "ComponentName", "ComponentVersion"):
        if not isinstance(recipe.get(key), str) or not recipe[key]:
            raise validation_error(f"the recipe has no {key}")
    if not _COMPONENT_NAME.match(recipe["ComponentName"]):
        raise validation_error(f"invalid component name {recipe['ComponentName']!r}")
    if not _SEMVER.match(recipe["ComponentVersion"]):
        raise validation_error(f"component version {recipe['ComponentVersion']!r} is not a semantic version")
    return recipe


@dataclass
class ComponentVersion:
    recipe: dict[str, Any]
    raw: bytes
    created: float
    state: str = "DEPLOYABLE"
    message: str = ""

    @property
    def name(self) -> str:
        return str(self.recipe["ComponentName"])

    @property
    def version(self) -> str:
        return str(self.recipe["ComponentVersion"])


class ComponentStore:
    """Component versions and ``clientToken`` answers behind the routes; thread-safe (one lock)."""

    def __init__(self, s3_exists: Callable[[str], bool] | None = None) -> None:
        self._lock = threading.RLock()
        self.components: dict[str, dict[str, ComponentVersion]] = {}
        self.tokens: dict[str, tuple[str, Any]] = {}
        self.s3_exists = s3_exists or _moto_s3_exists
        self.clock: Callable[[], float] = time.time

    def _changed(self) -> None:
        """After a change (lock held); the control plane writes its state there."""

    def _idempotent(self, token: str | None, fingerprint: str, make: Callable[[], Any]) -> Any:
        if not token:
            return make()
        seen = self.tokens.get(token)
        if seen is not None:
            if seen[0] != fingerprint:
                raise ServiceError(409, "ConflictException", "the client token was used with another request")
            return seen[1]
        result = make()
        self.tokens[token] = (fingerprint, result)
        return result

    def create_component_version(self, body: Mapping[str, Any]) -> dict[str, Any]:
        if "lambdaFunction" in body:
            raise validation_error("Lambda function components cannot be created on the local endpoint")
        raw = base64.b64decode(str(body.get("inlineRecipe") or ""))
        if not raw:
            raise validation_error("inlineRecipe is required")
        recipe = parse_recipe(raw)
        with self._lock:

            def make() -> dict[str, Any]:
                versions = self.components.setdefault(recipe["ComponentName"], {})
                if recipe["ComponentVersion"] in versions:
                    raise ServiceError(
                        409,
                        "ConflictException",
                        f"component {recipe['ComponentName']} version {recipe['ComponentVersion']} already "
                        "exists; component versions are immutable",
                    )
                item = ComponentVersion(recipe, raw, self.clock())
                missing = [uri for uri in _artifact_uris(recipe) if not self.s3_exists(uri)]
                if missing:
                    item.state, item.message = "FAILED", f"cannot read the artifacts {', '.join(missing)}"
                versions[item.version] = item
                return self._version_answer(item)

            result: dict[str, Any] = self._idempotent(body.get("clientToken"), raw.hex(), make)
            self._changed()
            return result

    @staticmethod
    def _version_answer(item: ComponentVersion) -> dict[str, Any]:
        return {
            "arn": component_arn(item.name, item.version),
            "componentName": item.name,
            "componentVersion": item.version,
            "creationTimestamp": item.created,
            "status": {"componentState": item.state, "message": item.message or "NONE", "errors": {}},
        }

    def version_by_arn(self, arn: str) -> ComponentVersion:
        match = re.match(r"^arn:aws[a-z-]*:greengrass:[^:]+:\d{12}:components:([^:]+):versions:(.+)$", arn)
        if not match:
            raise validation_error(f"{arn!r} is not a component version ARN")
        with self._lock:
            item = self.components.get(match.group(1), {}).get(match.group(2))
        if item is None:
            raise not_found_error(f"component version {arn} does not exist")
        return item

    def get_component(self, arn: str, output_format: str) -> dict[str, Any]:
        item = self.version_by_arn(arn)
        if output_format == "YAML":
            import yaml

            raw = yaml.safe_dump(item.recipe, sort_keys=False).encode()
        else:
            raw = json.dumps(item.recipe).encode()
        return {"recipeOutputFormat": output_format, "recipe": base64.b64encode(raw).decode(), "tags": {}}

    def describe_component(self, arn: str) -> dict[str, Any]:
        item = self.version_by_arn(arn)
        answer = self._version_answer(item)
        answer["publisher"] = item.recipe.get("ComponentPublisher", "")
        answer["description"] = item.recipe.get("ComponentDescription", "")
        answer["platforms"] = [
            {"name": "", "attributes": m.get("Platform", {})} for m in item.recipe.get("Manifests", [])
        ]
        return answer

    def list_components(self) -> dict[str, Any]:
        with self._lock:
            out = []
            for name, versions in sorted(self.components.items()):
                if not versions:
                    continue
                latest = max(versions.values(), key=lambda v: _semver_key(v.version))
                out.append(
                    {
                        "componentName": name,
                        "arn": component_arn(name),
                        "latestVersion": {
                            "arn": component_arn(name, latest.version),
                            "componentVersion": latest.version,
                            "creationTimestamp": latest.created,
                            "description": latest.recipe.get("ComponentDescription", ""),
                            "publisher": latest.recipe.get("ComponentPublisher", ""),
                            "platforms": [],
                        },
                    }
                )
        return {"components": out}

    def list_component_versions(self, arn: str) -> dict[str, Any]:
        name = arn.rsplit("components:", 1)[-1].split(":")[0]
        with self._lock:
            versions = sorted(self.components.get(name, {}).values(), key=lambda v: _semver_key(v.version))
        if not versions:
            raise not_found_error(f"component {arn} does not exist")
        return {
            "componentVersions": [
                {"componentName": name, "componentVersion": v.version, "arn": component_arn(name, v.version)}
                for v in reversed(versions)
            ]
        }


def _semver_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("-")[0].split("."))


def _artifact_uris(recipe: Mapping[str, Any]) -> list[str]:
    return [
        str(a.get("URI") or a.get("Uri") or "")
        for m in recipe.get("Manifests", []) or []
        for a in m.get("Artifacts", []) or []
        if str(a.get("URI") or a.get("Uri") or "").startswith("s3://")
    ]


def _moto_s3_exists(uri: str) -> bool:
    from moto.s3.models import s3_backends

    bucket, _, key = uri.removeprefix("s3://").partition("/")
    try:
        return s3_backends[ACCOUNT]["aws"].get_object(bucket, key) is not None
    except Exception:  # noqa: BLE001 - no such bucket or key
        return False
