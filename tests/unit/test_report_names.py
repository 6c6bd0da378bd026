"""The report names a missed photo by its original key: the job's ``manifest`` channel (the snapshot's
manifest.jsonl) maps the content-addressed copy it read back to the key the photo was uploaded under."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image

from trashsorter_trainer.data import Sample
from trashsorter_trainer.entry import misclassified, original_names

COPY = "datasets/objects/" + "ab" * 32 + ".jpg"


def _manifest(folder: Path) -> dict[str, str]:
    folder.mkdir()
    entries = [
        {
            "key": "images/Landfill/trash/trash7.jpg",
            "s3_key": COPY,
            "label": "Landfill",
            "split": "validation",
        },
        {
            "key": "images/Compost/x.jpg",
            "s3_key": "",
            "label": "Compost",
            "split": "train",
        },  # converted later
    ]
    (folder / "manifest.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries) + "not json\n")
    return {"SM_CHANNEL_MANIFEST": str(folder)}


def test_original_names_come_from_the_manifest_channel(tmp_path: Path) -> None:
    assert original_names(_manifest(tmp_path / "manifest")) == {COPY: "Landfill/trash/trash7.jpg"}
    assert original_names({"SM_CHANNEL_MANIFEST": str(tmp_path / "absent")}) == {}


def test_a_missed_photo_carries_its_original_name(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (80, 60), (90, 90, 90)).save(buffer, format="JPEG")
    samples = [
        Sample(COPY, "Landfill", "validation", buffer.getvalue()),
        Sample("datasets/objects/other.jpg", "Landfill", "validation", buffer.getvalue()),
    ]
    result = SimpleNamespace(
        validation_samples=samples, validation_probabilities=np.array([[0.2, 0.8], [0.3, 0.7]])
    )
    names = original_names(_manifest(tmp_path / "manifest"))
    missed = misclassified(result, ["Landfill", "Recycling"], names)
    assert [(m["key"], m["name"]) for m in missed] == [
        (COPY, "Landfill/trash/trash7.jpg"),
        ("datasets/objects/other.jpg", "datasets/objects/other.jpg"),  # not in the manifest: its key
    ]
    assert all(m["thumbnail"].startswith("data:image/jpeg;base64,") for m in missed)
