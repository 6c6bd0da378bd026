"""The local stack's SageMaker training jobs: CreateTrainingJob on the local endpoint runs the job for real.

moto's CreateTrainingJob only records a job (and answers a canned "Completed"). :func:`install` wraps moto's
SageMaker backend so that a job whose request is script mode (``sagemaker_program`` in its hyperparameters,
i.e. the ``trashsorter`` algorithm) is executed as the SageMaker service and the training container would:

1. a job folder laid out like ``/opt/ml`` (``input/config/hyperparameters.json``, ``inputdataconfig.json``,
   ``input/data/<channel>/``, ``model/``, ``output/``, ``code/``);
2. the channels fetched from S3 (``S3Prefix``: every object under the prefix, named relative to it;
   ``ManifestFile``: the listed keys under the manifest's prefix) and ``sagemaker_submit_directory``
   unpacked into ``code/``;
3. the container environment (``SM_MODEL_DIR``, ``SM_CHANNEL_<NAME>``, ``SM_HPS`` ...) and the entry point
   run as ``python <sagemaker_program>`` in ``code/`` in a child process: its own process group and
   ``PR_SET_PDEATHSIG`` (Linux), so it dies with the stack; :func:`stop_all` ends the running ones;
4. the request's ``MetricDefinitions`` applied to its log -> ``FinalMetricDataList``;
5. ``model/`` packed as ``model.tar.gz`` to ``<S3OutputPath>/<job>/output/model.tar.gz``;
6. DescribeTrainingJob answers the real status (InProgress, then Completed or Failed with the reason: the
   job's ``output/failure``; for a job the kernel killed (exit code -9, the out-of-memory killer's signal)
   the photos it was given and this machine's memory), the
   request's MetricDefinitions, the metrics and the artifact; the "SageMaker Training Job State Change"
   event (detail = DescribeTrainingJob) goes to the default bus, as SageMaker puts it.

A job of another algorithm (the recipe's built-in image-classification, MXNet) cannot run here: it ends
``Failed`` at once with a FailureReason that says so (and its state-change event), never a fake success.

Time limits and stopping, as SageMaker documents them (API ``StoppingCondition``, ``StopTrainingJob``,
``SecondaryStatusTransition``): ``MaxRuntimeInSeconds`` must lie in 1..2,419,200 (28 days) and a
``MaxWaitTimeInSeconds`` must not be below it, else CreateTrainingJob is refused (ValidationException).
A job still running when ``MaxRuntimeInSeconds`` has passed, or one asked to stop with ``StopTrainingJob``,
is ``Stopping``: the algorithm gets SIGTERM and :attr:`JobEmulator.grace_s` (SageMaker's 120 s) to save its
model, then SIGKILL; it ends ``Stopped`` with SecondaryStatus ``MaxRuntimeExceeded`` or ``Stopped``, a model
saved in ``model/`` is uploaded, and the state-change event goes out. StopTrainingJob on a job that is not
``InProgress`` is a ValidationException. (moto has no StopTrainingJob: :func:`install_stop_training_job`
adds it; a job moto only records, with no process, goes to ``Stopped`` at once.)
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from trashsorter import runs
from trashsorter.schema import SAGEMAKER_SOURCE, TRAINING_STATE_CHANGE
from trashsorter_cli.local import children
from trashsorter_edge.contract import TRAIN_LOSS, VALIDATION_ACCURACY
from trashsorter_trainer.contract import (
    EPOCH_LINE,
    FEATURES_LINE,
    LST_CHANNELS,
    OOM_SIGNAL,
    listed_photos,
    memory_gb,
    out_of_memory_reason,
    parse_metrics,
)

LOG = logging.getLogger("trashsorter.local.sagemaker")
MAX_FAILURE_REASON = 1024
STOP_TIMEOUT = 15.0  # seconds stop_all waits for the job threads
STOP_GRACE_SECONDS = 120.0  # SageMaker: SIGTERM, then 120 s to save the model before the job ends
MAX_RUNTIME_LIMIT = 28 * 24 * 3600  # StoppingCondition.MaxRuntimeInSeconds: at most 28 days


def _split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


def _decoded(value: str) -> str:
    try:
        decoded = json.loads(value)
    except ValueError:
        return value
    return decoded if isinstance(decoded, str) else value


@dataclass
class JobEmulator:
    """Runs script-mode training jobs created on the local endpoint (one thread + child per job)."""

    client: Callable[[str], Any]  # service name -> boto3 client on the local endpoint
    work_root: Path
    python: str = sys.executable
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    threads: dict[str, threading.Thread] = field(default_factory=dict)
    stopping: threading.Event = field(default_factory=threading.Event)  # set by stop_all (local down)
    grace_s: float = STOP_GRACE_SECONDS
    stop_requests: dict[str, str] = field(default_factory=dict)  # job -> secondary status it ends with
    backend_jobs: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ layout and inputs
    def job_dir(self, name: str) -> Path:
        return self.work_root / name / "opt" / "ml"

    def fetch_channel(self, spec: Mapping[str, Any], target: Path) -> None:
        source = spec["DataSource"]["S3DataSource"]
        s3 = self.client("s3")
        bucket, key = _split_s3(source["S3Uri"])
        if source["S3DataType"] == "ManifestFile":
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            manifest = json.loads(body)
            prefix_bucket, prefix = _split_s3(manifest[0]["prefix"])
            pairs = [(prefix_bucket, prefix + rel, rel) for rel in manifest[1:]]
        else:
            base = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
            pairs = [
                (bucket, o["Key"], o["Key"][len(base) :]) for page in pages for o in page.get("Contents", [])
            ]
        for obj_bucket, obj_key, relative in pairs:
            path = target / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(s3.get_object(Bucket=obj_bucket, Key=obj_key)["Body"].read())

    def prepare(self, request: Mapping[str, Any]) -> tuple[Path, dict[str, str], str]:
        """The /opt/ml layout, inputs fetched; returns (root, container env, program)."""
        root = self.job_dir(request["TrainingJobName"])
        hyperparameters = dict(request.get("HyperParameters") or {})
        config = root / "input" / "config"
        for sub in (config, root / "model", root / "output", root / "code"):
            sub.mkdir(parents=True, exist_ok=True)
        (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
        channels = {c["ChannelName"]: c for c in request.get("InputDataConfig", [])}
        (config / "inputdataconfig.json").write_text(
            json.dumps({name: {"TrainingInputMode": "File"} for name in channels})
        )
        (config / "resourceconfig.json").write_text(
            json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]})
        )
        for name, spec in channels.items():
            self.fetch_channel(spec, root / "input" / "data" / name)
        bucket, key = _split_s3(_decoded(hyperparameters["sagemaker_submit_directory"]))
        archive = self.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(root / "code", filter="data")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", str(root)),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "PYTHONUNBUFFERED": "1",
            "TRAINING_JOB_NAME": request["TrainingJobName"],
            "SM_MODEL_DIR": str(root / "model"),
            "SM_OUTPUT_DIR": str(root / "output"),
            "SM_OUTPUT_DATA_DIR": str(root / "output" / "data"),
            "SM_INPUT_DIR": str(root / "input"),
            "SM_INPUT_CONFIG_DIR": str(config),
            "SM_CHANNELS": json.dumps(sorted(channels)),
            "SM_HPS": json.dumps({k: _decoded(v) for k, v in hyperparameters.items()}),
            "SM_CURRENT_HOST": "algo-1",
            "SM_HOSTS": '["algo-1"]',
            "SM_NUM_GPUS": "0",
            **{f"SM_CHANNEL_{name.upper()}": str(root / "input" / "data" / name) for name in channels},
        }
        return root, env, _decoded(hyperparameters["sagemaker_program"])

    # ------------------------------------------------------------------ run
    def run(self, request: Mapping[str, Any], backend_job: Any) -> dict[str, Any]:
        """Run the job to its end; updates ``backend_job`` (moto's record) and puts the state-change event."""
        name = request["TrainingJobName"]
        failure: str | None = None
        metrics: dict[str, float] = {}
        try:
            root, env, program = self.prepare(request)
            log_path = self.work_root / name / "training.log"
            lines: list[str] = []
            with log_path.open("w") as log:
                if self.stopping.is_set():
                    raise RuntimeError("the local stack is stopping")
                child = children.spawn(
                    [self.python, program], log=subprocess.PIPE, env=env, cwd=root / "code"
                )
                self.children[name] = child
                limit = float(request.get("StoppingCondition", {}).get("MaxRuntimeInSeconds") or 86400)
                timer = threading.Timer(limit, self.stop_job, args=(name, "MaxRuntimeExceeded"))
                timer.daemon = True
                timer.start()
                assert child.stdout is not None
                for raw in child.stdout:
                    line = raw.decode("utf-8", "replace").rstrip("\n")
                    lines.append(line)
                    self.progress(request, line)
                    log.write(line + "\n")
                    log.flush()
                code = child.wait()
                timer.cancel()
            self.children.pop(name, None)
            definitions = request["AlgorithmSpecification"].get("MetricDefinitions", [])
            metrics = parse_metrics(lines, definitions)
            if name in self.stop_requests:
                if any((root / "model").iterdir()):  # what the algorithm saved in its window is kept
                    self.upload_model(request, root / "model")
            elif code != 0:
                failure = f"AlgorithmError: {self.failure_reason(root, code, lines)} (exit code {code})"
            else:
                self.upload_model(request, root / "model")
        except Exception as exc:  # noqa: BLE001 - every failure becomes the job's FailureReason
            failure = f"ClientError: {type(exc).__name__}: {exc}"
        if self.stopping.is_set():  # the stack is going down: its bus and functions are gone
            self.finish(backend_job, metrics, "ClientError: stopped with the local stack")
            return {"TrainingJobName": name, "TrainingJobStatus": "Failed"}
        if name in self.stop_requests and failure is None:
            self.finish_stopped(backend_job, metrics, self.stop_requests[name], root / "model")
        else:
            self.finish(backend_job, metrics, failure)
        detail = self.describe(name)
        self.put_event(detail)
        return detail

    @staticmethod
    def failure_reason(root: Path, code: int, lines: list[str]) -> str:
        """What the job wrote to ``output/failure``; for a job the kernel killed (SIGKILL, as its
        out-of-memory killer does) that could write nothing, the memory reason; else its last log lines."""
        reason_file = root / "output" / "failure"
        if reason_file.is_file():
            return reason_file.read_text()
        if code == -OOM_SIGNAL:
            data = root / "input" / "data"
            return out_of_memory_reason(
                listed_photos(data / c for c in LST_CHANNELS), memory_gb(), "this machine"
            )
        return "\n".join(lines[-5:])

    def progress(self, request: Mapping[str, Any], line: str) -> None:
        """Local convenience (CloudWatch's role on AWS): an epoch line or a feature-pass line becomes the run
        record's progress."""
        tags = {t["Key"]: t["Value"] for t in request.get("Tags") or []}
        epoch, features = EPOCH_LINE.match(line), FEATURES_LINE.match(line)
        if (epoch is None and features is None) or "trashsorter:run-id" not in tags:
            return
        progress: dict[str, Any]
        if features is not None:
            progress = {"phase": "features", "done": int(features.group(1)), "total": int(features.group(2))}
        else:
            assert epoch is not None
            values = parse_metrics([line], request["AlgorithmSpecification"].get("MetricDefinitions", []))
            progress = {
                "epoch": int(epoch.group(1)),
                "epochs": int(epoch.group(2)),
                "train_loss": values.get(TRAIN_LOSS, 0.0),
                "val_accuracy": values.get(VALIDATION_ACCURACY, 0.0),
            }
        try:
            runs.record_progress(
                tags["trashsorter:table"], tags["trashsorter:run-id"], progress, ddb=self.client("dynamodb")
            )
        except Exception as exc:  # noqa: BLE001 - progress is informative; training goes on
            LOG.warning("progress of %s not recorded: %s", request["TrainingJobName"], exc)

    def upload_model(self, request: Mapping[str, Any], model_dir: Path) -> str:
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / "model.tar.gz"
            with tarfile.open(archive, "w:gz") as tar:
                for path in sorted(model_dir.iterdir()):
                    tar.add(path, arcname=path.name)
            output = request["OutputDataConfig"]["S3OutputPath"].rstrip("/")
            uri = f"{output}/{request['TrainingJobName']}/output/model.tar.gz"
            bucket, key = _split_s3(uri)
            self.client("s3").upload_file(str(archive), bucket, key)
        return uri

    @staticmethod
    def start(backend_job: Any, metric_definitions: list[dict[str, str]]) -> None:
        """moto's record as SageMaker shows a job that has just started."""
        backend_job.algorithm_specification["MetricDefinitions"] = metric_definitions
        backend_job.training_job_status = "InProgress"
        backend_job.secondary_status = "Starting"
        backend_job.final_metric_data_list = []
        backend_job.model_artifacts = None
        backend_job.training_end_time = None

    @staticmethod
    def finish(backend_job: Any, metrics: Mapping[str, float], failure: str | None) -> None:
        now = datetime.now(UTC)
        backend_job.training_end_time = backend_job.last_modified_time = now
        backend_job.final_metric_data_list = [
            {"MetricName": k, "Value": float(v), "Timestamp": now} for k, v in metrics.items()
        ]
        if failure is None:
            output = backend_job.output_data_config["S3OutputPath"].rstrip("/")
            backend_job.model_artifacts = {
                "S3ModelArtifacts": f"{output}/{backend_job.training_job_name}/output/model.tar.gz"
            }
            backend_job.training_job_status = backend_job.secondary_status = "Completed"
        else:
            backend_job.failure_reason = failure[:MAX_FAILURE_REASON]
            backend_job.training_job_status = backend_job.secondary_status = "Failed"

    @staticmethod
    def finish_stopped(
        backend_job: Any, metrics: Mapping[str, float], secondary: str, model_dir: Path
    ) -> None:
        """moto's record as SageMaker shows a stopped job (the model, when one was saved in time)."""
        now = datetime.now(UTC)
        backend_job.training_end_time = backend_job.last_modified_time = now
        backend_job.final_metric_data_list = [
            {"MetricName": k, "Value": float(v), "Timestamp": now} for k, v in metrics.items()
        ]
        backend_job.model_artifacts = None
        if model_dir.is_dir() and any(model_dir.iterdir()):
            output = backend_job.output_data_config["S3OutputPath"].rstrip("/")
            backend_job.model_artifacts = {
                "S3ModelArtifacts": f"{output}/{backend_job.training_job_name}/output/model.tar.gz"
            }
        backend_job.training_job_status = "Stopped"
        backend_job.secondary_status = secondary
        if secondary == "MaxRuntimeExceeded":
            backend_job.failure_reason = (
                "MaxRuntimeExceeded: the job ran past StoppingCondition.MaxRuntimeInSeconds"
            )

    def stop_job(self, name: str, secondary: str = "Stopped") -> bool:
        """SIGTERM the job's process group, SIGKILL after :attr:`grace_s`; False when it is not running."""
        child = self.children.get(name)
        if child is None or child.poll() is not None or name in self.stop_requests:
            return False
        self.stop_requests[name] = secondary
        job = self.backend_jobs.get(name)
        if job is not None:
            job.training_job_status = job.secondary_status = "Stopping"
        threading.Thread(
            target=children.stop, args=([child], self.grace_s), name=f"stop-{name}", daemon=True
        ).start()
        return True

    def describe(self, name: str) -> dict[str, Any]:
        described: dict[str, Any] = self.client("sagemaker").describe_training_job(TrainingJobName=name)
        described.pop("ResponseMetadata", None)
        return described

    def put_event(self, detail: Mapping[str, Any]) -> None:
        self.client("events").put_events(
            Entries=[
                {
                    "Source": SAGEMAKER_SOURCE,
                    "DetailType": TRAINING_STATE_CHANGE,
                    "Detail": json.dumps(detail, default=_iso),
                    "EventBusName": "default",
                    "Resources": [detail["TrainingJobArn"]],
                }
            ]
        )

    def refuse(self, request: dict[str, Any], backend_job: Any) -> None:
        """A built-in-algorithm job: Failed, with the reason, in a thread (as SageMaker reports it later)."""
        image = request["AlgorithmSpecification"].get("TrainingImage", "?")
        reason = (
            f"ClientError: the local stack runs only script-mode jobs (TrainingAlgorithm=trashsorter); "
            f"{image} (the built-in algorithm) runs on AWS only"
        )
        self.start(backend_job, [])

        def fail() -> None:
            if self.stopping.is_set():
                return
            self.finish(backend_job, {}, reason)
            self.put_event(self.describe(request["TrainingJobName"]))

        thread = threading.Thread(target=fail, name=f"job-{request['TrainingJobName']}", daemon=True)
        self.threads[request["TrainingJobName"]] = thread
        thread.start()

    def submit(self, request: dict[str, Any], backend_job: Any) -> None:
        """Start ``request`` in a thread (the CreateTrainingJob call returns at once, as on AWS)."""
        self.start(backend_job, request["AlgorithmSpecification"].get("MetricDefinitions", []))
        self.backend_jobs[request["TrainingJobName"]] = backend_job
        thread = threading.Thread(
            target=self.run,
            args=(request, backend_job),
            name=f"job-{request['TrainingJobName']}",
            daemon=True,
        )
        self.threads[request["TrainingJobName"]] = thread
        thread.start()

    def stop_all(self) -> None:
        """Stop every running job's process group (``local down``), as every child of the stack stops.

        Then wait for the job threads, so none reports to an endpoint that is going away.
        """
        self.stopping.set()
        running = [child for child in self.children.values() if child.poll() is None]
        children.stop(running)
        deadline = time.monotonic() + STOP_TIMEOUT
        for thread in list(self.threads.values()):
            thread.join(timeout=max(0.0, deadline - time.monotonic()))


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def is_script_mode(hyperparameters: Mapping[str, Any] | None) -> bool:
    return bool(hyperparameters) and "sagemaker_program" in (hyperparameters or {})


_INSTALLED: dict[str, Any] = {}


def check_stopping_condition(stopping: Mapping[str, Any] | None) -> None:
    """CreateTrainingJob's rules for StoppingCondition (ValidationException, as SageMaker answers)."""
    from moto.sagemaker.exceptions import ValidationError

    stopping = stopping or {}
    runtime = stopping.get("MaxRuntimeInSeconds")
    if runtime is not None and not 1 <= int(runtime) <= MAX_RUNTIME_LIMIT:
        raise ValidationError(f"MaxRuntimeInSeconds must be between 1 and {MAX_RUNTIME_LIMIT}, got {runtime}")
    wait = stopping.get("MaxWaitTimeInSeconds")
    if wait is not None and int(wait) < int(runtime or 86400):
        raise ValidationError(
            f"MaxWaitTimeInSeconds ({wait}) must be greater than or equal to MaxRuntimeInSeconds ({runtime})"
        )


def install_stop_training_job() -> None:
    """Give moto the StopTrainingJob API (backend + response), once per process."""
    from moto.core.responses import EmptyResult
    from moto.sagemaker.exceptions import ValidationError
    from moto.sagemaker.models import SageMakerModelBackend
    from moto.sagemaker.responses import SageMakerResponse

    if getattr(SageMakerModelBackend, "stop_training_job", None) is not None:
        return

    def stop_training_job(self: Any, training_job_name: str) -> None:
        job = self.training_jobs.get(training_job_name)
        if job is None:
            raise ValidationError(message="Requested resource not found.")
        if job.training_job_status != "InProgress":
            raise ValidationError(
                message=f"training job {training_job_name} is {job.training_job_status}, not InProgress"
            )
        emulator = _INSTALLED.get("emulator")
        if emulator is not None and emulator.stop_job(training_job_name):
            return  # Stopping; the job thread ends it Stopped
        job.training_job_status = job.secondary_status = "Stopped"
        job.training_end_time = job.last_modified_time = datetime.now(UTC)

    def respond(self: Any) -> Any:
        self.sagemaker_backend.stop_training_job(self._get_param("TrainingJobName"))
        return EmptyResult()

    SageMakerModelBackend.stop_training_job = stop_training_job  # type: ignore[attr-defined]
    SageMakerResponse.stop_training_job = respond  # type: ignore[attr-defined]


def install(emulator: JobEmulator) -> JobEmulator:
    """Wrap moto's ``SageMakerModelBackend.create_training_job`` (in this process) to run script-mode jobs."""
    from moto.sagemaker.models import SageMakerModelBackend

    _INSTALLED["emulator"] = emulator
    if "original" in _INSTALLED:
        return emulator
    original = SageMakerModelBackend.create_training_job
    _INSTALLED["original"] = original

    def create_training_job(self: Any, **kwargs: Any) -> Any:
        check_stopping_condition(kwargs.get("stopping_condition"))
        spec = copy.deepcopy(kwargs.get("algorithm_specification") or {})
        job = original(self, **kwargs)
        active = _INSTALLED.get("emulator")
        if active is not None:
            request = {
                "TrainingJobName": kwargs["training_job_name"],
                "HyperParameters": dict(kwargs.get("hyper_parameters") or {}),
                "AlgorithmSpecification": spec,
                "InputDataConfig": copy.deepcopy(kwargs.get("input_data_config") or []),
                "OutputDataConfig": dict(kwargs.get("output_data_config") or {}),
                "Tags": copy.deepcopy(kwargs.get("tags") or []),
                "StoppingCondition": dict(kwargs.get("stopping_condition") or {}),
            }
            if is_script_mode(request["HyperParameters"]):
                active.submit(request, job)
            else:
                active.refuse(request, job)
        return job

    SageMakerModelBackend.create_training_job = create_training_job  # type: ignore[method-assign]
    return emulator


def uninstall() -> None:
    from moto.sagemaker.models import SageMakerModelBackend

    emulator = _INSTALLED.pop("emulator", None)
    if emulator is not None:
        emulator.stop_all()
    original = _INSTALLED.pop("original", None)
    if original is not None:
        SageMakerModelBackend.create_training_job = original  # type: ignore[method-assign]
