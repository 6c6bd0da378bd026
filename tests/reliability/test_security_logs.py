"""No image bytes and no credentials in the ingest step's logs (DEBUG level, accepted and rejected files)."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Iterator

import pytest

from tests.support import hostile
from tests.support.stack import REGION, StackHandle, put_s3_record
from trashsorter.observability import logger
from trashsorter_cli.local.dispatcher import make_context

pytestmark = pytest.mark.reliability


@pytest.fixture
def debug_logs() -> Iterator[io.StringIO]:
    """Everything the shared Powertools logger writes (at DEBUG), into a buffer."""
    previous = logger.log_level
    handler = logger.registered_handler
    assert isinstance(handler, logging.StreamHandler)
    stream = io.StringIO()
    old_stream = handler.setStream(stream)
    logger.setLevel("DEBUG")
    try:
        yield stream
    finally:
        logger.setLevel(previous)
        handler.setStream(old_stream)


def fingerprints(data: bytes) -> list[str]:
    """Ways image bytes could leak into a log line: base64, hex, Python bytes repr, latin-1 text."""
    window = data[:48]
    found = [
        base64.b64encode(window).decode()[:32],
        window.hex()[:32],
        repr(window)[2:34],
        window[2:24].decode("latin-1"),
        base64.b64encode(data[100:148]).decode()[:32],
    ]
    return [f for f in found if len(f) >= 16]


def test_ingest_logs_never_contain_image_bytes_or_keys(stack: StackHandle, debug_logs: io.StringIO) -> None:
    s3 = stack.client("s3")
    bucket = stack.outputs["ImagesBucketName"]
    files = {
        "images/Compost/banana.jpg": hostile.real_photo_bytes("cardboard"),
        "images/Recycling/bottle.png": hostile.png_from_photo("plastic"),
        "images/Landfill/broken.jpg": hostile.truncated_jpeg("trash"),
        "images/Landfill/page.png": hostile.HTML,
    }
    records = []
    for key, data in files.items():
        records.append(put_s3_record(s3, bucket, key, data))
    app = stack.load_handler("IngestFunction")
    event = {
        "Records": [
            {
                "messageId": f"m{i}",
                "receiptHandle": f"r{i}",
                "body": json.dumps({"Records": [record]}),
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {},
                "md5OfBody": "x",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:ingest",
                "awsRegion": "us-east-1",
            }
            for i, record in enumerate(records)
        ]
    }
    response = app.handler(event, make_context("IngestFunction", region=REGION, memory_mb=2048))
    assert response["batchItemFailures"] == []
    logs = debug_logs.getvalue()
    assert "image catalogued" in logs  # the log lines exist and were captured
    for key, data in files.items():
        assert key in logs
        for fingerprint in fingerprints(data):
            assert fingerprint not in logs, f"bytes of {key} leaked into the logs: {fingerprint!r}"
    assert "testing" not in logs.replace('"testing"', "")  # fake credentials never logged
    for line in logs.splitlines():
        assert len(line) < 8192, "a log line large enough to carry an image"
