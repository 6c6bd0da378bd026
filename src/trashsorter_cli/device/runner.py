"""A Greengrass-nucleus-like runner for a component bundle (``recipe.json`` + ``artifacts/``).

It does what a nucleus does with a local deployment, for the parts trashsorter's component uses:

* resolves the recipe variables ``{artifacts:path}``, ``{artifacts:decompressedPath}``, ``{work:path}``,
  ``{iot:thingName}`` and ``{configuration:/json/pointer}`` (the recipe's ``DefaultConfiguration`` merged
  with the caller's configuration update);
* unarchives ``Unarchive: ZIP`` artifacts into the decompressed path (regular files only, no escapes);
* runs ``Install`` (in the component's work directory, ``Setenv`` applied, the step's ``Timeout``: 120 s
  unless the recipe says otherwise; a failed or timed-out Install is ERRORED and retried, the third error is
  BROKEN; its stdout and stderr go to ``<root>/logs/<ComponentName>.log``, as a nucleus writes them), then
  ``Run`` as a child process; :meth:`ComponentRunner.stop` sends
  SIGTERM and runs ``Shutdown``;
* applies what a core enforces (:mod:`trashsorter_cli.device.core_rules`): the component's ``accessControl``
  read with the nucleus's ``interpolateComponentConfiguration`` (false unless the caller says otherwise), and
  its AWS IoT publishes authorized against it (the component's ``AWS_ENDPOINT_URL`` is the core's gateway).

On a developer machine the runner sets ``TRASHSORTER_EDGE_SHARED_SITE`` to this interpreter's site-packages,
so the component's own venv (created by its ``Install``) finds pinned packages already installed here instead
of downloading them again; pip still checks every pin. A real device has no such shortcut.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sysconfig
import threading
import zipfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from trashsorter.deploy.greengrass_v2 import DEPENDENCIES, merge
from trashsorter.errors import DeploymentError
from trashsorter_cli.device.core_rules import (
    IotGateway,
    NucleusSettings,
    dependencies_of,
    effective_access_control,
)

_VARIABLE = "{configuration:"
DEFAULT_STEP_TIMEOUT = 120.0  # Install / Startup without a Timeout (recipe reference)
SHUTDOWN_TIMEOUT = 15.0  # Shutdown without a Timeout
ERRORS_BEFORE_BROKEN = 3  # a component that errors this many times goes BROKEN (the nucleus stops retrying)
LIFECYCLE_LOG = "lifecycle.log"  # under the nucleus root: one line per lifecycle step run (name version step)
# ``{<dependency>:artifacts:path}``, ``{<dependency>:artifacts:decompressedPath}``,
# ``{<dependency>:configuration:/pointer}``: a direct dependency's paths and configuration (recipe reference)
_DEPENDENCY_VARIABLE = re.compile(
    r"\{([A-Za-z0-9][A-Za-z0-9._-]*):(artifacts:path|artifacts:decompressedPath|configuration:(/[^}]*))\}"
)


class RecipeError(DeploymentError):
    """The bundle or its recipe cannot be run."""


def _pointer(config: Mapping[str, Any], pointer: str) -> str:
    node: Any = config
    for part in pointer.strip("/").split("/"):
        if not isinstance(node, Mapping) or part not in node:
            raise RecipeError(
                f"the recipe reads {{configuration:{pointer}}} but the configuration has no such key"
            )
        node = node[part]
    return json.dumps(node) if isinstance(node, Mapping | list) else str(node)


def _unzip(archive: Path, destination: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            name = PurePosixPath(info.filename)
            if name.is_absolute() or ".." in name.parts:
                raise RecipeError(f"{archive.name}: member {info.filename!r} escapes the artifact directory")
        zf.extractall(destination)


def shared_site_env() -> dict[str, str]:
    """The developer-machine shortcut (see the module docstring) for an Install step."""
    return {"TRASHSORTER_EDGE_SHARED_SITE": sysconfig.get_paths()["purelib"]}


class EnvironmentPreparation:
    """The component's venv created ahead of its first deployment, in the background, with the installed
    ``trashsorter_edge``'s own ``install.py`` (what the component's Install runs), so that Install later only
    checks the pins. :meth:`join` waits for it (the component's Install does); :meth:`cancel` ends it at
    once (a device stopped mid-way) and removes the half-made venv, so that the next start makes it again."""

    def __init__(self, work_path: Path, timeout: float = 900.0) -> None:
        self.work_path = work_path
        self.timeout = timeout
        self._lock = threading.Lock()
        self._cancelled = False
        self._process: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._run, name="venv-preparation", daemon=True)

    def start(self) -> EnvironmentPreparation:
        self._thread.start()
        return self

    def _run(self) -> None:
        import trashsorter_edge
        from trashsorter_cli.local import children

        script = Path(trashsorter_edge.__file__).with_name("install.py")
        self.work_path.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if self._cancelled:
                return
            # spawned from this thread, which waits for it: the child dies with the device's process
            self._process = children.spawn(
                ["python3", str(script), str(self.work_path)], env={**os.environ, **shared_site_env()}
            )
        try:
            self._process.wait(self.timeout)
        except subprocess.TimeoutExpired:
            children.stop([self._process])

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def cancel(self) -> None:
        """Stop a preparation still running and remove what it made unless it had finished well (the local
        stack may have stopped it first, with its other children)."""
        from trashsorter_cli.local import children

        with self._lock:
            self._cancelled = True
            process = self._process
        if process is None:
            return
        if process.poll() is None:
            children.stop([process])
        self.join(30)
        if process.returncode != 0:
            shutil.rmtree(self.work_path / "venv", ignore_errors=True)


# The nucleus's names for a machine's architecture (the recipe's ``Platform.architecture``).
ARCHITECTURES = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "aarch64",
    "arm64": "aarch64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i686": "x86",
    "i386": "x86",
}


def select_manifest(recipe: Mapping[str, Any], machine: str) -> dict[str, Any]:
    """The first manifest whose platform this Linux machine matches, as a core chooses one; none -> the
    component cannot be installed here (a deployment fails)."""
    architecture = ARCHITECTURES.get(machine.lower(), machine.lower())
    for manifest in recipe.get("Manifests", []):
        wanted = manifest.get("Platform", {}) or {}
        if wanted.get("os", "*") in ("linux", "*") and wanted.get("architecture", "*") in (architecture, "*"):
            lifecycle = manifest.get("Lifecycle") or {}
            if "Startup" in lifecycle and "Run" in lifecycle:  # "You can define only one Startup or Run"
                raise RecipeError(f"{recipe.get('ComponentName')}: a lifecycle has either Startup or Run")
            return dict(manifest)
    raise RecipeError(f"{recipe.get('ComponentName')}: no manifest for linux/{architecture}")


def dependency_runners(bundle: Path | str, work_root: Path | str, *, thing: str = "local") -> dict[str, Any]:
    """The bundle's dependencies (``<bundle>/dependencies/<component>/``, as ``trashsorter edge bundle``
    writes them), each installed and started (Install, Startup) before the component that depends on them."""
    folder = Path(bundle) / DEPENDENCIES
    found: dict[str, ComponentRunner] = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        runner = ComponentRunner(path, work_root, thing=thing)
        runner.install()
        runner.startup()
        found[runner.name] = runner
    return found


class ComponentRunner:
    """``ComponentRunner(bundle, work_root, configuration=..., thing=...)``: ``install()``, then ``start()``
    (a background process) or ``run()`` (to completion, output captured)."""

    def __init__(
        self,
        bundle: Path | str,
        work_root: Path | str,
        *,
        configuration: Mapping[str, Any] | None = None,
        thing: str = "local",
        env: Mapping[str, str] | None = None,
        nucleus: NucleusSettings | None = None,
        dependencies: Mapping[str, ComponentRunner] | None = None,
    ) -> None:
        self.bundle = Path(bundle)
        recipe_path = self.bundle / "recipe.json"
        if not recipe_path.is_file():
            raise RecipeError(f"{recipe_path} not found (write one with `trashsorter edge bundle`)")
        self.recipe: dict[str, Any] = json.loads(recipe_path.read_text())
        self.name = str(self.recipe["ComponentName"])
        self.version = str(self.recipe["ComponentVersion"])
        self.manifest = select_manifest(self.recipe, platform.machine())
        defaults = self.recipe.get("ComponentConfiguration", {}).get("DefaultConfiguration", {})
        self.configuration = merge(defaults, configuration or {})
        self.thing = thing
        self.artifacts_path = (self.bundle / "artifacts").resolve()
        root = Path(work_root).resolve()
        self.root = root
        # the direct dependencies this core runs (their paths and configuration interpolate into this recipe)
        self.dependencies = {
            n: r for n, r in (dependencies or {}).items() if n in dependencies_of(self.recipe)
        }
        self.work_path = root / "work" / self.name
        self.decompressed_path = root / "artifacts-unarchived" / self.name / self.version
        self.log_path = root / "logs" / f"{self.name}.log"  # a nucleus's <root>/logs/<ComponentName>.log
        self.extra_env = dict(env or {})
        self.nucleus = nucleus or NucleusSettings()
        self.access_control = effective_access_control(self.configuration, thing, self.nucleus)
        self.gateway: IotGateway | None = None
        self.process: subprocess.Popen[str] | None = None

    # -- recipe variables ---------------------------------------------------------------------------------
    def _dependency_value(self, found: re.Match[str]) -> str:
        dependency = self.dependencies.get(found.group(1))
        if dependency is None:
            return found.group(0)  # only direct dependencies: anything else stays as written
        if found.group(3) is not None:
            return _pointer(dependency.configuration, found.group(3))
        if found.group(2) == "artifacts:decompressedPath":
            return str(dependency.decompressed_path)
        unreadable = [
            str(a.get("URI", "")).rsplit("/", 1)[-1]
            for a in dependency.manifest.get("Artifacts", [])
            if "ALL"
            not in ((a.get("Permission") or {}).get("Read"), (a.get("Permission") or {}).get("Execute"))
        ]
        if unreadable:  # OWNER (the default) lets only the dependency's own user read its artifacts
            raise RecipeError(
                f"{self.name} reads the artifacts of {dependency.name}, whose {', '.join(unreadable)} "
                "other components cannot read (Permission Read is not ALL)"
            )
        return str(dependency.artifacts_path)

    def resolve(self, text: str) -> str:
        text = _DEPENDENCY_VARIABLE.sub(self._dependency_value, text)
        out = (
            text.replace("{artifacts:path}", str(self.artifacts_path))
            .replace("{artifacts:decompressedPath}", str(self.decompressed_path))
            .replace("{work:path}", str(self.work_path))
            .replace("{iot:thingName}", self.thing)
        )
        while _VARIABLE in out:
            start = out.index(_VARIABLE)
            end = out.index("}", start)
            out = (
                out[:start] + _pointer(self.configuration, out[start + len(_VARIABLE) : end]) + out[end + 1 :]
            )
        return out

    def _step(self, name: str) -> str | None:
        step = self.manifest.get("Lifecycle", {}).get(name)
        if step is None:
            return None
        script = step.get("Script") if isinstance(step, Mapping) else step
        return self.resolve(str(script))

    def _timeout(self, name: str) -> float:
        step = self.manifest.get("Lifecycle", {}).get(name)
        if isinstance(step, Mapping) and step.get("Timeout") is not None:
            return float(step["Timeout"])
        return SHUTDOWN_TIMEOUT if name == "Shutdown" else DEFAULT_STEP_TIMEOUT

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        for key, value in self.manifest.get("Lifecycle", {}).get("Setenv", {}).items():
            env[key] = self.resolve(str(value))
        env["AWS_IOT_THING_NAME"] = self.thing
        env.update(shared_site_env())
        env.update(self.extra_env)
        if self.gateway is not None:
            env["AWS_ENDPOINT_URL"] = self.gateway.url
        return env

    def _shell(self, script: str) -> dict[str, Any]:
        """A lifecycle script as the nucleus runs it: ``sh -c`` in the work path with the recipe's env."""
        return {"args": ["sh", "-c", script], "cwd": self.work_path, "env": self._env(), "text": True}

    # -- lifecycle ----------------------------------------------------------------------------------------
    def prepare_artifacts(self) -> None:
        for artifact in self.manifest.get("Artifacts", []):
            filename = str(artifact["URI"]).rsplit("/", 1)[-1]
            path = self.artifacts_path / filename
            if not path.is_file():
                raise RecipeError(f"artifact {filename} is not in {self.artifacts_path}")
            if str(artifact.get("Unarchive", "NONE")).upper() == "ZIP":
                target = self.decompressed_path / Path(filename).stem
                shutil.rmtree(target, ignore_errors=True)
                target.mkdir(parents=True)
                _unzip(path, target)

    def install(self, timeout: float | None = None) -> None:
        self.prepare_artifacts()
        self.work_path.mkdir(parents=True, exist_ok=True)
        self._to_completion("Install", timeout)

    def startup(self, timeout: float | None = None) -> None:
        """The ``Startup`` step (a component RUNNING once it exits 0; components that depend on it start
        only then). A component without one has nothing to do here."""
        self._to_completion("Startup", timeout)

    def _log(self, step: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LIFECYCLE_LOG, "a", encoding="utf-8") as log:
            log.write(f"{self.name} {self.version} {step}\n")

    def _to_completion(self, step: str, timeout: float | None) -> None:
        """Install / Startup: a step that fails or passes its timeout is ERRORED and retried; the third
        error is BROKEN (RecipeError)."""
        script = self._step(step)
        if script is None:
            return
        limit = timeout if timeout is not None else self._timeout(step)
        why = ""
        for _attempt in range(ERRORS_BEFORE_BROKEN):  # ERRORED, retried; the third error is BROKEN
            self._log(step)
            try:
                done = subprocess.run(**self._shell(script), capture_output=True, timeout=limit, check=False)
            except subprocess.TimeoutExpired:
                why = f"did not finish within its timeout of {limit:g} s"
                continue
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("a", encoding="utf-8") as log:  # the step's stdout and stderr
                log.write(done.stdout + done.stderr)
            if done.returncode == 0:
                return
            why = f"failed ({done.returncode}): {done.stderr[-2000:]}"
        raise RecipeError(f"{self.name} BROKEN after {ERRORS_BEFORE_BROKEN} errors: {step} {why}")

    def start(self, *, stdout: Any = subprocess.PIPE, stderr: Any = subprocess.PIPE) -> subprocess.Popen[str]:
        script = self._step("Run")
        if script is None:
            raise RecipeError(f"{self.name}: the recipe has no Run step")
        self._log("Run")
        upstream = self.extra_env.get("AWS_ENDPOINT_URL")
        if upstream and self.gateway is None:
            self.gateway = IotGateway(upstream, self.access_control, self.name).start()
        self.process = subprocess.Popen(
            **self._shell(script), stdout=stdout, stderr=stderr, start_new_session=True
        )
        return self.process

    def run(self, timeout: float = 600.0) -> subprocess.CompletedProcess[str]:
        """Run to completion (an app started with ``--once``): stdout/stderr captured."""
        process = self.start()
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise
        self.shutdown()
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)

    def stop(self, timeout: float = 10.0) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=timeout)
        self.shutdown()
        if self.gateway is not None:
            self.gateway.stop()
            self.gateway = None

    def shutdown(self) -> None:
        script = self._step("Shutdown")
        if script is not None:
            try:
                subprocess.run(
                    **self._shell(script), capture_output=True, check=False, timeout=self._timeout("Shutdown")
                )
            except subprocess.TimeoutExpired:
                return  # the nucleus stops waiting for a Shutdown script after its timeout
