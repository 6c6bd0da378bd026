"""Storing a planned snapshot (:mod:`trashsorter.dataset`) in S3: its frozen objects, its files, retention.

* **Frozen bytes.** Training never reads an upload in place: every image is stored once, content-addressed,
  at ``datasets/objects/<sha256>.<jpg|png>`` (:func:`trashsorter.dataset.object_key`; ``<sha256>`` = the
  SHA-256 of exactly the bytes stored there), so an overwrite or delete of the upload after the snapshot
  does not change what trains. The copy is a server-side ``CopyObject`` of the catalogued ``version_id``
  (the version the ingest step hashed), or, with no version id, a read whose SHA-256 must equal the
  catalogued one. A format the algorithm cannot decode is read, converted to JPEG
  (:func:`trashsorter.dataset.convert_to_jpeg`) and stored by the JPEG's own hash. The trainer re-hashes
  every file against its key.
* **Stored at ingest.** The ingest step stores an accepted upload's copy (:func:`store_content`, tagged
  ``catalogued``: kept) and records ``object_key``/``object_etag``; :func:`release_content` lets it expire
  when no catalogued key holds the bytes any more. A snapshot reuses such a copy with no request when the
  listing shows it with the recorded ETag, and stores it again (from the catalogued version, hash checked)
  when it is missing or changed. What follows is the path of records without a stored copy.
* **Retention.** New copies are tagged ``trashsorter-retention=snapshot``; the bucket's lifecycle rule
  (template.yaml, ``ExpireUnregisteredSnapshotObjects``) expires those ``DatasetObjectDays`` after their
  creation (a copy creates the object anew). :func:`retain_dataset` retags a registered model's objects
  ``registered``, which no rule expires.
* **Cost: O(new images) requests.** :func:`write_dataset` lists ``datasets/objects/`` once (ListObjectsV2,
  1,000 keys per request) and then, per image:

  - object absent: one ``CopyObject`` (conversions: GetObject + PutObject);
  - object present and *young* (``LastModified`` within :func:`reuse_window`: the lifecycle rule cannot
    expire it before a job started now has finished, with a safety margin): **no request**;
  - object present and old: one ``GetObjectTagging``; ``registered`` -> kept as it is (it must never be
    retagged ``snapshot``, or it would expire); otherwise copied again (onto itself, from the catalogued
    version), which restarts its expiry clock.

  Without ``reuse_within`` (or with a window of zero, e.g. ``DatasetObjectDays`` of 2 days or less) every
  present object counts as old: nothing is reused unchecked.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from trashsorter import aws
from trashsorter import labels as labels_file
from trashsorter.clock import now as clock_now
from trashsorter.dataset import (
    SPLITS,
    DatasetPlan,
    ManifestEntry,
    SnapshotImage,
    content_object,
    convert_to_jpeg,
    needs_conversion,
    render_channel_manifest,
    render_lst,
    render_manifest_jsonl,
)
from trashsorter.errors import NotFoundError
from trashsorter.observability import logger
from trashsorter.schema import dataset_manifest_key
from trashsorter_edge.contract import OBJECTS_PREFIX, object_key

RETENTION_TAG = "trashsorter-retention"  # the lifecycle rule in template.yaml filters on this tag
RETENTION_SNAPSHOT = "snapshot"  # expires (DatasetObjectDays) unless a registered model's dataset needs it
RETENTION_REGISTERED = "registered"  # kept: some registered model's dataset lists it
RETENTION_CATALOGUED = "catalogued"  # kept: stored at ingest, some catalogued key holds these bytes
KEPT = frozenset({RETENTION_REGISTERED, RETENTION_CATALOGUED})  # no lifecycle rule expires these
STORE_WORKERS = 16  # concurrent requests while a snapshot stores its images
REUSE_MARGIN = timedelta(days=2)  # an object reused unchecked outlives the job by at least this much


def reuse_window(object_days: int | None, job_seconds: int = 0) -> timedelta:
    """How young a stored object must be to be reused without a request.

    ``object_days`` is the lifecycle rule's ``DatasetObjectDays`` (``None``: unknown, reuse nothing);
    ``job_seconds`` the longest a job started now may run (spot: its maximum wait). An object younger than
    ``object_days - job_seconds - REUSE_MARGIN`` cannot expire before the job has read it.
    """
    if not object_days:
        return timedelta(0)
    return max(timedelta(0), timedelta(days=object_days) - timedelta(seconds=job_seconds) - REUSE_MARGIN)


@dataclass(frozen=True)
class StoredObjects:
    """What ``datasets/objects/`` held when the snapshot listed it, and which of it is young enough."""

    modified: Mapping[str, datetime]  # key -> LastModified
    young_after: datetime | None  # objects modified later are reused without a request (None: none is)
    etags: Mapping[str, str] = field(default_factory=dict)  # key -> ETag (unquoted)

    def unchanged(self, key: str, etag: str) -> bool:
        """The object is there with the ETag it was stored with (same bytes: SSE-S3 ETags are the MD5)."""
        return bool(etag) and self.etags.get(key) == etag

    def young(self, key: str) -> bool:
        modified = self.modified.get(key)
        return modified is not None and self.young_after is not None and modified > self.young_after


def list_stored_objects(s3: Any, bucket: str, *, reuse_within: timedelta, now: datetime) -> StoredObjects:
    """One ListObjectsV2 pass over ``datasets/objects/`` (a request per 1,000 keys)."""
    modified: dict[str, datetime] = {}
    etags: dict[str, str] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=OBJECTS_PREFIX):
        for item in page.get("Contents", []):
            modified[str(item["Key"])] = item["LastModified"]
            etags[str(item["Key"])] = _etag(item)
    return StoredObjects(modified, now - reuse_within if reuse_within > timedelta(0) else None, etags)


def _etag(response: Mapping[str, Any]) -> str:
    return str(response.get("ETag", "")).strip('"')


def _put_text(s3: Any, bucket: str, key: str, text: str, content_type: str) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=text.encode("utf-8"), ContentType=content_type)


def _catalogued_but_missing(plan: DatasetPlan, image: SnapshotImage) -> Callable[[ClientError], Any]:
    def missing(exc: ClientError) -> Any:
        raise NotFoundError(f"s3://{plan.bucket}/{image.key} is catalogued but missing") from exc

    return missing


def _read_verified(s3: Any, plan: DatasetPlan, image: SnapshotImage) -> bytes:
    get_args: dict[str, Any] = {"Bucket": plan.bucket, "Key": image.key}
    if image.version_id and image.version_id != "null":
        get_args["VersionId"] = image.version_id
    data: bytes = aws.call(
        lambda: s3.get_object(**get_args)["Body"].read(),
        what=f"read s3://{plan.bucket}/{image.key}",
        codes=dict.fromkeys(("NoSuchKey", "NoSuchVersion", "404"), _catalogued_but_missing(plan, image)),
    )
    if hashlib.sha256(data).hexdigest() != image.sha256:
        raise NotFoundError(
            f"s3://{plan.bucket}/{image.key} no longer has the catalogued bytes (sha256 {image.sha256})"
        )
    return data


def _retention(s3: Any, bucket: str, key: str) -> str | None:
    """The object's retention tag value ("" when untagged), or None when there is no object at ``key``."""
    tags = aws.call(
        lambda: s3.get_object_tagging(Bucket=bucket, Key=key).get("TagSet", []),
        what=f"read the tags of s3://{bucket}/{key}",
        codes=dict.fromkeys(("NoSuchKey", "404", "NotFound"), lambda _: None),
    )
    if tags is None:
        return None
    return next((str(tag["Value"]) for tag in tags if tag.get("Key") == RETENTION_TAG), "")


