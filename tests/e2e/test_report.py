"""``trashsorter report`` against a running local stack and against it as a "deployed" stack (--stack), and
the downloaded report.html in a real browser (headless Chromium from the OS packages, screenshot in tmp).

The models are registered as the package step leaves them (record with ``report_uri`` + evaluation, the
report at ``models/<id>/report.html`` in the DeepLens bucket); the copy itself is
tests/integration/test_report_copy.py. The report is the trainer's own renderer's output, with a real photo
as the misclassified thumbnail."""

from __future__ import annotations

import io
import json
import webbrowser
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.support.browser import chromium_or_skip, dump_dom, screenshot
from tests.support.cli import run_cli as _cli
from tests.support.stack import SAMPLES_DIR
from trashsorter import registry
from trashsorter.schema import ModelStatus
from trashsorter_cli.commands import report
from trashsorter_cli.local.runtime import LocalRuntime
from trashsorter_cli.targets import Target, local_target
from trashsorter_cli.ui import UI
from trashsorter_trainer.report import render_html, thumbnail_data_uri

pytestmark = pytest.mark.e2e

LABELS = ["Compost", "Landfill", "Recycling"]
RECALLS = {"Compost": 0.95, "Landfill": 0.7, "Recycling": 0.9}  # Landfill under MinValidationAccuracy 0.8


@pytest.fixture(scope="module")
def local_stack(local_stack_factory: Any) -> Iterator[LocalRuntime]:
    yield local_stack_factory({"MinImagesPerLabel": "500", "MinValidationAccuracy": "0.8"}, device=False)


def _metrics() -> dict[str, Any]:
    per_class = {
        label: {"precision": 0.9, "recall": recall, "f1": 0.85, "support": 20}
        for label, recall in RECALLS.items()
    }
    return {
        "validation_accuracy": 0.8750,
        "validation_count": 60,
        "train_accuracy": 0.97,
        "train_count": 240,
        "labels": LABELS,
        "per_class": per_class,
        "confusion_matrix": [[19, 1, 0], [3, 14, 3], [1, 1, 18]],
        "class_counts": {"train": dict.fromkeys(LABELS, 80), "validation": dict.fromkeys(LABELS, 20)},
    }


def _report_html() -> bytes:
    photo = Image.open(next((SAMPLES_DIR / "trash").glob("*.jpg")))
    missed = [{"key": "images/Landfill/x.jpg", "true": "Landfill", "predicted": "Recycling",
               "confidence": 0.61, "thumbnail": thumbnail_data_uri(photo)}]  # fmt: skip
    return render_html(_metrics(), missed).encode()


def _register(runtime: LocalRuntime, model_id: str, *, report: bytes | None, champion: bool) -> Target:
    assert runtime.state is not None
    target = local_target(runtime.state, check=False)
    ddb = target.client("dynamodb")
    extra: dict[str, Any] = {}
    if report is not None:
        bucket = target.outputs["DeepLensBucketName"]
        target.client("s3").put_object(Bucket=bucket, Key=f"models/{model_id}/report.html", Body=report)
        extra = {"report_uri": f"s3://{bucket}/models/{model_id}/report.html", "evaluation": _metrics()}
    registry.register_model(
        table_name=target.table, model_id=model_id, job_name=model_id, run_id=f"run-{model_id}",
        dataset_id="d1", dataset_manifest_uri="s3://b/m", metrics={"validation:accuracy": 0.875},
        source_artifact_uri="s3://b/a", packaged_artifact_uris={}, model_format="onnx" if report else "mxnet",
        gate_passed=True, gate_reason="first model", status=ModelStatus.CANDIDATE, extra=extra, ddb=ddb,
    )  # fmt: skip
    if champion:
        registry.promote(model_id, table_name=target.table, ddb=ddb)
    return target


@pytest.fixture(scope="module")
def models(local_stack: LocalRuntime) -> dict[str, bytes]:
    report = _report_html()
    _register(local_stack, "deeplens-ts-builtin", report=None, champion=False)
    _register(local_stack, "deeplens-ts-champ", report=report, champion=True)
    return {"deeplens-ts-champ": report}


