"""Parallel ingest: 8 threads (standing in for concurrent Lambdas) process ~200 S3 notifications, some
delivered twice at the same time, with duplicates, cross-label conflicts and rejections mixed in.

Counts must be exact, and "Dataset Ready" must be published exactly once. Threads call the domain function
(:func:`process_s3_events`), not the handler module: one Lambda instance never runs two batches at
once, and the handler's Powertools batch processor / metrics are per instance, not thread-safe.
"""

from __future__ import annotations

import hashlib
import random
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support import hostile
from tests.support.ingest import LABELS, Ingest
from trashsorter.events import parse_s3_notification
from trashsorter.ingest import process_s3_events

pytestmark = [pytest.mark.integration, pytest.mark.reliability, pytest.mark.slow]

MATERIALS = {
    "Compost": ("paper", "cardboard"),
    "Landfill": ("plastic", "trash"),
    "Recycling": ("glass", "metal"),
}


@pytest.fixture
def stack_overrides() -> dict[str, str]:
    return {"MinImagesPerLabel": "40", "MinNewImages": "10"}


@pytest.fixture
def atomic_dynamodb_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto's in-process DynamoDB is not thread-safe: ``transact_write_items`` deep-copies the table while
    other threads write to it ("dictionary changed size during iteration"). Real DynamoDB executes each
    request atomically; this makes moto do the same (one request at a time) while the requests of the 8
    workers still interleave freely, so the read -> conditional transaction races are real."""
    from moto.dynamodb.responses import DynamoHandler

    lock = threading.Lock()
    original = DynamoHandler.call_action

    def call_action(self: DynamoHandler) -> object:
        with lock:
            return original(self)

    monkeypatch.setattr(DynamoHandler, "call_action", call_action)


@pytest.fixture
def ingest(stack_overrides: dict[str, str], atomic_dynamodb_requests: None, stack) -> Ingest:  # type: ignore[no-untyped-def]
    return Ingest(stack)


def plan_uploads() -> list[tuple[str, bytes]]:
    rng = random.Random(7)
    uploads: list[tuple[str, bytes]] = []
    for label, materials in MATERIALS.items():
        for material in materials:
            for i in range(25):
                uploads.append(
                    (f"images/{label}/{material}-{i:02d}.jpg", hostile.real_photo_bytes(material, i))
                )
    originals = list(uploads)
    for n, (key, data) in enumerate(rng.sample(originals, 25)):  # same label, same bytes: duplicates
        uploads.append((key.replace(".jpg", f" copy {n}.jpg"), data))
    for n, (key, data) in enumerate(rng.sample(originals, 12)):  # same bytes, another label: conflicts
        label = key.split("/")[1]
        other = LABELS[(LABELS.index(label) + 1) % 3]
        uploads.append((f"images/{other.lower()}/misfiled {n}.jpg", data))
    for n in range(8):
        uploads.append((f"images/{LABELS[n % 3]}/junk-{n}.gif", hostile.gif()))
    rng.shuffle(uploads)
    return uploads


def expected_counts(uploads: list[tuple[str, bytes]]) -> dict[str, dict[str, int]]:
    counts = {
        label: dict.fromkeys(("accepted", "rejected", "duplicate", "conflict", "deleted"), 0)
        for label in LABELS
    }
    groups: dict[str, list[str]] = defaultdict(list)  # sha -> labels of its keys
    for key, data in uploads:
        label = {lbl.lower(): lbl for lbl in LABELS}[key.split("/")[1].lower()]
        if key.endswith(".gif"):
            counts[label]["rejected"] += 1
        else:
            groups[hashlib.sha256(data).hexdigest()].append(label)
    for labels in groups.values():
        if len(set(labels)) > 1:
            for label in labels:
                counts[label]["conflict"] += 1
        else:
            counts[labels[0]]["accepted"] += 1
            counts[labels[0]]["duplicate"] += len(labels) - 1
    return counts


def test_eight_parallel_workers_keep_exact_counts_and_publish_once(ingest: Ingest) -> None:
    uploads = plan_uploads()
    assert len(uploads) >= 190
    for key, data in uploads:
        ingest.put(key, data)
    messages = ingest.receive_all()
    assert len(messages) == len(uploads)
    bodies = [m["Body"] for m in messages]
    deliveries = bodies + random.Random(3).sample(bodies, 30)  # at-least-once: 30 delivered twice
    random.Random(5).shuffle(deliveries)
    errors: list[BaseException] = []

    def worker(chunk: list[str]) -> None:
        for body in chunk:
            try:
                process_s3_events(parse_s3_notification(body), ingest.settings)
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(worker, [deliveries[i::8] for i in range(8)]))
    assert errors == []

    want = expected_counts(uploads)
    assert ingest.counts() == want
    assert all(want[label]["accepted"] >= 40 for label in LABELS)
    # the counters agree with the records themselves
    for label in LABELS:
        for status in ("accepted", "duplicate", "conflict", "rejected"):
            assert len(list(ingest.catalogue.iter_images(status, label=label))) == want[label][status]
    # accepted_seq counts every transition into accepted: a copy accepted before its misfiled twin arrives
    # (then both become conflicts) counts too, so it is at least the final number, at most one per key.
    total_accepted = sum(c["accepted"] for c in want.values())
    valid_keys = sum(c["accepted"] + c["duplicate"] + c["conflict"] for c in want.values())
    assert total_accepted <= ingest.catalogue.state()["accepted_seq"] <= valid_keys
    events = ingest.dataset_ready_events()
    assert len(events) == 1
    assert events[0]["detail"]["reason"] == "threshold"
