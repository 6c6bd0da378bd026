"""Ingest end to end on moto: real put_object -> S3 notification -> SQS -> handler -> catalogue.

The stack (bucket, queue, table, bus) is template.yaml through the shared ``stack`` fixture; the handler is
``functions/ingest/app.py`` loaded with its resolved environment.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.support import hostile
from tests.support.ingest import LABELS, Ingest
from tests.support.stack import StackHandle, load_event
from trashsorter import aws
from trashsorter.ingest import rebuild_catalogue

pytestmark = pytest.mark.integration


@pytest.fixture
def stack_overrides() -> dict[str, str]:
    # A small rule so the threshold can be crossed with real photos; 1 MB size limit for too_large.
    return {"MinImagesPerLabel": "2", "MinNewImages": "4", "MaxImageBytes": "1048576"}


@pytest.fixture
def ingest(stack_overrides: dict[str, str], stack: StackHandle) -> Iterator[Ingest]:
    yield Ingest(stack)


def photo(material: str, index: int = 0) -> bytes:
    return hostile.real_photo_bytes(material, index)


# ------------------------------------------------------------------------------------------ accept


def test_real_photo_put_is_notified_queued_and_accepted_with_configured_label_spelling(
    ingest: Ingest,
) -> None:
    key = "images/compost/banana peel (1).jpg"  # lower-case folder, spaces and parentheses
    ingest.put(key, photo("paper"))
    assert ingest.drain() == {"messages": 1, "batchItemFailures": []}
    rec = ingest.catalogue.get_image(key)
    assert rec is not None
    assert rec["label"] == "Compost"
    assert rec["status"] == "accepted"
    assert (rec["format"], rec["mode"], rec["width"], rec["height"]) == ("JPEG", "RGB", 288, 384)
    assert rec["size"] == len(photo("paper")) and len(rec["sha256"]) == 64
    assert rec["version_id"] and rec["etag"] and "reason_code" not in rec
    assert ingest.counts()["Compost"] == {
        "accepted": 1,
        "rejected": 0,
        "duplicate": 0,
        "conflict": 0,
        "deleted": 0,
    }
    assert ingest.catalogue.state()["accepted_seq"] == 1
    assert [r["key"] for r in ingest.catalogue.accepted_images()] == [key]


def test_awkward_keys_round_trip_through_the_notification(ingest: Ingest) -> None:
    for i, key in enumerate(hostile.AWKWARD_KEYS):
        ingest.put(key, photo("glass", i))
    assert ingest.drain() == {"messages": len(hostile.AWKWARD_KEYS), "batchItemFailures": []}
    for key in hostile.AWKWARD_KEYS:
        rec = ingest.catalogue.get_image(key)
        assert rec is not None and rec["key"] == key and rec["status"] == "accepted", key


def test_deeper_folders_keep_the_label_and_outside_keys_and_folders_are_ignored(ingest: Ingest) -> None:
    ingest.put("images/Recycling/2024/05/can.jpg", photo("metal"))
    ingest.put("images/Recycling/", b"")  # console "create folder" placeholder
    ingest.put("datasets/x/manifest.jsonl", b"{}")  # outside images/: not even notified
    ingest.drain()
    assert ingest.status("images/Recycling/2024/05/can.jpg") == "accepted"
    assert ingest.catalogue.get_image("images/Recycling/") is None
    assert ingest.catalogue.get_image("datasets/x/manifest.jsonl") is None
    assert ingest.accepted() == {"Compost": 0, "Landfill": 0, "Recycling": 1}


# ------------------------------------------------------------------------------------------ reject

REJECTIONS = [
    ("images/Compost/empty.jpg", lambda: hostile.EMPTY, "empty"),
    ("images/Compost/huge.jpg", lambda: b"\xff\xd8\xff" + b"\x00" * 1_200_000, "too_large"),
    ("images/Landfill/notes.jpg", lambda: hostile.TEXT, "unsupported_format"),
    ("images/Landfill/page.png", lambda: hostile.HTML, "unsupported_format"),
    ("images/Landfill/anim.jpg", hostile.gif, "unsupported_format"),
    ("images/Recycling/bomb.png", hostile.decompression_bomb_png, "too_many_pixels"),
    ("images/Recycling/flood.jpg", hostile.pixel_flood_jpeg, "too_many_pixels"),
    ("images/Recycling/zero.png", hostile.zero_size_png, "corrupt"),
    ("images/Compost/half.jpg", hostile.truncated_jpeg, "truncated"),
    ("images/Compost/tiny.png", hostile.tiny_png, "too_small"),
    ("images/Glass/bottle.jpg", lambda: photo("glass"), "unknown_label"),
    ("images/loose.jpg", lambda: photo("glass"), "unknown_label"),
]


def test_each_rejection_kind_via_the_queue_is_recorded_counted_and_tagged(ingest: Ingest) -> None:
    for key, make, _ in REJECTIONS:
        ingest.put(key, make())
    assert ingest.drain() == {"messages": len(REJECTIONS), "batchItemFailures": []}
    expected_rejected: dict[str, int] = dict.fromkeys(LABELS, 0)
    for key, _, code in REJECTIONS:
        rec = ingest.catalogue.get_image(key)
        assert rec is not None, key
        assert (rec["status"], rec["reason_code"]) == ("rejected", code), key
        assert rec["reason"], key
        assert ingest.tags(key) == {"trashsorter-status": "rejected", "trashsorter-reason": code}, key
        assert ingest.s3.head_object(Bucket=ingest.bucket, Key=key)  # never deleted or moved
        if rec["label"] in LABELS:
            expected_rejected[rec["label"]] += 1
    assert {label: c["rejected"] for label, c in ingest.counts().items()} == expected_rejected
    assert sum(c["accepted"] for c in ingest.counts().values()) == 0
    assert len(list(ingest.catalogue.iter_images("rejected"))) == len(REJECTIONS)
    assert [r["key"] for r in ingest.catalogue.iter_images("rejected", label="Glass")] == [
        "images/Glass/bottle.jpg"
    ]


def test_rejection_messages_read_well(ingest: Ingest) -> None:
    ingest.put("images/Compost/huge.jpg", b"\xff\xd8\xff" + b"\x00" * 1_200_000)
    ingest.put("images/Glass/bottle.jpg", photo("glass"))
    ingest.drain()
    huge = ingest.catalogue.get_image("images/Compost/huge.jpg")
    glass = ingest.catalogue.get_image("images/Glass/bottle.jpg")
    assert huge is not None and glass is not None
    assert huge["reason"] == "object is 1.1 MB; the limit is 1.0 MB"
    assert glass["reason"] == "folder 'Glass' is not a label; the labels are: Compost, Landfill, Recycling"
    assert glass["label"] == "Glass"


def test_user_tags_are_kept_when_tagging_a_rejection(ingest: Ingest) -> None:
    key = "images/Compost/tagged.gif"
    ingest.s3.put_object(Bucket=ingest.bucket, Key=key, Body=hostile.gif(), Tagging="owner=alice")
    ingest.drain()
    assert ingest.tags(key) == {
        "owner": "alice",
        "trashsorter-status": "rejected",
        "trashsorter-reason": "unsupported_format",
    }


# ------------------------------------------------------------------------------------------ duplicates


def test_same_bytes_same_label_is_a_duplicate_counted_once(ingest: Ingest) -> None:
    ingest.put("images/Compost/a.jpg", photo("paper"))
    ingest.drain()
    ingest.put("images/Compost/copy of a.jpg", photo("paper"))
    ingest.drain()
    assert ingest.status("images/Compost/a.jpg") == "accepted"
    dup = ingest.catalogue.get_image("images/Compost/copy of a.jpg")
    assert dup is not None and dup["status"] == "duplicate" and dup["reason_code"] == "duplicate"
    assert "images/Compost/a.jpg" in dup["reason"]
    assert ingest.counts()["Compost"]["accepted"] == 1 and ingest.counts()["Compost"]["duplicate"] == 1
    assert ingest.catalogue.state()["accepted_seq"] == 1


def test_same_bytes_under_two_labels_conflict_until_one_side_is_deleted(ingest: Ingest) -> None:
    ingest.put("images/Compost/box.jpg", photo("cardboard"))
    ingest.put("images/Compost/box again.jpg", photo("cardboard"))
    ingest.put("images/Recycling/box.jpg", photo("cardboard"))
    ingest.drain()
    for key in ("images/Compost/box.jpg", "images/Compost/box again.jpg", "images/Recycling/box.jpg"):
        rec = ingest.catalogue.get_image(key)
        assert rec is not None and rec["status"] == "conflict" and rec["reason_code"] == "conflict"
    assert ingest.counts()["Compost"]["conflict"] == 2 and ingest.counts()["Recycling"]["conflict"] == 1
    assert ingest.accepted() == {"Compost": 0, "Landfill": 0, "Recycling": 0}
    assert list(ingest.catalogue.accepted_images()) == []

    ingest.delete_permanently("images/Recycling/box.jpg")  # a person resolves it: it was compost
    ingest.drain()
    assert ingest.status("images/Recycling/box.jpg") == "deleted"
    assert ingest.status("images/Compost/box.jpg") == "accepted"
    assert ingest.status("images/Compost/box again.jpg") == "duplicate"
    assert ingest.counts()["Compost"] == {
        "accepted": 1,
        "rejected": 0,
        "duplicate": 1,
        "conflict": 0,
        "deleted": 0,
    }
    assert ingest.counts()["Recycling"] == {
        "accepted": 0,
        "rejected": 0,
        "duplicate": 0,
        "conflict": 0,
        "deleted": 1,
    }


def test_deleting_the_accepted_primary_promotes_its_duplicate(ingest: Ingest) -> None:
    ingest.put("images/Landfill/bag.jpg", photo("plastic"))
    ingest.drain()
    ingest.put("images/Landfill/bag-2.jpg", photo("plastic"))
    ingest.drain()
    ingest.delete_permanently("images/Landfill/bag.jpg")
    ingest.drain()
    assert ingest.status("images/Landfill/bag.jpg") == "deleted"
    rec = ingest.catalogue.get_image("images/Landfill/bag-2.jpg")
    assert rec is not None and rec["status"] == "accepted" and "reason_code" not in rec
    assert ingest.counts()["Landfill"] == {
        "accepted": 1,
        "rejected": 0,
        "duplicate": 0,
        "conflict": 0,
        "deleted": 1,
    }


def test_overwrite_with_new_bytes_replaces_the_old_contribution(ingest: Ingest) -> None:
    key = "images/Recycling/thing.jpg"
    ingest.put(key, photo("glass", 0))
    ingest.put("images/Recycling/other.jpg", photo("glass", 1))
    ingest.drain()
    ingest.put(key, photo("glass", 1))  # now the same bytes as other.jpg
    ingest.drain()
    assert ingest.status("images/Recycling/other.jpg") == "accepted"
    assert ingest.status(key) == "duplicate"
    ingest.put(key, hostile.gif())  # and now garbage
    ingest.drain()
    assert ingest.status(key) == "rejected"
    assert ingest.counts()["Recycling"] == {
        "accepted": 1,
        "rejected": 1,
        "duplicate": 0,
        "conflict": 0,
        "deleted": 0,
    }


# ------------------------------------------------------------------------------------------ idempotency


def test_replaying_a_batch_three_times_changes_nothing(ingest: Ingest) -> None:
    ingest.put("images/Compost/a.jpg", photo("paper", 0))
    ingest.put("images/Compost/a-copy.jpg", photo("paper", 0))
    ingest.put("images/Landfill/a.jpg", photo("paper", 1))
    ingest.put("images/Recycling/a.jpg", photo("paper", 1))
    ingest.put("images/Recycling/bad.png", hostile.HTML)
    messages = ingest.receive_all()
    event = ingest.lambda_event(messages)
    assert ingest.invoke(event) == {"batchItemFailures": []}
    before = ingest.snapshot()
    for _ in range(3):
        assert ingest.invoke(event) == {"batchItemFailures": []}
    assert ingest.snapshot() == before
    assert ingest.counts()["Compost"] == {
        "accepted": 1,
        "rejected": 0,
        "duplicate": 1,
        "conflict": 0,
        "deleted": 0,
    }
    assert ingest.counts()["Recycling"]["conflict"] == 1 and ingest.counts()["Recycling"]["rejected"] == 1


def test_stale_events_are_ignored_by_sequencer(ingest: Ingest) -> None:
    key = "images/Compost/banana peel (1).jpg"
    version = ingest.put(key, photo("paper"))
    ingest.receive_all()  # the emulator's notification has no sequencer; use the realistic event file
    replacements = {"trashsorter-images-EXAMPLE": ingest.bucket, "3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY": version}
    put = load_event("s3_put_sqs.json", **replacements)
    assert ingest.invoke(put) == {"batchItemFailures": []}
    assert ingest.status(key) == "accepted"
    # the object is deleted (delete marker): the newer DeleteMarkerCreated event marks it deleted
    ingest.s3.delete_object(Bucket=ingest.bucket, Key=key)
    delete = load_event("s3_delete_sqs.json", **replacements)
    assert ingest.invoke(delete) == {"batchItemFailures": []}
    assert ingest.status(key) == "deleted"
    # the older create arriving late (redelivery) is ignored: still deleted, nothing counted twice
    assert ingest.invoke(put) == {"batchItemFailures": []}
    assert ingest.status(key) == "deleted"
    assert ingest.counts()["Compost"] == {
        "accepted": 0,
        "rejected": 0,
        "duplicate": 0,
        "conflict": 0,
        "deleted": 1,
    }
    assert ingest.catalogue.state()["accepted_seq"] == 1


def test_partial_batch_failure_with_stubber_throttled_read(ingest: Ingest) -> None:
    """One object's read is throttled (a botocore hook on the shared client stands in for S3 SlowDown)."""
    ingest.put("images/Compost/ok.jpg", photo("paper", 0))
    ingest.put("images/Compost/slow.jpg", photo("paper", 1))
    ingest.put("images/Landfill/ok.jpg", photo("trash", 0))

    def throttle(params: dict[str, Any], **_: Any) -> None:
        if params.get("Key") == "images/Compost/slow.jpg":
            raise ClientError(
                {
                    "Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."},
                    "ResponseMetadata": {"HTTPStatusCode": 503},
                },
                "GetObject",
            )

    s3 = aws.client("s3")
    s3.meta.events.register("provide-client-params.s3.GetObject", throttle)
    try:
        result = ingest.drain()
    finally:
        s3.meta.events.unregister("provide-client-params.s3.GetObject", throttle)
    assert result["messages"] == 3 and len(result["batchItemFailures"]) == 1
    assert ingest.status("images/Compost/ok.jpg") == "accepted"
    assert ingest.status("images/Landfill/ok.jpg") == "accepted"
    assert ingest.status("images/Compost/slow.jpg") is None
    # the failed message is still on the queue; its retry succeeds and the others are not redone
    assert ingest.drain() == {"messages": 1, "batchItemFailures": []}
    assert ingest.status("images/Compost/slow.jpg") == "accepted"
    assert ingest.counts()["Compost"]["accepted"] == 2 and ingest.catalogue.state()["accepted_seq"] == 3