def _retained(s3: Any, bucket: str, key: str) -> bool:
    """True when ``key`` exists and is tagged to be kept (registered or catalogued: not copied again)."""
    return _retention(s3, bucket, key) in KEPT


def _keep(s3: Any, bucket: str, key: str, stored: StoredObjects) -> bool:
    """Whether the object at ``key`` stays as it is (young, or registered); absent -> False, no request."""
    if key not in stored.modified:
        return False
    return stored.young(key) or _retained(s3, bucket, key)


def _content_type(key: str) -> str:
    return "image/png" if key.endswith(".png") else "image/jpeg"


@dataclass(frozen=True)
class StoredCopy:
    """An upload's content-addressed copy: where, the ETag it was stored with, and whether it was written."""

    key: str
    etag: str
    written: bool


def store_content(s3: Any, bucket: str, key: str, body: bytes, *, overwrite: bool = False) -> StoredCopy:
    """Store an accepted upload's bytes (or conversion) at ``key``, tagged ``catalogued`` (kept).

    A copy a registered model keeps is left as it is (``overwrite``: written again, still ``registered``,
    for a copy whose bytes changed); any other copy is written anew (which also restarts an expiring copy).
    Two requests: GetObjectTagging, then PutObject (or HeadObject for the ETag of a registered copy).
    """
    retention = _retention(s3, bucket, key)
    if retention == RETENTION_REGISTERED and not overwrite:
        return StoredCopy(key, _etag(s3.head_object(Bucket=bucket, Key=key)), written=False)
    tag = RETENTION_REGISTERED if retention == RETENTION_REGISTERED else RETENTION_CATALOGUED
    put = s3.put_object(
        Bucket=bucket, Key=key, Body=body, ContentType=_content_type(key), Tagging=f"{RETENTION_TAG}={tag}"
    )
    return StoredCopy(key, _etag(put), written=True)


