"""``upload``, ``images`` and ``reindex``: the photos and their catalogue."""

from __future__ import annotations

import hashlib
import json
import mimetypes
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trashsorter import ingest, near_twins
from trashsorter.catalogue import Catalogue
from trashsorter.schema import ImageStatus
from trashsorter.settings import IngestSettings
from trashsorter.validation import HEIC_HINT, sniff_format
from trashsorter_cli.targets import Target
from trashsorter_cli.ui import UI, CliError, UsageError
from trashsorter_edge.contract import IMAGES_PREFIX


@dataclass
class UploadPlan:
    files: list[tuple[Path, str]] = field(default_factory=list)  # local path -> object key
    unknown_labels: list[str] = field(default_factory=list)  # uploaded anyway (--force)
    held_back: list[tuple[Path, str]] = field(default_factory=list)  # (path, label) not uploaded
    refused: list[tuple[Path, str]] = field(default_factory=list)  # (path, format): HEIC/HEIF, not uploaded


def load_mapping(path: Path) -> dict[str, list[str]]:
    """``{"Label": ["folder", ...]}`` (keys starting with ``_`` are comments)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot read the label mapping {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object label -> [folders]")
    mapping: dict[str, list[str]] = {}
    for label, folders in data.items():
        if str(label).startswith("_"):
            continue
        if not isinstance(folders, list) or not all(isinstance(f, str) for f in folders):
            raise UsageError(f"{path}: {label} must map to a list of folder names")
        mapping[str(label)] = list(folders)
    return mapping


def _files_under(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _canonical(name: str, labels: Sequence[str]) -> str | None:
    for label in labels:
        if label.lower() == name.lower():
            return label
    return None


def plan_upload(
    directory: Path,
    labels: Sequence[str],
    *,
    mapping: Mapping[str, Sequence[str]] | None = None,
    force: bool = False,
    hold_back: Callable[[Path, str], bool] | None = None,
) -> UploadPlan:
    """Which file goes to which key. ``DIR/<Label>/<rel>`` -> ``images/<Label>/<rel>``; with a mapping,
    ``DIR/<folder>/<rel>`` -> ``images/<Label>/<folder>/<rel>``. Unknown labels refuse the whole upload
    (exit 2) unless ``force``. ``hold_back(path, label)`` keeps files out (the demo's test photos)."""
    if not directory.is_dir():
        raise UsageError(f"{directory} is not a directory")
    allowed = ", ".join(labels)
    plan = UploadPlan()
    groups: list[tuple[str, Path, str]] = []  # (label, folder, key prefix)
    if mapping is not None:
        for label, folders in mapping.items():
            canonical = _canonical(label, labels)
            if canonical is None:
                plan.unknown_labels.append(label)
            for folder in folders:
                path = directory / folder
                if not path.is_dir():
                    raise UsageError(f"the mapping names {folder} but {path} is not a directory")
                name = canonical or label
                groups.append((name, path, f"{IMAGES_PREFIX}{name}/{folder}/"))
    else:
        for path in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")):
            canonical = _canonical(path.name, labels)
            if canonical is None:
                plan.unknown_labels.append(path.name)
            name = canonical or path.name
            groups.append((name, path, f"{IMAGES_PREFIX}{name}/"))
        if not groups:
            raise UsageError(
                f"{directory} has no label folders (expected {directory}/<Label>/..., Label in {allowed})"
            )
    if plan.unknown_labels and not force:
        raise UsageError(
            f"unknown label folder(s): {', '.join(plan.unknown_labels)}; allowed labels: {allowed} "
            "(--force uploads them anyway and the ingest step rejects them)"
        )
    for label, base, prefix in groups:
        for path in _files_under(base):
            if hold_back is not None and hold_back(path, label):
                plan.held_back.append((path, label))
                continue
            fmt = _sniff(path)
            if fmt == "HEIC":  # the ingest step would refuse it: say so now, with the fix
                plan.refused.append((path, fmt))
                continue
            plan.files.append((path, prefix + path.relative_to(base).as_posix()))
    return plan


def _sniff(path: Path) -> str:
    """The format from the file's first bytes (the ingest step's own sniffing; the name does not count)."""
    with path.open("rb") as handle:
        return sniff_format(handle.read(64))


def md5_hex(path: Path) -> str:
    digest = hashlib.md5()  # noqa: S324 - compared with the S3 ETag, not used for security
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def existing_etags(s3: Any, bucket: str, prefix: str = IMAGES_PREFIX) -> dict[str, str]:
    etags: dict[str, str] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            etags[obj["Key"]] = str(obj.get("ETag", "")).strip('"')
    return etags


def upload(target: Target, plan: UploadPlan, ui: UI, *, s3: Any = None) -> dict[str, Any]:
    """Upload the plan, skipping files whose MD5 equals the object's ETag (single-part PUTs keep it)."""
    s3 = s3 or target.client("s3")
    bucket = target.bucket
    etags = existing_etags(s3, bucket)
    uploaded: list[str] = []
    skipped: list[str] = []
    if plan.refused:
        names = ", ".join(path.name for path, _ in plan.refused[:5]) + (
            ", ..." if len(plan.refused) > 5 else ""
        )
        ui.line(f"not uploaded: {len(plan.refused)} HEIC/HEIF file(s) ({names}). {HEIC_HINT}")
    with ui.progress(f"uploading {len(plan.files)} files to s3://{bucket}/", total=len(plan.files)) as bar:
        for path, key in plan.files:
            md5 = md5_hex(path)
            if etags.get(key) == md5:
                skipped.append(key)
            else:
                content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes(), ContentType=content_type)
                uploaded.append(key)
            bar.advance()
    return {
        "bucket": bucket,
        "uploaded": len(uploaded),
        "skipped": len(skipped),
        "unknown_labels": plan.unknown_labels,
        "held_back": len(plan.held_back),
        "refused_heic": [str(path) for path, _ in plan.refused],
        "keys": uploaded,
    }


