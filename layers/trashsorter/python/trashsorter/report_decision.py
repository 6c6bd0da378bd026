"""The quality gate's decision, written at the top of the model's report.html.

The trainer writes report.html before the gate decides; it leaves a marked block at the top that says so
(``trashsorter_trainer.contract.REPORT_DECISION_START`` ... ``_END``). Once the completion step knows the
outcome (deployed, registered, rejected) it replaces that block in the copy kept beside the packaged model
(``models/<id>/report.html``), so the page a person opens says first whether the model was deployed and why.
Replacing the marked block is idempotent: a retried event writes the same bytes. A report without the
markers (an older trainer's) is left as it is.
"""

from __future__ import annotations

import hashlib
import html
from typing import Any

from trashsorter import aws
from trashsorter.artifacts import MAX_REPORT_BYTES, parse_s3_uri
from trashsorter_trainer.contract import REPORT_DECISION_END, REPORT_DECISION_START

HEADLINES = {
    "deployed": "Deployed: this model passed the quality gate and is the champion.",
    "registered": "Passed the quality gate; registered, not deployed.",
    "rejected": "Rejected by the quality gate: not deployed; the champion stays.",
}


def decision_block(outcome: str, gate_reason: str, note: str = "") -> str:
    """The HTML between the markers: a headline for ``outcome`` and the gate's reasons (and ``note``: what
    the deployment did) in plain words."""
    headline = HEADLINES.get(outcome, f"Outcome: {outcome}.")
    lines = [f"<p><b>{html.escape(headline)}</b></p>"]
    if gate_reason:
        lines.append(f"<p>Quality gate: {html.escape(gate_reason)}</p>")
    if note and note != gate_reason:
        lines.append(f"<p>{html.escape(note)}</p>")
    css = outcome if outcome in HEADLINES else "registered"
    return f"<section id=decision class={css}>{''.join(lines)}</section>"


def with_decision(page: str, block: str) -> str | None:
    """``page`` with its decision block replaced by ``block``; None when the page has no markers."""
    start = page.find(REPORT_DECISION_START)
    end = page.find(REPORT_DECISION_END, start + 1) if start >= 0 else -1
    if start < 0 or end < 0:
        return None
    return page[: start + len(REPORT_DECISION_START)] + block + page[end:]


def write_decision(report_uri: str, outcome: str, gate_reason: str, note: str = "", *, s3: Any) -> bool:
    """Write the decision into the report at ``report_uri``; False when it has no decision block."""
    bucket, key = parse_s3_uri(report_uri)

    def write() -> bool:
        stored = s3.get_object(Bucket=bucket, Key=key)
        raw = stored["Body"].read(MAX_REPORT_BYTES + 1)
        if len(raw) > MAX_REPORT_BYTES:
            return False
        updated = with_decision(raw.decode("utf-8", "replace"), decision_block(outcome, gate_reason, note))
        if updated is None:
            return False
        body = updated.encode("utf-8")
        if body == raw:
            return True
        metadata = {**stored.get("Metadata", {}), "sha256": hashlib.sha256(body).hexdigest()}
        s3.put_object(
            Bucket=bucket,
            Key=key,
            Body=body,
            ContentType=stored.get("ContentType") or "text/html; charset=utf-8",
            Metadata=metadata,
        )
        return True

    return aws.call(write, what=f"write the gate's decision into {report_uri}")
