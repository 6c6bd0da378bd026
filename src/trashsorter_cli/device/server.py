"""The local device: a small local "nucleus" on 127.0.0.1. It receives deployments and runs the Greengrass v2
edge component the package step published (:mod:`trashsorter_cli.device.component`); it does not classify
itself - ``/predict`` hands the image to the running component and answers with the component's result.

API (JSON answers):

* ``POST /deployments`` ``{"model_id", "artifact_uri": "s3://...", "deployment_id"}`` -> downloads the
  tarball (boto3; AWS_ENDPOINT_URL from the environment), extracts it safely (regular files only, no
  absolute paths, no ``..``, size-capped) into ``<state_dir>/models/<deployment>``, checks that ``model.onnx``
  + ``labels.txt`` load, writes the component bundle (``recipe.json`` + the published artifacts, the app zip
  being ``trashsorter-edge.zip`` beside the model) and switches to it: the previous component version stops,
  the new one is installed and started in the background: ``200 {"status": "deployed", "model_id", ...}``.
  A bad request is 400, an unreadable artifact 502 (S3) or 422 (not a valid model); the previous model stays.
* ``GET /status`` -> ``{model_id, deployment_id, labels, deployed_at}`` (nulls before the first deployment).
* ``POST /predict`` (raw image bytes) -> ``{"label", "confidence", "top": [{label, confidence}...],
  "unsure", "model_id"}`` from the component; 409 when no model is deployed (or the component is down),
  400 for bytes that are not an image.

The current deployment is remembered in ``<state_dir>/current.json`` and reloaded on start.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, urlparse

from botocore.exceptions import BotoCoreError, ClientError

from trashsorter import aws
from trashsorter.deploy import greengrass_v2
from trashsorter.errors import DeploymentError, Rejection, TrashsorterError
from trashsorter_cli.device.component import LocalComponent
from trashsorter_cli.device.predictor import Classifier
from trashsorter_cli.device.runner import prepare_environment

MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_REQUEST_BYTES = 64 * 1024
MAX_ARTIFACT_BYTES = 512 * 1024 * 1024
MAX_EXTRACTED_BYTES = 1024 * 1024 * 1024
REQUIRED_MEMBERS = ("model.onnx", "labels.txt")
COMPONENT_NAME = "com.trashsorter.local-device"
THING_NAME = "local-device"


class ArtifactError(DeploymentError):
    """The artifact is not a valid model (HTTP 422)."""


class ArtifactUnavailable(DeploymentError):
    """The artifact cannot be downloaded (HTTP 502)."""


def safe_extract(archive: Path, destination: Path, max_bytes: int = MAX_EXTRACTED_BYTES) -> None:
    """Extract regular files and directories only; refuse absolute paths, ``..``, links and bombs."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            total = 0
            members = tar.getmembers()
            for member in members:
                name = PurePosixPath(member.name)
                if name.is_absolute() or ".." in name.parts or member.name.startswith(("/", "\\")):
                    raise ArtifactError(f"artifact member {member.name!r} escapes the model directory")
                if not (member.isfile() or member.isdir()):
                    raise ArtifactError(f"artifact member {member.name!r} is a link or special file")
                total += member.size
                if total > max_bytes:
                    raise ArtifactError(f"artifact expands beyond {max_bytes} bytes")
            tar.extractall(destination, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ArtifactError(f"artifact is not a readable tar.gz: {exc}") from exc


class LocalDevice:
    """The device, in-process: ``LocalDevice(port=0).start()`` ... ``.stop()``; ``url`` after start."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, state_dir: Path | str | None = None, s3: Any = None
    ) -> None:
        self.host = host
        self.port = port
        self.state_dir = (
            Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="trashsorter-device-"))
        )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._s3 = s3
        self._lock = threading.Lock()  # guards the switch, not the (long) download
        self._deploy_lock = threading.Lock()  # one deployment at a time
        self.classifier: Classifier | None = None
        self.component: LocalComponent | None = None
        self._preparing: threading.Thread | None = None
        self.model_id: str | None = None
        self.deployment_id: str | None = None
        self.deployed_at: str | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._restore()

    # -- lifecycle ---------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self._server is None:
            raise DeploymentError("the local device is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> LocalDevice:
        server = ThreadingHTTPServer((self.host, self.port), _handler_for(self))
        server.daemon_threads = True
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, name="local-device", daemon=True)
        self._thread.start()
        work = self.state_dir / "nucleus" / "work" / COMPONENT_NAME
        if not (work / "venv").is_dir():  # the first Install would create it; do it before a model arrives
            self._preparing = threading.Thread(target=prepare_environment, args=(work,), daemon=True)
            self._preparing.start()
        record = self._record()
        if record and record.get("bundle_dir") and self.component is None:
            labels = len(self.classifier.labels) if self.classifier else 1
            self.component = self._component(Path(record["bundle_dir"]), labels).start(after=self._preparing)
        return self

    def stop(self) -> None:
        if self.component is not None:
            self.component.stop()
            self.component = None
        if self._preparing is not None:
            self._preparing.join(timeout=600)  # never leave pip running behind
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> LocalDevice:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- operations --------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "model_id": self.model_id,
                "deployment_id": self.deployment_id,
                "labels": list(self.classifier.labels) if self.classifier else [],
                "deployed_at": self.deployed_at,
                "component": (
                    {
                        "name": COMPONENT_NAME,
                        "version": self.component.version,
                        "running": self.component.running(),
                        "live_view": self.component.live_url,
                    }
                    if self.component
                    else None
                ),
            }

    def deploy(
        self,
        model_id: str,
        artifact_uri: str,
        deployment_id: str | None = None,
        defaults: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Download, verify, switch; a DeploymentError (422/502 subclass) keeps the previous model."""
        deployment_id = deployment_id or uuid.uuid4().hex
        parsed = urlparse(artifact_uri)
        if parsed.scheme != "s3" or not parsed.netloc or not parsed.path.strip("/"):
            raise ArtifactUnavailable(f"artifact_uri must be s3://bucket/key, got {artifact_uri!r}")
        with self._deploy_lock:
            target = self.state_dir / "models" / f"{_safe_name(deployment_id)}-{uuid.uuid4().hex[:8]}"
            try:
                model_dir = self._fetch(parsed.netloc, parsed.path.lstrip("/"), target)
                classifier = Classifier(model_dir)
                bundle = self._bundle(model_id, artifact_uri, target / "bundle", defaults or {})
            except DeploymentError:
                shutil.rmtree(target, ignore_errors=True)
                raise
            previous_dir = self._current_dir()
            if self.component is not None:
                self.component.stop()  # the nucleus stops the old version before the new one runs
            component = self._component(bundle, len(classifier.labels)).start(after=self._preparing)
            with self._lock:
                self.component = component
                self.classifier = classifier
                self.model_id = model_id
                self.deployment_id = deployment_id
                self.deployed_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
                record = {
                    "model_id": model_id,
                    "deployment_id": deployment_id,
                    "deployed_at": self.deployed_at,
                    "artifact_uri": artifact_uri,
                    "model_dir": str(model_dir),
                    "bundle_dir": str(bundle),
                }
            pending = self.state_dir / "current.json.tmp"
            pending.write_text(json.dumps(record))
            pending.replace(self.state_dir / "current.json")
            if previous_dir is not None and previous_dir != model_dir:
                shutil.rmtree(_deployment_root(self.state_dir, previous_dir), ignore_errors=True)
        return {"status": "deployed", **{k: v for k, v in record.items() if not k.endswith("_dir")}}

    def predict(self, image: bytes) -> dict[str, Any]:
        """The running component's result for ``image`` (it classifies; this process only hands over)."""
        with self._lock:
            component = self.component
        if component is None:
            raise DeploymentError("no model deployed")
        result = component.classify(image)
        top = [{"label": e["label"], "confidence": e["confidence"]} for e in result["top_k"]]
        return {
            "label": result["label"],
            "confidence": result["confidence"],
            "top": top,
            "unsure": result["unsure"],
            "model_id": result["model_id"],
        }

    # -- internals ---------------------------------------------------------------------------------------
    def _fetch(self, bucket: str, key: str, target: Path) -> Path:
        s3 = self._s3 or aws.client("s3")
        target.mkdir(parents=True, exist_ok=True)
        archive = target / "artifact.tar.gz"
        try:
            head = s3.head_object(Bucket=bucket, Key=key)
            if int(head.get("ContentLength", 0)) > MAX_ARTIFACT_BYTES:
                raise ArtifactError(f"artifact larger than {MAX_ARTIFACT_BYTES} bytes")
            s3.download_file(bucket, key, str(archive))
        except (ClientError, BotoCoreError) as exc:
            raise ArtifactUnavailable(f"cannot download s3://{bucket}/{key}: {exc}") from exc
        extracted = target / "model"
        extracted.mkdir()
        safe_extract(archive, extracted)
        archive.unlink()
        for candidate in sorted(extracted.rglob("model.onnx"), key=lambda p: len(p.parts)):
            if (candidate.parent / "labels.txt").is_file():
                return candidate.parent
        raise ArtifactError(f"artifact has no {' + '.join(REQUIRED_MEMBERS)} (not a local ONNX model)")

    def _bundle(self, model_id: str, artifact_uri: str, out: Path, defaults: dict[str, Any]) -> Path:
        """The component bundle as the package step published it: the app zip is beside the model."""
        app_uri = artifact_uri.rsplit("/", 1)[0] + "/" + greengrass_v2.APP_ARCHIVE
        version = f"1.0.{int(time.time() * 1000)}"
        try:
            greengrass_v2.write_bundle(
                out,
                component_name=COMPONENT_NAME,
                version=version,
                model_id=model_id,
                artifact_uri=artifact_uri,
                app_uri=app_uri,
                defaults=defaults,
                s3=self._s3 or aws.client("s3"),
            )
        except TrashsorterError as exc:
            raise ArtifactUnavailable(f"no edge component beside the model ({app_uri}): {exc}") from exc
        return out

    def _component(self, bundle: Path, labels: int) -> LocalComponent:
        endpoint = getattr(getattr(self._s3, "meta", None), "endpoint_url", None)
        return LocalComponent(
            bundle,
            self.state_dir / "nucleus",
            thing=THING_NAME,
            endpoint_url=endpoint or os.environ.get("AWS_ENDPOINT_URL"),
            top_k=max(labels, 1),
        )

    @property
    def recorded_model_id(self) -> str | None:
        """The model the device's own record names (even one it could not load), ``None`` without a record."""
        record = self._record()
        return str(record["model_id"]) if record and record.get("model_id") else None

    def _record(self) -> dict[str, Any] | None:
        current = self.state_dir / "current.json"
        if not current.is_file():
            return None
        try:
            record: dict[str, Any] = json.loads(current.read_text())
        except (OSError, ValueError):
            return None
        return record

    def _current_dir(self) -> Path | None:
        current = self.state_dir / "current.json"
        if not current.is_file():
            return None
        return Path(json.loads(current.read_text())["model_dir"])

    def _restore(self) -> None:
        current = self.state_dir / "current.json"
        if not current.is_file():
            return
        try:
            record = json.loads(current.read_text())
            self.classifier = Classifier(record["model_dir"])
        except (DeploymentError, OSError, ValueError, KeyError):
            return  # a broken state file means "nothing deployed"
        self.model_id = record["model_id"]
        self.deployment_id = record["deployment_id"]
        self.deployed_at = record["deployed_at"]


def clear_iot_messages() -> None:
    """Forget what earlier stacks of this process published (a stack's messages start with the stack, as
    a fresh ``local up`` process starts with none; MQTT keeps nothing either)."""
    from moto.iotdata.models import iotdata_backends

    for account in list(iotdata_backends):
        for region in list(iotdata_backends[account]):
            iotdata_backends[account][region].published_payloads.clear()


def iot_messages(after: int = 0, topic_prefix: str = "") -> list[dict[str, Any]]:
    """What the local endpoint's IoT data plane received (moto keeps published payloads in memory, in this
    process): ``[{"index", "topic", "payload"}]`` from index ``after`` on, topics starting with the prefix."""
    from moto.iotdata.models import iotdata_backends

    received: list[tuple[str, bytes]] = []
    for account in list(iotdata_backends):
        for region in list(iotdata_backends[account]):
            received.extend(iotdata_backends[account][region].published_payloads)
    messages = []
    for index, (topic, raw) in enumerate(received[after:], start=after):
        if not topic.startswith(topic_prefix):
            continue
        try:
            payload: Any = json.loads(raw)
        except (ValueError, TypeError):
            payload = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        messages.append({"index": index + 1, "topic": topic, "payload": payload})
    return messages


def _safe_name(value: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in value)[:80] or "deployment"


def _deployment_root(state_dir: Path, model_dir: Path) -> Path:
    """``<state>/models/<deployment>`` for a model dir somewhere below it."""
    models = (state_dir / "models").resolve()
    resolved = model_dir.resolve()
    if models not in resolved.parents:
        raise DeploymentError(f"{model_dir} is outside {models}")
    return models / resolved.relative_to(models).parts[0]


def _handler_for(device: LocalDevice) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "trashsorter-device/1"

        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet; the dispatcher logs what matters

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self, limit: int) -> bytes | None:
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                self._send(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length required"})
                return None
            if length > limit:
                self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"body larger than {limit} bytes"})
                return None
            return self.rfile.read(length)

        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path.rstrip("/") == "/status":
                self._send(HTTPStatus.OK, device.status())
            elif url.path.rstrip("/") == "/iot/messages":
                query = parse_qs(url.query)
                after = int((query.get("after") or ["0"])[0] or 0)
                self._send(HTTPStatus.OK, {"messages": iot_messages(after, (query.get("topic") or [""])[0])})
            else:
                self._send(HTTPStatus.NOT_FOUND, {"error": f"no route GET {self.path}"})

        def do_POST(self) -> None:
            route = self.path.rstrip("/")
            if route == "/deployments":
                self._deploy()
            elif route == "/predict":
                self._predict()
            else:
                self._send(HTTPStatus.NOT_FOUND, {"error": f"no route POST {self.path}"})

        def _deploy(self) -> None:
            raw = self._body(MAX_REQUEST_BYTES)
            if raw is None:
                return
            try:
                request = json.loads(raw or b"{}")
                model_id, artifact_uri = request["model_id"], request["artifact_uri"]
                if not isinstance(model_id, str) or not isinstance(artifact_uri, str) or not model_id:
                    raise TypeError("model_id and artifact_uri must be strings")
            except (ValueError, KeyError, TypeError) as exc:
                self._send(
                    HTTPStatus.BAD_REQUEST, {"error": f"expected JSON with model_id, artifact_uri: {exc}"}
                )
                return
            try:
                defaults = request.get("defaults") if isinstance(request.get("defaults"), dict) else {}
                answer = device.deploy(model_id, artifact_uri, request.get("deployment_id"), defaults)
            except ArtifactUnavailable as exc:
                self._send(HTTPStatus.BAD_GATEWAY, {"status": "failed", "error": str(exc), **device.status()})
            except DeploymentError as exc:
                self._send(
                    HTTPStatus.UNPROCESSABLE_ENTITY,
                    {"status": "failed", "error": str(exc), **device.status()},
                )
            else:
                self._send(HTTPStatus.OK, answer)

        def _predict(self) -> None:
            raw = self._body(MAX_IMAGE_BYTES)
            if raw is None:
                return
            try:
                self._send(HTTPStatus.OK, device.predict(raw))
            except Rejection as exc:
                self._send(HTTPStatus.BAD_REQUEST, {"error": exc.message, "code": exc.code})
            except DeploymentError as exc:
                self._send(HTTPStatus.CONFLICT, {"error": str(exc)})

    return Handler
