"""``trashsorter inbox`` and ``trashsorter label KEY LABEL``: the feedback loop's human step (and moving an
image whose label is wrong, e.g. one ``trashsorter suspects`` lists, to its right label).

The edge app uploads frames it was unsure about (or that a person flagged) to ``inbox/<thing>/...`` in the
images bucket, the prediction in the object metadata. Ingest never sees them (it reacts to ``images/`` only),
so nothing in the inbox is trained on. ``label`` copies one to ``images/<Label>/inbox-<thing>-<file>`` -
where ingest takes over (validate, hash, catalogue) - and removes it from the inbox.
"""

from __future__ import annotations

import argparse
from typing import Any

from botocore.exceptions import ClientError

from trashsorter_cli.ui import UI, UsageError
from trashsorter_edge.contract import IMAGES_PREFIX, INBOX_PREFIX


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("inbox", parents=[common], help="frames the edge devices were unsure about")
    p.add_argument("--thing", help="only this device's frames")
    p = sub.add_parser(
        "label",
        parents=[common],
        help="label an inbox frame (copy it to images/<LABEL>/) or move an image to another label",
    )
    p.add_argument("key", help="an inbox key (as `trashsorter inbox` lists it) or an images/<Label>/ key")
    p.add_argument("label")


def list_inbox(target: Any, thing: str | None = None) -> list[dict[str, Any]]:
    s3 = target.client("s3")
    prefix = f"{INBOX_PREFIX}{thing}/" if thing else INBOX_PREFIX
    rows: list[dict[str, Any]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=target.bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            meta = s3.head_object(Bucket=target.bucket, Key=item["Key"]).get("Metadata", {})
            rows.append(
                {
                    "key": item["Key"],
                    "thing": item["Key"].split("/")[1] if item["Key"].count("/") >= 2 else "",
                    "label": meta.get("label", ""),
                    "confidence": float(meta.get("confidence") or 0.0),
                    "reason": meta.get("reason", ""),
                    "model_id": meta.get("model_id", ""),
                    "uploaded": str(item.get("LastModified", "")),
                }
            )
    return rows


def label(target: Any, key: str, label_name: str) -> dict[str, Any]:
    matches = [known for known in target.labels if known.lower() == label_name.lower()]
    if not matches:
        raise UsageError(f"unknown label {label_name!r}; labels: {', '.join(target.labels)}")
    if key.startswith(IMAGES_PREFIX) and ".." not in key.split("/"):
        return move(target, key, matches[0])
    if not key.startswith(INBOX_PREFIX) or ".." in key.split("/"):
        raise UsageError(f"{key!r} is not an inbox key (inbox/<thing>/<file>)")
    parts = key.split("/")
    destination = f"{IMAGES_PREFIX}{matches[0]}/inbox-{'-'.join(parts[1:])}"
    _copy_then_delete(
        target,
        key,
        destination,
        f"no inbox object {key}",
        MetadataDirective="REPLACE",
        ContentType="image/jpeg",
    )
    return {"key": key, "label": matches[0], "image_key": destination}


def _copy_then_delete(target: Any, key: str, destination: str, missing: str, **copy: str) -> None:
    """Copy ``key`` to ``destination`` in the images bucket, then delete ``key`` (``missing``: the usage
    error when there is no such object)."""
    s3 = target.client("s3")
    try:
        s3.copy_object(
            Bucket=target.bucket, Key=destination, CopySource={"Bucket": target.bucket, "Key": key}, **copy
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            raise UsageError(missing) from exc
        raise
    s3.delete_object(Bucket=target.bucket, Key=key)


def move(target: Any, key: str, label_name: str) -> dict[str, Any]:
    """``images/<Old>/<file>`` -> ``images/<label_name>/<file>`` (copied with its metadata, then deleted):
    ingest catalogues the new key and marks the old one deleted. A person's decision, never automatic."""
    parts = key.split("/")
    if len(parts) < 3 or not parts[-1]:
        raise UsageError(f"{key!r} is not an image key (images/<Label>/<file>)")
    if parts[1] == label_name:
        raise UsageError(f"{key} is already labelled {label_name}")
    destination = "/".join([parts[0], label_name, *parts[2:]])
    _copy_then_delete(target, key, destination, f"no image {key}", MetadataDirective="COPY")
    return {"key": key, "label": label_name, "image_key": destination}


def handle(args: argparse.Namespace, ui: UI, target: Any) -> int:
    if args.command == "inbox":
        rows = list_inbox(target, args.thing)
        if ui.json_mode:
            ui.emit_json(rows)
        else:
            ui.table(
                f"{len(rows)} frames in the inbox",
                ["key", "predicted", "confidence", "reason", "model"],
                [[r["key"], r["label"], f"{r['confidence']:.3f}", r["reason"], r["model_id"]] for r in rows],
            )
        return 0
    result = label(target, args.key, args.label)
    if ui.json_mode:
        ui.emit_json(result)
    else:
        ui.line(f"{result['key']} -> s3://{target.bucket}/{result['image_key']} (ingest takes over)")
    return 0
