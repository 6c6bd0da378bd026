"""Dataset snapshot planning: hash split, per-label guarantee, manifest / .lst / ManifestFile formats."""

from __future__ import annotations

import hashlib
import io
import json
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.support import hostile
from trashsorter.dataset import (
    TRAIN,
    VALIDATION,
    SnapshotImage,
    assign_splits,
    check_trainable,
    convert_to_jpeg,
    plan_dataset,
    render_channel_manifest,
    render_lst,
    render_manifest_jsonl,
    snapshot_images,
    split_for,
    split_score,
)
from trashsorter.dataset_store import reuse_window
from trashsorter.errors import Rejection, TrainingRuleNotMet
from trashsorter.labels import render as render_labels

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "trashnet"
LABELS = ("Compost", "Landfill", "Recycling")
MAPPING = {"cardboard": "Compost", "paper": "Compost", "plastic": "Landfill", "trash": "Landfill",
           "glass": "Recycling", "metal": "Recycling"}  # fmt: skip


def real_images(per_material: int = 10) -> list[SnapshotImage]:
    images = []
    for material, label in MAPPING.items():
        for path in sorted((SAMPLES / material).glob("*.jpg"))[:per_material]:
            sha = hashlib.sha256(path.read_bytes()).hexdigest()
            images.append(SnapshotImage(f"images/{label}/{material}/{path.name}", sha, label, "JPEG"))
    return images


def fake(label: str, n: int, seed: str = "") -> list[SnapshotImage]:
    return [
        SnapshotImage(
            f"images/{label}/{seed}{i}.jpg", hashlib.sha256(f"{label}{seed}{i}".encode()).hexdigest(), label
        )
        for i in range(n)
    ]


def test_split_is_by_content_hash() -> None:
    assert split_score("00000000" + "f" * 56) == 0.0
    assert split_for("00000000" + "0" * 56, 0.2) == VALIDATION
    assert split_for("33333333" + "0" * 56, 0.2) == VALIDATION  # 0.19999...
    assert split_for("33333334" + "0" * 56, 0.2) == TRAIN
    assert split_for("ffffffff" + "0" * 56, 0.2) == TRAIN


def test_real_photos_plan_fraction_and_determinism() -> None:
    images = real_images()
    plan = plan_dataset(images, labels=LABELS, validation_fraction=0.2, bucket="b")
    again = plan_dataset(list(reversed(images)), labels=LABELS, validation_fraction=0.2, bucket="b")
    assert plan.dataset_id == again.dataset_id and plan.entries == again.entries
    assert len(plan.dataset_id) == 16
    assert len(plan.entries) == 60
    assert 0.05 < plan.num_validation / len(plan.entries) < 0.4
    for label, counts in plan.counts().items():
        assert counts[TRAIN] >= 1 and counts[VALIDATION] >= 1, label
    # every side follows the hash rule unless the label needed the guarantee
    for entry in plan.entries:
        if plan.counts()[entry.label][VALIDATION] > 1:
            assert entry.split == split_for(entry.sha256, 0.2)
    check_trainable(plan)


def test_dataset_id_changes_with_content_labels_and_fraction() -> None:
    images = real_images(3)
    base = plan_dataset(images, labels=LABELS, validation_fraction=0.2, bucket="b").dataset_id
    assert plan_dataset(images[:-1], labels=LABELS, validation_fraction=0.2, bucket="b").dataset_id != base
    assert plan_dataset(images, labels=LABELS[::-1], validation_fraction=0.2, bucket="b").dataset_id != base
    assert plan_dataset(images, labels=LABELS, validation_fraction=0.5, bucket="b").dataset_id != base
    # the bucket is not part of the data
    assert plan_dataset(images, labels=LABELS, validation_fraction=0.2, bucket="other").dataset_id == base