def test_report_downloads_the_champions_report_and_names_the_weakest_class(
    local_stack: LocalRuntime, models: dict[str, bytes], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = str(local_stack.state_path)
    code, out, err = _cli(capsys, "report", "--dest", str(tmp_path), "--local-state", state)
    assert code == 0, err
    path = tmp_path / "deeplens-ts-champ" / "report.html"
    assert out.splitlines()[-1] == str(path)
    assert path.read_bytes() == models["deeplens-ts-champ"]
    assert (
        "accuracy 0.875; weakest class Landfill (recall 0.700 on 20 photos, 95 % interval 0.48-0.85)" in out
    )
    assert "recall below 0.80 (MinValidationAccuracy): Landfill" in out
    code, out, err = _cli(capsys, "report", "--json", "--dest", str(tmp_path), "--local-state", state)
    facts = json.loads(out)
    assert (facts["model_id"], facts["path"], facts["below_bar"]) == (
        "deeplens-ts-champ",
        str(path),
        ["Landfill"],
    )
    assert facts["weakest"] == {"label": "Landfill", "recall": 0.7, "photos": 20, "interval": [0.481, 0.8545]}


def test_report_of_a_named_model_on_a_deployed_stack_and_open(
    local_stack: LocalRuntime,
    models: dict[str, bytes],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    opened: list[str] = []  # the desktop browser is the boundary: record what would be opened

    def record(url: str, *args: Any, **kwargs: Any) -> bool:
        opened.append(url)
        return True

    monkeypatch.setattr(webbrowser, "open", record)
    # --stack resolves names from CloudFormation outputs; AWS_ENDPOINT_URL makes that the local endpoint
    code, out, err = _cli(capsys, "report", "deeplens-ts-champ", "--open", "--dest", str(tmp_path),
                          "--stack", local_stack.stack_name)  # fmt: skip
    assert code == 0, err
    path = tmp_path / "deeplens-ts-champ" / "report.html"
    assert path.read_bytes() == models["deeplens-ts-champ"]
    assert opened == [path.resolve().as_uri()]
    assert "recall below 0.80 (MinValidationAccuracy): Landfill" in out  # the stack's parameter


def test_a_model_without_report_is_one_clear_error(
    local_stack: LocalRuntime, models: dict[str, bytes], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = str(local_stack.state_path)
    code, out, err = _cli(
        capsys, "report", "deeplens-ts-builtin", "--dest", str(tmp_path), "--local-state", state
    )
    assert code == 1 and out == ""
    assert err == (
        "trashsorter: error: model deeplens-ts-builtin has no report (the built-in image-classification "
        "algorithm writes none; the project's trainer writes report.html)\n"
    )
    code, _, err = _cli(capsys, "report", "no-such-model", "--local-state", state)
    assert code == 1 and "no registered model no-such-model" in err


def test_the_downloaded_report_in_a_real_browser(
    local_stack: LocalRuntime, models: dict[str, bytes], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chromium = chromium_or_skip()
    code, out, err = _cli(
        capsys, "report", "--dest", str(tmp_path), "--local-state", str(local_stack.state_path)
    )
    assert code == 0, err
    url = Path(out.splitlines()[-1]).resolve().as_uri()
    shot_path = tmp_path / "report.png"  # kept in the test's tmp dir
    screenshot(chromium, url, shot_path)
    shot = Image.open(shot_path).convert("L")
    histogram = shot.histogram()  # 256 grey levels
    assert sum(histogram[:128]) > 2000, "the screenshot is blank (almost no dark pixels: no text, no table)"
    assert sum(histogram[128:]) > 0.5 * shot.width * shot.height, "the screenshot is not the white page"
    dom = dump_dom(chromium, url)
    assert "validation accuracy <b>0.8750</b>" in dom
    assert "Confusion matrix (rows true, columns predicted)" in dom
    matrix = dom.split("Confusion matrix", 1)[1].split("</table>", 1)[0]
    assert "<table>" in matrix and "<th>true \\ predicted</th><th>Compost</th>" in matrix
    assert "<td>Landfill</td><td>3</td><td>14</td><td>3</td>" in matrix
    assert 'src="data:image/' in dom  # the misclassified photo's thumbnail is in the one file


def test_train_wait_and_the_demo_end_with_accuracy_weakest_class_and_report_path(
    local_stack: LocalRuntime, models: dict[str, bytes], tmp_path: Path
) -> None:
    assert local_stack.state is not None
    target = local_target(local_stack.state, check=False)
    out = io.StringIO()
    report.wait_summary(target, UI(stream=out), "deeplens-ts-champ", tmp_path)
    path = tmp_path / "deeplens-ts-champ" / "report.html"
    assert out.getvalue().splitlines() == [
        "accuracy 0.875; weakest class Landfill (recall 0.700 on 20 photos, 95 % interval 0.48-0.85)",
        "recall below 0.80 (MinValidationAccuracy): Landfill",
        f"report: {path}",
    ]
    assert path.read_bytes() == models["deeplens-ts-champ"]
    out = io.StringIO()
    report.wait_summary(target, UI(stream=out), "deeplens-ts-builtin", tmp_path)
    assert out.getvalue().splitlines() == [
        "accuracy 0.875",
        "report: none (the built-in algorithm writes none)",
    ]
