"""Training artifacts: download (bounded), tar safety checks and the deterministic repackaging.

MXNet (built-in image-classification) -> the DeepLens ``model.tar.gz``; ONNX (the project's trainer) ->
``model.onnx.tar.gz`` + the edge app ``trashsorter-edge.zip`` for Greengrass v2. The job's own output is
only read.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from botocore.exceptions import ClientError

from trashsorter import aws
from trashsorter import labels as labels_file
from trashsorter.deploy import greengrass_v2
from trashsorter.errors import PackagingError
from trashsorter.job_check import check_artifact_uri
from trashsorter.model_proof import prove_onnx_package
from trashsorter.settings import PackageSettings
from trashsorter_edge.contract import CARD_FILE, LABELS_FILE, METRICS_FILE, MODEL_FILE, MODELS_PREFIX

MXNET_PREFIX = "image-classification"
MAX_ARTIFACT_BYTES = 2 * 1024**3  # compressed model.tar.gz we are willing to download
MAX_MEMBER_BYTES = 1536 * 1024**2  # one member of the tarball
MAX_TOTAL_BYTES = 2 * 1024**3  # all members together, uncompressed (the package function has 4 GiB of /tmp)
MAX_MEMBERS = 256
MAX_METRICS_BYTES = 256 * 1024
MAX_REPORT_BYTES = 64 * 1024**2  # report.html with a data: URI thumbnail per misclassified photo
REPORT_FILE = "report.html"
_CHUNK = 1024 * 1024
_PARAMS_RE = re.compile(r"^(?P<prefix>.+)-(?P<epoch>\d{4})\.params$")


@dataclass(frozen=True)
class PackagedModel:
    """The artifacts written to the DeepLens bucket for one job."""

    model_format: str  # "mxnet" | "onnx"
    artifacts: dict[str, str]  # name -> s3 uri ("deeplens", "onnx", "edge_app")
    members: tuple[str, ...]
    labels: tuple[str, ...]
    evaluation: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    report_uri: str = ""  # the trainer's report.html beside the model ("" when the job wrote none)
    proof: dict[str, Any] = field(default_factory=dict)  # trashsorter.model_proof (ONNX only)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise PackagingError(f"not an s3:// object URI: {uri!r}")
    bucket, key = uri[5:].split("/", 1)
    if not bucket or not key:
        raise PackagingError(f"not an s3:// object URI: {uri!r}")
    return bucket, key


# A training artifact that is not there or may not be read: packaging fails, a retry would too.
_UNREADABLE_CODES = ("NoSuchKey", "404", "NotFound", "NoSuchBucket", "AccessDenied", "403")


def download_artifact(
    uri: str, dest: IO[bytes], *, s3: Any = None, max_bytes: int = MAX_ARTIFACT_BYTES
) -> int:
    """Stream ``uri`` into ``dest`` (<= ``max_bytes``). Missing -> PackagingError; 5xx -> TransientError."""
    bucket, key = parse_s3_uri(uri)
    client = s3 or aws.client("s3")

    def unreadable(exc: ClientError) -> dict[str, Any]:
        raise PackagingError(
            f"training artifact {uri} is missing or unreadable ({aws.error_code(exc)})"
        ) from exc

    response = aws.call(
        lambda: client.get_object(Bucket=bucket, Key=key),
        what=f"download {uri}",
        codes=dict.fromkeys(_UNREADABLE_CODES, unreadable),
    )
    length = int(response.get("ContentLength") or 0)
    if length > max_bytes:
        response["Body"].close()
        raise PackagingError(f"training artifact {uri} is {length} bytes, more than the limit {max_bytes}")
    body = response["Body"]

    def stream() -> int:
        total = 0
        for chunk in iter(lambda: body.read(_CHUNK), b""):
            total += len(chunk)
            if total > max_bytes:
                raise PackagingError(f"training artifact {uri} is larger than the limit {max_bytes}")
            dest.write(chunk)
        return total

    try:
        total = aws.call(stream, what=f"finish the download of {uri}")
    finally:
        body.close()
    dest.flush()
    return total


def _member_name(member: tarfile.TarInfo) -> str:
    name = member.name
    while name.startswith("./"):
        name = name[2:]
    return name


def _check_member(member: tarfile.TarInfo, max_member_bytes: int) -> tuple[str, bool]:
    """Refuse one unsafe member; returns its name and whether it is a root-level regular file."""
    name = _member_name(member)
    parts = Path(name).parts
    if name.startswith("/") or ".." in parts or "\\" in name or "\x00" in name:
        raise PackagingError(f"the training artifact has an unsafe member path {member.name!r}")
    if member.issym() or member.islnk():
        raise PackagingError(f"the training artifact has a link member {member.name!r}")
    if member.isdir():
        return name, False
    if not member.isfile():
        raise PackagingError(f"the training artifact has a special member {member.name!r}")
    if member.size > max_member_bytes:
        raise PackagingError(f"member {name!r} is {member.size} bytes (limit {max_member_bytes})")
    return name, len(parts) == 1 and bool(name)


def read_members(
    path: Path,
    *,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    max_members: int = MAX_MEMBERS,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> dict[str, tarfile.TarInfo]:
    """Check a tarball in one streaming pass and return its root-level regular files by name.

    Each header is checked as it is read, before the next one (and before any member is extracted):
    refuses (PackagingError) not a (gzip) tar, absolute or ``..`` names, links, devices, more than
    ``max_members`` members, a member larger than ``max_member_bytes``, members whose declared sizes add
    up to more than ``max_total_bytes``. Files in sub-folders are ignored.
    """
    found: dict[str, tarfile.TarInfo] = {}
    count = total = 0
    try:
        with tarfile.open(path, mode="r:*") as archive:
            while (member := archive.next()) is not None:
                count += 1
                if count > max_members:
                    raise PackagingError(f"the training artifact has more than {max_members} members")
                name, keep = _check_member(member, max_member_bytes)
                total += member.size if member.isfile() else 0
                if total > max_total_bytes:
                    raise PackagingError(
                        f"the training artifact's members add up to more than {max_total_bytes} bytes"
                    )
                if keep:
                    found[name] = member
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise PackagingError(f"the training artifact is not a readable tar archive: {exc}") from exc
    return found


@contextmanager
def _open_member(path: Path, member: tarfile.TarInfo) -> Iterator[IO[bytes]]:
    try:
        with tarfile.open(path, mode="r:*") as archive:
            handle = archive.extractfile(member)
            if handle is None:
                raise PackagingError(f"member {member.name!r} cannot be read")
            with handle:
                yield handle
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise PackagingError(f"member {member.name!r} of the training artifact is corrupt: {exc}") from exc


def _read_member(path: Path, member: tarfile.TarInfo, limit: int) -> bytes:
    with _open_member(path, member) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise PackagingError(f"member {member.name!r} is larger than {limit} bytes")
    return data


def artifact_format(members: Mapping[str, tarfile.TarInfo]) -> str:
    """``onnx`` (local trainer: model.onnx) or ``mxnet`` (SageMaker image-classification)."""
    if MODEL_FILE in members:
        return "onnx"
    if any(name.endswith("-symbol.json") for name in members) or any(_PARAMS_RE.match(n) for n in members):
        return "mxnet"
    raise PackagingError(
        "the training artifact holds neither model.onnx nor an MXNet symbol/params pair: "
        f"{sorted(members) or 'no files'}"
    )


class _Writer:
    """A deterministic ``.tar.gz`` (fixed mtime/owner/mode): the same inputs give the same bytes."""

    def __init__(self, path: Path) -> None:
        self._raw = path.open("wb")
        self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0)
        self._tar = tarfile.open(fileobj=self._gz, mode="w", format=tarfile.PAX_FORMAT)
        self.names: list[str] = []

    def _info(self, name: str, size: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uid, info.gid = size, 0, 0o644, 0, 0
        info.uname = info.gname = ""
        return info

    def add_bytes(self, name: str, data: bytes) -> None:
        self._tar.addfile(self._info(name, len(data)), io.BytesIO(data))
        self.names.append(name)

    def add_stream(self, name: str, handle: IO[bytes], size: int) -> None:
        self._tar.addfile(self._info(name, size), handle)
        self.names.append(name)

    def close(self) -> None:
        self._tar.close()
        self._gz.close()
        self._raw.close()


def repackage_mxnet(source: Path, labels: Sequence[str], dest: Path) -> tuple[str, ...]:
    """The recipe's manual step: symbol + newest params renamed ``-0000.params`` + labels.txt."""
    members = read_members(source)
    symbols = sorted(name for name in members if name.endswith("-symbol.json"))
    params = sorted(
        (int(match.group("epoch")), name) for name in members if (match := _PARAMS_RE.match(name)) is not None
    )
    if not symbols:
        raise PackagingError("the training artifact has no *-symbol.json (MXNet symbol)")
    if not params:
        raise PackagingError("the training artifact has no *-NNNN.params (MXNet parameters)")
    symbol_name = f"{MXNET_PREFIX}-symbol.json" if f"{MXNET_PREFIX}-symbol.json" in symbols else symbols[0]
    prefix = symbol_name[: -len("-symbol.json")]
    params = [(epoch, name) for epoch, name in params if name == f"{prefix}-{epoch:04d}.params"]
    if not params:  # a params file of another prefix is not this symbol's weights
        raise PackagingError(f"the training artifact has no {prefix}-NNNN.params matching {symbol_name}")
    symbol = _read_member(source, members[symbol_name], 64 * 1024 * 1024)
    try:
        graph = json.loads(symbol)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackagingError(f"{symbol_name} is not valid JSON: {exc}") from exc
    if not isinstance(graph, dict) or not isinstance(graph.get("nodes"), list) or not graph["nodes"]:
        raise PackagingError(f"{symbol_name} is not an MXNet symbol (no nodes)")
    params_member = members[params[-1][1]]
    if params_member.size == 0:
        raise PackagingError(f"{params_member.name} is empty")
    if not labels:
        raise PackagingError("the dataset has no labels.txt labels")
    writer = _Writer(dest)
    try:
        writer.add_bytes(f"{MXNET_PREFIX}-symbol.json", symbol)
        with _open_member(source, params_member) as handle:
            writer.add_stream(f"{MXNET_PREFIX}-0000.params", handle, params_member.size)
        writer.add_bytes(labels_file.FILE_NAME, labels_file.render(labels).encode())
    finally:
        writer.close()
    return tuple(writer.names)


