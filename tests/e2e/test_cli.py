"""The ``trashsorter`` CLI against a running local stack (main() in-process) and its error exits."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import run_cli as _cli
from tests.support.stack import SAMPLES_DIR as SAMPLES
from trashsorter_cli.local.runtime import LocalRuntime
from trashsorter_cli.local.server import LocalState, free_port, write_state

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def local_stack(local_stack_factory: Any) -> Iterator[LocalRuntime]:
    # High thresholds: nothing these tests upload may start a training run.
    yield local_stack_factory({"MinImagesPerLabel": "500"}, device=False)


def _state(runtime: LocalRuntime) -> str:
    return str(runtime.state_path)


def _photo_dir(tmp_path: Path, per_label: dict[str, list[Path]]) -> Path:
    root = tmp_path / "photos"
    sub = uuid.uuid4().hex[:8]  # unique keys per test: images/<Label>/<sub>/<file>
    for label, files in per_label.items():
        folder = root / label / sub
        folder.mkdir(parents=True)
        for f in files:
            shutil.copy(f, folder / f.name)
    return root


def _wait_catalogued(runtime: LocalRuntime) -> None:
    assert runtime.dispatcher is not None
    assert runtime.dispatcher.wait_idle(timeout=60, settle=0.5)


def test_upload_skips_unchanged_files_and_status_counts_them(
    local_stack: LocalRuntime, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = {"Compost": sorted((SAMPLES / "paper").glob("*.jpg"))[:3]}
    root = _photo_dir(tmp_path, photos)
    code, out, err = _cli(capsys, "upload", str(root), "--json", "--local-state", _state(local_stack))
    assert code == 0, err
    assert json.loads(out)["uploaded"] == 3 and json.loads(out)["skipped"] == 0
    code, out, _ = _cli(capsys, "upload", str(root), "--json", "--local-state", _state(local_stack))
    assert (json.loads(out)["uploaded"], json.loads(out)["skipped"]) == (0, 3)
    changed = next(root.rglob("*.jpg"))
    changed.write_bytes(
        (SAMPLES / "glass" / sorted(p.name for p in (SAMPLES / "glass").glob("*.jpg"))[0]).read_bytes()
    )
    code, out, _ = _cli(capsys, "upload", str(root), "--json", "--local-state", _state(local_stack))
    assert (json.loads(out)["uploaded"], json.loads(out)["skipped"]) == (1, 2)
    _wait_catalogued(local_stack)
    code, out, err = _cli(capsys, "status", "--json", "--local-state", _state(local_stack))
    assert code == 0, err
    status = json.loads(out)
    assert set(status["labels"]) == {"Compost", "Landfill", "Recycling"}
    assert status["labels"]["Compost"]["accepted"] >= 3
    assert status["labels"]["Compost"]["required"] == 500
    assert status["threshold"]["met"] is False
    assert status["runs"] == []
    assert status["champion"] is None


def test_images_json_lists_records_with_reasons(
    local_stack: LocalRuntime, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _photo_dir(tmp_path, {"Landfill": sorted((SAMPLES / "trash").glob("*.jpg"))[:2]})
    bad = next((root / "Landfill").iterdir()) / "notes.jpg"
    bad.write_bytes(b"this is not a photo at all")
    code, _, err = _cli(capsys, "upload", str(root), "--local-state", _state(local_stack))
    assert code == 0, err
    _wait_catalogued(local_stack)
    code, out, err = _cli(
        capsys, "images", "--json", "--label", "landfill", "--local-state", _state(local_stack)
    )
    assert code == 0, err
    rows = json.loads(out)
    assert all(set(r) == {"key", "label", "status", "reason", "near_twins"} for r in rows)
    by_name = {r["key"].rsplit("/", 1)[-1]: r for r in rows}
    assert by_name["notes.jpg"]["status"] == "rejected"
    assert by_name["notes.jpg"]["reason"]
    accepted = [r for r in rows if r["status"] == "accepted"]
    assert len(accepted) >= 2 and all(r["label"] == "Landfill" for r in rows)
    code, out, _ = _cli(
        capsys, "images", "--json", "--status", "rejected", "--local-state", _state(local_stack)
    )
    assert any(r["key"].endswith("notes.jpg") for r in json.loads(out))


def test_upload_refuses_unknown_labels_with_exit_2(
    local_stack: LocalRuntime, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _photo_dir(tmp_path, {"Compost": [], "Plastic": sorted((SAMPLES / "plastic").glob("*.jpg"))[:1]})
    code, out, err = _cli(capsys, "upload", str(root), "--local-state", _state(local_stack))
    assert code == 2
    assert "Plastic" in err and "Compost, Landfill, Recycling" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    code, out, err = _cli(
        capsys, "upload", str(root), "--force", "--json", "--local-state", _state(local_stack)
    )
    assert code == 0, err
    assert json.loads(out)["unknown_labels"] == ["Plastic"]
    _wait_catalogued(local_stack)
    code, out, _ = _cli(
        capsys, "images", "--json", "--status", "rejected", "--local-state", _state(local_stack)
    )
    assert any("/Plastic/" in r["key"] for r in json.loads(out))


def test_train_without_enough_images_says_what_is_missing(
    local_stack: LocalRuntime, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = _cli(capsys, "train", "--local-state", _state(local_stack))
    assert code == 1
    assert "nothing to train" in err and "Recycling" in err
    assert "Traceback" not in err


def test_predict_against_a_deployed_stack_says_prediction_runs_on_the_device(
    local_stack: LocalRuntime, capsys: pytest.CaptureFixture[str]
) -> None:
    # --stack resolves names from CloudFormation outputs; AWS_ENDPOINT_URL makes that the local endpoint.
    photo = next((SAMPLES / "glass").glob("*.jpg"))
    code, _, err = _cli(capsys, "predict", str(photo), "--stack", local_stack.stack_name)
    assert code == 2
    assert "prediction runs on the device" in err


def test_local_status_reports_the_running_stack(
    local_stack: LocalRuntime, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _cli(capsys, "local", "status", "--json", "--local-state", _state(local_stack))
    assert code == 0, err
    data = json.loads(out)
    assert data["running"] is True
    assert data["endpoint_url"] == local_stack.endpoint_url
    assert data["parameters"]["TrainingAlgorithm"] == "trashsorter"


def test_no_local_stack_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(capsys, "status", "--local-state", str(tmp_path / "missing.json"))
    assert code == 1
    assert err.startswith("trashsorter: error: no local stack running")
    assert err.count("\n") == 1 and out == ""


def test_stale_state_file_endpoint_down(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = LocalState(
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        region="us-east-1",
        stack_name="gone",
        outputs={},
        pid=0,
    )
    path = write_state(state, tmp_path / "local.json")
    code, _, err = _cli(capsys, "images", "--local-state", str(path))
    assert code == 1
    assert "is not answering" in err and "Traceback" not in err


def test_console_script_error_exit_without_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "trashsorter_cli.main",
            "status",
            "--local-state",
            str(tmp_path / "none.json"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().startswith("trashsorter: error: no local stack running")
    assert "Traceback" not in result.stderr


def test_local_up_writes_state_and_local_down_stops_it(tmp_path: Path) -> None:
    """stdout carries only the CLI's lines (ready first, stop last); the handlers' logs go to the log file."""
    state = tmp_path / "local.json"
    stderr_path = tmp_path / "stderr.log"
    cmd = [sys.executable, "-m", "trashsorter_cli.main", "local"]
    with stderr_path.open("w") as stderr_file:
        proc = subprocess.Popen(
            [
                *cmd,
                "up",
                "--port",
                "0",
                "--no-device",
                "--local-state",
                str(state),
                "--parameter-overrides",
                "MinImagesPerLabel=7",
            ],
            stdout=subprocess.PIPE,
            stderr=stderr_file,
            text=True,
            cwd=tmp_path,
        )
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        assert ready.startswith("trashsorter local stack ready: endpoint http://127.0.0.1:"), ready
        data = json.loads(state.read_text())
        assert data["pid"] == proc.pid
        assert data["parameters"]["MinImagesPerLabel"] == "7"
        assert data["parameters"]["TrainingAlgorithm"] == "trashsorter"
        assert data["outputs"]["ImagesBucketName"] in ready
        # S3 sends an s3:TestEvent when the bucket notification is configured; the ingest handler logs
        # that it ignored it. That log line goes to the log file the ready line names, never the console.
        log_file = tmp_path / "logs" / "trashsorter.log"
        assert "handler logs: logs/trashsorter.log" in ready  # relative to the working directory
        deadline = time.monotonic() + 60
        while not log_file.exists() or "s3:TestEvent ignored" not in log_file.read_text():
            assert time.monotonic() < deadline, stderr_path.read_text()[-2000:]
            time.sleep(0.2)
        assert "s3:TestEvent" not in stderr_path.read_text()
        down = subprocess.run(
            [*cmd, "down", "--local-state", str(state)],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        assert down.returncode == 0, down.stderr
        assert proc.wait(timeout=30) == 0
        assert not state.exists()
        assert proc.stdout.read().splitlines() == ["trashsorter local stack stopped"]
        for extra in ([], ["--json"]):  # a clean stop is no error
            after = subprocess.run(
                [*cmd, "status", "--local-state", str(state), *extra],
                capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
            )  # fmt: skip
            assert after.returncode == 0, after.stderr
            if extra:
                assert json.loads(after.stdout)["state"] == "stopped"
            else:
                assert after.stdout.startswith("local stack stopped (no local.json;"), after.stdout
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("argv", [["images"], ["local", "status", "--json"], ["--help"]])
def test_closed_pipe_is_no_traceback(local_stack: LocalRuntime, argv: list[str]) -> None:
    """`trashsorter images | head -1`: the reader goes away; the CLI stops quietly with SIGPIPE's code."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "trashsorter_cli.main", *argv]
        + ([] if argv == ["--help"] else ["--local-state", _state(local_stack)]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the CLI writes a byte
    err = proc.stderr.read()
    code = proc.wait(60)
    assert err == ""
    if argv != ["--help"]:  # argparse swallows a failed help write itself (exit 0)
        assert code == 141


@pytest.mark.parametrize("verbose", [False, True])
def test_reindex_keeps_handler_logs_off_stdout(
    local_stack: LocalRuntime, tmp_path: Path, verbose: bool
) -> None:
    """reindex runs ingest in the CLI process: its JSON logs go to the log file (stderr with --verbose)."""
    assert local_stack.stack is not None and local_stack.dispatcher is not None
    state = tmp_path / "local.json"
    state.write_text(Path(_state(local_stack)).read_text())
    local_stack.dispatcher.stop()  # the new object is catalogued (and logged) by reindex, not by the stack
    try:
        local_stack.client("s3").put_object(
            Bucket=local_stack.stack.outputs["ImagesBucketName"],
            Key=f"images/Compost/{uuid.uuid4().hex[:8]}/r.jpg",
            Body=b"not an image",
        )
        result = subprocess.run(
            [sys.executable, "-m", "trashsorter_cli.main", "reindex", "--local-state", str(state)]
            + (["--verbose"] if verbose else []),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        local_stack.dispatcher.start()
    _wait_catalogued(local_stack)
    assert result.returncode == 0, result.stderr
    assert '"level"' not in result.stdout
    log_file = tmp_path / "logs" / "trashsorter.log"
    if verbose:
        assert '"level"' in result.stderr
    else:
        assert '"level"' not in result.stderr and '"level"' in log_file.read_text()


@pytest.mark.parametrize(("pid", "expected"), [(0, "stopped"), (-1, "busy")])
def test_local_status_tells_a_gone_stack_from_one_that_does_not_answer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pid: int, expected: str
) -> None:
    """Only a stack whose process is gone is called stale; a living one that does not answer is not."""
    state = LocalState(
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        region="us-east-1",
        stack_name="s",
        outputs={},
        pid=os.getpid() if pid == -1 else pid,  # -1: a living process (this one), nothing on the port
    )
    path = write_state(state, tmp_path / "local.json")
    code, out, _ = _cli(capsys, "local", "status", "--json", "--local-state", str(path))
    assert code == 1 and json.loads(out)["state"] == expected
    code, out, _ = _cli(capsys, "local", "status", "--local-state", str(path))
    assert ("stale" in out) == (expected == "stopped")
    assert ("running but not answering" in out) == (expected == "busy")