def test_each_label_with_two_images_gets_both_sides_deterministically() -> None:
    # 0.01: by hash alone almost everything is train
    images = fake("Compost", 2) + fake("Landfill", 5) + fake("Recycling", 1)
    sides = assign_splits(images, 0.01)
    for label in ("Compost", "Landfill"):
        members = sorted((i for i in images if i.label == label), key=lambda i: split_score(i.sha256))
        assert sides[members[0].key] == VALIDATION  # smallest hash score moved to validation
        assert {sides[m.key] for m in members[1:]} == {TRAIN}
    # a single image stays where the hash puts it
    lone = next(i for i in images if i.label == "Recycling")
    assert sides[lone.key] == split_for(lone.sha256, 0.01)
    # 0.99: almost everything is validation -> the largest score goes to train
    sides = assign_splits(fake("Compost", 4), 0.99)
    members = sorted(fake("Compost", 4), key=lambda i: split_score(i.sha256))
    assert sides[members[-1].key] == TRAIN
    assert {sides[m.key] for m in members[:-1]} == {VALIDATION}


@settings(max_examples=60, deadline=None)
@given(
    first=st.sets(st.binary(min_size=1, max_size=12), min_size=0, max_size=30),
    more=st.sets(st.binary(min_size=1, max_size=12), min_size=0, max_size=30),
    fraction=st.floats(min_value=0.05, max_value=0.95),
)
def test_adding_images_never_moves_an_existing_image(
    first: set[bytes], more: set[bytes], fraction: float
) -> None:
    def imgs(blobs: set[bytes]) -> list[SnapshotImage]:
        return [
            SnapshotImage(f"images/A/{b.hex()}.jpg", hashlib.sha256(b).hexdigest(), "A")
            for b in sorted(blobs)
        ]

    before = imgs(first)
    after = imgs(first | more)
    # two seed images on opposite sides of the fraction: the label already has both sides by hash alone
    seeds = [
        SnapshotImage("images/A/seed-v.jpg", "00000000" + "a" * 56, "A"),
        SnapshotImage("images/A/seed-t.jpg", "ffffffff" + "a" * 56, "A"),
    ]
    sides_before = assign_splits(before + seeds, fraction)
    sides_after = assign_splits(after + seeds, fraction)
    for image in before + seeds:
        assert sides_before[image.key] == sides_after[image.key]
        assert sides_after[image.key] == split_for(image.sha256, fraction)


def test_identical_bytes_never_on_both_sides_and_conflicts_dropped() -> None:
    sha = hashlib.sha256(b"same").hexdigest()
    images = [
        SnapshotImage("images/A/1.jpg", sha, "A"),
        SnapshotImage("images/A/2.jpg", sha, "A"),  # a duplicate slipped through: one copy kept
        SnapshotImage("images/B/x.jpg", hashlib.sha256(b"c").hexdigest(), "B"),
        SnapshotImage("images/C/x.jpg", hashlib.sha256(b"c").hexdigest(), "A"),  # same bytes, two labels
    ]
    plan = plan_dataset(images, labels=("A", "B"), validation_fraction=0.5, bucket="b")
    assert [e.key for e in plan.entries] == ["images/A/1.jpg"]


def test_snapshot_images_keeps_only_accepted_records() -> None:
    records = [
        {"key": "images/A/1.jpg", "sha256": "a" * 64, "label": "A", "status": "accepted", "format": "WEBP"},
        {"key": "images/A/2.jpg", "sha256": "b" * 64, "label": "A", "status": "duplicate", "format": "JPEG"},
        {"key": "images/A/3.jpg", "sha256": "c" * 64, "label": "A", "status": "conflict", "format": "JPEG"},
        {"key": "images/A/4.jpg", "sha256": "d" * 64, "label": "A", "status": "deleted", "format": "JPEG"},
        {"key": "images/A/5.jpg", "sha256": "e" * 64, "label": "A", "status": "rejected", "format": "JPEG"},
    ]
    assert snapshot_images(records) == [SnapshotImage("images/A/1.jpg", "a" * 64, "A", "WEBP", "")]


