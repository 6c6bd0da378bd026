"""The feedback loop on the device (real boto3 against moto): unsure or flagged frames are queued, bounded,
uploaded to inbox/<thing>/ with the prediction as metadata, at most N a minute, and kept while offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from PIL import Image

from trashsorter_edge.inbox import Inbox
from trashsorter_edge.sources import Frame

BUCKET = "images-bucket"


def result(label: str = "Compost", confidence: float = 0.41, unsure: bool = True) -> dict[str, Any]:
    top = [{"label": label, "confidence": confidence}, {"label": "Recycling", "confidence": 1 - confidence}]
    return {
        "model_id": "job-1",
        "label": label,
        "confidence": confidence,
        "top_k": top,
        "unsure": unsure,
        "timestamp": "2026-12-01T10:00:00.000Z",
        "source": "0",
        "image": "frame-000001",
    }


def frame(shade: int = 30) -> Frame:
    return Frame(Image.new("RGB", (64, 48), (200, shade, 30)), "0", "frame-000001")


@pytest.fixture
def s3() -> Any:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def keys(s3: Any) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]


def test_unsure_and_flagged_frames_reach_the_inbox_with_the_prediction(s3: Any, tmp_path: Path) -> None:
    inbox = Inbox(tmp_path / "spool", BUCKET, "cam-1", s3=s3)
    inbox.hook(frame(), result(unsure=True))
    inbox.hook(frame(), result(confidence=0.97, unsure=False))  # sure: stays on the device
    inbox.flag()
    inbox.hook(frame(), result(label="Recycling", confidence=0.93, unsure=False))  # flagged by a person
    inbox.hook(frame(), result(confidence=0.98, unsure=False))  # the flag was for one frame only
    assert inbox.drain() == 2
    uploaded = sorted(keys(s3))
    assert len(uploaded) == 2 and all(k.startswith("inbox/cam-1/") and k.endswith(".jpg") for k in uploaded)
    metas = [s3.head_object(Bucket=BUCKET, Key=k) for k in uploaded]
    assert [(m["Metadata"]["reason"], m["Metadata"]["label"]) for m in metas] == [
        ("unsure", "Compost"),
        ("flagged", "Recycling"),
    ]
    assert metas[0]["Metadata"]["model_id"] == "job-1" and metas[0]["Metadata"]["confidence"] == "0.41"
    assert json.loads(metas[0]["Metadata"]["top_k"])[0]["label"] == "Compost"
    assert metas[0]["ContentType"] == "image/jpeg"
    body = s3.get_object(Bucket=BUCKET, Key=uploaded[0])["Body"].read()
    assert body[:2] == b"\xff\xd8" and inbox.pending() == []


def test_queue_is_bounded_and_uploads_are_rate_limited(s3: Any, tmp_path: Path) -> None:
    inbox = Inbox(tmp_path / "spool", BUCKET, "cam-1", s3=s3, max_queue=3, per_minute=2)
    for n in range(5):
        inbox.hook(frame(30 + 40 * n), result())
    assert len(inbox.pending()) == 3 and inbox.counts["dropped"] == 2
    assert inbox.drain(now=1000.0) == 2  # the budget of this minute
    assert inbox.drain(now=1030.0) == 0
    assert inbox.drain(now=1061.0) == 1  # a minute later
    assert len(keys(s3)) == 3


class Offline:
    def __init__(self, real: Any) -> None:
        self.real, self.online = real, False

    def put_object(self, **kwargs: Any) -> Any:
        if not self.online:
            raise ConnectionError("no network")
        return self.real.put_object(**kwargs)


def test_frames_wait_while_offline_and_go_when_back(s3: Any, tmp_path: Path) -> None:
    link = Offline(s3)
    inbox = Inbox(tmp_path / "spool", BUCKET, "cam-1", s3=link)
    inbox.hook(frame(), result())
    assert inbox.drain() == 0 and len(inbox.pending()) == 1 and inbox.counts["failed_attempts"] == 1
    link.online = True
    assert inbox.drain() == 1 and inbox.pending() == [] and len(keys(s3)) == 1


def test_configuration_cannot_lift_the_upload_rate_past_the_ceilings(s3: Any, tmp_path: Path) -> None:
    from trashsorter_edge.inbox import MAX_PER_MINUTE

    inbox = Inbox(tmp_path / "spool", BUCKET, "cam-1", s3=s3, max_queue=500, per_minute=100_000, per_day=90)
    for shade in range(100):
        inbox.hook(frame(2 * shade), result())  # 100 different JPEGs (the same one again is a repeat)
    assert inbox.drain(now=0.0) == MAX_PER_MINUTE  # 60, not 100,000
    assert inbox.drain(now=61.0) == 30  # the day's budget (90) is spent
    assert inbox.drain(now=3600.0) == 0
    assert len(keys(s3)) == 90
    assert inbox.drain(now=86_401.0) == 10  # the first 60 left the 24-hour window: the last 10 frames go


def test_uploads_stay_under_the_devices_own_prefix(s3: Any, tmp_path: Path) -> None:
    for hostile_thing in ("../images/Compost", "cam-1/../../images", "", "cam 1", "x" * 129):
        with pytest.raises(ValueError, match="not an AWS IoT thing name"):
            Inbox(tmp_path / "spool", BUCKET, hostile_thing, s3=s3)
    inbox = Inbox(tmp_path / "spool", BUCKET, "cam-1:line_2", s3=s3)
    inbox.hook(frame(), result())
    assert inbox.drain() == 1
    assert [k.rsplit("/", 1)[0] for k in keys(s3)] == ["inbox/cam-1:line_2"]


def test_the_same_unsure_photo_again_is_a_repeat_not_a_new_inbox_frame(s3: Any, tmp_path: Path) -> None:
    inbox = Inbox(tmp_path / "spool", BUCKET, "cam-1", s3=s3)
    for _ in range(4):
        inbox.hook(frame(), result())  # predict on the same file four times
    inbox.hook(frame(90), result())  # another photo
    assert len(inbox.pending()) == 2 and inbox.counts["repeats"] == 3
    inbox.flag()
    inbox.hook(frame(), result())  # a person flags it: it goes, repeat or not
    assert len(inbox.pending()) == 3
