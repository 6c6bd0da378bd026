"""The CLI's human output: progress bars on a narrow terminal, deployment notes."""

from __future__ import annotations

import io
import json
import re

import pytest

from trashsorter_cli.commands.pipeline import deployments_table
from trashsorter_cli.ui import UI


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    "description", ["upload", "uploading images/Compost/cardboard/" + "x" * 120 + ".jpg"]
)
def test_progress_keeps_its_count_at_80_columns(monkeypatch: pytest.MonkeyPatch, description: str) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    out = Terminal()
    ui = UI(stream=out)
    assert ui.rich
    with ui.progress(description, total=180) as bar:
        bar.update(completed=57)
    last = [line for line in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue()).splitlines() if line][-1]
    assert "57/180" in last and len(last) <= 80


def test_a_skipped_deployment_says_why() -> None:
    out = io.StringIO()
    deployments_table(
        UI(stream=out),
        [
            {
                "target": "local-device",
                "status": "deployed",
                "deployment_id": "d1",
                "recorded_at": "t",
                "note": "",
            },
            {
                "target": "greengrass-v2",
                "status": "skipped",
                "deployment_id": "",
                "recorded_at": "t",
                "note": "no Greengrass v2 thing group configured (EdgeThingGroupArn)",
            },
        ],
    )
    text = out.getvalue()
    assert "skipped (no Greengrass v2 thing group configured (EdgeThingGroupArn))" in text
    assert "deployed (" not in text


def test_each_core_devices_result_is_shown_with_its_reason() -> None:
    out = io.StringIO()
    devices = {"cam-garage": "SUCCEEDED", "cam-kitchen": "FAILED model cannot load"}
    row = dict.fromkeys(("deployment_id", "recorded_at", "note"), "")
    deployments_table(
        UI(stream=out), [{**row, "target": "greengrass-v2", "status": "deployed", "devices": devices}]
    )
    text = " ".join(out.getvalue().split())
    assert "cam-garage: SUCCEEDED" in text
    assert "cam-kitchen: FAILED model cannot load" in text


def test_ctrl_c_stops_the_progress_bar_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bar's last state is printed, the cursor shown again and the line ended; the interrupt goes on."""
    monkeypatch.setenv("COLUMNS", "80")
    out = Terminal()
    ui = UI(stream=out)
    with pytest.raises(KeyboardInterrupt), ui.progress("upload", total=10) as bar:
        bar.update(completed=3)
        raise KeyboardInterrupt
    text = out.getvalue()
    assert text.rfind("\x1b[?25h") > text.rfind("\x1b[?25l")  # cursor shown after it was hidden
    assert text.removesuffix("\x1b[?25h").endswith("\n") and "3/10" in text


def test_the_report_summary_names_the_bar_and_the_parameter_it_comes_from() -> None:
    from trashsorter_cli.commands.report import summary, summary_lines

    model = {
        "model_id": "m-1",
        "metrics": {"validation:accuracy": 0.84},
        "evaluation": {"per_class": {"Compost": {"recall": 0.9}, "Landfill": {"recall": 0.45}}},
    }
    assert summary_lines(summary(model, (0.5, "MinClassRecall"))) == [
        "accuracy 0.840; weakest class Landfill (recall 0.450)",
        "recall below 0.50 (MinClassRecall): Landfill",
    ]
    assert summary_lines(summary(model, (0.4, "MinClassRecall"))) == [
        "accuracy 0.840; weakest class Landfill (recall 0.450)"
    ]
    assert summary(model, None)["below_bar"] == [] and summary(model, None)["recall_bar_parameter"] is None
    # with the number of photos each recall was measured on: the weakest one's 95 % interval
    model["evaluation"]["per_class"]["Landfill"]["support"] = 6
    model["evaluation"]["per_class"]["Landfill"]["recall"] = 0.3333
    facts = summary(model, None)
    assert facts["weakest"] == {"label": "Landfill", "recall": 0.3333, "photos": 6, "interval": [0.0968, 0.7]}
    assert summary_lines(facts) == [
        "accuracy 0.840; weakest class Landfill (recall 0.333 on 6 photos, 95 % interval 0.10-0.70)"
    ]


def test_train_wait_shows_the_feature_pass_and_the_epochs() -> None:
    from trashsorter_cli.commands.pipeline import _epoch_text, _progress_fraction

    features = {"phase": "features", "done": 120, "total": 700}
    assert _epoch_text(features) == "features 120/700 images"
    assert _progress_fraction(features) == (120.0, 700.0)
    epoch = {"epoch": 3, "epochs": 10, "train_loss": 0.4}
    assert _epoch_text(epoch) == "epoch 3/10" and _progress_fraction(epoch) == (3.0, 10.0)
    assert _epoch_text({}) == "" and _progress_fraction({"phase": "features"}) is None


def test_inbox_listing_shows_escape_codes_devices_wrote_without_acting_on_them() -> None:
    """Keys and metadata under inbox/ come from devices: a terminal must never receive their control bytes."""
    import argparse
    from types import SimpleNamespace

    import boto3
    from moto import mock_aws

    from trashsorter_cli.commands import inbox

    hostile_key = "inbox/cam-1/\x1b]0;owned\x07\x1b[2J\u202egpj.jpg"
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="images")
        s3.put_object(
            Bucket="images",
            Key=hostile_key,
            Body=b"\xff\xd8\xff",
            Metadata={"label": "Compost\x1b[31m", "reason": "unsure\x07\x08", "model_id": "job\x1b[0m"},
        )
        target = SimpleNamespace(bucket="images", client=lambda _name: s3, labels=("Compost",))
        for stream in (io.StringIO(), Terminal()):
            ui = UI(stream=stream)
            inbox.handle(argparse.Namespace(command="inbox", thing=None), ui, target)
            shown = stream.getvalue()
            if isinstance(stream, Terminal):  # rich styles its own output; strip its CSI sequences only
                shown = re.sub(r"\x1b\[[0-9;]*m", "", shown)
            assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202e]", shown), repr(shown)
            assert "\\x1b" in shown and "\\x07" in shown  # shown as escapes (rich may wrap long cells)
            if not isinstance(stream, Terminal):  # plain text: the whole key on its row, readable and inert
                assert "\\x1b]0;owned\\x07\\x1b[2J\\u202egpj.jpg" in shown
                assert "Compost\\x1b[31m" in shown and "unsure\\x07\\x08" in shown
        out = io.StringIO()
        inbox.handle(argparse.Namespace(command="inbox", thing=None), UI(stream=out, json_mode=True), target)
        assert "\x1b" not in out.getvalue() and json.loads(out.getvalue())[0]["key"] == hostile_key


def test_error_lines_escape_control_characters(monkeypatch: pytest.MonkeyPatch) -> None:
    import trashsorter_cli.main as cli
    from trashsorter_cli.ui import UsageError

    def refuse(_args: object, _ui: object) -> int:
        raise UsageError("'inbox/cam-1/\x1b[2Jx.jpg' is not an inbox key")  # a key, as a user pasted it

    monkeypatch.setattr(cli, "run", refuse)
    err = io.StringIO()
    assert cli.main(["status"], stdout=io.StringIO(), stderr=err) == 2
    assert "\x1b" not in err.getvalue() and "inbox/cam-1/\\x1b[2Jx.jpg" in err.getvalue()