def release_content(s3: Any, bucket: str, key: str, still_owned: Callable[[], bool]) -> bool:
    """The last catalogued key holding a copy's content is gone: let the copy expire like a snapshot's.

    The copy is copied onto itself tagged ``snapshot`` (so it expires ``DatasetObjectDays`` from now, which
    a snapshot taken before the delete still needs); a registered model's copy is left alone. When
    ``still_owned()`` says the content was catalogued again meanwhile, the tag goes back to ``catalogued``
    (an ingest that stored nothing because it saw the copy before this release). Returns whether retagged.
    """
    if _retention(s3, bucket, key) in (None, RETENTION_REGISTERED):
        return False

    def retag() -> bool:
        s3.copy_object(
            Bucket=bucket,
            Key=key,
            CopySource={"Bucket": bucket, "Key": key},
            MetadataDirective="REPLACE",
            ContentType=_content_type(key),
            TaggingDirective="REPLACE",
            Tagging=f"{RETENTION_TAG}={RETENTION_SNAPSHOT}",
        )
        return True

    gone = dict.fromkeys(("NoSuchKey", "404"), lambda _: False)
    if not aws.call(retag, what=f"let s3://{bucket}/{key} expire", codes=gone):
        return False
    if still_owned():
        s3.put_object_tagging(
            Bucket=bucket,
            Key=key,
            Tagging={"TagSet": [{"Key": RETENTION_TAG, "Value": RETENTION_CATALOGUED}]},
        )
    return True


def _store_catalogued(
    s3: Any, plan: DatasetPlan, image: SnapshotImage, stored: StoredObjects
) -> tuple[str, bool]:
    """An image whose copy the ingest step stored: reused when the listing shows it unchanged (no request),
    else stored again from the catalogued version (missing, or its bytes changed after ingest)."""
    if stored.unchanged(image.object_key, image.object_etag):
        return image.object_key, False
    key, body = content_object(_read_verified(s3, plan, image), image.sha256, image.format)
    logger.warning(
        "stored copy missing or changed: stored again",
        extra={"key": image.key, "object_key": key, "listed": key in stored.modified},
    )
    store_content(s3, plan.bucket, key, body, overwrite=True)
    return key, True


def _store(s3: Any, plan: DatasetPlan, entry: ManifestEntry, stored: StoredObjects) -> tuple[str, bool]:
    """Store the entry's bytes content-addressed; returns the object key and whether it was written."""
    image = plan.sources[entry.key]
    if image.object_key:
        return _store_catalogued(s3, plan, image, stored)
    tagging = f"{RETENTION_TAG}={RETENTION_SNAPSHOT}"
    if needs_conversion(image):
        body = convert_to_jpeg(_read_verified(s3, plan, image))
        key = object_key(hashlib.sha256(body).hexdigest(), "jpg")
        if _keep(s3, plan.bucket, key, stored):
            return key, False
        s3.put_object(Bucket=plan.bucket, Key=key, Body=body, ContentType="image/jpeg", Tagging=tagging)
        return key, True
    key = entry.s3_key
    if _keep(s3, plan.bucket, key, stored):
        return key, False
    if image.version_id and image.version_id != "null":
        # The catalogued version is immutable and is the one the ingest step hashed: copy it server-side.
        aws.call(
            lambda: s3.copy_object(
                Bucket=plan.bucket,
                Key=key,
                CopySource={"Bucket": plan.bucket, "Key": image.key, "VersionId": image.version_id},
                MetadataDirective="REPLACE",
                ContentType=_content_type(key),
                TaggingDirective="REPLACE",
                Tagging=tagging,
            ),
            what=f"copy s3://{plan.bucket}/{image.key} to {key}",
            codes=dict.fromkeys(("NoSuchKey", "NoSuchVersion", "404"), _catalogued_but_missing(plan, image)),
        )
        return key, True
    data = _read_verified(s3, plan, image)
    s3.put_object(Bucket=plan.bucket, Key=key, Body=data, ContentType=_content_type(key), Tagging=tagging)
    return key, True


