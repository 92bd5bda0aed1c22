"""Rendering ``site/`` into ``site/_site/``: with Quarto when installed, else with pandoc 3.

Both engines read the same sources (the Quarto website project and the staged posts) and give
the same layout: ``index.html`` (the listing, newest first, with categories), one
``posts/<slug>/index.html`` per post with its figures, ``categories/<name>.html``, the RSS feed
``index.xml`` and ``about.html``. Math is MathML: it renders without a CDN.

Rendering is atomic: the engine writes a fresh directory, which replaces ``_site`` only when the
render succeeded, so a failed render leaves the previous site in place. A stamp of the inputs
lets an unchanged site skip rendering altogether.
"""

from __future__ import annotations

import hashlib
import html
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, timezone
from email.utils import format_datetime
from pathlib import Path

import jinja2
import yaml

from .linkcheck import broken_links
from .markdown import pandoc_path
from .project import Project, slugify
from .stage import read_post

__all__ = ["ENGINES", "PandocEngine", "QuartoEngine", "RenderError", "choose_engine", "input_stamp", "render_site"]

ENGINES = ("auto", "quarto", "pandoc")

STAMP = ".render-stamp"


class RenderError(RuntimeError):
    """The engine failed; the previous site is untouched."""


def _source_files(project: Project) -> list[Path]:
    """The site's sources: everything in site/ except outputs, plus the pandoc templates."""
    site = project.site_dir
    files = [p for p in site.rglob("*") if p.is_file()
             and not p.relative_to(site).parts[0].startswith(("_site", ".quarto"))]
    files += [p for p in (project.templates_dir / "site").rglob("*") if p.is_file()]
    return sorted(files)


