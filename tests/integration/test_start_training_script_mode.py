"""The ``trashsorter`` algorithm on moto: CreateTrainingJob as moto records it, the trainer's source in S3.

Same world as test_start_training.py (real photos ingested into the template's stack), default
``TrainingAlgorithm`` (trashsorter). The exact request is asserted with and without a champion (the ONNX
champion's model.tar.gz becomes the optional ``champion`` channel), on demand and with managed spot; the
source object exists under its content hash, holds the entry point, and the run records the hash.
"""

from __future__ import annotations

import io
import json
import tarfile
from typing import Any

import pytest

from tests.support.stack import REGION, StackHandle, load_event
from tests.support.world import World
from trashsorter import registry
from trashsorter.runs import get_run
from trashsorter.schema import ModelStatus
from trashsorter_cli.local.dispatcher import make_context
from trashsorter_cli.local.template import local_stack_id
from trashsorter_trainer import contract, sourcedir

pytestmark = pytest.mark.integration
PYTORCH_IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.10.0-gpu-py313"


@pytest.fixture(params=["on-demand", "spot"])
def stack_overrides(request: pytest.FixtureRequest) -> dict[str, str]:
    base = {"MinImagesPerLabel": "3", "MinNewImages": "4"}
    if request.param == "spot":
        base |= {"UseSpotTraining": "true", "TrainingMaxWaitSeconds": "14400"}
    return base


@pytest.fixture
def world(stack_overrides: dict[str, str], stack: StackHandle) -> World:
    w = World(stack)
    w.upload(per_material=2)
    w.ingest()
    return w


def channel(name: str, uri: str, kind: str = "S3Prefix") -> dict[str, Any]:
    return {
        "ChannelName": name,
        "DataSource": {
            "S3DataSource": {"S3DataType": kind, "S3Uri": uri, "S3DataDistributionType": "FullyReplicated"}
        },
        "CompressionType": "None",
    }


