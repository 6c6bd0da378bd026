"""The completion world shared by the package-step tests: runs, datasets, artifacts and a DeepLens group
seeded into the template's stack and read back (the `pack` fixture: tests/integration/conftest.py)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from typing import Any

from tests.support.fixtures.greengrass import create_deeplens_group
from tests.support.sagemaker import sagemaker_reports, seed_run
from tests.support.stack import REPO_ROOT, SAMPLES_DIR, StackHandle, load_event
from trashsorter.clients import Clients
from trashsorter.completion import handle_training_state_change
from trashsorter.ddb import deserialize, serialize
from trashsorter.events import parse_training_state_change
from trashsorter.schema import STATE_KEY, dataset_key
from trashsorter.settings import PackageSettings


def handle(event: dict[str, Any], settings: PackageSettings, **clients: Any) -> Any:
    """What functions/package/app.py does: parse the event at the edge, then the one domain call."""
    change = parse_training_state_change(event)
    assert change is not None, event
    return handle_training_state_change(change, settings, Clients(**clients))


JOB = "deeplens-ts-3f9a1c2b7d4e5f60-20240514093012"

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
        seed_run(
            self.ddb, self.table, run_id=run_id, job_name=job_name, dataset_id=dataset_id, backend=backend
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
        sagemaker_reports(job_name, detail)  # a genuine event: SageMaker says the same
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
