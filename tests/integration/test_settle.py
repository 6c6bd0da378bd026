"""Once per batch: a bulk upload starts one training on all of it, uploads during a run one follow-up.

The stack comes from template.yaml with ``IngestSettleSeconds`` = 1: the settle timer is a real SQS message
with ``DelaySeconds`` on the stack's SettleQueue (moto holds it back until the delay has passed, as SQS does),
delivered to the ingest handler like every other message of its event sources.
"""

from __future__ import annotations

import io
import time
from typing import Any

import pytest
from PIL import Image, ImageOps

from tests.support.pipeline import LABELS, Pipeline, fresh_stack, photos
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
