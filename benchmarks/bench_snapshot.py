"""Dataset snapshot time for 10,000 and 100,000 catalogue records (target: <= 60 s for 100,000).

Method: moto in-process with the stack from template.yaml; the catalogue seeded with ``batch_write_item``;
then the snapshot exactly as start-training makes it: ``plan_from_catalogue`` (GSI query of every accepted
record, dedupe, hash split) + ``write_dataset`` (a content-addressed copy of every image under
``datasets/objects/``, labels.txt, .lst and channel manifests, manifest.jsonl; the seeded objects are small
``seed-<i>`` payloads).
Wall time with ``time.perf_counter``. moto runs with the local stack's patches
(``trashsorter_cli.local.moto_patches``: a next query page costs O(page), not O(table); one JSON conversion
per projected item; query responses through moto's DynamoDB JSON encoder), as ``trashsorter local up``
runs it; docs/benchmarks.md gives the arithmetic for real DynamoDB.
The Python side alone (no moto) is measured too: ``plan_dataset`` (dedupe, hash split, dataset id) and the
rendering of every file ``write_dataset`` puts (manifest.jsonl, labels.txt, .lst, channel manifests), on the
same number of synthetic accepted records.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.common import LABELS, Result, Section, fake_aws_env, seed_catalogue

SIZES = (10_000, 100_000)
QUICK_SIZES = (10_000,)
TARGET_S = 60.0


def measure(size: int) -> dict[str, Any]:
    import boto3
    from moto import mock_aws

    from trashsorter import aws
    from trashsorter.catalogue import Catalogue
    from trashsorter.dataset import plan_from_catalogue
    from trashsorter.dataset_store import write_dataset
    from trashsorter.settings import TrainingSettings
    from trashsorter_cli.local import moto_patches
    from trashsorter_cli.local.stack import deploy_stack

    with fake_aws_env(), mock_aws():
        aws.reset_clients()
        session = boto3.session.Session(region_name="us-east-1")
        moto_patches.install(speed=True)  # a large benchmark: moto as the local stack runs it
        stack = deploy_stack(session, stack_name="bench")
        ddb = session.client("dynamodb")
        s3 = session.client("s3")
        settings = TrainingSettings.from_env(stack.function_env("StartTrainingFunction"))
        started = time.perf_counter()
        seed_catalogue(ddb, settings.table_name, settings.images_bucket, size, s3=s3)
        seed_s = time.perf_counter() - started
        pages = 0

        def count(**_: Any) -> None:
            nonlocal pages
            pages += 1

        ddb.meta.events.register("before-call.dynamodb.Query", count)
        started = time.perf_counter()
        plan = plan_from_catalogue(
            Catalogue(settings.table_name, ddb=ddb),
            labels=LABELS,
            validation_fraction=settings.validation_fraction,
            bucket=settings.images_bucket,
        )
        plan_s = time.perf_counter() - started
        started = time.perf_counter()
        write_dataset(plan, s3=s3)
        write_s = time.perf_counter() - started
        entries = plan.num_train + plan.num_validation
    aws.reset_clients()
    return {"seed_s": seed_s, "plan_s": plan_s, "write_s": write_s, "pages": pages, "entries": entries}


def measure_python_side(size: int) -> float:
    import hashlib

    from trashsorter.dataset import (
        TRAIN,
        VALIDATION,
        SnapshotImage,
        plan_dataset,
        render_channel_manifest,
        render_lst,
        render_manifest_jsonl,
    )
    from trashsorter.labels import render as render_labels

    images = [
        SnapshotImage(
            key=f"images/{LABELS[i % len(LABELS)]}/photo-{i:06d}.jpg",
            sha256=hashlib.sha256(str(i).encode()).hexdigest(),
            label=LABELS[i % len(LABELS)],
        )
        for i in range(size)
    ]
    started = time.perf_counter()
    plan = plan_dataset(images, labels=LABELS, validation_fraction=0.2, bucket="bench-bucket")
    for text in (render_manifest_jsonl(plan), render_labels(plan.labels)):
        assert text
    for split in (TRAIN, VALIDATION):
        assert render_lst(plan, split) and render_channel_manifest(plan, split)
    return time.perf_counter() - started


def run(quick: bool = False) -> Section:
    section = Section("Dataset snapshot time", method=__doc__ or "")
    rows = [
        "| records | query pages | plan (query + split) s | write s | total s | entries |",
        "|---|---|---|---|---|---|",
    ]
    for size in QUICK_SIZES if quick else SIZES:
        m = measure(size)
        total = m["plan_s"] + m["write_s"]
        rows.append(
            f"| {size:,} | {m['pages']} | {m['plan_s']:.1f} | {m['write_s']:.1f} | {total:.1f} "
            f"| {m['entries']:,} |"
        )
        section.results.append(
            Result(
                "snapshot",
                f"{size:,} records (moto)",
                f"{total:.1f} s",
                f"<= {TARGET_S:.0f} s" if size == 100_000 else "",
                total <= TARGET_S if size == 100_000 else None,
                f"seeding {m['seed_s']:.0f} s not included",
            )
        )
    section.details += rows
    python_rows = ["", "| records | Python side only (plan + render, no moto) s |", "|---|---|"]
    for size in QUICK_SIZES if quick else SIZES:
        seconds = measure_python_side(size)
        python_rows.append(f"| {size:,} | {seconds:.2f} |")
        section.results.append(
            Result(
                "snapshot",
                f"{size:,} records, Python side only",
                f"{seconds:.2f} s",
                f"<= {TARGET_S:.0f} s" if size == 100_000 else "",
                seconds <= TARGET_S if size == 100_000 else None,
                "plan + render, no AWS",
            )
        )
    section.details += python_rows
    return section
