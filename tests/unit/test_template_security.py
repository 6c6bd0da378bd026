"""Security properties of template.yaml, read from the template itself (after the SAM transform).

* buckets: public access blocked, SSE on, a TLS-only bucket policy;
* queues, topic and table encrypted with the stack's KMS key (rotation on);
* IAM: no ``"*"`` resource where a named resource is possible - every wildcard statement is in
  :data:`WILDCARD_ALLOWLIST` with its reason, and its actions have no resource-level permissions;
* no wildcard actions, no ``Allow`` to ``Principal: "*"``, service principals bound to this account;
* no AWS keys or private keys anywhere in the repository.

docs/security.md explains the same allowlist for people; checkov (``make security``) runs in CI on top.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from trashsorter_cli.local.template import load_template, parameter_values

ROOT = Path(__file__).resolve().parents[2]

# (resource logical id, statement Sid) -> why "*" is the narrowest possible resource there.
WILDCARD_ALLOWLIST: dict[tuple[str, str], str] = {
    ("TrainingRole", "EcrAuthorizationToken"): (
        "ecr:GetAuthorizationToken has no resource-level permissions (IAM: resource type '*' only)"
    ),
    ("TrainingRole", "TrainingMetrics"): (
        "cloudwatch:PutMetricData has no resource-level permissions; limited by the cloudwatch:namespace "
        "condition to /aws/sagemaker/TrainingJobs"
    ),
    ("PackageFunctionRole", "ListEdgeDeploymentsAndCoreDevices"): (
        "greengrass:ListDeployments and greengrass:ListCoreDevices have no resource-level permissions (IAM: "
        "resource type '*' only); only with EdgeThingGroupArn, and the function lists only that group's "
        "deployments (targetArn) and core devices (thingGroupArn)"
    ),
    ("EncryptionKey", "AccountAdmin"): (
        "KMS key policy: Resource '*' means 'this key'; the account root delegates to IAM "
        "(AWS default policy)"
    ),
    **{
        ("EncryptionKey", sid): (
            "KMS key policy: Resource '*' means 'this key'; the service must encrypt what it delivers to the "
            "stack's encrypted queues and topic, bound by aws:SourceAccount and aws:SourceArn"
        )
        for sid in (
            "S3NotificationsEncrypted",
            "EventBridgeDeadLettersEncrypted",
            "SnsTopicEncrypted",
            "CloudWatchAlarmsEncrypted",
            "FunctionLogsEncrypted",
        )
    },
}
# Actions that IAM documents without any resource type: only these may sit on a "*" role statement.
ACTIONS_WITHOUT_RESOURCES = {
    "ecr:GetAuthorizationToken",
    "cloudwatch:PutMetricData",
    "greengrass:ListCoreDevices",
    "greengrass:ListDeployments",
}
# AWS managed policies SAM attaches (logging, X-Ray, the SQS poller); they are reviewed by AWS.
ALLOWED_MANAGED_POLICIES = {
    "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
    "arn:aws:iam::aws:policy/AWSXrayWriteOnlyAccess",
    "arn:aws:iam::aws:policy/service-role/AWSLambdaSQSQueueExecutionRole",
}


@cache
def translated() -> dict[str, Any]:
    """template.yaml after the SAM transform (policy templates expanded), as CloudFormation would see it."""
    from samtranslator.translator.transform import transform

    template = load_template(ROOT / "template.yaml")
    sam = copy.deepcopy(template)
    for logical_id, resource in sam["Resources"].items():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::Serverless::Function":
            props["CodeUri"] = f"s3://code-bucket/{logical_id}.zip"
        elif resource["Type"] == "AWS::Serverless::LayerVersion":
            props["ContentUri"] = f"s3://code-bucket/{logical_id}.zip"

    class _NoManagedPolicyLookup:
        def load(self) -> dict[str, str]:
            return {}

    saved = os.environ.get("AWS_DEFAULT_REGION")
    os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
    try:
        cfn: dict[str, Any] = transform(sam, parameter_values(template), _NoManagedPolicyLookup())
    finally:
        if saved is None:
            os.environ.pop("AWS_DEFAULT_REGION", None)
        else:
            os.environ["AWS_DEFAULT_REGION"] = saved
    result: dict[str, Any] = json.loads(json.dumps(cfn, default=str))
    return result


def resources_of(kind: str) -> dict[str, dict[str, Any]]:
    return {lid: res for lid, res in translated()["Resources"].items() if res["Type"] == kind}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def target_of(value: Any) -> str | None:
    """The logical id behind a Ref / GetAtt / Sub expression (None for literals)."""
    if isinstance(value, dict):
        if "Ref" in value:
            return str(value["Ref"])
        if "Fn::GetAtt" in value:
            target = value["Fn::GetAtt"]
            return (target.split(".")[0] if isinstance(target, str) else str(target[0])) or None
        if "Fn::Sub" in value:
            text = value["Fn::Sub"] if isinstance(value["Fn::Sub"], str) else value["Fn::Sub"][0]
            found = re.search(r"\$\{([A-Za-z0-9]+)(?:\.Arn)?\}", text)
            return found.group(1) if found else None
    return None


def unwrap_conditional(statement: dict[str, Any]) -> list[dict[str, Any]]:
    """A statement, or the statement inside ``!If [Cond, statement, !Ref AWS::NoValue]``."""
    if "Fn::If" not in statement:
        return [statement]
    return [s for s in statement["Fn::If"][1:] if isinstance(s, dict) and s != {"Ref": "AWS::NoValue"}]


def iam_statements() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(owner logical id, policy name, statement) for every identity and key policy statement."""
    for lid, role in resources_of("AWS::IAM::Role").items():
        for policy in role["Properties"].get("Policies", []):
            for wrapped in as_list(policy["PolicyDocument"]["Statement"]):
                for statement in unwrap_conditional(wrapped):
                    yield lid, policy["PolicyName"], statement
    for kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
        for lid, res in resources_of(kind).items():
            for statement in as_list(res["Properties"]["PolicyDocument"]["Statement"]):
                yield lid, lid, statement
    for lid, key in resources_of("AWS::KMS::Key").items():
        for statement in as_list(key["Properties"]["KeyPolicy"]["Statement"]):
            yield lid, "KeyPolicy", statement


