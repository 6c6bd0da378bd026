"""What every algorithm's CreateTrainingJob request shares (pure): the envelope and the input channels.

Both request builders use it: :mod:`trashsorter.training_request` (the recipe's built-in algorithm, and
the dispatch) and :mod:`trashsorter.script_mode` (the project's trainer), so neither imports the other.
"""

from __future__ import annotations

from typing import Any

from trashsorter.dataset import DatasetPlan
from trashsorter.settings import TrainingSettings
from trashsorter_edge.contract import CHECKPOINTS_PREFIX, TRAINING_OUTPUT_PREFIX

IMAGE_CONTENT_TYPE = "application/x-image"


def channel(
    name: str, s3_uri: str, data_type: str, content_type: str | None = IMAGE_CONTENT_TYPE
) -> dict[str, Any]:
    """One InputDataConfig channel (``content_type`` None: none, as script mode takes it)."""
    spec: dict[str, Any] = {
        "ChannelName": name,
        "DataSource": {
            "S3DataSource": {
                "S3DataType": data_type,
                "S3Uri": s3_uri,
                "S3DataDistributionType": "FullyReplicated",
            }
        },
        "ContentType": content_type,
        "CompressionType": "None",
    }
    if content_type is None:
        del spec["ContentType"]
    return spec


def job_envelope(
    settings: TrainingSettings, plan: DatasetPlan, *, job_name: str, run_id: str
) -> dict[str, Any]:
    """What every algorithm's request shares: name, role, output, instance, stopping, spot, tags."""
    bucket = settings.images_bucket
    stopping: dict[str, int] = {"MaxRuntimeInSeconds": settings.max_runtime_seconds}
    request: dict[str, Any] = {
        "TrainingJobName": job_name,
        "RoleArn": settings.training_role_arn,
        "OutputDataConfig": {"S3OutputPath": f"s3://{bucket}/{TRAINING_OUTPUT_PREFIX}"},
        "ResourceConfig": {
            "InstanceType": settings.instance_type,
            "InstanceCount": settings.instance_count,
            "VolumeSizeInGB": settings.volume_gb,
        },
        "StoppingCondition": stopping,
        "EnableManagedSpotTraining": settings.use_spot,
        "Tags": [
            {"Key": "trashsorter:dataset-id", "Value": plan.dataset_id},
            {"Key": "trashsorter:run-id", "Value": run_id},
            {"Key": "trashsorter:table", "Value": settings.table_name},
        ],
    }
    if settings.kms_key_arn:  # the TrainingKmsKeyArn parameter: model artifacts and the volume
        request["OutputDataConfig"]["KmsKeyId"] = settings.kms_key_arn
        request["ResourceConfig"]["VolumeKmsKeyId"] = settings.kms_key_arn
    if settings.use_spot:
        stopping["MaxWaitTimeInSeconds"] = settings.max_wait_seconds
        request["CheckpointConfig"] = {"S3Uri": f"s3://{bucket}/{CHECKPOINTS_PREFIX}{job_name}/"}
    return request