def write_dataset(
    plan: DatasetPlan,
    *,
    s3: Any = None,
    reuse_within: timedelta = timedelta(0),
    now: datetime | None = None,
) -> DatasetPlan:
    """Store every image under ``datasets/objects/`` and write the snapshot's files under ``datasets/<id>/``.

    ``reuse_within`` (see :func:`reuse_window`): present objects younger than this are reused without a
    request; ``now`` defaults to the clock. Idempotent (same id, same content). Returns the plan with every
    ``s3_key`` set (conversions included).
    """
    s3 = s3 or aws.client("s3")
    stored, plan, results = aws.call(
        lambda: _write(s3, plan, reuse_within, now or clock_now()), what=f"write dataset {plan.dataset_id}"
    )
    written = sum(1 for _, wrote in results if wrote)
    logger.info(
        "dataset stored",
        extra={
            "dataset_id": plan.dataset_id,
            "images": len(results),
            "objects_written": written,
            "objects_kept": len(results) - written,
            "objects_listed": len(stored.modified),
        },
    )
    return plan


def _write(
    s3: Any, plan: DatasetPlan, reuse_within: timedelta, now: datetime
) -> tuple[StoredObjects, DatasetPlan, list[tuple[str, bool]]]:
    """The snapshot's objects, then its files (the manifest last); returns the listing, the plan with every
    ``s3_key`` set, and each entry's (object key, written)."""
    stored = list_stored_objects(s3, plan.bucket, reuse_within=reuse_within, now=now)
    with ThreadPoolExecutor(max_workers=STORE_WORKERS) as pool:  # boto3 clients are thread-safe
        results = list(pool.map(lambda entry: _store(s3, plan, entry, stored), plan.entries))
    keys = {entry.key: key for entry, (key, _) in zip(plan.entries, results, strict=True)}
    plan = replace(plan, entries=tuple(replace(e, s3_key=keys[e.key]) for e in plan.entries))
    labels_text = labels_file.render(plan.labels)
    _put_text(s3, plan.bucket, plan.prefix + labels_file.FILE_NAME, labels_text, "text/plain")
    for split in SPLITS:
        _put_text(s3, plan.bucket, f"{plan.prefix}{split}.lst", render_lst(plan, split), "text/plain")
        _put_text(
            s3,
            plan.bucket,
            f"{plan.prefix}{split}.manifest",
            render_channel_manifest(plan, split),
            "application/json",
        )
    # The manifest last: its presence means the snapshot is complete.
    _put_text(
        s3,
        plan.bucket,
        dataset_manifest_key(plan.dataset_id),
        render_manifest_jsonl(plan),
        "application/x-ndjson",
    )
    return stored, plan, results


def retain_dataset(bucket: str, dataset_id: str, *, s3: Any = None) -> int:
    """Tag every object a registered model's dataset lists ``registered`` (the lifecycle rule keeps those).

    Idempotent; objects already gone are skipped. Returns how many objects were tagged.
    """
    s3 = s3 or aws.client("s3")
    gone = ("NoSuchKey", "404")
    rows = aws.call(
        lambda: read_manifest(bucket, dataset_id, s3=s3),
        what=f"retain dataset {dataset_id}",
        codes=dict.fromkeys(gone, lambda _: None),  # no manifest (never written): nothing to keep
    )
    tagged = 0
    for key in sorted({str(row["s3_key"]) for row in rows or ()}):
        if not key.startswith(OBJECTS_PREFIX):
            continue  # a snapshot from before content addressing: nothing expires it

        def keep(key: str = key) -> bool:
            s3.put_object_tagging(
                Bucket=bucket,
                Key=key,
                Tagging={"TagSet": [{"Key": RETENTION_TAG, "Value": RETENTION_REGISTERED}]},
            )
            return True

        # An object already gone is skipped.
        tagged += aws.call(
            keep, what=f"retain dataset {dataset_id} (tag {key})", codes=dict.fromkeys(gone, lambda _: False)
        )
    return tagged


def read_manifest(bucket: str, dataset_id: str, *, s3: Any = None) -> list[dict[str, Any]]:
    """The ``manifest.jsonl`` of a written snapshot (trainer, CLI, tests)."""
    s3 = s3 or aws.client("s3")
    body = s3.get_object(Bucket=bucket, Key=dataset_manifest_key(dataset_id))["Body"].read()
    return [json.loads(line) for line in body.decode("utf-8").splitlines() if line.strip()]
