"""One S3 notification record end to end: key -> label -> size -> download -> validate -> catalogue.

* ``ObjectCreated:*``: parse the label, check the size from the event, read the exact version, hash and
  validate it, then write the record (accepted / duplicate / conflict / rejected) in one transaction.
  Rejected objects also get the S3 tags ``trashsorter-status=rejected`` / ``trashsorter-reason=<code>``.
* ``ObjectRemoved:*``: if the key still exists (a newer version, or an older version became current again)
  that version is catalogued instead; otherwise the record is marked ``deleted``.
* Events carry an S3 ``sequencer``; older events than the one a record was written from are ignored.
  Events without one (S3 emulators, :func:`rebuild_catalogue`) are reconciled with the current object.
* Replays change nothing; the handler retries only :class:`~trashsorter.errors.TransientError`.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from trashsorter import aws
from trashsorter.catalogue import Catalogue
from trashsorter.catalogue_model import ImageUpdate, sequencer_newer
from trashsorter.dataset import content_object
from trashsorter.dataset_store import StoredCopy, release_content, store_content
from trashsorter.errors import Rejection
from trashsorter.events import S3ObjectEvent
from trashsorter.keys import IMAGES_PREFIX, label_for_key, parse_key
from trashsorter.observability import logger
from trashsorter.schema import ImageStatus
from trashsorter.settings import IngestSettings
from trashsorter.threshold import after_accept
from trashsorter.validation import ImageInfo, check_object_size, validate_image

IGNORED = "ignored"
STATUS_TAG = "trashsorter-status"
REASON_TAG = "trashsorter-reason"
_GONE_CODES = ("NoSuchKey", "NoSuchVersion", "404", "NotFound")
_MAX_TAGS = 10


@dataclass(frozen=True)
class IngestOutcome:
    key: str
    label: str | None
    status: str  # an ImageStatus value, or "ignored"
    reason_code: str | None = None
    changed: bool = False


def _when_gone(answer: Any) -> dict[str, Any]:
    """The ``codes`` and ``statuses`` of :func:`aws.call` that mean "the object (version) is gone" (any 404),
    each answered by ``answer(exc)``."""
    return {"codes": dict.fromkeys(_GONE_CODES, answer), "statuses": {404: answer}}


def check_image(data: bytes, settings: IngestSettings) -> ImageInfo:
    """Ingest's verdict on one object's bytes under the stack's limits (size, then the image itself).

    The one definition of "ingest would accept this": the ingest step and ``trashsorter predict`` call it.
    Raises :class:`~trashsorter.errors.Rejection`.
    """
    check_object_size(len(data), settings.max_image_bytes)
    return validate_image(
        data,
        max_pixels=settings.max_image_pixels,
        min_side=settings.min_image_side,
        max_aspect_ratio=settings.max_aspect_ratio,
    )


class _Gone(Exception):
    """The object (version) disappeared before we could read it."""


class _Ingestor:
    def __init__(self, settings: IngestSettings, *, s3: Any, ddb: Any, events: Any) -> None:
        self.settings = settings
        self.s3 = s3 or aws.client("s3")
        self.events = events
        self.catalogue = Catalogue(settings.table_name, ddb=ddb)

    # ---------------------------------------------------------------- S3 access
    def _read(self, bucket: str, key: str, version_id: str | None) -> tuple[bytes, str | None, str | None]:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if version_id:
            kwargs["VersionId"] = version_id

        def read() -> tuple[dict[str, Any], bytes]:
            response = self.s3.get_object(**kwargs)
            with response["Body"] as body:
                return response, body.read(self.settings.max_image_bytes + 1)

        def gone(exc: ClientError) -> tuple[dict[str, Any], bytes]:
            raise _Gone(key) from exc

        response, data = aws.call(read, what=f"read s3://{bucket}/{key}", **_when_gone(gone))
        etag = str(response.get("ETag", "")).strip('"') or None
        return data, response.get("VersionId") or version_id, etag

    def _head(self, bucket: str, key: str) -> dict[str, Any] | None:
        response: dict[str, Any] | None = aws.call(
            lambda: self.s3.head_object(Bucket=bucket, Key=key),
            what=f"check s3://{bucket}/{key}",
            **_when_gone(lambda _: None),
        )
        return response

    def _tag_rejected(self, bucket: str, key: str, version_id: str | None, code: str) -> None:
        """Merge our two tags into the object's tags (the user's own tags are kept)."""
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if version_id:
            kwargs["VersionId"] = version_id

        def tag() -> None:
            current = self.s3.get_object_tagging(**kwargs).get("TagSet", [])
            keep = [t for t in current if t["Key"] not in (STATUS_TAG, REASON_TAG)][: _MAX_TAGS - 2]
            tags = [*keep, {"Key": STATUS_TAG, "Value": "rejected"}, {"Key": REASON_TAG, "Value": code}]
            if sorted(map(str, current)) != sorted(map(str, tags)):
                self.s3.put_object_tagging(**kwargs, Tagging={"TagSet": tags})

        # gone: deleted meanwhile; its delete event follows
        aws.call(tag, what=f"tag rejected s3://{bucket}/{key}", **_when_gone(lambda _: None))

    def _store_copy(
        self, bucket: str, data: bytes, sha256: str, image_format: str, *, trust_catalogue: bool = True
    ) -> StoredCopy:
        """The content-addressed copy a snapshot lists for these bytes: stored once per distinct content
        (the first key holding them stores it; later keys reuse what the HASH item records)."""
        content = self.catalogue.content(sha256) if trust_catalogue else None
        if content and content.get("object_key"):
            return StoredCopy(
                str(content["object_key"]), str(content.get("object_etag") or ""), written=False
            )
        key, body = content_object(data, sha256, image_format)
        return aws.call(lambda: store_content(self.s3, bucket, key, body), what=f"store s3://{bucket}/{key}")

    def _release(self, bucket: str, released: Sequence[tuple[str, str]]) -> None:
        """Copies whose content no catalogued key holds any more expire like a snapshot's."""
        for sha256, key in released:
            aws.call(
                lambda sha=sha256, key=key: release_content(
                    self.s3, bucket, key, lambda: self.catalogue.content(sha) is not None
                ),
                what=f"release s3://{bucket}/{key}",
            )

    # ---------------------------------------------------------------- events
    def process(self, event: S3ObjectEvent) -> IngestOutcome:
        event_name, bucket, key = event.event_name, event.bucket, event.key
        if bucket != self.settings.images_bucket:
            logger.warning("event for another bucket ignored", extra={"bucket": bucket, "key": key})
            return IngestOutcome(key, None, IGNORED, "other_bucket")
        parsed = parse_key(key, self.settings.allowed_labels)
        if parsed is None:
            return IngestOutcome(key, None, IGNORED, "folder" if key.endswith("/") else "outside_images")
        label = parsed.label or parsed.folder
        if event.created:
            return self.created(event, label, parsed.label is not None)
        if event.removed:
            return self.removed(event, label, parsed.label is not None)
        logger.info("event type ignored", extra={"event_name": event_name, "key": key})
        return IngestOutcome(key, label, IGNORED, "event_type")

    def _replay_or_stale(
        self, rec: Mapping[str, Any] | None, sequencer: str, etag: str | None, version_id: str | None
    ) -> bool:
        if rec is None:
            return False
        old_seq = str(rec.get("sequencer") or "")
        if sequencer and old_seq:
            return not sequencer_newer(sequencer, old_seq)
        if sequencer:
            return False
        # No sequencer: the same object version/etag already catalogued (and not deleted) is a replay.
        return (
            rec.get("status") != ImageStatus.DELETED
            and etag is not None
            and rec.get("etag") == etag
            and (version_id is None or rec.get("version_id") == version_id)
        )

    def created(self, event: S3ObjectEvent, label: str, known_label: bool) -> IngestOutcome:
        """An object version exists: validate and catalogue it (``label`` from its key)."""
        bucket, key, sequencer, version_id = event.bucket, event.key, event.sequencer, event.version_id
        etag, size = event.etag, event.size
        rec = self.catalogue.get_image(key)
        if self._replay_or_stale(rec, sequencer, etag, version_id):
            assert rec is not None
            status = str(rec["status"])
            newly = self.catalogue.resume(rec)  # other copies a crashed first delivery left unreconciled
            if newly or status == ImageStatus.ACCEPTED:
                self._threshold()  # finishes a publication a crashed first delivery may have left undone
            return IngestOutcome(key, label, status, rec.get("reason_code"), changed=False)
        base: dict[str, Any] = {
            "key": key,
            "bucket": bucket,
            "label": label,
            "sequencer": sequencer,
            "version_id": version_id,
            "etag": etag,
            "size": size,
        }
        try:
            if not known_label:
                label_for_key(key, self.settings.allowed_labels)  # raises Rejection("unknown_label", ...)
            check_object_size(size, self.settings.max_image_bytes)
            try:
                data, version_id, read_etag = self._read(bucket, key, version_id)
            except _Gone:
                logger.info("object gone before it was read; its delete event follows", extra={"key": key})
                return IngestOutcome(key, label, IGNORED, "gone")
            base.update(version_id=version_id, etag=read_etag or etag, size=len(data))
            base["sha256"] = hashlib.sha256(data).hexdigest()
            info = check_image(data, self.settings)
            copy = self._store_copy(bucket, data, base["sha256"], info.format)
        except Rejection as rejection:
            self._tag_rejected(bucket, key, base["version_id"], rejection.code)
            update = ImageUpdate(
                kind="rejected", reason_code=rejection.code, reason=rejection.message, **base
            )
        else:
            update = ImageUpdate(
                kind="valid",
                format=info.format,
                mode=info.mode,
                width=info.width,
                height=info.height,
                object_key=copy.key,
                object_etag=copy.etag,
                phash=info.phash,
                **base,
            )
        result = self.catalogue.apply(update)
        if result.new_content and update.kind == "valid" and not copy.written:
            # The copy this ingest saw was released (its last key deleted) before this record made the
            # bytes catalogued again: store it anew so it does not expire.
            self._store_copy(bucket, data, base["sha256"], str(update.format), trust_catalogue=False)
        self._release(bucket, result.released)
        logger.info(
            "image catalogued",
            extra={
                "key": key,
                "label": label,
                "status": result.status,
                "reason_code": update.reason_code,
                "changed": result.changed,
            },
        )
        if result.newly_accepted or result.status == ImageStatus.ACCEPTED:
            self._threshold()
        return IngestOutcome(
            key,
            label,
            result.status,
            update.reason_code
            if result.status == ImageStatus.REJECTED
            else _reason_of(self.catalogue, key, result.status),
            changed=result.changed,
        )

    def removed(self, event: S3ObjectEvent, label: str, known_label: bool) -> IngestOutcome:
        """An object version was removed: mark the record deleted, or catalogue the version still there."""
        bucket, key, sequencer, version_id = event.bucket, event.key, event.sequencer, event.version_id
        permanent = event.event_name == "ObjectRemoved:Delete"
        rec = self.catalogue.get_image(key)
        if rec is not None and sequencer and rec.get("sequencer"):
            if not sequencer_newer(sequencer, str(rec["sequencer"])):
                if self.catalogue.resume(rec):
                    self._threshold()
                return IngestOutcome(key, label, str(rec["status"]), "stale", changed=False)
        if permanent and version_id and rec is not None and rec.get("version_id") not in (None, version_id):
            # An older, non-catalogued version was removed: the catalogued one is untouched.
            return IngestOutcome(key, label, str(rec["status"]), "other_version", changed=False)
        head = self._head(bucket, key)
        if head is not None:
            # The key still (or again) has a current version: catalogue that one instead.
            current = S3ObjectEvent(
                "ObjectCreated:Head",
                bucket,
                key,
                sequencer=sequencer,
                version_id=head.get("VersionId") or None,
                etag=str(head.get("ETag", "")).strip('"') or None,
                size=int(head.get("ContentLength") or 0),
            )
            return self.created(current, label, known_label)
        result = self.catalogue.apply(
            ImageUpdate(
                key=key,
                bucket=bucket,
                kind="deleted",
                label=label,
                sequencer=sequencer,
                version_id=version_id if rec is None else None,
            )
        )
        logger.info("image deleted", extra={"key": key, "label": label, "changed": result.changed})
        self._release(bucket, result.released)
        if result.newly_accepted:
            self._threshold()
        return IngestOutcome(key, label, result.status, None, changed=result.changed)

    def _threshold(self) -> None:
        after_accept(self.settings, catalogue=self.catalogue, events=self.events)


