"""``diffex index``: one page over many experiment folders, with their figures, sortable and filterable offline."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from diffex.cli import app
from diffex.errors import DiffexError
from diffex.report.index import experiment_row, find_experiments, write_index
from diffex.report.results import read_results

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "experiment"


@pytest.fixture
def experiments(tmp_path):
    """Three experiments: the sample one, a copy with a hostile name and a failed gate, one unreadable."""
    root = tmp_path / "facility"
    for name in ("lab-a/exp1", "lab-b/<script>alert(1)</script>"):
        dest = root / name
        dest.mkdir(parents=True)
        for f in ("results.json", "report.html"):
            shutil.copy(SAMPLE / f, dest / f)
    bad = root / "lab-b/<script>alert(1)</script>/results.json"
    data = json.loads(bad.read_text())
    data["quality_gate_passed"], data["classifier"] = False, "clf-<b>bold</b>"
    bad.write_text(json.dumps(data))
    (root / "lab-c/old").mkdir(parents=True)
    (root / "lab-c/old/results.json").write_text(json.dumps({"format": "diffex-results", "format_version": 1}))
    (root / "lab-a/exp1/cache").mkdir()
    (root / "lab-a/exp1/cache/results.json").write_text("{}")  # inside a cache: not an experiment
    return root


def test_rows(experiments):
    folders = find_experiments(experiments)
    assert [f.relative_to(experiments).as_posix() for f in folders] == ["lab-a/exp1", "lab-b/<script>alert(1)</script>", "lab-c/old"]
    row = experiment_row(folders[0], experiments)
    r = read_results(SAMPLE / "results.json")
    firsts = [a for a in r.attributes if a.rank == 1]
    assert [(a["target"], a["name"], a["delta_p"], a["flip_rate"], a["baseline"]) for a in row["attributes"]] == \
        [(a.target, a.name, a.mean_delta_p, a.flip_rate, a.baseline_at_target) for a in firsts]
    assert row["conditions"] == [(c, r.per_condition[c]) for c in r.conditions] and row["gate"] == r.quality_gate_passed
    assert row["report"] == "lab-a/exp1/report.html" and row["error"] is None
    assert experiment_row(folders[1], experiments)["report"] == "lab-b/%3Cscript%3Ealert%281%29%3C/script%3E/report.html"
    old = experiment_row(folders[2], experiments)
    assert "format version 1" in old["error"] or "not a diffex explain result" in old["error"]


def test_page(experiments):
    html = write_index(experiments).read_text()
    assert html.count("<tr") == 4  # header + three experiments
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "clf-&lt;b&gt;bold&lt;/b&gt;" in html and '<span class="gate-bad">failed</span>' in html
    assert 'href="lab-a/exp1/report.html"' in html
    assert "cannot be read: " in html and "http://" not in html and "https://" not in html


def test_not_a_folder(tmp_path):
    with pytest.raises(DiffexError, match="not a folder"):
        write_index(tmp_path / "missing")


def test_cli(experiments):
    res = CliRunner().invoke(app, ["index", str(experiments), "-q"])
    assert res.exit_code == 0, res.output
    assert Path(res.stdout.strip()) == experiments / "index.html"


@pytest.mark.browser
def test_index_in_headless_chromium(experiments, tmp_path, browser_page):
    """Sorting by a column and filtering by text work offline, without console errors or requests."""
    page, record = browser_page
    url = write_index(experiments).resolve().as_uri()
    page.goto(url, wait_until="load")

    def first_column():
        return [t.strip() for t in page.locator("#experiments tbody tr:visible td:first-child").all_inner_texts()]

    assert first_column() == ["lab-a/exp1", "lab-b/<script>alert(1)</script>", "lab-c/old"]
    page.locator("th[data-col='0']").click()
    page.locator("th[data-col='0']").click()  # descending
    assert first_column() == ["lab-c/old", "lab-b/<script>alert(1)</script>", "lab-a/exp1"]
    page.locator("th[data-col='4']").click()  # the gate column, where the unreadable row has a cell too
    assert first_column() == ["lab-c/old", "lab-b/<script>alert(1)</script>", "lab-a/exp1"]  # -1, failed 0, failed 0
    page.fill("#filter", "lab-a")
    assert first_column() == ["lab-a/exp1"] and page.locator("#shown").inner_text() == "1"
    page.fill("#filter", "")
    shots = Path(os.environ.get("DIFFEX_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "index.png"), full_page=True)
    assert not record["problems"], record["problems"]
    assert [r for r in record["requests"] if r != url] == []
