"""The local stack's state journal (trashsorter_cli.local.persistence): what real boto3 calls change in
moto is journaled, and restoring the journal into fresh backends gives back the same objects (every version,
its id, delete markers, metadata, content type, tags) and the same DynamoDB items."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from trashsorter_cli.local import persistence

pytestmark = pytest.mark.integration
BUCKET, OTHER_BUCKET, TABLE = "ts-persist-images", "ts-not-persisted", "ts-persist-table"
REGION = "us-east-1"


def _clients() -> tuple[Any, Any]:
    return boto3.client("s3", region_name=REGION), boto3.client("dynamodb", region_name=REGION)


def _create(s3: Any, ddb: Any) -> None:
    for bucket in (BUCKET, OTHER_BUCKET):
        s3.create_bucket(Bucket=bucket)
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    ddb.create_table(
        TableName=TABLE,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"} for n in ("pk", "sk")],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
    )


def _dump(s3: Any, ddb: Any) -> dict[str, Any]:
    """All a reader sees: versions (ids, order, markers), bytes, content type, metadata, tags, items."""
    listing = s3.list_object_versions(Bucket=BUCKET)
    versions = []
    for v in listing.get("Versions", []):
        obj = s3.get_object(Bucket=BUCKET, Key=v["Key"], VersionId=v["VersionId"])
        tags = s3.get_object_tagging(Bucket=BUCKET, Key=v["Key"], VersionId=v["VersionId"])["TagSet"]
        versions.append(
            (v["Key"], v["VersionId"], v["IsLatest"], v["ETag"], v["LastModified"], obj["Body"].read(),
             obj["ContentType"], obj["Metadata"], sorted((t["Key"], t["Value"]) for t in tags))
        )  # fmt: skip
    markers = [(m["Key"], m["VersionId"], m["IsLatest"]) for m in listing.get("DeleteMarkers", [])]
    items = sorted(json.dumps(i, sort_keys=True, default=repr) for i in ddb.scan(TableName=TABLE)["Items"])
    return {"versions": sorted(versions), "markers": sorted(markers), "items": items}


def _changes(s3: Any, ddb: Any) -> None:
    key = "images/Compost/a.jpg"
    first = s3.put_object(
        Bucket=BUCKET,
        Key=key,
        Body=b"one",
        ContentType="image/jpeg",
        Metadata={"origin": "cam-1"},
        Tagging="t=1",
    )["VersionId"]
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"two", ContentType="image/png")
    s3.put_object_tagging(
        Bucket=BUCKET,
        Key=key,
        VersionId=first,
        Tagging={"TagSet": [{"Key": "retention", "Value": "snapshot"}]},
    )
    s3.copy_object(
        Bucket=BUCKET,
        Key="images/Compost/copy.jpg",
        CopySource={"Bucket": BUCKET, "Key": key, "VersionId": first},
    )
    s3.put_object(Bucket=BUCKET, Key="images/Landfill/gone.jpg", Body=b"gone")
    s3.delete_object(Bucket=BUCKET, Key="images/Landfill/gone.jpg")  # a delete marker hides it
    purged = s3.put_object(Bucket=BUCKET, Key="images/Landfill/purged.jpg", Body=b"purged")["VersionId"]
    s3.delete_object(Bucket=BUCKET, Key="images/Landfill/purged.jpg", VersionId=purged)  # no version left
    s3.put_object(Bucket=OTHER_BUCKET, Key="x", Body=b"not journaled")

    def item(pk: str, sk: str, **extra: Any) -> dict[str, Any]:
        return {"pk": {"S": pk}, "sk": {"S": sk}, **extra}

    ddb.put_item(TableName=TABLE, Item=item("IMG#a", "META", n={"N": "1"}, tags={"SS": ["x", "y"]}))
    ddb.put_item(TableName=TABLE, Item=item("IMG#c", "META", n={"N": "3"}))
    ddb.batch_write_item(
        RequestItems={TABLE: [{"PutRequest": {"Item": item("IMG#d", "META", blob={"B": b"\x00\x01"})}}]}
    )
    ddb.transact_write_items(
        TransactItems=[
            {"Update": {"TableName": TABLE, "Key": item("IMG#a", "META"),
                        "UpdateExpression": "SET n = :n, m = :m",
                        "ExpressionAttributeValues": {":n": {"N": "5"},
                                                      ":m": {"M": {"deep": {"L": [{"S": "v"}]}}}}}},
            {"Put": {"TableName": TABLE, "Item": item("IMG#b", "META", n={"N": "2"})}},
            {"Delete": {"TableName": TABLE, "Key": item("IMG#c", "META")}},
        ]
    )  # fmt: skip
    ddb.update_item(
        TableName=TABLE, Key=item("COUNTER", "total"), UpdateExpression="ADD c :one",
        ExpressionAttributeValues={":one": {"N": "1"}},
    )  # fmt: skip
    ddb.delete_item(TableName=TABLE, Key=item("IMG#b", "META"))


@pytest.fixture
def journaled(tmp_path: Path) -> Iterator[tuple[persistence.Store, dict[str, Any]]]:
    """Changes made through boto3 with the journal attached; yields the store and what a reader saw."""
    store = persistence.Store(tmp_path / "state")
    with mock_aws():
        s3, ddb = _clients()
        _create(s3, ddb)
        store.open()
        persistence.attach(store, buckets=[BUCKET], tables=[TABLE])
        try:
            _changes(s3, ddb)
            seen = _dump(s3, ddb)
        finally:
            persistence.detach(store)
            store.close()
    yield store, seen


def test_restore_into_fresh_backends_gives_back_every_version_marker_tag_and_item(
    journaled: tuple[persistence.Store, dict[str, Any]],
) -> None:
    store, seen = journaled
    assert len(seen["versions"]) == 4 and len(seen["markers"]) == 1 and len(seen["items"]) == 3
    with mock_aws():
        s3, ddb = _clients()
        _create(s3, ddb)
        assert _dump(s3, ddb)["versions"] == []
        counts = persistence.restore(store, region=REGION, buckets=[BUCKET], tables=[TABLE])
        assert _dump(s3, ddb) == seen
        assert counts.counts == {"objects": 3, "versions": 5, "items": 3, "skipped": 0}
        assert set(counts.live[BUCKET]) == {
            "images/Compost/a.jpg",
            "images/Compost/copy.jpg",
        }  # not the marker
        assert s3.list_objects_v2(Bucket=OTHER_BUCKET).get("KeyCount") == 0  # never journaled
        # the restored bucket works on: a later delete of a restored key makes a marker over the same versions
        s3.delete_object(Bucket=BUCKET, Key="images/Compost/a.jpg")
        with pytest.raises(s3.exceptions.ClientError):
            s3.get_object(Bucket=BUCKET, Key="images/Compost/a.jpg")


def test_compaction_keeps_the_last_state_drops_the_journal_and_unused_blobs(
    journaled: tuple[persistence.Store, dict[str, Any]],
) -> None:
    store, _ = journaled
    journal = store.root / persistence.JOURNAL
    lines = journal.read_text().splitlines()
    assert len(lines) > 10  # one record per change, not a dump per change
    with journal.open("a") as handle:
        handle.write('{"kind": "ddb", "res": "ts-persist-table", "id": "torn')  # a write cut off by kill -9
    blobs_before = {p.name for p in store.blobs.iterdir()}
    state = store.load()
    store.compact(state)
    assert not journal.exists()
    snapshot = (store.root / persistence.SNAPSHOT).read_text().splitlines()
    assert len(snapshot) == 3 + 3  # 3 keys with versions, 3 live items; deleted items and keys are gone
    blobs_after = {p.name for p in store.blobs.iterdir()}
    assert len(blobs_after) == 3 and blobs_after < blobs_before  # b"one", b"two", b"gone"; b"purged" dropped
    assert persistence.Store(store.root).load() == {
        k: v for k, v in state.items() if v.get("item") or v.get("versions")
    }