def test_batch_file_with_a_malformed_message_reports_only_that_one(ingest: Ingest) -> None:
    ingest.put("images/Recycling/can+lid café.jpg", photo("metal"))
    ingest.receive_all()
    event = load_event("s3_batch_with_bad_record.json", **{"trashsorter-images-EXAMPLE": ingest.bucket})
    # the realistic file names a version id the emulator never issued: that record's object version is gone
    response = ingest.invoke(event)
    bad = event["Records"][1]["messageId"]
    assert response == {"batchItemFailures": [{"itemIdentifier": bad}]}
    assert ingest.status("images/Glass/bottle.jpg") == "rejected"


def test_object_deleted_before_it_is_read_is_ignored_then_marked_by_its_delete_event(ingest: Ingest) -> None:
    key = "images/Compost/fleeting.jpg"
    ingest.put(key, photo("paper"))
    created = ingest.receive_all()
    ingest.delete_permanently(key)
    assert ingest.invoke(ingest.lambda_event(created)) == {"batchItemFailures": []}
    assert ingest.catalogue.get_image(key) is None
    ingest.drain()  # the delete notification
    assert ingest.status(key) == "deleted"
    assert ingest.accepted()["Compost"] == 0


def test_s3_test_event_is_ignored(ingest: Ingest) -> None:
    assert ingest.initial == {"messages": 1, "batchItemFailures": []}
    body = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": ingest.bucket})
    ingest.sqs.send_message(QueueUrl=ingest.queue_url, MessageBody=body)
    assert ingest.drain() == {"messages": 1, "batchItemFailures": []}


