"""Dataset snapshot time and S3 requests, store step included (10,000 and 20,000 records on moto).

The catalogue is seeded as the ingest step leaves it: every record names its content-addressed copy, stored
under ``datasets/objects/`` tagged ``catalogued`` (uploads and copies written into moto's S3 backend
directly, not timed), so the snapshot should list keys and send no request per image; the first snapshot's
time is extrapolated linearly to 100,000 (a figure for moto only; docs/benchmarks.md gives real S3's).

Method: moto in-process with the stack from template.yaml; the bucket's notification to the ingest queue is
switched off (the catalogue is seeded directly, and moto's SQS counts the whole queue on every send, which
makes seeding quadratic); the catalogue seeded with ``batch_write_item`` and every image put as a real,
unique 64x64 JPEG (``bench_dynamodb.unique_jpeg``, ~3.7 KB) whose SHA-256 and version id the record holds.
Then the snapshot exactly as start-training makes it: ``plan_from_catalogue`` (GSI query of every accepted
record, dedupe, hash split) + ``dataset_store.write_dataset`` with the function's own reuse window
(``reuse_window(DATASET_OBJECT_DAYS, longest job)`` from the stack's settings): one ListObjectsV2 pass over
``datasets/objects/``, a content-addressed copy of every image not stored yet (16 threads), labels.txt,
.lst and channel manifests, manifest.jsonl.
Twice: the **first** snapshot (nothing stored: every image copied), then 100 new unique images are uploaded
and ingested (``ingest.process_s3_record``, the ingest step's own code) and the **second** snapshot runs
(only those 100 should be copied). S3 calls are counted by operation with a botocore ``before-call.s3.*``
hook on the client the snapshot uses (one count per call the code makes, before retries). Wall time with
``time.perf_counter``; peak RSS of the benchmark process (moto's objects included) from ``getrusage``.
moto runs with the local stack's patches (``trashsorter_cli.local.moto_patches``), as ``trashsorter local
up`` runs it; docs/benchmarks.md gives the arithmetic for real S3 and DynamoDB at 100,000 images.
The Python side alone (no moto) is measured too: ``plan_dataset`` (dedupe, hash split, dataset id) and the
rendering of every file ``write_dataset`` puts (manifest.jsonl, labels.txt, .lst, channel manifests), on
10,000 and 100,000 synthetic accepted records. And the S3 client's own CPU per call
(``measure_client_cpu``: 2,000 CopyObject and 2,000 GetObjectTagging against a moto server in another
process, CPU time of the calling thread), which bounds how many calls the function's CPU share can make
in 300 s.
"""

from __future__ import annotations

import resource
import time
from collections import Counter
from typing import Any

from benchmarks.bench_dynamodb import s3_record, unique_jpeg
from benchmarks.common import LABELS, Result, Section, fake_aws_env, seed_catalogue

SIZES = (10_000, 20_000)
QUICK_SIZES = (1_000,)
FIRST_TARGET_S = 60.0  # a first snapshot of 100,000 images (extrapolated linearly from SIZES)
NEW_IMAGES = 100
PYTHON_SIZES = (10_000, 100_000)
PYTHON_TARGET_S = 60.0
CLIENT_CPU_CALLS = 2_000
OPERATIONS = ("ListObjectsV2", "CopyObject", "GetObjectTagging", "GetObject", "PutObject")


