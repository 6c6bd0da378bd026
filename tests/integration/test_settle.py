"""Once per batch: a bulk upload starts one training on all of it, uploads during a run one follow-up.

The stack comes from template.yaml with ``IngestSettleSeconds`` = 1: the settle timer is a real SQS message
with ``DelaySeconds`` on the stack's SettleQueue (moto holds it back until the delay has passed, as SQS does),
delivered to the ingest handler like every other message of its event sources.
"""

from __future__ import annotations

import io
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from PIL import Image, ImageOps

from tests.support.pipeline import LABELS, Pipeline, fresh_stack, photos
from trashsorter import clock, threshold
from trashsorter_cli.local.dispatcher import lambda_sqs_record

SETTLE = 1
OVERRIDES = {
    "MinImagesPerLabel": "30",
    "MinNewImages": "10",
    "TrainingAlgorithm": "image-classification",
    "IngestSettleSeconds": str(SETTLE),
}


class Settle:
    """Delivers the settle queue's due messages to the ingest handler, as the SQS event source does."""

    def __init__(self, p: Pipeline) -> None:
        self.p = p
        self.url = p.stack.function_env("IngestFunction")["SETTLE_QUEUE_URL"]
        self.arn = p._arn(self.url)
        self.delivered = 0

    def due(self) -> int:
        messages = self.p.drain(self.url)
        for message in messages:
            record = lambda_sqs_record(message, queue_arn=self.arn, region=self.p.stack.region)
            self.p.invoke_ingest({"Records": [record]})
        self.delivered += len(messages)
        return len(messages)

    def until_quiet(self) -> None:
        """Wait out the settle time and deliver timers until none is armed any more."""
        for _ in range(20):
            time.sleep(SETTLE + 0.2)
            self.due()
            if not self.p.catalogue.state()["settle_due"]:
                return
        raise AssertionError("the settle timer never found ingest quiet")


def settle_record(p: Pipeline, body: dict[str, Any]) -> dict[str, Any]:
    """The settle timer ``body`` as the SQS event source hands it to the ingest function."""
    url = p.stack.function_env("IngestFunction")["SETTLE_QUEUE_URL"]
    message = {"MessageId": "timer", "ReceiptHandle": "timer", "Body": json.dumps(body), "Attributes": {}}
    return lambda_sqs_record(message, queue_arn=p._arn(url), region=p.stack.region)


def variant(data: bytes) -> bytes:
    """The same real photo mirrored and re-encoded: new bytes, a new content hash, a new accepted photo."""
    out = io.BytesIO()
    ImageOps.mirror(Image.open(io.BytesIO(data)).convert("RGB")).save(out, "JPEG", quality=90)
    return out.getvalue()


def upload(p: Pipeline, settle: Settle, items: list[tuple[str, bytes]]) -> None:
    for key, data in items:
        p.put(key, data)
        settle.due()  # timers that came due meanwhile find ingest busy and wait again


@pytest.fixture
def pipeline() -> Any:
    with fresh_stack(OVERRIDES) as stack:
        yield Pipeline(stack)


def sample_upload() -> list[tuple[str, bytes]]:
    """samples/trashnet with its mapping: 180 photos, label after label as a sync would list them."""
    return [(f"images/{label}/{name}", data) for label in LABELS for name, data in photos(label)]


def test_a_bulk_upload_of_180_photos_trains_once_on_all_of_them(pipeline: Pipeline) -> None:
    p, settle = pipeline, Settle(pipeline)
    items = sample_upload()
    assert len(items) == 180
    upload(p, settle, items)
    assert p.dataset_ready() == [], "the rule was met mid-upload, but ingest was not quiet yet"
    assert p.catalogue.state()["settle_due"], "crossing the rule armed the settle timer"
    settle.until_quiet()
    outcomes = p.dataset_ready()
    assert [o["status"] for o in outcomes] == ["started"]
    assert [e["detail"]["reason"] for e in p.published] == ["threshold"]
    assert p.published[0]["detail"]["accepted_seq"] == 180
    (run,) = p.runs()
    assert run["accepted_seq"] == 180
    # more timers change nothing: exactly one "Dataset Ready" for the batch
    settle.due()
    assert p.dataset_ready() == [] and len(p.published) == 1


