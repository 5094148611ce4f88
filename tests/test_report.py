"""The HTML report: escaping of user strings, no external URL, re-rendering, size, plots, and a real browser."""

from __future__ import annotations

import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from markupsafe import escape
from test_explain import TINY  # noqa: E402 - tests/ is on sys.path (rootdir conftest)
from typer.testing import CliRunner

from diffex.cli import app
from diffex.errors import DiffexError
from diffex.report.html import SIZE_BUDGET, morphology_curves, write_report
from diffex.report.plots import histogram_plot, line_plot, nice_ticks

REPO = Path(__file__).resolve().parents[1]
SAMPLE_EXPERIMENT = REPO / "sample_data" / "experiment"
HOSTILE_CONDITION = "<b onmouseover=\"alert('c')\">treated & co"
HOSTILE_FILE = "x\"><svg onload=alert(1)>cell"
HOSTILE_CHANNEL = "<script>alert('ch')</script>\"DNA'"
URL = re.compile(r"(?:https?|ftp|wss?):|//[a-z0-9.-]+\.[a-z]{2,}", re.IGNORECASE)


class _Tags(HTMLParser):
    """Collects tag names and attribute names of a document."""

    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.attrs: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs |= {a for a, _ in attrs}


@pytest.fixture(scope="module")
def hostile_experiment(tiny_diffusion, tmp_path_factory):
    """explain end to end on images whose condition folder and file names are HTML, then channel names made hostile."""
    from diffex.data.synthetic import ConditionFactors, SyntheticSpec, generate_dataset
    from diffex.explain import explain
    from diffex.models.classifier_train import ClassifierTrainConfig, train_classifier

    root = tmp_path_factory.mktemp("hostile")
    spec = SyntheticSpec(conditions={"control": ConditionFactors(8.0, 0.40), HOSTILE_CONDITION: ConditionFactors(9.6, 0.52)})
    generate_dataset(root / "cells", n_per_condition=8, seed=5, spec=spec)
    first = sorted((root / "cells" / HOSTILE_CONDITION).iterdir())[0]
    first.rename(first.with_name(HOSTILE_FILE + ".ome.tif"))
    clf_dir = root / "clf"
    train_classifier(root / "cells", clf_dir, ClassifierTrainConfig(arch="test_resnet", size=16, epochs=1, batch_size=8,
                                                                    heldout_fraction=0.25), device="cpu", show_progress=False)
    res = explain(clf_dir, root / "cells", root / "exp", tiny_diffusion[0], TINY, device="cpu", show_progress=False)
    results = json.loads((res.out / "results.json").read_text())
    results["channel_names"][0] = HOSTILE_CHANNEL
    results["display_ranges"] = {HOSTILE_CHANNEL if k == "DNA" else k: v for k, v in results["display_ranges"].items()}
    (res.out / "results.json").write_text(json.dumps(results))
    write_report(res.out)
    return res.out


def test_user_strings_are_escaped(hostile_experiment):
    html = (hostile_experiment / "report.html").read_text()
    assert html.count("<script>") == 1  # diffex's own, at the end
    for raw in (HOSTILE_CONDITION, HOSTILE_FILE, HOSTILE_CHANNEL):
        assert raw not in html
    for raw in (HOSTILE_CONDITION, HOSTILE_FILE, HOSTILE_CHANNEL):  # escaped: the file name in the provenance table
        assert str(escape(raw)) in html, raw
    assert "&lt;b onmouseover=&#34;alert(&#39;c&#39;)&#34;&gt;treated &amp; co" in html
    parser = _Tags()
    parser.feed(html)
    assert "onmouseover" not in parser.attrs and "onload" not in parser.attrs
    assert parser.tags.count("svg") == html.count('<svg class="plot"')  # no injected <svg>