def test_file_formats() -> None:
    images = [*real_images(2), SnapshotImage("images/Compost/x.webp", "1" * 64, "Compost", "WEBP"),
              SnapshotImage("images/Landfill/tab\there.png", "2" * 64, "Landfill", "PNG")]  # fmt: skip
    plan = plan_dataset(images, labels=LABELS, validation_fraction=0.3, bucket="bkt")
    lines = render_manifest_jsonl(plan).splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["key"] for r in rows] == sorted(r["key"] for r in rows)
    assert set(rows[0]) == {"key", "sha256", "label", "class_index", "split", "s3_key"}
    by_key = {r["key"]: r for r in rows}
    # content-addressed: no upload key (tab included) reaches a .lst; a conversion's key waits for its bytes
    assert by_key["images/Compost/x.webp"]["s3_key"] == ""
    assert by_key["images/Landfill/tab\there.png"]["s3_key"] == f"datasets/objects/{'2' * 64}.png"
    for row in rows:
        if row["key"].endswith(".jpg"):
            assert row["s3_key"] == f"datasets/objects/{row['sha256']}.jpg"
    assert {r["class_index"] for r in rows if r["label"] == "Recycling"} == {2}

    assert render_labels(plan.labels) == "Compost\nLandfill\nRecycling\n"

    for split in (TRAIN, VALIDATION):
        lst = render_lst(plan, split).splitlines()
        expected = [r for r in rows if r["split"] == split]
        assert len(lst) == len(expected) >= 1
        for index, (line, row) in enumerate(zip(lst, expected, strict=True)):
            assert line.split("\t") == [str(index), str(row["class_index"]), row["s3_key"]]
        channel = json.loads(render_channel_manifest(plan, split))
        assert channel[0] == {"prefix": "s3://bkt/"}
        assert channel[1:] == [r["s3_key"] for r in expected]  # .lst paths are relative to this prefix
        assert render_channel_manifest(plan, split).count("\n") == len(expected) + 1  # one key per line


def test_untrainable_plan_names_the_problem() -> None:
    plan = plan_dataset(fake("A", 1), labels=("A", "B"), validation_fraction=0.2, bucket="b")
    try:
        check_trainable(plan)
    except TrainingRuleNotMet as exc:
        assert "validation" in str(exc) and exc.missing["B"] == 2
    else:
        raise AssertionError("a plan without validation images must not train")


def test_convert_webp_with_alpha_to_jpeg() -> None:
    src = Image.open(sorted((SAMPLES / "glass").glob("*.jpg"))[0]).convert("RGBA")
    src.putpixel((0, 0), (0, 0, 0, 0))
    buf = io.BytesIO()
    src.save(buf, format="WEBP")
    out = Image.open(io.BytesIO(convert_to_jpeg(buf.getvalue())))
    assert out.format == "JPEG" and out.mode == "RGB" and out.size == src.size
    assert out.getpixel((0, 0))[0] > 200  # transparent pixel flattened onto white


def test_convert_to_jpeg_is_bounded_like_the_ingest_step() -> None:
    """A WebP whose decode would need ~220 MB is refused before libwebp allocates its canvases."""
    with pytest.raises(Rejection) as info:
        convert_to_jpeg(hostile.webp_padded_canvas())
    assert info.value.code == "too_costly"
    with pytest.raises(Rejection) as info:
        convert_to_jpeg(hostile.webp_lossless_canvas(6300, 6300))  # 34 bytes, ~800 MB unbounded
    assert info.value.code == "implausible_size"


def test_reuse_window_ends_a_margin_and_a_whole_job_before_the_lifecycle_rule_expires_an_object() -> None:
    # DatasetObjectDays 60, a 2 h job: an object younger than 58 days - 2 h outlives the job by 2 days
    assert reuse_window(60, 7200) == timedelta(days=58, hours=-2)
    # spot: the longest wait counts; a rule too short for margin + job, or unknown, means reuse nothing
    assert reuse_window(60, 14 * 86400) == timedelta(days=44)
    assert reuse_window(2, 0) == reuse_window(3, 2 * 86400) == reuse_window(None) == timedelta(0)


def test_a_shared_client_has_a_connection_for_every_thread_that_stores_a_snapshot() -> None:
    from trashsorter import aws
    from trashsorter.dataset_store import STORE_WORKERS

    assert aws.client("s3").meta.config.max_pool_connections == aws.MAX_POOL_CONNECTIONS >= STORE_WORKERS
