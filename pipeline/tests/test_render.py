"""The blog's two engines: pandoc's output layout, and the Quarto project they both read."""

import shutil
import xml.etree.ElementTree as ET
from datetime import date, timedelta
from email.utils import parsedate_to_datetime

import pytest
import yaml

from pipeline.publish import PublishOptions, publish
from pipeline.render import PandocEngine, QuartoEngine, render_site
from pipeline.stage import read_post

PANDOC = PublishOptions(engine="pandoc", jobs=2)


@pytest.fixture
def published(toy):
    """Three toy days published; day 3 backdated so that dates, not day numbers, order the listing."""
    for day in (1, 2, 3):
        toy.write_day(day)
    publish(toy.project, PANDOC)
    ledger_path = toy.root / "progress.yml"
    text = ledger_path.read_text()
    today = date.today().isoformat()
    earlier = (date.today() - timedelta(days=30)).isoformat()
    head, tail = text.split("- day: 3\n", 1)
    ledger_path.write_text(head + "- day: 3\n" + tail.replace(f"first_passed: '{today}'", f"first_passed: '{earlier}'", 1))
    publish(toy.project, PANDOC)
    return toy


def test_pandoc_layout_listing_posts_categories_feed_about(published):
    """index.html lists the posts newest first; each post page has MathML, its numbered figure
    and the Verified callout; category pages, RSS and the about page exist."""
    site = published.root / "site/_site"
    index = (site / "index.html").read_text()
    order = [index.index(f">Toy day {d}<") for d in (2, 1, 3)]
    assert order == sorted(order), "listing not sorted by date, newest first"
    post = (site / "posts/day-001-pytorch-einops-einsum/index.html").read_text()
    assert post.count("<math") >= 2 and 'display="block"' in post
    assert 'id="fig-plot"' in post and "Figure 1: A toy figure." in post and 'href="#fig-plot">Figure 1</a>' in post
    assert (site / "posts/day-001-pytorch-einops-einsum/figures/plot.png").exists()
    assert 'class="callout-tip verified callout"' in post and "2 tests passed" in post
    assert "cdn" not in post.lower() and "<script" not in post
    assert (site / "categories/toys.html").read_text().count("listing-item") == 3
    assert (site / "categories/fundamentals.html").exists() and (site / "about.html").exists()


def test_rss_feed_is_valid_and_lists_every_post(published):
    """index.xml parses as RSS 2.0 with one item per post, absolute links and RFC 822 dates."""
    root = ET.fromstring((published.root / "site/_site/index.xml").read_bytes())
    assert root.tag == "rss" and root.get("version") == "2.0"
    items = root.findall("channel/item")
    assert sorted(i.findtext("title") for i in items) == ["Toy day 1", "Toy day 2", "Toy day 3"]
    site_url = yaml.safe_load((published.root / "site/_quarto.yml").read_text())["website"]["site-url"]
    for item in items:
        assert item.findtext("link").startswith(site_url.rstrip("/") + "/posts/day-00")
        assert parsedate_to_datetime(item.findtext("pubDate")).date() <= date.today()
        assert "toys" in [c.text for c in item.findall("category")]


def test_staged_project_is_a_quarto_website(published):
    """The Quarto path up to rendering: a website project whose listing reads posts/ by date with
    categories and a feed, offline math, and staged posts with the front matter Quarto needs."""
    site = published.root / "site"
    config = yaml.safe_load((site / "_quarto.yml").read_text())
    assert config["project"]["type"] == "website" and config["project"]["output-dir"] == "_site"
    assert config["format"]["html"]["html-math-method"] == "mathml"
    front, _ = read_post(site / "index.qmd")
    listing = front["listing"]
    assert (listing["contents"], listing["sort"], listing["categories"], listing["feed"]) == ("posts", "date desc", True, True)
    assert yaml.safe_load((site / "posts/_metadata.yml").read_text())["execute"]["enabled"] is False
    posts = sorted(site.glob("posts/day-*/index.qmd"))
    assert len(posts) == 3
    for path in posts:
        meta, body = read_post(path)
        assert {"title", "date", "categories", "description"} <= set(meta)
        date.fromisoformat(meta["date"])
        assert "{{<" not in body and (path.parent / "figures/plot.png").exists()


@pytest.mark.skipif(shutil.which("quarto") is None, reason="quarto is not on PATH (the `blog` extra needs internet)")
def test_quarto_renders_the_staged_project(published):
    """Where Quarto is installed, it renders the same staged project into the same layout."""
    assert render_site(published.project, QuartoEngine(), force=True)
    site = published.root / "site/_site"
    assert (site / "index.html").exists() and (site / "index.xml").exists()
    assert (site / "posts/day-001-pytorch-einops-einsum/index.html").exists()


def test_render_is_skipped_when_inputs_are_unchanged(published):
    """The stamp of the inputs makes an unchanged render a no-op; a changed input renders again."""
    assert render_site(published.project, PandocEngine()) is False
    (published.root / "site/about.qmd").write_text((published.root / "site/about.qmd").read_text() + "\nMore.\n")
    assert render_site(published.project, PandocEngine()) is True
    assert "More." in (published.root / "site/_site/about.html").read_text()
