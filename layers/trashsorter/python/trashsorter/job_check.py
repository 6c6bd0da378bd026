"""Trust SageMaker, not the event: what the package step acts on is what ``DescribeTrainingJob`` says.

An EventBridge event is only a hint that a job may have changed. Before the completion step acts on a
"SageMaker Training Job State Change" or a "Training Job Reconciled" event, :func:`verified_job` asks
SageMaker for the job and returns the job *as SageMaker describes it* (status, failure reason, final
metrics, artifact path). An event that disagrees with SageMaker - another status (a forged "Completed"
while the job still runs, a forged "Failed" that would throw a real model away), another artifact path
or other metric values - is refused: the completion step records it on the run and changes nothing.

:func:`check_artifact_uri` is the second half: the only artifact the package step downloads is the one at
this stack's own output prefix for that job (``training-output/<job>/output/model.tar.gz`` in the images
bucket, :func:`trashsorter.training_request.model_artifact_uri`), whatever any record says.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from trashsorter.errors import PackagingError
from trashsorter.events import TrainingStateChange
from trashsorter.reconcile import describe_job
from trashsorter.training_request import model_artifact_uri


@dataclass(frozen=True)
class JobCheck:
    """The job as SageMaker describes it, and why the event was refused ("" = it agrees)."""

    job: TrainingStateChange
    refused: str = ""


def _values(metrics: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for metric in metrics:
        try:
            out[str(metric.get("MetricName"))] = float(metric.get("Value"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            out[str(metric.get("MetricName"))] = math.nan
    return out


def disagreement(event: TrainingStateChange, described: TrainingStateChange) -> str:
    """What the event claims that SageMaker does not ("" when every claim agrees)."""
    if event.status != described.status:
        return f"the event says {event.status}, SageMaker says {described.status or 'nothing'}"
    if event.artifact_uri and event.artifact_uri != described.artifact_uri:
        return (
            f"the event names the artifact {event.artifact_uri!r}, SageMaker names "
            f"{described.artifact_uri or 'none'!r}"
        )
    truth = _values(described.final_metrics)
    for name, value in _values(event.final_metrics).items():
        if name not in truth or not math.isclose(value, truth[name], rel_tol=1e-9, abs_tol=1e-9):
            return f"the event says {name}={value}, SageMaker says {truth.get(name, 'nothing')}"
    return ""


def verified_job(event: TrainingStateChange, sagemaker: Any) -> JobCheck:
    """DescribeTrainingJob for the event's job: the job as SageMaker says, refused when they disagree.

    A throttled or failed DescribeTrainingJob raises :class:`~trashsorter.errors.TransientError` (the event
    is retried, then dead-lettered): without SageMaker's word nothing is decided.
    """
    described = describe_job(event.job_name, sagemaker)
    if not described:
        return JobCheck(event, f"SageMaker does not know training job {event.job_name}")
    job = TrainingStateChange.from_detail(described)
    return JobCheck(job, disagreement(event, job))


def check_artifact_uri(uri: str, *, bucket: str, job_name: str) -> None:
    """PackagingError unless ``uri`` is this stack's own output for ``job_name``."""
    expected = model_artifact_uri(bucket, job_name)
    if uri != expected:
        raise PackagingError(
            f"the job's artifact {uri!r} is not this stack's output for {job_name} ({expected}); not read"
        )
