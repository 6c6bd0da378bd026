"""``trashsorter suspects`` reads the training's suspects.json and names the images; ``label`` moves one."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from types import SimpleNamespace
from typing import Any

import pytest

from benchmarks.common import seed_catalogue
from tests.support.stack import StackHandle
from trashsorter_cli.commands import inbox, suspects
from trashsorter_cli.ui import CliError, UsageError

LABELS = ("Compost", "Landfill", "Recycling")


def _target(stack: StackHandle) -> Any:
    return SimpleNamespace(
        client=stack.client,
        bucket=stack.outputs["ImagesBucketName"],
        table=stack.outputs["CatalogueTableName"],
        labels=LABELS,
    )


def _artifact(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_suspects_of_a_model_are_named_by_their_images(stack: StackHandle) -> None:
    target = _target(stack)
    s3 = stack.client("s3")
    seed_catalogue(
        stack.client("dynamodb"), target.table, target.bucket, 3, s3=s3, body=lambda i: b"photo-%d" % i
    )
    sha = hashlib.sha256(b"photo-1").hexdigest()  # seeded as images/Landfill/seed/0000001.jpg
    listed = [
        {
            "rank": 1,
            "key": f"datasets/objects/{sha}.jpg",
            "label": "Landfill",
            "suggested": "Recycling",
            "label_probability": 0.05,
            "suggested_probability": 0.9,
            "margin": -0.85,
            "split": "train",
            "answered_by": "held-out fold",
        }
    ]
    s3.put_object(
        Bucket=target.bucket,
        Key="training/job-1/output/model.tar.gz",
        Body=_artifact({"model.onnx": b"x", "suspects.json": json.dumps(listed).encode()}),
    )
    model = {
        "model_id": "m-1",
        "source_artifact_uri": f"s3://{target.bucket}/training/job-1/output/model.tar.gz",
    }
    named = suspects.with_image_keys(target, suspects.read_suspects(target, model))
    assert named == [{**listed[0], "images": ["images/Landfill/seed/0000001.jpg"]}]

    s3.put_object(Bucket=target.bucket, Key="training/old/model.tar.gz", Body=_artifact({"model.onnx": b"x"}))
    old = {"model_id": "m-0", "source_artifact_uri": f"s3://{target.bucket}/training/old/model.tar.gz"}
    with pytest.raises(CliError, match=r"wrote no suspects\.json"):
        suspects.read_suspects(target, old)


def test_label_moves_an_image_to_another_label_and_refuses_what_it_cannot(stack: StackHandle) -> None:
    target = _target(stack)
    s3 = stack.client("s3")
    s3.put_object(
        Bucket=target.bucket, Key="images/Compost/can.jpg", Body=b"jpeg", Metadata={"source": "phone"}
    )
    moved = inbox.label(target, "images/Compost/can.jpg", "recycling")
    assert moved == {
        "key": "images/Compost/can.jpg",
        "label": "Recycling",
        "image_key": "images/Recycling/can.jpg",
    }
    head = s3.head_object(Bucket=target.bucket, Key="images/Recycling/can.jpg")
    assert head["Metadata"] == {"source": "phone"}
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=target.bucket, Prefix="images/").get("Contents", [])]
    assert keys == ["images/Recycling/can.jpg"]
    with pytest.raises(UsageError, match="already labelled Recycling"):
        inbox.label(target, "images/Recycling/can.jpg", "Recycling")
    with pytest.raises(UsageError, match=r"no image images/Compost/gone\.jpg"):
        inbox.label(target, "images/Compost/gone.jpg", "Landfill")
    with pytest.raises(UsageError, match="unknown label"):
        inbox.label(target, "images/Recycling/can.jpg", "Compostable")
