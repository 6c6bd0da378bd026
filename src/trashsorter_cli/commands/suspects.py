"""``trashsorter suspects [MODEL]``: the photos whose label a training most doubts (suspected mislabels).

The trainer writes ``suspects.json`` beside its model (confident learning on out-of-fold probabilities,
see ``trashsorter_trainer/suspects.py``); this reads it from the training job's ``model.tar.gz`` of the
champion (or MODEL) and names each photo by its key under ``images/`` (the catalogue maps the snapshot's
content-addressed object back to the images that hold those bytes). Nothing is relabelled: a person looks
at each and moves a photo whose label is wrong with ``trashsorter label IMAGE_KEY LABEL``.
"""

from __future__ import annotations

import argparse
import json
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from trashsorter.artifacts import parse_s3_uri
from trashsorter.catalogue import Catalogue
from trashsorter_cli.commands.report import _model
from trashsorter_cli.targets import Target
from trashsorter_cli.ui import UI, CliError
from trashsorter_edge.contract import content_sha256
from trashsorter_trainer.contract import SUSPECTS_FILE

MAX_SUSPECTS_BYTES = 16 * 1024**2


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "suspects", parents=[common], help="photos whose label the model doubts (suspected mislabels)"
    )
    p.add_argument("model_id", nargs="?", metavar="MODEL", help="a registered model (default: the champion)")
    p.add_argument("--limit", type=int, default=20, help="how many to list (default 20; 0 = all)")


def read_suspects(target: Target, model: dict[str, Any]) -> list[dict[str, Any]]:
    """suspects.json of the training job that made ``model`` (from its model.tar.gz)."""
    model_id = str(model.get("model_id", ""))
    uri = str(model.get("source_artifact_uri") or "")
    if not uri:
        raise CliError(f"model {model_id} has no training artifact")
    bucket, key = parse_s3_uri(uri)
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "model.tar.gz"
        target.client("s3").download_file(bucket, key, str(archive))
        with tarfile.open(archive) as tar:
            try:
                member = tar.getmember(SUSPECTS_FILE)
            except KeyError:
                raise CliError(
                    f"model {model_id}'s training wrote no {SUSPECTS_FILE} (a trainer that did not list "
                    "suspected mislabels, or the built-in algorithm)"
                ) from None
            if member.size > MAX_SUSPECTS_BYTES:
                raise CliError(f"{SUSPECTS_FILE} of {uri} is larger than {MAX_SUSPECTS_BYTES} bytes")
            handle = tar.extractfile(member)
            raw = handle.read() if handle is not None else b"[]"
    suspects = json.loads(raw)
    if not isinstance(suspects, list):
        raise CliError(f"{SUSPECTS_FILE} of {uri} is not a list")
    return suspects


def with_image_keys(target: Target, suspects: list[dict[str, Any]], ddb: Any = None) -> list[dict[str, Any]]:
    """Each suspect with ``images``: the accepted catalogue keys holding its bytes (by SHA-256)."""
    catalogue = Catalogue(target.table, ddb=ddb or target.client("dynamodb"))
    by_sha: dict[str, list[str]] = {}
    for record in catalogue.iter_images("accepted"):
        by_sha.setdefault(str(record.get("sha256", "")), []).append(str(record.get("key", "")))
    named = []
    for suspect in suspects:
        sha = content_sha256(str(suspect.get("key", "")))
        named.append({**suspect, "images": sorted(by_sha.get(sha, [])) if sha else []})
    return named


def handle(args: argparse.Namespace, ui: UI, target: Target) -> int:
    model = _model(target, args.model_id, target.client("dynamodb"))
    suspects = with_image_keys(target, read_suspects(target, model))
    shown = suspects[: args.limit] if args.limit > 0 else suspects
    if ui.json_mode:
        ui.emit_json({"model_id": model.get("model_id"), "count": len(suspects), "suspects": shown})
        return 0
    ui.table(
        f"{len(suspects)} suspected mislabels of model {model.get('model_id')} (most doubted first)",
        ["#", "image", "labelled", "p", "looks like", "p"],
        [
            [
                s["rank"],
                ", ".join(s["images"]) or s["key"],
                s["label"],
                f"{float(s['label_probability']):.2f}",
                s["suggested"],
                f"{float(s['suggested_probability']):.2f}",
            ]
            for s in shown
        ],
    )
    ui.line("Nothing was relabelled. Move a photo whose label is wrong: trashsorter label IMAGE_KEY LABEL")
    return 0
