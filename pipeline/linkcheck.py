"""Every local link of a rendered site resolves: pages, figures, stylesheets, and anchors.

Run over ``site/_site`` after each render (a broken link fails the render, and the previous site
stays), and by the browser test. External links (``https:``, ``mailto:``) are not followed:
the machines that build the blog are offline.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

__all__ = ["BrokenLink", "broken_links"]

_LINKING = {("a", "href"), ("img", "src"), ("link", "href"), ("script", "src"), ("source", "src"),
            ("iframe", "src"), ("video", "src"), ("audio", "src")}


class BrokenLink(str):
    """'page.html: <a href="x"> → missing file' (a str, so that lists print plainly)."""


class _Page(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.refs: list[tuple[str, str, str]] = []   # (tag, attribute, value)
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("id", "name") and value and (name == "id" or tag == "a"):
                self.ids.add(value)
            if (tag, name) in _LINKING and value is not None:
                self.refs.append((tag, name, value))

    handle_startendtag = handle_starttag


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8", errors="replace"))
    return page


def broken_links(site: Path) -> list[BrokenLink]:
    """Each local href/src (and #anchor) in the site's HTML pages that does not resolve."""
    site = site.resolve()
    pages = {path: _parse(path) for path in sorted(site.rglob("*.html"))}
    broken: list[BrokenLink] = []
    for path, page in pages.items():
        rel = path.relative_to(site).as_posix()
        for tag, attr, value in page.refs:
            parts = urlsplit(value)
            if parts.scheme or value.startswith("//") or re.match(r"^(mailto|tel|javascript|data):", value):
                continue
            if not parts.path:
                target = path
            else:
                target = (path.parent / unquote(parts.path)).resolve()
                if target.is_dir():
                    target = target / "index.html"
            where = f'{rel}: <{tag} {attr}="{value}">'
            if site != target and site not in target.parents:
                broken.append(BrokenLink(f"{where} points outside the site"))
            elif not target.is_file():
                broken.append(BrokenLink(f"{where}: no file {target.relative_to(site).as_posix()}"))
            elif parts.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else _parse(target).ids
                if unquote(parts.fragment) not in ids:
                    broken.append(BrokenLink(f"{where}: no element with id {parts.fragment!r}"))
    return broken