def resource_policy_statements() -> Iterator[tuple[str, dict[str, Any]]]:
    for kind in ("AWS::S3::BucketPolicy", "AWS::SQS::QueuePolicy", "AWS::SNS::TopicPolicy"):
        for lid, res in resources_of(kind).items():
            for statement in as_list(res["Properties"]["PolicyDocument"]["Statement"]):
                yield lid, statement


# ------------------------------------------------------------------------------------------- storage


def test_every_bucket_blocks_public_access_encrypts_and_is_owner_enforced() -> None:
    buckets = resources_of("AWS::S3::Bucket")
    assert set(buckets) == {"ImagesBucket", "DeepLensBucket"}
    for lid, bucket in buckets.items():
        props = bucket["Properties"]
        block = props["PublicAccessBlockConfiguration"]
        assert block == {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        }, lid
        rules = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        assert rules and all(
            r["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms", "aws:kms:dsse")
            for r in rules
        ), lid
        assert props["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}], lid
        assert props["VersioningConfiguration"]["Status"] == "Enabled", lid


def test_every_bucket_policy_denies_plain_http_for_bucket_and_objects() -> None:
    buckets = set(resources_of("AWS::S3::Bucket"))
    covered: set[str] = set()
    for lid, policy in resources_of("AWS::S3::BucketPolicy").items():
        bucket = target_of(policy["Properties"]["Bucket"])
        assert bucket in buckets, lid
        for statement in as_list(policy["Properties"]["PolicyDocument"]["Statement"]):
            condition = statement.get("Condition", {}).get("Bool", {})
            if statement["Effect"] == "Deny" and condition.get("aws:SecureTransport") in ("false", False):
                assert statement["Principal"] == "*", lid
                assert as_list(statement["Action"]) == ["s3:*"], lid
                arns = [json.dumps(r) for r in as_list(statement["Resource"])]
                assert any(a.endswith('Arn"]}') or a.endswith('.Arn"}') for a in arns), arns  # the bucket
                assert any("/*" in a for a in arns), arns  # and every object in it
                assert all(bucket in a for a in arns), arns
                covered.add(str(bucket))
    assert covered == buckets, f"buckets without a TLS-only policy: {sorted(buckets - covered)}"


def test_queues_topic_and_table_are_encrypted_with_the_rotating_stack_key() -> None:
    keys = resources_of("AWS::KMS::Key")
    assert all(key["Properties"]["EnableKeyRotation"] is True for key in keys.values())
    queues = resources_of("AWS::SQS::Queue")
    assert len(queues) >= 4
    for lid, queue in queues.items():
        assert target_of(queue["Properties"].get("KmsMasterKeyId")) in keys, f"{lid} is not KMS-encrypted"
    for lid, topic in resources_of("AWS::SNS::Topic").items():
        assert target_of(topic["Properties"].get("KmsMasterKeyId")) in keys, f"{lid} is not KMS-encrypted"
    for lid, table in resources_of("AWS::DynamoDB::Table").items():
        sse = table["Properties"]["SSESpecification"]
        assert sse["SSEEnabled"] is True and sse["SSEType"] == "KMS", lid
        assert target_of(sse["KMSMasterKeyId"]) in keys, lid
        assert table["Properties"]["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True


def test_every_queue_that_a_service_feeds_has_a_dead_letter_queue() -> None:
    queues = resources_of("AWS::SQS::Queue")
    dead_letter_targets = {
        target_of(q["Properties"]["RedrivePolicy"]["deadLetterTargetArn"])
        for q in queues.values()
        if "RedrivePolicy" in q["Properties"]
    }
    assert "IngestDLQ" in dead_letter_targets
    assert queues["IngestQueue"]["Properties"]["RedrivePolicy"]["maxReceiveCount"] >= 1
    rules = resources_of("AWS::Events::Rule")
    for lid, rule in rules.items():
        for target in rule["Properties"]["Targets"]:
            assert target_of(target["DeadLetterConfig"]["Arn"]) in queues, f"{lid} target has no DLQ"


# ----------------------------------------------------------------------------------------------- IAM


def test_no_wildcard_resource_unless_allowlisted_with_a_reason() -> None:
    offenders = []
    for owner, _policy, statement in iam_statements():
        if statement.get("Effect") != "Allow":
            continue
        if "*" not in as_list(statement.get("Resource", [])):
            continue
        sid = statement.get("Sid", "")
        if (owner, sid) not in WILDCARD_ALLOWLIST:
            offenders.append(f"{owner}/{sid or '<no Sid>'}: {statement['Action']}")
            continue
        if owner in resources_of("AWS::IAM::Role"):
            scoped = set(as_list(statement["Action"])) - ACTIONS_WITHOUT_RESOURCES
            assert not scoped, f"{owner}/{sid}: {sorted(scoped)} support resource ARNs; name them"
    assert not offenders, "statements with Resource '*' where a named resource is possible: " + "; ".join(
        offenders
    )


def test_wildcard_allowlist_has_no_stale_entries_and_every_reason_is_documented() -> None:
    present = {(owner, statement.get("Sid", "")) for owner, _p, statement in iam_statements()}
    stale = set(WILDCARD_ALLOWLIST) - present
    assert not stale, f"allowlisted statements no longer in template.yaml: {sorted(stale)}"
    security_doc = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    for _owner, sid in WILDCARD_ALLOWLIST:
        assert sid in security_doc, f"docs/security.md does not explain the '*' of {sid}"


def test_no_wildcard_actions_outside_the_key_admin_statement() -> None:
    for owner, _policy, statement in iam_statements():
        if statement.get("Effect") != "Allow" or (owner, statement.get("Sid")) == (
            "EncryptionKey",
            "AccountAdmin",
        ):
            continue
        for action in as_list(statement["Action"]):
            assert action != "*" and not action.endswith(":*"), f"{owner}/{statement.get('Sid')}: {action}"


def test_only_aws_reviewed_managed_policies_are_attached() -> None:
    for lid, role in resources_of("AWS::IAM::Role").items():
        attached = set(role["Properties"].get("ManagedPolicyArns", []))
        assert attached <= ALLOWED_MANAGED_POLICIES, f"{lid}: {sorted(attached - ALLOWED_MANAGED_POLICIES)}"


def test_pass_role_is_limited_to_the_training_role_and_sagemaker() -> None:
    found = 0
    for owner, _policy, statement in iam_statements():
        if "iam:PassRole" in as_list(statement.get("Action", [])):
            found += 1
            assert target_of(statement["Resource"]) == "TrainingRole", owner
            assert statement["Condition"]["StringEquals"]["iam:PassedToService"] == "sagemaker.amazonaws.com"
    assert found == 1


def test_resource_policies_never_allow_everyone_and_bind_services_to_this_account() -> None:
    for lid, statement in resource_policy_statements():
        if statement["Effect"] != "Allow":
            continue
        principal = statement["Principal"]
        assert principal != "*" and principal != {"AWS": "*"}, f"{lid} allows everyone"
        assert set(principal) == {"Service"}, lid
        conditions = json.dumps(statement.get("Condition", {}))
        assert "aws:SourceAccount" in conditions or "aws:SourceArn" in conditions, (
            f"{lid}: a service principal without aws:SourceAccount/SourceArn (confused deputy)"
        )


def test_kms_service_grants_are_limited_to_encrypting_deliveries() -> None:
    for lid, key in resources_of("AWS::KMS::Key").items():
        for statement in as_list(key["Properties"]["KeyPolicy"]["Statement"]):
            principal = statement["Principal"]
            assert principal != "*" and principal != {"AWS": "*"}, lid
            if statement.get("Sid") == "FunctionLogsEncrypted":  # CloudWatch Logs' documented key grant
                logs_arn = json.dumps(statement["Condition"]["ArnLike"]["kms:EncryptionContext:aws:logs:arn"])
                assert "log-group:/aws/lambda/${AWS::StackName}-*" in logs_arn
            elif "Service" in principal:
                assert set(as_list(statement["Action"])) <= {"kms:GenerateDataKey", "kms:Decrypt"}


def test_functions_trace_and_carry_no_secrets_in_their_environment() -> None:
    functions = resources_of("AWS::Lambda::Function")
    assert len(functions) == 3
    for lid, function in functions.items():
        assert function["Properties"]["TracingConfig"]["Mode"] == "Active", lid
        env = function["Properties"].get("Environment", {}).get("Variables", {})
        for name in env:
            assert not re.search(r"SECRET|PASSWORD|ACCESS_KEY|PRIVATE|TOKEN", name), f"{lid}: {name}"


# ------------------------------------------------------------------------------------------- secrets

_AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z2-7]{16}\b")
_AWS_SECRET = re.compile(r"(?i)aws.{0,20}secret.{0,20}['\"=:\s]\s*['\"]?([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])")
_PRIVATE_KEY = re.compile("-----BEGIN (?:RSA |EC |OPENSSH |DSA )?" + "PRIVATE KEY-----")


def repository_text_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    files = []
    for raw in listed:
        if not raw:
            continue
        path = ROOT / raw.decode()
        if (
            path.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp", ".onnx", ".gz", ".zip"}
            or not path.is_file()
        ):
            continue
        files.append(path)
    return files


def find_secrets(text: str) -> list[str]:
    hits = [m.group(0) for m in _AWS_KEY_ID.finditer(text)]
    hits += [m.group(1) for m in _AWS_SECRET.finditer(text)]
    hits += [m.group(0) for m in _PRIVATE_KEY.finditer(text)]
    return hits


def test_secret_patterns_catch_real_looking_keys() -> None:
    # AWS's documented example credentials (docs.aws.amazon.com), assembled so this file holds none.
    key_id = "AKIA" + "IOSFODNN7" + "EXAMPLE"
    secret = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYEXAMPLEKEY"
    assert find_secrets(f'aws_access_key_id = "{key_id}"') == [key_id]
    assert find_secrets(f"AWS_SECRET_ACCESS_KEY={secret}") == [secret]
    assert find_secrets("-----BEGIN RSA " + "PRIVATE KEY-----\nMII...") != []
    assert find_secrets('AWS_ACCESS_KEY_ID="testing" AWS_SECRET_ACCESS_KEY="testing"') == []


def test_no_aws_keys_or_private_keys_in_the_repository() -> None:
    files = repository_text_files()
    assert any(p.name == "template.yaml" for p in files)
    found = {}
    for path in files:
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        hits = find_secrets(data.decode("utf-8", errors="replace"))
        if hits:
            found[str(path.relative_to(ROOT))] = hits
    assert not found, f"possible secrets committed: {found}"


# ------------------------------------------------------------ bounded validation and hardening items


def key_service_statements() -> list[dict[str, Any]]:
    """The key policy's grants to services that deliver into the stack's queues and topic."""
    key = resources_of("AWS::KMS::Key")["EncryptionKey"]
    statements = key["Properties"]["KeyPolicy"]["Statement"]
    return [st for st in statements if "Service" in st["Principal"] and st["Sid"] != "FunctionLogsEncrypted"]


def test_kms_grants_to_services_are_bound_to_this_account_and_this_stacks_resources() -> None:
    statements = key_service_statements()
    services = {st["Principal"]["Service"] for st in statements}
    assert services == {
        "s3.amazonaws.com",
        "events.amazonaws.com",
        "sns.amazonaws.com",
        "cloudwatch.amazonaws.com",
    }
    for statement in statements:
        condition = statement["Condition"]
        assert condition["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}, statement["Sid"]
        source_arn = json.dumps(condition.get("ArnEquals", condition.get("ArnLike", {})).get("aws:SourceArn"))
        assert "AWS::AccountId" in source_arn or "trashsorter-images-" in source_arn, statement["Sid"]
        assert "AWS::StackName" in source_arn or "AWS::StackId" in source_arn, statement["Sid"]


def test_eventbridge_dead_letter_policy_names_exactly_the_rules_that_dead_letter() -> None:
    policy = resources_of("AWS::SQS::QueuePolicy")["StartTrainingDLQPolicy"]
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
    arns = statement["Condition"]["ArnEquals"]["aws:SourceArn"]
    rules = resources_of("AWS::Events::Rule")
    dead_lettering = {
        rule_id
        for rule_id, rule in rules.items()
        if any("DeadLetterConfig" in target for target in rule["Properties"]["Targets"])
    }
    assert (
        {target_of(arn) for arn in arns}
        == dead_lettering
        == {
            "StartTrainingFunctionDatasetReady",
            "StartTrainingFunctionReconcileSchedule",
            "PackageFunctionTrainingJobStateChange",
            "PackageFunctionTrainingJobReconciled",
            "PackageFunctionCoreDeviceDeploymentStatusChange",
            "PackageFunctionCoreDeviceResultsCheck",
        }
    )
    for rule_id in dead_lettering:
        (target,) = rules[rule_id]["Properties"]["Targets"]
        assert target_of(target["DeadLetterConfig"]["Arn"]) in {"StartTrainingDLQ", "PackageDLQ"}


def test_eventbridge_invoked_functions_send_failed_events_to_their_dlq() -> None:
    """Async invocations that fail after Lambda's two retries are kept, not dropped (CKV_AWS_116)."""
    functions = resources_of("AWS::Lambda::Function")
    wanted = {"StartTrainingFunction": "StartTrainingDLQ", "PackageFunction": "PackageDLQ"}
    for lid, dlq in wanted.items():
        assert target_of(functions[lid]["Properties"]["DeadLetterConfig"]["TargetArn"]) == dlq
        sends = [
            st
            for _owner, _p, st in iam_statements()
            if _owner == f"{lid}Role" and "sqs:SendMessage" in as_list(st["Action"])
        ]
        assert sends and all(target_of(st["Resource"]) == dlq for st in sends), lid
    # ingest is invoked synchronously by its SQS event source; the queue's redrive policy is its DLQ
    assert "DeadLetterConfig" not in functions["IngestFunction"]["Properties"]


def test_versioned_buckets_expire_noncurrent_versions() -> None:
    for lid, bucket in resources_of("AWS::S3::Bucket").items():
        props = bucket["Properties"]
        assert props["VersioningConfiguration"]["Status"] == "Enabled", lid
        rules = props["LifecycleConfiguration"]["Rules"]
        expiring = [r for r in rules if r["Status"] == "Enabled" and "NoncurrentVersionExpiration" in r]
        assert expiring, lid
        assert expiring[0]["NoncurrentVersionExpiration"]["NoncurrentDays"] == {
            "Ref": "NoncurrentVersionDays"
        }


def test_greengrass_statements_exist_only_when_configured_and_name_the_configured_group() -> None:
    role = resources_of("AWS::IAM::Role")["PackageFunctionRole"]
    wrapped = [
        st
        for policy in role["Properties"]["Policies"]
        for st in as_list(policy["PolicyDocument"]["Statement"])
    ]
    greengrass = [
        st for st in wrapped if "greengrass" in json.dumps(st) or "EdgeThingGroup" in json.dumps(st)
    ]
    assert len(greengrass) == 6
    for statement in greengrass:
        condition, configured, otherwise = statement["Fn::If"]
        assert otherwise == {"Ref": "AWS::NoValue"}
        resources = json.dumps(configured["Resource"])
        assert "greengrass/*" not in resources and "thinggroup/*" not in resources, configured["Sid"]
        if configured["Sid"] == "DeployToDeepLensGroup":
            assert condition == "HasDeepLensGroup" and "${DeepLensGroupId}" in resources
        elif configured["Sid"] in ("PublishEdgeComponent", "DeployEdgeThingGroupJobs"):
            assert condition == "HasEdgeThingGroup" and {"Ref": "EdgeThingGroupArn"} in configured["Resource"]
        elif configured["Sid"] == "ReadEdgeCoreDeviceResults":
            assert condition == "HasEdgeThingGroup" and "coreDevices:" in resources
        elif configured["Sid"] == "ListEdgeDeploymentsAndCoreDevices":
            assert condition == "HasEdgeThingGroup" and configured["Action"] == [
                "greengrass:ListDeployments",
                "greengrass:ListCoreDevices",
            ]
        else:
            assert condition == "HasDeepLensGroup" and configured["Sid"] == "DeepLensDefinitions"
    conditions = load_template(ROOT / "template.yaml")["Conditions"]
    assert conditions["HasDeepLensGroup"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "DeepLensGroupId"}, ""]}]}
    assert conditions["HasEdgeThingGroup"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "EdgeThingGroupArn"}, ""]}]
    }


