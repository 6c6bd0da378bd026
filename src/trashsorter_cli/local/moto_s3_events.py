"""S3 event notifications in moto as S3 sends them (installed by :func:`moto_patches.install`).

moto 5.2 sends ``ObjectRemoved:Delete`` only when an unversioned key, or the *last* version of a key, is
removed; a plain ``DeleteObject`` on a versioned bucket (what ``aws s3 rm`` does: it creates a delete marker)
and the deletion of one version among several send nothing. Its records also lack ``versionId`` and
``sequencer``, and removal records carry a size and an ETag that S3 does not send. S3 itself
(https://docs.aws.amazon.com/AmazonS3/latest/userguide/notification-content-structure.html) sends:

* ``ObjectRemoved:DeleteMarkerCreated`` when a delete marker is created (versioned bucket, no version id);
* ``ObjectRemoved:Delete`` when an object or one object version is deleted permanently;
* ``versionId`` on every record of a versioned bucket and a ``sequencer`` on every record (hex, increasing per
  key; here increasing per process, from the clock, so it also increases across a restart);
* ``size`` and ``eTag`` only on ``ObjectCreated`` records.

``DeleteObjects`` goes through ``delete_object`` per key, so batch deletes are covered as well.
"""

from __future__ import annotations

import functools
import threading
import time
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote_plus

_LOCAL = threading.local()
_SEQ_LOCK = threading.Lock()
_last_sequencer = 0


def next_sequencer() -> str:
    """A hex sequencer larger than every earlier one in this process (and than any from an earlier run)."""
    global _last_sequencer
    with _SEQ_LOCK:
        _last_sequencer = max(time.time_ns(), _last_sequencer + 1)
        return f"{_last_sequencer:016X}"


def s3_event(event_name: str, bucket: Any, key: Any, notification_id: str) -> dict[str, Any]:
    """One notification record as S3 writes it (replaces moto's ``notifications._get_s3_event``)."""
    from moto.core.utils import iso_8601_datetime_with_milliseconds

    name = event_name[3:] if event_name.startswith("s3:") else event_name
    obj: dict[str, Any] = {"key": quote_plus(key.name)}
    if name.startswith("ObjectCreated:"):
        obj["size"] = key.size
        obj["eTag"] = str(key.etag).replace('"', "")
    version_id = getattr(key, "version_id", None)
    if getattr(bucket, "is_versioned", False) and version_id not in (None, "null"):
        obj["versionId"] = str(version_id)
    obj["sequencer"] = next_sequencer()
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": bucket.region_name,
                "eventTime": iso_8601_datetime_with_milliseconds(),
                "eventName": name,
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": notification_id,
                    "bucket": {"name": bucket.name, "arn": bucket.arn},
                    "object": obj,
                },
            }
        ]
    }


def install() -> None:
    """Patch moto's S3 notifications once per process (callers check the moto version first)."""
    from moto.s3 import models, notifications

    if getattr(notifications, "_trashsorter_patched", False):
        return
    original_send = notifications.send_event
    removed = notifications.S3NotificationEvent.OBJECT_REMOVED_DELETE_EVENT
    marker = notifications.S3NotificationEvent.OBJECT_REMOVED_DELETE_MARKER_CREATED_EVENT

    @functools.wraps(original_send)
    def send_event(account_id: str, event_name: Any, bucket: Any, key: Any) -> None:
        name = str(getattr(event_name, "value", event_name))  # str() of moto's str-Enum is its member name
        if getattr(_LOCAL, "deleting", False) and name.startswith("s3:ObjectRemoved:"):
            return  # the patched delete_object sends the removal S3 would send
        original_send(account_id, event_name, bucket, key)

    original_delete = models.S3Backend.delete_object

    @functools.wraps(original_delete)
    def delete_object(
        self: Any, bucket_name: str, key_name: str, version_id: str | None = None, bypass: bool = False
    ) -> tuple[bool, dict[str, Any]]:
        bucket = self.get_bucket(bucket_name)
        versioned = bool(getattr(bucket, "is_versioned", False))
        existed = key_name in getattr(bucket, "keys", {})
        _LOCAL.deleting = True
        try:
            ok, meta = original_delete(self, bucket_name, key_name, version_id=version_id, bypass=bypass)
        finally:
            _LOCAL.deleting = False
        if not ok:
            return ok, meta
        if versioned and version_id is None:
            event, vid = marker, meta.get("version-id")
        elif versioned:
            event, vid = removed, version_id
        elif existed:
            event, vid = removed, None
        else:
            return ok, meta
        original_send(self.account_id, event, bucket, SimpleNamespace(name=key_name, version_id=vid))
        return ok, meta

    notifications._get_s3_event = s3_event
    notifications.send_event = send_event
    models.S3Backend.delete_object = delete_object  # type: ignore[method-assign]
    notifications._trashsorter_patched = True  # type: ignore[attr-defined]
