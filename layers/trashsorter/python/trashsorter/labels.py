"""``labels.txt``: one label per line in class-index order, the one format every step reads and writes.

Written by the dataset snapshot (``datasets/<id>/labels.txt``), the trainer and the repackaged model;
read by the package step, the trainer and the device programs. The format itself is defined once in
``trashsorter_edge.contract``; this module adds the S3 side (the dataset snapshot's key and its bounded read).
"""

from __future__ import annotations

from typing import Any

from trashsorter import aws
from trashsorter.errors import PackagingError
from trashsorter.schema import dataset_prefix
from trashsorter_edge import contract

FILE_NAME = contract.LABELS_FILE
MAX_LABELS_BYTES = 1024 * 1024


parse = contract.parse_labels
render = contract.render_labels
read_file = contract.read_labels
write_file = contract.write_labels


def dataset_key(dataset_id: str) -> str:
    """S3 key of a dataset snapshot's labels (images bucket)."""
    return dataset_prefix(dataset_id) + FILE_NAME


def read_dataset_labels(bucket: str, dataset_id: str, *, s3: Any = None) -> list[str]:
    """``datasets/<id>/labels.txt`` of the images bucket (empty when it is missing)."""
    key = dataset_key(dataset_id)
    data: bytes | None = aws.call(
        lambda: (
            (s3 or aws.client("s3")).get_object(Bucket=bucket, Key=key)["Body"].read(MAX_LABELS_BYTES + 1)
        ),
        what=f"read the labels of dataset {dataset_id}",
        codes=dict.fromkeys(("NoSuchKey", "404", "NotFound"), lambda _: None),
    )
    if data is None:
        return []
    if len(data) > MAX_LABELS_BYTES:
        raise PackagingError(f"{key} is larger than {MAX_LABELS_BYTES} bytes")
    return parse(data.decode("utf-8", "replace"))
