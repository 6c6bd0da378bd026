"""The CreateTrainingJob request, pure: algorithm images, hyperparameters, job names, input channels.

Job names are ``deeplens-ts-<dataset_id>-<UTC yyyymmddHHMMSS>[-a<attempt>]`` (unique per account and
region, as SageMaker requires; DeepLens requires the ``deeplens-`` prefix).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from trashsorter import clock, images, script_mode
from trashsorter.dataset import TRAIN, VALIDATION, DatasetPlan
from trashsorter.errors import ConfigurationError
from trashsorter.job_envelope import (
    CHECKPOINTS_PREFIX,
    IMAGE_CONTENT_TYPE,
    TRAINING_OUTPUT_PREFIX,
    channel,
    job_envelope,
)
from trashsorter.schema import JOB_PREFIX, dataset_manifest_key
from trashsorter.settings import TrainingSettings

__all__ = ["CHECKPOINTS_PREFIX", "IMAGE_CONTENT_TYPE", "TRAINING_OUTPUT_PREFIX", "channel", "job_envelope"]

JOB_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")


def model_artifact_uri(bucket: str, job_name: str) -> str:
    """Where SageMaker writes a job of this stack's: ``<S3OutputPath>/<job>/output/model.tar.gz``."""
    return f"s3://{bucket}/{TRAINING_OUTPUT_PREFIX}{job_name}/output/model.tar.gz"


# The recipe's hyperparameters (AWS DeepLens trash sorter: ResNet-18 fine-tuning).
RECIPE_HYPERPARAMETERS: dict[str, str] = {
    "num_layers": "18",
    "use_pretrained_model": "1",
    "image_shape": "3,224,224",
    "epochs": "10",
    "learning_rate": "0.01",
    "top_k": "2",
    "resize": "224",
    "precision_dtype": "float32",
    "mini_batch_size": "32",
}
PROTECTED_HYPERPARAMETERS = ("num_classes", "num_training_samples")


@dataclass(frozen=True)
class TrainingLaunch:
    """Everything a backend needs to start one run."""

    run_id: str
    job_name: str
    dataset_id: str
    bucket: str
    table_name: str
    request: dict[str, Any]  # the CreateTrainingJob request

    @property
    def hyperparameters(self) -> dict[str, str]:
        return dict(self.request["HyperParameters"])

    @property
    def manifest_uri(self) -> str:
        return f"s3://{self.bucket}/{dataset_manifest_key(self.dataset_id)}"

    @property
    def output_uri(self) -> str:
        return str(self.request["OutputDataConfig"]["S3OutputPath"])


def algorithm_image_uri(region: str, override: str = "") -> str:
    """The built-in image-classification image of ``region`` (``override`` = ALGORITHM_IMAGE_URI wins)."""
    return images.image_uri(
        images.IMAGE_CLASSIFICATION,
        region,
        override,
        what="image-classification algorithm",
        setting="ALGORITHM_IMAGE_URI",
    )


