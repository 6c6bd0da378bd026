"""template.yaml -> the CloudFormation a local (moto) endpoint can create, and what the dispatcher needs.

The template stays the single source of truth: it is translated with aws-sam-translator exactly as
CloudFormation would, then a few *local rewrites* (all listed here, all tested) make it creatable by moto,
which cannot run Lambda code without Docker:

1. Lambda functions, layers, event-source mappings and permissions are dropped; each function becomes a
   :class:`FunctionSpec` (code path, handler, resolved environment, event sources) for the in-process
   dispatcher.
2. Every EventBridge rule that targets a function targets a *mirror* SQS queue instead; the rule's retry
   policy and dead-letter queue become the mirror's redrive policy.
3. Bucket properties moto's CloudFormation ignores (notifications, versioning, public access block,
   ownership controls) are applied after creation through the S3 API.
4. Function environment variables are added as stack outputs so that moto itself resolves every
   ``!Ref`` / ``!GetAtt`` / ``!Sub`` / ``!If`` in them.
5. Resource types moto's CloudFormation does not implement (bucket, queue and event bus policies, alarms)
   are taken out and applied through their APIs after creation, their intrinsic functions resolved the
   same way (outputs). The event bus policy is stored (``PutPermission``) but the local bus does not
   evaluate it: every local caller is the same account with no IAM identity (docs/security.md).
6. ``!Ref`` to an ``AWS::Events::EventBus`` is replaced by the bus's ``Name`` expression (moto's
   CloudFormation returns an object for that Ref; AWS returns the name).
7. Bucket-policy ``Deny`` statements with a ``Condition`` (the TLS-only rule) are not applied: moto evaluates
   policies without their conditions, so they would deny every request, and the local endpoint is plain
   HTTP on loopback anyway. The statements left out are listed in ``LocalStack.skipped_statements``.
8. Stable names for the persisted resources (docs/local-mode.md, "State"): every ``!Ref AWS::StackId`` is
   replaced by a fixed stack id whose last part is a UUID derived from the region and the stack name
   (:func:`local_stack_id`), so the bucket names the template derives from it are the same at every
   ``local up``; a DynamoDB table without a ``TableName`` gets ``<stack name>-<logical id>`` (CloudFormation
   would add a random suffix). The local state, which holds ``s3://`` URIs and is keyed by these names,
   then fits the next stack of the same name.

:mod:`trashsorter_cli.local.stack` creates the result on the endpoint (``deploy_stack``).
"""

from __future__ import annotations

import copy
import json
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trashsorter.errors import ConfigurationError

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_TEMPLATE = REPO_ROOT / "template.yaml"
LOCAL_ACCOUNT = "123456789012"
_CODE_BUCKET = "trashsorter-local-code"  # placeholder S3 location for CodeUri/ContentUri (never read)
# events that become an EventBridge rule (moto never fires a Schedule rule: trashsorter_cli.local.schedules)
_RULE_EVENT_TYPES = ("EventBridgeRule", "CloudWatchEvent", "Schedule")
_DROPPED_TYPES = {
    "AWS::Lambda::Function",
    "AWS::Lambda::LayerVersion",
    "AWS::Lambda::EventSourceMapping",
    "AWS::Lambda::Permission",
}
_ENV_OUTPUT = "LocalEnv{fn}{index}"
_VALUE_OUTPUT = "LocalValue{index}"
_APPLIED_AFTER = {
    "AWS::S3::BucketPolicy",
    "AWS::SQS::QueuePolicy",
    "AWS::CloudWatch::Alarm",
    "AWS::Events::EventBusPolicy",
}
BUCKET_PROPERTIES_AFTER = (
    "NotificationConfiguration",
    "VersioningConfiguration",
    "PublicAccessBlockConfiguration",
    "OwnershipControls",
)


@dataclass(frozen=True)
class EventSource:
    """What feeds a function: an SQS queue (directly, or the mirror queue of an EventBridge rule)."""

    kind: str  # "sqs" | "rule"
    name: str  # the SAM event name (ImagesQueue, DatasetReady ...)
    queue_logical_id: str  # the queue to poll
    rule_logical_id: str = ""
    batch_size: int = 10
    partial_batch: bool = False