def repackage_onnx(source: Path, labels: Sequence[str], dest: Path) -> tuple[tuple[str, ...], dict[str, Any]]:
    """model.onnx + labels.txt + metrics.json (+ model.json when present); returns names and metrics.json."""
    members = read_members(source)
    if MODEL_FILE not in members or members[MODEL_FILE].size == 0:
        raise PackagingError("the training artifact has no (non-empty) model.onnx")
    evaluation: dict[str, Any] = {}
    if METRICS_FILE in members:
        raw = _read_member(source, members[METRICS_FILE], MAX_METRICS_BYTES * 16)
        try:
            loaded = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PackagingError(f"metrics.json is not valid JSON: {exc}") from exc
        evaluation = loaded if isinstance(loaded, dict) else {}
    else:
        raw = b"{}"
    if LABELS_FILE in members:
        own = labels_file.parse(
            _read_member(source, members[LABELS_FILE], labels_file.MAX_LABELS_BYTES).decode(
                "utf-8", "replace"
            )
        )
        labels = own or list(labels)
    if not labels:
        raise PackagingError("neither the artifact nor the dataset has labels")
    writer = _Writer(dest)
    try:
        with _open_member(source, members[MODEL_FILE]) as handle:
            writer.add_stream(MODEL_FILE, handle, members[MODEL_FILE].size)
        writer.add_bytes(labels_file.FILE_NAME, labels_file.render(labels).encode())
        writer.add_bytes(METRICS_FILE, raw)
        if CARD_FILE in members:
            writer.add_bytes(CARD_FILE, _read_member(source, members[CARD_FILE], MAX_METRICS_BYTES))
    finally:
        writer.close()
    return tuple(writer.names), evaluation


