"""Frozen snapshots on moto: what the trainer reads is the snapshot's bytes, whatever happens to the uploads.

Real boto3 against moto (a versioned bucket like the template's), real Pillow images (small), the local
emulated job's own channel fetch (``JobEmulator.fetch_channel``) and the trainer's own data loader
(``trashsorter_trainer.entry.read_split``).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from PIL import Image

from trashsorter.dataset import DatasetPlan, SnapshotImage, plan_dataset
from trashsorter.dataset_store import (
    RETENTION_REGISTERED,
    RETENTION_SNAPSHOT,
    RETENTION_TAG,
    read_manifest,
    retain_dataset,
    reuse_window,
    write_dataset,
)
from trashsorter.errors import NotFoundError
from trashsorter_cli.local.sagemaker_jobs import JobEmulator
from trashsorter_edge.contract import OBJECTS_PREFIX
from trashsorter_trainer.entry import read_split
from trashsorter_trainer.errors import TrainerError

pytestmark = pytest.mark.integration

BUCKET = "trashsorter-images-snapshot-test"
LABELS = ("Compost", "Landfill")


def picture(seed: int, fmt: str = "JPEG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (24, 16), (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256)).save(out, format=fmt)
    return out.getvalue()


@pytest.fixture
def s3() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        yield client


def upload(
    s3: Any, key: str, data: bytes, label: str, fmt: str = "JPEG", versioned: bool = True
) -> SnapshotImage:
    version = s3.put_object(Bucket=BUCKET, Key=key, Body=data)["VersionId"]
    return SnapshotImage(key, hashlib.sha256(data).hexdigest(), label, fmt, version if versioned else "")


def snapshot(s3: Any, *, versioned: bool = True, **write: Any) -> tuple[DatasetPlan, dict[str, bytes]]:
    originals: dict[str, bytes] = {}
    images = []
    for index in range(6):
        label = LABELS[index % 2]
        key = f"images/{label}/{index}.jpg"
        originals[key] = picture(index)
        images.append(upload(s3, key, originals[key], label, versioned=versioned))
    originals["images/Compost/w.webp"] = picture(9, "WEBP")
    images.append(upload(s3, "images/Compost/w.webp", originals["images/Compost/w.webp"], "Compost", "WEBP"))
    plan = plan_dataset(images, labels=LABELS, validation_fraction=0.4, bucket=BUCKET)
    return write_dataset(plan, s3=s3, **write), originals


def fetch(s3: Any, plan: DatasetPlan, root: Path) -> dict[str, str]:
    """The channels as the emulated job downloads them (same specs as the training request's)."""
    emulator = JobEmulator(client=lambda _service: s3, work_root=root)
    env: dict[str, str] = {}
    specs = {"labels": ("S3Prefix", "labels.txt"), "manifest": ("S3Prefix", "manifest.jsonl")}
    for split in ("train", "validation"):
        specs[split] = ("ManifestFile", f"{split}.manifest")
        specs[f"{split}_lst"] = ("S3Prefix", f"{split}.lst")
    for name, (data_type, file_name) in specs.items():
        target = root / name
        spec = {"DataSource": {"S3DataSource": {"S3DataType": data_type, "S3Uri": plan.uri(file_name)}}}
        emulator.fetch_channel(spec, target)
        env[f"SM_CHANNEL_{name.upper()}"] = str(target)
    return env


def test_overwrite_and_delete_after_the_snapshot_do_not_change_what_trains(s3: Any, tmp_path: Path) -> None:
    plan, originals = snapshot(s3)
    manifest = {row["key"]: row for row in read_manifest(BUCKET, plan.dataset_id, s3=s3)}
    # users overwrite one photo and delete another (the delete leaves a delete marker on a versioned bucket)
    s3.put_object(Bucket=BUCKET, Key="images/Compost/0.jpg", Body=picture(100))
    s3.delete_object(Bucket=BUCKET, Key="images/Landfill/1.jpg")

    env = fetch(s3, plan, tmp_path)
    read = {s.key: s.data for split in ("train", "validation") for s in read_split(split, list(LABELS), env)}
    assert len(read) == len(originals) == len(manifest)
    for key, row in manifest.items():
        data = read[row["s3_key"]]
        assert row["s3_key"].startswith(OBJECTS_PREFIX)
        assert row["s3_key"] == f"{OBJECTS_PREFIX}{hashlib.sha256(data).hexdigest()}.{row['s3_key'][-3:]}"
        if key.endswith(".webp"):  # the JPEG conversion of the catalogued WebP bytes
            assert Image.open(io.BytesIO(data)).format == "JPEG" and row["sha256"] != row["s3_key"][-68:-4]
        else:  # the very bytes whose SHA-256 the manifest lists, not what the upload key holds now
            assert data == originals[key] and hashlib.sha256(data).hexdigest() == row["sha256"]
    assert s3.get_object(Bucket=BUCKET, Key="images/Compost/0.jpg")["Body"].read() == picture(100)


def test_a_tampered_object_fails_the_trainer_with_the_image_named(s3: Any, tmp_path: Path) -> None:
    plan, _ = snapshot(s3)
    victim = plan.split_entries("train")[0].s3_key
    s3.put_object(Bucket=BUCKET, Key=victim, Body=picture(200))
    env = fetch(s3, plan, tmp_path)
    with pytest.raises(TrainerError, match="does not hold the snapshot's bytes") as caught:
        read_split("train", list(LABELS), env)
    assert victim in str(caught.value) and hashlib.sha256(picture(200)).hexdigest() in str(caught.value)
    photo = next(e.key for e in plan.entries if e.s3_key == victim)
    assert f"; photo {photo}: delete it if it is wrong" in str(caught.value)  # its catalogue key


def test_without_version_ids_the_snapshot_hashes_what_it_copies(s3: Any, tmp_path: Path) -> None:
    plan, originals = snapshot(s3, versioned=False)
    for entry in plan.entries:
        if not entry.key.endswith(".webp"):
            body = s3.get_object(Bucket=BUCKET, Key=entry.s3_key)["Body"].read()
            assert body == originals[entry.key]
    # an upload changed between cataloguing and the snapshot is refused, never copied
    changed = upload(s3, "images/Compost/late.jpg", picture(50), "Compost", versioned=False)
    s3.put_object(Bucket=BUCKET, Key=changed.key, Body=picture(51))
    again = plan_dataset(
        [*plan.sources.values(), changed], labels=LABELS, validation_fraction=0.4, bucket=BUCKET
    )
    with pytest.raises(NotFoundError, match="no longer has the catalogued bytes"):
        write_dataset(again, s3=s3)


def tags(s3: Any, key: str) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=BUCKET, Key=key)["TagSet"]}


