"""The moto stack used by tests and local mode is template.yaml, rewritten only in the documented ways."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.stack import StackHandle
from trashsorter.errors import ConfigurationError
from trashsorter_cli.local.template import (
    build_local_template,
    load_template,
    parameter_values,
    parse_parameter_overrides,
)

pytestmark = pytest.mark.integration

LOCAL_ONLY_TYPES = {"AWS::Lambda::Function", "AWS::Lambda::LayerVersion", "AWS::Lambda::EventSourceMapping"}


def test_every_template_resource_exists_locally_except_lambda_code(stack: StackHandle) -> None:
    template = load_template()
    local = build_local_template(template, parameter_values(template))
    expected = {
        lid
        for lid, res in local.cloudformation["Resources"].items()
        if "Condition" not in res  # conditional resources are off with the default parameters
    }
    assert expected <= set(stack.stack.resources), sorted(expected - set(stack.stack.resources))
    # every non-serverless resource of template.yaml made it through unchanged in type
    for lid, res in template["Resources"].items():
        if res["Type"].startswith("AWS::Serverless::") or res.get("Condition"):
            continue
        assert stack.stack.resource_types[lid] == res["Type"]
    # functions are not created in moto (they would need Docker) but are known to the dispatcher
    assert not LOCAL_ONLY_TYPES & set(stack.stack.resource_types.values())
    sam_functions = {
        lid for lid, r in template["Resources"].items() if r["Type"] == "AWS::Serverless::Function"
    }
    assert set(stack.stack.functions) == sam_functions


def test_bucket_notifications_match_template(stack: StackHandle) -> None:
    s3 = stack.client("s3")
    config = s3.get_bucket_notification_configuration(Bucket=stack.outputs["ImagesBucketName"])
    template = load_template()
    wanted = template["Resources"]["ImagesBucket"]["Properties"]["NotificationConfiguration"]
    got = sorted(
        (c["Events"][0], json.dumps(c["Filter"]["Key"]["FilterRules"])) for c in config["QueueConfigurations"]
    )
    want = sorted(
        (
            c["Event"],
            json.dumps([{"Name": r["Name"], "Value": r["Value"]} for r in c["Filter"]["S3Key"]["Rules"]]),
        )
        for c in wanted["QueueConfigurations"]
    )
    assert got == want
    queue_arn = stack.client("sqs").get_queue_attributes(
        QueueUrl=stack.outputs["IngestQueueUrl"], AttributeNames=["QueueArn"]
    )["Attributes"]["QueueArn"]
    assert {c["QueueArn"] for c in config["QueueConfigurations"]} == {queue_arn}


def test_function_environment_is_resolved_from_template(stack: StackHandle) -> None:
    env = stack.function_env("IngestFunction")
    assert env["TABLE_NAME"] == stack.outputs["CatalogueTableName"]
    assert env["IMAGES_BUCKET"] == stack.outputs["ImagesBucketName"]
    assert env["ALLOWED_LABELS"] == "Compost,Landfill,Recycling"
    assert env["MAX_IMAGE_BYTES"] == "20971520"
    assert env["POWERTOOLS_SERVICE_NAME"] == "ingest"
    training = stack.function_env("StartTrainingFunction")
    assert training["TRAINING_MAX_WAIT"] == "0"  # !If on UseSpot resolved by the stack
    assert training["TRAINING_ROLE_ARN"].startswith("arn:aws:iam::")
    package = stack.function_env("PackageFunction")
    assert package["DEEPLENS_BUCKET"].startswith("deeplens-")


def test_images_bucket_is_versioned_encrypted_and_private(stack: StackHandle) -> None:
    s3 = stack.client("s3")
    bucket = stack.outputs["ImagesBucketName"]
    assert bucket.startswith("trashsorter-images-")
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert all(block.values())
    rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"


def test_only_the_tls_deny_is_left_out_of_local_bucket_policies(stack: StackHandle) -> None:
    """moto ignores policy conditions, so the TLS-only deny would deny everything: it is the one rewrite."""
    template = load_template()
    policies = {
        lid: res["Properties"]["PolicyDocument"]["Statement"]
        for lid, res in template["Resources"].items()
        if res["Type"] == "AWS::S3::BucketPolicy"
    }
    assert set(stack.stack.skipped_statements) == set(policies)
    for lid, statements in policies.items():
        skipped = stack.stack.skipped_statements[lid]
        assert [st["Sid"] for st in skipped] == [st["Sid"] for st in statements if st.get("Condition")]
        assert all(st["Effect"] == "Deny" for st in skipped)
        assert all(st["Condition"] == {"Bool": {"aws:SecureTransport": "false"}} for st in skipped)
    # and with it left out, plain-HTTP requests of the local endpoint work
    stack.client("s3").put_object(Bucket=stack.outputs["ImagesBucketName"], Key="probe.txt", Body=b"x")


def test_rules_targeting_functions_get_mirror_queues_with_dead_letters(stack: StackHandle) -> None:
    events = stack.client("events")
    on_stack_bus = {  # the template's rules on the stack's own bus (others: the default bus)
        f"{function_id}{name}"
        for function_id, resource in load_template()["Resources"].items()
        if resource["Type"] == "AWS::Serverless::Function"
        for name, event in resource["Properties"].get("Events", {}).items()
        if "EventBusName" in event.get("Properties", {})
    }
    for rule_id, mirror_id in stack.stack.mirrors.items():
        rule_name = stack.stack.resources[rule_id]
        bus = stack.outputs["EventBusName"] if rule_id in on_stack_bus else "default"
        targets = events.list_targets_by_rule(Rule=rule_name, EventBusName=bus)["Targets"]
        mirror_arn = stack.client("sqs").get_queue_attributes(
            QueueUrl=stack.stack.resources[mirror_id], AttributeNames=["QueueArn", "RedrivePolicy"]
        )["Attributes"]
        assert [t["Arn"] for t in targets] == [mirror_arn["QueueArn"]]
        assert "deadLetterTargetArn" in mirror_arn["RedrivePolicy"]


def test_stack_parameter_overrides_are_checked() -> None:
    template = load_template()
    assert parse_parameter_overrides(["MinImagesPerLabel=30 TrainingAlgorithm=image-classification"]) == {
        "MinImagesPerLabel": "30",
        "TrainingAlgorithm": "image-classification",
    }
    assert parse_parameter_overrides(["ParameterKey=MinNewImages,ParameterValue=5"]) == {"MinNewImages": "5"}
    assert parameter_values(template, {"MinImagesPerLabel": "30"})["MinImagesPerLabel"] == "30"
    with pytest.raises(ConfigurationError, match="unknown stack parameter"):
        parameter_values(template, {"NoSuchParameter": "1"})
    with pytest.raises(ConfigurationError, match="not one of"):
        parameter_values(template, {"TrainingAlgorithm": "gpu-cluster"})
    with pytest.raises(ConfigurationError, match="below its minimum"):
        parameter_values(template, {"MinImagesPerLabel": "0"})


def test_persisted_resources_get_the_same_names_for_the_same_stack_name(stack: StackHandle) -> None:
    """Local rewrite 8: the stack id the template derives bucket names from is fixed by region + stack name,
    and the table gets ``<stack>-<logical id>``, so a restarted stack finds its persisted state's names."""
    template = load_template()
    params = parameter_values(template)

    def names(stack_name: str, region: str = "us-east-1") -> dict[str, object]:
        resources = build_local_template(
            template, params, region=region, stack_name=stack_name
        ).cloudformation["Resources"]
        return {
            lid: res["Properties"].get("BucketName") or res["Properties"].get("TableName")
            for lid, res in resources.items()
            if res["Type"] in ("AWS::S3::Bucket", "AWS::DynamoDB::Table")
        }

    first = names("trashsorter")
    assert first == names("trashsorter")
    assert first["CatalogueTable"] == "trashsorter-CatalogueTable"
    assert "AWS::StackId" not in json.dumps(first)
    assert names("other") != first and names("trashsorter", "eu-west-1") != first
    # the stack the tests create (with its stack name) really has those physical names
    assert stack.stack.resources["CatalogueTable"] == f"{stack.stack.stack_name}-CatalogueTable"