def copy_report(source: Path, members: Mapping[str, tarfile.TarInfo], dest: Path) -> Path | None:
    """The trainer's ``report.html`` (checked, <= MAX_REPORT_BYTES) -> ``dest``; None if absent."""
    member = members.get(REPORT_FILE)
    if member is None:
        return None
    dest.write_bytes(_read_member(source, member, MAX_REPORT_BYTES))
    return dest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _upload(s3: Any, path: Path, bucket: str, key: str, *, content_type: str, model_id: str) -> str:

    def put() -> None:
        with path.open("rb") as handle:
            s3.put_object(
                Bucket=bucket,
                Key=key,
                Body=handle,
                ContentType=content_type,
                Metadata={"model-id": model_id, "sha256": _sha256(path)},
            )

    aws.call(put, what=f"upload s3://{bucket}/{key}")
    return f"s3://{bucket}/{key}"


def package_artifact(
    *, job_name: str, source_uri: str, labels: Sequence[str], settings: PackageSettings, s3: Any = None
) -> PackagedModel:
    """Download the job's ``model.tar.gz`` to /tmp, repackage it and write it to the DeepLens bucket.

    MXNet -> ``models/<job>/model.tar.gz``; ONNX -> ``models/<job>/model.onnx.tar.gz`` (+ the edge app
    ``trashsorter-edge.zip`` for Greengrass v2, + the trainer's ``report.html`` when the job wrote one).
    The job's own output is only read, never written.
    """
    client = s3 or aws.client("s3")
    if not source_uri:
        raise PackagingError("the training job reported no ModelArtifacts.S3ModelArtifacts")
    check_artifact_uri(source_uri, bucket=settings.images_bucket, job_name=job_name)
    with tempfile.TemporaryDirectory(prefix="trashsorter-package-") as tmp:
        source = Path(tmp) / "source.tar.gz"
        with source.open("wb") as handle:
            download_artifact(source_uri, handle, s3=client)
        members = read_members(source)
        model_format = artifact_format(members)
        prefix = f"{MODELS_PREFIX}{job_name}/"
        if model_format == "mxnet":
            out = Path(tmp) / "model.tar.gz"
            names = repackage_mxnet(source, labels, out)
            source.unlink()
            uri = _upload(
                client,
                out,
                settings.deeplens_bucket,
                prefix + "model.tar.gz",
                content_type="application/gzip",
                model_id=job_name,
            )
            return PackagedModel("mxnet", {"deeplens": uri}, names, tuple(labels), sha256=_sha256(out))
        out = Path(tmp) / "model.onnx.tar.gz"
        names, evaluation = repackage_onnx(source, labels, out)
        proof = prove_onnx_package(out)  # before anything is uploaded: the device's loader, a fixed image
        report = copy_report(source, members, Path(tmp) / REPORT_FILE)
        source.unlink()
        report_uri = ""
        if report is not None:
            report_uri = _upload(
                client,
                report,
                settings.deeplens_bucket,
                prefix + REPORT_FILE,
                content_type="text/html; charset=utf-8",
                model_id=job_name,
            )
        uri = _upload(
            client,
            out,
            settings.deeplens_bucket,
            prefix + "model.onnx.tar.gz",
            content_type="application/gzip",
            model_id=job_name,
        )
        uris = {"onnx": uri}
        app = greengrass_v2.write_app_archive(Path(tmp) / greengrass_v2.APP_ARCHIVE)
        if app is not None:
            uris["edge_app"] = _upload(
                client,
                app,
                settings.deeplens_bucket,
                prefix + greengrass_v2.APP_ARCHIVE,
                content_type="application/zip",
                model_id=job_name,
            )
        own_labels = (
            tuple(evaluation.get("labels") or labels) if isinstance(evaluation.get("labels"), list) else ()
        )
        return PackagedModel(
            "onnx",
            uris,
            names,
            own_labels or tuple(labels),
            evaluation=evaluation,
            sha256=_sha256(out),
            report_uri=report_uri,
            proof=proof,
        )
