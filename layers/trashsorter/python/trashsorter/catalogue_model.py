"""What the catalogue stores and how it is read: the image update a step decides, the statuses derived
from hash owners, S3 sequencer order and :class:`CatalogueReader` (consistent reads and GSI queries).

The writes (one transaction per status change, counters moved in it) are in :mod:`trashsorter.catalogue`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from trashsorter import aws
from trashsorter.ddb import deserialize, serialize
from trashsorter.errors import TransientError
from trashsorter.schema import (
    GSI,
    STATE_KEY,
    ImageStatus,
    hash_key,
    image_gsi_label_prefix,
    image_gsi_status,
    image_key,
    label_counts_key,
    label_from_counts_key,
)

COUNT_FIELDS = tuple(str(s) for s in ImageStatus)


def sequencer_newer(new: str, old: str) -> bool:
    """S3 ``sequencer`` order for one key: hex strings compared after left-padding to equal length."""
    width = max(len(new), len(old))
    return new.upper().rjust(width, "0") > old.upper().rjust(width, "0")


@dataclass(frozen=True)
class ImageUpdate:
    """The new state of one object key, as decided by the ingest step."""

    key: str
    bucket: str
    kind: Literal["valid", "rejected", "deleted"]
    label: str  # configured label, or the folder as written for unknown labels ("" when none)
    sequencer: str = ""  # "" = not ordered (listing / emulator): no stale check
    version_id: str | None = None
    etag: str | None = None
    size: int | None = None
    sha256: str | None = None
    format: str | None = None
    mode: str | None = None
    width: int | None = None
    height: int | None = None
    reason_code: str | None = None
    reason: str | None = None
    object_key: str | None = None  # the content-addressed copy under datasets/objects/ (valid images)
    object_etag: str | None = None  # that copy's ETag when it was stored (a changed copy has another)
    phash: str | None = None  # 64-bit difference hash, 16 hex digits (trashsorter.near_twins)


@dataclass
class ApplyResult:
    key: str
    status: str  # the key's status after the call
    changed: bool
    stale: bool = False
    newly_accepted: int = 0
    deltas: dict[str, dict[str, int]] = field(default_factory=dict)
    new_content: bool = False  # this change created the HASH item of the update's bytes (first owner)
    # (sha256, stored object) of content no key owns any more: this change deleted its HASH item
    released: tuple[tuple[str, str], ...] = ()


def derive_statuses(owners: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Statuses of every key holding one set of bytes: a conflict when two labels hold them, else the first
    key of the label is accepted and the others are duplicates."""
    labels = [label for label, keys in owners.items() if keys]
    out: dict[str, str] = {}
    if len(labels) > 1:
        for label in labels:
            for key in owners[label]:
                out[key] = ImageStatus.CONFLICT
        return out
    for label in labels:
        for i, key in enumerate(owners[label]):
            out[key] = ImageStatus.ACCEPTED if i == 0 else ImageStatus.DUPLICATE
    return out


