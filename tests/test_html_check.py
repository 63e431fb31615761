"""The HTML report in headless Chromium (gipip_jax.html_check): every image loaded, links and anchors resolve."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from gipip_jax import html_check, report

chromium = pytest.mark.skipif(shutil.which("chromium") is None and shutil.which("chromium-browser") is None,
                              reason="no Chromium (Debian package `chromium`)")


@pytest.fixture(scope="module")
def built(fixtures_dir, tmp_path_factory):
    """The reference study's report (tables and plots; the fixture has no reconstructions, so no grids)."""
    workdir = tmp_path_factory.mktemp("html_check") / "study"
    shutil.copytree(fixtures_dir / "reference_study", workdir)
    paths = report.build(str(workdir))
    assert paths["plots"] and paths["traces"]
    return workdir


@pytest.fixture
def study(built, tmp_path):
    """A copy of the built report that a test may break."""
    return shutil.copytree(built, tmp_path / "study")


@chromium
def test_study_report_renders_with_every_image_loaded(study, tmp_path):
    png = tmp_path / "out" / "report.png"
    assert html_check.check(str(study / "report.html"), str(png)) == []
    with Image.open(png) as image:
        assert image.size == html_check.WINDOW
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20)) > 100   # text, tables and plots


@chromium
def test_missing_image_is_reported(study, capsys):
    (study / "report" / "psnr.png").unlink()
    assert html_check.check(str(study / "report.html")) == ["image not loaded: report/psnr.png"]
    assert html_check.main([str(study / "report.html")]) == 1
    assert capsys.readouterr().err == "gipip-jax: html check: image not loaded: report/psnr.png\n"


@chromium
def test_broken_link_and_missing_anchor_are_reported(study):
    page = study / "report.html"
    links = ('<h2 id="here">x</h2><a href="#here">ok</a><a href="report/psnr.png">ok</a>'
             '<a href="https://example.org/x">other host: skipped</a><a href="mailto:a@b.c">skipped</a>'
             '<a href="report/missing.png">broken</a><a href="#nowhere">no anchor</a>'
             '<a href="report.md#nowhere">not html: no anchor check</a></body>')
    page.write_text(page.read_text().replace("</body>", links))
    assert html_check.check(str(page)) == ["broken link (404): report/missing.png",
                                           "link to a missing anchor: #nowhere"]


@chromium
def test_chromium_that_does_not_finish_is_a_problem(study):
    problems = html_check.check(str(study / "report.html"), timeout_s=0.01)
    assert problems == ["checker page: Chromium did not finish within 0.01 s"]


def test_bad_input_exits_2(tmp_path, capsys):
    assert html_check.main([str(tmp_path / "missing.html")]) == 2
    assert capsys.readouterr().err.startswith("gipip-jax: error: no such report")
    (tmp_path / "r.html").write_text("<html></html>")
    assert html_check.main([str(tmp_path / "r.html"), "--chromium", str(tmp_path / "no_chromium")]) == 2
    assert "not an executable Chromium" in capsys.readouterr().err


def test_no_chromium_on_path(monkeypatch):
    monkeypatch.setenv("PATH", "")
    with pytest.raises(html_check.HtmlCheckError, match="apt-get install chromium"):
        html_check.find_chromium()


def test_blank_screenshot(tmp_path):
    Image.fromarray(np.full((20, 30, 3), 255, np.uint8)).save(tmp_path / "blank.png")
    assert html_check.blank(str(tmp_path / "blank.png"))
    pixels = np.full((20, 30, 3), 255, np.uint8)
    pixels[5, 5] = 0
    Image.fromarray(pixels).save(tmp_path / "dot.png")
    assert not html_check.blank(str(tmp_path / "dot.png"))
