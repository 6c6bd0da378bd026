"""Training completion: metrics, quality gate, DeepLens package, model registry, deploy, notices.

Entry point: :func:`handle_training_state_change` (one "SageMaker Training Job State Change" event);
rollback / manual deploy: :func:`redeploy`.

Idempotency (a replayed event changes nothing; a crash half-way is safe to retry):

* the run carries ``handled_statuses`` (a string set); a status already in it -> ``duplicate`` at once;
* while a status is being handled the run carries ``package_claim_<status>`` (a lease of
  :data:`CLAIM_LEASE_SECONDS`), so two concurrent deliveries do not both deploy;
* every step below is idempotent on its own, and the status is marked handled only after the last one:
  S3 puts of byte-identical, deterministic tarballs at fixed keys; a conditional registry put (a second
  attempt reads the first record and continues from its gate decision); promotion is a no-op for the
  champion; each deployment target writes ``MODEL#<id>/DEPLOY#<target>#initial`` and a target already
  recorded as requested is not called again (the Greengrass v2 component version is recorded *before*
  publishing and calls carry idempotency tokens); ``finish_run`` is idempotent; the baseline only grows.
  A crash after the notice and before the mark can send one notice twice (at-least-once notices).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import tarfile
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from botocore.exceptions import BotoCoreError, ClientError

from trashsorter import aws, registry, training
from trashsorter.deploy import (
    TARGET_GREENGRASS_V1,
    TARGET_GREENGRASS_V2,
    TARGET_LOCAL_DEVICE,
    DeploymentResult,
    greengrass_v1,
    greengrass_v2,
    local_device,
)
from trashsorter.errors import (
    ConfigurationError,
    DeploymentError,
    NotFoundError,
    PackagingError,
    TransientError,
)
from trashsorter.notify import notify
from trashsorter.observability import logger
from trashsorter.schema import (
    JOB_PREFIX,
    SAGEMAKER_SOURCE,
    TRAINING_STATE_CHANGE,
    ModelStatus,
    RunStatus,
    dataset_key,
    run_key,
)
from trashsorter.settings import PackageSettings

ACCURACY_METRIC = "validation:accuracy"
MXNET_PREFIX = "image-classification"
MAX_ARTIFACT_BYTES = 2 * 1024**3  # compressed model.tar.gz we are willing to download
MAX_MEMBER_BYTES = 1536 * 1024**2  # one member of the tarball
MAX_MEMBERS = 256
MAX_LABELS_BYTES = 1024 * 1024
MAX_METRICS_BYTES = 256 * 1024
CLAIM_LEASE_SECONDS = 900  # > the function timeout (300 s)
INITIAL_REQUEST = "initial"
_CHUNK = 1024 * 1024
_PARAMS_RE = re.compile(r"^(?P<prefix>.+)-(?P<epoch>\d{4})\.params$")
_FAILED_STATUSES = {"Failed": RunStatus.FAILED, "Stopped": RunStatus.STOPPED}


# ----------------------------------------------------------------------------------------------- results
@dataclass
class PackageOutcome:
    """What handling one event (or one redeploy) did."""

    job_name: str
    job_status: str
    outcome: str  # deployed | registered | rejected | failed | stopped | duplicate | ignored
    run_id: str = ""
    model_id: str = ""
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    deployments: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str


@dataclass(frozen=True)
class PackagedModel:
    """The artifacts written to the DeepLens bucket for one job."""

    model_format: str  # "mxnet" | "onnx"
    artifacts: dict[str, str]  # name -> s3 uri ("deeplens", "onnx", "classifier")
    members: tuple[str, ...]
    labels: tuple[str, ...]
    evaluation: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""


# ----------------------------------------------------------------------------------------------- metrics
def metrics_from_detail(detail: Mapping[str, Any]) -> dict[str, float]:
    """``FinalMetricDataList`` as ``{name: value}`` (the last entry of a name wins, non-numbers dropped)."""
    metrics: dict[str, float] = {}
    for entry in detail.get("FinalMetricDataList") or []:
        if not isinstance(entry, Mapping):
            continue
        name = entry.get("MetricName")
        try:
            value = float(entry["Value"])
        except (KeyError, TypeError, ValueError):
            continue
        if name and value == value:  # NaN is not a metric
            metrics[str(name)] = value
    return metrics


def evaluate_gate(
    accuracy: float | None,
    champion_accuracy: float | None,
    *,
    min_accuracy: float,
    tolerance: float,
    champion_id: str = "",
) -> GateDecision:
    """Deploy only when accuracy >= ``min_accuracy`` and not worse than the champion by > ``tolerance``."""
    eps = 1e-9
    if accuracy is None:
        return GateDecision(False, f"the job reported no {ACCURACY_METRIC}")
    if accuracy + eps < min_accuracy:
        return GateDecision(
            False, f"{ACCURACY_METRIC} {accuracy:.4f} is below the minimum {min_accuracy:.4f}"
        )
    if champion_accuracy is not None and accuracy + eps < champion_accuracy - tolerance:
        return GateDecision(
            False,
            f"{ACCURACY_METRIC} {accuracy:.4f} is worse than champion {champion_id} "
            f"({champion_accuracy:.4f}) by more than the tolerance {tolerance:.4f}",
        )
    if champion_accuracy is None:
        return GateDecision(True, f"{ACCURACY_METRIC} {accuracy:.4f} >= {min_accuracy:.4f}; no champion yet")
    return GateDecision(
        True,
        f"{ACCURACY_METRIC} {accuracy:.4f} >= {min_accuracy:.4f} and within {tolerance:.4f} of champion "
        f"{champion_id} ({champion_accuracy:.4f})",
    )


# ----------------------------------------------------------------------------------------------- artifacts
def parse_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise PackagingError(f"not an s3:// object URI: {uri!r}")
    bucket, key = uri[5:].split("/", 1)
    if not bucket or not key:
        raise PackagingError(f"not an s3:// object URI: {uri!r}")
    return bucket, key


def download_artifact(
    uri: str, dest: IO[bytes], *, s3: Any = None, max_bytes: int = MAX_ARTIFACT_BYTES
) -> int:
    """Stream ``uri`` into ``dest`` (<= ``max_bytes``). Missing -> PackagingError; 5xx -> TransientError."""
    bucket, key = parse_s3_uri(uri)
    client = s3 or aws.client("s3")
    try:
        response = client.get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        code = aws.error_code(exc)
        if code in ("NoSuchKey", "404", "NotFound", "NoSuchBucket", "AccessDenied", "403"):
            raise PackagingError(f"training artifact {uri} is missing or unreadable ({code})") from exc
        raise TransientError(f"could not download {uri}: {exc}") from exc
    except BotoCoreError as exc:
        raise TransientError(f"could not download {uri}: {exc}") from exc
    length = int(response.get("ContentLength") or 0)
    if length > max_bytes:
        response["Body"].close()
        raise PackagingError(f"training artifact {uri} is {length} bytes, more than the limit {max_bytes}")
    total = 0
    body = response["Body"]
    try:
        for chunk in iter(lambda: body.read(_CHUNK), b""):
            total += len(chunk)
            if total > max_bytes:
                raise PackagingError(f"training artifact {uri} is larger than the limit {max_bytes}")
            dest.write(chunk)
    except BotoCoreError as exc:
        raise TransientError(f"download of {uri} broke off: {exc}") from exc
    finally:
        body.close()
    dest.flush()
    return total


def _member_name(member: tarfile.TarInfo) -> str:
    name = member.name
    while name.startswith("./"):
        name = name[2:]
    return name


def read_members(path: Path, *, max_member_bytes: int = MAX_MEMBER_BYTES) -> dict[str, tarfile.TarInfo]:
    """Check a tarball and return its root-level regular files by name.

    Refuses (PackagingError): not a (gzip) tar, absolute or ``..`` names, links, devices, too many members,
    members larger than ``max_member_bytes``. Files in sub-folders are ignored.
    """
    try:
        with tarfile.open(path, mode="r:*") as archive:
            members = archive.getmembers()
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise PackagingError(f"the training artifact is not a readable tar archive: {exc}") from exc
    if len(members) > MAX_MEMBERS:
        raise PackagingError(f"the training artifact has {len(members)} members (limit {MAX_MEMBERS})")
    found: dict[str, tarfile.TarInfo] = {}
    for member in members:
        name = _member_name(member)
        parts = Path(name).parts
        if name.startswith("/") or ".." in parts or "\\" in name or "\x00" in name:
            raise PackagingError(f"the training artifact has an unsafe member path {member.name!r}")
        if member.issym() or member.islnk():
            raise PackagingError(f"the training artifact has a link member {member.name!r}")
        if member.isdir():
            continue
        if not member.isfile():
            raise PackagingError(f"the training artifact has a special member {member.name!r}")
        if member.size > max_member_bytes:
            raise PackagingError(f"member {name!r} is {member.size} bytes (limit {max_member_bytes})")
        if len(parts) == 1 and name:
            found[name] = member
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
    if "model.onnx" in members:
        return "onnx"
    if any(name.endswith("-symbol.json") for name in members) or any(_PARAMS_RE.match(n) for n in members):
        return "mxnet"
    raise PackagingError(
        "the training artifact holds neither model.onnx nor an MXNet symbol/params pair: "
        f"{sorted(members) or 'no files'}"
    )


def parse_labels(text: str) -> list[str]:
    """Labels one per line (``<index><TAB><label>`` lines accepted), stripped, blank lines dropped."""
    labels: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        parts = line.split("\t") if "\t" in line else line.split(None, 1)
        if len(parts) == 2 and parts[0].isdigit():
            line = parts[1].strip()
        labels.append(line)
    return labels


def render_labels(labels: Sequence[str]) -> bytes:
    """One label per line in class-index order, no surrounding whitespace (the camera strips nothing)."""
    return "".join(f"{label.strip()}\n" for label in labels if label.strip()).encode()


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
        import io

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
        writer.add_bytes("labels.txt", render_labels(labels))
    finally:
        writer.close()
    return tuple(writer.names)


def repackage_onnx(source: Path, labels: Sequence[str], dest: Path) -> tuple[tuple[str, ...], dict[str, Any]]:
    """model.onnx + labels.txt + metrics.json (+ model.json when present); returns names and metrics.json."""
    members = read_members(source)
    if "model.onnx" not in members or members["model.onnx"].size == 0:
        raise PackagingError("the training artifact has no (non-empty) model.onnx")
    evaluation: dict[str, Any] = {}
    if "metrics.json" in members:
        raw = _read_member(source, members["metrics.json"], MAX_METRICS_BYTES * 16)
        try:
            loaded = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PackagingError(f"metrics.json is not valid JSON: {exc}") from exc
        evaluation = loaded if isinstance(loaded, dict) else {}
    else:
        raw = b"{}"
    if "labels.txt" in members:
        own = parse_labels(
            _read_member(source, members["labels.txt"], MAX_LABELS_BYTES).decode("utf-8", "replace")
        )
        labels = own or list(labels)
    if not labels:
        raise PackagingError("neither the artifact nor the dataset has labels")
    writer = _Writer(dest)
    try:
        with _open_member(source, members["model.onnx"]) as handle:
            writer.add_stream("model.onnx", handle, members["model.onnx"].size)
        writer.add_bytes("labels.txt", render_labels(labels))
        writer.add_bytes("metrics.json", raw)
        if "model.json" in members:
            writer.add_bytes("model.json", _read_member(source, members["model.json"], MAX_METRICS_BYTES))
    finally:
        writer.close()
    return tuple(writer.names), evaluation


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _upload(s3: Any, path: Path, bucket: str, key: str, *, content_type: str, model_id: str) -> str:
    try:
        with path.open("rb") as handle:
            s3.put_object(
                Bucket=bucket,
                Key=key,
                Body=handle,
                ContentType=content_type,
                Metadata={"model-id": model_id, "sha256": _sha256(path)},
            )
    except (ClientError, BotoCoreError) as exc:
        raise TransientError(f"could not upload s3://{bucket}/{key}: {exc}") from exc
    return f"s3://{bucket}/{key}"


def read_dataset_labels(bucket: str, dataset_id: str, *, s3: Any = None) -> list[str]:
    """``datasets/<id>/labels.txt`` of the images bucket (empty when it is missing)."""
    try:
        body = (s3 or aws.client("s3")).get_object(Bucket=bucket, Key=f"datasets/{dataset_id}/labels.txt")[
            "Body"
        ]
        data = body.read(MAX_LABELS_BYTES + 1)
    except ClientError as exc:
        if aws.error_code(exc) in ("NoSuchKey", "404", "NotFound"):
            return []
        raise TransientError(f"could not read the labels of dataset {dataset_id}: {exc}") from exc
    except BotoCoreError as exc:
        raise TransientError(f"could not read the labels of dataset {dataset_id}: {exc}") from exc
    if len(data) > MAX_LABELS_BYTES:
        raise PackagingError(f"datasets/{dataset_id}/labels.txt is larger than {MAX_LABELS_BYTES} bytes")
    return parse_labels(data.decode("utf-8", "replace"))


def package_artifact(
    *, job_name: str, source_uri: str, labels: Sequence[str], settings: PackageSettings, s3: Any = None
) -> PackagedModel:
    """Download the job's ``model.tar.gz`` to /tmp, repackage it and write it to the DeepLens bucket.

    MXNet -> ``models/<job>/model.tar.gz``; ONNX -> ``models/<job>/model.onnx.tar.gz`` (+ ``classifier.py``
    for Greengrass v2). The job's own output is only read, never written.
    """
    client = s3 or aws.client("s3")
    if not source_uri:
        raise PackagingError("the training job reported no ModelArtifacts.S3ModelArtifacts")
    with tempfile.TemporaryDirectory(prefix="trashsorter-package-") as tmp:
        source = Path(tmp) / "source.tar.gz"
        with source.open("wb") as handle:
            download_artifact(source_uri, handle, s3=client)
        members = read_members(source)
        model_format = artifact_format(members)
        prefix = f"models/{job_name}/"
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
        source.unlink()
        uri = _upload(
            client,
            out,
            settings.deeplens_bucket,
            prefix + "model.onnx.tar.gz",
            content_type="application/gzip",
            model_id=job_name,
        )
        script = Path(tmp) / "classifier.py"
        script.write_text(greengrass_v2.CLASSIFIER_SCRIPT, encoding="utf-8")
        script_uri = _upload(
            client,
            script,
            settings.deeplens_bucket,
            prefix + "classifier.py",
            content_type="text/x-python",
            model_id=job_name,
        )
        own_labels = (
            tuple(evaluation.get("labels") or labels) if isinstance(evaluation.get("labels"), list) else ()
        )
        return PackagedModel(
            "onnx",
            {"onnx": uri, "classifier": script_uri},
            names,
            own_labels or tuple(labels),
            evaluation=evaluation,
            sha256=_sha256(out),
        )


# ----------------------------------------------------------------------------------------------- run access
def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _find_run(job_name: str, settings: PackageSettings, ddb: Any) -> dict[str, Any] | None:
    run = training.find_run_by_job(job_name, settings, ddb=ddb)
    return dict(run) if run else None


def _finish_run(
    settings: PackageSettings,
    *,
    run_id: str,
    status: RunStatus,
    message: str,
    metrics: Mapping[str, float] | None,
    ddb: Any,
    events: Any,
) -> None:
    training.finish_run(
        settings,
        run_id=run_id,
        status=status,
        message=message,
        metrics=dict(metrics or {}),
        ddb=ddb,
        events=events,
    )


def _claim(run_id: str, job_status: str, *, table_name: str, ddb: Any) -> bool:
    """Take the per-status lease on the run; False when another delivery holds it or it is handled."""
    now = _now()
    attr = f"package_claim_{job_status.lower()}"
    return aws.conditional_write(
        lambda: ddb.update_item(
            TableName=table_name,
            Key=registry.serialize(run_key(run_id)),
            UpdateExpression="SET #c = :now",
            ConditionExpression=(
                "attribute_exists(pk) AND NOT contains(handled_statuses, :status) "
                "AND (attribute_not_exists(#c) OR #c < :stale)"
            ),
            ExpressionAttributeNames={"#c": attr},
            ExpressionAttributeValues={
                ":now": {"S": _iso(now)},
                ":stale": {"S": _iso(now - timedelta(seconds=CLAIM_LEASE_SECONDS))},
                ":status": {"S": job_status},
            },
        ),
        what=f"claim run {run_id}",
    )


def _update_run(
    run_id: str, attributes: Mapping[str, Any], *, table_name: str, ddb: Any, handled: str = ""
) -> None:
    values = dict(attributes)
    names = {f"#a{i}": name for i, name in enumerate(values)}
    sets = [f"#a{i} = :v{i}" for i in range(len(values))]
    expr_values: dict[str, Any] = {
        f":v{i}": registry.serialize({"v": v})["v"] for i, v in enumerate(values.values())
    }
    expression = ("SET " + ", ".join(sets)) if sets else ""
    if handled:
        expression += " ADD handled_statuses :handled"
        expr_values[":handled"] = {"SS": [handled]}
    kwargs: dict[str, Any] = {
        "TableName": table_name,
        "Key": registry.serialize(run_key(run_id)),
        "UpdateExpression": expression.strip(),
        "ConditionExpression": "attribute_exists(pk)",
        "ExpressionAttributeValues": expr_values,
    }
    if names:
        kwargs["ExpressionAttributeNames"] = names
    try:
        ddb.update_item(**kwargs)
    except (ClientError, BotoCoreError) as exc:
        raise TransientError(f"could not update run {run_id}: {exc}") from exc


# ----------------------------------------------------------------------------------------------- deploy
def deploy_model(
    model: Mapping[str, Any],
    settings: PackageSettings,
    *,
    request_id: str,
    ddb: Any = None,
    greengrass: Any = None,
    greengrassv2: Any = None,
) -> list[DeploymentResult]:
    """Push a registered model to every configured target and record each deployment.

    MXNet -> DeepLens (Greengrass v1); ONNX -> Greengrass v2 and the local device. A target already
    recorded for ``request_id`` is not called again. Configuration errors and refusals become a
    ``failed`` result (recorded, noticed); throttling / 5xx raise TransientError (retry).
    """
    client = ddb or aws.client("dynamodb")
    model_id = str(model["model_id"])
    uris = dict(model.get("packaged_artifact_uris") or {})
    table = settings.table_name
    results: list[DeploymentResult] = []
    if model.get("format") == "mxnet":
        targets = [TARGET_GREENGRASS_V1]
    elif model.get("format") == "onnx":
        targets = [TARGET_GREENGRASS_V2, TARGET_LOCAL_DEVICE]
    else:
        raise PackagingError(f"model {model_id} has no deployable artifact (format {model.get('format')!r})")

    def record_pending(target: str, fields: dict[str, Any]) -> None:
        """What a retry of this request must reuse, recorded before the target is called."""
        registry.record_deployment(
            model_id, target, request_id, {"status": "pending", **fields}, table_name=table, ddb=client
        )

    for target in targets:
        existing = registry.get_deployment(model_id, target, request_id, table_name=table, ddb=client)
        if existing and existing.get("status") in ("deployed", "skipped"):
            results.append(
                DeploymentResult(
                    target,
                    str(existing["status"]),
                    deployment_id=str(existing.get("deployment_id", "")),
                    note=str(existing.get("note", "")),
                    details=dict(existing.get("details") or {}),
                )
            )
            continue
        try:
            if target == TARGET_GREENGRASS_V1:
                pending = existing if existing and existing.get("status") == "pending" else None
                # recorded before CreateDeployment: a retry of this request deploys (or adopts) that version
                result = greengrass_v1.deploy(
                    model_id=model_id,
                    artifact_uri=uris["deeplens"],
                    settings=settings,
                    greengrass=greengrass,
                    prepared=dict(pending.get("details") or {}) if pending else None,
                    on_group_version=lambda details: record_pending(
                        TARGET_GREENGRASS_V1, {"details": details}
                    ),
                )
            elif target == TARGET_GREENGRASS_V2:
                if not settings.edge_thing_group_arn:
                    result = greengrass_v2.deploy(
                        model_id=model_id, artifact_uri="", script_uri="", version="", settings=settings
                    )
                else:
                    version = str((existing or {}).get("component_version") or "")
                    if not version:
                        version = greengrass_v2.next_component_version(
                            settings.edge_component_name, table_name=table, ddb=client
                        )
                        record_pending(target, {"component_version": version})
                    result = greengrass_v2.deploy(
                        model_id=model_id,
                        artifact_uri=uris["onnx"],
                        script_uri=uris.get("classifier", ""),
                        version=version,
                        settings=settings,
                        greengrassv2=greengrassv2,
                    )
            else:
                result = local_device.deploy(
                    model_id=model_id,
                    artifact_uri=uris["onnx"],
                    deployment_id=f"{model_id}-{request_id}",
                    settings=settings,
                )
        except (ConfigurationError, DeploymentError, KeyError) as exc:
            note = str(exc) if not isinstance(exc, KeyError) else f"no packaged artifact {exc} for {target}"
            logger.warning("deployment failed", extra={"model_id": model_id, "target": target, "error": note})
            result = DeploymentResult(target, "failed", note=note)
        details: dict[str, Any] = {
            "status": result.status,
            "deployment_id": result.deployment_id,
            "note": result.note,
            "details": result.details,
        }
        if target == TARGET_GREENGRASS_V2 and result.details.get("component_version"):
            details["component_version"] = result.details["component_version"]
        registry.record_deployment(model_id, target, request_id, details, table_name=table, ddb=client)
        results.append(result)
    return results


def _summary(results: Sequence[DeploymentResult]) -> list[dict[str, Any]]:
    return [
        {"target": r.target, "status": r.status, "deployment_id": r.deployment_id, "note": r.note}
        for r in results
    ]


def _deploy_notes(results: Sequence[DeploymentResult]) -> str:
    return "; ".join(f"{r.target}: {r.status}{' (' + r.note + ')' if r.note else ''}" for r in results)


# ----------------------------------------------------------------------------------------------- handler
def _detail(event: Mapping[str, Any]) -> dict[str, Any] | None:
    if event.get("source") != SAGEMAKER_SOURCE or event.get("detail-type") != TRAINING_STATE_CHANGE:
        return None
    detail = event.get("detail")
    return dict(detail) if isinstance(detail, Mapping) else None


def _describe(job_name: str, sagemaker: Any) -> dict[str, Any]:
    try:
        described = (sagemaker or aws.client("sagemaker")).describe_training_job(TrainingJobName=job_name)
    except ClientError as exc:
        code = aws.error_code(exc)
        if code in ("ValidationException", "ResourceNotFound"):
            return {}
        raise TransientError(f"could not describe training job {job_name}: {exc}") from exc
    except BotoCoreError as exc:
        raise TransientError(f"could not describe training job {job_name}: {exc}") from exc
    return dict(described)


def handle_training_state_change(
    event: Mapping[str, Any],
    settings: PackageSettings,
    *,
    ddb: Any = None,
    s3: Any = None,
    sagemaker: Any = None,
    greengrass: Any = None,
    greengrassv2: Any = None,
    sns: Any = None,
    events: Any = None,
) -> PackageOutcome:
    """Handle one "SageMaker Training Job State Change" (Completed / Failed / Stopped), idempotently."""
    detail = _detail(event)
    if detail is None:
        logger.warning("not a training job state change", extra={"source": event.get("source")})
        return PackageOutcome("", "", "ignored", reason="not a SageMaker training job state change")
    job_name = str(detail.get("TrainingJobName") or "")
    job_status = str(detail.get("TrainingJobStatus") or "")
    if not job_name.startswith(JOB_PREFIX) or job_status not in ("Completed", *_FAILED_STATUSES):
        return PackageOutcome(
            job_name, job_status, "ignored", reason="not a trashsorter job in a final state"
        )
    ddb = ddb or aws.client("dynamodb")
    run = _find_run(job_name, settings, ddb)
    if run is None:
        logger.warning("training job has no run record", extra={"job_name": job_name})
        return PackageOutcome(
            job_name, job_status, "ignored", reason=f"no trashsorter run for job {job_name}"
        )
    run_id = str(run["run_id"])
    if job_status in (run.get("handled_statuses") or []):
        return _duplicate(job_name, job_status, run)
    if not _claim(run_id, job_status, table_name=settings.table_name, ddb=ddb):
        fresh = _find_run(job_name, settings, ddb) or run
        if job_status in (fresh.get("handled_statuses") or []):
            return _duplicate(job_name, job_status, fresh)
        raise TransientError(f"{job_name} {job_status} is being handled by another delivery; retry later")
    if job_status in _FAILED_STATUSES:
        return _handle_failed(detail, run, settings, ddb=ddb, sagemaker=sagemaker, sns=sns, events=events)
    return _handle_completed(
        detail,
        run,
        settings,
        ddb=ddb,
        s3=s3,
        sagemaker=sagemaker,
        greengrass=greengrass,
        greengrassv2=greengrassv2,
        sns=sns,
        events=events,
    )


def _duplicate(job_name: str, job_status: str, run: Mapping[str, Any]) -> PackageOutcome:
    logger.info("training state change already handled", extra={"job_name": job_name, "status": job_status})
    return PackageOutcome(
        job_name,
        job_status,
        "duplicate",
        run_id=str(run.get("run_id", "")),
        model_id=str(run.get("model_id", "")),
        reason=f"{job_status} already handled ({run.get('package_outcome', '')})",
    )


def _handle_failed(
    detail: Mapping[str, Any],
    run: Mapping[str, Any],
    settings: PackageSettings,
    *,
    ddb: Any,
    sagemaker: Any,
    sns: Any,
    events: Any,
) -> PackageOutcome:
    job_name = str(detail["TrainingJobName"])
    job_status = str(detail["TrainingJobStatus"])
    run_id = str(run["run_id"])
    reason = str(detail.get("FailureReason") or "")
    if not reason and run.get("backend") != "local":
        reason = str(_describe(job_name, sagemaker).get("FailureReason") or "")
    if not reason:
        reason = "stopped on request" if job_status == "Stopped" else "SageMaker reported no failure reason"
    status = _FAILED_STATUSES[job_status]
    metrics = metrics_from_detail(detail)
    _finish_run(
        settings, run_id=run_id, status=status, message=reason, metrics=metrics, ddb=ddb, events=events
    )
    outcome = "failed" if status == RunStatus.FAILED else "stopped"
    notify(
        settings.topic_arn,
        f"Training {outcome}: {job_name}",
        f"Training job {job_name} (run {run_id}) {outcome}: {reason}",
        details={"job_name": job_name, "run_id": run_id, "status": job_status, "reason": reason},
        sns=sns,
    )
    _update_run(
        run_id,
        {"failure_reason": reason, "package_outcome": outcome},
        table_name=settings.table_name,
        ddb=ddb,
        handled=job_status,
    )
    return PackageOutcome(job_name, job_status, outcome, run_id=run_id, reason=reason, metrics=metrics)


def _handle_completed(
    detail: dict[str, Any],
    run: Mapping[str, Any],
    settings: PackageSettings,
    *,
    ddb: Any,
    s3: Any,
    sagemaker: Any,
    greengrass: Any,
    greengrassv2: Any,
    sns: Any,
    events: Any,
) -> PackageOutcome:
    job_name = str(detail["TrainingJobName"])
    run_id = str(run["run_id"])
    table = settings.table_name
    s3 = s3 or aws.client("s3")
    if run.get("backend") != "local" and (
        not detail.get("FinalMetricDataList")
        or not (detail.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
    ):
        described = _describe(job_name, sagemaker)
        for key in ("FinalMetricDataList", "ModelArtifacts", "HyperParameters", "TrainingEndTime"):
            if not detail.get(key) and described.get(key):
                detail[key] = described[key]
    metrics = metrics_from_detail(detail)
    source_uri = str((detail.get("ModelArtifacts") or {}).get("S3ModelArtifacts") or "")
    dataset_id = str(run.get("dataset_id") or "")
    dataset = registry.get_item(dataset_key(dataset_id), table_name=table, ddb=ddb) if dataset_id else None
    manifest_uri = str(
        (dataset or {}).get("manifest_uri")
        or f"s3://{settings.images_bucket}/datasets/{dataset_id}/manifest.jsonl"
    )

    model = registry.get_model(job_name, table_name=table, ddb=ddb)
    if model is None:
        model = _register(
            job_name=job_name,
            run=run,
            dataset_id=dataset_id,
            dataset=dataset,
            manifest_uri=manifest_uri,
            source_uri=source_uri,
            metrics=metrics,
            settings=settings,
            ddb=ddb,
            s3=s3,
        )
    metrics = {k: float(v) for k, v in (model.get("metrics") or {}).items()}
    artifacts = {str(k): str(v) for k, v in (model.get("packaged_artifact_uris") or {}).items()}
    results: list[DeploymentResult] = []
    accuracy = metrics.get(ACCURACY_METRIC)
    acc_text = f"{accuracy:.4f}" if accuracy is not None else "n/a"
    details: dict[str, Any] = {
        "job_name": job_name,
        "run_id": run_id,
        "model_id": job_name,
        "dataset_id": dataset_id,
        "metrics": metrics,
        "artifacts": artifacts,
    }
    if model.get("packaging_error"):
        outcome, reason = "failed", str(model["packaging_error"])
        run_status, run_message = RunStatus.FAILED, f"packaging failed: {reason}"
        subject = f"Model {job_name} failed packaging"
        message = f"Training job {job_name} completed but its artifact could not be packaged: {reason}"
    elif model.get("status") == ModelStatus.REJECTED:
        outcome, reason = "rejected", str(model.get("gate_reason", ""))
        run_status, run_message = RunStatus.COMPLETED, f"model rejected by the quality gate: {reason}"
        subject = f"Model {job_name} gated out (accuracy {acc_text})"
        message = f"Model {job_name} was not deployed: {reason}"
    else:
        if model.get("status") == ModelStatus.CANDIDATE:
            model = registry.promote(job_name, table_name=table, ddb=ddb)
        if model.get("status") == ModelStatus.CHAMPION:
            results = deploy_model(
                model,
                settings,
                request_id=INITIAL_REQUEST,
                ddb=ddb,
                greengrass=greengrass,
                greengrassv2=greengrassv2,
            )
            registry.update_model(job_name, {"deployments": _summary(results)}, table_name=table, ddb=ddb)
        deployed = any(r.status == "deployed" for r in results)
        failed = [r for r in results if r.status == "failed"]
        outcome = "deployed" if deployed and not failed else "registered"
        reason = _deploy_notes(results) or f"model is {model.get('status')}"
        run_status = RunStatus.COMPLETED
        run_message = f"model {job_name} is {model.get('status')}; {reason}"
        if failed:
            subject = f"Model {job_name} champion, deployment FAILED"
            message = (
                f"Model {job_name} (accuracy {acc_text}) passed the gate but deployment failed: {reason}"
            )
        elif deployed:
            subject = f"Model {job_name} deployed (accuracy {acc_text})"
            message = f"Model {job_name} (accuracy {acc_text}) is the new champion and was deployed: {reason}"
        else:
            subject = f"Model {job_name} registered (accuracy {acc_text})"
            message = f"Model {job_name} (accuracy {acc_text}) is {model.get('status')}: {reason}"
        details["gate"] = model.get("gate_reason", "")
    details["deployments"] = _summary(results)
    if dataset_id:  # before finish_run: a pending trigger is re-evaluated against the new baseline
        registry.advance_baseline(dataset_id, table_name=table, ddb=ddb)
    _finish_run(
        settings,
        run_id=run_id,
        status=run_status,
        message=run_message,
        metrics=metrics,
        ddb=ddb,
        events=events,
    )
    notify(settings.topic_arn, subject, message, details=details, sns=sns)
    _update_run(
        run_id,
        {
            "model_id": job_name,
            "package_outcome": outcome,
            "package_reason": reason,
            "metrics": metrics,
            "deployments": _summary(results),
            "deployment_ids": [r.deployment_id for r in results if r.deployment_id],
        },
        table_name=table,
        ddb=ddb,
        handled="Completed",
    )
    logger.info("training completion handled", extra={"job_name": job_name, "outcome": outcome})
    return PackageOutcome(
        job_name,
        "Completed",
        outcome,
        run_id=run_id,
        model_id=job_name,
        reason=reason,
        metrics=metrics,
        artifacts=artifacts,
        deployments=_summary(results),
    )


def _register(
    *,
    job_name: str,
    run: Mapping[str, Any],
    dataset_id: str,
    dataset: Mapping[str, Any] | None,
    manifest_uri: str,
    source_uri: str,
    metrics: dict[str, float],
    settings: PackageSettings,
    ddb: Any,
    s3: Any,
) -> dict[str, Any]:
    """Package, gate and register a finished job (first attempt only; retries read the record)."""
    table = settings.table_name
    labels = read_dataset_labels(settings.images_bucket, dataset_id, s3=s3) if dataset_id else []
    if not labels and dataset:
        labels = [str(label) for label in dataset.get("labels") or []]
    common: dict[str, Any] = {
        "table_name": table,
        "model_id": job_name,
        "job_name": job_name,
        "run_id": str(run["run_id"]),
        "dataset_id": dataset_id,
        "dataset_manifest_uri": manifest_uri,
        "source_artifact_uri": source_uri,
        "ddb": ddb,
    }
    try:
        packaged = package_artifact(
            job_name=job_name, source_uri=source_uri, labels=labels, settings=settings, s3=s3
        )
    except PackagingError as exc:
        logger.warning("packaging failed", extra={"job_name": job_name, "error": str(exc)})
        return registry.register_model(
            **common,
            metrics=metrics,
            packaged_artifact_uris={},
            model_format="unknown",
            gate_passed=False,
            gate_reason=f"packaging failed: {exc}",
            status=ModelStatus.REJECTED,
            extra={"packaging_error": str(exc)},
        )
    champion = registry.get_champion(table_name=table, ddb=ddb)
    champion_accuracy = None
    if champion and champion.get("model_id") != job_name:
        value = (champion.get("metrics") or {}).get(ACCURACY_METRIC)
        champion_accuracy = float(value) if value is not None else None
    decision = evaluate_gate(
        metrics.get(ACCURACY_METRIC),
        champion_accuracy,
        min_accuracy=settings.min_validation_accuracy,
        tolerance=settings.champion_tolerance,
        champion_id=str((champion or {}).get("model_id", "")),
    )
    extra: dict[str, Any] = {
        "labels": list(packaged.labels),
        "artifact_members": list(packaged.members),
        "artifact_sha256": packaged.sha256,
        "champion_at_gate": (champion or {}).get("model_id"),
    }
    if packaged.evaluation:
        small = {
            k: v for k, v in packaged.evaluation.items() if k not in ("history", "config", "phase_seconds")
        }
        if len(json.dumps(small, default=str)) <= MAX_METRICS_BYTES:
            extra["evaluation"] = small
    return registry.register_model(
        **common,
        metrics=metrics,
        packaged_artifact_uris=packaged.artifacts,
        model_format=packaged.model_format,
        gate_passed=decision.passed,
        gate_reason=decision.reason,
        status=ModelStatus.CANDIDATE if decision.passed else ModelStatus.REJECTED,
        extra=extra,
    )


# ----------------------------------------------------------------------------------------------- rollback
def redeploy(
    model_id: str,
    settings: PackageSettings,
    *,
    force: bool = False,
    ddb: Any = None,
    greengrass: Any = None,
    greengrassv2: Any = None,
    sns: Any = None,
) -> PackageOutcome:
    """Rollback / manual deploy: make ``model_id`` the champion and push it with the same deploy path.

    A gate-rejected model needs ``force=True``; a model whose packaging failed cannot be deployed.
    """
    client = ddb or aws.client("dynamodb")
    table = settings.table_name
    model = registry.get_model(model_id, table_name=table, ddb=client)
    if model is None:
        raise NotFoundError(f"model {model_id} is not registered")
    if model.get("packaging_error") or not model.get("packaged_artifact_uris"):
        raise PackagingError(f"model {model_id} has no packaged artifact: {model.get('packaging_error', '')}")
    if model.get("status") == ModelStatus.REJECTED and not force:
        raise DeploymentError(
            f"model {model_id} was rejected by the quality gate ({model.get('gate_reason')}); "
            "use force to deploy"
        )
    model = registry.promote(model_id, table_name=table, ddb=client)
    request_id = "redeploy-" + _now().strftime("%Y%m%dT%H%M%S%fZ")
    results = deploy_model(
        model, settings, request_id=request_id, ddb=client, greengrass=greengrass, greengrassv2=greengrassv2
    )
    registry.update_model(model_id, {"deployments": _summary(results)}, table_name=table, ddb=client)
    metrics = {k: float(v) for k, v in (model.get("metrics") or {}).items()}
    failed = [r for r in results if r.status == "failed"]
    deployed = any(r.status == "deployed" for r in results)
    outcome = "deployed" if deployed and not failed else "registered"
    notes = _deploy_notes(results)
    notify(
        settings.topic_arn,
        f"Model {model_id} redeployed"
        if outcome == "deployed"
        else f"Model {model_id} champion, not deployed",
        f"Model {model_id} is the champion again: {notes}",
        details={"model_id": model_id, "metrics": metrics, "deployments": _summary(results)},
        sns=sns,
    )
    return PackageOutcome(
        model_id,
        "Redeploy",
        outcome,
        run_id=str(model.get("run_id", "")),
        model_id=model_id,
        reason=notes,
        metrics=metrics,
        artifacts={str(k): str(v) for k, v in (model.get("packaged_artifact_uris") or {}).items()},
        deployments=_summary(results),
    )