class CatalogueReader:
    """Consistent reads of image records, counters and the dataset state (low-level DynamoDB client)."""

    def __init__(self, table_name: str, *, ddb: Any = None, max_attempts: int = 12) -> None:
        self.table_name = table_name
        self.ddb = ddb or aws.client("dynamodb")
        self.max_attempts = max_attempts

    # ------------------------------------------------------------------ reads
    def _get(self, key: Mapping[str, str]) -> dict[str, Any] | None:
        response = aws.call(
            lambda: self.ddb.get_item(TableName=self.table_name, Key=serialize(key), ConsistentRead=True),
            what="read the catalogue",
        )
        item = response.get("Item")
        return deserialize(item) if item else None

    def _batch_get(self, keys: Sequence[Mapping[str, str]]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        pending = [serialize(k) for k in keys]
        attempts = 0
        while pending:
            chunk, pending = pending[:100], pending[100:]
            request: dict[str, Any] = {self.table_name: {"Keys": chunk, "ConsistentRead": True}}
            while request:
                response = aws.call(
                    lambda request=request: self.ddb.batch_get_item(RequestItems=request),
                    what="batch read the catalogue",
                )
                found.extend(deserialize(i) for i in response.get("Responses", {}).get(self.table_name, []))
                request = response.get("UnprocessedKeys") or {}
                if request:
                    attempts += 1
                    if attempts > self.max_attempts:
                        raise TransientError("catalogue batch read kept returning unprocessed keys")
                    time.sleep(min(1.0, 0.02 * 2**attempts))
        return found

    def get_image(self, key: str) -> dict[str, Any] | None:
        """The record of one object key (consistent read), or None."""
        return self._get(image_key(key))

    def content(self, sha256: str) -> dict[str, Any] | None:
        """The ``HASH#<sha256>/OWNERS`` item (owners, and ``object_key`` once the bytes are stored)."""
        return self._get(hash_key(sha256))

    def label_counts(self, labels: Sequence[str]) -> dict[str, dict[str, int]]:
        """Counters per label (consistent); a label never written reads as zeros."""
        out = {label: dict.fromkeys(COUNT_FIELDS, 0) for label in labels}
        if not labels:
            return out
        for item in self._batch_get([label_counts_key(label) for label in dict.fromkeys(labels)]):
            label = label_from_counts_key(item)
            if label in out:
                out[label].update({f: int(item.get(f, 0)) for f in COUNT_FIELDS})
        return out

    def state(self) -> dict[str, Any]:
        """``STATE/DATASET``: accepted_seq, baseline_seq, fired_baseline (ints, default 0), plus ``fired``
        (a threshold event was claimed for ``fired_baseline``), ``published`` (it was sent), ``fired_at``
        (when it was claimed) and ``accepted_at`` (when a photo was last accepted; "" before the first)."""
        item = self._get(STATE_KEY) or {}
        return {
            "accepted_seq": int(item.get("accepted_seq", 0)),
            "baseline_seq": int(item.get("baseline_seq", 0)),
            "fired_baseline": int(item.get("fired_baseline", 0)),
            "fired": "fired_baseline" in item,
            "published": bool(item.get("published", False)),
            "fired_at": str(item.get("fired_at", "")),
            "accepted_at": str(item.get("accepted_at", "")),
            "settle_due": str(item.get("settle_due", "")),  # the armed settle timer (trashsorter.threshold)
        }

    def iter_images(
        self,
        status: str | None = None,
        label: str | None = None,
        *,
        attributes: Sequence[str] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Image records by status (gsi1 ``STATUS#<status>``), optionally of one label; paginated.

        ``attributes``: return only these attributes of each record (a ``ProjectionExpression``) —
        the snapshot reads 6 of ~20, which shrinks every response and its parsing by ~3x (the read
        capacity is the same: DynamoDB charges for the whole item).
        """
        statuses = [status] if status is not None else list(COUNT_FIELDS)
        paginator = self.ddb.get_paginator("query")
        for st in statuses:
            kwargs: dict[str, Any] = {
                "TableName": self.table_name,
                "IndexName": GSI,
                "KeyConditionExpression": "gsi1pk = :pk",
                "ExpressionAttributeValues": {":pk": {"S": image_gsi_status(st)}},
            }
            if label is not None:
                kwargs["KeyConditionExpression"] += " AND begins_with(gsi1sk, :label)"
                kwargs["ExpressionAttributeValues"][":label"] = {"S": image_gsi_label_prefix(label)}
            if attributes:
                names = {f"#p{i}": name for i, name in enumerate(attributes)}
                kwargs["ProjectionExpression"] = ", ".join(names)
                kwargs["ExpressionAttributeNames"] = names
            pages = iter(paginator.paginate(**kwargs))
            # One call per page: a generator cannot run inside aws.call, each page request can.
            while (
                page := aws.call(lambda pages=pages: next(pages, None), what="query the catalogue")
            ) is not None:
                for item in page.get("Items", []):
                    yield deserialize(item)

    def accepted_images(self, *, attributes: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
        """Every record usable for training (status accepted: duplicates and conflicts excluded)."""
        return self.iter_images(ImageStatus.ACCEPTED, attributes=attributes)
