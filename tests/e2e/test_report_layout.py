"""report.html as the first page a person opens, in headless Chromium at 1280 px and at phone width: the
decision at the top, original file names under the thumbnails, no caption overlapping another, no sideways
scroll of the page (screenshots kept in the test's tmp dir)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.support.browser import chromium_or_skip, dump_dom, screenshot
from tests.support.stack import SAMPLES_DIR
from trashsorter.report_decision import decision_block, with_decision
from trashsorter_trainer.report import render_html, thumbnail_data_uri

pytestmark = pytest.mark.e2e

LABELS = ["Compost", "Landfill", "Recycling"]
REASON = "validation:accuracy 0.8293 >= 0.6000; Landfill 2 of 6 photos against the champion's 3 of 6"
# Measures the laid-out page and writes the result into the DOM that --dump-dom prints.
MEASURE = """<script>
addEventListener('load', () => {
  const figures = [...document.querySelectorAll('figure')].map(f => f.getBoundingClientRect());
  let overlaps = 0;
  for (let i = 0; i < figures.length; i++) for (let j = i + 1; j < figures.length; j++) {
    const a = figures[i], b = figures[j];
    const apart = a.right - 1 <= b.left || b.right - 1 <= a.left
      || a.bottom - 1 <= b.top || b.bottom - 1 <= a.top;
    if (!apart) overlaps++;
  }
  const spilling = [...document.querySelectorAll('figcaption, figure img')]
    .filter(e => e.scrollWidth > e.parentElement.clientWidth + 1).length;
  const out = document.createElement('pre');
  out.id = 'layout';
  out.textContent = JSON.stringify({overlaps, spilling, figures: figures.length,
    page: document.documentElement.scrollWidth, window: innerWidth,
    decisionTop: document.getElementById('decision').getBoundingClientRect().top});
  document.body.appendChild(out);
});
</script>"""


def _metrics() -> dict[str, Any]:
    return {
        "validation_accuracy": 0.8293,
        "validation_count": 41,
        "train_accuracy": 0.97,
        "train_count": 139,
        "labels": LABELS,
        "per_class": {
            "Compost": {"precision": 0.87, "recall": 0.9231, "f1": 0.9, "support": 13},
            "Landfill": {"precision": 0.67, "recall": 0.3333, "f1": 0.44, "support": 6},
            "Recycling": {"precision": 0.83, "recall": 0.9091, "f1": 0.87, "support": 22},
        },
        "confusion_matrix": [[12, 0, 1], [1, 2, 3], [1, 1, 20]],
        "class_counts": {
            "train": {"Compost": 47, "Landfill": 24, "Recycling": 68},
            "validation": {"Compost": 13, "Landfill": 6, "Recycling": 22},
        },
        "champion": {
            "validation_accuracy": 0.7073,
            "per_class": {
                "Compost": {"recall": 0.7692, "support": 13},
                "Landfill": {"recall": 0.5, "support": 6},
                "Recycling": {"recall": 0.7273, "support": 22},
            },
        },
    }


def _missed() -> list[dict[str, Any]]:
    """Seven misclassified photos stored under content-addressed keys (64 hex digits), as the job reads
    them, with their original names."""
    photos = sorted((SAMPLES_DIR / "trash").glob("*.jpg"))[:7]
    items = []
    for path in photos:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        items.append(
            {
                "key": f"datasets/objects/{digest}.jpg",
                "name": f"Landfill/trash/{path.name}",
                "true": "Landfill",
                "predicted": "Recycling",
                "confidence": 0.61,
                "thumbnail": thumbnail_data_uri(Image.open(path)),
            }
        )
    return items


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    html = with_decision(render_html(_metrics(), _missed()), decision_block("deployed", REASON))
    assert html is not None
    path = tmp_path_factory.mktemp("report") / "report.html"
    path.write_text(html.replace("</body>", MEASURE + "</body>"))
    return path


@pytest.mark.parametrize("size", [(1280, 900), (390, 844)], ids=["1280px", "phone"])
def test_the_report_reads_at_desktop_and_phone_width(page: Path, size: tuple[int, int]) -> None:
    chromium = chromium_or_skip()
    shot = page.parent / f"report-{size[0]}.png"
    screenshot(chromium, page.as_uri(), shot, size)
    grey = Image.open(shot).convert("L").histogram()
    assert sum(grey[:128]) > 2000, "the screenshot is blank"
    dom = dump_dom(chromium, page.as_uri(), size)
    layout = json.loads(dom.split('<pre id="layout">', 1)[1].split("</pre>", 1)[0])
    assert layout["figures"] == 7
    assert layout["overlaps"] == 0, layout
    assert layout["spilling"] == 0, layout  # no caption or thumbnail wider than its figure
    assert layout["page"] <= layout["window"], f"the page scrolls sideways: {layout}"
    assert layout["decisionTop"] < 200, layout  # right under the title
    body = dom.split("<body>", 1)[1]
    assert body.index("Deployed") < body.index("validation accuracy") < body.index("Per class")
    assert body.index("Against the champion") < body.index("Per class")
    assert "0.707" in body and "3/6" in body and "2/6" in body  # the champion, in photos
    captions = [c.split("</figcaption>", 1)[0] for c in body.split("<figcaption>")[1:]]
    assert all("Landfill/trash/trash" in c for c in captions)
    assert not any("datasets/objects/" in c for c in captions)  # no hash keys under the thumbnails