# ------------------------------------------------------------------------------------------ threshold


def test_dataset_ready_is_published_exactly_once_when_the_rule_is_crossed(ingest: Ingest) -> None:
    # rule (overrides): 2 accepted per label and 4 new images
    uploads = [
        ("Compost", "paper", 0),
        ("Compost", "cardboard", 0),
        ("Landfill", "trash", 0),
        ("Landfill", "plastic", 0),
        ("Recycling", "glass", 0),
    ]
    for label, material, i in uploads:
        ingest.put(f"images/{label}/{material}{i}.jpg", photo(material, i))
    ingest.drain()
    assert ingest.dataset_ready_events() == []
    ingest.put("images/Recycling/metal0.jpg", photo("metal", 0))
    ingest.drain()
    events = ingest.dataset_ready_events()
    assert len(events) == 1
    assert events[0]["source"] == "trashsorter" and events[0]["detail-type"] == "Dataset Ready"
    detail = events[0]["detail"]
    assert detail["reason"] == "threshold"
    assert detail["counts"] == {"Compost": 2, "Landfill": 2, "Recycling": 2}
    assert detail["new_images"] == 6 and detail["accepted_seq"] == 6 and detail["requested_at"]
    # more images, replays: still no second event for the same baseline
    ingest.put("images/Recycling/metal1.jpg", photo("metal", 1))
    ingest.drain()
    assert ingest.dataset_ready_events() == []
    assert ingest.catalogue.state()["fired"] and ingest.catalogue.state()["published"]


