"""Start training on moto: real photos ingested into the template's stack -> exactly one training job.

The catalogue is built by the ingest step's own code (``rebuild_catalogue``) from real TrashNet photos put
into the stack's bucket; the handler is ``functions/start_training/app.py`` with its resolved environment.
SageMaker refusals moto cannot produce (ResourceLimitExceeded, throttling, ValidationException) are faked
with botocore's Stubber at the SageMaker boundary only; those tests say "stubber" in their names.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from typing import Any

import pytest
from botocore.stub import Stubber
from PIL import Image

from tests.support.stack import REGION, StackHandle, load_event
from tests.support.world import World, photos
from trashsorter import training
from trashsorter.catalogue import Catalogue
from trashsorter.clients import Clients
from trashsorter.ddb import deserialize, serialize
from trashsorter.errors import TrainingRuleNotMet, TransientError
from trashsorter.events import DatasetReady
from trashsorter.run_end import finish_run
from trashsorter.runs import (
    acquire_lock,
    find_run_by_job,
    get_run,
    list_runs,
    release_lock,
)
from trashsorter.schema import LOCK_KEY, RunStatus, dataset_key, run_key
from trashsorter.threshold import trigger_manual
from trashsorter_cli.local.dispatcher import make_context
from trashsorter_cli.local.template import load_template

pytestmark = pytest.mark.integration


@pytest.fixture
def stack_overrides() -> dict[str, str]:
    return {"MinImagesPerLabel": "3", "MinNewImages": "4", "TrainingAlgorithm": "image-classification"}


@pytest.fixture
def world(stack_overrides: dict[str, str], stack: StackHandle) -> World:
    w = World(stack)
    w.upload(per_material=2)  # 4 real photos per label
    webp = io.BytesIO()
    Image.open(photos("paper")[10]).save(webp, format="WEBP")
    w.put("images/Compost/paper/from-phone.webp", webp.getvalue())
    w.put("images/Landfill/copy-of-glass.jpg", photos("glass")[0].read_bytes())  # conflict with Recycling
    w.put("images/Compost/cardboard/again.jpg", photos("cardboard")[0].read_bytes())  # duplicate
    w.put("images/Recycling/notes.txt", b"not an image")  # rejected
    w.ingest()
    return w


def test_snapshot_query_projects_only_the_attributes_the_snapshot_reads(world: World) -> None:
    from trashsorter.dataset import SNAPSHOT_ATTRIBUTES, plan_dataset, plan_from_catalogue, snapshot_images

    projected = list(world.catalogue.accepted_images(attributes=SNAPSHOT_ATTRIBUTES))
    full = list(world.catalogue.accepted_images())
    assert projected and all(set(r) <= set(SNAPSHOT_ATTRIBUTES) for r in projected)
    assert all(set(r) == set(SNAPSHOT_ATTRIBUTES) for r in projected if r.get("version_id"))
    assert len(full[0]) > len(SNAPSHOT_ATTRIBUTES) + 4  # the full record really is bigger
    kwargs: dict[str, Any] = {
        "labels": ["Compost", "Landfill", "Recycling"],
        "validation_fraction": 0.2,
        "bucket": world.bucket,
    }
    from_projection = plan_from_catalogue(world.catalogue, **kwargs)
    from_full = plan_dataset(snapshot_images(full), **kwargs)
    assert from_projection.dataset_id == from_full.dataset_id
    assert from_projection.entries == from_full.entries


def test_handler_starts_one_job_with_the_exact_request_and_snapshot(world: World) -> None:
    app = world.stack.load_handler("StartTrainingFunction")
    event = load_event("dataset_ready.json")
    result = app.handler(event, make_context("StartTrainingFunction", region=REGION))
    assert result["status"] == "started", result
    job, run_id, dataset_id = result["job_name"], result["run_id"], result["dataset_id"]
    assert world.jobs() == [job] and job.startswith("deeplens-")

    # --- the snapshot: exactly the accepted images (no conflict, duplicate or rejected file)
    accepted = {r["key"]: r for r in world.catalogue.accepted_images()}
    assert (
        "images/Landfill/copy-of-glass.jpg" not in accepted and "images/Recycling/notes.txt" not in accepted
    )
    prefix = f"datasets/{dataset_id}/"
    rows = [json.loads(line) for line in world.text(prefix + "manifest.jsonl").splitlines()]
    assert [r["key"] for r in rows] == sorted(accepted)
    for row in rows:
        assert (
            row["sha256"] == accepted[row["key"]]["sha256"] and row["label"] == accepted[row["key"]]["label"]
        )
        assert row["class_index"] == ["Compost", "Landfill", "Recycling"].index(row["label"])
    assert world.text(prefix + "labels.txt") == "Compost\nLandfill\nRecycling\n"
    webp_row = next(r for r in rows if r["key"].endswith(".webp"))
    converted = world.s3.get_object(Bucket=world.bucket, Key=webp_row["s3_key"])["Body"].read()
    # a conversion is content-addressed by the JPEG's own hash; every other image by the upload's
    assert webp_row["s3_key"] == f"datasets/objects/{hashlib.sha256(converted).hexdigest()}.jpg"
    copy = Image.open(io.BytesIO(converted))
    assert copy.format == "JPEG" and copy.size == Image.open(photos("paper")[10]).size
    for row in rows:
        if row is not webp_row:
            assert row["s3_key"] == f"datasets/objects/{row['sha256']}.{row['key'].rsplit('.', 1)[1]}"
    counts = {"train": 0, "validation": 0}
    for split in counts:
        lst = [line.split("\t") for line in world.text(f"{prefix}{split}.lst").splitlines()]
        channel = json.loads(world.text(f"{prefix}{split}.manifest"))
        expected = [r for r in rows if r["split"] == split]
        counts[split] = len(expected)
        assert lst == [[str(i), str(r["class_index"]), r["s3_key"]] for i, r in enumerate(expected)]
        assert channel == [{"prefix": f"s3://{world.bucket}/"}, *[r["s3_key"] for r in expected]]
        for key in channel[1:]:  # every listed object exists: the algorithm can download it
            world.s3.head_object(Bucket=world.bucket, Key=key)
    dataset = deserialize(
        world.ddb.get_item(TableName=world.table, Key=serialize(dataset_key(dataset_id)))["Item"]
    )
    assert dataset["num_train"] == counts["train"] and dataset["num_validation"] == counts["validation"]
    assert sum(c["train"] + c["validation"] for c in dataset["counts"].values()) == len(rows)
    assert dataset["accepted_seq"] == world.catalogue.state()["accepted_seq"]

    # --- the SageMaker request as moto recorded it
    described = world.sm.describe_training_job(TrainingJobName=job)
    assert described["AlgorithmSpecification"]["TrainingImage"] == (
        "811284229777.dkr.ecr.us-east-1.amazonaws.com/image-classification:1"
    )
    assert described["RoleArn"] == world.stack.outputs["TrainingRoleArn"]
    assert described["HyperParameters"] == {
        "num_layers": "18", "use_pretrained_model": "1", "image_shape": "3,224,224", "num_classes": "3",
        "num_training_samples": str(counts["train"]), "epochs": "10", "learning_rate": "0.01", "top_k": "2",
        "resize": "224", "precision_dtype": "float32", "mini_batch_size": str(min(32, counts["train"])),
    }  # fmt: skip
    channels = {c["ChannelName"]: c for c in described["InputDataConfig"]}
    assert channels["train"]["DataSource"]["S3DataSource"]["S3DataType"] == "ManifestFile"
    assert (
        channels["train"]["DataSource"]["S3DataSource"]["S3Uri"]
        == f"s3://{world.bucket}/{prefix}train.manifest"
    )
    assert channels["validation_lst"]["DataSource"]["S3DataSource"]["S3Uri"] == (
        f"s3://{world.bucket}/{prefix}validation.lst"
    )
    assert {c["ContentType"] for c in channels.values()} == {"application/x-image"}
    assert described["OutputDataConfig"]["S3OutputPath"] == f"s3://{world.bucket}/training-output/"
    assert described["StoppingCondition"]["MaxRuntimeInSeconds"] == 7200
    assert described["ResourceConfig"]["InstanceType"] == "ml.p2.xlarge"
    tags = {t["Key"]: t["Value"] for t in world.sm.list_tags(ResourceArn=described["TrainingJobArn"])["Tags"]}
    assert tags["trashsorter:dataset-id"] == dataset_id and tags["trashsorter:run-id"] == run_id

    # --- the run record, job lookup and lock
    run = get_run(world.table, run_id, ddb=world.ddb)
    assert run is not None
    assert run["status"] == RunStatus.IN_PROGRESS and run["backend"] == "sagemaker" and run["attempt"] == 1
    assert json.loads(run["request"])["InputDataConfig"] == described["InputDataConfig"]
    assert find_run_by_job(job, world.table, ddb=world.ddb)["run_id"] == run_id  # type: ignore[index]
    assert [r["run_id"] for r in list_runs(world.table, ddb=world.ddb)] == [run_id]
    assert world.lock()["holder"] == run_id
    notices = world.drain(world.notices)
    assert any(job in n["Subject"] for n in notices)


def test_duplicate_event_for_the_same_dataset_starts_nothing(world: World) -> None:
    first = world.start()
    second = world.start()
    assert first.status == "started" and second.status == "duplicate"
    assert second.run_id == first.run_id and world.jobs() == [first.job_name]
    finish_run(world.settings, run_id=first.run_id, status=RunStatus.COMPLETED, metrics={"accuracy": 0.91},
               ddb=world.ddb)  # fmt: skip
    third = world.start(reason="manual")  # the dataset already has a completed run
    assert third.status == "duplicate" and world.jobs() == [first.job_name]
    run = get_run(world.table, first.run_id, ddb=world.ddb)
    assert run is not None and run["status"] == RunStatus.COMPLETED and run["metrics"] == {"accuracy": 0.91}


def test_single_flight_pending_then_finish_republishes(world: World) -> None:
    first = world.start()
    world.upload(per_material=1, start=2)  # new photos -> a different dataset
    world.ingest()
    second = world.start()
    assert second.status == "pending" and second.dataset_id != first.dataset_id
    assert world.jobs() == [first.job_name]
    lock = world.lock()
    assert lock["holder"] == first.run_id and lock["pending"] is True

    finish_run(world.settings, run_id=first.run_id, status=RunStatus.FAILED, message="AlgorithmError: x",
               ddb=world.ddb)  # fmt: skip
    lock = world.lock()
    assert "holder" not in lock and "pending" not in lock
    republished = world.drain(world.ready)
    assert [e["detail"]["reason"] for e in republished] == ["pending"]
    # idempotent: a second call changes nothing and publishes nothing
    finish_run(world.settings, run_id=first.run_id, status=RunStatus.COMPLETED, ddb=world.ddb)
    assert get_run(world.table, first.run_id, ddb=world.ddb)["status"] == RunStatus.FAILED  # type: ignore[index]
    assert world.drain(world.ready) == []

    third = world.start(reason=republished[0]["detail"]["reason"])
    assert third.status == "started" and third.dataset_id == second.dataset_id
    assert sorted(world.jobs()) == sorted([first.job_name, third.job_name])


def test_rule_not_met_starts_nothing(stack_overrides: dict[str, str], stack: StackHandle) -> None:
    w = World(stack)
    w.upload(per_material=1)  # 2 per label < MinImagesPerLabel 3
    w.ingest()
    outcome = w.start()
    assert outcome.status == "not_ready" and "more" in outcome.message
    assert w.jobs() == [] and w.lock() == {}


def test_manual_event_rechecks_the_rule_and_only_an_explicit_force_overrides_it(
    stack_overrides: dict[str, str], stack: StackHandle, caplog: pytest.LogCaptureFixture
) -> None:
    w = World(stack)
    w.upload(per_material=1)  # 2 per label < MinImagesPerLabel 3: not met, but trainable
    w.ingest()
    with pytest.raises(TrainingRuleNotMet):  # the CLI's trigger refuses without --force
        trigger_manual(w.ingest_settings, catalogue=w.catalogue, events=w.stack.client("events"))
    assert w.drain(w.ready) == []

    manual = w.start(reason="manual")  # a hand-made "manual" event without force
    assert manual.status == "not_ready" and "more" in manual.message
    assert w.jobs() == [] and w.lock() == {}

    trigger_manual(w.ingest_settings, catalogue=w.catalogue, events=w.stack.client("events"), force=True)
    published = w.drain(w.ready)
    assert [(e["detail"]["reason"], e["detail"]["force"]) for e in published] == [("manual", True)]
    ready = DatasetReady.from_detail(published[0]["detail"])
    assert w.start(ready=DatasetReady(reason="threshold", force=True)).status == "not_ready"  # manual only
    with caplog.at_level("WARNING"):
        forced = w.start(ready=ready)
    assert forced.status == "started" and w.jobs() == [forced.job_name]
    assert "forced manual run" in caplog.text


def _stubbed(world: World, code: str, message: str, status: int = 400) -> tuple[Any, Stubber]:
    client = world.stack.client("sagemaker")
    stubber = Stubber(client)
    stubber.add_client_error("create_training_job", service_error_code=code, service_message=message,
                             http_status_code=status)  # fmt: skip
    stubber.activate()
    return client, stubber


def test_start_stubber_resource_limit_exceeded_blocks_and_keeps_pending(world: World) -> None:
    client, stubber = _stubbed(world, "ResourceLimitExceeded", "The account-level service limit "
                               "'ml.p2.xlarge for training job usage' is 0 Instances")  # fmt: skip
    outcome = world.start(sagemaker=client)
    stubber.assert_no_pending_responses()
    assert outcome.status == "blocked"
    for needle in ("ml.p2.xlarge for training job usage", "us-east-1", "Service Quotas",
                   "request-service-quota-increase"):  # fmt: skip
        assert needle in outcome.message
    run = get_run(world.table, outcome.run_id, ddb=world.ddb)
    assert run is not None and run["status"] == RunStatus.BLOCKED and "ml.p2.xlarge" in run["status_message"]
    lock = world.lock()
    assert "holder" not in lock and lock["pending"] is True
    notices = world.drain(world.notices)
    blocked = [n for n in notices if "blocked" in n["Subject"].lower()]
    assert len(blocked) == 1 and "ml.p2.xlarge for training job usage" in blocked[0]["Message"]
    assert world.drain(world.ready) == []  # blocked: not re-published at once
    assert world.jobs() == []

    # after the quota increase the next trigger runs the same dataset as attempt 2
    retry = world.start(reason="manual")
    assert retry.status == "started" and retry.dataset_id == outcome.dataset_id
    assert retry.job_name.endswith("-a2") and world.jobs() == [retry.job_name]
    assert "pending" not in world.lock()


def test_start_stubber_validation_exception_fails_and_releases(world: World) -> None:
    client, _ = _stubbed(world, "ValidationException", "Invalid hyperparameter value: epochs=abc")
    outcome = world.start(sagemaker=client)
    assert outcome.status == "failed" and "epochs=abc" in outcome.message
    run = get_run(world.table, outcome.run_id, ddb=world.ddb)
    assert run is not None and run["status"] == RunStatus.FAILED and "epochs=abc" in run["status_message"]
    assert world.lock().get("holder") is None and not world.lock().get("pending")
    assert any("failed" in n["Subject"].lower() for n in world.drain(world.notices))


def test_start_stubber_throttling_raises_then_retry_resumes_the_same_run(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _ = _stubbed(world, "ThrottlingException", "Rate exceeded")
    with pytest.raises(TransientError, match="ThrottlingException"):
        world.start(sagemaker=client)
    [run] = list_runs(world.table, ddb=world.ddb)
    assert run["status"] == RunStatus.STARTING and world.lock()["holder"] == run["run_id"]
    # an immediate redelivery while the start may still be in flight: retry later, start nothing
    with pytest.raises(TransientError):
        world.start()
    assert world.jobs() == []
    # EventBridge's later retry resumes the same run: one job, with the run's job name
    monkeypatch.setattr(training, "RESUME_AFTER_SECONDS", 0)
    resumed = world.start()
    assert resumed.status == "started" and resumed.run_id == run["run_id"]
    assert world.jobs() == [run["job_name"]]
    again = world.start()
    assert again.status == "duplicate" and world.jobs() == [run["job_name"]]


def test_stale_lock_of_a_finished_run_is_released(world: World) -> None:
    first = world.start()
    # a crash between the run update and the lock release leaves the lock held by a final run
    world.ddb.update_item(TableName=world.table, Key=serialize(run_key(first.run_id)),
                          UpdateExpression="SET #s = :f", ExpressionAttributeNames={"#s": "status"},
                          ExpressionAttributeValues={":f": {"S": "failed"}})  # fmt: skip
    assert world.lock()["holder"] == first.run_id
    retry = world.start()
    assert retry.status == "started" and retry.job_name.endswith("-a2")
    assert (
        world.ddb.get_item(TableName=world.table, Key=serialize(LOCK_KEY))["Item"]["holder"]["S"]
        == retry.run_id
    )


def _snapshotting(world: World, holder: str, dataset_id: str, acquired_at: str | None = None) -> None:
    """The lock as an invocation leaves it while it writes its snapshot: no run record yet."""
    assert acquire_lock(world.ddb, world.table, holder, dataset_id)
    if acquired_at is not None:
        _lock_acquired_at(world, acquired_at)


def test_a_lock_whose_holder_is_still_writing_its_snapshot_is_not_taken_from_it(world: World) -> None:
    planned = training.plan_from_catalogue(
        Catalogue(world.table, ddb=world.ddb),
        labels=world.settings.allowed_labels,
        validation_fraction=world.settings.validation_fraction,
        bucket=world.settings.images_bucket,
    )
    # the same dataset: the other invocation is still copying its images -> retry later, start nothing
    _snapshotting(world, "run-snapshotting-1", planned.dataset_id)
    with pytest.raises(TransientError, match="writing the snapshot"):
        world.start()
    assert world.lock()["holder"] == "run-snapshotting-1" and world.jobs() == []
    release_lock(world.ddb, world.table, "run-snapshotting-1", keep_pending=False)
    # another dataset: queued behind it, as behind an active run
    _snapshotting(world, "run-other-1", "other-dataset")
    queued = world.start()
    assert queued.status == "pending" and world.lock()["holder"] == "run-other-1" and world.lock()["pending"]
    release_lock(world.ddb, world.table, "run-other-1", keep_pending=False)
    # older than the start function's timeout: that invocation is gone, the lock is stale
    _snapshotting(world, "run-gone-1", planned.dataset_id, acquired_at="2024-05-14T09:30:12.000000Z")
    started = world.start()
    assert started.status == "started" and world.lock()["holder"] == started.run_id
    assert world.jobs() == [started.job_name]


def test_start_timeout_constant_is_the_template_timeout() -> None:
    resources = load_template()["Resources"]
    assert resources["StartTrainingFunction"]["Properties"]["Timeout"] == training.START_TIMEOUT_SECONDS


# ---------------------------------------------------------------- a training lock that heals (lost events)
def _route(world: World, detail_type: str) -> str:
    """An SQS mirror of the template's rule for ``detail_type`` on the stack bus."""
    url, arn = world._queue()
    events, bus = world.stack.client("events"), world.settings.event_bus_name
    name = f"t-{uuid.uuid4().hex[:8]}"
    pattern = {"source": ["trashsorter"], "detail-type": [detail_type]}
    events.put_rule(Name=name, EventBusName=bus, EventPattern=json.dumps(pattern))
    events.put_targets(Rule=name, EventBusName=bus, Targets=[{"Id": "q", "Arn": arn}])
    return url


