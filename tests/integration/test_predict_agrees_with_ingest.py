"""`trashsorter predict` refuses what ingest refuses, under the stack's own limits, not the defaults."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from PIL import Image

from tests.support import hostile
from tests.support.ingest import Ingest
from tests.support.stack import StackHandle
from trashsorter.settings import IngestSettings
from trashsorter_cli.commands.pipeline import _checked_image
from trashsorter_cli.targets import Target
from trashsorter_cli.ui import CliError

pytestmark = pytest.mark.integration


@pytest.fixture
def stack_overrides() -> dict[str, str]:
    # Not the defaults: a 15:1 panorama passes at 20:1, a 60 px side is too small at 80.
    return {"MaxAspectRatio": "20", "MinImageSide": "80"}


@pytest.fixture
def ingest(stack_overrides: dict[str, str], stack: StackHandle) -> Iterator[Ingest]:
    yield Ingest(stack)


def _jpeg(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (120, 90, 60)).save(out, format="JPEG")
    return out.getvalue()


CASES = {
    "panorama-15-to-1.jpg": _jpeg((1500, 100)),  # default MaxAspectRatio 10 refuses it; this stack accepts
    "wide-25-to-1.jpg": _jpeg((2500, 100)),
    "small-side-70.jpg": _jpeg((300, 70)),  # default MinImageSide 64 accepts it; this stack refuses
    "photo.jpg": hostile.real_photo_bytes("glass", 0),
}


def test_predict_and_ingest_give_the_same_verdict_with_the_stacks_limits(
    ingest: Ingest, stack: StackHandle, tmp_path
) -> None:
    env = stack.function_env("IngestFunction")
    target = Target("stack", "t", "us-east-1", {}, environments={"IngestFunction": env})
    settings = target.settings(IngestSettings, "IngestFunction")
    assert (settings.max_aspect_ratio, settings.min_image_side) == (20.0, 80)
    predict_verdicts, ingest_verdicts = {}, {}
    for name, data in CASES.items():
        ingest.put(f"images/Compost/{name}", data)
        path = tmp_path / name
        path.write_bytes(data)
        try:
            _checked_image(path, settings)
            predict_verdicts[name] = "accepted"
        except CliError as exc:
            predict_verdicts[name] = str(exc).split(":")[1].strip()  # "ingest would refuse it: <code>: ..."
    ingest.drain()
    for name in CASES:
        record = ingest.catalogue.get_image(f"images/Compost/{name}")
        assert record is not None
        ingest_verdicts[name] = record["status"] if record["status"] == "accepted" else record["reason_code"]
    assert ingest_verdicts == {
        "panorama-15-to-1.jpg": "accepted",
        "wide-25-to-1.jpg": "extreme_aspect_ratio",
        "small-side-70.jpg": "too_small",
        "photo.jpg": "accepted",
    }
    assert predict_verdicts == ingest_verdicts
