"""The blog as readers get it: every committed post, staged and rendered, then read in Chromium.

The posts are the real ones (days/NNN/post.qmd and capstone/report.qmd) with their real figures,
code and results.json; only the gate reports are stand-ins that measured every name a post asks
for, because running forty gates is what `invoke publish` (and its own tests) do. What is under
test here is what a reader sees: every figure and link resolves, nothing overflows the column,
no equation shows stray scroll bars, no code block hides its end.
"""

from __future__ import annotations

import io
import re
from datetime import date

import pytest
from PIL import Image, ImageStat

from checks.browser import open_browser
from pipeline import ledger as ledger_io
from pipeline.gate import GateResult
from pipeline.linkcheck import broken_links
from pipeline.project import Project
from pipeline.render import PandocEngine, render_site
from pipeline.stage import canonical_categories, post_slug, stage_post, sync_staged

from .conftest import REPO, ToyProject

REAL = Project.at(REPO)


class _AnyMeasurement(dict):
    """Every name was 'measured' (as 0.5): a stand-in for the gate's numbers in layout checks."""

    def __contains__(self, key) -> bool:
        return True

    def __missing__(self, key):
        return {"name": key, "value": 0.5, "nodeid": "stand-in"}


class StandInGate(GateResult):
    def measurements(self) -> dict[str, dict]:
        return _AnyMeasurement()


def _units():
    ledger = ledger_io.load(REAL.ledger_path)
    return [e for e in ledger.units() if REAL.unit_exists(e.key) and REAL.post_path(e.key).exists()]


def _stage_all(published_only=None):
    units = _units()
    chosen = [e for e in units if published_only is None or e.key in published_only]
    slugs = {e.key: post_slug(e) for e in chosen}
    staged = []
    for entry in chosen:
        gate = StandInGate(unit=entry.key, fingerprint="sha256:" + "0" * 64, checked_at="2026-12-06T00:00:00+00:00",
                           wall_seconds=1.0, exit_status=0, counts={"passed": 1})
        staged.append(stage_post(REAL, entry, gate, entry.first_passed or date.today(), slugs))
    canonical_categories(staged)
    return staged


def test_every_committed_post_stages_with_all_its_figures_and_links():
    """Each real post stages: every image and local link (found in pandoc's tree) resolves, every
    link to another post lands on it, and pandoc reads it without a warning."""
    staged = _stage_all()
    assert len(staged) == len(_units()) >= 40
    capstone = next(p for p in staged if p.unit == "capstone")
    assert "figures/part2_attention_grid.png" in capstone.assets  # its alt text holds "[P]"
    assert "(`models.load`)" in capstone.body                    # an inline code placeholder stays inline


def test_links_to_unpublished_days_become_plain_text():
    """With only the capstone published, its links to days are text, not dead links."""
    staged = _stage_all(published_only={"capstone"})
    body = staged[0].body
    assert "](../day-" not in body and "{.unpublished" in body


@pytest.fixture(scope="module")
def real_site(tmp_path_factory):
    toy = ToyProject(tmp_path_factory.mktemp("blog") / "project")
    staged = _stage_all()
    sync_staged(toy.project, staged)
    render_site(toy.project, PandocEngine(), force=True)
    return toy.root / "site" / "_site", staged


def test_the_rendered_site_has_no_broken_link(real_site):
    """Every local href and src of every page resolves (pages, figures, styles, #anchors)."""
    site, staged = real_site
    assert len(list((site / "posts").glob("*/index.html"))) == len(staged)
    assert broken_links(site) == []


def test_categories_have_one_page_each_with_matching_counts(real_site):
    """One category per case-insensitive name; the count on the index is the number of posts on
    its page ('Fundamentals (N)' opens a page listing N posts)."""
    site, _ = real_site
    index = (site / "index.html").read_text()
    listed = re.findall(r'href="categories/([^"]+)\.html">([^<]+) \((\d+)\)</a>', index)
    slugs = [slug for slug, _, _ in listed]
    assert len(slugs) == len(set(slugs)) == len(list((site / "categories").glob("*.html")))
    assert len({name.lower() for _, name, _ in listed}) == len(listed)
    for slug, name, count in listed:
        page = (site / "categories" / f"{slug}.html").read_text()
        assert page.count('class="listing-item"') == int(count), name