def _overdue(world: World, run_id: str) -> None:
    """The run started long ago: past its job's MaxRuntimeInSeconds + the margin."""
    world.ddb.update_item(
        TableName=world.table,
        Key=serialize(run_key(run_id)),
        UpdateExpression="SET started_at = :old, created_at = :old",
        ExpressionAttributeValues={":old": {"S": "2024-05-14T09:30:12.000000Z"}},
    )


def _second_dataset_pending(world: World, first: training.StartOutcome) -> training.StartOutcome:
    world.upload(per_material=1, start=2)  # new photos -> a different dataset
    world.ingest()
    second = world.start()
    assert second.status == "pending" and world.lock()["holder"] == first.run_id
    return second


def test_lost_completion_event_is_reconciled_by_the_next_dataset_ready(world: World) -> None:
    """Fault: SageMaker finished the job but its "Training Job State Change" never arrived."""
    from tests.support.fixtures.model_artifacts import mxnet_model_tar
    from trashsorter.completion import handle_training_state_change
    from trashsorter.events import parse_training_state_change
    from trashsorter.settings import PackageSettings

    reconciled = _route(world, "Training Job Reconciled")  # the template routes it to PackageFunction
    first = world.start()
    second = _second_dataset_pending(world, first)
    assert world.start().status == "pending" and world.drain(reconciled) == []  # not overdue: untouched

    _overdue(world, first.run_id)
    described = world.sm.describe_training_job(TrainingJobName=first.job_name)  # moto: Completed
    artifact = described["ModelArtifacts"]["S3ModelArtifacts"]
    world.put(artifact.split("/", 3)[3], mxnet_model_tar())
    again = world.start()  # the next "Dataset Ready" notices the overdue holder
    assert again.status == "pending"
    republished = world.drain(reconciled)
    assert [(e["detail"]["TrainingJobName"], e["detail"]["TrainingJobStatus"]) for e in republished] == [
        (first.job_name, "Completed")
    ]
    assert world.start().status == "pending" and world.drain(reconciled) == []  # not re-published at once

    # the package function handles it like the lost event: run ends, lock goes, pending is re-published
    settings = PackageSettings.from_env(world.stack.function_env("PackageFunction"))
    clients = Clients(ddb=world.ddb, s3=world.s3, sagemaker=world.sm, sns=world.stack.client("sns"),
                      events=world.stack.client("events"))  # fmt: skip
    change = parse_training_state_change(republished[0])
    assert change is not None and change.artifact_uri == artifact
    outcome = handle_training_state_change(change, settings, clients)
    assert outcome.outcome in ("registered", "rejected"), outcome
    run = get_run(world.table, first.run_id, ddb=world.ddb)
    assert run is not None and run["status"] == RunStatus.COMPLETED and run["ended_by"] == "Completed"
    assert "holder" not in world.lock()
    pending = world.drain(world.ready)
    assert [e["detail"]["reason"] for e in pending] == ["pending"]
    third = world.start(reason="pending")
    assert third.status == "started" and third.dataset_id == second.dataset_id
    # the original event, arriving late after all, changes nothing
    late = {"source": "aws.sagemaker", "detail-type": "SageMaker Training Job State Change",
            "detail": {**republished[0]["detail"]}}  # fmt: skip
    late_change = parse_training_state_change(late)
    assert late_change is not None
    assert handle_training_state_change(late_change, settings, clients).outcome == "duplicate"