def measure(size: int) -> dict[str, Any]:
    import boto3
    from moto import mock_aws

    from trashsorter import aws
    from trashsorter.catalogue import Catalogue
    from trashsorter.dataset import plan_from_catalogue
    from trashsorter.dataset_store import reuse_window, write_dataset
    from trashsorter.ingest import process_s3_record
    from trashsorter.settings import IngestSettings, TrainingSettings
    from trashsorter_cli.local import moto_patches
    from trashsorter_cli.local.stack import deploy_stack

    with fake_aws_env(), mock_aws():
        aws.reset_clients()
        session = boto3.session.Session(region_name="us-east-1")
        moto_patches.install(speed=True)  # a large benchmark: moto as the local stack runs it
        stack = deploy_stack(session, stack_name="bench")
        ddb, s3, events = session.client("dynamodb"), session.client("s3"), session.client("events")
        settings = TrainingSettings.from_env(stack.function_env("StartTrainingFunction"))
        ingest_settings = IngestSettings.from_env(stack.function_env("IngestFunction"))
        bucket = settings.images_bucket
        s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={})
        started = time.perf_counter()
        put, copy = _moto_seeders(bucket)
        seed_catalogue(ddb, settings.table_name, bucket, size, s3=s3, body=unique_jpeg, put=put, copy=copy)
        seed_s = time.perf_counter() - started
        reuse = reuse_window(settings.dataset_object_days, settings.longest_job_seconds)
        pages = 0
        calls: Counter[str] = Counter()

        def count_pages(**_: Any) -> None:
            nonlocal pages
            pages += 1

        def count_s3(model: Any, **_: Any) -> None:
            calls[model.name] += 1

        ddb.meta.events.register("before-call.dynamodb.Query", count_pages)
        s3.meta.events.register("before-call.s3.*", count_s3)
        runs: list[dict[str, Any]] = []
        for name in ("first", "second"):
            if name == "second":  # 100 new photos arrive through the ingest step
                for i in range(NEW_IMAGES):
                    data = unique_jpeg(10_000_000 + i)
                    key = f"images/{LABELS[i % len(LABELS)]}/new/{i}.jpg"
                    put = s3.put_object(Bucket=bucket, Key=key, Body=data)
                    record = s3_record(bucket, key, put, len(data))
                    outcome = process_s3_record(record, ingest_settings, s3=s3, ddb=ddb, events=events)
                    if outcome.status != "accepted":
                        raise RuntimeError(f"benchmark image not accepted: {outcome}")
            pages = 0
            calls.clear()
            started = time.perf_counter()
            plan = plan_from_catalogue(
                Catalogue(settings.table_name, ddb=ddb),
                labels=LABELS,
                validation_fraction=settings.validation_fraction,
                bucket=bucket,
            )
            plan_s = time.perf_counter() - started
            started = time.perf_counter()
            write_dataset(plan, s3=s3, reuse_within=reuse)
            runs.append(
                {
                    "name": name,
                    "plan_s": plan_s,
                    "write_s": time.perf_counter() - started,
                    "pages": pages,
                    "entries": len(plan.entries),
                    "calls": Counter(calls),
                }
            )
    aws.reset_clients()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seed_s": seed_s, "runs": runs, "peak_mib": peak_mib, "reuse_days": reuse.total_seconds() / 86400}


