"""moto's SQS with :mod:`trashsorter_cli.local.moto_sqs` answers as moto's own code does.

The same story runs once with moto's own clock and retention check and once with the patch, each in a fresh
``mock_aws``: sends (plain, delayed, FIFO with content-based deduplication), receives, a message past the
queue's retention period, and the approximate counts. Both runs must tell the same story, and the story
must be the one SQS documents (an expired message is never received; a FIFO duplicate is dropped).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from tests.support.stack import REGION
from trashsorter_cli.local import moto_sqs

COUNTS = (
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
)


@pytest.fixture
def patched_back() -> Iterator[None]:
    yield
    moto_sqs.install()  # the tests after this one run with the patch, as every run does


def counts(sqs: Any, url: str) -> dict[str, str]:
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    named = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=list(COUNTS))["Attributes"]
    assert {name: attributes[name] for name in COUNTS} == named
    return named


def age_first_message(queue_name: str, seconds: int) -> None:
    """Move the oldest message's send time back by ``seconds`` (what waiting that long would do)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.sqs.models import sqs_backends

    queue = sqs_backends[DEFAULT_ACCOUNT_ID][REGION].queues[queue_name]
    queue._messages[0].sent_timestamp -= seconds * 1000


def story() -> list[Any]:
    """What a client sees of one queue's life, without ids, receipt handles and timestamps."""
    told: list[Any] = []
    with mock_aws():
        sqs = boto3.client("sqs", region_name=REGION)
        url = sqs.create_queue(QueueName="story", Attributes={"MessageRetentionPeriod": "60"})["QueueUrl"]
        for n in range(5):
            sqs.send_message(QueueUrl=url, MessageBody=f"m{n}")
        sqs.send_message(QueueUrl=url, MessageBody="later", DelaySeconds=30)
        told.append(("after sends", counts(sqs, url)))
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=2, VisibilityTimeout=30)["Messages"]
        told.append(("received", [m["Body"] for m in got]))
        told.append(("after receive", counts(sqs, url)))
        age_first_message("story", 61)  # m0, received above, is now past the 60 s retention period
        sqs.change_message_visibility(
            QueueUrl=url, ReceiptHandle=got[0]["ReceiptHandle"], VisibilityTimeout=0
        )
        again = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=30)
        told.append(("after expiry", sorted(m["Body"] for m in again.get("Messages", []))))
        told.append(("at the end", counts(sqs, url)))

        fifo = sqs.create_queue(
            QueueName="story.fifo", Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"}
        )["QueueUrl"]
        for _ in range(2):
            sqs.send_message(QueueUrl=fifo, MessageBody="same", MessageGroupId="g")
        told.append(("fifo", counts(sqs, fifo)))
    return told


def test_sends_receives_expiry_and_counts_answer_as_moto_does(patched_back: None) -> None:
    moto_sqs.uninstall()
    own = story()
    moto_sqs.install()
    patched = story()
    assert patched == own
    # and what SQS documents: the expired message is not received, the FIFO duplicate is dropped
    assert dict(own)["received"] == ["m0", "m1"]
    assert "m0" not in dict(own)["after expiry"]
    assert dict(own)["after sends"]["ApproximateNumberOfMessagesDelayed"] == "1"
    assert dict(own)["fifo"]["ApproximateNumberOfMessages"] == "1"


def test_the_clock_reads_the_instant_moto_reads(patched_back: None) -> None:
    from moto.core import utils
    from moto.sqs import models

    moto_sqs.install()
    before = utils.unix_time()
    now = models.unix_time()
    after = utils.unix_time()
    assert before - 0.001 <= now <= after + 0.001
    assert abs(models.unix_time_millis() - utils.unix_time_millis()) < 1000
    moment = datetime.datetime(2024, 1, 31, 12, 0, 0)
    assert models.unix_time(moment) == utils.unix_time(moment)
    assert models.unix_time_millis(moment) == utils.unix_time_millis(moment)
