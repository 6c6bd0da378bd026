"""moto's SQS without a whole-queue recount per message (tested moto versions only).

moto 5.2 checks every message a ``ReceiveMessage`` hands out against the queue's retention period, and reads
that period through ``get_queue_attributes``, which builds *every* attribute of the queue first: three
approximate counts among them, each a walk over all the queue's messages that reads the clock through two
``datetime`` objects per message. A receive from a queue of N messages thus reads the clock O(N²) times,
and each ``SendMessage`` (every S3 event notification) builds all attributes to read one flag. Measured on 2
CPUs: 60 % of the CPU of 1,000 uploads through a moto server with 8 workers went into those clock reads.

Two changes, the same answers:

1. The retention check reads the queue's ``message_retention_period``, the value ``get_queue_attributes``
   returns as ``MessageRetentionPeriod``, and compares it with the clock as moto does.
2. moto's SQS clock without an argument (``unix_time``, ``unix_time_millis``) reads :func:`time.time`, the
   instant moto computes as ``utcnow() - utcfromtimestamp(0)``, without building two datetimes per read.
   freezegun, which moto supports, patches both the same way. With an argument moto's own function runs.

``tests/integration/test_moto_sqs.py`` runs sends, receives, expiry, counts and FIFO deduplication both ways
and compares the answers.
"""

from __future__ import annotations

import time
from typing import Any

_ORIGINALS: dict[str, Any] = {}


def install() -> None:
    """The retention check and the clock above, in moto's SQS models (idempotent)."""
    from moto.sqs import models

    if _ORIGINALS:
        return
    _ORIGINALS.update(
        unix_time=models.unix_time,
        unix_time_millis=models.unix_time_millis,
        retention=models.SQSBackend.is_message_valid_based_on_retention_period,
    )
    seconds, millis = models.unix_time, models.unix_time_millis

    def unix_time(dt: Any = None) -> float:
        return time.time() if dt is None else float(seconds(dt))

    def unix_time_millis(dt: Any = None) -> float:
        return time.time() * 1000.0 if dt is None else float(millis(dt))

    def is_message_valid_based_on_retention_period(self: Any, queue_name: str, message: Any) -> bool:
        retention_period = self.get_queue(queue_name).message_retention_period
        return bool(retention_period + message.sent_timestamp / 1000 > unix_time())

    models.unix_time = unix_time  # type: ignore[assignment]
    models.unix_time_millis = unix_time_millis  # type: ignore[assignment]
    models.SQSBackend.is_message_valid_based_on_retention_period = (  # type: ignore[method-assign]
        is_message_valid_based_on_retention_period
    )


def uninstall() -> None:
    """moto's own clock and retention check again (the equivalence test runs both ways)."""
    from moto.sqs import models

    if not _ORIGINALS:
        return
    models.unix_time = _ORIGINALS["unix_time"]
    models.unix_time_millis = _ORIGINALS["unix_time_millis"]
    models.SQSBackend.is_message_valid_based_on_retention_period = _ORIGINALS["retention"]
    _ORIGINALS.clear()
