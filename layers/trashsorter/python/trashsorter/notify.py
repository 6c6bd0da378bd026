"""SNS notices (run started / blocked / failed, model deployed / gated out)."""

from __future__ import annotations

import json
from typing import Any

from trashsorter import aws
from trashsorter.observability import logger


def notify(
    topic_arn: str, subject: str, message: str, *, details: dict[str, Any] | None = None, sns: Any = None
) -> str | None:
    """Publish one notice; returns the message id, or None when no topic is configured.

    ``subject`` is cut to SNS's 100 characters; ``details`` is appended as JSON for machines.
    """
    if not topic_arn:
        logger.info("no notices topic configured", extra={"subject": subject})
        return None
    body = (
        message
        if not details
        else f"{message}\n\n{json.dumps(details, indent=2, sort_keys=True, default=str)}"
    )
    response = aws.call(
        lambda: (sns or aws.client("sns")).publish(
            TopicArn=topic_arn, Subject=f"[trashsorter] {subject}"[:100], Message=body
        ),
        what=f"publish notice {subject!r}",
    )
    return str(response["MessageId"])
