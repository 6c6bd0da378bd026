"""Replay: every event type delivered once, three times, or three times interleaved -> the same end state.

One scenario drives the whole pipeline through the three handlers of a stack built from template.yaml:

* the ingest handler gets Lambda SQS events built from the real messages the bucket put on the ingest queue
  (S3 puts and deletes of real TrashNet photos, a duplicate, a conflict, a rejected file);
* the start-training handler gets the "Dataset Ready" events taken from the stack bus (routed to an SQS
  queue here): the threshold crossing, a manual trigger while a run is active (-> pending), the pending
  trigger re-published when that run fails, and the next threshold crossing after a completed model;
* the package handler gets "SageMaker Training Job State Change" events built from events/training_*.json
  for the job the run record names (Failed, Completed with a realistic model.tar.gz where the event says,
  Stopped), with a Greengrass v1 DeepLens group in moto configured through the handler environment.

The scenario runs in fresh stacks with single delivery, with each event delivered 3 times in a row, and
with each event's 2nd and 3rd delivery coming late, after newer events (put A, put B, put A, delete C,
put B, put A ...). A normalised dump (table scan, datasets/ and DeepLens objects with content hashes,
Greengrass group versions and deployments, SNS notices, "Dataset Ready" publications, training jobs) must
be identical. What legitimately differs between two stacks is normalised: ``*_at`` timestamps, ISO
timestamps inside values, UUIDs (deployment and Greengrass version ids), S3 version ids and sequencers, and
the job names (they embed the UTC start time: mapped to JOB1, JOB2 ... in run order).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from decimal import Decimal
from typing import Any

import pytest

from tests.support.pipeline import (
    LABELS,
    Pipeline,
    fresh_stack,
    photos,
)

pytestmark = pytest.mark.reliability


def scenario(p: Pipeline) -> None:
    """The whole pipeline, three training runs: failed (with a pending trigger), completed, stopped."""
    pictures = {label: photos(label) for label in LABELS}
    # 1. ingest: 5 real photos per label, a duplicate, a rejected file, a cross-label conflict, two deletes
    for label in LABELS:
        for name, data in pictures[label][:5]:
            p.put(f"images/{label}/{name}", data)
    compost = [f"images/Compost/{name}" for name, _ in pictures["Compost"][:2]]
    p.put("images/Compost/copy of the first.jpg", pictures["Compost"][0][1])  # duplicate
    p.put("images/Recycling/notes.txt", b"shopping list: not an image")  # rejected
    p.put("images/Landfill/looks+like+glass.jpg", pictures["Recycling"][4][1])  # conflict with Recycling
    p.delete(compost[0])  # the duplicate is promoted
    p.delete(compost[1])
    # 2. the threshold crossing starts run 1
    p.dataset_ready()
    run1 = p.active_run()
    # 3. new photos while run 1 trains, then a manual trigger: kept pending
    for label in LABELS:
        for name, data in pictures[label][5:7]:
            p.put(f"images/{label}/{name}", data)
    p.trigger_manual()
    p.dataset_ready()
    # 4. run 1 fails -> the pending trigger is re-published -> run 2 on the newer dataset
    p.training_finished("training_failed.json", run1)
    p.dataset_ready()
    run2 = p.active_run()
    assert run2["run_id"] != run1["run_id"]
    # 5. run 2 completes: packaged, registered, deployed to the DeepLens group
    p.training_finished("training_completed.json", run2)
    # 6. enough new photos since that model: the threshold fires again -> run 3
    for label in LABELS:
        for name, data in pictures[label][7:8]:
            p.put(f"images/{label}/{name}", data)
    p.dataset_ready()
    run3 = p.active_run()
    # A "Dataset Ready" redelivered after its run failed or stopped starts the next attempt (a retry by
    # design), so the late copies are delivered before run 3 stops.
    p.flush()
    # 7. run 3 is stopped
    p.training_finished("training_stopped.json", run3)
    p.flush()


_ISO = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# CloudFormation physical names: <stack>-<LogicalId>-<random suffix>
_PHYSICAL = re.compile(r"\b(ts-test-[A-Za-z0-9]+)-[A-Z0-9]{12,13}\b")
_DROPPED = ("version_id", "sequencer")  # S3 version ids and sequencers differ between two stacks


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if not k.endswith("_at") and k not in _DROPPED}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(_plain(v) for v in value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return hashlib.sha256(value).hexdigest()
    if isinstance(value, str) and value.startswith("{"):  # a stored JSON document (the training request)
        try:
            return _plain(json.loads(value))
        except json.JSONDecodeError:
            return value
    return value


def normalised_dump(p: Pipeline) -> dict[str, Any]:
    """Everything the pipeline wrote, with what legitimately differs between two stacks normalised."""
    jobs = {str(run["job_name"]): f"JOB{i}" for i, run in enumerate(p.runs(), 1)}
    deployments = p.gg.list_deployments(GroupId=p.group_id)["Deployments"]
    dump = {
        "table": _plain(p.table_items()),
        "datasets": p.objects(p.bucket, "datasets/"),
        "deeplens": p.objects(p.deeplens_bucket),
        "greengrass": {
            "group_versions": len(p.gg.list_group_versions(GroupId=p.group_id)["Versions"]),
            "deployments": sorted(d["DeploymentType"] for d in deployments),
        },
        "notices": sorted(p.notices()),
        "dataset_ready": [{k: v for k, v in e["detail"].items() if k != "requested_at"} for e in p.published],
        "training_jobs": sorted(
            j["TrainingJobName"] for j in p.sm.list_training_jobs()["TrainingJobSummaries"]
        ),
    }
    text = json.dumps(dump, sort_keys=True, default=str)
    for job, placeholder in sorted(jobs.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(job, placeholder)
    text = _PHYSICAL.sub(r"\1-<physical>", _UUID.sub("<uuid>", _ISO.sub("<time>", text)))
    result: dict[str, Any] = json.loads(text)
    return result


def run_scenario(mode: str) -> tuple[dict[str, Any], Pipeline]:
    with fresh_stack() as stack:
        pipeline = Pipeline(stack, mode)
        scenario(pipeline)
        return normalised_dump(pipeline), pipeline


_BASELINE: dict[str, Any] = {}


def single_delivery() -> tuple[dict[str, Any], Counter[str]]:
    """The reference run (once per test process)."""
    if "dump" not in _BASELINE:
        _BASELINE["dump"], pipeline = run_scenario("single")
        _BASELINE["delivered"] = pipeline.delivered
        assert pipeline.deliveries == sum(pipeline.delivered.values())
    return _BASELINE["dump"], _BASELINE["delivered"]


# ---------------------------------------------------------------------------------------------- tests
def test_single_delivery_scenario_reaches_the_intended_end_state() -> None:
    """The reference run is not vacuous: every event type did its job."""
    dump, delivered = single_delivery()
    assert delivered == {
        "s3:s3:TestEvent": 1,
        "s3:ObjectCreated:Put": 27,
        "s3:ObjectRemoved:Delete": 2,
        "dataset-ready:threshold": 2,
        "dataset-ready:manual": 1,
        "dataset-ready:pending": 1,
        "training:Failed": 1,
        "training:Completed": 1,
        "training:Stopped": 1,
    }
    items = dump["table"]
    runs = sorted((i for i in items if i["pk"].startswith("RUN#")), key=lambda r: r["job_name"])
    assert [(r["job_name"], r["status"]) for r in runs] == [
        ("JOB1", "failed"),
        ("JOB2", "completed"),
        ("JOB3", "stopped"),
    ]
    assert [r["handled_statuses"] for r in runs] == [["Failed"], ["Completed"], ["Stopped"]]
    assert len({r["dataset_id"] for r in runs}) == 3
    [model] = [i for i in items if i["pk"].startswith("MODEL#") and i["sk"] == "MODEL"]
    assert model["model_id"] == "JOB2" and model["status"] == "champion"
    counts = {i["pk"].split("#", 1)[1]: i for i in items if i["pk"].startswith("LABEL#")}
    kinds = ("accepted", "duplicate", "conflict", "rejected", "deleted")
    assert {label: tuple(c.get(k, 0) for k in kinds) for label, c in counts.items()} == {
        "Compost": (7, 0, 0, 0, 2),  # 5 + 2 + 1 uploaded, 2 deleted, the duplicate promoted
        "Landfill": (8, 0, 1, 0, 0),  # 5 + 2 + 1, and the copy of a Recycling photo
        "Recycling": (7, 0, 1, 1, 0),  # 5 + 2 + 1, one of them in conflict; notes.txt rejected
    }
    assert [e["reason"] for e in dump["dataset_ready"]] == ["threshold", "manual", "pending", "threshold"]
    assert dump["greengrass"] == {"group_versions": 2, "deployments": ["NewDeployment"]}
    assert sorted(dump["deeplens"]) == ["models/JOB2/model.tar.gz"]
    assert sorted(dump["training_jobs"]) == ["JOB1", "JOB2", "JOB3"]
    assert len(dump["notices"]) == 6  # 3 started, failed, deployed, stopped


@pytest.mark.parametrize("mode", ["triple", "interleaved"])
def test_every_event_delivered_three_times_ends_in_the_single_delivery_state(mode: str) -> None:
    expected, delivered = single_delivery()
    replayed, pipeline = run_scenario(mode)
    assert pipeline.delivered == delivered
    assert pipeline.deliveries == 3 * sum(delivered.values())  # every event really came three times
    for part in expected:
        assert replayed[part] == expected[part], part
