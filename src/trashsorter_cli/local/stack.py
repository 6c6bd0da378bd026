"""The local stack: template.yaml translated and rewritten (:mod:`trashsorter_cli.local.template`, where
the local rewrites are listed) and created on a local (moto) endpoint; what :func:`deploy_stack` returns.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trashsorter.errors import ConfigurationError
from trashsorter_cli.local.template import (
    BUCKET_PROPERTIES_AFTER,
    FunctionSpec,
    build_local_template,
    load_template,
    parameter_values,
    resolve_placeholders,
)


@dataclass
class LocalStack:
    """A created stack: names, physical ids and the functions' resolved environments."""

    stack_name: str
    region: str
    outputs: dict[str, str]
    resources: dict[str, str]  # logical id -> physical id
    resource_types: dict[str, str]
    functions: dict[str, FunctionSpec]
    environments: dict[str, dict[str, str]]
    parameters: dict[str, str]
    mirrors: dict[str, str]
    skipped_statements: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def function_env(self, logical_id: str) -> dict[str, str]:
        try:
            return dict(self.environments[logical_id])
        except KeyError as exc:
            raise ConfigurationError(f"template.yaml has no function {logical_id!r}") from exc

    def queue_url(self, logical_id: str) -> str:
        return self.resources[logical_id]


# ----------------------------------------------------------------------------------------- deploy


def deploy_stack(
    session: Any,
    *,
    stack_name: str = "trashsorter",
    overrides: Mapping[str, str] | None = None,
    template_path: Path | str | None = None,
    region: str | None = None,
    endpoint_url: str | None = None,
    timeout: float = 120.0,
) -> LocalStack:
    """Create the stack from template.yaml on the endpoint ``session`` talks to (moto server or mock_aws).

    Also installs :mod:`trashsorter_cli.local.moto_patches` (thread-safe DynamoDB, cheap transactions) and
    the Greengrass v2 control plane (:mod:`trashsorter_cli.local.greengrass_v2`) in this process, which is
    where an in-process moto server or ``mock_aws`` backend lives.
    """
    from trashsorter_cli.local import greengrass_v2, moto_patches

    moto_patches.install()
    greengrass_v2.install()  # the Greengrass v2 control plane moto does not have
    greengrass_v2.PLANE.reset()  # a new stack starts with no components, deployments or core devices
    region = region or session.region_name or "us-east-1"
    template = load_template(template_path)
    params = parameter_values(template, overrides)
    local = build_local_template(template, params, region=region, stack_name=stack_name)

    @functools.cache
    def client(service: str) -> Any:  # one client per service for the whole creation
        return session.client(service, region_name=region, endpoint_url=endpoint_url)

    cfn = client("cloudformation")
    cfn.create_stack(
        StackName=stack_name,
        TemplateBody=json.dumps(local.cloudformation),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
    )
    deadline = time.monotonic() + timeout
    while True:
        stack = cfn.describe_stacks(StackName=stack_name)["Stacks"][0]
        status = stack["StackStatus"]
        if status.endswith("_COMPLETE") and "ROLLBACK" not in status:
            break
        if "FAILED" in status or "ROLLBACK" in status:
            raise ConfigurationError(
                f"local stack {stack_name} failed: {status} {stack.get('StackStatusReason')}"
            )
        if time.monotonic() > deadline:
            raise ConfigurationError(f"local stack {stack_name} not created after {timeout:.0f}s ({status})")
        time.sleep(0.2)

    raw_outputs = {o["OutputKey"]: str(o.get("OutputValue", "")) for o in stack.get("Outputs", [])}
    summaries: list[dict[str, Any]] = []
    for page in cfn.get_paginator("list_stack_resources").paginate(StackName=stack_name):
        summaries.extend(page["StackResourceSummaries"])
    resources = {s["LogicalResourceId"]: s.get("PhysicalResourceId", "") for s in summaries}
    resource_types = {s["LogicalResourceId"]: s["ResourceType"] for s in summaries}

    environments: dict[str, dict[str, str]] = {fn: {} for fn in local.functions}
    for (fn, var), key in local.env_outputs.items():
        if key not in raw_outputs:
            raise ConfigurationError(f"local stack did not resolve {fn} environment variable {var}")
        environments[fn][var] = raw_outputs[key]
    outputs = {k: v for k, v in raw_outputs.items() if not k.startswith(("LocalEnv", "LocalValue"))}

    values = {placeholder: raw_outputs[key] for placeholder, key in local.value_outputs.items()}
    skipped: dict[str, list[dict[str, Any]]] = {}
    for lid, resource in local.applied_after.items():
        resolved = resolve_placeholders(resource, values)
        resources[lid], skipped[lid] = _apply_resource(client, resolved)
        resource_types[lid] = resolved["Type"]
    for bucket_id, props in local.bucket_properties.items():
        _apply_bucket_properties(client("s3"), resources[bucket_id], resolve_placeholders(props, values))
    return LocalStack(
        stack_name=stack_name,
        region=region,
        outputs=outputs,
        resources=resources,
        resource_types=resource_types,
        functions=local.functions,
        environments=environments,
        parameters=params,
        mirrors=local.mirrors,
        skipped_statements={lid: found for lid, found in skipped.items() if found},
    )


