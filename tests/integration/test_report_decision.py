"""The report kept beside the packaged model says at its top what the quality gate decided and why (moto):
the trainer leaves a marked "not yet decided" block, the completion step writes the outcome into it."""

from __future__ import annotations

import html

import pytest

from tests.support.fixtures.model_artifacts import onnx_model_tar
from tests.support.pack import JOB, Pack, handle
from trashsorter import registry
from trashsorter.report_decision import with_decision
from trashsorter_trainer.report import UNDECIDED, render_html

pytestmark = pytest.mark.integration

LABELS = ["Compost", "Landfill", "Recycling"]


def _report(accuracy: float) -> bytes:
    metrics = {
        "validation_accuracy": accuracy,
        "validation_count": 30,
        "train_accuracy": 0.97,
        "train_count": 120,
        "labels": LABELS,
        "per_class": {x: {"precision": 0.9, "recall": accuracy, "f1": 0.9, "support": 10} for x in LABELS},
        "confusion_matrix": [[8, 1, 1], [1, 8, 1], [1, 1, 8]],
        "class_counts": {"train": dict.fromkeys(LABELS, 40), "validation": dict.fromkeys(LABELS, 10)},
    }
    return render_html(metrics, []).encode()


def _stored_report(pack: Pack, accuracy: float) -> tuple[str, dict[str, object]]:
    pack.start_run(JOB, backend="local", artifact=onnx_model_tar(accuracy=accuracy, report=_report(accuracy)))
    event = pack.event("training_completed.json", JOB, accuracy=accuracy)
    handle(event, pack.settings(), ddb=pack.ddb, s3=pack.s3, greengrass=pack.gg)
    model = registry.get_model(JOB, table_name=pack.table, ddb=pack.ddb)
    assert model is not None
    body = pack.s3.get_object(Bucket=pack.deeplens_bucket, Key=f"models/{JOB}/report.html")["Body"].read()
    return body.decode(), model


def _top(page: str) -> str:
    """What comes before the first number of the page: the title and the decision."""
    return page.split("validation accuracy", 1)[0]


def test_a_first_model_that_passes_says_so_at_the_top(pack: Pack) -> None:
    page, model = _stored_report(pack, 0.9)
    assert model["status"] == "champion"
    top = _top(page)
    assert "Not yet decided" not in page
    assert "passed the quality gate" in top.lower()  # registered here: no device is configured
    assert html.escape(str(model["gate_reason"])) in top  # the gate's own words


def test_a_rejected_model_says_rejected_and_why_at_the_top(pack: Pack) -> None:
    page, model = _stored_report(pack, 0.4)
    assert model["status"] == "rejected"
    top = _top(page)
    assert "Rejected by the quality gate" in top and "class=rejected" in top
    assert html.escape(str(model["gate_reason"])) in top
    assert "deployed" not in top.split("Rejected by the quality gate", 1)[1].split("</b>", 1)[0].replace(
        "not deployed", ""
    )


def test_the_decision_replaces_only_the_marked_block_and_a_retry_writes_the_same_page() -> None:
    page = _report(0.9).decode()
    assert UNDECIDED in page
    once = with_decision(page, "<section id=decision>X</section>")
    assert once is not None and UNDECIDED not in once and "<section id=decision>X</section>" in once
    assert with_decision(once, "<section id=decision>X</section>") == once
    assert once.replace("<section id=decision>X</section>", UNDECIDED) == page
    assert with_decision("<html><body>old report</body></html>", "X") is None
