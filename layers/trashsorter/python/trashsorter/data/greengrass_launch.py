"""The edge component's lifecycle steps (standard library only; shipped as ``launch.py`` in the app archive).

The recipe's scripts hold only paths the nucleus provides (``{artifacts:...}``, ``{work:path}``); every value
of the component's configuration reaches this program through the environment (``Setenv``:
``TRASHSORTER_CFG_<Key>``, JSON for objects) and goes to the app as separate arguments, never through a
shell::

    python3 launch.py install WORK MODEL   # venv + pinned requirements; the model (MODEL: the model
                                           # component's artifacts, model.onnx.tar.gz) loaded once with the
                                           # app's own Model (a model that cannot load fails Install)
    python3 launch.py run WORK MODEL       # the model into WORK/model.next, which becomes WORK/model; exec

The model comes from the model component the app depends on; Install runs when the app is installed (a new
app version), Run each time the app starts, also when the core restarts it for a new model component version.
The previous model stays in ``WORK/model.previous`` and in the previous model component's artifacts until
the core removes that version.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any

HERE = Path(__file__).resolve().parent
PREFIX = "TRASHSORTER_CFG_"
MODEL_ARCHIVE = "model.onnx.tar.gz"


def config(key: str, default: Any = "") -> Any:
    raw = os.environ.get(PREFIX + key)
    if raw is None:
        return default
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def extract_model(archive: Path, target: Path) -> None:
    """Regular files and folders only, nothing outside ``target``."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    with tarfile.open(archive, "r:gz") as tar:
        members = tar.getmembers()
        for member in members:
            name = PurePosixPath(member.name)
            if name.is_absolute() or ".." in name.parts or not (member.isfile() or member.isdir()):
                raise SystemExit(f"launch.py: {archive.name}: refusing member {member.name!r}")
        for member in members:
            if member.isdir():
                (target / member.name).mkdir(parents=True, exist_ok=True)
                continue
            source = tar.extractfile(member)
            if source is None:
                continue
            path = target / member.name
            path.parent.mkdir(parents=True, exist_ok=True)
            with source, open(path, "wb") as out:
                shutil.copyfileobj(source, out)


def install(work: Path, artifacts: Path) -> int:
    outputs = str(config("Output", "jsonl"))
    command = [sys.executable, str(HERE / "trashsorter_edge" / "install.py"), str(work), "--outputs", outputs]
    camera = {"TRASHSORTER_EDGE_SOURCE": str(config("Source", "0"))}  # which device install.py checks
    code = subprocess.run(command, check=False, env={**os.environ, **camera}).returncode
    if code != 0:
        return code
    staged = work / "model.next"
    extract_model(artifacts / MODEL_ARCHIVE, staged)
    problem = check_model(work, staged)
    if problem:
        shutil.rmtree(staged, ignore_errors=True)
        print(f"launch.py: the new model cannot be used, the previous one stays: {problem}", file=sys.stderr)
        return 1
    return 0


# Loads the model as the app will (its Model class: onnxruntime session, labels, output width) and runs it
# once on a blank image. A fixed program: the model folder is its only argument.
_CHECK = (
    "import sys, numpy as np; from trashsorter_edge.model import Model; m = Model(sys.argv[1]); "
    "m.run(np.zeros((1, 3, m.image_size, m.image_size), dtype=np.float32))"
)


def check_model(work: Path, model: Path) -> str:
    """Why the app could not use ``model`` ("" when it can)."""
    python = str(work / "venv" / "bin" / "python")
    done = subprocess.run([python, "-c", _CHECK, str(model)], capture_output=True, text=True, check=False)
    if done.returncode == 0:
        return ""
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"exit code {done.returncode}"


def switch_model(work: Path) -> Path:
    """``model.next`` (this version's model) becomes ``model``; the one before stays as ``model.previous``."""
    current, new, previous = work / "model", work / "model.next", work / "model.previous"
    if new.is_dir():
        shutil.rmtree(previous, ignore_errors=True)
        if current.is_dir():
            current.rename(previous)
        new.rename(current)
    return current


def app_arguments(work: Path, model: Path) -> list[str]:
    topics = config("Topics", {}) or {}
    inbox = config("Inbox", {}) or {}
    live = config("LiveView", {}) or {}
    args = [
        "--model", str(model),
        "--model-id", str(config("ModelId")),
        "--source", str(config("Source", "0")),
        "--output", str(config("Output", "jsonl")),
        "--thing", os.environ.get("AWS_IOT_THING_NAME", "local"),
        "--threshold", str(config("Threshold", 0.6)),
        "--top-k", str(config("TopK", 3)),
        "--publish-rate", str(config("PublishRate", 2.0)),
        "--debounce", str(config("Debounce", 5)),
        "--infer-topic", str(topics.get("Infer", "trashsorter/<thing>/infer")),
        "--status-topic", str(topics.get("Status", "trashsorter/<thing>/status")),
        "--actuator-topic", str(topics.get("Actuator", "trashsorter/<thing>/object")),
        "--inbox-bucket", str(inbox.get("Bucket", "")),
        "--inbox-dir", str(work / "inbox"),
        "--inbox-max-queue", str(inbox.get("MaxQueue", 50)),
        "--inbox-per-minute", str(inbox.get("PerMinute", 6)),
        "--live-port", str(live.get("Port", 0)),
        "--live-host", str(live.get("Host", "127.0.0.1")),
    ]  # fmt: skip
    return args + shlex.split(str(config("ExtraArgs", "")))


def run(work: Path, artifacts: Path) -> int:
    extract_model(artifacts / MODEL_ARCHIVE, work / "model.next")
    model = switch_model(work)
    python = str(work / "venv" / "bin" / "python")
    os.execv(python, [python, "-u", "-m", "trashsorter_edge", *app_arguments(work, model)])  # noqa: S606
    return 0  # not reached


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "install":
        return install(Path(argv[1]), Path(argv[2]))
    if len(argv) == 3 and argv[0] == "run":
        return run(Path(argv[1]), Path(argv[2]))
    print("usage: launch.py install WORK MODEL | run WORK MODEL", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
