"""The content-addressed copy is made at ingest: once per distinct content, reused by every snapshot.

Real uploads through the notification queue into the ingest handler (template.yaml on moto, a versioned
bucket: a second write of a copy would show as a second version), real Pillow photos and a real WebP, the
snapshot exactly as start-training makes it (``plan_from_catalogue`` + ``write_dataset``).
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

from tests.support import hostile
from tests.support.ingest import LABELS, Ingest
from tests.support.stack import StackHandle
from trashsorter import dataset
from trashsorter.dataset import DatasetPlan, plan_from_catalogue
from trashsorter.dataset_store import (
    RETENTION_CATALOGUED,
    RETENTION_REGISTERED,
    RETENTION_SNAPSHOT,
    RETENTION_TAG,
    read_manifest,
    retain_dataset,
    write_dataset,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def ingest(stack: StackHandle) -> Iterator[Ingest]:
    yield Ingest(stack)


def photo(material: str, index: int = 0) -> bytes:
    return hostile.real_photo_bytes(material, index)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def versions(ingest: Ingest, key: str) -> int:
    listed = ingest.s3.list_object_versions(Bucket=ingest.bucket, Prefix=key).get("Versions", [])
    return sum(1 for v in listed if v["Key"] == key)


def retention(ingest: Ingest, key: str) -> str | None:
    return ingest.tags(key).get(RETENTION_TAG)


def snapshot(ingest: Ingest, calls: Counter[str] | None = None) -> DatasetPlan:
    """A snapshot as start-training takes it; ``calls`` counts its S3 requests by operation."""
    plan = plan_from_catalogue(ingest.catalogue, labels=LABELS, validation_fraction=0.2, bucket=ingest.bucket)

    def count(model: Any, **_: Any) -> None:
        if calls is not None:
            calls[model.name] += 1

    ingest.s3.meta.events.register("before-call.s3.*", count)
    try:
        return write_dataset(plan, s3=ingest.s3)
    finally:
        ingest.s3.meta.events.unregister("before-call.s3.*", count)


def test_an_accepted_photo_is_stored_once_at_ingest_and_a_snapshot_only_lists_it(ingest: Ingest) -> None:
    data = photo("paper")
    ingest.put("images/Compost/a.jpg", data)
    ingest.put("images/Landfill/b.jpg", photo("plastic"))
    ingest.drain()
    rec = ingest.catalogue.get_image("images/Compost/a.jpg")
    assert rec is not None and rec["status"] == "accepted"
    assert rec["object_key"] == f"datasets/objects/{sha(data)}.jpg"
    stored = ingest.s3.get_object(Bucket=ingest.bucket, Key=rec["object_key"])
    assert stored["Body"].read() == data and stored["ETag"].strip('"') == rec["object_etag"]
    assert retention(ingest, rec["object_key"]) == RETENTION_CATALOGUED  # no lifecycle rule expires it

    calls: Counter[str] = Counter()
    plan = snapshot(ingest, calls)
    assert {e.key: e.s3_key for e in plan.entries}["images/Compost/a.jpg"] == rec["object_key"]
    # One listing, the snapshot's six files, and not one request per image.
    assert calls == Counter({"ListObjectsV2": 1, "PutObject": 6})
    assert versions(ingest, rec["object_key"]) == 1


def test_duplicates_and_conflicts_share_one_copy_and_deleting_one_side_keeps_it(ingest: Ingest) -> None:
    data = photo("cardboard")
    ingest.put("images/Compost/box.jpg", data)
    ingest.drain()
    ingest.put("images/Compost/box again.jpg", data)
    ingest.put("images/Recycling/box.jpg", data)
    ingest.drain()
    records = [ingest.catalogue.get_image(k) for k in ("images/Compost/box.jpg", "images/Recycling/box.jpg")]
    assert all(r is not None and r["status"] == "conflict" for r in records)
    keys = {r["object_key"] for r in records if r is not None}
    assert keys == {f"datasets/objects/{sha(data)}.jpg"}
    (key,) = keys
    assert versions(ingest, key) == 1  # stored by the first key only

    ingest.delete_permanently("images/Recycling/box.jpg")
    ingest.drain()
    assert ingest.status("images/Compost/box.jpg") == "accepted"
    assert retention(ingest, key) == RETENTION_CATALOGUED and versions(ingest, key) == 1
    assert snapshot(ingest).entries[0].s3_key == key


def test_deleting_the_last_key_lets_the_copy_expire_unless_a_registered_model_keeps_it(
    ingest: Ingest,
) -> None:
    gone, kept = photo("glass", 0), photo("glass", 1)
    ingest.put("images/Recycling/gone.jpg", gone)
    ingest.put("images/Recycling/kept.jpg", kept)
    ingest.put("images/Landfill/other.jpg", photo("trash"))
    ingest.drain()
    plan = snapshot(ingest)
    retain_dataset(ingest.bucket, plan.dataset_id, s3=ingest.s3)  # a registered model lists both
    gone_key, kept_key = (f"datasets/objects/{sha(d)}.jpg" for d in (gone, kept))
    ingest.s3.put_object_tagging(  # as if no model had registered gone.jpg
        Bucket=ingest.bucket,
        Key=gone_key,
        Tagging={"TagSet": [{"Key": RETENTION_TAG, "Value": RETENTION_CATALOGUED}]},
    )
    ingest.delete_permanently("images/Recycling/gone.jpg")
    ingest.delete_permanently("images/Recycling/kept.jpg")
    ingest.drain()
    # Copied onto itself tagged to expire DatasetObjectDays from the delete (a snapshot may still use it).
    assert retention(ingest, gone_key) == RETENTION_SNAPSHOT and versions(ingest, gone_key) == 2
    assert retention(ingest, kept_key) == RETENTION_REGISTERED and versions(ingest, kept_key) == 1
    assert [e.key for e in snapshot(ingest).entries] == ["images/Landfill/other.jpg"]

    ingest.put("images/Recycling/back.jpg", gone)  # the same photo catalogued again: kept again
    ingest.drain()
    assert retention(ingest, gone_key) == RETENTION_CATALOGUED
    rec = ingest.catalogue.get_image("images/Recycling/back.jpg")
    assert rec is not None and rec["object_key"] == gone_key


def test_a_webp_is_converted_once_at_ingest_and_never_by_a_snapshot(
    ingest: Ingest, monkeypatch: pytest.MonkeyPatch
) -> None:
    conversions: list[int] = []
    convert = dataset.convert_to_jpeg

    def counting(data: bytes) -> bytes:
        conversions.append(len(data))
        return convert(data)

    monkeypatch.setattr(dataset, "convert_to_jpeg", counting)
    webp = hostile.webp_from_photo("paper")
    ingest.put("images/Compost/phone.webp", webp)
    ingest.put("images/Landfill/bag.jpg", photo("plastic"))
    ingest.drain()
    ingest.put("images/Compost/phone copy.webp", webp)  # a duplicate reuses the conversion
    ingest.drain()
    assert ingest.status("images/Compost/phone copy.webp") == "duplicate"
    rec = ingest.catalogue.get_image("images/Compost/phone.webp")
    assert rec is not None and rec["sha256"] == sha(webp)
    converted = ingest.s3.get_object(Bucket=ingest.bucket, Key=rec["object_key"])["Body"].read()
    assert converted[:3] == b"\xff\xd8\xff" and rec["object_key"] == f"datasets/objects/{sha(converted)}.jpg"

    first, second = snapshot(ingest), snapshot(ingest)
    assert conversions == [len(webp)]
    for plan in (first, second):
        rows = {row["key"]: row for row in read_manifest(ingest.bucket, plan.dataset_id, s3=ingest.s3)}
        assert rows["images/Compost/phone.webp"]["s3_key"] == rec["object_key"]
        assert rows["images/Compost/phone.webp"]["sha256"] == sha(webp)  # the upload's hash, as before
    assert versions(ingest, rec["object_key"]) == 1


def test_near_twins_under_two_labels_are_shown_by_images_and_held_out_of_the_snapshot(ingest: Ingest) -> None:
    from trashsorter_cli.commands.data import list_images
    from trashsorter_cli.targets import Target

    shot = photo("plastic", 2)
    smaller = io.BytesIO()
    with Image.open(io.BytesIO(shot)) as im:
        im.resize((im.width // 2, im.height // 2)).save(smaller, "JPEG", quality=90)
    ingest.put("images/Recycling/bottle.jpg", shot)
    ingest.put("images/Landfill/bottle small.jpg", smaller.getvalue())  # the same shot, filed twice
    ingest.put("images/Landfill/bag.jpg", photo("trash", 1))
    ingest.put("images/Recycling/jar.jpg", photo("glass", 3))
    ingest.drain()
    records = {
        k: ingest.catalogue.get_image(k) for k in ("images/Recycling/bottle.jpg", "images/Landfill/bag.jpg")
    }
    assert all(
        r is not None and r["status"] == "accepted" and len(r["phash"]) == 64 for r in records.values()
    )

    target = Target("stack", "t", "us-east-1", ingest.stack.outputs)
    rows = {row["key"]: row for row in list_images(target, ddb=ingest.stack.client("dynamodb"))}
    flagged = {key for key, row in rows.items() if row["reason_code"] == "near_conflict"}
    assert flagged == {"images/Recycling/bottle.jpg", "images/Landfill/bottle small.jpg"}
    assert "images/Landfill/bottle small.jpg (Landfill)" in rows["images/Recycling/bottle.jpg"]["reason"]
    assert rows["images/Recycling/bottle.jpg"]["near_twins"] == ["images/Landfill/bottle small.jpg"]
    assert [e.key for e in snapshot(ingest).entries] == [
        "images/Landfill/bag.jpg",
        "images/Recycling/jar.jpg",
    ]

    ingest.delete_permanently("images/Landfill/bottle small.jpg")  # a person decides: it is recycling
    ingest.drain()
    assert "images/Recycling/bottle.jpg" in {e.key for e in snapshot(ingest).entries}


def test_a_copy_changed_after_ingest_is_stored_again_by_the_next_snapshot(ingest: Ingest) -> None:
    data = photo("metal", 1)
    ingest.put("images/Recycling/can.jpg", data)
    ingest.put("images/Landfill/bag.jpg", photo("trash", 2))
    ingest.drain()
    rec = ingest.catalogue.get_image("images/Recycling/can.jpg")
    assert rec is not None
    key = rec["object_key"]
    ingest.s3.put_object(Bucket=ingest.bucket, Key=key, Body=photo("glass", 4))  # tampered with

    calls: Counter[str] = Counter()
    plan = snapshot(ingest, calls)
    assert {e.key: e.s3_key for e in plan.entries}["images/Recycling/can.jpg"] == key
    healed = ingest.s3.get_object(Bucket=ingest.bucket, Key=key)["Body"].read()
    assert healed == data and key == f"datasets/objects/{sha(healed)}.jpg"
    assert retention(ingest, key) == RETENTION_CATALOGUED
    # Only the changed copy cost requests: its catalogued version read, its tags, the write.
    assert calls == Counter({"ListObjectsV2": 1, "GetObject": 1, "GetObjectTagging": 1, "PutObject": 7})

    calls.clear()
    snapshot(ingest, calls)
    assert calls == Counter({"ListObjectsV2": 1, "PutObject": 6})  # healed: reused unchecked again