def test_algorithm_image_pulls_name_the_regions_registry_accounts_from_the_generated_tables() -> None:
    data = ROOT / "layers/trashsorter/python/trashsorter/data"
    builtin = json.loads((data / "image_classification_uris.json").read_text())["regions"]
    pytorch = json.loads((data / "pytorch_training_uris.json").read_text())["regions"]
    mapping = load_template(ROOT / "template.yaml")["Mappings"]["AlgorithmRegistry"]
    assert {region: row["Account"] for region, row in mapping.items()} == {
        region: row["account"] for region, row in builtin.items()
    }
    assert {region: row["PyTorch"] for region, row in mapping.items()} == {
        region: pytorch[region]["account"] for region in builtin
    }
    (pull,) = [
        st
        for owner, _p, st in iam_statements()
        if owner == "TrainingRole" and st.get("Sid") == "PullAlgorithmImage"
    ]
    pulls = {}
    for resource in pull["Resource"]:
        text, variables = resource["Fn::Sub"]
        assert "*" not in text
        pulls[text.rsplit("/", 1)[1]] = variables["Registry"]["Fn::FindInMap"][2]
    assert pulls == {"image-classification": "Account", "pytorch-training": "PyTorch"}


def test_every_dlq_has_an_alarm_to_the_notices_topic() -> None:
    queues = resources_of("AWS::SQS::Queue")
    dlqs = {lid for lid in queues if lid.endswith("DLQ")}
    assert dlqs == {"IngestDLQ", "StartTrainingDLQ", "PackageDLQ"}
    alarms = resources_of("AWS::CloudWatch::Alarm")
    watched = {}
    for lid, alarm in alarms.items():
        props = alarm["Properties"]
        assert props["MetricName"] == "ApproximateNumberOfMessagesVisible" and props["Namespace"] == "AWS/SQS"
        assert props["Threshold"] == 0 and props["ComparisonOperator"] == "GreaterThanThreshold"
        assert [target_of(a) for a in props["AlarmActions"]] == ["NoticesTopic"], lid
        (dimension,) = props["Dimensions"]
        watched[target_of(dimension["Value"])] = lid
    assert set(watched) == dlqs