def _blank(png: bytes) -> tuple[bool, float]:
    grey = Image.open(io.BytesIO(png)).convert("L")
    std = ImageStat.Stat(grey).stddev[0]
    return std < 10, std


READER_CHECKS = """() => {
  const column = document.querySelector('main');
  const over = (el) => el.scrollWidth > el.clientWidth + 1;
  const scrolls = (el, axis) => {
    const s = getComputedStyle(el)[axis === 'x' ? 'overflowX' : 'overflowY'];
    return (s === 'auto' || s === 'scroll') &&
      (axis === 'x' ? el.scrollWidth > el.clientWidth + 1 : el.scrollHeight > el.clientHeight + 1);
  };
  const maths = [...document.querySelectorAll('math[display=block]')];
  return {
    page_overflow: document.documentElement.scrollWidth - document.documentElement.clientWidth,
    column_overflow: column.scrollWidth - column.clientWidth,
    images: [...document.querySelectorAll('img')].map(i => [i.getAttribute('src'), i.complete, i.naturalWidth]),
    maths: maths.length,
    math_vertical_scroll: maths.filter(m => scrolls(m, 'y')).length,
    math_sideways: maths.filter(m => scrolls(m, 'x')).map(m => [m.scrollWidth, m.clientWidth]),
    code_hidden: [...document.querySelectorAll('pre')].filter(over).length,
    code_blocks: document.querySelectorAll('pre').length,
  };
}"""


@pytest.mark.browser
def test_every_page_reads_well_in_chromium(real_site, measure):
    """Every page of the blog in headless Chromium at 1280×900: the page never scrolls sideways
    and nothing overflows the column, every image loads (naturalWidth > 0), no display equation
    shows a vertical scroll bar, only equations genuinely wider than the column scroll sideways,
    and no code block hides its end; the index and three posts with math, code and figures
    are screenshotted and not blank."""
    site, staged = real_site
    pages = [site / "index.html", *sorted(site.glob("posts/*/index.html")), *sorted(site.glob("categories/*.html"))]
    totals = {"pages": 0, "images": 0, "maths": 0, "code_blocks": 0, "math_sideways": 0}
    problems = []
    shots = {}
    with open_browser() as page:
        for path in pages:
            page.goto(path.as_uri())
            page.wait_for_load_state("load")
            info = page.evaluate(READER_CHECKS)
            rel = path.relative_to(site).as_posix()
            totals["pages"] += 1
            totals["images"] += len(info["images"])
            totals["maths"] += info["maths"]
            totals["code_blocks"] += info["code_blocks"]
            totals["math_sideways"] += len(info["math_sideways"])
            if info["page_overflow"] > 0 or info["column_overflow"] > 0:
                problems.append(f"{rel}: overflows sideways ({info['page_overflow']} / {info['column_overflow']} px)")
            problems += [f"{rel}: image {src} not loaded" for src, done, width in info["images"] if not (done and width > 0)]
            if info["math_vertical_scroll"]:
                problems.append(f"{rel}: {info['math_vertical_scroll']} equation(s) with a vertical scroll bar")
            if info["code_hidden"]:
                problems.append(f"{rel}: {info['code_hidden']} code block(s) hide their end")
            if rel == "index.html" or (info["maths"] and info["code_blocks"] and info["images"] and len(shots) < 4):
                shots[rel] = page.screenshot(full_page=False)
    for name, value in totals.items():
        measure(f"site.{name}", value)
    assert not problems, "\n".join(problems)
    assert "index.html" in shots and len(shots) == 4, sorted(shots)
    for rel, png in shots.items():
        blank, std = _blank(png)
        measure(f"screenshot_std.{rel.split('/')[1] if '/' in rel else rel}", std, "≥ 10")
        assert not blank, f"{rel}: the screenshot is blank (grey std {std:.1f})"