def test_every_figure_says_what_it_is_computed_on(hostile_experiment, tmp_path):
    html = (hostile_experiment / "report.html").read_text()
    results = json.loads((hostile_experiment / "results.json").read_text())
    assert results["attributes"]
    a = results["attributes"][0]
    assert f"of {a['n_eligible']}" in html and f"over {a['n_images']} evaluation images" in html
    assert f"{a['baseline_at_target']:.0%} already were" in html and "already at target" in html
    assert f"Holm {a['separation_p_adjusted']:.2g}" in html and "How these numbers were made" in html
    assert str(escape(results["statistics"]["selection_rule"])) in html and "over single images" in html
    assert results["statistics"]["subsampling"]
    for note in results["statistics"]["subsampling"]:
        assert str(escape(note)) in html
    roles = {e["role"] for att in results["attributes"] for e in att["traversal"]["shown"]}
    assert ("randomly drawn image" in html) == ("random sample" in roles) and ("most affected image" in html) == ("most affected" in roles)
    # a manifest with replicates: the report says that the bootstrap resamples replicates
    exp = tmp_path / "exp"
    shutil.copytree(hostile_experiment, exp, ignore=shutil.ignore_patterns("cache"))
    results["statistics"].update(bootstrap_unit="replicate", bootstrap_units={"control": 3, HOSTILE_CONDITION: 4})
    (exp / "results.json").write_text(json.dumps(results))
    html = write_report(exp).read_text()
    assert "replicates, not single images" in html and "control: 3 replicates" in html and "treat images as independent" in html


def test_no_external_url(hostile_experiment):
    html = (hostile_experiment / "report.html").read_text()
    assert not URL.findall(html), URL.findall(html)[:5]
    assert not re.search(r"""(?:src|href)=["'](?!data:|#)""", html)


def test_report_cli_rerenders_identically_without_computing(hostile_experiment, monkeypatch):
    import diffex.models.sampler as engine

    before = (hostile_experiment / "report.html").read_text()
    monkeypatch.setattr(engine, "ddim_render", lambda *a, **k: pytest.fail("report must not render"))
    (hostile_experiment / "report.html").unlink()
    r = CliRunner().invoke(app, ["report", str(hostile_experiment), "-q"])
    assert r.exit_code == 0, r.output
    assert (hostile_experiment / "report.html").read_text() == before


