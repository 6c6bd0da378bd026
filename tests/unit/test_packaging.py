"""Unit tests of the package step's pure parts: metrics, gate, tarball checks and the DeepLens repack."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import tracemalloc
from pathlib import Path

import pytest

from tests.support.fixtures.model_artifacts import hostile_tar, mxnet_model_tar, onnx_model_tar, tar_bytes
from tests.support.stack import load_event
from trashsorter.artifacts import (
    MAX_MEMBERS,
    MAX_TOTAL_BYTES,
    artifact_format,
    parse_s3_uri,
    read_members,
    repackage_mxnet,
    repackage_onnx,
)
from trashsorter.errors import PackagingError
from trashsorter.events import TrainingStateChange
from trashsorter.gate import ACCURACY_METRIC, evaluate_gate, final_metrics
from trashsorter.labels import parse as parse_labels

LABELS = ["Compost", "Landfill", "Recycling"]


def _write(tmp_path: Path, data: bytes, name: str = "source.tar.gz") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as archive:
        result = {}
        for member in archive.getmembers():
            handle = archive.extractfile(member)
            assert handle is not None
            result[member.name] = handle.read()
        return result


def metrics_from_detail(detail: dict[str, object]) -> dict[str, float]:
    """The completion step's path: the typed state change, then the gate's reading of its metrics."""
    return final_metrics(TrainingStateChange.from_detail(detail).final_metrics)


def test_metrics_from_completed_event() -> None:
    metrics = metrics_from_detail(load_event("training_completed.json")["detail"])
    assert metrics == {
        "train:accuracy": 0.9618,
        "validation:accuracy": 0.9125,
        "train:accuracy:epoch": 0.9618,
    }


def test_metrics_skip_garbage_entries() -> None:
    detail = {
        "FinalMetricDataList": [
            {"MetricName": "validation:accuracy", "Value": "nan"},
            {"MetricName": "validation:accuracy", "Value": 0.5},
            {"MetricName": "train:accuracy", "Value": None},
            {"Value": 0.3},
            "not a dict",
        ]
    }
    assert metrics_from_detail(detail) == {"validation:accuracy": 0.5}
    assert metrics_from_detail({}) == {}


@pytest.mark.parametrize(
    ("accuracy", "champion", "passed", "words"),
    [
        (0.91, None, True, "no champion yet"),
        (0.79, None, False, "below the minimum 0.8000"),
        (0.8, None, True, ">= 0.8000"),
        (None, 0.9, False, "reported no validation:accuracy"),
        (0.85, 0.90, False, "worse than champion"),
        (0.885, 0.90, True, "within 0.0200 of champion"),
        (0.88, 0.90, True, "within"),  # exactly at the tolerance
        (0.95, 0.90, True, "within"),
    ],
)
def test_gate(accuracy: float | None, champion: float | None, passed: bool, words: str) -> None:
    decision = evaluate_gate(accuracy, champion, min_accuracy=0.8, tolerance=0.02, champion_id="deeplens-old")
    assert decision.passed is passed
    assert words in decision.reason


def test_parse_labels_strips_and_accepts_lst_lines() -> None:
    assert parse_labels("Compost \nLandfill\r\n\n  Recycling\n") == LABELS
    assert parse_labels("0\tCompost\n1\tLandfill\n2\tRecycling\n") == LABELS


def test_parse_s3_uri() -> None:
    assert parse_s3_uri("s3://b/k/model.tar.gz") == ("b", "k/model.tar.gz")
    for bad in ("https://b/k", "s3://b", "s3:///k", "s3://b/"):
        with pytest.raises(PackagingError):
            parse_s3_uri(bad)


def test_repackage_mxnet_renames_newest_params_and_adds_labels(tmp_path: Path) -> None:
    source = _write(tmp_path, mxnet_model_tar(epochs=(5, 10)))
    dest = tmp_path / "out.tar.gz"
    names = repackage_mxnet(source, ["Compost ", "Landfill", "Recycling"], dest)
    assert names == ("image-classification-symbol.json", "image-classification-0000.params", "labels.txt")
    members = _members(dest)
    assert sorted(members) == sorted(names)
    assert members["labels.txt"] == b"Compost\nLandfill\nRecycling\n"
    with tarfile.open(source, "r:gz") as archive:
        newest = archive.extractfile("image-classification-0010.params")
        assert newest is not None
        assert members["image-classification-0000.params"] == newest.read()
        symbol = archive.extractfile("image-classification-symbol.json")
        assert symbol is not None
        assert members["image-classification-symbol.json"] == symbol.read()


def test_repackaged_labels_have_no_trailing_whitespace(tmp_path: Path) -> None:
    source = _write(tmp_path, mxnet_model_tar())
    dest = tmp_path / "out.tar.gz"
    repackage_mxnet(source, parse_labels("Compost  \nLandfill\t\nRecycling\n"), dest)
    assert _members(dest)["labels.txt"] == b"Compost\nLandfill\nRecycling\n"


def test_repackage_is_byte_identical_on_retry(tmp_path: Path) -> None:
    source = _write(tmp_path, mxnet_model_tar())
    first, second = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    repackage_mxnet(source, LABELS, first)
    repackage_mxnet(source, LABELS, second)
    assert hashlib.sha256(first.read_bytes()).digest() == hashlib.sha256(second.read_bytes()).digest()


def test_repackage_onnx(tmp_path: Path) -> None:
    source = _write(tmp_path, onnx_model_tar(accuracy=0.93))
    dest = tmp_path / "model.onnx.tar.gz"
    names, evaluation = repackage_onnx(source, [], dest)
    assert names == ("model.onnx", "labels.txt", "metrics.json", "model.json")
    members = _members(dest)
    assert members["labels.txt"] == b"Compost\nLandfill\nRecycling\n"
    assert json.loads(members["metrics.json"])["validation_accuracy"] == 0.93
    assert evaluation["labels"] == LABELS
    assert "confusion_matrix.png" not in members


def test_artifact_format(tmp_path: Path) -> None:
    assert artifact_format(read_members(_write(tmp_path, mxnet_model_tar(), "m"))) == "mxnet"
    assert artifact_format(read_members(_write(tmp_path, onnx_model_tar(), "o"))) == "onnx"
    with pytest.raises(PackagingError, match=r"neither model\.onnx nor an MXNet"):
        artifact_format(read_members(_write(tmp_path, hostile_tar("empty"), "e")))


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("traversal", "unsafe member path"),
        ("absolute", "unsafe member path"),
        ("symlink", "link member"),
        ("hardlink", "link member"),
        ("device", "special member"),
        ("not_tar", "not a readable tar"),
        ("truncated", "not a readable tar"),
    ],
)
def test_hostile_tarballs_are_refused(tmp_path: Path, kind: str, message: str) -> None:
    with pytest.raises(PackagingError, match=message):
        read_members(_write(tmp_path, hostile_tar(kind)))


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("no_params", r"no \*-NNNN.params"),
        ("no_symbol", r"no \*-symbol.json"),
        ("bad_symbol", "not valid JSON"),
    ],
)
def test_incomplete_mxnet_artifacts_are_refused(tmp_path: Path, kind: str, message: str) -> None:
    with pytest.raises(PackagingError, match=message):
        repackage_mxnet(_write(tmp_path, hostile_tar(kind)), LABELS, tmp_path / "out.tar.gz")
    assert not (tmp_path / "out.tar.gz").exists()


def test_mxnet_without_labels_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PackagingError, match="no labels"):
        repackage_mxnet(_write(tmp_path, mxnet_model_tar()), [], tmp_path / "out.tar.gz")


def test_oversized_member_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PackagingError, match="limit 100"):
        read_members(_write(tmp_path, mxnet_model_tar()), max_member_bytes=100)


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = size, 1715680958
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def _repeated_gzip(block: bytes, times: int) -> bytes:
    """``block`` * ``times`` as gzip, built cheaply: one gzip member compressed once and repeated (a
    concatenation of gzip members is one valid gzip stream, as in a real bomb)."""
    return gzip.compress(block, compresslevel=9, mtime=0) * times


def many_empty_members_tar(count: int) -> bytes:
    """A tar.gz of ``count`` empty members (1.2 million of them fit in a few hundred KB)."""
    chunk = 10_000
    assert count % chunk == 0
    return _repeated_gzip(_header("x", 0) * chunk, count // chunk) + gzip.compress(bytes(1024), mtime=0)


def zero_members_tar(members: int, member_bytes: int) -> bytes:
    """A gzip bomb: ``members`` members of ``member_bytes`` zeros each (sizes honest, data real)."""
    mib = 1024 * 1024
    assert member_bytes % mib == 0
    parts = []
    for i in range(members):
        parts.append(gzip.compress(_header(f"w{i}.params", member_bytes), mtime=0))
        parts.append(_repeated_gzip(bytes(mib), member_bytes // mib))
    return b"".join(parts) + gzip.compress(bytes(1024), mtime=0)


def test_a_tar_of_1_2_million_empty_members_is_refused_at_the_member_limit(tmp_path: Path) -> None:
    path = _write(tmp_path, many_empty_members_tar(1_200_000))
    with tarfile.open(path, "r:gz") as archive:  # the fixture really holds what it says (first members)
        first = [archive.next() for _ in range(3)]
    assert [(m.name, m.size) for m in first if m] == [("x", 0)] * 3
    tracemalloc.start()
    try:
        with pytest.raises(PackagingError, match=f"more than {MAX_MEMBERS} members"):
            read_members(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024  # streamed: the members are never all held (the old check: 581 MB)


def test_a_gzip_bomb_is_refused_by_the_total_bytes_limit(tmp_path: Path) -> None:
    mib = 1024 * 1024
    path = _write(tmp_path, zero_members_tar(8, 4 * mib))  # 32 MiB of zeros in ~40 KB
    assert path.stat().st_size < 64 * 1024
    assert len(read_members(path, max_total_bytes=32 * mib)) == 8  # at the limit: accepted
    with pytest.raises(PackagingError, match=f"add up to more than {16 * mib} bytes"):
        read_members(path, max_total_bytes=16 * mib)
    assert MAX_TOTAL_BYTES < 8 * 1536 * mib  # the 8 x 1.5 GB bomb is over the default limit


def test_mxnet_params_must_match_the_symbol_prefix(tmp_path: Path) -> None:
    own = mxnet_model_tar(epochs=(5,))
    with tarfile.open(fileobj=io.BytesIO(own), mode="r:gz") as archive:
        members = [(m.name, archive.extractfile(m).read()) for m in archive.getmembers()]  # type: ignore[union-attr]
    junk = ("zzz-junk-0099.params", b"\x12\x01" + bytes(64))  # sorts last, newest epoch, other prefix
    dest = tmp_path / "out.tar.gz"
    repackage_mxnet(_write(tmp_path, tar_bytes([*members, junk])), LABELS, dest)
    packaged = _members(dest)["image-classification-0000.params"]
    assert packaged == dict(members)["image-classification-0005.params"] and packaged != junk[1]
    only_junk = [m for m in members if not m[0].endswith(".params")] + [junk]
    with pytest.raises(PackagingError, match=r"no image-classification-NNNN\.params matching"):
        repackage_mxnet(_write(tmp_path, tar_bytes(only_junk), "j.tar.gz"), LABELS, tmp_path / "j.out")


def test_accuracy_metric_name_matches_the_event() -> None:
    names = [m["MetricName"] for m in load_event("training_completed.json")["detail"]["FinalMetricDataList"]]
    assert ACCURACY_METRIC in names