def build_hyperparameters(
    *, num_classes: int, num_training_samples: int, overrides: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The recipe's hyperparameters, overrides merged on top, exact counts, mini_batch_size capped."""
    if num_training_samples < 1:
        raise ConfigurationError("a training job needs at least one training image")
    overrides = dict(overrides or {})
    protected = sorted(set(overrides) & set(PROTECTED_HYPERPARAMETERS))
    if protected:
        raise ConfigurationError(
            f"HYPERPARAMETER_OVERRIDES may not set {', '.join(protected)}: they are computed from the dataset"
        )
    merged = {**RECIPE_HYPERPARAMETERS, **{str(k): str(v) for k, v in overrides.items()}}
    try:
        batch = int(merged["mini_batch_size"])
    except ValueError as exc:
        raise ConfigurationError(
            f"mini_batch_size must be an integer, got {merged['mini_batch_size']!r}"
        ) from exc
    if batch < 1:
        raise ConfigurationError(f"mini_batch_size must be at least 1, got {batch}")
    merged["mini_batch_size"] = str(min(batch, num_training_samples))
    merged["num_classes"] = str(num_classes)
    merged["num_training_samples"] = str(num_training_samples)
    return merged


def make_job_name(
    dataset_id: str, attempt: int, now: datetime | None = None, *, prefix: str = JOB_PREFIX
) -> str:
    """``<prefix>ts-<dataset>-<stamp>[-a<n>]``; ``prefix`` = JOB_NAME_PREFIX carries the stack's part."""
    stamp = (now or clock.now()).strftime("%Y%m%d%H%M%S")
    name = f"{prefix}ts-{dataset_id}-{stamp}" + (f"-a{attempt}" if attempt > 1 else "")
    if not JOB_NAME_RE.match(name):
        raise ConfigurationError(f"invalid training job name {name!r}")
    return name


def build_training_request(
    settings: TrainingSettings,
    plan: DatasetPlan,
    *,
    job_name: str,
    run_id: str,
    source_uri: str = "",
    source_sha256: str = "",
    champion_uri: str = "",
) -> dict[str, Any]:
    """The CreateTrainingJob request for ``plan``: the project's trainer in script mode (TRAINING_ALGORITHM
    ``trashsorter``, see :mod:`trashsorter.script_mode`) or the recipe's built-in image-classification."""
    if settings.training_algorithm == script_mode.ALGORITHM:
        return script_mode.build_request(
            settings,
            plan,
            job_name=job_name,
            run_id=run_id,
            source_uri=source_uri,
            source_sha256=source_sha256,
            champion_uri=champion_uri,
        )
    image = algorithm_image_uri(settings.aws_region, settings.algorithm_image_uri)
    hyperparameters = build_hyperparameters(
        num_classes=len(plan.labels),
        num_training_samples=plan.num_train,
        overrides=settings.hyperparameter_overrides,
    )
    return {
        **job_envelope(settings, plan, job_name=job_name, run_id=run_id),
        "AlgorithmSpecification": {"TrainingImage": image, "TrainingInputMode": "File"},
        "HyperParameters": hyperparameters,
        "InputDataConfig": [
            channel(TRAIN, plan.uri("train.manifest"), "ManifestFile"),
            channel(VALIDATION, plan.uri("validation.manifest"), "ManifestFile"),
            channel("train_lst", plan.uri("train.lst"), "S3Prefix"),
            channel("validation_lst", plan.uri("validation.lst"), "S3Prefix"),
        ],
    }


def source_lineage(request: Mapping[str, Any]) -> dict[str, str]:
    """The trainer code a run executes (script mode): its content hash and S3 object, for lineage."""
    tags = {t["Key"]: t["Value"] for t in request.get("Tags", [])}
    if "trashsorter:source-sha256" not in tags:
        return {}
    submit = json.loads(request["HyperParameters"]["sagemaker_submit_directory"])
    return {"source_sha256": tags["trashsorter:source-sha256"], "source_uri": str(submit)}


def quota_message(instance_type: str, region: str, detail: str, *, spot: bool = False) -> str:
    """A notice a person can act on: which quota, where, and how to raise it."""
    quota = f"{instance_type} for {'spot ' if spot else ''}training job usage"
    return (
        f"SageMaker refused the training job: the account's quota '{quota}' in {region} is too low "
        f"(ResourceLimitExceeded: {detail}). Request an increase in the Service Quotas console "
        f"(AWS services > Amazon SageMaker > '{quota}', region {region}) or with the CLI: "
        f"aws service-quotas list-service-quotas --service-code sagemaker --region {region} "
        f"--query \"Quotas[?QuotaName=='{quota}'].QuotaCode\" and then "
        "aws service-quotas request-service-quota-increase --service-code sagemaker "
        f"--quota-code <QuotaCode> --desired-value 1 --region {region}. "
        "Or deploy with TrainingInstanceType set to a type you have quota for (ml.g4dn.xlarge is the "
        "modern choice). The trigger is kept pending: the next 'Dataset Ready' (threshold or "
        "`trashsorter train`) starts the run again."
    )
