"""Dataset snapshots: the frozen, reproducible input of one training run.

A snapshot is built from the catalogue's *accepted* image records (never ``conflict``, ``duplicate``,
``rejected`` or ``deleted``):

* **Split by content hash.** ``int(sha256[:8], 16) / 2**32 < validation_fraction`` puts an image in
  ``validation``, otherwise ``train``. The side depends only on the bytes, so an image never changes side
  when other images are added or removed, and identical bytes can never be on both sides.
* **Near-twins stay together.** Photos that look the same (:mod:`trashsorter.near_twins`, by the ``phash``
  the ingest step recorded) form one unit that takes the side of its smallest hash, so a near-copy in
  validation never measures a photo the model trained on; near-twins under two labels are held out of the
  snapshot, like exact conflicts, until a person deletes the wrong one.
* **Every label gets both sides.** A label with at least two images but no validation image moves its
  image with the *smallest* hash score to validation; a label whose images all fell into validation moves
  its image with the *largest* score to train. This is deterministic (hash order) but, unlike the hash
  rule, can change when a small label grows: once a label has an image on each side by the hash rule
  alone, no adjustment applies and nothing moves any more.
* **Frozen bytes.** Every image is trained from a content-addressed copy at
  ``datasets/objects/<sha256>.<jpg|png>`` (:func:`object_key`; ``<sha256>`` = the SHA-256 of exactly the
  bytes stored there), so an overwrite or delete of the upload after the snapshot does not change what
  trains. :mod:`trashsorter.dataset_store` stores the objects and the files below, and keeps the objects
  of registered models (retention tags).
* **Formats.** The SageMaker image-classification algorithm decodes only JPEG and PNG, so an accepted
  image in another format (WebP ...) is stored as a JPEG conversion, content-addressed by the JPEG's own
  hash (its ``s3_key`` is known once :func:`trashsorter.dataset_store.write_dataset` has converted it).
  ``s3_key`` always names the object the algorithm reads; ``sha256`` is always the upload's (catalogued)
  hash.
* **Dataset id** = the first 16 hex digits of the SHA-256 of the canonical manifest (labels, then one
  JSON line per image: key, sha256, label, class_index, split). The same data gives the same id.

Files under ``datasets/<id>/``: ``manifest.jsonl`` (JSON lines sorted by key: key, sha256, label,
class_index, split, s3_key), ``labels.txt`` (class index order = allowed labels order), ``train.lst`` /
``validation.lst`` (``index<TAB>class_index<TAB>path``, path relative to the manifest prefix), and
``train.manifest`` / ``validation.manifest`` (SageMaker ``ManifestFile`` channels: a JSON array whose first
element is ``{"prefix": "s3://<bucket>/"}`` followed by one key per line). The ``DATASET#<id>/DATASET``
record holds counts per label and split, the prefix, ``accepted_seq`` at snapshot time and ``created_at``.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trashsorter import aws
from trashsorter.clock import now_iso
from trashsorter.ddb import deserialize, serialize
from trashsorter.errors import NotFoundError, TrainingRuleNotMet
from trashsorter.near_twins import Photo, near_conflicts, twin_groups
from trashsorter.schema import ImageStatus, dataset_key, dataset_prefix
from trashsorter.validation import decode_bounded
from trashsorter_edge.contract import object_key
from trashsorter_edge.decoding import to_rgb8, upright

TRAIN = "train"
VALIDATION = "validation"
SPLITS = (TRAIN, VALIDATION)
# What the built-in image-classification algorithm decodes directly (MPO = multi-picture JPEG).
DIRECT_FORMATS = frozenset({"JPEG", "MPO", "PNG"})


@dataclass(frozen=True)
class SnapshotImage:
    """One accepted catalogue image as the snapshot needs it."""

    key: str
    sha256: str
    label: str
    format: str = "JPEG"
    version_id: str = ""
    object_key: str = ""  # its copy stored at ingest ("" = none recorded: the snapshot stores one)
    object_etag: str = ""  # that copy's ETag when the ingest step stored it
    phash: str = ""  # difference hash (trashsorter.near_twins), "" when not computed


@dataclass(frozen=True)
class ManifestEntry:
    key: str
    sha256: str
    label: str
    class_index: int
    split: str
    s3_key: str

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "sha256": self.sha256,
            "label": self.label,
            "class_index": self.class_index,
            "split": self.split,
            "s3_key": self.s3_key,
        }


@dataclass(frozen=True)
class DatasetPlan:
    """A computed (not yet written) snapshot: pure data, same input -> same plan."""

    dataset_id: str
    bucket: str
    labels: tuple[str, ...]
    validation_fraction: float
    entries: tuple[ManifestEntry, ...]
    sources: Mapping[str, SnapshotImage] = field(default_factory=dict)  # key -> image (for copies)

    @property
    def prefix(self) -> str:
        return dataset_prefix(self.dataset_id)

    def uri(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{name}"

    def split_entries(self, split: str) -> list[ManifestEntry]:
        return [entry for entry in self.entries if entry.split == split]

    @property
    def num_train(self) -> int:
        return len(self.split_entries(TRAIN))

    @property
    def num_validation(self) -> int:
        return len(self.split_entries(VALIDATION))

    def counts(self) -> dict[str, dict[str, int]]:
        result = {label: {TRAIN: 0, VALIDATION: 0} for label in self.labels}
        for entry in self.entries:
            result[entry.label][entry.split] += 1
        return result

    def conversions(self) -> list[ManifestEntry]:
        """Entries whose stored object is a JPEG conversion of the upload (not the upload's own bytes)."""
        return [entry for entry in self.entries if needs_conversion(self.sources[entry.key])]


# ---------------------------------------------------------------- pure functions


def split_score(sha256: str) -> float:
    """The image's position in [0, 1) from its content hash."""
    return int(sha256[:8], 16) / 2**32


def split_for(sha256: str, validation_fraction: float) -> str:
    """``validation`` or ``train`` by content hash alone (stable forever for the same fraction)."""
    return VALIDATION if split_score(sha256) < validation_fraction else TRAIN


def assign_splits(images: Iterable[SnapshotImage], validation_fraction: float) -> dict[str, str]:
    """key -> split: the hash rule, then the per-label guarantee described in the module docstring.

    Near-twins (:mod:`trashsorter.near_twins`, by ``phash``) move together: a group of twins under one label
    is one unit whose side is the hash rule's for its smallest hash, and the per-label guarantee moves whole
    units, so a group never straddles the split.
    """
    images = list(images)
    unit_of = {img.key: img.key for img in images}
    for group in twin_groups(twin_photos(images)):
        for photo in group:
            unit_of[photo.key] = group[0].key
    by_label: dict[str, dict[str, list[SnapshotImage]]] = {}
    for image in images:
        by_label.setdefault(image.label, {}).setdefault(unit_of[image.key], []).append(image)
    result: dict[str, str] = {}
    for units in by_label.values():
        ordered = sorted(
            (min((split_score(img.sha256), img.sha256, img.key) for img in members), members)
            for members in units.values()
        )
        sides = [split_for(first[1], validation_fraction) for first, _ in ordered]
        if len(ordered) >= 2:
            if VALIDATION not in sides:
                sides[0] = VALIDATION
            elif TRAIN not in sides:
                sides[-1] = TRAIN
        for side, (_, members) in zip(sides, ordered, strict=True):
            result.update({img.key: side for img in members})
    return result


def twin_photos(images: Iterable[SnapshotImage]) -> list[Photo]:
    return [Photo(img.key, img.label, img.phash) for img in images if img.phash]


def near_conflict_reasons(images: Iterable[SnapshotImage]) -> dict[str, str]:
    """key -> reason for images whose near-twins carry another label (held out of the snapshot)."""
    return near_conflicts(twin_groups(twin_photos(images)))


def converts(image_format: str) -> bool:
    """Whether an accepted image of this format is stored as a JPEG conversion (not its own bytes)."""
    return image_format.upper() not in DIRECT_FORMATS


def needs_conversion(image: SnapshotImage) -> bool:
    return converts(image.format)


def stored_suffix(image_format: str) -> str:
    """The suffix of an image's own bytes in the store (JPEG and MPO are read as JPEG)."""
    return "png" if image_format.upper() == "PNG" else "jpg"


def content_object(data: bytes, sha256: str, image_format: str) -> tuple[str, bytes]:
    """The content-addressed key and bytes an accepted upload is stored as: its own bytes (``sha256`` is
    their hash), or for a format the algorithm cannot decode, the JPEG conversion under the JPEG's hash."""
    if converts(image_format):
        body = convert_to_jpeg(data)
        return object_key(hashlib.sha256(body).hexdigest(), "jpg"), body
    return object_key(sha256, stored_suffix(image_format)), data


def _suffix(image: SnapshotImage) -> str:
    return stored_suffix(image.format)


def canonical_manifest(labels: Sequence[str], entries: Iterable[ManifestEntry]) -> bytes:
    """The bytes the dataset id is computed from (s3_key left out: it depends on the id)."""
    lines = [json.dumps({"labels": list(labels)}, separators=(",", ":"))]
    for entry in sorted(entries, key=lambda e: e.key):
        payload = entry.as_json()
        payload.pop("s3_key")
        lines.append(json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode("utf-8")


def dedupe(images: Iterable[SnapshotImage]) -> list[SnapshotImage]:
    """Defence in depth for the catalogue's hash owners: one image per content hash.

    Same bytes under one label keep the smallest key; same bytes under two labels are dropped entirely
    (that is a conflict and never trains).
    """
    by_sha: dict[str, list[SnapshotImage]] = {}
    for image in images:
        by_sha.setdefault(image.sha256, []).append(image)
    kept: list[SnapshotImage] = []
    for group in by_sha.values():
        if len({img.label for img in group}) > 1:
            continue
        kept.append(min(group, key=lambda img: img.key))
    return kept


def plan_dataset(
    images: Iterable[SnapshotImage], *, labels: Sequence[str], validation_fraction: float, bucket: str
) -> DatasetPlan:
    """Compute the snapshot (splits, class indices, object keys, id) without touching AWS.

    ``s3_key`` is the copy the ingest step stored (``object_key``) when it recorded one; otherwise a
    conversion's is empty here (the hash of the converted bytes, set by
    :func:`trashsorter.dataset_store.write_dataset`).
    """
    class_index = {label: index for index, label in enumerate(labels)}
    usable = [img for img in dedupe(images) if img.label in class_index]
    held_out = near_conflict_reasons(usable)  # near-twins under two labels wait for a person
    usable = [img for img in usable if img.key not in held_out]
    splits = assign_splits(usable, validation_fraction)
    ordered = sorted(usable, key=lambda img: img.key)
    provisional = [
        ManifestEntry(img.key, img.sha256, img.label, class_index[img.label], splits[img.key], img.key)
        for img in ordered
    ]
    dataset_id = hashlib.sha256(canonical_manifest(labels, provisional)).hexdigest()[:16]
    entries = tuple(
        ManifestEntry(
            entry.key,
            entry.sha256,
            entry.label,
            entry.class_index,
            entry.split,
            img.object_key or ("" if needs_conversion(img) else object_key(img.sha256, _suffix(img))),
        )
        for entry, img in zip(provisional, ordered, strict=True)
    )
    return DatasetPlan(
        dataset_id=dataset_id,
        bucket=bucket,
        labels=tuple(labels),
        validation_fraction=validation_fraction,
        entries=entries,
        sources={img.key: img for img in ordered},
    )


def render_manifest_jsonl(plan: DatasetPlan) -> str:
    return "".join(
        json.dumps(entry.as_json(), sort_keys=True, ensure_ascii=False) + "\n"
        for entry in sorted(plan.entries, key=lambda e: e.key)
    )


def render_lst(plan: DatasetPlan, split: str) -> str:
    """The recipe's ``.lst``: ``index<TAB>class_index<TAB>path``; path relative to the manifest prefix."""
    return "".join(
        f"{index}\t{entry.class_index}\t{entry.s3_key}\n"
        for index, entry in enumerate(plan.split_entries(split))
    )


def manifest_prefix(bucket: str) -> str:
    return f"s3://{bucket}/"


def render_channel_manifest(plan: DatasetPlan, split: str) -> str:
    """SageMaker ``ManifestFile``: ``[{"prefix": "s3://bucket/"},`` then one JSON string per line, ``]``."""
    lines = [json.dumps({"prefix": manifest_prefix(plan.bucket)})]
    lines.extend(json.dumps(entry.s3_key, ensure_ascii=False) for entry in plan.split_entries(split))
    return "[" + ",\n".join(lines) + "]\n"


def convert_to_jpeg(data: bytes) -> bytes:
    """A JPEG the algorithm can decode: EXIF orientation applied, pixels as THE 8-bit RGB conversion makes
    them (:func:`trashsorter_edge.decoding.to_rgb8`: alpha flattened onto white, 16-bit scaled).

    The decode is bounded like the ingest step's (:func:`trashsorter.validation.decode_bounded`: structure
    and metadata limits, the memory estimate, a CPU deadline); an image the ingest step accepted always fits.
    """
    with decode_bounded(data) as opened:
        rgb = to_rgb8(upright(opened))
        out = io.BytesIO()
        rgb.save(out, format="JPEG", quality=95)
        return out.getvalue()


# ---------------------------------------------------------------- catalogue input


def _get(record: Any, name: str, default: Any = None) -> Any:
    if isinstance(record, Mapping):
        return record.get(name, default)
    return getattr(record, name, default)


SNAPSHOT_ATTRIBUTES = (
    "key",
    "sha256",
    "label",
    "format",
    "version_id",
    "status",
    "object_key",
    "object_etag",
    "phash",
)
"""The catalogue attributes :func:`snapshot_images` reads (the snapshot's query projects only these)."""


def snapshot_images(records: Iterable[Any]) -> list[SnapshotImage]:
    """Catalogue records (dicts or objects with the same attribute names) -> accepted SnapshotImages."""
    images: list[SnapshotImage] = []
    for record in records:
        status = str(_get(record, "status", ImageStatus.ACCEPTED))
        if status != ImageStatus.ACCEPTED:
            continue
        images.append(
            SnapshotImage(
                key=str(_get(record, "key")),
                sha256=str(_get(record, "sha256")),
                label=str(_get(record, "label")),
                format=str(_get(record, "format") or "JPEG"),
                version_id=str(_get(record, "version_id") or ""),
                object_key=str(_get(record, "object_key") or ""),
                object_etag=str(_get(record, "object_etag") or ""),
                phash=str(_get(record, "phash") or ""),
            )
        )
    return images


def plan_from_catalogue(
    catalogue: Any, *, labels: Sequence[str], validation_fraction: float, bucket: str
) -> DatasetPlan:
    """Plan the snapshot of the catalogue's accepted images (``catalogue.accepted_images()``)."""
    images = snapshot_images(catalogue.accepted_images(attributes=SNAPSHOT_ATTRIBUTES))
    return plan_dataset(images, labels=labels, validation_fraction=validation_fraction, bucket=bucket)


def check_trainable(plan: DatasetPlan) -> None:
    """The algorithm needs at least one training and one validation image."""
    if plan.num_train == 0 or plan.num_validation == 0:
        counts = plan.counts()
        raise TrainingRuleNotMet(
            f"dataset has {plan.num_train} training and {plan.num_validation} validation images; "
            f"both must be at least 1 (per label: {counts})",
            missing={label: max(0, 2 - sum(c.values())) for label, c in counts.items()},
        )


# ---------------------------------------------------------------- the DATASET record


def dataset_record(plan: DatasetPlan, *, accepted_seq: int, created_at: str | None = None) -> dict[str, Any]:
    counts = plan.counts()
    return {
        **dataset_key(plan.dataset_id),
        "dataset_id": plan.dataset_id,
        "bucket": plan.bucket,
        "prefix": plan.prefix,
        "manifest_uri": plan.uri("manifest.jsonl"),
        "labels": list(plan.labels),
        "validation_fraction": str(plan.validation_fraction),
        "counts": counts,
        "num_images": len(plan.entries),
        "num_train": plan.num_train,
        "num_validation": plan.num_validation,
        "num_converted": len(plan.conversions()),
        "accepted_seq": int(accepted_seq),
        "created_at": created_at or now_iso(),
    }


def save_dataset_record(
    plan: DatasetPlan, *, accepted_seq: int, table_name: str, ddb: Any = None
) -> dict[str, Any]:
    """Put ``DATASET#<id>/DATASET`` once; an existing record (same data) is kept and returned."""
    ddb = ddb or aws.client("dynamodb")
    item = dataset_record(plan, accepted_seq=accepted_seq)
    written = aws.conditional_write(
        lambda: ddb.put_item(
            TableName=table_name, Item=serialize(item), ConditionExpression="attribute_not_exists(pk)"
        ),
        what=f"record dataset {plan.dataset_id}",
    )
    return item if written else get_dataset(plan.dataset_id, table_name=table_name, ddb=ddb)


def get_dataset(dataset_id: str, *, table_name: str, ddb: Any = None) -> dict[str, Any]:
    """The ``DATASET#<id>/DATASET`` record (plain values) or NotFoundError."""
    ddb = ddb or aws.client("dynamodb")
    found = aws.call(
        lambda: ddb.get_item(
            TableName=table_name, Key=serialize(dataset_key(dataset_id)), ConsistentRead=True
        ),
        what=f"read dataset {dataset_id}",
    )
    if not found.get("Item"):
        raise NotFoundError(f"dataset {dataset_id} is not recorded")
    return deserialize(found["Item"])