def test_every_function_logs_json_to_its_own_log_group_with_retention() -> None:
    groups = resources_of("AWS::Logs::LogGroup")
    used = set()
    for lid, function in resources_of("AWS::Lambda::Function").items():
        logging = function["Properties"]["LoggingConfig"]
        assert logging["LogFormat"] == "JSON", lid
        group = target_of(logging["LogGroup"])
        assert group in groups, lid
        assert groups[group]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
        assert target_of(groups[group]["Properties"]["KmsKeyId"]) == "EncryptionKey"
        used.add(group)
    assert used == set(groups) and len(used) == 3


CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"


def test_checkov_passes_on_the_transformed_template_with_the_same_justified_skips(tmp_path: Path) -> None:
    """checkov cannot see inside ``AWS::Serverless::Function``; here it reads the SAM output instead."""
    if not CHECKOV.exists():
        pytest.skip("checkov is not installed (`make security` installs it into .venv-checkov)")
    config = (ROOT / ".checkov.yaml").read_text(encoding="utf-8")
    skips = re.findall(r"^\s+- (CKV\w+)", config, flags=re.MULTILINE)
    assert "CKV_AWS_116" in skips
    path = tmp_path / "transformed.json"
    path.write_text(json.dumps(translated()), encoding="utf-8")
    args = ["-f", str(path), "--framework", "cloudformation", "--compact", "--quiet", "--skip-download"]
    done = subprocess.run(
        [str(CHECKOV), *args, "--skip-check", ",".join(skips), "-o", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    report = json.loads(done.stdout)
    summary = report["summary"]
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert summary["failed"] == 0 and not failed, failed
    assert summary["passed"] >= 60  # the functions, roles and policies were really read
    assert len(resources_of("AWS::Lambda::Function")) == 3


def test_optional_training_key_is_granted_only_when_configured() -> None:
    template = load_template(ROOT / "template.yaml")
    env = template["Resources"]["StartTrainingFunction"]["Properties"]["Environment"]["Variables"]
    assert env["TRAINING_KMS_KEY_ARN"] == {"Ref": "TrainingKmsKeyArn"}
    policy = resources_of("AWS::IAM::Policy")["TrainingKeyPolicy"]
    assert policy["Condition"] == "HasTrainingKmsKey"
    assert [target_of(r) for r in policy["Properties"]["Roles"]] == ["TrainingRole"]
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Resource"] == {"Ref": "TrainingKmsKeyArn"}
    assert template["Conditions"]["HasTrainingKmsKey"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "TrainingKmsKeyArn"}, ""]}]
    }


