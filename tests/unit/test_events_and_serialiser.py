"""The typed event models (parsed at the edge, never mutating the event), the one DynamoDB serialiser,
the one clock and the client bundle."""

from __future__ import annotations

import copy
import json
from decimal import Decimal

import pytest

from tests.support.stack import load_event
from trashsorter import aws, clock, ddb
from trashsorter.clients import Clients
from trashsorter.errors import TrashsorterError
from trashsorter.events import (
    DatasetReady,
    TrainingStateChange,
    parse_dataset_ready,
    parse_s3_notification,
    parse_training_state_change,
)


def test_training_state_change_is_parsed_without_touching_the_event() -> None:
    event = load_event("training_completed.json")
    before = copy.deepcopy(event)
    change = parse_training_state_change(event)
    assert change is not None
    assert change.job_name == event["detail"]["TrainingJobName"]
    assert change.status == "Completed"
    assert change.artifact_uri == event["detail"]["ModelArtifacts"]["S3ModelArtifacts"]
    assert [m["MetricName"] for m in change.final_metrics] == [
        m["MetricName"] for m in event["detail"]["FinalMetricDataList"]
    ]
    filled = TrainingStateChange(change.job_name, "Completed").completed_with(event["detail"])
    assert filled.artifact_uri == change.artifact_uri and filled.final_metrics == change.final_metrics
    assert event == before
    assert parse_training_state_change({**event, "source": "aws.s3"}) is None


def test_dataset_ready_and_other_events() -> None:
    event = {
        "source": "trashsorter",
        "detail-type": "Dataset Ready",
        "detail": {"reason": "manual", "accepted_seq": 7, "counts": {"Compost": 3}},
    }
    ready = parse_dataset_ready(event)
    assert ready == DatasetReady(reason="manual", accepted_seq=7, counts={"Compost": 3})
    assert parse_dataset_ready({**event, "detail-type": "Something Else"}) is None
    assert parse_dataset_ready({**event, "detail": {}}) == DatasetReady()
    assert ready is not None and ready.force is False


@pytest.mark.parametrize(("value", "forced"), [(True, True), ("true", False), (1, False), (None, False)])
def test_dataset_ready_force_is_only_an_explicit_json_true(value: object, forced: bool) -> None:
    event = {"source": "trashsorter", "detail-type": "Dataset Ready",
             "detail": {"reason": "manual", "force": value}}  # fmt: skip
    ready = parse_dataset_ready(event)
    assert ready is not None and ready.force is forced


def test_s3_notification_records_decoded_test_event_and_garbage() -> None:
    body = json.dumps(
        {
            "Records": [
                {
                    "eventName": "ObjectCreated:Put",
                    "s3": {
                        "bucket": {"name": "b"},
                        "object": {"key": "images/Compost/a+b%C3%A9.jpg", "size": 5, "sequencer": "0A"},
                    },
                }
            ]
        }
    )
    (record,) = parse_s3_notification(body)
    assert (record.bucket, record.key, record.size, record.sequencer) == (
        "b",
        "images/Compost/a bé.jpg",
        5,
        "0A",
    )
    assert record.created and not record.removed
    assert parse_s3_notification(json.dumps({"Event": "s3:TestEvent"})) == []
    with pytest.raises(TrashsorterError, match="not S3 notification JSON"):
        parse_s3_notification("{oops")


def test_one_serialiser_floats_none_and_sets() -> None:
    item = {"a": 0.1, "n": 3, "b": True, "gone": None, "m": {"x": None, "y": 1.5}, "l": [0.25, "s"]}
    wire = ddb.serialize(item)
    assert "gone" not in wire and "x" not in wire["m"]["M"]
    assert wire["a"] == {"N": "0.1"} and wire["b"] == {"BOOL": True}
    assert ddb.deserialize(wire) == {"a": 0.1, "n": 3, "b": True, "m": {"y": 1.5}, "l": [0.25, "s"]}
    assert ddb.deserialize({"s": {"SS": ["b", "a"]}}) == {"s": ["a", "b"]}
    assert ddb.values(v=Decimal("2")) == {":v": {"N": "2"}}


def test_clock_text_sorts_and_ages() -> None:
    text = clock.now_iso()
    assert text.endswith("Z") and len(text) == len("2026-01-01T00:00:00.000000Z")
    assert 0 <= clock.age_seconds(text) < 60
    assert clock.age_seconds("not a time") == float("inf")


def test_clients_inject_or_fall_back_to_the_shared_default() -> None:
    given = object()
    clients = Clients(ddb=given)
    assert clients.ddb is given
    assert clients.s3 is aws.client("s3")