def test_template_is_parsed_again_when_the_file_changes_and_callers_get_their_own_copy(
    tmp_path: Path,
) -> None:
    """load_template remembers a parse per (path, mtime, size); an edited file is parsed again, and a
    caller that changes what it got does not change what the next caller gets."""
    path = tmp_path / "template.yaml"
    path.write_text("Resources:\n  Topic:\n    Type: AWS::SNS::Topic\n", encoding="utf-8")
    first = load_template(path)
    first["Resources"]["Topic"]["Type"] = "changed by a caller"
    assert load_template(path)["Resources"]["Topic"]["Type"] == "AWS::SNS::Topic"
    path.write_text("Resources:\n  Queue:\n    Type: AWS::SQS::Queue\n  Extra:\n    Type: AWS::SNS::Topic\n")
    assert sorted(load_template(path)["Resources"]) == ["Extra", "Queue"]


def test_local_template_translation_is_remembered_per_input_and_copied() -> None:
    template = load_template()
    params = parameter_values(template)
    first = build_local_template(template, params, stack_name="copy-check")
    first.cloudformation["Resources"].clear()
    again = build_local_template(template, params, stack_name="copy-check")
    assert again.cloudformation["Resources"], "a caller's change leaked into the remembered translation"
    other = build_local_template(template, parameter_values(template, {"MinImagesPerLabel": "31"}))
    assert other.parameters["MinImagesPerLabel"] == "31" != again.parameters["MinImagesPerLabel"]
