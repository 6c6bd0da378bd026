"""The local runtime's training backend: the embedded CPU trainer, started as a detached process.

Not part of the Lambda layer. :func:`install` registers it with :func:`trashsorter.training.register_backend`
under ``TRAINING_BACKEND=local``; the local dispatcher installs it before it runs any handler.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from trashsorter.errors import TrainingStartError
from trashsorter.settings import TrainingSettings
from trashsorter.training import TrainingBackend, register_backend
from trashsorter.training_request import TrainingLaunch

NAME = "local"


def default_log_dir() -> Path:
    return Path(os.environ.get("TRASHSORTER_LOG_DIR") or Path.cwd() / ".trashsorter" / "logs")


class LocalBackend:
    """The embedded mode's CPU trainer, started as a detached process (``python -m trashsorter_cli.trainer``).

    The child inherits the environment (AWS_ENDPOINT_URL ...), writes ``<log_dir>/<job>.log``, uploads
    ``<output>/<job>/output/model.tar.gz`` and puts the "SageMaker Training Job State Change" event.
    """

    name = NAME

    def __init__(
        self, *, log_dir: Path | None = None, python: str = sys.executable, event_bus: str = "default"
    ):
        self.log_dir = log_dir
        self.python = python
        self.event_bus = event_bus

    def command(self, launch: TrainingLaunch) -> list[str]:
        return [
            self.python,
            "-m",
            "trashsorter_cli.trainer",
            "--job-name",
            launch.job_name,
            "--manifest",
            launch.manifest_uri,
            "--output",
            launch.output_uri,
            "--hyperparameters",
            json.dumps(launch.hyperparameters, sort_keys=True),
            "--run-id",
            launch.run_id,
            "--table",
            launch.table_name,
            "--event-bus",
            self.event_bus,
        ]

    def log_path(self, launch: TrainingLaunch) -> Path:
        return (self.log_dir or default_log_dir()) / f"{launch.job_name}.log"

    def start(self, launch: TrainingLaunch) -> None:
        path = self.log_path(launch)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("ab") as log:
                subprocess.Popen(
                    self.command(launch),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env=dict(os.environ),
                    close_fds=True,
                )
        except OSError as exc:
            raise TrainingStartError(
                f"could not start the local trainer for {launch.job_name}: {exc}"
            ) from exc

    def exists(self, launch: TrainingLaunch) -> bool:
        return self.log_path(launch).exists()


def make(settings: TrainingSettings) -> TrainingBackend:
    """The backend factory the local runtime registers (no per-stack settings needed today)."""
    return LocalBackend()


def install() -> None:
    """Register :class:`LocalBackend` for ``TRAINING_BACKEND=local`` (idempotent)."""
    register_backend(NAME, make)
