"""``labels.txt``: one label per line in class-index order, the one format every step reads and writes.

Written by the dataset snapshot (``datasets/<id>/labels.txt``), the trainer and the repackaged model;
read by the package step, the trainer and the device programs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from trashsorter import aws
from trashsorter.errors import PackagingError, TransientError
from trashsorter.schema import dataset_prefix

FILE_NAME = "labels.txt"
MAX_LABELS_BYTES = 1024 * 1024


def parse(text: str) -> list[str]:
    """Labels one per line (``<index><TAB><label>`` lines accepted), stripped, blank lines dropped."""
    labels: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        parts = line.split("\t") if "\t" in line else line.split(None, 1)
        if len(parts) == 2 and parts[0].isdigit():
            line = parts[1].strip()
        labels.append(line)
    return labels


def render(labels: Sequence[str]) -> str:
    """One label per line in class-index order, no surrounding whitespace (the camera strips nothing)."""
    return "".join(f"{label.strip()}\n" for label in labels if label.strip())


def read_file(path: Path | str) -> list[str]:
    """The labels of a ``labels.txt`` file."""
    return parse(Path(path).read_text(encoding="utf-8"))


def write_file(path: Path | str, labels: Sequence[str]) -> Path:
    """Write ``labels`` as ``labels.txt`` at ``path``; returns the path."""
    target = Path(path)
    target.write_text(render(labels), encoding="utf-8")
    return target


def dataset_key(dataset_id: str) -> str:
    """S3 key of a dataset snapshot's labels (images bucket)."""
    return dataset_prefix(dataset_id) + FILE_NAME


def read_dataset_labels(bucket: str, dataset_id: str, *, s3: Any = None) -> list[str]:
    """``datasets/<id>/labels.txt`` of the images bucket (empty when it is missing)."""
    key = dataset_key(dataset_id)
    try:
        body = (s3 or aws.client("s3")).get_object(Bucket=bucket, Key=key)["Body"]
        data = body.read(MAX_LABELS_BYTES + 1)
    except ClientError as exc:
        if aws.error_code(exc) in ("NoSuchKey", "404", "NotFound"):
            return []
        raise TransientError(f"could not read the labels of dataset {dataset_id}: {exc}") from exc
    except BotoCoreError as exc:
        raise TransientError(f"could not read the labels of dataset {dataset_id}: {exc}") from exc
    if len(data) > MAX_LABELS_BYTES:
        raise PackagingError(f"{key} is larger than {MAX_LABELS_BYTES} bytes")
    return parse(data.decode("utf-8", "replace"))
