"""How one image update changes the catalogue, pure: the hash owners before and after, the statuses they
derive, the key's new record and the owners items' writes. :meth:`trashsorter.catalogue.Catalogue.apply`
reads what a plan needs and commits it in one transaction.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trashsorter.catalogue_model import ImageUpdate, derive_statuses
from trashsorter.ddb import serialize
from trashsorter.schema import ImageStatus, hash_key, image_gsi, image_key

GROUP_STATUSES = (ImageStatus.ACCEPTED, ImageStatus.DUPLICATE, ImageStatus.CONFLICT)
Owners = dict[str, list[str]]  # label -> the keys holding the same bytes under it
Group = tuple[str, str]  # (sha256, label)
Deltas = dict[str, dict[str, int]]  # label -> status -> change of its counter
RECORD_FIELDS = (
    "bucket",
    "key",
    "version_id",
    "etag",
    "sequencer",
    "label",
    "sha256",
    "format",
    "mode",
    "width",
    "height",
    "size",
    "object_key",
    "object_etag",
    "phash",
)


def reason_for(status: str, key: str, label: str, owners: Mapping[str, Sequence[str]]) -> tuple[str, str]:
    if status == ImageStatus.DUPLICATE:
        return "duplicate", f"same bytes as {owners[label][0]} (counted once)"
    others = [f"{other} ({keys[0]})" for other, keys in sorted(owners.items()) if keys and other != label]
    return (
        "conflict",
        f"same bytes are also labelled {', '.join(others)}; not used for training until a person deletes "
        "the wrong copy",
    )


def stored_object(old: Mapping[str, Any] | None, update: ImageUpdate | None) -> dict[str, Any]:
    """The content's stored copy on its HASH item: the update's when it names one, else the item's own."""
    source: Mapping[str, Any] = old or {}
    if update is not None and update.object_key:
        source = {"object_key": update.object_key, "object_etag": update.object_etag}
    return {name: source[name] for name in ("object_key", "object_etag") if source.get(name)}


@dataclass(frozen=True)
class OwnerChange:
    """The owners maps of the hashes an update touches, before and after it, and what they derive."""

    shas: list[str]
    before: dict[str, Owners]
    after: dict[str, Owners]
    derived: dict[str, str]  # key -> the status its owners map gives it
    owners_of: dict[str, Owners]  # key -> the owners map that decides it
    others: list[str]  # every other key of the touched groups (their status may follow)


def groups(rec: Mapping[str, Any] | None, update: ImageUpdate) -> tuple[Group | None, Group | None]:
    """The (sha256, label) group the key leaves and the one it joins (None: none)."""
    old_status = str(rec["status"]) if rec else None
    old = (str(rec["sha256"]), str(rec["label"])) if rec and old_status in GROUP_STATUSES else None
    new = (str(update.sha256), update.label) if update.kind == "valid" else None
    return old, new


def owner_change(
    key: str,
    old_group: Group | None,
    new_group: Group | None,
    owners: Mapping[str, Mapping[str, Sequence[str]]],
) -> OwnerChange:
    """``key`` moving from ``old_group`` to ``new_group`` (``owners``: sha -> its stored owners map)."""
    shas = list(dict.fromkeys(g[0] for g in (old_group, new_group) if g))
    before = {sha: {lbl: list(keys) for lbl, keys in owners.get(sha, {}).items()} for sha in shas}
    after = {sha: {lbl: list(keys) for lbl, keys in group.items()} for sha, group in before.items()}
    if old_group != new_group and old_group:
        sha, lbl = old_group
        if key in after[sha].get(lbl, []):
            after[sha][lbl].remove(key)
        after[sha] = {k: v for k, v in after[sha].items() if v}
    if new_group:
        sha, lbl = new_group
        if key not in after[sha].setdefault(lbl, []):
            after[sha][lbl].append(key)
    derived: dict[str, str] = {}
    owners_of: dict[str, Owners] = {}
    for group in after.values():
        for k, status in derive_statuses(group).items():
            derived[k], owners_of[k] = status, group
    others = sorted(
        {k for group in (*before.values(), *after.values()) for keys in group.values() for k in keys} - {key}
    )
    return OwnerChange(shas, before, after, derived, owners_of, others)