@pytest.mark.parametrize("with_champion", [False, True])
def test_trashsorter_request_as_moto_records_it(world: World, with_champion: bool) -> None:
    bucket, spot = world.bucket, world.settings.use_spot
    champion_uri = f"s3://{bucket}/training-output/deeplens-old/output/model.tar.gz"
    if with_champion:
        registry.register_model(
            table_name=world.table, model_id="m-old", job_name="deeplens-old", run_id="run-old",
            dataset_id="d-old", dataset_manifest_uri="s3://x/m", metrics={"validation_accuracy": 0.9},
            source_artifact_uri=champion_uri, packaged_artifact_uris={}, model_format="onnx",
            gate_passed=True, gate_reason="first model", status=ModelStatus.CANDIDATE, ddb=world.ddb,
        )  # fmt: skip
        registry.promote("m-old", table_name=world.table, ddb=world.ddb)
    app = world.stack.load_handler("StartTrainingFunction")
    result = app.handler(
        load_event("dataset_ready.json"), make_context("StartTrainingFunction", region=REGION)
    )
    assert result["status"] == "started", result
    job, run_id, dataset_id = result["job_name"], result["run_id"], result["dataset_id"]
    # the stack id the template sees: the local stack's fixed one (local rewrite 8), as AWS::StackId is on AWS
    stack_name = world.stack.client("cloudformation").describe_stacks()["Stacks"][0]["StackName"]
    stack_part = local_stack_id(stack_name, REGION).split("/")[2].split("-")[0]
    assert job.startswith(f"deeplens-{stack_part}-ts-{dataset_id}-")  # the per-stack part

    source = sourcedir.build()
    source_key = f"trainer-source/{source.sha256}/sourcedir.tar.gz"
    source_uri = f"s3://{bucket}/{source_key}"
    prefix = f"s3://{bucket}/datasets/{dataset_id}/"
    described = world.sm.describe_training_job(TrainingJobName=job)
    assert described["AlgorithmSpecification"]["TrainingImage"] == PYTORCH_IMAGE
    assert described["AlgorithmSpecification"]["TrainingInputMode"] == "File"
    # moto's DescribeTrainingJob answers canned MetricDefinitions: the request as sent is on the run record
    run = get_run(world.table, run_id, ddb=world.ddb)
    assert run is not None
    sent = json.loads(run["request"])
    assert {k: v for k, v in sent.items() if k not in ("AlgorithmSpecification", "Tags")} == {
        k: described[k] for k in sent if k not in ("AlgorithmSpecification", "Tags")
    }
    assert sent["AlgorithmSpecification"]["TrainingImage"] == PYTORCH_IMAGE
    assert sent["AlgorithmSpecification"]["MetricDefinitions"] == [
        {"Name": "train:loss", "Regex": "(?:^| )train:loss=([0-9.]+)"},
        {"Name": "train:accuracy", "Regex": "(?:^| )train:accuracy=([0-9.]+)"},
        {"Name": "validation:loss", "Regex": "(?:^| )validation:loss=([0-9.]+)"},
        {"Name": "validation:accuracy", "Regex": "(?:^| )validation:accuracy=([0-9.]+)"},
        {"Name": "champion:validation:accuracy", "Regex": "(?:^| )champion:validation:accuracy=([0-9.]+)"},
    ]
    assert described["HyperParameters"] == {
        "sagemaker_program": '"train.py"',
        "sagemaker_submit_directory": json.dumps(source_uri),
        "sagemaker_region": '"us-east-1"',
        "sagemaker_container_log_level": "20",
    }
    expected_channels = [
        channel("train", prefix + "train.manifest", "ManifestFile"),
        channel("validation", prefix + "validation.manifest", "ManifestFile"),
        channel("train_lst", prefix + "train.lst"),
        channel("validation_lst", prefix + "validation.lst"),
        channel("labels", prefix + "labels.txt"),
        channel("photos", prefix + "manifest.jsonl"),
    ] + ([channel("champion", champion_uri)] if with_champion else [])
    assert described["InputDataConfig"] == expected_channels
    assert described["OutputDataConfig"]["S3OutputPath"] == f"s3://{bucket}/training-output/"
    assert described["ResourceConfig"] == {
        "InstanceType": "ml.g4dn.xlarge",
        "InstanceCount": 1,
        "VolumeSizeInGB": 50,
    }
    assert described["EnableManagedSpotTraining"] is spot
    if spot:
        assert described["StoppingCondition"] == {"MaxRuntimeInSeconds": 7200, "MaxWaitTimeInSeconds": 14400}
        assert described["CheckpointConfig"]["S3Uri"] == f"s3://{bucket}/checkpoints/{job}/"
    else:
        assert described["StoppingCondition"] == {"MaxRuntimeInSeconds": 7200}
    tags = {t["Key"]: t["Value"] for t in world.sm.list_tags(ResourceArn=described["TrainingJobArn"])["Tags"]}
    assert tags == {
        "trashsorter:dataset-id": dataset_id,
        "trashsorter:run-id": run_id,
        "trashsorter:table": world.table,
        "trashsorter:algorithm": "trashsorter",
        "trashsorter:source-sha256": source.sha256,
    }

    # the source object exists under its hash, holds the entry point, and is the bytes built here
    body = world.s3.get_object(Bucket=bucket, Key=source_key)["Body"].read()
    assert body == source.data
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        program = tar.extractfile(contract.PROGRAM)
        assert program is not None and b"trashsorter_trainer.entry import main" in program.read()
    assert run["algorithm"] == "trashsorter"
    assert run["source_sha256"] == source.sha256 and run["source_uri"] == source_uri  # lineage of the code


def test_source_upload_is_idempotent(world: World) -> None:
    from trashsorter import script_mode

    first = script_mode.upload_source(world.s3, world.bucket)
    version = world.s3.head_object(Bucket=world.bucket, Key=first[0].split("/", 3)[3])["ETag"]
    assert script_mode.upload_source(world.s3, world.bucket) == first
    assert world.s3.head_object(Bucket=world.bucket, Key=first[0].split("/", 3)[3])["ETag"] == version
