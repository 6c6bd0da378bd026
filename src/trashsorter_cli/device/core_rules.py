"""What a Greengrass v2 core enforces on a component, as the emulated core applies it (each rule's guide page
is named in docs/deploy.md, "What the emulated core enforces"):

* recipe variables in the component's *configuration* (``accessControl`` included) are replaced only when the
  nucleus option ``interpolateComponentConfiguration`` is true (nucleus >= 2.6.0, default false); otherwise
  ``{iot:thingName}`` stays a literal string (:func:`effective_access_control`);
* IPC authorization (:func:`authorized`): an operation is allowed only by a policy of the component's
  ``accessControl`` for that IPC service that lists the operation (or ``*``) and a matching resource:
  ``*`` matches everything, ``*`` inside a resource matches any characters, and for
  ``aws.greengrass.ipc.mqttproxy`` the MQTT wildcards ``+`` (one level) and ``#`` (the rest) apply;
* policy ids are unique on a core (:func:`check_policy_ids`);
* a denied publish is an error the component sees (:class:`IotGateway` answers it as AWS IoT does an
  unauthorized publish, HTTP 403, so the app's publish call raises).
"""

from __future__ import annotations

import fnmatch
import http.client
import json
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlparse

MQTT_PROXY = "aws.greengrass.ipc.mqttproxy"
PUBLISH_TO_IOT_CORE = "aws.greengrass#PublishToIoTCore"
_THING_VARIABLE = "{iot:thingName}"
_SIGNING_SERVICE = re.compile(r"Credential=[^/]+/[^/]+/[^/]+/([^/]+)/aws4_request")


@dataclass(frozen=True)
class NucleusSettings:
    """The nucleus options the emulated core honours (``aws.greengrass.Nucleus`` configuration)."""

    interpolate_component_configuration: bool = False


class PolicyConflict(ValueError):
    """Two components on one core declare the same IPC policy id."""


def effective_access_control(
    configuration: Mapping[str, Any], thing: str, settings: NucleusSettings
) -> dict[str, Any]:
    """The component's ``accessControl`` as the core reads it: interpolated only when the nucleus says so."""
    access = json.loads(json.dumps(configuration.get("accessControl") or {}))
    if not settings.interpolate_component_configuration:
        return dict(access)
    text = json.dumps(access).replace(_THING_VARIABLE, thing)
    interpolated: dict[str, Any] = json.loads(text)
    return interpolated


def mqtt_matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic filter matching: ``+`` is one level, ``#`` (last) the remaining levels."""
    wanted, levels = topic_filter.split("/"), topic.split("/")
    for index, part in enumerate(wanted):
        if part == "#":
            return index == len(wanted) - 1
        if index >= len(levels):
            return False
        if part != "+" and part != levels[index]:
            return False
    return len(wanted) == len(levels)


def resource_matches(pattern: str, resource: str, service: str) -> bool:
    if pattern == "*" or pattern == resource:
        return True
    if service == MQTT_PROXY and ("+" in pattern.split("/") or pattern.split("/")[-1] == "#"):
        return mqtt_matches(pattern, resource)
    return "*" in pattern and fnmatch.fnmatchcase(resource, pattern)


def authorized(access_control: Mapping[str, Any], service: str, operation: str, resource: str) -> bool:
    """Whether one policy of ``access_control[service]`` allows ``operation`` on ``resource``."""
    for policy in (access_control.get(service) or {}).values():
        operations = policy.get("operations") or []
        if operation not in operations and "*" not in operations:
            continue
        if any(resource_matches(str(p), resource, service) for p in policy.get("resources") or []):
            return True
    return False


def check_policy_ids(components: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse two components (name -> accessControl) that share an IPC policy id."""
    owners: dict[str, str] = {}
    for component, access in components.items():
        for policies in access.values():
            for policy_id in policies:
                if policy_id in owners and owners[policy_id] != component:
                    raise PolicyConflict(
                        f"IPC policy id {policy_id!r} of {component} is already used by {owners[policy_id]}"
                    )
                owners[policy_id] = component


class IotGateway:
    """The component's AWS endpoint on the emulated core: every request goes on to the local endpoint, except
    an AWS IoT data ``Publish`` that the component's authorization policy does not allow (answered 403, the
    error a denied ``PublishToIoTCore`` is to the component). It stands for the nucleus's IPC MQTT proxy."""

    def __init__(self, upstream: str, access_control: Mapping[str, Any], component: str) -> None:
        parsed = urlparse(upstream)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"the upstream endpoint must be http://host:port, got {upstream!r}")
        self.upstream = (parsed.hostname, parsed.port or 80)
        self.access_control = dict(access_control)
        self.component = component
        self.denied: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _gateway_handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="ipc-gateway", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> IotGateway:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def allows(self, method: str, path: str, headers: Mapping[str, str]) -> tuple[bool, str]:
        found = _SIGNING_SERVICE.search(headers.get("Authorization", ""))
        url = urlparse(path)
        if (
            method != "POST"
            or not found
            or found.group(1) != "iotdata"
            or not url.path.startswith("/topics/")
        ):
            return True, ""
        topic = unquote(url.path[len("/topics/") :])
        return authorized(self.access_control, MQTT_PROXY, PUBLISH_TO_IOT_CORE, topic), topic