def test_overdue_run_sagemaker_does_not_know_is_failed_by_the_scheduled_check(world: World) -> None:
    first = world.start()
    _second_dataset_pending(world, first)
    world.ddb.update_item(  # the job SageMaker knows nothing about (real moto: ValidationException)
        TableName=world.table,
        Key=serialize(run_key(first.run_id)),
        UpdateExpression="SET job_name = :j",
        ExpressionAttributeValues={":j": {"S": "deeplens-ts-lost-job"}},
    )
    app = world.stack.load_handler("StartTrainingFunction")
    events = load_template()["Resources"]["StartTrainingFunction"]["Properties"]["Events"]
    schedule = events["ReconcileSchedule"]
    assert schedule["Type"] == "Schedule"
    tick = json.loads(schedule["Properties"]["Input"])  # what the template's schedule sends
    context = make_context("StartTrainingFunction", region=REGION)
    assert app.handler(tick, context)["status"] == "running"  # within its limit: untouched
    _overdue(world, first.run_id)

    result = app.handler(tick, context)

    assert result["status"] == "failed" and "does not know job deeplens-ts-lost-job" in result["message"]
    run = get_run(world.table, first.run_id, ddb=world.ddb)
    assert run is not None and run["status"] == RunStatus.FAILED and run["ended_by"] == "reconcile"
    assert "does not know" in run["status_message"] and "does not know" in run["failure_reason"]
    assert "holder" not in world.lock()
    assert [e["detail"]["reason"] for e in world.drain(world.ready)] == ["pending"]
    assert any("reconciler" in n["Message"] for n in world.drain(world.notices))
    assert app.handler(tick, context)["status"] == "free"  # idempotent: nothing more happens
    assert world.drain(world.notices) == []
    assert world.start(reason="pending").status == "started"


