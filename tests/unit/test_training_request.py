"""The CreateTrainingJob request, hyperparameters, algorithm images, job names and the local launcher."""

from __future__ import annotations

import hashlib
import json

import pytest

from trashsorter.dataset import SnapshotImage, plan_dataset
from trashsorter.errors import ConfigurationError
from trashsorter.settings import TrainingSettings
from trashsorter.training_request import (
    JOB_NAME_RE,
    algorithm_image_uri,
    build_hyperparameters,
    build_training_request,
    make_job_name,
    quota_message,
)

LABELS = ("Compost", "Landfill", "Recycling")
ENV = {
    "TABLE_NAME": "tbl",
    "IMAGES_BUCKET": "imgs",
    "EVENT_BUS_NAME": "bus",
    "ALLOWED_LABELS": ",".join(LABELS),
    "TRAINING_ROLE_ARN": "arn:aws:iam::123456789012:role/train",
    "AWS_REGION": "eu-west-1",
    "TRAINING_ALGORITHM": "image-classification",  # the recipe (trashsorter: test_start_training_script_mode)
}


def plan(n_per_label: int = 4):
    images = [
        SnapshotImage(f"images/{label}/{i}.jpg", hashlib.sha256(f"{label}{i}".encode()).hexdigest(), label)
        for label in LABELS
        for i in range(n_per_label)
    ]
    return plan_dataset(images, labels=LABELS, validation_fraction=0.2, bucket="imgs")


def test_algorithm_image_per_region_and_override() -> None:
    assert (
        algorithm_image_uri("us-east-1")
        == "811284229777.dkr.ecr.us-east-1.amazonaws.com/image-classification:1"
    )
    assert algorithm_image_uri("cn-north-1").endswith(".amazonaws.com.cn/image-classification:1")
    assert algorithm_image_uri("mars-1", "my/image:2") == "my/image:2"
    with pytest.raises(ConfigurationError, match="mars-north-1"):
        algorithm_image_uri("mars-north-1")


def test_recipe_hyperparameters_exact_counts_and_capped_batch() -> None:
    hp = build_hyperparameters(num_classes=3, num_training_samples=10)
    assert hp == {
        "num_layers": "18",
        "use_pretrained_model": "1",
        "image_shape": "3,224,224",
        "num_classes": "3",
        "num_training_samples": "10",
        "epochs": "10",
        "learning_rate": "0.01",
        "top_k": "2",
        "resize": "224",
        "precision_dtype": "float32",
        "mini_batch_size": "10",
    }
    assert build_hyperparameters(num_classes=3, num_training_samples=500)["mini_batch_size"] == "32"
    overrides = {"mini_batch_size": "64", "epochs": "15"}
    hp = build_hyperparameters(num_classes=3, num_training_samples=20, overrides=overrides)
    assert hp["mini_batch_size"] == "20" and hp["epochs"] == "15"
    for bad in ({"num_classes": "4"}, {"num_training_samples": "1"}, {"mini_batch_size": "x"},
                {"mini_batch_size": "0"}):  # fmt: skip
        with pytest.raises(ConfigurationError):
            build_hyperparameters(num_classes=3, num_training_samples=20, overrides=bad)


def test_job_name_rules() -> None:
    name = make_job_name("0123456789abcdef", 1)
    assert name.startswith("deeplens-") and len(name) <= 63 and JOB_NAME_RE.match(name)
    assert make_job_name("0123456789abcdef", 3).endswith("-a3")


def test_request_on_demand() -> None:
    settings = TrainingSettings.from_env(ENV)
    p = plan()
    request = build_training_request(settings, p, job_name="deeplens-x", run_id="run-1")
    prefix = f"s3://imgs/datasets/{p.dataset_id}/"
    assert request["AlgorithmSpecification"] == {
        "TrainingImage": "685385470294.dkr.ecr.eu-west-1.amazonaws.com/image-classification:1",
        "TrainingInputMode": "File",
    }
    channels = {c["ChannelName"]: c for c in request["InputDataConfig"]}
    assert set(channels) == {"train", "validation", "train_lst", "validation_lst"}
    for name, (kind, obj) in {
        "train": ("ManifestFile", "train.manifest"),
        "validation": ("ManifestFile", "validation.manifest"),
        "train_lst": ("S3Prefix", "train.lst"),
        "validation_lst": ("S3Prefix", "validation.lst"),
    }.items():
        assert channels[name]["ContentType"] == "application/x-image"
        assert channels[name]["DataSource"]["S3DataSource"]["S3DataType"] == kind
        assert channels[name]["DataSource"]["S3DataSource"]["S3Uri"] == prefix + obj
    assert request["HyperParameters"]["num_training_samples"] == str(p.num_train)
    assert request["OutputDataConfig"] == {"S3OutputPath": "s3://imgs/training-output/"}
    assert request["ResourceConfig"] == {
        "InstanceType": "ml.p2.xlarge",
        "InstanceCount": 1,
        "VolumeSizeInGB": 50,
    }
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 7200}
    assert request["EnableManagedSpotTraining"] is False and "CheckpointConfig" not in request
    tags = {t["Key"]: t["Value"] for t in request["Tags"]}
    assert tags == {
        "trashsorter:dataset-id": p.dataset_id,
        "trashsorter:run-id": "run-1",
        "trashsorter:table": "tbl",
    }
    json.dumps(request)  # stored on the run record as JSON


def test_request_spot() -> None:
    env = {
        **ENV,
        "TRAINING_USE_SPOT": "true",
        "TRAINING_MAX_WAIT": "14400",
        "TRAINING_INSTANCE_TYPE": "ml.g4dn.xlarge",
    }
    request = build_training_request(
        TrainingSettings.from_env(env), plan(), job_name="deeplens-j", run_id="r"
    )
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 7200, "MaxWaitTimeInSeconds": 14400}
    assert request["CheckpointConfig"] == {"S3Uri": "s3://imgs/checkpoints/deeplens-j/"}
    assert request["ResourceConfig"]["InstanceType"] == "ml.g4dn.xlarge"


def test_unknown_region_for_sagemaker_names_the_region() -> None:
    settings = TrainingSettings.from_env({**ENV, "AWS_REGION": "xx-nowhere-9"})
    with pytest.raises(ConfigurationError, match="xx-nowhere-9"):
        build_training_request(settings, plan(), job_name="deeplens-j", run_id="r")


def test_quota_message_is_actionable() -> None:
    text = quota_message("ml.p2.xlarge", "eu-west-1", "limit 0")
    for needle in ("ml.p2.xlarge for training job usage", "eu-west-1", "Service Quotas console",
                   "request-service-quota-increase"):  # fmt: skip
        assert needle in text
    assert "ml.g4dn.xlarge for spot training job usage" in quota_message("ml.g4dn.xlarge", "x", "", spot=True)


def test_optional_kms_key_encrypts_output_and_volume() -> None:
    key = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    plain = build_training_request(TrainingSettings.from_env(ENV), plan(), job_name="deeplens-j", run_id="r")
    assert "KmsKeyId" not in plain["OutputDataConfig"] and "VolumeKmsKeyId" not in plain["ResourceConfig"]
    request = build_training_request(
        TrainingSettings.from_env({**ENV, "TRAINING_KMS_KEY_ARN": key}),
        plan(),
        job_name="deeplens-j",
        run_id="r",
    )
    assert request["OutputDataConfig"]["KmsKeyId"] == key
    assert request["ResourceConfig"]["VolumeKmsKeyId"] == key