def key_status(update: ImageUpdate, change: OwnerChange) -> ImageStatus:
    if update.kind == "valid":
        return ImageStatus(change.derived[update.key])
    return ImageStatus.REJECTED if update.kind == "rejected" else ImageStatus.DELETED


def record_item(
    update: ImageUpdate, rec: Mapping[str, Any] | None, status: ImageStatus, change: OwnerChange, now: str
) -> dict[str, Any]:
    """The key's new record (its ``rev`` one past the stored one)."""
    key = update.key
    item: dict[str, Any] = {}
    if update.kind == "deleted" and rec:
        item.update({f: rec.get(f) for f in RECORD_FIELDS})
    item.update({f: getattr(update, f) for f in RECORD_FIELDS if getattr(update, f, None) is not None})
    if not update.sequencer and rec:
        item["sequencer"] = rec.get("sequencer") or ""
    item.update(
        {
            "key": key,
            "bucket": update.bucket,
            "label": update.label,
            "status": str(status),
            "created_at": rec.get("created_at", now) if rec else now,
            "updated_at": now,
            "rev": int(rec.get("rev", 0)) + 1 if rec else 1,
            **image_key(key),
            **image_gsi(str(status), update.label, key),
        }
    )
    if status == ImageStatus.REJECTED:
        item["reason_code"], item["reason"] = update.reason_code, update.reason
    elif status in (ImageStatus.DUPLICATE, ImageStatus.CONFLICT):
        item["reason_code"], item["reason"] = reason_for(status, key, update.label, change.owners_of[key])
    return item


def record_put(table: str, item: Mapping[str, Any], rec: Mapping[str, Any] | None) -> dict[str, Any]:
    """The key's record put, conditioned on the stored ``rev`` (or on no record)."""
    put: dict[str, Any] = {"TableName": table, "Item": serialize(item)}
    if rec:
        put["ConditionExpression"] = "#rev = :rev"
        put["ExpressionAttributeNames"] = {"#rev": "rev"}
        put["ExpressionAttributeValues"] = {":rev": {"N": str(int(rec.get("rev", 0)))}}
    else:
        put["ConditionExpression"] = "attribute_not_exists(pk)"
    return {"Put": put}


def key_deltas(rec: Mapping[str, Any] | None, update: ImageUpdate, status: ImageStatus) -> tuple[Deltas, int]:
    """The key's own counter deltas and whether it newly became accepted (0 / 1)."""
    old_status = str(rec["status"]) if rec else None
    deltas: Deltas = defaultdict(lambda: defaultdict(int))
    if rec and old_status and rec.get("label"):
        deltas[str(rec["label"])][old_status] -= 1
    if update.label:
        deltas[update.label][str(status)] += 1
    return deltas, int(status == ImageStatus.ACCEPTED and old_status != ImageStatus.ACCEPTED)


def owners_write(
    table: str, sha: str, old: Mapping[str, Any] | None, after: Owners, stored: Mapping[str, Any], now: str
) -> dict[str, Any]:
    """The ``HASH#`` item's put (or delete, when no owner is left), conditioned on its ``version``."""
    condition: dict[str, Any] = (
        {
            "ConditionExpression": "#v = :v",
            "ExpressionAttributeNames": {"#v": "version"},
            "ExpressionAttributeValues": {":v": {"N": str(int(old["version"]))}},
        }
        if old
        else {"ConditionExpression": "attribute_not_exists(pk)"}
    )
    if not after:
        return {"Delete": {"TableName": table, "Key": serialize(hash_key(sha)), **condition}}
    body = {
        **hash_key(sha),
        "sha256": sha,
        "owners": after,
        "updated_at": now,
        "version": int(old["version"]) + 1 if old else 1,
        **stored,
    }
    return {"Put": {"TableName": table, "Item": serialize(body), **condition}}
