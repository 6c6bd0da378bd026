"""The events the handlers receive, parsed at the edge into small typed models (never mutated).

* :class:`S3ObjectEvent` - one S3 event notification record (an SQS message body holds ``Records``);
* :class:`DatasetReady` - the stack bus's "Dataset Ready" detail;
* :class:`TrainingStateChange` - "SageMaker Training Job State Change" (its detail is DescribeTrainingJob),
  or the same detail re-published by the reconciler as "Training Job Reconciled";
* :class:`ReconcileTraining` - the scheduled "Reconcile Training" check.

Each ``parse_*`` returns ``None`` (or nothing) for an event of another kind, so the handler can ignore it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from trashsorter.errors import TrashsorterError
from trashsorter.keys import decode_event_key
from trashsorter.observability import logger
from trashsorter.schema import (
    DATASET_READY,
    EVENT_SOURCE,
    RECONCILE_TRAINING,
    SAGEMAKER_SOURCE,
    TRAINING_RECONCILED,
    TRAINING_STATE_CHANGE,
)

S3_TEST_EVENT = "s3:TestEvent"


# ---------------------------------------------------------------- S3 notifications (ingest)
@dataclass(frozen=True)
class S3ObjectEvent:
    """One ``ObjectCreated:*`` / ``ObjectRemoved:*`` record; ``key`` is URL-decoded."""

    event_name: str
    bucket: str
    key: str
    sequencer: str = ""
    version_id: str | None = None
    etag: str | None = None
    size: int = 0

    @property
    def created(self) -> bool:
        return self.event_name.startswith("ObjectCreated:")

    @property
    def removed(self) -> bool:
        return self.event_name.startswith("ObjectRemoved:")

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> S3ObjectEvent:
        s3_part = record.get("s3") or {}
        obj = s3_part.get("object") or {}
        return cls(
            event_name=str(record.get("eventName", "")),
            bucket=str((s3_part.get("bucket") or {}).get("name", "")),
            key=decode_event_key(str(obj.get("key", ""))),
            sequencer=str(obj.get("sequencer") or ""),
            version_id=obj.get("versionId") or None,
            etag=str(obj.get("eTag") or "") or None,
            size=int(obj.get("size") or 0),
        )


def parse_s3_notification(body: str) -> list[S3ObjectEvent]:
    """An SQS message body (S3 notification JSON) as its records (``s3:TestEvent`` -> none).

    A body that is not notification JSON raises: it can never succeed, but failing keeps it (retries,
    then the DLQ) for a person to look at.
    """
    try:
        message = json.loads(body)
    except json.JSONDecodeError as exc:
        raise TrashsorterError(f"SQS message is not S3 notification JSON (kept for the DLQ): {exc}") from exc
    if not isinstance(message, dict):
        raise TrashsorterError("SQS message is not an S3 notification object (kept for the DLQ)")
    if message.get("Event") == S3_TEST_EVENT:
        logger.info("s3:TestEvent ignored")
        return []
    return [S3ObjectEvent.from_record(record) for record in message.get("Records") or []]


# ---------------------------------------------------------------- Dataset Ready (start training)
@dataclass(frozen=True)
class DatasetReady:
    """Why training was asked for: ``threshold`` | ``manual`` | ``pending``.

    ``force`` (only a JSON ``true`` counts) asks a *manual* run to start although the training rule is not
    met; the start-training step re-checks the rule for every other event.
    """

    reason: str = "threshold"
    accepted_seq: int = 0
    counts: Mapping[str, int] = field(default_factory=dict)
    new_images: int = 0
    requested_at: str = ""
    force: bool = False

    @classmethod
    def from_detail(cls, detail: Mapping[str, Any]) -> DatasetReady:
        counts = detail.get("counts") if isinstance(detail.get("counts"), Mapping) else {}
        return cls(
            reason=str(detail.get("reason") or "threshold"),
            accepted_seq=int(detail.get("accepted_seq") or 0),
            counts=MappingProxyType({str(k): int(v) for k, v in (counts or {}).items()}),
            new_images=int(detail.get("new_images") or 0),
            requested_at=str(detail.get("requested_at") or ""),
            force=detail.get("force") is True,
        )


def parse_dataset_ready(event: Mapping[str, Any]) -> DatasetReady | None:
    """The detail of a "Dataset Ready" event of this stack, or ``None`` for any other event."""
    if event.get("source") != EVENT_SOURCE or event.get("detail-type") != DATASET_READY:
        return None
    detail = event.get("detail")
    return DatasetReady.from_detail(detail if isinstance(detail, Mapping) else {})


# ---------------------------------------------------------------- training job state change (completion)
@dataclass(frozen=True)
class TrainingStateChange:
    """What the completion step reads of a training job's state change (or DescribeTrainingJob)."""

    job_name: str
    status: str  # Completed | Failed | Stopped | InProgress ...
    failure_reason: str = ""
    artifact_uri: str = ""  # ModelArtifacts.S3ModelArtifacts
    final_metrics: tuple[Mapping[str, Any], ...] = ()  # FinalMetricDataList
    hyperparameters: Mapping[str, str] = field(default_factory=dict)
    end_time: str = ""

    @classmethod
    def from_detail(cls, detail: Mapping[str, Any]) -> TrainingStateChange:
        metrics = detail.get("FinalMetricDataList") or []
        hyperparameters = detail.get("HyperParameters") or {}
        return cls(
            job_name=str(detail.get("TrainingJobName") or ""),
            status=str(detail.get("TrainingJobStatus") or ""),
            failure_reason=str(detail.get("FailureReason") or ""),
            artifact_uri=str((detail.get("ModelArtifacts") or {}).get("S3ModelArtifacts") or ""),
            final_metrics=tuple(MappingProxyType(dict(m)) for m in metrics if isinstance(m, Mapping)),
            hyperparameters=MappingProxyType(
                {str(k): str(v) for k, v in hyperparameters.items()}
                if isinstance(hyperparameters, Mapping)
                else {}
            ),
            end_time=str(detail.get("TrainingEndTime") or ""),
        )

    def as_detail(self) -> dict[str, Any]:
        """The state-change detail again (what :meth:`from_detail` reads), JSON-ready."""
        detail: dict[str, Any] = {
            "TrainingJobName": self.job_name,
            "TrainingJobStatus": self.status,
            "FinalMetricDataList": [dict(m) for m in self.final_metrics],
            "HyperParameters": dict(self.hyperparameters),
        }
        if self.failure_reason:
            detail["FailureReason"] = self.failure_reason
        if self.artifact_uri:
            detail["ModelArtifacts"] = {"S3ModelArtifacts": self.artifact_uri}
        if self.end_time:
            detail["TrainingEndTime"] = self.end_time
        return detail

    def completed_with(self, described: Mapping[str, Any]) -> TrainingStateChange:
        """A copy whose missing metrics / artifact / hyperparameters / end time come from ``described``."""
        other = TrainingStateChange.from_detail(described)
        return replace(
            self,
            final_metrics=self.final_metrics or other.final_metrics,
            artifact_uri=self.artifact_uri or other.artifact_uri,
            hyperparameters=self.hyperparameters or other.hyperparameters,
            end_time=self.end_time or other.end_time,
        )


def parse_training_state_change(event: Mapping[str, Any]) -> TrainingStateChange | None:
    """The detail of a "SageMaker Training Job State Change" event (or of its re-publication by the
    reconciler, "Training Job Reconciled" on the stack bus), or ``None`` for any other event."""
    kind = (event.get("source"), event.get("detail-type"))
    if kind not in ((SAGEMAKER_SOURCE, TRAINING_STATE_CHANGE), (EVENT_SOURCE, TRAINING_RECONCILED)):
        return None
    detail = event.get("detail")
    return TrainingStateChange.from_detail(detail) if isinstance(detail, Mapping) else None


# ---------------------------------------------------------------- scheduled reconcile (start training)
@dataclass(frozen=True)
class ReconcileTraining:
    """The scheduled check (template: ``StartTrainingFunction.Events.ReconcileSchedule``); no fields."""


def parse_reconcile(event: Mapping[str, Any]) -> ReconcileTraining | None:
    """The scheduled "Reconcile Training" event of this stack, or ``None`` for any other event."""
    if event.get("source") != EVENT_SOURCE or event.get("detail-type") != RECONCILE_TRAINING:
        return None
    return ReconcileTraining()