def test_overdue_job_sagemaker_still_runs_is_stopped_and_its_run_failed(world: World) -> None:
    """InProgress past MaxRuntimeInSeconds + the margin: StopTrainingJob, the run fails, the lock goes."""
    from tests.support.sagemaker import sagemaker_reports
    from trashsorter.reconcile import reconcile_training

    first = world.start()
    sagemaker_reports(first.job_name, {"TrainingJobStatus": "InProgress"})
    assert reconcile_training(world.settings, Clients(ddb=world.ddb, sagemaker=world.sm)).status == "running"
    _overdue(world, first.run_id)

    outcome = reconcile_training(
        world.settings,
        Clients(
            ddb=world.ddb,
            sagemaker=world.sm,
            sns=world.stack.client("sns"),
            events=world.stack.client("events"),
        ),
    )

    assert outcome.status == "failed" and "SageMaker still reports InProgress" in outcome.message
    assert world.sm.describe_training_job(TrainingJobName=first.job_name)["TrainingJobStatus"] == "Stopped"
    run = get_run(world.table, first.run_id, ddb=world.ddb)
    assert run is not None and run["status"] == RunStatus.FAILED and run["ended_by"] == "reconcile"
    assert "holder" not in world.lock()


def test_a_run_started_in_the_future_is_treated_as_started_now(world: World) -> None:
    """A start time in the future would hold the lock until then; the check writes now over it."""
    from tests.support.sagemaker import sagemaker_reports
    from trashsorter import clock
    from trashsorter.reconcile import MARGIN_SECONDS, max_runtime_seconds, reconcile_training

    first = world.start()
    sagemaker_reports(first.job_name, {"TrainingJobStatus": "InProgress"})
    world.ddb.update_item(
        TableName=world.table,
        Key=serialize(run_key(first.run_id)),
        UpdateExpression="SET started_at = :future",
        ExpressionAttributeValues={":future": {"S": "2099-01-01T00:00:00.000000Z"}},
    )

    outcome = reconcile_training(world.settings, Clients(ddb=world.ddb, sagemaker=world.sm))

    assert outcome.status == "running"
    run = get_run(world.table, first.run_id, ddb=world.ddb)
    assert run is not None and run["start_time_in_future"] == "2099-01-01T00:00:00.000000Z"
    assert 0 <= clock.age_seconds(run["started_at"]) < 60  # from now on it ages, so the lock can heal
    left = float(outcome.message.split("(")[1].split(" s left")[0])
    assert left == pytest.approx(max_runtime_seconds(run) + MARGIN_SECONDS, abs=60)


def test_a_lock_taken_in_the_future_is_treated_as_taken_now_and_grows_stale(world: World) -> None:
    """A lock with no run record "taken" in 2099 would block training until then; it counts from now."""
    from trashsorter import clock

    _snapshotting(world, "run-future-1", "other-dataset", acquired_at="2099-01-01T00:00:00.000000Z")

    queued = world.start()  # treated as taken now: still the other invocation's, so this one waits

    assert queued.status == "pending"
    lock = world.lock()
    assert lock["holder"] == "run-future-1" and lock["acquired_at_in_future"] == "2099-01-01T00:00:00.000000Z"
    assert 0 <= clock.age_seconds(lock["acquired_at"]) < 60
    _lock_acquired_at(world, "2024-05-14T09:30:12.000000Z")  # START_TIMEOUT_SECONDS later (or more)
    started = world.start(reason="pending")
    assert started.status == "started" and world.lock()["holder"] == started.run_id


def _lock_acquired_at(world: World, acquired_at: str) -> None:
    world.ddb.update_item(
        TableName=world.table,
        Key=serialize(LOCK_KEY),
        UpdateExpression="SET acquired_at = :t",
        ExpressionAttributeValues={":t": {"S": acquired_at}},
    )
