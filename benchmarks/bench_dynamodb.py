"""DynamoDB calls per ingested image as the catalogue grows (target: constant).

Method: moto in-process with the stack from template.yaml (``deploy_stack``); the catalogue is seeded
directly with ``batch_write_item`` (image records + hash owners + counters + state, the catalogue's own
shapes) to 100 / 1,000 / 10,000 / 100,000 records; then K new, unique images (64x64 JPEGs with a per-image
pixel pattern) are uploaded and ingested with ``trashsorter.ingest.process_s3_record``, and every DynamoDB
API call is counted by operation with a botocore ``before-call.dynamodb.*`` hook (the hook sees each call
the code makes, before retries). S3 calls are counted the same way.
"""

from __future__ import annotations

import io
import random
import time
from collections import Counter
from typing import Any
from urllib.parse import quote_plus

from benchmarks.common import Result, Section, fake_aws_env, seed_catalogue

# 100,000 is not measured: moto's TransactWriteItems deep-copies every table for its rollback, so one
# transaction costs O(table size) (~12 s per image at 10,000 records on 2 cores). The call count is what is
# measured, and it does not depend on the engine (docs/benchmarks.md).
SIZES = (100, 1_000, 10_000)
QUICK_SIZES = (100, 1_000)
NEW_IMAGES = {100: 30, 1_000: 30, 10_000: 5}


def unique_jpeg(index: int, side: int = 64) -> bytes:
    from PIL import Image

    pixels = random.Random(index).randbytes(side * side * 3)
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), pixels).save(out, "JPEG", quality=85)
    return out.getvalue()


def s3_record(bucket: str, key: str, put: dict[str, Any], size: int) -> dict[str, Any]:
    return {
        "eventName": "ObjectCreated:Put",
        "s3": {
            "bucket": {"name": bucket},
            "object": {
                "key": quote_plus(key),
                "size": size,
                "eTag": put["ETag"].strip('"'),
                "versionId": put.get("VersionId"),
            },
        },
    }


def measure(size: int, offset: int, new_images: int) -> tuple[Counter[str], Counter[str], float, float]:
    import boto3
    from moto import mock_aws

    from trashsorter import aws
    from trashsorter.ingest import process_s3_record
    from trashsorter.settings import IngestSettings
    from trashsorter_cli.local import moto_patches
    from trashsorter_cli.local.stack import deploy_stack

    with fake_aws_env(), mock_aws():
        aws.reset_clients()
        session = boto3.session.Session(region_name="us-east-1")
        # A rule that is never met: the threshold check still runs (and is counted) on every accept.
        moto_patches.install(speed=True)  # a large benchmark: moto as the local stack runs it
        stack = deploy_stack(session, stack_name="bench", overrides={"MinImagesPerLabel": "1000000"})
        s3 = session.client("s3")
        ddb = session.client("dynamodb")
        events = session.client("events")
        settings = IngestSettings.from_env(stack.function_env("IngestFunction"))
        started = time.perf_counter()
        seed_catalogue(ddb, settings.table_name, settings.images_bucket, size)
        seed_s = time.perf_counter() - started
        ddb_calls: Counter[str] = Counter()
        s3_calls: Counter[str] = Counter()

        def count_ddb(model: Any, **_: Any) -> None:
            ddb_calls[model.name] += 1

        def count_s3(model: Any, **_: Any) -> None:
            s3_calls[model.name] += 1

        records = []
        for i in range(new_images):
            data = unique_jpeg(offset + i)
            key = f"images/{('Compost', 'Landfill', 'Recycling')[i % 3]}/new/{offset + i}.jpg"
            put = s3.put_object(Bucket=settings.images_bucket, Key=key, Body=data)
            records.append(s3_record(settings.images_bucket, key, put, len(data)))
        ddb.meta.events.register("before-call.dynamodb.*", count_ddb)
        s3.meta.events.register("before-call.s3.*", count_s3)
        started = time.perf_counter()
        for record in records:
            outcome = process_s3_record(record, settings, s3=s3, ddb=ddb, events=events)
            if outcome.status != "accepted":
                raise RuntimeError(f"benchmark image not accepted: {outcome}")
        ingest_s = time.perf_counter() - started
    aws.reset_clients()
    return ddb_calls, s3_calls, seed_s, ingest_s


def run(quick: bool = False) -> Section:
    sizes = QUICK_SIZES if quick else SIZES
    section = Section("DynamoDB calls per ingested image vs catalogue size", method=__doc__ or "")
    rows = [
        "| catalogue records | DynamoDB calls / image | by operation (per image) | S3 calls / image "
        "| seed s | ingest ms / image (moto) |",
        "|---|---|---|---|---|---|",
    ]
    per_image: list[float] = []
    for n, size in enumerate(sizes):
        k = NEW_IMAGES[size]
        ddb_calls, s3_calls, seed_s, ingest_s = measure(size, offset=1_000_000 + n * 1000, new_images=k)
        total = sum(ddb_calls.values()) / k
        per_image.append(total)
        ops = ", ".join(f"{op} {count / k:g}" for op, count in sorted(ddb_calls.items()))
        rows.append(
            f"| {size:,} | {total:g} | {ops} | {sum(s3_calls.values()) / k:g} | {seed_s:.1f} | "
            f"{ingest_s / k * 1000:.1f} |"
        )
    constant = max(per_image) == min(per_image)
    section.results.append(
        Result(
            "DynamoDB calls",
            f"calls per image at {', '.join(f'{s:,}' for s in sizes)} records",
            " / ".join(f"{v:g}" for v in per_image),
            "constant",
            constant,
            "new images per size: " + ", ".join(f"{NEW_IMAGES[s]}" for s in sizes),
        )
    )
    section.details += rows
    return section