def _apply_resource(client: Any, resource: Mapping[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """Create one resource moto's CloudFormation lacks through its API.

    Returns its physical id and the policy statements left out (local rewrite 7).
    """
    props = resource["Properties"]
    if resource["Type"] == "AWS::S3::BucketPolicy":
        document = dict(props["PolicyDocument"])
        statements = list(document.get("Statement", []))
        skipped = [st for st in statements if st.get("Effect") == "Deny" and st.get("Condition")]
        kept = [st for st in statements if st not in skipped]
        if kept:
            client("s3").put_bucket_policy(
                Bucket=props["Bucket"], Policy=json.dumps({**document, "Statement": kept})
            )
        return str(props["Bucket"]), skipped
    if resource["Type"] == "AWS::SQS::QueuePolicy":
        sqs = client("sqs")
        for queue_url in props["Queues"]:
            sqs.set_queue_attributes(
                QueueUrl=queue_url, Attributes={"Policy": json.dumps(props["PolicyDocument"])}
            )
        return ",".join(props["Queues"]), []
    if resource["Type"] == "AWS::Events::EventBusPolicy":  # stored, not evaluated (template.py, rewrite 5)
        policy = {"Version": "2012-10-17", "Statement": [props["Statement"]]}
        client("events").put_permission(EventBusName=props["EventBusName"], Policy=json.dumps(policy))
        return f"{props['EventBusName']}/{props['StatementId']}", []
    if resource["Type"] == "AWS::CloudWatch::Alarm":  # the CloudFormation properties are the API's
        client("cloudwatch").put_metric_alarm(**props)
        return str(props["AlarmName"]), []
    raise ConfigurationError(f"local mode cannot create {resource['Type']}")


def _apply_bucket_properties(s3: Any, bucket: str, props: Mapping[str, Any]) -> None:
    unsupported = set(props) - set(BUCKET_PROPERTIES_AFTER)
    if unsupported:
        raise ConfigurationError(f"{bucket}: local mode cannot apply {', '.join(sorted(unsupported))}")
    if "VersioningConfiguration" in props:
        s3.put_bucket_versioning(
            Bucket=bucket, VersioningConfiguration={"Status": props["VersioningConfiguration"]["Status"]}
        )
    if "PublicAccessBlockConfiguration" in props:
        s3.put_public_access_block(
            Bucket=bucket, PublicAccessBlockConfiguration=dict(props["PublicAccessBlockConfiguration"])
        )
    if "OwnershipControls" in props:
        s3.put_bucket_ownership_controls(Bucket=bucket, OwnershipControls=dict(props["OwnershipControls"]))
    config = props.get("NotificationConfiguration")
    if config is None:
        return
    unsupported = set(config) - {"QueueConfigurations", "EventBridgeConfiguration"}
    if unsupported:
        raise ConfigurationError(f"{bucket}: local mode cannot apply {', '.join(sorted(unsupported))}")
    queue_configs = []
    for entry in config.get("QueueConfigurations", []):
        item: dict[str, Any] = {"QueueArn": entry["Queue"], "Events": [entry["Event"]]}
        rules = entry.get("Filter", {}).get("S3Key", {}).get("Rules")
        if rules:
            item["Filter"] = {"Key": {"FilterRules": rules}}
        queue_configs.append(item)
    notification: dict[str, Any] = {"QueueConfigurations": queue_configs}
    if config.get("EventBridgeConfiguration", {}).get("EventBridgeEnabled"):
        notification["EventBridgeConfiguration"] = {}
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=notification)
