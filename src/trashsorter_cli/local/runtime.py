"""Everything of the embedded local mode in one process: moto server + stack + local device + dispatcher.

``LocalRuntime`` is used by ``trashsorter local up`` (foreground, until Ctrl-C / SIGTERM /
``trashsorter local down``), by ``trashsorter demo`` and by the e2e tests. Process-wide environment it sets
while running (restored by :meth:`LocalRuntime.stop`):

* ``AWS_ENDPOINT_URL`` = the moto server, so every boto3 client in this process *and* the local trainer
  subprocess (it inherits the environment) talk to the local endpoint;
* fake credentials and ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` (the endpoint accepts anything; no real
  profile is ever read);
* ``POWERTOOLS_TRACE_DISABLED=true`` (no X-Ray daemon locally);
* ``TRASHSORTER_LOG_DIR`` = ``<state dir>/logs`` (trainer logs), unless already set.

Each function's own environment (template.yaml, resolved by the stack) is applied while its handler module
is imported (its cold start: ``SETTINGS = XSettings.from_env()``).

With the device, the local endpoint has an IoT thing group ``LOCAL_THING_GROUP`` holding the thing
``local-device``, the stack's ``EdgeThingGroupArn`` is that group (unless given), and the local device
connects to the endpoint's Greengrass v2 control plane as that core device: the package step deploys to it
with the same Greengrass v2 code as on AWS.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import threading
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import IO, Any

import boto3

from trashsorter import aws
from trashsorter_cli.local import (
    children,
    greengrass_v2,
    greengrass_v2_state,
    heal,
    moto_patches,
    persistence,
    sagemaker_jobs,
    schedules,
)
from trashsorter_cli.local.dispatcher import Dispatcher
from trashsorter_cli.local.server import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    LOCAL_CREDENTIALS,
    LocalState,
    MotoServer,
    default_state_path,
    free_port,
    remove_state,
    write_state,
)
from trashsorter_cli.local.stack import LocalStack, deploy_stack
from trashsorter_cli.local.template import load_template

DEFAULT_STACK_NAME = "trashsorter"
DEFAULT_REGION = "us-east-1"
# The template's own defaults: training runs as on AWS (CreateTrainingJob), emulated by sagemaker_jobs.
# Local mode's own defaults (docs/local-mode.md): a local upload is quiet after a few seconds, not a minute.
DEFAULT_LOCAL_OVERRIDES: dict[str, str] = {"IngestSettleSeconds": "10"}
LOCAL_THING_GROUP = "trashsorter-local"  # the local core device's thing group (EdgeThingGroupArn by default)
PACKAGE_FUNCTION = "PackageFunction"


def function_memory(template: Mapping[str, Any]) -> dict[str, int]:
    """MemorySize per function (its own, else Globals) for the fake Lambda context."""
    default = int(template.get("Globals", {}).get("Function", {}).get("MemorySize", 128))
    return {
        lid: int(res.get("Properties", {}).get("MemorySize", default))
        for lid, res in template.get("Resources", {}).items()
        if res.get("Type") == "AWS::Serverless::Function"
    }


class LocalRuntime:
    """Start/stop the whole local stack in this process (see the module docstring)."""

    def __init__(
        self,
        *,
        port: int | None = DEFAULT_PORT,
        host: str = DEFAULT_HOST,
        stack_name: str = DEFAULT_STACK_NAME,
        region: str = DEFAULT_REGION,
        overrides: Mapping[str, str] | None = None,
        state_path: Path | None = None,
        device: bool = True,
        log_file: Path | None = None,
        log_stream: IO[str] | None = None,
        retry_delay: int = 2,
        wait_time: int = 1,
        persist: bool = True,
    ) -> None:
        self.host = host
        self.port = port if port else free_port(host)
        self.stack_name = stack_name
        self.region = region
        self.overrides = {**DEFAULT_LOCAL_OVERRIDES, **dict(overrides or {})}
        self.state_path = Path(state_path or default_state_path())
        self.state_dir = self.state_path.parent
        self.with_device = device
        self.log_file = log_file
        self.log_stream = log_stream
        self.retry_delay = retry_delay
        self.wait_time = wait_time
        self.persist = persist
        self.store: persistence.Store | None = None
        self.restored: dict[str, int] = {}
        self._live: dict[str, dict[str, dict[str, Any]]] = {}
        self.healed: dict[str, Any] = {}
        self._deployed = False
        self.server = MotoServer(host, self.port)
        self.stack: LocalStack | None = None
        self.dispatcher: Dispatcher | None = None
        self.scheduler: schedules.Scheduler | None = None
        self.device: Any = None
        self.device_url = ""
        self.state: LocalState | None = None
        self._saved_env: dict[str, str | None] = {}
        self._log_stream: IO[str] | None = None
        self._saved_stdout: Any = None
        self._stop_requested = threading.Event()

    @property
    def endpoint_url(self) -> str:
        return self.server.endpoint_url

    def session(self) -> boto3.session.Session:
        return boto3.session.Session(region_name=self.region)

    def client(self, service: str) -> Any:
        return self.session().client(service, region_name=self.region, endpoint_url=self.endpoint_url)

    # ---------------------------------------------------------------------------- lifecycle

    def start(self) -> LocalState:
        """Server -> stack -> restored state (``persist``) -> device -> handlers (cold starts) -> dispatcher
        threads -> heals (``persist``) -> the device's champion -> state file."""
        try:
            self._set_environment()
            moto_patches.install(speed=True)  # the local stack holds real data: fast DynamoDB
            self.server.start()
            if self.with_device:
                self.overrides.setdefault("EdgeThingGroupArn", self._local_thing_group())
            sagemaker_jobs.install(
                sagemaker_jobs.JobEmulator(client=self.client, work_root=self.state_dir / "jobs")
            )
            self.stack = deploy_stack(
                self.session(),
                stack_name=self.stack_name,
                overrides=self.overrides,
                region=self.region,
                endpoint_url=self.endpoint_url,
            )
            self._deployed = True
            if self.persist:
                self._restore_state()
            env_overrides: dict[str, dict[str, str]] = {}
            if self.with_device:
                self.device_url = self._start_device()
            self._redirect_logs()
            self.dispatcher = Dispatcher.from_stack(
                self.stack,
                sqs=self.client("sqs"),
                env_overrides=env_overrides,
                memory=function_memory(load_template()),
                retry_delay=self.retry_delay,
                wait_time=self.wait_time,
            )
            self.dispatcher.start()
            self.scheduler = self._start_schedules()
            environments = {fn: self.stack.function_env(fn) for fn in self.stack.functions}
            for fn, extra in env_overrides.items():
                environments[fn].update(extra)
            if self.persist:  # what a crash lost: queued uploads, a run cut off mid-training
                self.healed = heal.after_restore(environments, live=self._live, client=self.client)
            if self.device is not None:
                heal.serve_champion(self.device, environments[PACKAGE_FUNCTION], client=self.client)
            self.state = LocalState(
                endpoint_url=self.endpoint_url,
                region=self.region,
                stack_name=self.stack_name,
                outputs=dict(self.stack.outputs),
                resources=dict(self.stack.resources),
                environments=environments,
                parameters=dict(self.stack.parameters),
                device_url=self.device_url,
                device_token=str(self.device.token) if self.device is not None else "",
                pid=os.getpid(),
                started_at=time.time(),
            )
            write_state(self.state, self.state_path)
            return self.state
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Schedules -> dispatcher (lets a running handler finish) -> child processes (trainer) -> device ->
        server -> state file -> environment."""
        if self.scheduler is not None:
            self.scheduler.stop()
            self.scheduler = None
        if self.dispatcher is not None:
            self.dispatcher.stop(timeout=30)
            self.dispatcher = None
        children.stop_all()
        if self.device is not None:
            try:
                self.device.stop()
            finally:
                self.device = None
        sagemaker_jobs.uninstall()  # kills running training children
        self.server.stop()
        greengrass_v2.PLANE.detach()  # what it holds stays on disk; a later stack starts from the file
        if self.store is not None:
            persistence.detach(self.store)
            self.store.close()
            self.store = None
        if self.stack is not None and self._deployed:  # once: a later stack of this name may hold them
            buckets, tables = self._persisted()
            persistence.forget(self.stack_name, region=self.region, buckets=buckets, tables=tables)
            self._deployed = False
        remove_state(self.state_path, pid=os.getpid())
        self._restore_environment()
        if self._saved_stdout is not None:
            sys.stdout = self._saved_stdout
            self._saved_stdout = None
        if self._log_stream is not None:
            from trashsorter.observability import logger

            registered = getattr(logger, "registered_handler", None)
            if isinstance(registered, logging.StreamHandler) and registered.stream is self._log_stream:
                registered.setStream(sys.stdout)
            if self.log_file is not None:  # a stream we were given is not ours to close
                self._log_stream.close()
            self._log_stream = None

    def __enter__(self) -> LocalRuntime:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve_forever(self) -> None:
        """Block until Ctrl-C or SIGTERM (``trashsorter local down``); then stop."""

        def _on_signal(signum: int, frame: FrameType | None) -> None:
            self._stop_requested.set()

        previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not self._stop_requested.wait(0.5):
                pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.stop()

    # ---------------------------------------------------------------------------- helpers

    def _set_environment(self) -> None:
        env = {
            **LOCAL_CREDENTIALS,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "POWERTOOLS_TRACE_DISABLED": "true",
            "TRASHSORTER_LOG_DIR": os.environ.get("TRASHSORTER_LOG_DIR") or str(self.state_dir / "logs"),
        }
        self._saved_env = {key: os.environ.get(key) for key in [*env, "AWS_PROFILE"]}
        os.environ.pop("AWS_PROFILE", None)
        os.environ.update(env)
        aws.reset_clients()

    def _restore_environment(self) -> None:
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env = {}
        aws.reset_clients()

    def _persisted(self) -> tuple[list[str], list[str]]:
        """Physical names of the stack's buckets and tables: what the local state keeps."""
        assert self.stack is not None
        types = self.stack.resource_types
        named = [(types[lid], phys) for lid, phys in self.stack.resources.items() if lid in types]
        return (
            [phys for kind, phys in named if kind == "AWS::S3::Bucket"],
            [phys for kind, phys in named if kind == "AWS::DynamoDB::Table"],
        )

    def _restore_state(self) -> None:
        """Load the state of ``<state dir>/state`` into moto (no notifications), then journal every change;
        the Greengrass v2 control plane's state likewise (``greengrass_v2_state``)."""
        buckets, tables = self._persisted()
        self.store = persistence.Store(persistence.state_root(self.state_dir))
        restored = persistence.restore(self.store, region=self.region, buckets=buckets, tables=tables)
        self.restored, self._live = restored.counts, restored.live
        self.store.open()
        persistence.attach(self.store, buckets=buckets, tables=tables)
        plane_file = greengrass_v2_state.state_file(persistence.state_root(self.state_dir), self.stack_name)
        greengrass_v2.PLANE.attach(greengrass_v2_state.PlaneStore(plane_file))

    def _start_device(self) -> str:
        from trashsorter_cli.device.server import LocalDevice, clear_iot_messages

        clear_iot_messages()  # `watch` replays this stack's messages, never an earlier stack's

        # The device serves the champion the (restored) registry names, or nothing: a model left on disk that
        # is not that champion goes (heal.serve_champion deploys the champion once the device runs).
        assert self.stack is not None
        champion = heal.champion_id(self.stack.function_env(PACKAGE_FUNCTION), client=self.client)
        device_dir = self.state_dir / "device"
        package_env = self.stack.function_env(PACKAGE_FUNCTION)
        component = package_env.get("EDGE_COMPONENT_NAME") or "com.trashsorter.classifier"

        def make() -> LocalDevice:
            return LocalDevice(self.host, 0, device_dir, s3=self.client("s3"), component_name=component)

        device = make()
        if device.recorded_model_id not in (None, champion):
            shutil.rmtree(device_dir, ignore_errors=True)
            device = make()
        self.device = device
        self.device.start()
        group = package_env.get("EDGE_THING_GROUP_ARN", "")
        if group.endswith(f":thinggroup/{LOCAL_THING_GROUP}"):
            self.device.connect(LOCAL_THING_GROUP)
        return str(self.device.url)

    def _start_schedules(self) -> schedules.Scheduler:
        """The template's Schedule rules, fired as EventBridge fires them (moto does not)."""
        stack, sqs = self.stack, self.client("sqs")
        assert stack is not None

        def send(schedule: schedules.Schedule) -> None:
            sqs.send_message(
                QueueUrl=stack.queue_url(schedule.queue_logical_id), MessageBody=schedule.payload
            )

        return schedules.Scheduler(schedules.from_template(load_template()), send).start()

    def _local_thing_group(self) -> str:
        """The local endpoint's thing group with the local core device in it; its ARN."""
        from trashsorter_cli.device.server import THING_NAME

        iot = self.client("iot")
        try:
            arn = str(iot.create_thing_group(thingGroupName=LOCAL_THING_GROUP)["thingGroupArn"])
        except iot.exceptions.ResourceAlreadyExistsException:
            arn = str(iot.describe_thing_group(thingGroupName=LOCAL_THING_GROUP)["thingGroupArn"])
        try:
            iot.create_thing(thingName=THING_NAME)
        except iot.exceptions.ResourceAlreadyExistsException:
            pass  # a stack before this one in this process made it
        iot.add_thing_to_thing_group(thingGroupName=LOCAL_THING_GROUP, thingName=THING_NAME)
        return arn

    def _redirect_logs(self) -> None:
        """Send the handlers' JSON logs and EMF metric lines to ``log_file`` (quiet mode) or ``log_stream``.

        ``local up`` passes ``log_stream=sys.stderr``: the handlers' output stays on the console while
        stdout carries only the CLI's own lines (the ready line, ``--json`` objects), so a script reading
        stdout never sees a handler's log line first. Powertools prints EMF with ``print()``, so
        ``sys.stdout`` itself is redirected while the runtime runs (restored by :meth:`stop`); callers
        that print progress keep a handle on the real stdout.
        """
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log_stream = self.log_file.open("a", encoding="utf-8", buffering=1)
        elif self.log_stream is not None:
            self._log_stream = self.log_stream
        else:
            return
        from trashsorter.observability import logger

        registered = getattr(logger, "registered_handler", None)
        if isinstance(registered, logging.StreamHandler):
            registered.setStream(self._log_stream)
        warnings.filterwarnings("ignore", message="No application metrics to publish")
        self._saved_stdout = sys.stdout
        sys.stdout = self._log_stream