def _reason_of(catalogue: Catalogue, key: str, status: str) -> str | None:
    if status == ImageStatus.ACCEPTED:
        return None
    rec = catalogue.get_image(key)
    return str(rec["reason_code"]) if rec and rec.get("reason_code") else None


def process_s3_event(
    event: S3ObjectEvent,
    settings: IngestSettings,
    *,
    s3: Any = None,
    ddb: Any = None,
    events: Any = None,
) -> IngestOutcome:
    """Handle one S3 object event (ObjectCreated:* / ObjectRemoved:*)."""
    return _Ingestor(settings, s3=s3, ddb=ddb, events=events).process(event)


def process_s3_record(
    record: Mapping[str, Any],
    settings: IngestSettings,
    *,
    s3: Any = None,
    ddb: Any = None,
    events: Any = None,
) -> IngestOutcome:
    """:func:`process_s3_event` for a caller holding a raw notification record (tests, benchmarks)."""
    return process_s3_event(S3ObjectEvent.from_record(record), settings, s3=s3, ddb=ddb, events=events)


def process_s3_events(
    batch: Sequence[S3ObjectEvent],
    settings: IngestSettings,
    *,
    s3: Any = None,
    ddb: Any = None,
    events: Any = None,
) -> list[IngestOutcome]:
    """The records of one SQS message (parsed by :func:`trashsorter.events.parse_s3_notification`).

    A TransientError from any record escapes, so the whole message is retried; the records that were
    already handled are no-ops on the retry (idempotent).
    """
    ingestor = _Ingestor(settings, s3=s3, ddb=ddb, events=events)
    return [ingestor.process(event) for event in batch]


