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
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import boto3
import pytest
from botocore.stub import Stubber

from tests.support.fixtures.greengrass import create_deeplens_group
from tests.support.fixtures.model_artifacts import hostile_tar, mxnet_model_tar, onnx_model_tar
from tests.support.stack import REGION, REPO_ROOT, SAMPLES_DIR, StackHandle, load_event
from trashsorter import registry
from trashsorter.clients import Clients
from trashsorter.completion import handle_training_state_change
from trashsorter.ddb import deserialize, serialize
from trashsorter.deploy import greengrass_v2
from trashsorter.deploy.orchestrate import redeploy
from trashsorter.errors import DeploymentError
from trashsorter.events import parse_training_state_change
from trashsorter.schema import LOCK_KEY, STATE_KEY, dataset_key, job_key, run_key
from trashsorter.settings import PackageSettings
from trashsorter_cli.local.dispatcher import make_context

pytestmark = pytest.mark.integration


def handle(event: dict[str, Any], settings: PackageSettings, **clients: Any) -> Any:
    """What functions/package/app.py does: parse the event at the edge, then the one domain call."""
    change = parse_training_state_change(event)
    assert change is not None, event
    return handle_training_state_change(change, settings, Clients(**clients))


LABELS = ("Compost", "Landfill", "Recycling")
RECIPE_FILE = REPO_ROOT / "layers/trashsorter/python/trashsorter/data/greengrass_v2_recipe.json"
DATASET_ID = "3f9a1c2b7d4e5f60"
FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:deeplens-trash-sorter-inference:3"
EVENT_BUCKET = "trashsorter-images-example"


