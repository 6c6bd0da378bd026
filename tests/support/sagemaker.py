"""SageMaker's own word on a job in the in-process moto backend.

moto's CreateTrainingJob records a job that answers a canned "Completed" with a ``train:progress`` metric.
The package step believes only DescribeTrainingJob (trashsorter.job_check), so a test that delivers a
*genuine* state-change event first makes moto's record say what SageMaker would say for that job:
:func:`sagemaker_reports` copies the event's status, failure reason and final metrics onto it. A test of a
*forged* event leaves the record alone, so SageMaker and the event disagree.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from tests.support.stack import REGION
from trashsorter.ddb import serialize
from trashsorter.schema import LOCK_KEY, job_key, run_key
from trashsorter_cli.local.template import LOCAL_ACCOUNT

# A script-mode program that trains "forever"; on SIGTERM it saves a model (as SageMaker asks algorithms
# to), unless its hyperparameters say "ignore".
SLOW_PROGRAM = """
import os, signal, sys, time
model = os.environ["SM_MODEL_DIR"]
def save(*_):
    open(os.path.join(model, "model.onnx"), "wb").write(b"saved on SIGTERM")
    sys.exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN if os.environ.get("SM_HPS", "").find("ignore") >= 0 else save)
print("training", flush=True)
time.sleep(600)
"""


def training_job(job_name: str) -> Any:
    """moto's record of ``job_name`` (in-process ``mock_aws`` only)."""
    from moto.sagemaker.models import sagemaker_backends

    return sagemaker_backends[LOCAL_ACCOUNT][REGION].training_jobs[job_name]


def sagemaker_reports(job_name: str, detail: Mapping[str, Any]) -> None:
    """Make DescribeTrainingJob answer the detail's status, failure reason and final metrics."""
    job = training_job(job_name)
    now = datetime.now(UTC)
    status = str(detail["TrainingJobStatus"])
    job.training_job_status = job.secondary_status = status
    if detail.get("FailureReason"):
        job.failure_reason = str(detail["FailureReason"])
    job.final_metric_data_list = [
        {"MetricName": str(m["MetricName"]), "Value": float(m["Value"]), "Timestamp": now}
        for m in detail.get("FinalMetricDataList") or []
    ]
    job.training_end_time = job.last_modified_time = now


def create_slow_job(sm: Any, s3: Any, bucket: str, name: str, stopping: dict[str, int], **hyper: str) -> None:
    """CreateTrainingJob (script mode) running :data:`SLOW_PROGRAM`, output under training-output/."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("train.py")
        info.size = len(SLOW_PROGRAM.encode())
        tar.addfile(info, io.BytesIO(SLOW_PROGRAM.encode()))
    s3.put_object(Bucket=bucket, Key="trainer-source/slow.tar.gz", Body=buffer.getvalue())
    sm.create_training_job(
        TrainingJobName=name,
        AlgorithmSpecification={"TrainingImage": "pytorch-training:2", "TrainingInputMode": "File"},
        HyperParameters={
            "sagemaker_program": "train.py",
            "sagemaker_submit_directory": f"s3://{bucket}/trainer-source/slow.tar.gz",
            **hyper,
        },
        RoleArn=f"arn:aws:iam::{LOCAL_ACCOUNT}:role/training",
        OutputDataConfig={"S3OutputPath": f"s3://{bucket}/training-output/"},
        ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1},
        StoppingCondition=stopping,
    )


def seed_run(
    ddb: Any, table: str, *, run_id: str, job_name: str, dataset_id: str, backend: str = "sagemaker"
) -> None:
    """What start_training leaves behind for a started job: the run, the job pointer, the lock."""
    created = "2024-05-14T09:30:12.000000Z"
    items = [
        {**run_key(run_id), "gsi1pk": "RUNS", "gsi1sk": created, "run_id": run_id, "dataset_id": dataset_id,
         "job_name": job_name, "backend": backend, "attempt": 1, "status": "in_progress",
         "status_message": "", "accepted_seq": 42, "created_at": created},
        {**job_key(job_name), "run_id": run_id, "created_at": created},
        {**LOCK_KEY, "holder": run_id, "holder_dataset_id": dataset_id, "acquired_at": "2024-05-14T09:30Z"},
    ]  # fmt: skip
    for item in items:
        ddb.put_item(TableName=table, Item=serialize(item))