@dataclass(frozen=True)
class FunctionSpec:
    logical_id: str
    code_dir: Path
    handler: str  # "app.handler"
    environment_expressions: Mapping[str, Any]
    sources: tuple[EventSource, ...]
    timeout: int = 60

    @property
    def module_path(self) -> Path:
        return self.code_dir / (self.handler.rsplit(".", 1)[0].replace(".", "/") + ".py")

    @property
    def handler_name(self) -> str:
        return self.handler.rsplit(".", 1)[1]


@dataclass
class LocalTemplate:
    """The CloudFormation the local endpoint creates, plus what the dispatcher needs."""

    cloudformation: dict[str, Any]
    functions: dict[str, FunctionSpec]
    bucket_properties: dict[str, dict[str, Any]]  # bucket logical id -> properties applied after creation
    mirrors: dict[str, str]  # rule logical id -> mirror queue logical id
    parameters: dict[str, str]
    env_outputs: dict[tuple[str, str], str] = field(default_factory=dict)  # (fn, var) -> output key
    # resources applied through their APIs after creation, with output placeholders for intrinsics
    applied_after: dict[str, dict[str, Any]] = field(default_factory=dict)
    value_outputs: dict[str, str] = field(default_factory=dict)  # placeholder -> output key


# Parsed templates by (path, modification time, size): a stack per test or per ``local up`` parses once.
_PARSED: dict[tuple[str, int, int], str] = {}


def load_template(path: Path | str | None = None) -> dict[str, Any]:
    """Parse template.yaml (CloudFormation short-form tags included) into plain dicts."""
    from cfnlint.decode import decode_str

    template_path = Path(path or os.environ.get("TRASHSORTER_TEMPLATE", DEFAULT_TEMPLATE))
    if not template_path.is_file():
        raise ConfigurationError(
            f"template.yaml not found at {template_path} (set TRASHSORTER_TEMPLATE or run from a checkout)"
        )
    stat = template_path.stat()
    key = (str(template_path.resolve()), stat.st_mtime_ns, stat.st_size)
    text = _PARSED.get(key)
    if text is None:
        parsed, matches = decode_str(template_path.read_text(encoding="utf-8"))
        if matches or parsed is None:
            raise ConfigurationError(f"cannot parse {template_path}: {matches}")
        # Kept as JSON text: plain dict/list/str, no cfn-lint node classes, and a fresh copy per caller.
        text = _PARSED[key] = json.dumps(parsed)
    return json.loads(text)


def parse_parameter_overrides(items: Iterable[str]) -> dict[str, str]:
    """`sam deploy --parameter-overrides` forms: ``Key=Value`` and ``ParameterKey=K,ParameterValue=V``."""
    result: dict[str, str] = {}
    for item in items:
        for token in _split_overrides(item):
            match = re.fullmatch(r"ParameterKey=([^,]+),ParameterValue=(.*)", token)
            if match:
                result[match.group(1)] = match.group(2)
            elif "=" in token:
                key, value = token.split("=", 1)
                result[key.strip()] = value.strip().strip("\"'")
            else:
                raise ConfigurationError(f"bad parameter override {token!r}: expected Key=Value")
    return result


def _split_overrides(item: str) -> list[str]:
    # "A=1 B=2" and "ParameterKey=A,ParameterValue=1 ParameterKey=B,..." - whitespace separates pairs.
    return [part for part in re.split(r"\s+(?=(?:ParameterKey=)?[A-Za-z0-9]+=)", item.strip()) if part]


