"""The rendered blog, looked at in a real headless Chromium: the real days 001 and 002, published."""

import io
import shutil

import pytest
from PIL import Image, ImageStat

from checks.browser import open_browser
from pipeline.publish import PublishOptions, publish
from pipeline.stage import read_post

from .conftest import REPO


def _is_blank(png: bytes) -> tuple[bool, float, float]:
    """A screenshot is blank if it is (nearly) one colour: returns (blank?, grey std, ink fraction)."""
    grey = Image.open(io.BytesIO(png)).convert("L")
    std = ImageStat.Stat(grey).stddev[0]
    ink = sum(grey.histogram()[:200]) / (grey.width * grey.height)
    return std < 10 or ink < 0.01, std, ink


@pytest.mark.browser
def test_blog_renders_in_chromium_with_math_figures_and_only_passing_days(toy, measure):
    """Publish days 001–002 into a fresh project, open the index and a post in headless Chromium:
    the screenshots are not blank, the post's MathML and figures are laid out and loaded, and the
    index lists exactly the passing days, before and after day 002 is broken."""
    for day in ("001", "002"):
        shutil.copytree(REPO / "days" / day, toy.root / "days" / day,
                        ignore=shutil.ignore_patterns("__pycache__"))
    summary = publish(toy.project, PublishOptions(engine="pandoc"))
    assert [(r.unit, r.passed) for r in summary.gated] == [(1, True), (2, True)]
    titles = {day: read_post(toy.day_dir(day) / "post.qmd")[0]["title"] for day in (1, 2)}
    index_url = (toy.root / "site/_site/index.html").as_uri()

    with open_browser() as page:
        page.goto(index_url)
        blank, std, ink = _is_blank(page.screenshot(full_page=True))
        measure("index_screenshot.grey_std", std, "≥ 10")
        assert not blank, f"index screenshot looks blank (std {std:.1f}, ink {ink:.3f})"
        assert sorted(page.locator(".listing-title a").all_inner_texts()) == sorted(titles.values())

        page.locator(".listing-title a", has_text=titles[2]).click()
        page.wait_for_load_state("load")
        assert page.title().startswith(titles[2])
        blank, std, ink = _is_blank(page.screenshot())
        measure("post_screenshot.grey_std", std, "≥ 10")
        assert not blank
        maths = page.evaluate("""[...document.querySelectorAll('math')].map(m => {
            const r = m.getBoundingClientRect(); return [r.width, r.height]; })""")
        measure("post.math_elements", len(maths))
        assert len(maths) > 20 and all(w > 0 and h > 0 for w, h in maths), "MathML not laid out"
        assert page.locator("math[display=block]").count() >= 2
        images = page.evaluate("""[...document.querySelectorAll('figure img')].map(i => [i.complete, i.naturalWidth])""")
        measure("post.figures_loaded", sum(1 for done, width in images if done and width > 0))
        assert len(images) == 3 and all(done and width > 100 for done, width in images), images
        assert page.locator(".verified").count() == 1
        assert "tests passed" in page.locator(".verified .callout-header + .callout-body").inner_text()

    # Break day 002: the next publish must drop it from the index the browser sees.
    test_file = toy.day_dir(2) / "test_linalg.py"
    test_file.write_text(test_file.read_text() + "\n\ndef test_broken_on_purpose():\n    assert False\n")
    publish(toy.project, PublishOptions(engine="pandoc"))
    with open_browser() as page:
        page.goto(index_url)
        assert page.locator(".listing-title a").all_inner_texts() == [titles[1]]
