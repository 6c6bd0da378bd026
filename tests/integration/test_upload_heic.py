"""``trashsorter upload`` refuses HEIC/HEIF before uploading, with the same hint as the ingest rejection."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from tests.support import hostile
from trashsorter.validation import HEIC_HINT
from trashsorter_cli.commands import data
from trashsorter_cli.targets import Target
from trashsorter_cli.ui import UI

pytestmark = pytest.mark.integration

# The first bytes of an iPhone photo: an ISO-BMFF 'ftyp' box with the HEIC brand (the rest is irrelevant).
HEIC_HEAD = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(200)


def test_heic_files_are_refused_before_upload_with_the_ingest_hint(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    (root / "Compost").mkdir(parents=True)
    shutil.copy(hostile.real_photo("glass"), root / "Compost" / "ok.jpg")
    (root / "Compost" / "IMG_0001.HEIC").write_bytes(HEIC_HEAD)
    (root / "Compost" / "renamed.jpg").write_bytes(HEIC_HEAD)  # the name does not count, the content does
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="images")
        target = Target("stack", "t", "us-east-1", {"ImagesBucketName": "images"})
        plan = data.plan_upload(root, ["Compost", "Landfill", "Recycling"])
        out = io.StringIO()
        result = data.upload(target, plan, UI(stream=out), s3=s3)
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="images").get("Contents", [])]
    assert keys == ["images/Compost/ok.jpg"]
    assert sorted(Path(p).name for p in result["refused_heic"]) == ["IMG_0001.HEIC", "renamed.jpg"]
    lines = [line for line in out.getvalue().splitlines() if "HEIC" in line]
    assert len(lines) == 1
    assert lines[0] == f"not uploaded: 2 HEIC/HEIF file(s) (IMG_0001.HEIC, renamed.jpg). {HEIC_HINT}"
    assert "Most Compatible" in lines[0]