class Pack:
    """Seeds runs, datasets, artifacts and a DeepLens group; reads the results back."""

    def __init__(self, stack: StackHandle) -> None:
        self.stack = stack
        self.s3 = stack.client("s3")
        self.ddb = stack.client("dynamodb")
        self.sm = stack.client("sagemaker")
        self.gg = stack.client("greengrass")
        self.sqs = stack.client("sqs")
        self.bucket = stack.outputs["ImagesBucketName"]
        self.deeplens_bucket = stack.outputs["DeepLensBucketName"]
        self.env = stack.function_env("PackageFunction")
        self.table = self.env["TABLE_NAME"]
        self.group_id = self._create_group()
        self.notices = self._subscribe_notices()
        self.manifest = self._write_dataset(DATASET_ID, accepted_seq=42)

    # ---------------------------------------------------------------- seeding
    def settings(self, **overrides: str) -> PackageSettings:
        env = {**self.env, "DEEPLENS_GROUP_ID": self.group_id, "DEEPLENS_FUNCTION_ARN": FUNCTION_ARN}
        env.update(overrides)
        return PackageSettings.from_env(env)

    def _create_group(self) -> str:
        group_id = create_deeplens_group(self.gg, inference_function_arn=FUNCTION_ARN)
        group = self.gg.get_group(GroupId=group_id)
        self.initial = self.gg.get_group_version(GroupId=group_id, GroupVersionId=group["LatestVersion"])[
            "Definition"
        ]
        return group_id

    def _subscribe_notices(self) -> str:
        url = self.sqs.create_queue(QueueName="notices")["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        self.stack.client("sns").subscribe(
            TopicArn=self.env["TOPIC_ARN"],
            Protocol="sqs",
            Endpoint=arn,
            Attributes={"RawMessageDelivery": "true"},
        )
        return str(url)

    def _write_dataset(self, dataset_id: str, *, accepted_seq: int) -> list[dict[str, Any]]:
        mapping = json.loads((SAMPLES_DIR / "mapping.json").read_text())
        lines = []
        for label in LABELS:
            materials = mapping[label] if isinstance(mapping[label], list) else [mapping[label]]
            for material in materials:
                for photo in sorted((SAMPLES_DIR / material).glob("*.jpg"))[:2]:
                    key = f"images/{label}/{photo.name}"
                    data = photo.read_bytes()
                    lines.append(
                        {
                            "key": key,
                            "sha256": hashlib.sha256(data).hexdigest(),
                            "label": label,
                            "class_index": LABELS.index(label),
                            "split": "train",
                            "s3_key": key,
                        }
                    )
        prefix = f"datasets/{dataset_id}/"
        self.s3.put_object(
            Bucket=self.bucket, Key=prefix + "labels.txt", Body="".join(f"{x}\n" for x in LABELS)
        )
        self.s3.put_object(
            Bucket=self.bucket,
            Key=prefix + "manifest.jsonl",
            Body="".join(json.dumps(x) + "\n" for x in lines),
        )
        self.put(
            {
                **dataset_key(dataset_id),
                "dataset_id": dataset_id,
                "bucket": self.bucket,
                "prefix": prefix,
                "manifest_uri": f"s3://{self.bucket}/{prefix}manifest.jsonl",
                "labels": list(LABELS),
                "accepted_seq": accepted_seq,
                "created_at": "2024-05-14T09:30:00.000000Z",
            }
        )
        self.put({**STATE_KEY, "accepted_seq": accepted_seq, "baseline_seq": 0})
        return lines

    def put(self, item: dict[str, Any]) -> None:
        self.ddb.put_item(TableName=self.table, Item=serialize(item))

    def get(self, key: dict[str, str]) -> dict[str, Any]:
        item = self.ddb.get_item(TableName=self.table, Key=serialize(key), ConsistentRead=True).get("Item")
        return deserialize(item) if item else {}

    def start_run(
        self,
        job_name: str,
        *,
        backend: str = "sagemaker",
        artifact: bytes | None = None,
        dataset_id: str = DATASET_ID,
    ) -> str:
        """What start_training leaves behind: run + job pointer + lock + the SageMaker job and its output."""
        run_id = f"run-{dataset_id}-{job_name[-2:]}"
        self.put(
            {
                **run_key(run_id),
                "gsi1pk": "RUNS",
                "gsi1sk": "2024-05-14T09:30:12.000000Z",
                "run_id": run_id,
                "dataset_id": dataset_id,
                "job_name": job_name,
                "backend": backend,
                "attempt": 1,
                "status": "in_progress",
                "status_message": "",
                "accepted_seq": 42,
                "created_at": "2024-05-14T09:30:12.000000Z",
            }
        )
        self.put({**job_key(job_name), "run_id": run_id, "created_at": "2024-05-14T09:30:12.000000Z"})
        self.put(
            {
                **LOCK_KEY,
                "holder": run_id,
                "holder_dataset_id": dataset_id,
                "acquired_at": "2024-05-14T09:30Z",
            }
        )
        self.sm.create_training_job(
            TrainingJobName=job_name,
            AlgorithmSpecification={
                "TrainingImage": "811284229777.dkr.ecr.us-east-1.amazonaws.com/image-classification:1",
                "TrainingInputMode": "File",
            },
            RoleArn="arn:aws:iam::123456789012:role/trashsorter-training",
            OutputDataConfig={"S3OutputPath": f"s3://{self.bucket}/training-output"},
            ResourceConfig={"InstanceType": "ml.p2.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50},
            StoppingCondition={"MaxRuntimeInSeconds": 7200},
        )
        if artifact is not None:
            uri = self.artifact_uri(job_name)
            self.s3.put_object(Bucket=self.bucket, Key=uri.split("/", 3)[3], Body=artifact)
        return run_id

    def artifact_uri(self, job_name: str) -> str:
        return str(
            self.sm.describe_training_job(TrainingJobName=job_name)["ModelArtifacts"]["S3ModelArtifacts"]
        )

    def event(self, name: str, job_name: str, *, accuracy: float | None = None) -> dict[str, Any]:
        event = load_event(
            name, **{EVENT_BUCKET: self.bucket, "deeplens-ts-3f9a1c2b7d4e5f60-20240514093012": job_name}
        )
        detail = event["detail"]
        if "ModelArtifacts" in detail:
            detail["ModelArtifacts"]["S3ModelArtifacts"] = self.artifact_uri(job_name)
        if accuracy is not None:
            for metric in detail["FinalMetricDataList"]:
                if metric["MetricName"] == "validation:accuracy":
                    metric["Value"] = accuracy
        return event

    # ---------------------------------------------------------------- reading back
    def tar_members(self, key: str) -> dict[str, bytes]:
        body = self.s3.get_object(Bucket=self.deeplens_bucket, Key=key)["Body"].read()
        with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as archive:
            out = {}
            for member in archive.getmembers():
                handle = archive.extractfile(member)
                assert handle is not None
                out[member.name] = handle.read()
        return out

    def deployments(self) -> list[dict[str, Any]]:
        return list(self.gg.list_deployments(GroupId=self.group_id)["Deployments"])

    def notices_received(self) -> list[dict[str, Any]]:
        got = self.sqs.receive_message(QueueUrl=self.notices, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        return [{"body": m["Body"]} for m in got.get("Messages", [])]

    def table_items(self) -> list[dict[str, Any]]:
        items = self.ddb.scan(TableName=self.table, ConsistentRead=True)["Items"]
        return sorted((deserialize(i) for i in items), key=lambda i: (i["pk"], i["sk"]))


@pytest.fixture
def pack(stack: StackHandle) -> Pack:
    return Pack(stack)


JOB = "deeplens-ts-3f9a1c2b7d4e5f60-20240514093012"


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

    class Boom(Exception):
        pass

    sns = boto3.client("sns", region_name="us-east-1")
    stub = Stubber(sns)
    stub.add_client_error("publish", service_error_code="InternalError", http_status_code=500)
    with stub, pytest.raises(Exception, match="could not publish"):
        handle(event, settings, ddb=pack.ddb, s3=pack.s3, greengrass=pack.gg, sns=sns)
    assert len(pack.deployments()) == 1
    # the lease is held by the crashed attempt: a concurrent delivery is told to retry later
    with pytest.raises(Exception, match="another delivery"):
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
    event = pack.event("training_completed.json", JOB)
    del event["detail"]["ModelArtifacts"], event["detail"]["FinalMetricDataList"]
    outcome = handle(event, pack.settings(), ddb=pack.ddb, s3=pack.s3, greengrass=pack.gg)
    # moto's describe gives the artifact location but no metrics: packaged, then gated out for no accuracy
    assert outcome.outcome == "rejected"
    assert "reported no validation:accuracy" in outcome.reason
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


def test_onnx_model_goes_to_greengrass_v2_with_rollback_stubber(pack: Pack) -> None:
    run_id = pack.start_run(JOB, backend="local", artifact=onnx_model_tar(accuracy=0.9125))
    thing_group = "arn:aws:iot:us-east-1:123456789012:thinggroup/trashsorter-edge"
    settings = pack.settings(EDGE_THING_GROUP_ARN=thing_group)
    event = pack.event("training_completed.json", JOB)
    event["detail"]["AlgorithmSpecification"]["TrainingImage"] = "trashsorter/local-efficientnet-lite0"
    onnx_uri = f"s3://{pack.deeplens_bucket}/models/{JOB}/model.onnx.tar.gz"
    app_uri = f"s3://{pack.deeplens_bucket}/models/{JOB}/trashsorter-edge.zip"
    name = settings.edge_component_name
    # the recipe file in the repo, with what the package step fills in
    expected_recipe = json.loads(RECIPE_FILE.read_text())
    expected_recipe["ComponentName"] = name
    expected_recipe["ComponentVersion"] = "1.0.1"
    expected_recipe["ComponentDescription"] += f" (model {JOB})"
    expected_recipe["ComponentConfiguration"]["DefaultConfiguration"]["ModelId"] = JOB
    expected_recipe["ComponentConfiguration"]["DefaultConfiguration"]["Inbox"]["Bucket"] = (
        settings.images_bucket
    )
    expected_recipe["Manifests"][0]["Artifacts"] = [
        {"URI": app_uri, "Unarchive": "ZIP"},
        {"URI": onnx_uri, "Unarchive": "NONE"},
    ]
    v2 = boto3.client("greengrassv2", region_name="us-east-1")
    stub = Stubber(v2)
    component_arn = f"arn:aws:greengrass:us-east-1:123456789012:components:{name}:versions:1.0.1"
    stub.add_response(
        "create_component_version",
        {
            "arn": component_arn,
            "componentName": name,
            "componentVersion": "1.0.1",
            "creationTimestamp": 0,
            "status": {"componentState": "DEPLOYABLE"},
        },
        {
            "inlineRecipe": json.dumps(expected_recipe, sort_keys=True, separators=(",", ":")).encode(),
            "clientToken": greengrass_v2._token("component", name, "1.0.1"),
        },
    )
    stub.add_response(
        "create_deployment",
        {"deploymentId": "a1b2c3d4-5678-90ab-cdef-111122223333", "iotJobId": "job-1"},
        {
            "targetArn": thing_group,
            "deploymentName": f"trashsorter {JOB}",
            "components": {name: {"componentVersion": "1.0.1"}},
            "deploymentPolicies": {
                "failureHandlingPolicy": "ROLLBACK",
                "componentUpdatePolicy": {"timeoutInSeconds": 60, "action": "NOTIFY_COMPONENTS"},
                "configurationValidationPolicy": {"timeoutInSeconds": 60},
            },
            "clientToken": greengrass_v2._token("deployment", name, "1.0.1", thing_group),
        },
    )
    with stub:
        outcome = handle(event, settings, ddb=pack.ddb, s3=pack.s3, greengrass=pack.gg, greengrassv2=v2)
    stub.assert_no_pending_responses()
    assert outcome.outcome == "deployed"
    assert outcome.deployments[0] == {
        "target": "greengrass-v2",
        "status": "deployed",
        "deployment_id": "a1b2c3d4-5678-90ab-cdef-111122223333",
        "note": "",
    }
    assert (
        outcome.deployments[1]["target"] == "local-device" and outcome.deployments[1]["status"] == "skipped"
    )
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
    assert item is not None and item["component_version"] == "1.0.1"
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
    with stub, pytest.raises(Exception, match="will retry"):
        handle(event, settings, ddb=pack.ddb, s3=pack.s3, greengrassv2=v2)
    pack.ddb.update_item(
        TableName=pack.table,
        Key=serialize(run_key(pack.get(job_key(JOB))["run_id"])),
        UpdateExpression="REMOVE package_claim_completed",
    )
    stub = Stubber(v2)
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
    stub.add_response("create_deployment", {"deploymentId": "d-2"})
    with stub:
        outcome = handle(event, settings, ddb=pack.ddb, s3=pack.s3, greengrassv2=v2)
    assert outcome.outcome == "deployed"
    item = registry.get_deployment(JOB, "greengrass-v2", "initial", table_name=pack.table, ddb=pack.ddb)
    assert item is not None and item["component_version"] == "1.0.1" and item["deployment_id"] == "d-2"


class _Device(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).received.append({"path": self.path, **body})
        payload = json.dumps({"status": "deployed", "model_id": body["model_id"]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


def test_onnx_model_goes_to_the_local_device(pack: Pack) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Device)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Device.received = []
    try:
        pack.start_run(JOB, backend="local", artifact=onnx_model_tar())
        settings = pack.settings(LOCAL_DEVICE_URL=f"http://127.0.0.1:{server.server_port}")
        outcome = handle(pack.event("training_completed.json", JOB), settings, ddb=pack.ddb, s3=pack.s3)
    finally:
        server.shutdown()
    assert outcome.outcome == "deployed"
    assert _Device.received == [
        {
            "path": "/deployments",
            "model_id": JOB,
            "artifact_uri": f"s3://{pack.deeplens_bucket}/models/{JOB}/model.onnx.tar.gz",
            "deployment_id": f"{JOB}-initial",
            "defaults": {"Inbox": {"Bucket": settings.images_bucket}},  # the edge component's inbox
        }
    ]
    assert outcome.deployments[0]["status"] == "skipped"  # no Greengrass v2 thing group configured