def _moto_seeders(bucket: str) -> tuple[Any, Any]:
    """Seeding straight into moto's S3 backend (what botocore + moto's HTTP layer cost per put is not the
    benchmark): the uploads, and each one's content-addressed copy tagged as ``store_content`` tags it."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    from trashsorter.dataset_store import RETENTION_CATALOGUED, RETENTION_TAG
    from trashsorter_edge.contract import object_key

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]

    def put(key: str, data: bytes) -> str:
        return str(backend.put_object(bucket, key, data).version_id)

    def copy(sha256: str, data: bytes) -> dict[str, str]:
        stored = backend.put_object(bucket, object_key(sha256, "jpg"), data)
        backend.put_object_tagging(stored, {RETENTION_TAG: RETENTION_CATALOGUED})
        return {"object_key": stored.name, "object_etag": stored.etag.strip('"')}

    return put, copy


def measure_client_cpu(calls: int) -> dict[str, float]:
    """CPU milliseconds of the calling thread per S3 call: botocore builds, signs, sends (HTTP) and parses.

    moto runs as a server in its own process (``python -m moto.server``), so its work is not counted.
    No TLS (real S3 adds it; kept-alive connections amortise the handshakes).
    """
    import socket
    import subprocess
    import sys

    import boto3

    from trashsorter.dataset_store import RETENTION_SNAPSHOT, RETENTION_TAG

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError("the moto server did not start") from None
            time.sleep(0.2)
    result: dict[str, float] = {}
    try:
        with fake_aws_env():
            s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1")
            bucket = "bench-client-cpu"
            s3.create_bucket(Bucket=bucket)
            s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
            version = s3.put_object(Bucket=bucket, Key="images/a.jpg", Body=unique_jpeg(0))["VersionId"]
            source = {"Bucket": bucket, "Key": "images/a.jpg", "VersionId": version}
            tagging = f"{RETENTION_TAG}={RETENTION_SNAPSHOT}"
            started = time.thread_time()
            for i in range(calls):
                s3.copy_object(
                    Bucket=bucket,
                    Key=f"objects/{i}.jpg",
                    CopySource=source,
                    MetadataDirective="REPLACE",
                    ContentType="image/jpeg",
                    TaggingDirective="REPLACE",
                    Tagging=tagging,
                )
            result["CopyObject"] = (time.thread_time() - started) / calls * 1000
            started = time.thread_time()
            for i in range(calls):
                s3.get_object_tagging(Bucket=bucket, Key=f"objects/{i}.jpg")
            result["GetObjectTagging"] = (time.thread_time() - started) / calls * 1000
    finally:
        server.terminate()
        server.wait(timeout=30)
    return result


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
        "| records | snapshot | entries | query pages | plan (query + split) s | store + files s | total s "
        + "".join(f"| {op} " for op in OPERATIONS)
        + "|",
        "|---|---|---|---|---|---|---" + "|---" * len(OPERATIONS) + "|",
    ]
    firsts: dict[int, float] = {}
    for size in QUICK_SIZES if quick else SIZES:
        m = measure(size)
        for r in m["runs"]:
            total = r["plan_s"] + r["write_s"]
            if r["name"] == "first":
                firsts[size] = total
            counts = "".join(f"| {r['calls'][op]:,} " for op in OPERATIONS)
            rows.append(
                f"| {size:,} | {r['name']} | {r['entries']:,} | {r['pages']} | {r['plan_s']:.1f} "
                f"| {r['write_s']:.1f} | {total:.1f} {counts}|"
            )
            per_image = sum(r["calls"][op] for op in ("CopyObject", "GetObjectTagging", "GetObject"))
            second = r["name"] == "second"
            section.results.append(
                Result(
                    "snapshot",
                    f"{size:,} records, {r['name']} snapshot (moto), copies stored at ingest"
                    + (f", +{NEW_IMAGES} new ingested" if second else ""),
                    f"{total:.1f} s; {r['calls']['ListObjectsV2']:,} ListObjectsV2, {per_image:,} requests "
                    f"per image (Copy/GetTagging/Get), {r['calls']['PutObject']:,} PutObject",
                    "0 requests per image",
                    per_image == 0,
                    f"seeding {m['seed_s']:.0f} s not included; peak RSS {m['peak_mib']:.0f} MiB"
                    if not second
                    else f"reuse window {m['reuse_days']:.1f} days",
                )
            )
        rows.append("")
        rows.append(
            f"Seeding {size:,} records and JPEGs: {m['seed_s']:.0f} s; peak RSS of the process "
            f"{m['peak_mib']:.0f} MiB; reuse window {m['reuse_days']:.2f} days."
        )
    if len(firsts) >= 2:  # linear in the records: extrapolate the first snapshot to 100,000
        (n1, t1), (n2, t2) = sorted(firsts.items())[-2:]
        slope = (t2 - t1) / (n2 - n1)
        at_100k = t2 + slope * (100_000 - n2)
        section.results.append(
            Result(
                "snapshot",
                "100,000 records, first snapshot (moto), extrapolated",
                f"{at_100k:.0f} s ({slope * 1000:.2f} ms per record from {n1:,} and {n2:,})",
                "",
                None,
                f"moto only (its listing walks the whole bucket per page); the {FIRST_TARGET_S:.0f} s target "
                "is judged for real S3 by the arithmetic in docs/benchmarks.md",
            )
        )
    section.details += rows
    python_rows = ["", "| records | Python side only (plan + render, no moto) s |", "|---|---|"]
    for size in PYTHON_SIZES[:1] if quick else PYTHON_SIZES:
        seconds = measure_python_side(size)
        python_rows.append(f"| {size:,} | {seconds:.2f} |")
        big = size == 100_000
        section.results.append(
            Result(
                "snapshot",
                f"{size:,} records, Python side only",
                f"{seconds:.2f} s",
                f"<= {PYTHON_TARGET_S:.0f} s" if big else "",
                seconds <= PYTHON_TARGET_S if big else None,
                "plan + render, no AWS",
            )
        )
    section.details += python_rows
    calls = 200 if quick else CLIENT_CPU_CALLS
    cpu = measure_client_cpu(calls)
    section.results.append(
        Result(
            "snapshot",
            "S3 client CPU per call (calling thread)",
            ", ".join(f"{op} {ms:.2f} ms" for op, ms in cpu.items()),
            notes=f"{calls:,} calls each; botocore over HTTP to a moto server; what the function's CPU pays",
        )
    )
    section.details += [
        "",
        f"S3 client CPU per call ({calls:,} calls each, calling thread only, moto server answering): "
        + ", ".join(f"{op} {ms:.2f} ms" for op, ms in cpu.items())
        + ".",
    ]
    return section