def _gateway_handler(gateway: IotGateway) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def _relay(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            allowed, topic = gateway.allows(self.command, self.path, dict(self.headers.items()))
            if not allowed:
                gateway.denied.append(topic)
                message = (
                    f"{gateway.component} is not authorized to perform {PUBLISH_TO_IOT_CORE} on {topic} "
                    f"({MQTT_PROXY} accessControl)"
                )
                data = json.dumps({"message": message}).encode()
                self.send_response(403)
                self.send_header("x-amzn-ErrorType", "ForbiddenException")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            upstream = http.client.HTTPConnection(*gateway.upstream, timeout=60)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
                upstream.request(self.command, self.path, body=body, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
            finally:
                upstream.close()

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _relay

    return Handler


# ------------------------------------------------------------------------------------------- dependencies
class DependencyError(ValueError):
    """A deployment whose components' dependencies a core cannot resolve (the deployment fails)."""


AWS_PROVIDED = "aws.greengrass."  # public components AWS provides (resolved from the cloud, not run here)
_COMPARATOR = re.compile(r"^(>=|<=|>|<|=|\^|~)?\s*v?(\d+)(?:\.(\d+|x|\*))?(?:\.(\d+|x|\*))?$")


def _version(text: str) -> tuple[int, int, int]:
    parts = [*text.split("-", 1)[0].split("+", 1)[0].split("."), "0", "0"][:3]
    try:
        major, minor, patch = (int(p) for p in parts)
    except ValueError as exc:
        raise DependencyError(f"{text!r} is not a semantic version") from exc
    return major, minor, patch


def _comparator_holds(comparator: str, version: tuple[int, int, int]) -> bool:
    found = _COMPARATOR.match(comparator.strip())
    if comparator.strip() in ("*", "x", ""):
        return True
    if not found:
        raise DependencyError(f"{comparator!r} is not a version requirement")
    op, major, minor, patch = found.groups()
    wild = [p in (None, "x", "*") for p in (minor, patch)]
    bound = (int(major), 0 if wild[0] else int(minor), 0 if wild[1] else int(patch))
    if op == "^":  # compatible: same leftmost non-zero part
        if bound[0] > 0:
            upper = (bound[0] + 1, 0, 0)
        elif bound[1] > 0:
            upper = (0, bound[1] + 1, 0)
        else:
            upper = (0, 0, bound[2] + 1)
        return bound <= version < upper
    if op == "~" or (op in (None, "=") and any(wild)):  # the patch (or minor) level may move
        upper = (bound[0] + 1, 0, 0) if wild[0] else (bound[0], bound[1] + 1, 0)
        return bound <= version < upper
    checks = {
        ">=": version >= bound,
        "<=": version <= bound,
        ">": version > bound,
        "<": version < bound,
    }
    return checks.get(op or "=", version == bound)


def version_satisfies(requirement: str, version: str) -> bool:
    """A component version against a dependency's ``VersionRequirement`` (semantic version ranges: comparators
    ``>= <= > < =``, ``^``, ``~``, ``x``/``*`` wildcards, separated by spaces (all must hold) or ``||``)."""
    parsed = _version(version)
    for alternative in (requirement or "*").split("||"):
        tokens = re.sub(r"(>=|<=|>|<|=|\^|~)\s+", r"\1", alternative.strip()).split()
        if all(_comparator_holds(token, parsed) for token in tokens or ["*"]):
            return True
    return False


def dependencies_of(recipe: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """``ComponentDependencies`` with the defaults filled in (``VersionRequirement`` ``*``, ``HARD``)."""
    found: dict[str, dict[str, str]] = {}
    for name, spec in dict(recipe.get("ComponentDependencies") or {}).items():
        spec = dict(spec or {})
        found[str(name)] = {
            "VersionRequirement": str(spec.get("VersionRequirement") or "*"),
            "DependencyType": str(spec.get("DependencyType") or "HARD").upper(),
        }
    return found


def dependency_order(recipes: Mapping[str, Mapping[str, Any]], run_here: list[str]) -> list[str]:
    """The order in which a core installs and starts ``run_here`` (names of ``recipes``, the deployment's
    components; the ones this core runs): every dependency before the components that depend on it
    (Developer Guide, "Component recipe reference": ``ComponentDependencies``). A dependency that the
    deployment has must satisfy the dependent's ``VersionRequirement``; one the deployment lacks must be a
    public AWS component (``aws.greengrass.*``, which a core resolves from the cloud); a cycle cannot be
    installed. Any of these -> :class:`DependencyError` (the deployment fails)."""
    for name in run_here:
        for dependency, spec in dependencies_of(recipes[name]).items():
            if dependency in recipes:
                version = str(recipes[dependency].get("ComponentVersion", ""))
                if not version_satisfies(spec["VersionRequirement"], version):
                    raise DependencyError(
                        f"{name} requires {dependency} {spec['VersionRequirement']}, "
                        f"the deployment has {dependency} {version}"
                    )
            elif not dependency.startswith(AWS_PROVIDED):
                raise DependencyError(f"{name} depends on {dependency}, which the deployment does not have")
    ordered: list[str] = []
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in ordered:
            return
        if name in visiting:
            raise DependencyError(f"circular dependency: {' -> '.join([*visiting, name])}")
        visiting.append(name)
        for dependency in dependencies_of(recipes[name]):
            if dependency in recipes:
                visit(dependency)
        visiting.pop()
        ordered.append(name)

    for name in run_here:
        visit(name)
    return [name for name in ordered if name in run_here]