def parameter_values(
    template: Mapping[str, Any], overrides: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The template's defaults with overrides applied and checked against each parameter's constraints."""
    declared: Mapping[str, Any] = template.get("Parameters", {})
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(declared))
    if unknown:
        raise ConfigurationError(
            f"unknown stack parameter(s): {', '.join(unknown)} (template.yaml declares {', '.join(declared)})"
        )
    values: dict[str, str] = {}
    for name, spec in declared.items():
        if name in overrides:
            value = str(overrides[name])
        elif "Default" in spec:
            value = str(spec["Default"])
        else:
            raise ConfigurationError(f"stack parameter {name} has no default: pass {name}=...")
        _check_parameter(name, spec, value)
        values[name] = value
    return values


def _check_parameter(name: str, spec: Mapping[str, Any], value: str) -> None:
    allowed = spec.get("AllowedValues")
    if allowed is not None and value not in [str(v) for v in allowed]:
        raise ConfigurationError(f"{name}={value!r} is not one of {', '.join(map(str, allowed))}")
    pattern = spec.get("AllowedPattern")
    if pattern and value and not re.fullmatch(pattern, value):
        raise ConfigurationError(f"{name}={value!r} does not match {pattern}")
    if spec.get("Type") == "Number":
        try:
            number = float(value)
        except ValueError as exc:
            raise ConfigurationError(f"{name}={value!r} is not a number") from exc
        if "MinValue" in spec and number < float(spec["MinValue"]):
            raise ConfigurationError(f"{name}={value} is below its minimum {spec['MinValue']}")
        if "MaxValue" in spec and number > float(spec["MaxValue"]):
            raise ConfigurationError(f"{name}={value} is above its maximum {spec['MaxValue']}")


def _sam_functions(template: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        logical_id: resource
        for logical_id, resource in template.get("Resources", {}).items()
        if resource.get("Type") == "AWS::Serverless::Function"
    }


def _getatt_target(value: Any) -> str | None:
    """Logical id in ``{"Fn::GetAtt": ["X", "Arn"]}`` / ``"X.Arn"`` forms."""
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        target = value["Fn::GetAtt"]
        if isinstance(target, str):
            return target.split(".", 1)[0]
        return str(target[0])
    return None


def local_stack_id(stack_name: str, region: str) -> str:
    """The fixed stack id the local template sees (local rewrite 8): the same for the same name and region."""
    suffix = uuid.uuid5(uuid.NAMESPACE_URL, f"trashsorter-local:{region}:{stack_name}")
    return f"arn:aws:cloudformation:{region}:{LOCAL_ACCOUNT}:stack/{stack_name}/{suffix}"


def _stable_names(resources: dict[str, Any], stack_name: str, stack_id: str) -> dict[str, Any]:
    """Local rewrite 8 on the translated resources (see the module docstring)."""

    def replace(node: Any) -> Any:
        if isinstance(node, dict):
            if node == {"Ref": "AWS::StackId"}:
                return stack_id
            return {key: replace(value) for key, value in node.items()}
        if isinstance(node, list):
            return [replace(value) for value in node]
        return node

    replaced: dict[str, Any] = replace(resources)
    for lid, res in replaced.items():
        if res["Type"] == "AWS::DynamoDB::Table":
            res.setdefault("Properties", {}).setdefault("TableName", f"{stack_name}-{lid}")
    return replaced


def build_local_template(
    template: Mapping[str, Any],
    parameters: Mapping[str, str],
    *,
    region: str = "us-east-1",
    stack_name: str | None = None,
) -> LocalTemplate:
    """Translate the SAM template and apply the local rewrites (module docstring); rewrite 8 (stable names)
    only when ``stack_name`` is given. The translation is a pure function of its inputs, so a result is
    remembered per input (a stack per test translates once) and every caller gets its own copy."""
    key = json.dumps([template, dict(parameters), region, stack_name], sort_keys=True)
    built = _BUILT.get(key)
    if built is None:
        built = _BUILT[key] = _translate(template, parameters, region=region, stack_name=stack_name)
    return copy.deepcopy(built)


_BUILT: dict[str, LocalTemplate] = {}


def _translate(
    template: Mapping[str, Any], parameters: Mapping[str, str], *, region: str, stack_name: str | None
) -> LocalTemplate:
    from samtranslator.translator.transform import transform

    sam = copy.deepcopy(dict(template))
    resources = sam["Resources"]
    globals_function = sam.get("Globals", {}).get("Function", {})
    for logical_id, resource in resources.items():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::Serverless::Function":
            props["CodeUri"] = f"s3://{_CODE_BUCKET}/{logical_id}.zip"
        elif resource["Type"] == "AWS::Serverless::LayerVersion":
            props["ContentUri"] = f"s3://{_CODE_BUCKET}/{logical_id}.zip"

    class _NoManagedPolicies:
        def load(self) -> dict[str, str]:
            return {}

    previous_region = os.environ.get("AWS_DEFAULT_REGION")
    os.environ["AWS_DEFAULT_REGION"] = region
    try:
        cfn: dict[str, Any] = transform(sam, dict(parameters), _NoManagedPolicies())
    finally:
        if previous_region is None:
            os.environ.pop("AWS_DEFAULT_REGION", None)
        else:
            os.environ["AWS_DEFAULT_REGION"] = previous_region
    cfn = json.loads(json.dumps(cfn, default=str))
    if stack_name:  # 8. stable names for the persisted resources
        cfn["Resources"] = _stable_names(cfn["Resources"], stack_name, local_stack_id(stack_name, region))
    out_resources: dict[str, Any] = cfn["Resources"]

    functions: dict[str, FunctionSpec] = {}
    env_outputs: dict[tuple[str, str], str] = {}
    outputs: dict[str, Any] = cfn.setdefault("Outputs", {})
    mirrors: dict[str, str] = {}

    for logical_id, resource in _sam_functions(template).items():
        props = resource.get("Properties", {})
        translated = out_resources[logical_id]["Properties"]
        env = translated.get("Environment", {}).get("Variables", {})
        sources: list[EventSource] = []
        for event_name, event in props.get("Events", {}).items():
            event_props = event.get("Properties", {})
            if event["Type"] == "SQS":
                queue = _getatt_target(event_props.get("Queue"))
                if queue is None:
                    raise ConfigurationError(f"{logical_id}.{event_name}: SQS Queue must be !GetAtt X.Arn")
                sources.append(
                    EventSource(
                        kind="sqs",
                        name=event_name,
                        queue_logical_id=queue,
                        batch_size=int(event_props.get("BatchSize", 10)),
                        partial_batch="ReportBatchItemFailures"
                        in event_props.get("FunctionResponseTypes", []),
                    )
                )
            elif event["Type"] in _RULE_EVENT_TYPES:
                rule_id = f"{logical_id}{event_name}"
                mirror_id = f"{rule_id}LocalMirror"
                mirrors[rule_id] = mirror_id
                sources.append(
                    EventSource(
                        kind="rule", name=event_name, queue_logical_id=mirror_id, rule_logical_id=rule_id
                    )
                )
            else:
                raise ConfigurationError(
                    f"{logical_id}.{event_name}: event type {event['Type']} has no local equivalent yet"
                )
        for index, (var, expression) in enumerate(sorted(env.items())):
            key = _ENV_OUTPUT.format(fn=logical_id, index=index)
            outputs[key] = {"Value": expression}
            env_outputs[(logical_id, var)] = key
        functions[logical_id] = FunctionSpec(
            logical_id=logical_id,
            code_dir=REPO_ROOT / str(resource["Properties"]["CodeUri"]).rstrip("/"),
            handler=str(props.get("Handler", "app.handler")),
            environment_expressions=env,
            sources=tuple(sources),
            timeout=int(props.get("Timeout", globals_function.get("Timeout", 3))),
        )

    # 2. rules that target functions -> mirror queues
    for rule_id, mirror_id in mirrors.items():
        rule = out_resources.get(rule_id)
        if rule is None or rule["Type"] != "AWS::Events::Rule":
            raise ConfigurationError(f"expected SAM to generate rule {rule_id}")
        mirror: dict[str, Any] = {"Type": "AWS::SQS::Queue", "Properties": {"VisibilityTimeout": 60}}
        new_targets = []
        for target in rule["Properties"].get("Targets", []):
            dead_letter = target.get("DeadLetterConfig", {}).get("Arn")
            retries = target.get("RetryPolicy", {}).get("MaximumRetryAttempts", 2)
            if dead_letter is not None:
                mirror["Properties"]["RedrivePolicy"] = {
                    "deadLetterTargetArn": dead_letter,
                    "maxReceiveCount": int(retries) + 1,
                }
            new_targets.append({"Id": "LocalMirror", "Arn": {"Fn::GetAtt": [mirror_id, "Arn"]}})
        rule["Properties"]["Targets"] = new_targets
        out_resources[mirror_id] = mirror
        outputs[f"{mirror_id}Url"] = {"Value": {"Ref": mirror_id}}

    # 1. drop what moto cannot run
    dropped = {lid for lid, res in out_resources.items() if res["Type"] in _DROPPED_TYPES}
    for lid in dropped:
        del out_resources[lid]
    for output in outputs.values():
        ref = output.get("Value", {})
        if isinstance(ref, dict) and ref.get("Ref") in dropped:
            output["Value"] = ref["Ref"]  # the local "function name" is its logical id

    # 6. Ref to an event bus -> its Name expression
    bus_names = {
        lid: res["Properties"]["Name"]
        for lid, res in out_resources.items()
        if res["Type"] == "AWS::Events::EventBus" and "Name" in res.get("Properties", {})
    }
    cfn["Resources"] = out_resources = _replace_bus_refs(out_resources, bus_names)
    cfn["Outputs"] = outputs = _replace_bus_refs(outputs, bus_names)

    # 5. resources moto's CloudFormation lacks -> applied after creation
    applied_after: dict[str, dict[str, Any]] = {}
    value_outputs: dict[str, str] = {}
    for lid in [lid for lid, res in out_resources.items() if res["Type"] in _APPLIED_AFTER]:
        resource = out_resources.pop(lid)
        applied_after[lid] = _placeholders(resource, outputs, value_outputs)

    # 3. bucket properties moto's CloudFormation ignores, applied after creation
    bucket_properties: dict[str, dict[str, Any]] = {}
    for lid, res in out_resources.items():
        if res["Type"] == "AWS::S3::Bucket":
            props = res.get("Properties", {})
            taken = {name: props.pop(name) for name in BUCKET_PROPERTIES_AFTER if name in props}
            bucket_properties[lid] = _placeholders(taken, outputs, value_outputs)

    return LocalTemplate(
        cloudformation=cfn,
        functions=functions,
        bucket_properties=bucket_properties,
        mirrors=mirrors,
        parameters=dict(parameters),
        env_outputs=env_outputs,
        applied_after=applied_after,
        value_outputs=value_outputs,
    )


def _replace_bus_refs(node: Any, bus_names: Mapping[str, Any]) -> Any:
    if isinstance(node, dict):
        if set(node) == {"Ref"} and node["Ref"] in bus_names:
            return copy.deepcopy(bus_names[node["Ref"]])
        return {key: _replace_bus_refs(value, bus_names) for key, value in node.items()}
    if isinstance(node, list):
        return [_replace_bus_refs(value, bus_names) for value in node]
    return node


def _is_intrinsic(node: Any) -> bool:
    return (
        isinstance(node, dict)
        and len(node) == 1
        and (next(iter(node)) == "Ref" or next(iter(node)).startswith("Fn::"))
    )


def _placeholders(node: Any, outputs: dict[str, Any], value_outputs: dict[str, str]) -> Any:
    """Replace every intrinsic in ``node`` by a placeholder resolved later from a stack output."""
    if _is_intrinsic(node):
        placeholder = f"@@local-value-{len(value_outputs)}@@"
        key = _VALUE_OUTPUT.format(index=len(value_outputs))
        outputs[key] = {"Value": node}
        value_outputs[placeholder] = key
        return placeholder
    if isinstance(node, dict):
        return {key: _placeholders(value, outputs, value_outputs) for key, value in node.items()}
    if isinstance(node, list):
        return [_placeholders(value, outputs, value_outputs) for value in node]
    return node


def resolve_placeholders(node: Any, values: Mapping[str, str]) -> Any:
    if isinstance(node, str) and node in values:
        return values[node]
    if isinstance(node, dict):
        return {key: resolve_placeholders(value, values) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve_placeholders(value, values) for value in node]
    return node