# ------------------------------------------------------------------------------------------ reindex


def test_rebuild_catalogue_catches_up_and_marks_vanished_objects(ingest: Ingest) -> None:
    ingest.put("images/Compost/a.jpg", photo("paper", 0))
    ingest.put("images/Landfill/b.jpg", photo("trash", 0))
    ingest.drain()
    ingest.put("images/Recycling/c.jpg", photo("glass", 0))  # notification lost
    ingest.s3.delete_object(Bucket=ingest.bucket, Key="images/Landfill/b.jpg")  # delete marker, no event
    ingest.receive_all()
    ingest.sqs.purge_queue(QueueUrl=ingest.queue_url)
    summary = rebuild_catalogue(ingest.settings, s3=ingest.s3, ddb=ingest.stack.client("dynamodb"))
    assert summary["listed"] == 2 and summary["marked_deleted"] == 1
    assert summary["changed"] == 1 and summary["unchanged"] == 1
    assert ingest.status("images/Recycling/c.jpg") == "accepted"
    assert ingest.status("images/Landfill/b.jpg") == "deleted"
    assert ingest.accepted() == {"Compost": 1, "Landfill": 0, "Recycling": 1}
    again = rebuild_catalogue(ingest.settings, s3=ingest.s3, ddb=ingest.stack.client("dynamodb"))
    assert again.get("changed", 0) == 0 and again.get("marked_deleted", 0) == 0


