"""Typed settings per function, read from the environment that template.yaml sets.

Each handler builds its settings once at import (cold start): ``SETTINGS = IngestSettings.from_env()``.
A missing or malformed variable raises :class:`~trashsorter.errors.ConfigurationError` naming the variable,
so a misconfigured deployment fails loudly on its first invocation instead of mis-sorting images.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trashsorter.errors import ConfigurationError


class _Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        """Build from ``env`` (default ``os.environ``); field aliases are the variable names."""
        source = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            var = field.alias or name.upper()
            if var in source:
                values[var] = source[var]
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '?'}: {err['msg']}" for err in exc.errors()
            )
            raise ConfigurationError(f"invalid {cls.__name__} from environment: {problems}") from exc


class CommonSettings(_Settings):
    """What every function shares (Globals in template.yaml)."""

    table_name: str = Field(alias="TABLE_NAME", min_length=1)
    images_bucket: str = Field(alias="IMAGES_BUCKET", min_length=1)
    event_bus_name: str = Field(alias="EVENT_BUS_NAME", min_length=1)
    topic_arn: str = Field(default="", alias="TOPIC_ARN")
    allowed_labels: tuple[str, ...] = Field(alias="ALLOWED_LABELS")
    min_images_per_label: int = Field(default=50, alias="MIN_IMAGES_PER_LABEL", ge=1)
    min_new_images: int = Field(default=20, alias="MIN_NEW_IMAGES", ge=0)

    @field_validator("allowed_labels", mode="before")
    @classmethod
    def _split_labels(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("allowed_labels")
    @classmethod
    def _labels_unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one label is required")
        lowered = [label.lower() for label in value]
        if len(set(lowered)) != len(lowered):
            raise ValueError(f"labels must be unique ignoring case: {', '.join(value)}")
        return value


class IngestSettings(CommonSettings):
    max_image_bytes: int = Field(default=20 * 1024 * 1024, alias="MAX_IMAGE_BYTES", ge=1)
    max_image_pixels: int = Field(default=120_000_000, alias="MAX_IMAGE_PIXELS", ge=1)
    min_image_side: int = Field(default=64, alias="MIN_IMAGE_SIDE", ge=1)
    max_aspect_ratio: float = Field(default=10.0, alias="MAX_ASPECT_RATIO", ge=1)
    # once per batch: publish when ingest was quiet this long (SQS DelaySeconds, 0-900; 0 = at the crossing)
    settle_seconds: int = Field(default=0, alias="INGEST_SETTLE_SECONDS", ge=0, le=900)
    settle_queue_url: str = Field(default="", alias="SETTLE_QUEUE_URL")


class TrainingSettings(CommonSettings):
    validation_fraction: float = Field(default=0.2, alias="VALIDATION_FRACTION", gt=0, lt=1)
    # trashsorter = the project's ONNX trainer (script mode, PyTorch container); image-classification = the
    # recipe's built-in algorithm (MXNet, DeepLens only)
    training_algorithm: Literal["trashsorter", "image-classification"] = Field(
        default="trashsorter", alias="TRAINING_ALGORITHM"
    )
    # the per-stack part of every job name ("deeplens-<stack>-"): rule and IAM match only this stack's jobs
    job_name_prefix: str = Field(
        default="deeplens-", alias="JOB_NAME_PREFIX", pattern=r"^deeplens-([a-z0-9]{1,12}-)?$"
    )
    training_role_arn: str = Field(default="", alias="TRAINING_ROLE_ARN")
    # empty = the algorithm's default: ml.g4dn.xlarge (trashsorter; PyTorch 2 cannot use the p2's K80) or
    # the recipe's ml.p2.xlarge (image-classification)
    instance_type_setting: str = Field(default="", alias="TRAINING_INSTANCE_TYPE")
    instance_count: int = Field(default=1, alias="TRAINING_INSTANCE_COUNT", ge=1)
    volume_gb: int = Field(default=50, alias="TRAINING_VOLUME_GB", ge=1)
    kms_key_arn: str = Field(default="", alias="TRAINING_KMS_KEY_ARN")  # output and volume; "" = AWS managed
    max_runtime_seconds: int = Field(default=7200, alias="TRAINING_MAX_RUNTIME", ge=60)
    use_spot: bool = Field(default=False, alias="TRAINING_USE_SPOT")
    max_wait_seconds: int = Field(default=0, alias="TRAINING_MAX_WAIT", ge=0)
    hyperparameter_overrides: dict[str, str] = Field(default_factory=dict, alias="HYPERPARAMETER_OVERRIDES")
    algorithm_image_uri: str = Field(default="", alias="ALGORITHM_IMAGE_URI")
    pytorch_image_uri: str = Field(default="", alias="PYTORCH_IMAGE_URI")
    aws_region: str = Field(default="us-east-1", alias="AWS_REGION")
    # the lifecycle rule's DatasetObjectDays: how long a stored snapshot object may be reused unchecked
    # (trashsorter.dataset_store.reuse_window); unset = every stored object is checked
    dataset_object_days: int | None = Field(default=None, alias="DATASET_OBJECT_DAYS", ge=1)

    @field_validator("hyperparameter_overrides", mode="before")
    @classmethod
    def _parse_overrides(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value or "{}")
            except json.JSONDecodeError as exc:
                raise ValueError(f"not JSON: {exc}") from exc
            if not isinstance(value, dict):
                raise ValueError("must be a JSON object")
            value = {str(k): str(v) for k, v in value.items()}
        return value

    @property
    def instance_type(self) -> str:
        if self.instance_type_setting:
            return self.instance_type_setting
        return "ml.g4dn.xlarge" if self.training_algorithm == "trashsorter" else "ml.p2.xlarge"

    @property
    def longest_job_seconds(self) -> int:
        """The longest a job may take once requested: its runtime or, with spot, its maximum wait."""
        return max(self.max_runtime_seconds, self.max_wait_seconds)

    @model_validator(mode="after")
    def _spot_wait(self) -> Self:
        if not self.training_role_arn:
            raise ValueError("TRAINING_ROLE_ARN is required (the stack's TrainingRole)")
        if self.use_spot and self.max_wait_seconds < self.max_runtime_seconds:
            raise ValueError("TRAINING_MAX_WAIT must be >= TRAINING_MAX_RUNTIME for spot training")
        return self


class PackageSettings(CommonSettings):
    deeplens_bucket: str = Field(alias="DEEPLENS_BUCKET", min_length=1)
    min_validation_accuracy: float = Field(default=0.8, alias="MIN_VALIDATION_ACCURACY", ge=0, le=1)
    champion_tolerance: float = Field(default=0.02, alias="CHAMPION_TOLERANCE", ge=0, le=1)
    # per-class guard of the fair gate: no class's recall may drop by more than this vs the champion
    max_recall_drop: float = Field(default=0.1, alias="MAX_RECALL_DROP", ge=0, le=1)
    # absolute per-class floor of the fair gate (every class's recall >= this; 0 = off)
    min_class_recall: float = Field(default=0.0, alias="MIN_CLASS_RECALL", ge=0, le=1)
    deeplens_group_id: str = Field(default="", alias="DEEPLENS_GROUP_ID")
    deeplens_function_arn: str = Field(default="", alias="DEEPLENS_FUNCTION_ARN")
    edge_thing_group_arn: str = Field(default="", alias="EDGE_THING_GROUP_ARN")
    edge_component_name: str = Field(default="com.trashsorter.classifier", alias="EDGE_COMPONENT_NAME")

    @field_validator("deeplens_bucket")
    @classmethod
    def _deeplens_prefix(cls, value: str) -> str:
        if not value.startswith("deeplens-"):
            raise ValueError("DeepLens reads models only from buckets whose name starts with 'deeplens-'")
        return value
