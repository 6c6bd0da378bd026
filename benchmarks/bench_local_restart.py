"""Restart of the local stack holding 10,000 images (target: ready in < 30 s).

Method: a ``LocalRuntime`` (moto server, the stack from template.yaml, persistent state in a temporary
folder, no device) is started, its dispatcher stopped, and 10,000 images are seeded with
``benchmarks.common.seed_catalogue``: each a distinct 64x64 JPEG put through the S3 endpoint (so it is
journaled by the real write path, with its real version id), its catalogue record, hash owner, label
counters and dataset state written with ``batch_write_item`` (ingest itself is measured elsewhere; the
bucket's notifications are switched off while seeding: moto's SQS send slows down with every message left
unconsumed, which the stopped dispatcher would leave). The runtime is stopped, then started
again ``RESTARTS`` times with the real ``LocalRuntime.start()``: moto server, stack creation, load +
compaction of the journal (the first restart) or of the snapshot (later ones), restore into moto's backends,
dispatcher and handler cold starts, the heals (catalogue drift: every object's current version compared with
the catalogue, nothing re-ingested; lost-run check), the state file. Wall time with ``time.perf_counter``
from ``start()`` to its return (= the ready line of ``trashsorter local up``). The same start on an empty
state folder is measured as the baseline.
"""

from __future__ import annotations

import io
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import Result, Section, seed_catalogue

IMAGES = 10_000
QUICK_IMAGES = 1_000
RESTARTS = 2
TARGET_S = 30.0
STACK = "bench-restart"


def _jpeg(index: int) -> bytes:
    from PIL import Image

    image = Image.new("RGB", (64, 64), ((index * 7) % 256, (index // 256) % 256, (index * 13) % 256))
    image.putpixel((index % 64, (index // 64) % 64), (255, 255, 255))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()


def _runtime(state_path: Path) -> Any:
    from trashsorter_cli.local.runtime import LocalRuntime

    return LocalRuntime(
        port=None,
        stack_name=STACK,
        state_path=state_path,
        device=False,
        log_file=state_path.parent / "local.log",
        overrides={"MinImagesPerLabel": "1000000"},
    )


def _timed_start(state_path: Path) -> tuple[float, Any]:
    runtime = _runtime(state_path)
    started = time.perf_counter()
    runtime.start()
    return time.perf_counter() - started, runtime


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def run(quick: bool = False) -> Section:
    count = QUICK_IMAGES if quick else IMAGES
    section = Section("Local stack restart", method=__doc__ or "")
    rows: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        baseline_s, runtime = _timed_start(Path(tmp) / "empty" / "local.json")
        runtime.stop()
        state_path = Path(tmp) / "full" / "local.json"
        runtime = _runtime(state_path)
        runtime.start()
        try:
            assert runtime.stack is not None and runtime.dispatcher is not None
            runtime.dispatcher.stop()  # seeding bypasses ingest
            outputs = runtime.stack.outputs
            # and sends no notifications (10,000 messages left unconsumed make each moto SQS send slower);
            # the restart applies the template's notification configuration again
            runtime.client("s3").put_bucket_notification_configuration(
                Bucket=outputs["ImagesBucketName"], NotificationConfiguration={}
            )
            seeded = time.perf_counter()
            seed_catalogue(
                runtime.client("dynamodb"),
                outputs["CatalogueTableName"],
                outputs["ImagesBucketName"],
                count,
                s3=runtime.client("s3"),
                body=_jpeg,
            )
            seed_s = time.perf_counter() - seeded
        finally:
            runtime.stop()
        state = state_path.parent / "state"
        journal_mb = _size(state) / 1e6
        times: list[float] = []
        for attempt in range(RESTARTS):
            seconds, runtime = _timed_start(state_path)
            try:
                restored, healed = dict(runtime.restored), dict(runtime.healed["catalogue"])
            finally:
                runtime.stop()
            if restored["objects"] != count or healed["ingested"] or healed["removed"]:
                raise RuntimeError(f"restart {attempt + 1}: restored {restored}, healed {healed}")
            times.append(seconds)
            source = "journal" if attempt == 0 else "snapshot"
            rows.append(
                f"| {attempt + 1} ({source}) | {seconds:.1f} | {restored['objects']:,} objects, "
                f"{restored['versions']:,} versions, {restored['items']:,} items | "
                f"{healed['checked']:,} checked, {healed['ingested']} re-ingested |"
            )
        snapshot_mb = _size(state) / 1e6
    worst = max(times)
    section.results += [
        Result("local restart", "start, empty state (baseline)", f"{baseline_s:.1f} s"),
        Result(
            "local restart",
            f"restart with {count:,} images (worst of {RESTARTS})",
            f"{worst:.1f} s",
            target=f"< {TARGET_S:.0f} s" if count == IMAGES else "",
            ok=worst < TARGET_S if count == IMAGES else None,
            notes="journal, then snapshot",
        ),
        Result("local restart", "seeding (not a target)", f"{seed_s:.0f} s", notes=f"{count:,} puts via S3"),
    ]
    section.details = [
        f"State folder: {journal_mb:.1f} MB after seeding (journal + blobs), {snapshot_mb:.1f} MB compacted.",
        "",
        "| restart | seconds | restored | catalogue drift |",
        "|---|---|---|---|",
        *rows,
    ]
    return section