def test_retention_tags_follow_registration(s3: Any) -> None:
    plan, _ = snapshot(s3)
    keys = sorted({entry.s3_key for entry in plan.entries})
    assert all(tags(s3, key) == {RETENTION_TAG: RETENTION_SNAPSHOT} for key in keys)
    assert retain_dataset(BUCKET, plan.dataset_id, s3=s3) == len(keys)
    assert all(tags(s3, key) == {RETENTION_TAG: RETENTION_REGISTERED} for key in keys)
    # a later snapshot sharing those objects keeps them registered (skipped, not re-copied)
    versions_before = len(s3.list_object_versions(Bucket=BUCKET, Prefix=OBJECTS_PREFIX)["Versions"])
    write_dataset(plan, s3=s3)
    assert all(tags(s3, key) == {RETENTION_TAG: RETENTION_REGISTERED} for key in keys)
    assert len(s3.list_object_versions(Bucket=BUCKET, Prefix=OBJECTS_PREFIX)["Versions"]) == versions_before
    assert retain_dataset(BUCKET, "0" * 16, s3=s3) == 0  # no such dataset: nothing to keep
    manifest = json.loads(json.dumps(read_manifest(BUCKET, plan.dataset_id, s3=s3)))
    assert {row["s3_key"] for row in manifest} == set(keys)


class Requests:
    """The S3 calls the client makes (botocore's before-parameter-build event: one per call), by operation."""

    def __init__(self, s3: Any) -> None:
        self.counts: Counter[str] = Counter()
        self.written: list[str] = []  # object keys of CopyObject / PutObject under datasets/objects/
        s3.meta.events.register("before-parameter-build.s3", self._count)

    def _count(self, model: Any, params: Mapping[str, Any], **_: Any) -> None:
        self.counts[model.name] += 1
        key = str(params.get("Key", ""))
        if model.name in ("CopyObject", "PutObject") and key.startswith(OBJECTS_PREFIX):
            self.written.append(key)

    def reset(self) -> None:
        self.counts.clear()
        self.written.clear()