def test_edge_device_policy_grants_only_artifacts_and_inbox_and_only_with_a_thing_group() -> None:
    policy = resources_of("AWS::IAM::ManagedPolicy")["EdgeDevicePolicy"]
    assert policy["Condition"] == "HasEdgeThingGroup"
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    grants = {st["Sid"]: (st["Action"], json.dumps(st["Resource"])) for st in statements}
    assert grants["ReadComponentArtifacts"][0] == "s3:GetObject"
    assert "${DeepLensBucket}/models/*" in grants["ReadComponentArtifacts"][1]
    assert grants["UploadUnsureFrames"][0] == "s3:PutObject"
    # each device writes under its own thing's prefix only (the key layout of trashsorter_edge.inbox)
    assert "${ImagesBucket}/inbox/${!credentials-iot:ThingName}/*" in grants["UploadUnsureFrames"][1]
    assert set(grants) == {"ReadComponentArtifacts", "UploadUnsureFrames"}  # no KMS: devices use no stack key
    assert all("*" not in json.dumps(st["Action"]) for st in statements)


def test_snapshot_objects_expire_only_when_tagged_unregistered_and_the_functions_can_tag_them() -> None:
    from trashsorter.dataset_store import RETENTION_REGISTERED, RETENTION_SNAPSHOT, RETENTION_TAG
    from trashsorter_edge.contract import OBJECTS_PREFIX

    rules = resources_of("AWS::S3::Bucket")["ImagesBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    expiring = [
        r for r in rules if r["Status"] == "Enabled" and "ExpirationInDays" in r and r["Prefix"] != "inbox/"
    ]
    # one rule expires current objects of the data: the snapshot objects no registered model's dataset lists
    assert len(expiring) == 1, expiring
    (rule,) = expiring
    assert rule["Prefix"] == OBJECTS_PREFIX and rule["ExpirationInDays"] == {"Ref": "DatasetObjectDays"}
    assert (
        rule["TagFilters"]
        == [{"Key": RETENTION_TAG, "Value": RETENTION_SNAPSHOT}]
        != [{"Key": RETENTION_TAG, "Value": RETENTION_REGISTERED}]
    )
    assert parameter_values(load_template())["DatasetObjectDays"] == "60"
    # the snapshot reuses stored objects unchecked only while this same rule cannot expire them
    start = load_template(ROOT / "template.yaml")["Resources"]["StartTrainingFunction"]["Properties"]
    assert start["Environment"]["Variables"]["DATASET_OBJECT_DAYS"] == {"Ref": "DatasetObjectDays"}

    objects_arn = "arn:${AWS::Partition}:s3:::${ImagesBucket}/" + OBJECTS_PREFIX + "*"
    granted: dict[str, set[str]] = {}
    for lid, _name, statement in iam_statements():
        resources = [r.get("Fn::Sub") if isinstance(r, dict) else r for r in as_list(statement["Resource"])]
        if statement["Effect"] == "Allow" and objects_arn in resources:
            granted.setdefault(lid, set()).update(as_list(statement["Action"]))
    # the snapshot writes tagged copies and reads tags; completion retags a registered model's objects;
    # the ingest step stores each photo's copy and copies it onto itself when its last key goes
    assert granted == {
        "StartTrainingFunctionRole": {"s3:PutObjectTagging", "s3:GetObjectTagging"},
        "PackageFunctionRole": {"s3:PutObjectTagging"},
        "IngestFunctionRole": {"s3:GetObject", "s3:PutObject", "s3:GetObjectTagging", "s3:PutObjectTagging"},
    }


