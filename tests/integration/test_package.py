"""The package step on moto: training state change -> gate -> DeepLens package -> registry -> deploy.

The stack is template.yaml through the shared ``stack`` fixture. Run, lock and dataset records are seeded
the way ``trashsorter.training`` writes them, the dataset's labels.txt / manifest.jsonl are written from
real TrashNet photos, the training job exists in moto's SageMaker and its ``model.tar.gz`` lies where
``describe_training_job`` says. Greengrass v1 (the DeepLens group) is moto's; Greengrass v2 is not in moto
and is checked with botocore's Stubber (tests named ``..._stubber``).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from tests.support.fixtures.model_artifacts import hostile_tar, mxnet_model_tar, onnx_model_tar
from tests.support.pack import DATASET_ID, FUNCTION_ARN, JOB, RECIPE_FILE, Pack, handle
from tests.support.stack import REGION, SAMPLES_DIR
from trashsorter import registry
from trashsorter.clients import Clients
from trashsorter.ddb import serialize
from trashsorter.deploy.orchestrate import redeploy
from trashsorter.errors import DeploymentError, TransientError
from trashsorter.schema import LOCK_KEY, STATE_KEY, job_key, run_key
from trashsorter_cli.local.dispatcher import make_context

pytestmark = pytest.mark.integration


def test_completed_job_is_packaged_registered_and_pushed_to_deeplens(pack: Pack) -> None:
    run_id = pack.start_run(JOB, artifact=mxnet_model_tar(epochs=(9, 10)))
    source_before = pack.s3.get_object(Bucket=pack.bucket, Key=f"training-output/{JOB}/output/model.tar.gz")
    app = pack.stack.load_handler(
        "PackageFunction", DEEPLENS_GROUP_ID=pack.group_id, DEEPLENS_FUNCTION_ARN=FUNCTION_ARN
    )

    result = app.handler(
        pack.event("training_completed.json", JOB),
        make_context("PackageFunction", region=REGION, memory_mb=2048),
    )

    assert result["outcome"] == "deployed", result
    assert result["metrics"]["validation:accuracy"] == pytest.approx(0.9125)
    # the DeepLens artifact, exactly the recipe's layout
    members = pack.tar_members(f"models/{JOB}/model.tar.gz")
    assert sorted(members) == [
        "image-classification-0000.params",
        "image-classification-symbol.json",
        "labels.txt",
    ]
    assert members["labels.txt"] == b"Compost\nLandfill\nRecycling\n"
    with tarfile.open(fileobj=io.BytesIO(mxnet_model_tar(epochs=(9, 10))), mode="r:gz") as source:
        newest = source.extractfile("image-classification-0010.params")
        assert newest is not None
        assert members["image-classification-0000.params"] == newest.read()
    # the job's own output is untouched
    source_after = pack.s3.get_object(Bucket=pack.bucket, Key=f"training-output/{JOB}/output/model.tar.gz")
    assert source_after["ETag"] == source_before["ETag"]
    assert len(pack.s3.list_object_versions(Bucket=pack.bucket, Prefix="training-output/")["Versions"]) == 1

    # registry and lineage: model -> run -> dataset -> manifest (keys + sha256 of the real photos)
    model = registry.get_model(JOB, table_name=pack.table, ddb=pack.ddb)
    assert model is not None
    assert model["status"] == "champion"
    assert model["run_id"] == run_id and model["dataset_id"] == DATASET_ID and model["job_name"] == JOB
    assert model["format"] == "mxnet" and model["gate_passed"] is True
    assert model["packaged_artifact_uris"] == {
        "deeplens": f"s3://{pack.deeplens_bucket}/models/{JOB}/model.tar.gz"
    }
    assert model["source_artifact_uri"] == f"s3://{pack.bucket}/training-output/{JOB}/output/model.tar.gz"
    assert model["gsi1pk"] == "MODELS" and model["gsi1sk"] == model["created_at"]
    bucket, key = model["dataset_manifest_uri"][5:].split("/", 1)
    manifest = [json.loads(x) for x in pack.s3.get_object(Bucket=bucket, Key=key)["Body"].read().splitlines()]
    assert manifest == pack.manifest
    photo = SAMPLES_DIR / "cardboard" / Path(manifest[0]["key"]).name
    if photo.exists():
        assert manifest[0]["sha256"] == hashlib.sha256(photo.read_bytes()).hexdigest()
    champion = registry.get_champion(table_name=pack.table, ddb=pack.ddb)
    assert champion is not None and champion["model_id"] == JOB
    assert [m["model_id"] for m in registry.list_models(table_name=pack.table, ddb=pack.ddb)] == [JOB]

    # Greengrass v1: one new group version keeping the other definitions, one NewDeployment
    deployments = pack.deployments()
    assert len(deployments) == 1 and deployments[0]["DeploymentType"] == "NewDeployment"
    group = pack.gg.get_group(GroupId=pack.group_id)
    definition = pack.gg.get_group_version(GroupId=pack.group_id, GroupVersionId=group["LatestVersion"])[
        "Definition"
    ]
    assert deployments[0]["GroupArn"].endswith(group["LatestVersion"])
    assert definition["CoreDefinitionVersionArn"] == pack.initial["CoreDefinitionVersionArn"]
    assert definition["SubscriptionDefinitionVersionArn"] == pack.initial["SubscriptionDefinitionVersionArn"]
    res_id, res_ver = definition["ResourceDefinitionVersionArn"].split("/")[-3::2]
    resources = pack.gg.get_resource_definition_version(
        ResourceDefinitionId=res_id, ResourceDefinitionVersionId=res_ver
    )
    by_id = {r["Id"]: r for r in resources["Definition"]["Resources"]}
    assert set(by_id) == {"gpu-dri", "trashsorter-model"}
    assert by_id["trashsorter-model"]["ResourceDataContainer"] == {
        "S3MachineLearningModelResourceData": {
            "S3Uri": f"s3://{pack.deeplens_bucket}/models/{JOB}/model.tar.gz",
            "DestinationPath": "/trashsorter_model",
        }
    }
    fn_id, fn_ver = definition["FunctionDefinitionVersionArn"].split("/")[-3::2]
    functions = pack.gg.get_function_definition_version(
        FunctionDefinitionId=fn_id, FunctionDefinitionVersionId=fn_ver
    )
    fns = {f["Id"]: f for f in functions["Definition"]["Functions"]}
    assert set(fns) == {"awscam-stream", "trashsorter-inference"}
    ours = fns["trashsorter-inference"]
    assert ours["FunctionArn"] == FUNCTION_ARN
    config = ours["FunctionConfiguration"]
    assert config["Pinned"] is True
    assert config["Environment"]["AccessSysfs"] is True
    assert config["Environment"]["Variables"]["MODEL_PATH"] == "/trashsorter_model"
    assert config["Environment"]["ResourceAccessPolicies"] == [
        {"ResourceId": "gpu-dri", "Permission": "rw"},
        {"ResourceId": "trashsorter-model", "Permission": "ro"},
    ]

    # the run: completed, metrics, deployment id; the lock released; the baseline moved to the dataset's seq
    run = pack.get(run_key(run_id))
    assert run["status"] == "completed"
    assert run["metrics"]["validation:accuracy"] == pytest.approx(0.9125)
    assert run["deployment_ids"] == [deployments[0]["DeploymentId"]]
    assert run["handled_statuses"] == ["Completed"]
    assert "holder" not in pack.get(LOCK_KEY)
    assert pack.get(STATE_KEY)["baseline_seq"] == 42
    deploy_items = registry.list_deployments(JOB, table_name=pack.table, ddb=pack.ddb)
    assert [(d["target"], d["deployment_id"]) for d in deploy_items] == [
        ("greengrass-v1", deployments[0]["DeploymentId"])
    ]
    notices = pack.notices_received()
    assert len(notices) == 1 and "0.9125" in notices[0]["body"] and "deployed" in notices[0]["body"]


def test_replaying_the_event_changes_nothing(pack: Pack) -> None:
    pack.start_run(JOB, artifact=mxnet_model_tar())
    settings = pack.settings()
    event = pack.event("training_completed.json", JOB)
    first = handle(event, settings, ddb=pack.ddb, s3=pack.s3, greengrass=pack.gg)
    before = pack.table_items()
    versions = pack.s3.list_object_versions(Bucket=pack.deeplens_bucket)["Versions"]
    pack.notices_received()

    event["id"] = "another-delivery-of-the-same-change"
    second = handle(event, settings, ddb=pack.ddb, s3=pack.s3, greengrass=pack.gg)

    assert first.outcome == "deployed" and second.outcome == "duplicate"
    assert pack.table_items() == before
    assert len(pack.deployments()) == 1
    assert pack.s3.list_object_versions(Bucket=pack.deeplens_bucket)["Versions"] == versions
    assert pack.notices_received() == []


def test_retry_after_a_crash_half_way_finishes_without_a_second_deployment(pack: Pack) -> None:
    run_id = pack.start_run(JOB, artifact=mxnet_model_tar())
    settings = pack.settings()
    event = pack.event("training_completed.json", JOB)

    sns = boto3.client("sns", region_name="us-east-1")
    stub = Stubber(sns)
    stub.add_client_error("publish", service_error_code="InternalError", http_status_code=500)
    with stub, pytest.raises(TransientError, match="could not publish"):
        handle(event, settings, ddb=pack.ddb, s3=pack.s3, greengrass=pack.gg, sns=sns)
    assert len(pack.deployments()) == 1
    # the lease is held by the crashed attempt: a concurrent delivery is told to retry later
    with pytest.raises(TransientError, match="another delivery"):
        handle(event, settings, ddb=pack.ddb, s3=pack.s3, greengrass=pack.gg)
    pack.ddb.update_item(  # the lease runs out (the crashed Lambda is long gone)
        TableName=pack.table,
        Key=serialize(run_key(run_id)),
        UpdateExpression="SET package_claim_completed = :old",
        ExpressionAttributeValues={":old": {"S": "2024-01-01T00:00:00.000000Z"}},
    )
    outcome = handle(event, settings, ddb=pack.ddb, s3=pack.s3, greengrass=pack.gg)
    assert outcome.outcome == "deployed"
    assert len(pack.deployments()) == 1
    assert pack.get(run_key(run_id))["handled_statuses"] == ["Completed"]
    assert len(pack.notices_received()) == 1


@pytest.mark.parametrize(
    ("name", "status"), [("training_failed.json", "failed"), ("training_stopped.json", "stopped")]
)
def test_failed_and_stopped_jobs_record_the_reason_and_release_the_lock(
    pack: Pack, name: str, status: str
) -> None:
    run_id = pack.start_run(JOB)
    event = pack.event(name, JOB)
    app = pack.stack.load_handler("PackageFunction")

    result = app.handler(event, make_context("PackageFunction", region=REGION, memory_mb=2048))

    assert result["outcome"] == status
    run = pack.get(run_key(run_id))
    assert run["status"] == status
    assert run["status_message"] == event["detail"]["FailureReason"]
    assert run["failure_reason"] == event["detail"]["FailureReason"]
    assert "holder" not in pack.get(LOCK_KEY)
    assert registry.get_model(JOB, table_name=pack.table, ddb=pack.ddb) is None
    assert pack.deployments() == []
    notices = pack.notices_received()
    assert len(notices) == 1 and event["detail"]["FailureReason"] in notices[0]["body"]
    assert (
        app.handler(event, make_context("PackageFunction", region=REGION, memory_mb=2048))["outcome"]
        == "duplicate"
    )


@pytest.mark.parametrize("late", ["training_failed.json", "training_stopped.json"])
def test_a_late_failed_or_stopped_event_after_completed_is_ignored(pack: Pack, late: str) -> None:
    run_id = pack.start_run(JOB, artifact=mxnet_model_tar())
    settings = pack.settings()
    first = handle(pack.event("training_completed.json", JOB), settings, ddb=pack.ddb, s3=pack.s3,
                   greengrass=pack.gg)  # fmt: skip
    assert first.outcome == "deployed"
    pack.notices_received()
    before = pack.get(run_key(run_id))

    late_event = pack.event(late, JOB)
    outcome = handle(late_event, settings, ddb=pack.ddb, s3=pack.s3, greengrass=pack.gg)
    again = handle(late_event, settings, ddb=pack.ddb, s3=pack.s3, greengrass=pack.gg)

    status = late_event["detail"]["TrainingJobStatus"]
    assert outcome.outcome == "ignored" and again.outcome == "ignored"
    assert "already completed" in outcome.reason
    run = pack.get(run_key(run_id))
    for kept in ("status", "status_message", "ended_at", "ended_by", "package_outcome", "handled_statuses"):
        assert run[kept] == before[kept], kept
    assert run["status"] == "completed" and "failure_reason" not in run
    assert run["ignored_events"] == [status] and run["ignored_count"] == 2
    assert run["last_ignored"]["event"] == status
    assert pack.notices_received() == []
    assert registry.get_model(JOB, table_name=pack.table, ddb=pack.ddb)["status"] == "champion"


def test_a_failed_event_for_a_run_ended_elsewhere_sends_no_notice(pack: Pack) -> None:
    run_id = pack.start_run(JOB)
    pack.ddb.update_item(  # e.g. reconciled, or finished by another path, before the event arrives
        TableName=pack.table,
        Key=serialize(run_key(run_id)),
        UpdateExpression="SET #s = :s, ended_by = :by",
        ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={":s": {"S": "stopped"}, ":by": {"S": "reconcile"}},
    )
    outcome = handle(pack.event("training_failed.json", JOB), pack.settings(), ddb=pack.ddb)
    assert outcome.outcome == "ignored"
    run = pack.get(run_key(run_id))
    assert run["status"] == "stopped" and run["ignored_events"] == ["Failed"]
    assert pack.notices_received() == []


def test_low_accuracy_is_rejected_and_not_deployed(pack: Pack) -> None:
    run_id = pack.start_run(JOB, artifact=mxnet_model_tar())
    outcome = handle(
        pack.event("training_completed.json", JOB, accuracy=0.61),
        pack.settings(),
        ddb=pack.ddb,
        s3=pack.s3,
        greengrass=pack.gg,
    )
    assert outcome.outcome == "rejected"
    model = registry.get_model(JOB, table_name=pack.table, ddb=pack.ddb)
    assert model is not None and model["status"] == "rejected" and model["gate_passed"] is False
    assert "0.6100 is below the minimum 0.8000" in model["gate_reason"]
    assert registry.get_champion(table_name=pack.table, ddb=pack.ddb) is None
    assert pack.deployments() == []
    assert pack.get(run_key(run_id))["status"] == "completed"
    assert pack.get(STATE_KEY)["baseline_seq"] == 42
    notice = pack.notices_received()[0]["body"]
    assert "was not deployed" in notice and '"validation:accuracy": 0.61' in notice


def test_worse_than_the_champion_beyond_tolerance_is_rejected(pack: Pack) -> None:
    old = "deeplens-ts-3f9a1c2b7d4e5f60-20240501080000"
    pack.start_run(old, artifact=mxnet_model_tar())
    first = handle(
        pack.event("training_completed.json", old, accuracy=0.97),
        pack.settings(),
        ddb=pack.ddb,
        s3=pack.s3,
        greengrass=pack.gg,
    )
    assert first.outcome == "deployed"
    pack.start_run(JOB, artifact=mxnet_model_tar())
    second = handle(
        pack.event("training_completed.json", JOB, accuracy=0.9125),
        pack.settings(),
        ddb=pack.ddb,
        s3=pack.s3,
        greengrass=pack.gg,
    )
    assert second.outcome == "rejected"
    assert "worse than champion " + old in second.reason
    champion = registry.get_champion(table_name=pack.table, ddb=pack.ddb)
    assert champion is not None and champion["model_id"] == old
    assert len(pack.deployments()) == 1


@pytest.mark.parametrize(
    ("artifact", "reason"),
    [
        (None, "missing or unreadable"),
        (hostile_tar("traversal"), "unsafe member path '../../etc/cron.d/evil'"),
        (hostile_tar("not_tar"), "not a readable tar archive"),
        (hostile_tar("no_params"), "no *-NNNN.params"),
    ],
)
def test_missing_or_corrupt_artifact_is_a_recorded_failure(
    pack: Pack, artifact: bytes | None, reason: str
) -> None:
    run_id = pack.start_run(JOB, artifact=artifact)
    outcome = handle(
        pack.event("training_completed.json", JOB),
        pack.settings(),
        ddb=pack.ddb,
        s3=pack.s3,
        greengrass=pack.gg,
    )
    assert outcome.outcome == "failed"
    assert reason in outcome.reason
    run = pack.get(run_key(run_id))
    assert run["status"] == "failed" and reason in run["status_message"]
    model = registry.get_model(JOB, table_name=pack.table, ddb=pack.ddb)
    assert model is not None and model["status"] == "rejected" and reason in model["gate_reason"]
    assert pack.deployments() == []
    assert "Contents" not in pack.s3.list_objects_v2(Bucket=pack.deeplens_bucket)
    assert "holder" not in pack.get(LOCK_KEY)
    assert reason in pack.notices_received()[0]["body"]


def test_missing_metrics_and_artifact_are_read_with_describe_training_job(pack: Pack) -> None:
    pack.start_run(JOB, artifact=mxnet_model_tar())
    event = pack.event("training_completed.json", JOB, accuracy=0.55)  # SageMaker reports 0.55
    del event["detail"]["ModelArtifacts"], event["detail"]["FinalMetricDataList"]
    outcome = handle(event, pack.settings(), ddb=pack.ddb, s3=pack.s3, greengrass=pack.gg)
    # the event names neither: DescribeTrainingJob gives the artifact and the accuracy, which the gate refuses
    assert outcome.outcome == "rejected"
    assert outcome.metrics["validation:accuracy"] == pytest.approx(0.55)
    assert outcome.artifacts == {"deeplens": f"s3://{pack.deeplens_bucket}/models/{JOB}/model.tar.gz"}


def test_no_deeplens_group_configured_packages_and_registers_only(pack: Pack) -> None:
    pack.start_run(JOB, artifact=mxnet_model_tar())
    outcome = handle(
        pack.event("training_completed.json", JOB),
        pack.settings(DEEPLENS_GROUP_ID="", DEEPLENS_FUNCTION_ARN=""),
        ddb=pack.ddb,
        s3=pack.s3,
        greengrass=pack.gg,
    )
    assert outcome.outcome == "registered"
    assert "no DeepLens device configured" in outcome.reason
    model = registry.get_model(JOB, table_name=pack.table, ddb=pack.ddb)
    assert model is not None and model["status"] == "champion"
    assert model["deployments"][0]["note"] == "no DeepLens device configured"
    assert pack.deployments() == []


def test_group_without_function_arn_is_a_clear_failure(pack: Pack) -> None:
    pack.start_run(JOB, artifact=mxnet_model_tar())
    outcome = handle(
        pack.event("training_completed.json", JOB),
        pack.settings(DEEPLENS_FUNCTION_ARN=""),
        ddb=pack.ddb,
        s3=pack.s3,
        greengrass=pack.gg,
    )
    assert outcome.outcome == "registered"
    assert outcome.deployments[0]["status"] == "failed"
    assert "DeepLensInferenceFunctionArn" in outcome.deployments[0]["note"]
    assert pack.deployments() == []
    assert "passed the gate but deployment failed" in pack.notices_received()[0]["body"]


def test_redeploy_a_previous_champion(pack: Pack) -> None:
    old = "deeplens-ts-3f9a1c2b7d4e5f60-20240501080000"
    for job, accuracy in ((old, 0.9), (JOB, 0.93)):
        pack.start_run(job, artifact=mxnet_model_tar())
        handle(
            pack.event("training_completed.json", job, accuracy=accuracy),
            pack.settings(),
            ddb=pack.ddb,
            s3=pack.s3,
            greengrass=pack.gg,
        )
    assert registry.get_model(old, table_name=pack.table, ddb=pack.ddb)["status"] == "retired"  # type: ignore[index]

    outcome = redeploy(old, pack.settings(), clients=Clients(ddb=pack.ddb, greengrass=pack.gg))

    assert outcome.outcome == "deployed"
    assert registry.get_champion(table_name=pack.table, ddb=pack.ddb)["model_id"] == old  # type: ignore[index]
    assert registry.get_model(JOB, table_name=pack.table, ddb=pack.ddb)["status"] == "retired"  # type: ignore[index]
    deployments = pack.deployments()
    assert len(deployments) == 3
    latest = pack.gg.get_group(GroupId=pack.group_id)["LatestVersion"]
    definition = pack.gg.get_group_version(GroupId=pack.group_id, GroupVersionId=latest)["Definition"]
    res_id, res_ver = definition["ResourceDefinitionVersionArn"].split("/")[-3::2]
    resources = pack.gg.get_resource_definition_version(
        ResourceDefinitionId=res_id, ResourceDefinitionVersionId=res_ver
    )
    model_res = [r for r in resources["Definition"]["Resources"] if r["Id"] == "trashsorter-model"]
    assert model_res[0]["ResourceDataContainer"]["S3MachineLearningModelResourceData"]["S3Uri"].endswith(
        f"models/{old}/model.tar.gz"
    )
    recorded = registry.list_deployments(old, table_name=pack.table, ddb=pack.ddb)
    assert sorted(d["request_id"].split("-")[0] for d in recorded) == ["initial", "redeploy"]
    assert outcome.deployments[0]["deployment_id"] in {d["DeploymentId"] for d in deployments}


def test_redeploy_refuses_a_gated_out_model_without_force(pack: Pack) -> None:
    pack.start_run(JOB, artifact=mxnet_model_tar())
    handle(
        pack.event("training_completed.json", JOB, accuracy=0.5),
        pack.settings(),
        ddb=pack.ddb,
        s3=pack.s3,
        greengrass=pack.gg,
    )
    with pytest.raises(DeploymentError, match="rejected by the quality gate"):
        redeploy(JOB, pack.settings(), clients=Clients(ddb=pack.ddb, greengrass=pack.gg))
    assert (
        redeploy(JOB, pack.settings(), force=True, clients=Clients(ddb=pack.ddb, greengrass=pack.gg)).outcome
        == "deployed"
    )


def test_onnx_model_goes_to_greengrass_v2_merged_into_the_groups_deployment_with_rollback(pack: Pack) -> None:
    """Against the local endpoint's Greengrass v2 control plane: the recipe file with the package values,
    published as a component version and deployed as a new revision of the thing group's deployment that
    keeps the component already deployed there (with its configuration), ROLLBACK, an update policy and a
    job timeout."""
    run_id = pack.start_run(JOB, backend="local", artifact=onnx_model_tar(accuracy=0.9125))
    iot = boto3.client("iot", region_name="us-east-1")
    thing_group = iot.create_thing_group(thingGroupName="trashsorter-edge")["thingGroupArn"]
    v2 = boto3.client("greengrassv2", region_name="us-east-1")
    users = {
        "RecipeFormatVersion": "2020-01-25",
        "ComponentName": "com.example.Actuator",
        "ComponentVersion": "2.1.0",
    }
    v2.create_component_version(inlineRecipe=json.dumps(users).encode())
    user_spec = {"componentVersion": "2.1.0", "configurationUpdate": {"merge": '{"Pin": 17}'}}
    v2.create_deployment(targetArn=thing_group, components={"com.example.Actuator": user_spec})
    settings = pack.settings(EDGE_THING_GROUP_ARN=thing_group)
    event = pack.event("training_completed.json", JOB)
    event["detail"]["AlgorithmSpecification"]["TrainingImage"] = "trashsorter/local-efficientnet-lite0"
    onnx_uri = f"s3://{pack.deeplens_bucket}/models/{JOB}/model.onnx.tar.gz"
    app_uri = f"s3://{pack.deeplens_bucket}/models/{JOB}/trashsorter-edge.zip"
    name = settings.edge_component_name
    # the recipe file in the repo, with what the package step fills in
    model_name = f"{name}Model"
    expected_recipe = json.loads(RECIPE_FILE.read_text().replace("MODEL_COMPONENT", model_name))
    expected_recipe["ComponentName"] = name
    expected_recipe["ComponentVersion"] = "1.0.1"
    defaults = expected_recipe["ComponentConfiguration"]["DefaultConfiguration"]
    defaults["Inbox"]["Bucket"] = settings.images_bucket
    mqtt = defaults["accessControl"]["aws.greengrass.ipc.mqttproxy"]
    mqtt[f"{name}:mqttproxy:publish"] = mqtt.pop("trashsorter.edge:mqttproxy:publish")
    pubsub = defaults["accessControl"]["aws.greengrass.ipc.pubsub"]
    pubsub[f"{name}:pubsub:sort"] = pubsub.pop("trashsorter.edge:pubsub:sort")
    for manifest in expected_recipe["Manifests"]:
        if manifest["Artifacts"]:  # the 64-bit platforms; 32-bit ARM has none (it refuses to install)
            manifest["Artifacts"] = [{"URI": app_uri, "Unarchive": "ZIP"}]
    outcome = handle(event, settings, ddb=pack.ddb, s3=pack.s3, greengrass=pack.gg, greengrassv2=v2)
    assert outcome.outcome == "deployed", outcome
    deployment_id = outcome.deployments[0]["deployment_id"]
    assert outcome.deployments[0] == {
        "target": "greengrass-v2",
        "status": "deployed",
        "deployment_id": deployment_id,
        "note": "",
    }
    assert len(outcome.deployments) == 1  # one target for ONNX models: Greengrass v2
    arn = f"arn:aws:greengrass:us-east-1:123456789012:components:{name}:versions:1.0.1"
    assert json.loads(v2.get_component(arn=arn)["recipe"]) == expected_recipe
    # the model as its own component (1.0.1: its own version counter), readable by the app
    arn = f"arn:aws:greengrass:us-east-1:123456789012:components:{model_name}:versions:1.0.1"
    model_recipe = json.loads(v2.get_component(arn=arn)["recipe"])
    assert model_recipe["ComponentConfiguration"]["DefaultConfiguration"] == {"ModelId": JOB}
    assert model_recipe["Manifests"][0]["Artifacts"] == [
        {"URI": onnx_uri, "Unarchive": "NONE", "Permission": {"Read": "ALL", "Execute": "NONE"}}
    ]
    deployment = v2.get_deployment(deploymentId=deployment_id)
    assert deployment["isLatestForTarget"] and deployment["revisionId"] == "2"
    assert deployment["components"] == {
        "com.example.Actuator": user_spec,
        name: {
            "componentVersion": "1.0.1",
            "configurationUpdate": {
                "merge": json.dumps({"Inbox": {"Bucket": settings.images_bucket}}, sort_keys=True)
            },
        },
        model_name: {
            "componentVersion": "1.0.1",
            "configurationUpdate": {"merge": json.dumps({"ModelId": JOB})},
        },
    }
    assert deployment["deploymentPolicies"] == {
        "failureHandlingPolicy": "ROLLBACK",
        "componentUpdatePolicy": {"timeoutInSeconds": 60, "action": "NOTIFY_COMPONENTS"},
        "configurationValidationPolicy": {"timeoutInSeconds": 60},
    }
    assert deployment["iotJobConfiguration"]["timeoutConfig"] == {"inProgressTimeoutInMinutes": 30}
    members = pack.tar_members(f"models/{JOB}/model.onnx.tar.gz")
    assert sorted(members) == ["labels.txt", "metrics.json", "model.json", "model.onnx"]
    assert members["labels.txt"] == b"Compost\nLandfill\nRecycling\n"
    model = registry.get_model(JOB, table_name=pack.table, ddb=pack.ddb)
    assert model is not None and model["format"] == "onnx" and model["status"] == "champion"
    assert model["packaged_artifact_uris"] == {"onnx": onnx_uri, "edge_app": app_uri}
    app = zipfile.ZipFile(
        io.BytesIO(
            pack.s3.get_object(Bucket=pack.deeplens_bucket, Key=app_uri.split("/", 3)[3])["Body"].read()
        )
    )
    assert {
        "trashsorter_edge/preprocessing.py",
        "trashsorter_edge/install.py",
        "trashsorter_edge/requirements.txt",
    } <= set(app.namelist())
    assert pack.deployments() == []  # ONNX never goes to the DeepLens group
    item = registry.get_deployment(JOB, "greengrass-v2", "initial", table_name=pack.table, ddb=pack.ddb)
    assert item is not None and item["component_version"] == "1.0.1"  # lineage: both components' versions
    assert item["model_component_version"] == "1.0.1"
    assert item["details"]["model_component_name"] == model_name
    assert pack.get(run_key(run_id))["status"] == "completed"


def test_greengrass_v2_throttling_is_retried_with_the_same_version_stubber(pack: Pack) -> None:
    pack.start_run(JOB, backend="local", artifact=onnx_model_tar())
    thing_group = "arn:aws:iot:us-east-1:123456789012:thinggroup/trashsorter-edge"
    settings = pack.settings(EDGE_THING_GROUP_ARN=thing_group)
    event = pack.event("training_completed.json", JOB)
    v2 = boto3.client("greengrassv2", region_name="us-east-1")
    stub = Stubber(v2)
    stub.add_client_error(
        "create_component_version", service_error_code="ThrottlingException", http_status_code=429
    )
    with stub, pytest.raises(TransientError, match=r"could not publish .*\(ThrottlingException\)"):
        handle(event, settings, ddb=pack.ddb, s3=pack.s3, greengrassv2=v2)
    pack.ddb.update_item(
        TableName=pack.table,
        Key=serialize(run_key(pack.get(job_key(JOB))["run_id"])),
        UpdateExpression="REMOVE package_claim_completed",
    )
    stub = Stubber(v2)
    for _component in ("model", "app"):
        stub.add_response(
            "create_component_version",
            {
                "arn": "arn:x",
                "componentName": "c",
                "componentVersion": "1.0.1",
                "creationTimestamp": 0,
                "status": {},
            },
        )
    stub.add_response("list_deployments", {"deployments": []})
    stub.add_response("create_deployment", {"deploymentId": "d-2"})
    with stub:
        outcome = handle(event, settings, ddb=pack.ddb, s3=pack.s3, greengrassv2=v2)
    assert outcome.outcome == "deployed"
    item = registry.get_deployment(JOB, "greengrass-v2", "initial", table_name=pack.table, ddb=pack.ddb)
    assert item is not None and item["component_version"] == "1.0.1" and item["deployment_id"] == "d-2"


def test_a_completion_writes_its_run_final_state_once(pack: Pack) -> None:
    """The run's final state (status, metrics, model, deployments) is one write; besides it the run gets
    only the completion lease and, after the notice, the receipt (the outcome followers wait for, handled)."""
    run_id = pack.start_run(JOB, artifact=mxnet_model_tar())
    run_writes: list[str] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        if params.get("Key") == serialize(run_key(run_id)):
            run_writes.append(str(params["UpdateExpression"]))

    pack.ddb.meta.events.register("before-parameter-build.dynamodb.UpdateItem", record)
    outcome = handle(pack.event("training_completed.json", JOB), pack.settings(), ddb=pack.ddb, s3=pack.s3,
                     greengrass=pack.gg)  # fmt: skip
    pack.ddb.meta.events.unregister("before-parameter-build.dynamodb.UpdateItem", record)

    assert outcome.outcome == "deployed"
    [lease, final, handled] = run_writes
    assert lease.startswith("SET #c = :now")
    assert final.startswith("SET #s = :status") and "#x1 = :x1" in final  # metrics, model, deployments
    assert handled == "SET #a0 = :v0 ADD handled_statuses :handled"  # package_outcome + handled
    run = pack.get(run_key(run_id))
    assert run["status"] == "completed" and run["package_outcome"] == "deployed"
    assert run["model_id"] == JOB and run["handled_statuses"] == ["Completed"]
    assert run["metrics"]["validation:accuracy"] == pytest.approx(0.9125)
