"""Which stack a command talks to: the local endpoint (``.trashsorter/local.json``) or a deployed stack.

Names never come from the user: the local state file holds the stack's outputs and each function's resolved
environment; for a deployed stack they are read from CloudFormation (``describe_stacks`` outputs) and from
the functions' configuration (``get_function_configuration``), so the CLI builds exactly the settings the
Lambdas run with.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from trashsorter import aws
from trashsorter.errors import ConfigurationError
from trashsorter.settings import CommonSettings
from trashsorter_cli.local.server import LOCAL_CREDENTIALS, LocalState, pid_alive, probe_endpoint, read_state

FUNCTION_OUTPUTS = {
    "IngestFunction": "IngestFunctionName",
    "StartTrainingFunction": "StartTrainingFunctionName",
    "PackageFunction": "PackageFunctionName",
}
S = TypeVar("S", bound=CommonSettings)


@dataclass
class Target:
    kind: str  # "local" | "stack"
    stack_name: str
    region: str
    outputs: dict[str, str]
    environments: dict[str, dict[str, str]] = field(default_factory=dict)
    endpoint_url: str | None = None
    device_url: str = ""
    device_token: str = ""
    profile: str | None = None

    @property
    def is_local(self) -> bool:
        return self.kind == "local"

    def describe(self) -> str:
        if self.is_local:
            return f"local stack {self.stack_name} at {self.endpoint_url}"
        return f"stack {self.stack_name} in {self.region}"

    def session(self) -> boto3.session.Session:
        return boto3.session.Session(profile_name=self.profile, region_name=self.region)

    def client(self, service: str) -> Any:
        return self.session().client(service, region_name=self.region, endpoint_url=self.endpoint_url)

    def output(self, name: str) -> str:
        try:
            return self.outputs[name]
        except KeyError as exc:
            raise ConfigurationError(f"{self.describe()} has no output {name}") from exc

    @property
    def bucket(self) -> str:
        return self.output("ImagesBucketName")

    @property
    def table(self) -> str:
        return self.output("CatalogueTableName")

    @property
    def labels(self) -> list[str]:
        return [part.strip() for part in self.output("AllowedLabels").split(",") if part.strip()]

    def activate(self) -> None:
        """Point the domain package's default clients (``trashsorter.aws.client``) at this target."""
        if self.is_local:
            os.environ.update(LOCAL_CREDENTIALS)
            os.environ.pop("AWS_PROFILE", None)
            os.environ["AWS_ENDPOINT_URL"] = str(self.endpoint_url)
        elif self.profile:
            os.environ["AWS_PROFILE"] = self.profile
        os.environ["AWS_REGION"] = self.region
        os.environ["AWS_DEFAULT_REGION"] = self.region
        aws.reset_clients()

    def function_env(self, logical_id: str) -> dict[str, str]:
        if logical_id not in self.environments:
            if self.is_local:
                raise ConfigurationError(f"the local state has no environment for {logical_id}")
            self.environments[logical_id] = self._deployed_env(logical_id)
        return dict(self.environments[logical_id])

    def settings(self, cls: type[S], logical_id: str) -> S:
        """The settings ``logical_id`` runs with (its own environment), e.g. PackageSettings."""
        env = {"AWS_REGION": self.region, **self.function_env(logical_id)}
        return cls.from_env(env)

    def _deployed_env(self, logical_id: str) -> dict[str, str]:
        name = self.output(FUNCTION_OUTPUTS[logical_id])
        try:
            config = self.client("lambda").get_function_configuration(FunctionName=name)
        except (ClientError, BotoCoreError) as exc:
            raise ConfigurationError(f"cannot read the configuration of function {name}: {exc}") from exc
        return {str(k): str(v) for k, v in config.get("Environment", {}).get("Variables", {}).items()}


def check_local_endpoint(state: LocalState, *, timeout: float = 5.0, attempts: int = 3) -> None:
    """Raise a true ConfigurationError when the local stack cannot be reached; return when it answers.

    The health request is O(1) (:func:`probe_endpoint`); a busy stack gets ``attempts`` chances.
    """
    problem = probe_endpoint(state.endpoint_url, timeout)
    for _ in range(attempts - 1):
        if problem is None or "refused" in problem:
            break
        problem = probe_endpoint(state.endpoint_url, timeout)
    if problem is None:
        return
    if state.pid and not pid_alive(state.pid):
        raise ConfigurationError(
            f"the local stack (pid {state.pid}, {state.endpoint_url}) is not running any more; "
            "start it again with `trashsorter local up`"
        )
    if "refused" in problem:
        raise ConfigurationError(
            f"the local endpoint {state.endpoint_url} is not answering: {problem}; "
            "is `trashsorter local up` still starting, or was it started elsewhere?"
        )
    raise ConfigurationError(
        f"the local stack (pid {state.pid}) is running but its endpoint {state.endpoint_url} is busy: "
        f"{problem} ({attempts} tries); try again in a moment"
    )


def local_target(state: LocalState, *, check: bool = True) -> Target:
    if check:
        check_local_endpoint(state)
    return Target(
        kind="local",
        stack_name=state.stack_name,
        region=state.region,
        outputs=dict(state.outputs),
        environments={fn: dict(env) for fn, env in state.environments.items()},
        endpoint_url=state.endpoint_url,
        device_url=state.device_url,
        device_token=state.device_token,
    )


def stack_target(stack_name: str, *, region: str | None = None, profile: str | None = None) -> Target:
    try:
        session = boto3.session.Session(profile_name=profile, region_name=region)
    except BotoCoreError as exc:
        raise ConfigurationError(f"AWS profile problem: {exc}") from exc
    resolved_region = session.region_name or "us-east-1"
    try:
        stacks = session.client("cloudformation", region_name=resolved_region).describe_stacks(
            StackName=stack_name
        )["Stacks"]
    except ClientError as exc:
        raise ConfigurationError(f"no stack {stack_name} in {resolved_region}: {exc}") from exc
    except BotoCoreError as exc:
        raise ConfigurationError(f"cannot reach CloudFormation in {resolved_region}: {exc}") from exc
    outputs = {o["OutputKey"]: str(o.get("OutputValue", "")) for o in stacks[0].get("Outputs", [])}
    if "ImagesBucketName" not in outputs:
        raise ConfigurationError(
            f"stack {stack_name} is not a trashsorter stack (no ImagesBucketName output)"
        )
    return Target(
        kind="stack", stack_name=stack_name, region=resolved_region, outputs=outputs, profile=profile
    )


def resolve_target(
    *,
    stack: str | None = None,
    local_state: Path | None = None,
    region: str | None = None,
    profile: str | None = None,
) -> Target:
    """``--stack NAME`` -> the deployed stack; otherwise the running local stack (state file)."""
    if stack:
        target = stack_target(stack, region=region, profile=profile)
    else:
        target = local_target(read_state(local_state))
    target.activate()
    return target