def test_inbox_frames_expire_and_nothing_else_shares_the_rule() -> None:
    from trashsorter_edge.contract import INBOX_PREFIX

    rules = resources_of("AWS::S3::Bucket")["ImagesBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    (inbox,) = [r for r in rules if r.get("Prefix") == INBOX_PREFIX]
    assert inbox["Status"] == "Enabled" and inbox["ExpirationInDays"] == {"Ref": "InboxDays"}
    assert "TagFilters" not in inbox  # every frame expires, whatever it is tagged
    assert parameter_values(load_template())["InboxDays"] == "30"
    current = [r for r in rules if "ExpirationInDays" in r]  # current objects: never a photo under images/
    assert {r["Prefix"] for r in current} == {INBOX_PREFIX, "datasets/objects/"}


# ------------------------------------------------------------------------------ trust boundaries (S3, bus)
def _s3_reads(role: str) -> set[str]:
    """The object ARNs (as template text) ``role`` may read (GetObject / GetObjectVersion)."""
    reads: set[str] = set()
    for lid, _policy, statement in iam_statements():
        actions = as_list(statement.get("Action", []))
        if (
            lid == role
            and statement["Effect"] == "Allow"
            and {"s3:GetObject", "s3:GetObjectVersion"} & set(actions)
        ):
            reads.update(json.dumps(resource) for resource in as_list(statement["Resource"]))
    return reads


def test_package_role_reads_only_datasets_and_training_output() -> None:
    """A "model" under images/ or inbox/ (anyone who uploads may leave one) is never readable by packaging."""
    images = [r for r in _s3_reads("PackageFunctionRole") if "ImagesBucket" in r]
    assert images and all("/datasets/*" in r or "/training-output/*" in r for r in images), images


def test_training_and_start_roles_read_no_inbox_and_training_reads_no_uploads() -> None:
    training = [r for r in _s3_reads("TrainingRole") if "ImagesBucket" in r]
    assert training and not [r for r in training if "/images/" in r or "/inbox/" in r], training
    start = [r for r in _s3_reads("StartTrainingFunctionRole") if "ImagesBucket" in r]
    assert start and not [r for r in start if "/inbox/" in r or "training-output" in r or "checkpoints" in r]


def test_edge_devices_get_no_kms_permission() -> None:
    policy = resources_of("AWS::IAM::ManagedPolicy")["EdgeDevicePolicy"]
    actions = [a for st in policy["Properties"]["PolicyDocument"]["Statement"] for a in as_list(st["Action"])]
    assert not [a for a in actions if a.startswith("kms:")], actions


def test_every_template_service_role_binds_its_service_to_this_account() -> None:
    """Roles the template writes itself (not SAM's function roles): aws:SourceAccount and aws:SourceArn."""
    written = {lid for lid, res in load_template(ROOT / "template.yaml")["Resources"].items()
               if res["Type"] == "AWS::IAM::Role"}  # fmt: skip
    assert written
    for lid in written:
        for statement in resources_of("AWS::IAM::Role")[lid]["Properties"]["AssumeRolePolicyDocument"][
            "Statement"
        ]:
            conditions = json.dumps(statement.get("Condition", {}))
            assert "aws:SourceAccount" in conditions and "aws:SourceArn" in conditions, lid


def test_only_the_start_training_role_may_put_training_job_reconciled_on_the_bus() -> None:
    policy = resources_of("AWS::Events::EventBusPolicy")["EventBusReconciledOnlyFromStartTraining"]
    statement = policy["Properties"]["Statement"]
    assert statement["Effect"] == "Deny" and statement["Principal"] == "*"
    assert statement["Action"] == "events:PutEvents" and target_of(statement["Resource"]) == "EventBus"
    assert statement["Condition"]["StringEquals"] == {"events:detail-type": "Training Job Reconciled"}
    assert (
        target_of(statement["Condition"]["ArnNotEquals"]["aws:PrincipalArn"]) == "StartTrainingFunctionRole"
    )
    assert target_of(policy["Properties"]["EventBusName"]) == "EventBus"
    # and the package function's rule for it listens on that bus only
    rule = resources_of("AWS::Events::Rule")["PackageFunctionTrainingJobReconciled"]
    assert target_of(rule["Properties"]["EventBusName"]) == "EventBus"


def test_deeplens_definition_statement_covers_only_function_and_resource_definitions() -> None:
    """The package step creates and reads only function and resource definitions (trashsorter.deploy)."""
    role = resources_of("AWS::IAM::Role")["PackageFunctionRole"]
    statements = [
        statement
        for policy in role["Properties"]["Policies"]
        for wrapped in as_list(policy["PolicyDocument"]["Statement"])
        for statement in unwrap_conditional(wrapped)
    ]
    (definitions,) = [st for st in statements if st.get("Sid") == "DeepLensDefinitions"]
    resources = [json.dumps(r) for r in as_list(definitions["Resource"])]
    kinds = ("/greengrass/definition/functions*", "/greengrass/definition/resources*")
    assert len(resources) == 2 and all(any(kind in r for kind in kinds) for r in resources), resources
    actions = [a.split(":")[1] for a in definitions["Action"]]
    assert all(("Function" in a or "Resource" in a) and "Definition" in a for a in actions), actions


# ------------------------------------------------------------------------ Greengrass v2 deployment IAM
# CreateDeployment (Greengrass v2) and the IoT actions it depends on (Service Authorization Reference,
# "Actions defined by AWS IoT Greengrass V2", CreateDeployment's dependent actions; Greengrass v2 Developer
# Guide, "Create deployments"): the service creates and manages an AWS IoT job for the thing group as the
# caller.
CREATE_DEPLOYMENT_ACTIONS = (
    "greengrass:CreateDeployment",
    "iot:CancelJob",
    "iot:CreateJob",
    "iot:DeleteThingShadow",
    "iot:DescribeJob",
    "iot:DescribeThing",
    "iot:DescribeThingGroup",
    "iot:GetThingShadow",
    "iot:UpdateJob",
    "iot:UpdateThingShadow",
)
_THING_GROUP = "arn:aws:iot:us-east-1:123456789012:thinggroup/trash-cameras"
_SUBSTITUTIONS = {
    "AWS::Partition": "aws",
    "AWS::Region": "us-east-1",
    "AWS::AccountId": "123456789012",
    "AWS::StackName": "stack",
}
# The package role's Greengrass v2 statement as it was before the IoT job actions were granted.
STATEMENTS_WITHOUT_JOB_ACTIONS = [
    {
        "Effect": "Allow",
        "Action": [
            "greengrass:CreateComponentVersion",
            "greengrass:DescribeComponent",
            "greengrass:CreateDeployment",
        ],
        "Resource": [
            {"Fn::Sub": "arn:${AWS::Partition}:greengrass:${AWS::Region}:${AWS::AccountId}:deployments*"},
            {"Ref": "EdgeThingGroupArn"},
        ],
    }
]


def _resolve(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value == {"Ref": "EdgeThingGroupArn"}:
        return _THING_GROUP
    text = value["Fn::Sub"] if isinstance(value["Fn::Sub"], str) else value["Fn::Sub"][0]
    for name, replacement in _SUBSTITUTIONS.items():
        text = text.replace("${" + name + "}", replacement)
    assert "${" not in text, text
    return text


def allowed(statements: list[dict[str, Any]], action: str, resource: str) -> bool:
    """IAM's identity-policy evaluation for Allow statements without conditions (wildcards ``*`` ``?``)."""
    from fnmatch import fnmatchcase

    for statement in statements:
        if statement["Effect"] != "Allow" or "Condition" in statement:
            continue
        actions = [a.lower() for a in as_list(statement["Action"])]
        if not any(fnmatchcase(action.lower(), pattern) for pattern in actions):
            continue
        if any(fnmatchcase(resource, _resolve(r)) for r in as_list(statement["Resource"])):
            return True
    return False


def edge_statements() -> list[dict[str, Any]]:
    """The package role's statements as they are with a thing group configured (every ``!If`` true)."""
    role = resources_of("AWS::IAM::Role")["PackageFunctionRole"]
    out = []
    for policy in role["Properties"]["Policies"]:
        for statement in as_list(policy["PolicyDocument"]["Statement"]):
            if "Fn::If" in statement:
                condition, configured, _ = statement["Fn::If"]
                if condition == "HasEdgeThingGroup":
                    out.append(configured)
            elif "Sid" in statement:
                out.append(statement)
    return out


def _deployment_requests() -> list[tuple[str, str]]:
    """(action, resource) the service authorizes for one CreateDeployment to the configured thing group."""
    job = "arn:aws:iot:us-east-1:123456789012:job/8f2b4f7e-0c1d-4e5f-9a6b-7c8d9e0f1a2b"
    thing = "arn:aws:iot:us-east-1:123456789012:thing/camera-1"
    return [
        ("greengrass:CreateDeployment", _THING_GROUP),
        ("iot:CreateJob", job),
        ("iot:CreateJob", _THING_GROUP),
        ("iot:DescribeJob", job),
        ("iot:UpdateJob", job),
        ("iot:CancelJob", job),
        ("iot:DescribeThingGroup", _THING_GROUP),
        ("iot:DescribeThing", thing),
        ("iot:GetThingShadow", thing),
        ("iot:UpdateThingShadow", thing),
        ("iot:DeleteThingShadow", thing),
    ]


def test_create_deployment_without_the_iot_job_actions_is_denied() -> None:
    denied = [(a, r) for a, r in _deployment_requests() if not allowed(STATEMENTS_WITHOUT_JOB_ACTIONS, a, r)]
    assert {a for a, _ in denied} == set(CREATE_DEPLOYMENT_ACTIONS) - {"greengrass:CreateDeployment"}


def test_package_role_allows_every_documented_create_deployment_action_on_the_group_and_its_jobs() -> None:
    statements = edge_statements()
    assert {a for a, _ in _deployment_requests()} == set(CREATE_DEPLOYMENT_ACTIONS)
    for action, resource in _deployment_requests():
        assert allowed(statements, action, resource), (action, resource)
    # scoped: another account's group, another thing group, and non-job IoT resources stay denied
    assert not allowed(statements, "iot:DescribeThingGroup", _THING_GROUP.replace("trash-cameras", "other"))
    assert not allowed(statements, "iot:CreateJob", _THING_GROUP.replace("123456789012", "210987654321"))
    assert not allowed(statements, "iot:DeleteThingGroup", _THING_GROUP)
    assert not allowed(statements, "iot:CreateJob", "arn:aws:iot:us-east-1:123456789012:thinggroup/other")
    # reading each core device's result of the deployment and the deployment it merges with
    core = "arn:aws:greengrass:us-east-1:123456789012:coreDevices:camera-1"
    assert allowed(statements, "greengrass:ListEffectiveDeployments", core)
    assert allowed(
        statements, "greengrass:GetDeployment", "arn:aws:greengrass:us-east-1:123456789012:deployments:abc"
    )


def test_list_actions_without_a_resource_type_are_allowed_only_by_a_star_statement() -> None:
    """IAM authorizes an action that has no resource type against "*" (Service Authorization Reference:
    "you must specify all resources ('*')"): ListDeployments, which the merge with the group's current
    deployment needs, is denied by a statement scoped to ``deployments*`` and allowed by the role's."""
    scoped = {
        "Effect": "Allow",
        "Action": ["greengrass:ListDeployments"],
        "Resource": ["arn:aws:greengrass:us-east-1:123456789012:deployments*"],
    }
    assert not allowed([scoped], "greengrass:ListDeployments", "*")
    statements = edge_statements()
    for action in ("greengrass:ListDeployments", "greengrass:ListCoreDevices"):
        assert allowed(statements, action, "*"), action
    assert not allowed(statements, "greengrass:ListComponents", "*")