def test_missing_traversal_is_a_clear_error(hostile_experiment, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(hostile_experiment, exp, ignore=shutil.ignore_patterns("cache"))
    victim = next((exp / "traversals").glob("*.tif"))
    victim.unlink()
    with pytest.raises(DiffexError, match=re.escape(victim.name)):
        write_report(exp)
    (exp / "results.json").write_text('{"format": "something else"}')
    with pytest.raises(DiffexError, match="not a diffex explain result"):
        write_report(exp)


def _svg(macro: str, data: dict) -> str:
    from diffex.report.html import environment

    return environment().from_string('{% from "plots.svg.j2" import ' + macro + " %}{{ " + macro + "(p) }}").render(p=data)


def test_plots():
    assert nice_ticks(-1, 1) == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert nice_ticks(0, 7.3)[-1] <= 7.3 and nice_ticks(0, 7.3)[0] == 0
    svg = _svg("line_plot", line_plot([-1, 0, 1], [("DNA area", [-0.2, 0.0, 0.3]), ("broken", [float("nan")] * 3)], "strength", "change", 2))
    assert svg.count("<polyline") == 2 and "nan" not in svg.lower() and 'class="marker"' in svg
    hist = _svg("histogram", histogram_plot({"a": [0.0, 0.1, 0.2], "b": [], "c": [5.0]}, "coordinate", edges=(-1.0, 1.0)))
    assert hist.count("<polygon") == 3 and "n = 0" in hist and "nan" not in hist.lower()
    hostile = _svg("histogram", histogram_plot({"<i>x</i>": [0.0, 1.0]}, "a<b"))
    assert "<i>" not in hostile and "&lt;i&gt;x&lt;/i&gt;" in hostile and "a&lt;b" in hostile


def test_morphology_curves_are_relative_to_strength_zero():
    rows = [{"ImageName": im, "Strength": s, "DNA_AreaShape_Area": a, "DNA_AreaShape_Center_X": 10.0 + s}
            for im, scale in (("a", 100.0), ("b", 200.0)) for s, a in ((-1.0, 0.5 * scale), (0.0, scale), (1.0, 1.5 * scale))]
    curves = dict(morphology_curves(rows, ["DNA_AreaShape_Area", "DNA_AreaShape_Center_X"], [-1.0, 0.0, 1.0], image_size=20))
    assert curves["DNA area"] == pytest.approx([-0.5, 0.0, 0.5])
    assert curves["DNA x position"] == pytest.approx([-0.05, 0.0, 0.05])


# ------------------------------------------------------------------------ the sample experiment
@pytest.fixture(scope="module")
def sample_report(tmp_path_factory):
    """The shipped sample experiment, re-rendered into a temporary folder."""
    if not (SAMPLE_EXPERIMENT / "results.json").exists():
        pytest.fail(f"{SAMPLE_EXPERIMENT} is missing: it is shipped with the repository (see sample_data/README.md)")
    exp = tmp_path_factory.mktemp("sample") / "experiment"
    shutil.copytree(SAMPLE_EXPERIMENT, exp)
    return write_report(exp)


def test_sample_report_size_and_content(sample_report):
    html = sample_report.read_text()
    assert sample_report.stat().st_size <= SIZE_BUDGET
    results = json.loads((sample_report.parent / "results.json").read_text())
    for a in results["attributes"]:
        assert f'id="{a["id"]}"' in html
    assert "hypotheses generated by a model, not observations" in html
    assert 'id="methods-text"' in html and "SHA-256" in html
    assert not URL.findall(html)


@pytest.mark.browser
def test_sample_report_in_headless_chromium(sample_report, tmp_path, browser_page):
    """Opens the report in a real browser: no console errors, no network requests, the slider changes the frame."""
    page, record = browser_page
    shots = Path(os.environ.get("DIFFEX_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    url = sample_report.resolve().as_uri()
    page.goto(url, wait_until="load")
    section = page.locator("section.attribute").first
    slider = section.locator("input.strength")
    visible = section.locator("img.px:visible").first

    def state():
        return visible.get_attribute("data-f"), visible.get_attribute("src"), section.locator("output.strength-value").inner_text()

    last = int(slider.get_attribute("max"))
    before = state()
    assert before[0] == str(last)
    slider.fill("0")
    after = state()
    assert after[0] == "0" and after[1] != before[1] and after[2] != before[2], (before[2], after[2])
    # one frame per view is visible at a time
    n_views = section.locator("table.views td:not(.rowlabel)").count()
    assert section.locator("img.px:visible").count() == n_views
    section.locator(".strip img[data-frame='1']").first.click()
    assert slider.input_value() == "1"
    slider.fill(str(last))
    page.screenshot(path=str(shots / "report-top.png"))
    section.scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "report-attribute.png"))
    page.screenshot(path=str(shots / "report-full.png"), full_page=True)
    assert not record["problems"], record["problems"]
    assert [r for r in record["requests"] if r != url] == []
    assert (shots / "report-full.png").stat().st_size > 10_000


def test_shipped_report_is_current(sample_report):
    """sample_data/experiment/report.html is what `diffex report` makes of its folder today."""
    shipped = (SAMPLE_EXPERIMENT / "report.html").read_text()
    assert shipped == sample_report.read_text(), "re-render it: diffex report sample_data/experiment"


def test_trust_warnings_name_each_failed_check():
    from types import SimpleNamespace as NS

    from diffex.report.trust import warnings

    good = dict(separation_auc=0.85, separation_p_adjusted=0.001, target="treated", strength_unit="sd", ends_in_data=1.0,
                consistency=0.9, consistency_measure="DNA_AreaShape_Area", coordinate={}, strength=3.0)
    assert warnings(NS(**good), ["control", "treated"]) == []
    w = warnings(NS(**{**good, "separation_auc": 0.75, "separation_p_adjusted": 0.02}), ["control", "treated"], "lesions")
    assert w == ["The classifier reacts to this change, but real treated and control lesions differ only weakly along it "
                 "(AUC 0.75, Holm-adjusted p 0.02; trusted from AUC 0.7 and p < 0.01)."]
    w = warnings(NS(**{**good, "separation_auc": 0.55, "separation_p_adjusted": 0.3}), ["control", "treated"])
    assert "do not differ along it (AUC 0.55" in w[0]
    assert "end inside the range" in warnings(NS(**{**good, "ends_in_data": 0.5}), ["control", "treated"])[0]
    assert "not consistent" in warnings(NS(**{**good, "consistency": 0.4}), ["control", "treated"])[0]
    assert "not described" in warnings(NS(**{**good, "consistency": float("nan"), "consistency_measure": ""}), ["a", "b"])[0]
    # the classifier's reaction on the evaluation images: trusted only when Δp's 95 % CI lies above 0
    assert warnings(NS(**good, delta_p_ci95=[0.004, 0.2], mean_delta_p=0.1), ["control", "treated"]) == []
    w = warnings(NS(**{**good, "separation_auc": 0.55, "separation_p_adjusted": 0.75}, delta_p_ci95=[-0.033, 0.038],
                    mean_delta_p=0.001), ["control", "treated"])
    assert w == ["On the evaluation images the classifier's reaction to this change is not distinguishable from zero "
                 "(Δp +0.001, 95 % CI [-0.033, +0.038]; trusted when the interval is above 0).",
                 "Real treated and control cells do not differ along it (AUC 0.55, Holm-adjusted p 0.75; trusted from AUC 0.7 "
                 "and p < 0.01)."]
    assert len(warnings(NS(**good, delta_p_ci95=[0.0, 0.2], mean_delta_p=0.1), ["a", "b"])) == 1  # 0 itself is not above 0
    # before calibration (h_norm): full strength 1 x mean ‖h‖ against coordinates with SD 0.1 is 10 SD
    old = {**good, "strength_unit": "h_norm", "strength": 1.0, "coordinate": {"control": [-0.1, 0.1], "treated": [-0.1, 0.1]}}
    assert "beyond the real data" in warnings(NS(**old), ["control", "treated"])[0]
    assert warnings(NS(**{**old, "coordinate": {"control": [-1.0, 1.0]}}), ["control", "treated"]) == []


def test_trust_warning_when_a_named_direction_does_not_move_its_readout():
    """A direction named for a readout is flagged unless its renders move that readout the named way (r >= 0.5 that way);
    the sentence quotes the name's own way, and says so when the attribute runs against it."""
    from types import SimpleNamespace as NS

    from diffex.report.results import Trend
    from diffex.report.trust import warnings

    good = dict(separation_auc=0.85, separation_p_adjusted=0.001, target="control", strength_unit="sd", ends_in_data=1.0,
                consistency=0.9, consistency_measure="DNA_AreaShape_Area", coordinate={}, strength=3.0)

    def named(higher, sign, r, measure="DNA_AreaShape_Perimeter"):
        return NS(**good, sign=sign, named_measure=measure, named_direction=higher * sign,
                  morphology={"DNA_AreaShape_Perimeter": Trend(r, 0.1, -0.1), "DNA_AreaShape_Area": Trend(-0.9, -0.2, 0.2)})

    conditions = ["control", "treated"]
    assert warnings(named(+1, +1, 0.5), conditions) == []  # exactly at the bar: moves the named way
    assert warnings(named(+1, -1, -0.83), conditions) == []  # selected against the name: falls, as it should
    assert warnings(named(+1, +1, 0.49), conditions) == [
        "Its name says DNA perimeter higher, but its renders do not consistently move DNA perimeter higher towards control "
        "(median Spearman r with the strength +0.49; trusted from r ≥ 0.5)."]
    assert warnings(named(+1, -1, 0.9), conditions) == [
        "Its name says DNA perimeter higher; it was selected in the opposite direction, so DNA perimeter should go lower towards "
        "control, but its renders do not consistently move DNA perimeter lower towards control (median Spearman r with the "
        "strength +0.90; trusted from r ≤ −0.5)."]
    w = warnings(named(-1, +1, -0.2), conditions)
    assert len(w) == 1 and w[0].startswith("Its name says DNA perimeter lower, but") and "r ≤ −0.5" in w[0]
    assert warnings(named(0, +1, -0.9), conditions) == []  # not a named direction
    assert warnings(named(+1, +1, -0.9, "Actin_Texture_Contrast"), conditions) == []  # the readout was not measured
