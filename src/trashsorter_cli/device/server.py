"""The local device: a local Greengrass v2 *core device* on 127.0.0.1. It connects to the local endpoint's
Greengrass v2 control plane (:mod:`trashsorter_cli.local.greengrass_v2`) as the thing ``THING_NAME`` of the
local thing group, receives that group's deployments, runs trashsorter's components of each deployment in
dependency order (:func:`~trashsorter_cli.device.core_rules.dependency_order`): the model component's
``Startup`` check, then the app (the recipes and artifacts the package step published;
:mod:`trashsorter_cli.device.component`), restarted without its Install when only the model component changed,
and reports its result per deployment (``ListEffectiveDeployments``). It does not classify itself:
``/predict`` hands the image to the running component and answers with the component's result.

A deployment whose model cannot be used (not downloadable, unsafe or unreadable archive, a model that does not
load, a component that does not start) FAILS and is rolled back: the previous component version keeps running
with the previous model, whose folder stays on disk until a new one runs.

HTTP API (JSON answers), reachable only as ``http://127.0.0.1:<port>`` (the Host header is checked); a request
that carries an ``Origin`` other than the device's own is refused (no cross-site writes from a web page):

* ``GET /status`` -> ``{model_id, deployment_id, labels, deployed_at, component, thing}`` (no token).
* ``POST /predict`` (raw image bytes) -> ``{"label", "confidence", "top": [...], "unsure", "model_id"}``;
  409 when no model is deployed, 400 for bytes that are not an image.
* ``GET /iot/messages?after=N&topic=PREFIX`` -> what the local endpoint's IoT data plane received.

``/predict`` and ``/iot/messages`` need the device's token (``Authorization: Bearer <token>``), kept in
``<state_dir>/token`` (mode 0600) and in the local stack's state file; a request without it is 401.

The current deployment is remembered in ``<state_dir>/current.json`` and reloaded on start.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import shutil
import tarfile
import tempfile
import threading
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
from trashsorter_cli.device.component import READY_TIMEOUT_S, LocalComponent
from trashsorter_cli.device.core_rules import dependency_order
from trashsorter_cli.device.predictor import Classifier
from trashsorter_cli.device.runner import ComponentRunner, EnvironmentPreparation
from trashsorter_edge.contract import LABELS_FILE, MODEL_FILE

MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_REQUEST_BYTES = 64 * 1024
MAX_ARTIFACT_BYTES = 512 * 1024 * 1024
MAX_EXTRACTED_BYTES = 1024 * 1024 * 1024
REQUIRED_MEMBERS = (MODEL_FILE, LABELS_FILE)
COMPONENT_NAME = "com.trashsorter.classifier"  # trashsorter's component name unless the stack names another
THING_NAME = "local-device"
PUBLISHER = "trashsorter"  # trashsorter's component in a deployment: the recipe's ComponentPublisher
# How long a deployment may take on this core: the first Install creates the venv (its own Timeout bounds it),
# then the app loads its model.
DEPLOY_TIMEOUT_S = 1800.0
TOKEN_FILE = "token"  # noqa: S105 - the file's name, not a secret


checked_identifier = greengrass_v2.checked_identifier  # one rule for ids, where they enter


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
    """The device, in-process: ``LocalDevice(port=0).start()``, ``.connect(group)`` ... ``.stop()``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        state_dir: Path | str | None = None,
        s3: Any = None,
        thing: str = THING_NAME,
        component_name: str = COMPONENT_NAME,
    ) -> None:
        self.host = host
        self.port = port
        self.thing = thing
        self.component_name = component_name  # its venv is prepared before the first deployment
        self.state_dir = (
            Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="trashsorter-device-"))
        )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.token = _token(self.state_dir)
        self._s3 = s3
        self._lock = threading.Lock()  # guards the switch, not the (long) download
        self._deploy_lock = threading.Lock()  # one deployment at a time
        self._idle = threading.Event()  # set while no deployment is being applied
        self._idle.set()
        self._plane: Any = None
        self.classifier: Classifier | None = None
        self.component: LocalComponent | None = None
        self._preparing: EnvironmentPreparation | None = None
        self.model_id: str | None = None
        self.model_version: str | None = None  # the model component's version that runs
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
        work = self.state_dir / "nucleus" / "work" / self.component_name
        if not (work / "venv").is_dir():  # the first Install would create it; do it before a model arrives
            self._preparing = EnvironmentPreparation(work).start()
        record = self._record()
        if record and record.get("bundle_dir") and self.component is None:
            self.component = self._component_of(record)
        return self

    def connect(self, group: str, plane: Any = None) -> LocalDevice:
        """Come online as a core device of thing group ``group`` on the local control plane: the group's
        current deployment (and every later one) is delivered to :meth:`apply_deployment`."""
        from trashsorter_cli.local import greengrass_v2 as control_plane

        self._plane = plane or control_plane.PLANE
        core = control_plane.CoreConnection(self.thing, deliver=self.apply_deployment)
        self._plane.connect(core, groups=[group])
        return self

    def stop(self) -> None:
        if self.component is not None:
            self.component.stop()
            self.component = None
        if self._preparing is not None:
            self._preparing.cancel()  # never leave pip running behind, nor a half-made venv
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
                "thing": self.thing,
                "model_id": self.model_id,
                "deployment_id": self.deployment_id,
                "labels": list(self.classifier.labels) if self.classifier else [],
                "deployed_at": self.deployed_at,
                "component": (
                    {
                        "name": self.component.name,
                        "version": self.component.version,
                        "running": self.component.running(),
                        "live_view": self.component.live_url,
                    }
                    if self.component
                    else None
                ),
            }

    def apply_deployment(self, document: dict[str, Any]) -> None:
        """One deployment from the control plane, applied and reported (IN_PROGRESS, then SUCCEEDED or
        FAILED with the reason; a failed one is rolled back: the previous component keeps running)."""
        deployment_id = str(document.get("deploymentId", ""))
        report = self._plane.report if self._plane is not None else (lambda *a, **k: None)
        self._idle.clear()
        try:
            with self._deploy_lock:
                report(self.thing, deployment_id, "IN_PROGRESS")
                installed = {
                    n: str(s.get("componentVersion")) for n, s in document.get("components", {}).items()
                }
                try:
                    self._apply(document)
                except (DeploymentError, OSError, ValueError) as exc:
                    reason = f"rolled back to the previous deployment: {exc}"
                    report(self.thing, deployment_id, "FAILED", reason[:1000], [type(exc).__name__])
                else:
                    report(self.thing, deployment_id, "SUCCEEDED", installed=installed)
        finally:
            self._idle.set()

    def _apply(self, document: dict[str, Any]) -> None:
        recipes: dict[str, Any] = document.get("recipes", {})
        ours = sorted(n for n, r in recipes.items() if r.get("ComponentPublisher") == PUBLISHER)
        if not ours:
            return  # the group's deployment has no trashsorter component: nothing for this core to run
        order = dependency_order(recipes, ours)  # dependencies first; an unsatisfiable one fails it
        apps = [n for n in order if greengrass_v2.model_component_name(n) in recipes]
        if not apps:
            raise ArtifactError(f"the deployment's trashsorter components {ours} have no app and its model")
        app, model = apps[-1], greengrass_v2.model_component_name(apps[-1])
        update = _merge_update(document["components"][app])
        model_update = _merge_update(document["components"][model])
        defaults = recipes[model].get("ComponentConfiguration", {}).get("DefaultConfiguration", {})
        model_id = checked_identifier(greengrass_v2.merge(defaults, model_update).get("ModelId"), "ModelId")
        running = self.component
        if (
            running is not None
            and running.version == recipes[app].get("ComponentVersion")
            and self.model_version == recipes[model].get("ComponentVersion")
            and self.model_id == model_id
        ):
            return  # these versions already run here
        uris = [str(a.get("URI", "")) for a in recipes[model].get("Manifests", [{}])[0].get("Artifacts", [])]
        model_uri = next((u for u in uris if u.endswith("/" + greengrass_v2.MODEL_ARCHIVE)), "")
        self.deploy(
            model_id,
            model_uri,
            str(document["deploymentId"]),
            recipe=recipes[app],
            update=update,
            model=(recipes[model], model_update),
        )

    def deploy(
        self,
        model_id: str,
        artifact_uri: str,
        deployment_id: str | None = None,
        *,
        recipe: dict[str, Any],
        update: dict[str, Any] | None = None,
        model: tuple[dict[str, Any], dict[str, Any]],
    ) -> dict[str, Any]:
        """Download, verify, run the model component (its Startup check), switch, wait until the app runs; a
        DeploymentError (422/502 subclass) keeps (or restarts) the previous components and model."""
        deployment_id = checked_identifier(deployment_id or uuid.uuid4().hex, "deployment id")
        checked_identifier(model_id, "model id")
        parsed = urlparse(artifact_uri)
        if parsed.scheme != "s3" or not parsed.netloc or not parsed.path.strip("/"):
            raise ArtifactUnavailable(f"artifact_uri must be s3://bucket/key, got {artifact_uri!r}")
        target = self.state_dir / "models" / f"{_safe_name(deployment_id)}-{uuid.uuid4().hex[:8]}"
        try:
            model_dir = self._fetch(parsed.netloc, parsed.path.lstrip("/"), target)
            classifier = Classifier(model_dir)
            bundle = self._bundle(recipe, target / "bundle")
            model_bundle = self._bundle(model[0], target / "model")
            model_runner = self._model_runner(model_bundle, model[1])
            model_runner.install()
            model_runner.startup()  # a model that fails its check fails the deployment here
        except DeploymentError:
            shutil.rmtree(target, ignore_errors=True)
            raise
        previous_record = self._record()
        previous = self.component
        if previous is not None:
            previous.stop()  # the nucleus stops the old version before the new one runs
        component = self._component(
            bundle,
            len(classifier.labels),
            update or {},
            dependencies={model_runner.name: model_runner},
            install=previous is None or previous.version != recipe.get("ComponentVersion"),
        ).start(after=self._preparing)
        failure = component.wait_running(DEPLOY_TIMEOUT_S)
        if failure is not None:
            component.stop()
            shutil.rmtree(target, ignore_errors=True)
            self._roll_back(previous_record)
            raise DeploymentError(f"the component {component.version} did not start: {failure}")
        with self._lock:
            self.component = component
            self.classifier = classifier
            self.model_id = model_id
            self.model_version = model_runner.version
            self.deployment_id = deployment_id
            self.deployed_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
            record = {
                "model_id": model_id,
                "deployment_id": deployment_id,
                "deployed_at": self.deployed_at,
                "artifact_uri": artifact_uri,
                "model_dir": str(model_dir),
                "bundle_dir": str(bundle),
                "configuration": dict(update or {}),
                "model_bundle_dir": str(model_bundle),
                "model_configuration": dict(model[1]),
            }
        pending = self.state_dir / "current.json.tmp"
        pending.write_text(json.dumps(record))
        pending.replace(self.state_dir / "current.json")
        previous_dir = Path(previous_record["model_dir"]) if previous_record else None
        if previous_dir is not None and previous_dir != model_dir:  # the new one runs: the old one goes
            shutil.rmtree(_deployment_root(self.state_dir, previous_dir), ignore_errors=True)
        return {"status": "deployed", **{k: v for k, v in record.items() if not k.endswith("_dir")}}

    def _roll_back(self, record: dict[str, Any] | None) -> None:
        """ROLLBACK: the previous deployment's components run again with its model and configuration."""
        with self._lock:
            self.component = None
        if not record or not record.get("bundle_dir"):
            return
        component = self._component_of(record)
        with self._lock:
            self.component = component

    def _component_of(self, record: dict[str, Any]) -> LocalComponent | None:
        """The recorded deployment's components started again (the model component's Startup check, then
        the app: Install and Run, as a core starting up)."""
        labels = len(self.classifier.labels) if self.classifier else 1
        dependencies: dict[str, ComponentRunner] = {}
        if record.get("model_bundle_dir"):
            try:
                runner = self._model_runner(
                    Path(record["model_bundle_dir"]), record.get("model_configuration")
                )
                runner.install()
                runner.startup()
            except (DeploymentError, OSError, ValueError):
                return None  # a record this core can no longer run: nothing deployed
            dependencies[runner.name] = runner
        update = dict(record.get("configuration") or {})
        bundle = Path(record["bundle_dir"])
        return self._component(bundle, labels, update, dependencies=dependencies).start(after=self._preparing)

    def predict(self, image: bytes) -> dict[str, Any]:
        """The running component's result for ``image`` (it classifies; this process only hands over)."""
        self._idle.wait(READY_TIMEOUT_S)  # a deployment being applied: answer with its result
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
        for candidate in sorted(extracted.rglob(MODEL_FILE), key=lambda p: len(p.parts)):
            if (candidate.parent / LABELS_FILE).is_file():
                return candidate.parent
        raise ArtifactError(f"artifact has no {' + '.join(REQUIRED_MEMBERS)} (not a local ONNX model)")

    def _bundle(self, recipe: dict[str, Any], out: Path) -> Path:
        """The deployed component version on disk: its recipe and the artifacts it names."""
        try:
            greengrass_v2.write_recipe_bundle(out, recipe, s3=self._s3 or aws.client("s3"))
        except TrashsorterError as exc:
            raise ArtifactUnavailable(f"cannot download the component's artifacts: {exc}") from exc
        return out

    def _component(
        self,
        bundle: Path,
        labels: int,
        update: dict[str, Any],
        *,
        dependencies: dict[str, ComponentRunner],
        install: bool = True,
    ) -> LocalComponent:
        endpoint = getattr(getattr(self._s3, "meta", None), "endpoint_url", None)
        return LocalComponent(
            bundle,
            self.state_dir / "nucleus",
            thing=self.thing,
            endpoint_url=endpoint or os.environ.get("AWS_ENDPOINT_URL"),
            top_k=max(labels, 1),
            configuration_update=update,
            dependencies=dependencies,
            install=install,
        )

    def _model_runner(self, bundle: Path, update: dict[str, Any] | None) -> ComponentRunner:
        return ComponentRunner(
            bundle, self.state_dir / "nucleus", configuration=update or {}, thing=self.thing
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


def _merge_update(spec: dict[str, Any]) -> dict[str, Any]:
    """A component's ``configurationUpdate.merge`` of the deployment (JSON)."""
    try:
        update = json.loads((spec.get("configurationUpdate") or {}).get("merge") or "{}")
    except ValueError as exc:
        raise ArtifactError(f"the configuration update is not JSON: {exc}") from exc
    if not isinstance(update, dict):
        raise ArtifactError("the configuration update is not a JSON object")
    return update


def _token(state_dir: Path) -> str:
    """The device's control token, ``<state_dir>/token`` (created once, mode 0600)."""
    path = state_dir / TOKEN_FILE
    if path.is_file():
        token = path.read_text().strip()
        if len(token) >= 32:
            return token
    token = secrets.token_urlsafe(32)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(token + "\n")
    return token


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
            self.send_header("X-Content-Type-Options", "nosniff")
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

        def _allowed(self, *, control: bool) -> bool:
            """Host is this device's address (no DNS rebinding), an Origin (a browser's request) is this
            device's own, and a control request carries the token."""
            own = {f"127.0.0.1:{device.port}", f"localhost:{device.port}", f"{device.host}:{device.port}"}
            if self.headers.get("Host", "") not in own:
                self._send(HTTPStatus.FORBIDDEN, {"error": "unexpected Host header"})
                return False
            origin = self.headers.get("Origin")
            if origin is not None and origin.removeprefix("http://") not in own:
                self._send(HTTPStatus.FORBIDDEN, {"error": "cross-site requests are refused"})
                return False
            if self.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
                self._send(HTTPStatus.FORBIDDEN, {"error": "cross-site requests are refused"})
                return False
            if control:
                offered = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
                if not hmac.compare_digest(offered.encode(), device.token.encode()):
                    self._send(HTTPStatus.UNAUTHORIZED, {"error": f"token required (see {TOKEN_FILE})"})
                    return False
            return True

        def do_GET(self) -> None:
            url = urlparse(self.path)
            route = url.path.rstrip("/")
            if not self._allowed(control=route != "/status"):
                return
            if route == "/status":
                self._send(HTTPStatus.OK, device.status())
            elif route == "/iot/messages":
                query = parse_qs(url.query)
                try:
                    after = int((query.get("after") or ["0"])[0] or 0)
                except ValueError:
                    self._send(HTTPStatus.BAD_REQUEST, {"error": "after must be a number"})
                    return
                self._send(HTTPStatus.OK, {"messages": iot_messages(after, (query.get("topic") or [""])[0])})
            else:
                self._send(HTTPStatus.NOT_FOUND, {"error": f"no route GET {url.path[:200]}"})

        def do_POST(self) -> None:
            route = urlparse(self.path).path.rstrip("/")
            if not self._allowed(control=True):
                return
            if route == "/predict":
                self._predict()
            else:
                self._send(HTTPStatus.NOT_FOUND, {"error": f"no route POST {route[:200]}"})

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