def test_uploads_during_a_run_queue_one_follow_up_run() -> None:
    small = {**OVERRIDES, "MinImagesPerLabel": "6", "MinNewImages": "6"}
    with fresh_stack(small) as stack:
        p = Pipeline(stack)
        settle = Settle(p)
        pictures = {label: photos(label) for label in LABELS}
        upload(p, settle, [(f"images/{lb}/{n}", d) for lb in LABELS for n, d in pictures[lb][:6]])
        settle.until_quiet()
        p.dataset_ready()
        run1 = p.active_run()
        # two batches of new photos while run 1 trains, each followed by a quiet settle time
        extra = [(f"images/{lb}/mirrored-{n}", variant(d)) for lb in LABELS for n, d in pictures[lb][:4]]
        for batch in (extra[:6], extra[6:]):
            upload(p, settle, batch)
            settle.until_quiet()
            assert p.dataset_ready() == [], "a run holds this baseline: nothing starts while it trains"
        assert len(p.published) == 1
        p.training_finished("training_completed.json", run1)
        outcomes = p.dataset_ready()
        assert [o["status"] for o in outcomes] == ["started"], outcomes
        assert len(p.published) == 2 and p.published[1]["detail"]["new_images"] == 12
        run2 = p.active_run()
        assert run2["run_id"] != run1["run_id"] and run2["accepted_seq"] == 30
        # the follow-up's own end publishes nothing more: no photo arrived during it
        p.training_finished("training_completed.json", run2)
        assert p.dataset_ready() == [] and len(p.published) == 2
        assert [r["status"] for r in p.runs()] == ["completed", "completed"]
        assert p.catalogue.state()["settle_due"] == ""


class Clock:
    """``trashsorter.clock.now`` held still and moved by hand (SQS's own clock is left alone)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.at = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
        monkeypatch.setattr(clock, "now", lambda: self.at)
        monkeypatch.setattr(threshold, "now", lambda: self.at)

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


def test_a_timer_that_finds_new_photos_waits_only_for_the_rest_of_the_quiet_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Quiet for the settle time means that long after the NEWEST photo: a timer that finds photos accepted
    since it was armed waits for the rest of that time, not for another whole settle time."""
    small = {**OVERRIDES, "MinImagesPerLabel": "2", "MinNewImages": "2", "IngestSettleSeconds": "60"}
    with fresh_stack(small) as stack:
        p, now = Pipeline(stack), Clock(monkeypatch)
        pictures = {label: photos(label)[:3] for label in LABELS}
        for label in LABELS:
            for name, data in pictures[label][:2]:
                p.put(f"images/{label}/{name}", data)  # the rule is met at the 6th: the timer is armed
        first = p.catalogue.state()
        assert first["settle_due"] == clock.iso(now.at + timedelta(seconds=60))
        now.advance(20)
        name, data = pictures["Landfill"][2]
        p.put(f"images/Landfill/{name}", data)  # ingest busy again 20 s into the settle time
        assert p.catalogue.state()["accepted_at"] == clock.iso(now.at)
        now.advance(40)

        def timer_arrives(armed_at_seq: int, due: str) -> None:
            body = {"settle_timer": {"accepted_seq": armed_at_seq, "due": due}}
            p.invoke_ingest({"Records": [settle_record(p, body)]})

        timer_arrives(first["accepted_seq"], first["settle_due"])  # armed at 6, it finds 7
        second = p.catalogue.state()
        assert second["settle_due"] == clock.iso(now.at + timedelta(seconds=20)), (
            "20 s after the newest photo"
        )
        assert p.dataset_ready() == []
        now.advance(20)
        timer_arrives(7, second["settle_due"])
        assert [o["status"] for o in p.dataset_ready()] == ["started"]
        assert p.published[0]["detail"]["accepted_seq"] == 7
        assert p.catalogue.state()["settle_due"] == ""


def test_the_rest_of_the_quiet_time_is_whole_seconds_within_the_settle_time() -> None:
    ago = lambda seconds: clock.iso(clock.now() - timedelta(seconds=seconds))  # noqa: E731
    assert threshold.rest_of_quiet_time(60, ago(20)) in (40, 41)  # rounded up, never early
    assert threshold.rest_of_quiet_time(60, ago(59.5)) == 1
    assert threshold.rest_of_quiet_time(60, ago(600)) == 1  # a late timer still waits a moment
    assert threshold.rest_of_quiet_time(60, clock.iso(clock.now() + timedelta(seconds=5))) == 60  # skew
    assert threshold.rest_of_quiet_time(60, "") == 60  # a state written before accepted_at existed