def wait_catalogued(
    target: Target, keys: Sequence[str], ui: UI, *, timeout: float, poll_s: float = 1.0
) -> dict[str, int]:
    """``upload --wait``: until every key in ``keys`` has a catalogue record and the ingest queue is empty;
    the uploaded keys' statuses counted (accepted, rejected, duplicate, conflict)."""
    from trashsorter_cli.commands.pipeline import ingest_queued

    wanted = set(keys)
    catalogue = Catalogue(target.table, ddb=target.client("dynamodb"))
    deadline = time.monotonic() + timeout
    with ui.progress("ingest: validating and cataloguing", total=len(wanted)) as bar:
        while True:
            statuses = {
                str(rec.get("key", "")): str(rec.get("status", ""))
                for rec in catalogue.iter_images(None, None)
                if rec.get("key") in wanted
            }
            bar.update(
                completed=len(statuses), description=f"ingest: {len(statuses)}/{len(wanted)} catalogued"
            )
            if len(statuses) >= len(wanted) and not ingest_queued(target):
                break
            if time.monotonic() > deadline:
                raise CliError(
                    f"ingest has catalogued {len(statuses)} of {len(wanted)} uploaded photos "
                    f"after {timeout:.0f}s"
                )
            time.sleep(poll_s)
    counts = dict.fromkeys(("accepted", "rejected", "duplicate", "conflict"), 0)
    for status in statuses.values():
        counts[status] = counts.get(status, 0) + 1
    return counts


def list_images(
    target: Target, *, status: str | None = None, label: str | None = None, ddb: Any = None
) -> list[dict[str, Any]]:
    if status is not None and status not in {s.value for s in ImageStatus}:
        raise UsageError(f"unknown status {status!r}; one of {', '.join(s.value for s in ImageStatus)}")
    if label is not None:
        canonical = _canonical(label, target.labels)
        if canonical is None:
            raise UsageError(f"unknown label {label!r}; allowed labels: {', '.join(target.labels)}")
        label = canonical
    catalogue = Catalogue(target.table, ddb=ddb or target.client("dynamodb"))
    twins, flagged = _near_twins(catalogue) if status in (None, ImageStatus.ACCEPTED) else ({}, {})
    rows = []
    for rec in catalogue.iter_images(status, label):
        key, accepted = str(rec.get("key", "")), rec.get("status") == ImageStatus.ACCEPTED
        row = {
            "key": key,
            "label": str(rec.get("label", "")),
            "status": str(rec.get("status", "")),
            "reason": str(rec.get("reason", "") or ""),
            "reason_code": str(rec.get("reason_code", "") or ""),
            "near_twins": twins.get(key, []) if accepted else [],
        }
        if accepted and key in flagged:  # held out of training like a conflict, until a person decides
            row.update(reason=flagged[key], reason_code="near_conflict")
        elif row["near_twins"] and not row["reason"]:
            row["reason"] = f"near twin of {', '.join(row['near_twins'])} (kept on one side of the split)"
        rows.append(row)
    return sorted(rows, key=lambda r: (r["label"], r["key"]))


def _near_twins(catalogue: Catalogue) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Near-twins among the accepted images (key -> twin keys) and the near conflicts (key -> reason)."""
    accepted = near_twins.labelled(catalogue.accepted_images(attributes=("key", "label", "phash")))
    pairs = near_twins.near_twins(accepted)
    flagged = near_twins.near_conflicts(near_twins.twin_groups(accepted))
    return {key: [twin for twin, _ in found] for key, found in pairs.items()}, flagged


def reindex(target: Target) -> dict[str, int]:
    settings = target.settings(IngestSettings, "IngestFunction")
    return ingest.rebuild_catalogue(
        settings, s3=target.client("s3"), ddb=target.client("dynamodb"), events=target.client("events")
    )