def rebuild_catalogue(
    settings: IngestSettings, *, s3: Any = None, ddb: Any = None, events: Any = None
) -> dict[str, int]:
    """Re-sync the catalogue with the bucket (CLI ``reindex``): every object under images/ is processed as
    a create (idempotent: unchanged objects are not re-read), and records of objects that no longer exist
    are marked deleted. Returns counts of outcomes."""
    ingestor = _Ingestor(settings, s3=s3, ddb=ddb, events=events)
    summary: Counter[str] = Counter()
    seen: set[str] = set()
    bucket = settings.images_bucket

    def process_listed() -> None:
        pages = ingestor.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=IMAGES_PREFIX)
        for page in pages:
            for obj in page.get("Contents", []):
                seen.add(obj["Key"])
                listed = S3ObjectEvent(
                    "ObjectCreated:Put",
                    bucket,
                    obj["Key"],
                    etag=str(obj.get("ETag", "")).strip('"') or None,
                    size=int(obj.get("Size", 0) or 0),
                )
                outcome = ingestor.process(listed)
                summary["listed"] += 1
                summary[outcome.status] += 1
                summary["changed" if outcome.changed else "unchanged"] += 1

    aws.call(process_listed, what=f"list s3://{bucket}/{IMAGES_PREFIX}")
    for rec in list(ingestor.catalogue.iter_images()):
        if rec.get("status") == ImageStatus.DELETED or rec["key"] in seen:
            continue
        gone = S3ObjectEvent("ObjectRemoved:Delete", bucket, str(rec["key"]))
        if ingestor.process(gone).status == ImageStatus.DELETED:
            summary["marked_deleted"] += 1
    return dict(summary)