def input_stamp(project: Project, engine_name: str) -> str:
    digest = hashlib.sha256(engine_name.encode())
    for path in _source_files(project):
        digest.update(str(path.relative_to(project.root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


# ---------------------------------------------------------------- pandoc


@dataclass
class _Post:
    slug: str
    meta: dict
    body_md: str
    folder: Path

    @property
    def date(self) -> date:
        value = self.meta["date"]
        return value if isinstance(value, date) else date.fromisoformat(str(value))

    @property
    def href(self) -> str:
        return f"posts/{self.slug}/index.html"


def _date_text(d: date) -> str:
    return d.strftime("%b %-d, %Y")


class PandocEngine:
    name = "pandoc"

    def __init__(self, pandoc: str | None = None):
        self.pandoc = pandoc or pandoc_path()

    def version(self) -> str:
        out = subprocess.run([self.pandoc, "--version"], capture_output=True, text=True, check=True)
        return out.stdout.split()[1]

    def to_html(self, markdown: str, lua_filter: Path, where: str) -> str:
        cmd = [self.pandoc, "--from=markdown", "--to=html5", "--mathml", "--wrap=none",
               "--syntax-highlighting=default", f"--lua-filter={lua_filter}"]
        proc = subprocess.run(cmd, input=markdown, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RenderError(f"pandoc failed on {where}: {proc.stderr.strip()}")
        return proc.stdout

    def render(self, project: Project, out: Path) -> None:
        site, templates = project.site_dir, project.templates_dir / "site"
        config = yaml.safe_load((site / "_quarto.yml").read_text(encoding="utf-8"))["website"]
        site_info = {"title": config["title"], "description": config.get("description", ""),
                     "url": str(config.get("site-url", "")).rstrip("/")}
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(templates), autoescape=False,
                                 undefined=jinja2.StrictUndefined)
        page = env.get_template("page.html.j2")
        lua = templates / "quarto.lua"
        common = {"site": site_info, "pandoc_version": self.version(), "subtitle": None,
                  "description": None, "listing": None, "all_categories": None}

        posts = []
        for index in sorted((site / "posts").glob("*/index.qmd")):
            meta, body = read_post(index)
            posts.append(_Post(index.parent.name, meta, body, index.parent))
        posts.sort(key=lambda p: (p.date, p.meta.get("day", 0)), reverse=True)

        def cats(names) -> list[dict]:
            return [{"name": n, "slug": slugify(str(n))} for n in names]

        listing = [{
            "title": html.escape(str(p.meta["title"])), "href": p.href,
            "description": html.escape(str(p.meta.get("description", ""))),
            "date_text": _date_text(p.date), "categories": cats(p.meta.get("categories", [])),
            "image": f"posts/{p.slug}/{p.meta['image']}" if p.meta.get("image") else None,
            "rfc822": format_datetime(datetime.combine(p.date, datetime.min.time(), timezone.utc)),
            "raw_title": str(p.meta["title"]), "raw_description": str(p.meta.get("description", "")),
        } for p in posts]

        out.mkdir(parents=True)
        shutil.copy(templates / "pandoc.css", out / "pandoc.css")
        shutil.copy(site / "styles.css", out / "styles.css")

        def write(rel: str, text: str) -> None:
            path = out / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")

        # One pandoc process per post, as many at once as there are cores (pandoc is single-threaded).
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            bodies = list(pool.map(lambda p: self.to_html(
                p.body_md, lua, str(p.meta.get("source") or f"posts/{p.slug}/index.qmd")), posts))
        for p, body in zip(posts, bodies):
            write(p.href, page.render(
                **{**common, "kind": "post", "root": "../../", "title": html.escape(str(p.meta["title"])),
                   "description": html.escape(str(p.meta.get("description", ""))), "body": body,
                   "date_text": _date_text(p.date), "categories": cats(p.meta.get("categories", [])),
                   "arena": p.meta.get("arena"), "arena_url": p.meta.get("arena_url")}))
            for asset in p.folder.rglob("*"):
                if asset.is_file() and asset.name != "index.qmd":
                    target = out / "posts" / p.slug / asset.relative_to(p.folder)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(asset, target)

        # One category per slug ('fundamentals' and 'Fundamentals' are one page, one count);
        # staging already gives each one spelling, the first seen is kept here as a safeguard.
        names: dict[str, str] = {}
        counts: dict[str, int] = {}
        for item in listing:
            for c in {c["slug"]: c for c in item["categories"]}.values():
                names.setdefault(c["slug"], c["name"])
                counts[c["slug"]] = counts.get(c["slug"], 0) + 1
        all_categories = [{"name": names[slug], "slug": slug, "count": counts[slug]}
                          for slug in sorted(counts, key=lambda k: names[k].lower())]

        index_meta, index_body = read_post(site / "index.qmd")
        write("index.html", page.render(
            **{**common, "kind": "listing", "root": "", "title": index_meta["title"],
               "subtitle": index_meta.get("subtitle"), "listing": listing, "all_categories": all_categories,
               "body": self.to_html(index_body, lua, "index.qmd")}))
        for category in all_categories:
            members = [i for i in listing if category["slug"] in [c["slug"] for c in i["categories"]]]
            write(f"categories/{category['slug']}.html", page.render(
                **{**common, "kind": "listing", "root": "../", "title": f"Category: {category['name']}",
                   "listing": members, "body": ""}))
        about_meta, about_body = read_post(site / "about.qmd")
        write("about.html", page.render(**{**common, "kind": "page", "root": "", "title": about_meta["title"],
                                           "body": self.to_html(about_body, lua, "about.qmd")}))
        feed_items = [{**i, "title": i["raw_title"], "description": i["raw_description"]} for i in listing]
        write("index.xml", env.get_template("feed.xml.j2").render(site=site_info, listing=feed_items))


# ---------------------------------------------------------------- quarto


class QuartoEngine:
    name = "quarto"

    def __init__(self, quarto: str | None = None):
        self.quarto = quarto or shutil.which("quarto")
        if self.quarto is None:
            raise RenderError("quarto is not on PATH (install the `blog` extra with internet access)")

    def render(self, project: Project, out: Path) -> None:
        rel = os.path.relpath(out, project.site_dir)
        proc = subprocess.run([self.quarto, "render", str(project.site_dir), "--output-dir", rel],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RenderError(f"quarto render failed: {proc.stderr.strip()[-3000:]}")


def choose_engine(name: str = "auto"):
    """'quarto', 'pandoc', or 'auto' (Quarto when on PATH, else pandoc)."""
    if name not in ENGINES:
        raise RenderError(f"unknown engine {name!r}: use {', '.join(ENGINES)}")
    if name == "quarto" or (name == "auto" and shutil.which("quarto")):
        return QuartoEngine()
    return PandocEngine()


def render_site(project: Project, engine, *, force: bool = False) -> bool:
    """Render atomically into site/_site; return False when the inputs are unchanged (skipped).

    The engine writes a fresh folder; its local links are checked (every href and src resolves,
    anchors included); only then does it replace ``_site``. Anything that fails, a Ctrl-C
    included, removes the fresh folder and leaves the previous site as it was."""
    final = project.site_dir / "_site"
    stamp = input_stamp(project, engine.name)
    if not force and (final / STAMP).exists() and (final / STAMP).read_text() == stamp:
        return False
    fresh = project.site_dir / f"_site.new-{os.getpid()}"
    old = project.site_dir / f"_site.old-{os.getpid()}"
    shutil.rmtree(fresh, ignore_errors=True)
    try:
        try:
            engine.render(project, fresh)
        except RenderError:
            raise
        except Exception as exc:  # a template error, a missing file: still a failed render
            raise RenderError(f"{engine.name} render failed: {type(exc).__name__}: {exc}") from exc
        if not (fresh / "index.html").exists():
            raise RenderError(f"{engine.name} produced no index.html")
        broken = broken_links(fresh)
        if broken:
            shown = "\n  - ".join(broken[:10]) + (f"\n  (and {len(broken) - 10} more)" if len(broken) > 10 else "")
            raise RenderError(f"the rendered site has {len(broken)} broken link(s); the previous site is kept:\n  - {shown}")
        (fresh / STAMP).write_text(stamp)
        try:
            if final.exists():
                final.rename(old)
            fresh.rename(final)
        except OSError as exc:
            if old.exists() and not final.exists():
                old.rename(final)
            raise RenderError(f"cannot replace {final.relative_to(project.root)}: {exc.strerror or exc} "
                              f"(is it open, read-only or owned by another user?); the previous site is kept") from None
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return True