def test_manual_trigger_says_what_is_missing_then_publishes_when_met(ingest: Ingest) -> None:
    from trashsorter.errors import TrainingRuleNotMet
    from trashsorter.threshold import trigger_manual

    ingest.put("images/Compost/paper0.jpg", photo("paper", 0))
    ingest.drain()
    with pytest.raises(TrainingRuleNotMet) as info:
        trigger_manual(ingest.settings, catalogue=ingest.catalogue, events=ingest.events)
    assert (
        str(info.value) == "training rule not met: need 1 more Compost, 2 more Landfill, 2 more Recycling, "
        "3 more new images"
    )
    assert info.value.missing == {"Compost": 1, "Landfill": 2, "Recycling": 2}
    assert ingest.dataset_ready_events() == []


def test_a_claim_left_unpublished_by_a_crash_is_published_by_a_later_call(ingest: Ingest) -> None:
    from trashsorter.threshold import check_and_publish

    for label, material in [("Compost", "paper"), ("Landfill", "trash"), ("Recycling", "glass")]:
        for i in range(2):
            ingest.put(f"images/{label}/{material}{i}.jpg", photo(material, i))
    # the first publisher "crashes" between the claim and PutEvents
    ddb = ingest.stack.client("dynamodb")
    old = "2020-01-01T00:00:00.000Z"
    ddb.put_item(
        TableName=ingest.settings.table_name,
        Item={
            "pk": {"S": "STATE"},
            "sk": {"S": "DATASET"},
            "fired_baseline": {"N": "0"},
            "published": {"BOOL": False},
            "fired_at": {"S": old},
        },
    )
    ingest.drain()  # the first call after the crash re-claims the stale claim and publishes, once
    events = ingest.dataset_ready_events()
    assert len(events) == 1 and events[0]["detail"]["reason"] == "threshold"
    assert ingest.catalogue.state()["published"]
    assert check_and_publish(ingest.settings, catalogue=ingest.catalogue, events=ingest.events) is False
    assert ingest.dataset_ready_events() == []


@pytest.mark.parametrize("length", [1017, 1020, 1024])
def test_keys_up_to_the_s3_limit_are_catalogued_never_dead_lettered(ingest: Ingest, length: int) -> None:
    """S3 allows 1,024-byte keys; ``<label>#<key>`` then overflows DynamoDB's 1,024-byte index sort key.

    The index key is shortened with a hash of the key (schema.image_gsi), so the photo is accepted like any
    other and listed by label; the record keeps the full key.
    """
    prefix = "images/Compost/"
    key = prefix + "é" * ((length - len(prefix) - 4) // 2) + "x" * ((length - len(prefix) - 4) % 2) + ".jpg"
    assert len(key.encode()) == length
    ingest.put(key, photo("glass"))
    assert ingest.drain() == {"messages": 1, "batchItemFailures": []}
    assert ingest.status(key) == "accepted"
    record = ingest.catalogue.get_image(key)
    assert record is not None and record["key"] == key
    assert len(str(record["gsi1sk"]).encode()) <= 1024
    listed = [img["key"] for img in ingest.catalogue.accepted_images(attributes=("key",))]
    assert key in listed
