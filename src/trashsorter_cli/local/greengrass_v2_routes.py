"""The HTTP side of the local Greengrass v2 control plane: each ``/greengrass/v2/...`` request (the REST paths
of the Greengrass v2 API) answered from :data:`trashsorter_cli.local.greengrass_v2.PLANE`, errors as the
service sends them (``x-amzn-ErrorType``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from trashsorter_cli.local.greengrass_v2 import PLANE, ServiceError


def _answer(status: int, body: Mapping[str, Any]) -> tuple[int, dict[str, str], str]:
    return status, {"Content-Type": "application/json"}, json.dumps(body, default=str)


def _error(exc: ServiceError) -> tuple[int, dict[str, str], str]:
    headers = {"Content-Type": "application/json", "x-amzn-ErrorType": exc.code}
    return exc.status, headers, json.dumps({"message": exc.message})


def _body(request: Any) -> dict[str, Any]:
    raw = request.data if hasattr(request, "data") else request.body
    if isinstance(raw, str):
        raw = raw.encode()
    try:
        body = json.loads(raw or b"{}")
    except ValueError as exc:
        raise ServiceError(400, "ValidationException", f"the request body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ServiceError(400, "ValidationException", "the request body must be an object")
    return body


def greengrass_v2_dispatch(request: Any, full_url: str, headers: Any) -> tuple[int, dict[str, str], str]:
    """One ``/greengrass/v2/...`` request (moto's handler signature)."""
    url = urlparse(full_url)
    path = url.path
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    method = request.method
    try:
        return _route(method, path, query, request)
    except ServiceError as exc:
        return _error(exc)


def _route(method: str, path: str, query: dict[str, str], request: Any) -> tuple[int, dict[str, str], str]:
    parts = [unquote(p) for p in path.split("/greengrass/v2/", 1)[1].split("/")]
    head = parts[0]
    if head == "createComponentVersion" and method == "POST":
        return _answer(201, PLANE.create_component_version(_body(request)))
    if head == "components":
        if len(parts) == 1 and method == "GET":
            return _answer(200, PLANE.list_components())
        arn = parts[1]
        if len(parts) == 2 and method == "GET":
            return _answer(200, PLANE.get_component(arn, query.get("recipeOutputFormat", "JSON")))
        if len(parts) == 3 and parts[2] == "metadata":
            return _answer(200, PLANE.describe_component(arn))
        if len(parts) == 3 and parts[2] == "versions":
            return _answer(200, PLANE.list_component_versions(arn))
    if head == "deployments":
        if len(parts) == 1 and method == "POST":
            return _answer(201, PLANE.create_deployment(_body(request)))
        if len(parts) == 1 and method == "GET":
            return _answer(
                200, PLANE.list_deployments(query.get("targetArn"), query.get("historyFilter", "LATEST_ONLY"))
            )
        if len(parts) == 2 and method == "GET":
            return _answer(200, PLANE.get_deployment(parts[1]))
        if len(parts) == 3 and parts[2] == "cancel" and method == "POST":
            return _answer(200, PLANE.cancel_deployment(parts[1]))
    if head == "coreDevices":
        if len(parts) == 1:
            return _answer(200, PLANE.list_core_devices(query.get("thingGroupArn")))
        if len(parts) == 2:
            return _answer(200, PLANE.get_core_device(parts[1]))
        if parts[2] == "effectiveDeployments":
            return _answer(200, PLANE.effective_deployments(parts[1]))
        if parts[2] == "installedComponents":
            return _answer(200, PLANE.installed_components(parts[1]))
    raise ServiceError(404, "ResourceNotFoundException", f"no Greengrass v2 operation {method} {path} here")


ROUTES = (
    r"{0}/greengrass/v2/createComponentVersion$",
    r"{0}/greengrass/v2/components$",
    r"{0}/greengrass/v2/components/(?P<arn>[^/]+)$",
    r"{0}/greengrass/v2/components/(?P<arn>[^/]+)/(?P<what>metadata|versions)$",
    r"{0}/greengrass/v2/deployments$",
    r"{0}/greengrass/v2/deployments/(?P<deployment_id>[^/]+)$",
    r"{0}/greengrass/v2/deployments/(?P<deployment_id>[^/]+)/cancel$",
    r"{0}/greengrass/v2/coreDevices$",
    r"{0}/greengrass/v2/coreDevices/(?P<thing>[^/]+)$",
    r"{0}/greengrass/v2/coreDevices/(?P<thing>[^/]+)/(?P<what>effectiveDeployments|installedComponents)$",
)


def install() -> None:
    """Add the routes to moto's ``greengrass`` service (idempotent; before the server or mock starts)."""
    from moto.greengrass import urls

    for route in ROUTES:
        urls.url_paths.setdefault(route, greengrass_v2_dispatch)