def versions(s3: Any) -> Counter[str]:
    listed = s3.list_object_versions(Bucket=BUCKET, Prefix=OBJECTS_PREFIX).get("Versions", [])
    return Counter(str(v["Key"]) for v in listed)


REUSE = reuse_window(60, 7200)  # the template's DatasetObjectDays and TrainingMaxRuntimeSeconds defaults


def more_images(s3: Any, plan: DatasetPlan, seeds: range) -> DatasetPlan:
    """The same catalogue plus new uploads (a later snapshot)."""
    new = [upload(s3, f"images/Landfill/new-{i}.jpg", picture(i), "Landfill") for i in seeds]
    images = [*plan.sources.values(), *new]
    return plan_dataset(images, labels=LABELS, validation_fraction=0.4, bucket=BUCKET)


def test_a_later_snapshot_copies_only_new_images_and_sends_nothing_for_young_objects(s3: Any) -> None:
    requests = Requests(s3)
    first, _ = snapshot(s3, reuse_within=REUSE)
    # first snapshot: nothing stored yet, so no tag checks; 6 copies and the WebP's conversion
    assert requests.counts["GetObjectTagging"] == 0 and requests.counts["CopyObject"] == 6
    assert requests.counts["ListObjectsV2"] == 1 and len(requests.written) == 7
    before = versions(s3)

    second = more_images(s3, first, range(20, 23))
    requests.reset()
    stored = write_dataset(second, s3=s3, reuse_within=REUSE)
    new_keys = {e.s3_key for e in second.entries if "/new-" in e.key}
    assert len(new_keys) == 3 and not new_keys & set(before)
    # only the 3 new images cost a request: no CopyObject, PutObject or GetObjectTagging for young objects
    assert requests.counts["GetObjectTagging"] == 0 and requests.counts["CopyObject"] == 3
    assert sorted(requests.written) == sorted(new_keys)
    assert requests.counts["GetObject"] == 1  # the WebP is converted again to learn its key, not stored
    assert versions(s3) == before + Counter(dict.fromkeys(new_keys, 1))
    manifest = {row["key"]: row["s3_key"] for row in read_manifest(BUCKET, stored.dataset_id, s3=s3)}
    assert manifest == {e.key: e.s3_key for e in stored.entries} and len(manifest) == 10
    for key in manifest.values():  # every listed object holds the bytes its name is the hash of
        data = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert key == f"{OBJECTS_PREFIX}{hashlib.sha256(data).hexdigest()}{key[-4:]}"


def test_old_objects_are_checked_registered_ones_never_retagged_others_copied_again(s3: Any) -> None:
    first, _ = snapshot(s3, reuse_within=REUSE)
    registered = {e.s3_key for e in first.entries}
    assert retain_dataset(BUCKET, first.dataset_id, s3=s3) == len(registered) == 7
    second = write_dataset(more_images(s3, first, range(30, 32)), s3=s3, reuse_within=REUSE)
    unregistered = {e.s3_key for e in second.entries} - registered
    assert len(unregistered) == 2 and all(
        tags(s3, k) == {RETENTION_TAG: RETENTION_SNAPSHOT} for k in unregistered
    )
    before = versions(s3)

    # 90 days later every stored object is older than the lifecycle rule's 60 days minus the margins
    requests = Requests(s3)
    write_dataset(second, s3=s3, reuse_within=REUSE, now=datetime.now(UTC) + timedelta(days=90))
    assert requests.counts["GetObjectTagging"] == 9  # one check per old object
    assert sorted(requests.written) == sorted(unregistered)  # copied onto themselves: the clock restarts
    assert all(tags(s3, k) == {RETENTION_TAG: RETENTION_REGISTERED} for k in registered)
    assert all(tags(s3, k) == {RETENTION_TAG: RETENTION_SNAPSHOT} for k in unregistered)
    assert versions(s3) == before + Counter(dict.fromkeys(unregistered, 1))
