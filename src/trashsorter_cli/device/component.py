"""The local device's classifier IS the Greengrass v2 component: the bundle the package step published
(``recipe.json`` + ``trashsorter-edge.zip`` + ``model.onnx.tar.gz``), installed and started by
:class:`~trashsorter_cli.device.runner.ComponentRunner`, exactly as a nucleus would on a camera.

Its source is a folder (``<state>/camera``): :meth:`LocalComponent.classify` drops an image there (written
under a temporary name, then renamed, so the app never reads half a file) and waits for the app's JSON line
about it on stdout (``Output = jsonl``). The app also publishes every result to the local endpoint's IoT data
plane (``--output iot-data``, ``AWS_ENDPOINT_URL``), where ``trashsorter watch`` sees them.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from trashsorter.deploy.greengrass_v2 import merge
from trashsorter.errors import DeploymentError, Rejection
from trashsorter_cli.device.runner import ComponentRunner, EnvironmentPreparation

READY_TIMEOUT_S = 300.0  # Install creates a venv the first time


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LocalComponent:
    """One running component version; ``classify(bytes)`` -> the app's result for that image."""

    def __init__(
        self,
        bundle: Path,
        nucleus_root: Path,
        *,
        thing: str,
        endpoint_url: str | None,
        top_k: int,
        configuration_update: dict[str, Any] | None = None,
        dependencies: dict[str, ComponentRunner] | None = None,
        install: bool = True,
    ) -> None:
        self.camera = nucleus_root / "camera"
        self.camera.mkdir(parents=True, exist_ok=True)
        outputs = "--output iot-data " if endpoint_url else ""
        # the deployment's configuration update, then what this local core sets for itself: its camera is a
        # folder, results come back on stdout, the live view on a free local port
        local: dict[str, Any] = {
            "Source": str(self.camera),
            "Output": "jsonl",
            "ExtraArgs": f"{outputs}--poll 0.05",
            "TopK": top_k,
            "Inbox": {"PerMinute": 60},  # a developer's machine: no uplink to spare
            "LiveView": {"Port": free_port(), "Host": "127.0.0.1"},
        }
        configuration = merge(configuration_update or {}, local)
        self.live_url = f"http://127.0.0.1:{configuration['LiveView']['Port']}/"
        env = {"AWS_ENDPOINT_URL": endpoint_url, "AWS_DEFAULT_REGION": "us-east-1"} if endpoint_url else {}
        self.runner = ComponentRunner(
            bundle, nucleus_root, configuration=configuration, thing=thing, env=env, dependencies=dependencies
        )
        # Install runs when the component version is installed (and when the core starts); a restart for a
        # new version of a dependency (HARD) runs only Run
        self.install = install
        self._results: dict[str, dict[str, Any]] = {}
        self._changed = threading.Condition()
        self._ready = threading.Event()
        self._failed: str | None = None
        self._threads: list[threading.Thread] = []
        self._after: EnvironmentPreparation | None = None
        self._cancelled = threading.Event()
        self._starting = threading.Lock()  # stop() never races the Run step

    @property
    def version(self) -> str:
        return self.runner.version

    @property
    def name(self) -> str:
        return self.runner.name

    def start(self, after: EnvironmentPreparation | None = None) -> LocalComponent:
        """Install and Run in the background (a deployment is accepted before the component runs), once
        ``after`` (the device's environment preparation) has finished."""
        self._after = after
        thread = threading.Thread(target=self._install_and_run, name="local-component", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def _install_and_run(self) -> None:
        if self._after is not None:
            self._after.join()
        try:
            if self._cancelled.is_set():
                return
            if self.install:
                self.runner.install()
            else:
                self.runner.prepare_artifacts()
            with self._starting:
                if self._cancelled.is_set():
                    return
                process = self.runner.start()
        except (DeploymentError, OSError) as exc:
            self._failed = str(exc)
            self._ready.set()
            return
        for stream, handler in ((process.stdout, self._on_result), (process.stderr, self._on_message)):
            reader = threading.Thread(target=self._read, args=(stream, handler), daemon=True)
            reader.start()
            self._threads.append(reader)

    def _read(self, stream: Any, handler: Any) -> None:
        last = ""
        for line in stream:
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                last = line.strip() or last
                continue
            if isinstance(message, dict):
                handler(message)
        if handler == self._on_message and not self._ready.is_set():  # it ended before it ran
            process = self.runner.process
            code = process.wait() if process is not None else None
            self._failed = f"the app exited ({code}) before its model loaded: {last[-500:]}"
            self._ready.set()

    def _on_result(self, result: dict[str, Any]) -> None:
        with self._changed:
            self._results[str(result.get("image"))] = result
            self._changed.notify_all()

    def _on_message(self, message: dict[str, Any]) -> None:
        payload = message.get("payload") or {}
        if payload.get("status") == "loaded":
            self._ready.set()
        elif payload.get("status") == "error" and payload.get("image"):
            with self._changed:
                self._results[str(payload["image"])] = {"error": payload.get("error", "error")}
                self._changed.notify_all()
        elif payload.get("status") == "error" and not self._ready.is_set():
            self._failed = str(payload.get("error"))
            self._ready.set()

    def wait_running(self, timeout: float) -> str | None:
        """``None`` once the app has loaded its model and runs, else why not (the Startup check a core makes
        before it reports the deployment: a model that does not load fails the deployment)."""
        if not self._ready.wait(timeout):
            return f"not running after {timeout:g} s"
        if self._failed is not None:
            return self._failed
        return None if self.running() else "the component exited"

    def running(self) -> bool:
        process = self.runner.process
        return (
            self._ready.is_set() and self._failed is None and process is not None and process.poll() is None
        )

    def classify(self, image: bytes, timeout: float = 60.0) -> dict[str, Any]:
        if not self._ready.wait(READY_TIMEOUT_S):
            raise DeploymentError("the edge component did not start in time")
        if self._failed is not None:
            raise DeploymentError(f"the edge component failed: {self._failed}")
        name = f"{uuid.uuid4().hex}.jpg"
        pending = self.camera / f".{name}.part"
        pending.write_bytes(image)
        pending.replace(self.camera / name)
        deadline = time.monotonic() + timeout
        with self._changed:
            while name not in self._results:
                left = deadline - time.monotonic()
                if left <= 0 or not self.running():
                    raise DeploymentError(f"the edge component gave no result for {name}")
                self._changed.wait(min(left, 0.5))
            result = self._results.pop(name)
        (self.camera / name).unlink(missing_ok=True)
        if "error" in result:
            raise Rejection("undecodable_image", str(result["error"]))
        return result

    def stop(self) -> None:
        self._cancelled.set()
        if not self._ready.is_set():
            self._failed = "stopped before it ran"
            self._ready.set()
        with self._starting:
            self.runner.stop()
        for thread in self._threads:
            thread.join(timeout=5)
