"""The README's generated sections: badges, the module tracker and the daily log.

Each section sits between ``<!-- generated:NAME:start -->`` and ``<!-- generated:NAME:end -->``
and is rewritten in place from the ledger (as fastpages does); everything outside the markers
is the author's. The sections are rendered from ``templates/readme/NAME.md.j2``.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

import jinja2

from .ledger import Ledger
from .project import CAPSTONE, Project, day_dir_name

__all__ = ["Badge", "ReadmeError", "SECTIONS", "badges", "render_sections", "replace_sections", "update_readme"]

SECTIONS = ("badges", "tracker", "log")
STATUS_TEXT = {"passed": "✅ passed", "failing": "❌ failing", "stale": "⚠️ stale", "not-started": "·"}


class ReadmeError(ValueError):
    """The README lacks (or garbles) the markers of a generated section."""


@dataclass(frozen=True)
class Badge:
    label: str
    message: str
    color: str
    link: str

    @property
    def url(self) -> str:
        # shields.io static badges: '-' and '_' are escaped by doubling, the rest is URL-quoted.
        def part(s: str) -> str:
            return urllib.parse.quote(s.replace("-", "--").replace("_", "__"), safe="")
        return f"https://img.shields.io/badge/{part(self.label)}-{part(self.message)}-{self.color}?style=flat-square"


def _progress_color(done: int, total: int) -> str:
    fraction = done / total
    return ("red" if done == 0 else "orange" if fraction < 1 / 3 else "yellow" if fraction < 2 / 3
            else "yellowgreen" if fraction < 1 else "brightgreen")


def current_module(ledger: Ledger) -> tuple[int, str]:
    """The module of the first day not yet passed (the last module once all have passed)."""
    for entry in ledger:
        if entry.status != "passed":
            return entry.module, entry.module_name
    last = ledger[max(ledger.days)]
    return last.module, last.module_name


def badges(ledger: Ledger, n_posts: int) -> list[Badge]:
    passed = ledger.with_status("passed")
    gated = [e for e in ledger.units() if e.status in ("passed", "failing", "stale")]  # the capstone's tests count too
    n_tests = sum(e.tests_passed for e in gated)
    n_red = sum(e.tests_failed for e in gated)
    module, name = current_module(ledger)
    total = len(ledger.days)
    return [
        Badge("Days Complete", f"{len(passed)}/{total}", _progress_color(len(passed), total), "#daily-log"),
        Badge("Current Module", f"{module}: {name}", "blue", "#progress"),
        Badge("Blog Posts", str(n_posts), "orange" if n_posts else "lightgrey", "site/"),
        Badge("Tests", f"{n_tests} passed" + (f", {n_red} failed" if n_red else ""),
              "red" if n_red else ("brightgreen" if n_tests else "lightgrey"), "#daily-log"),
    ]


def _bar(done: int, total: int, width: int = 10) -> str:
    filled = round(width * done / total) if total else 0
    return "█" * filled + "░" * (width - filled)


def _context(project: Project, ledger: Ledger, n_posts: int) -> dict:
    modules = []
    entries = list(ledger)
    # Modules in the order the days visit them (the seed puts RL, module 2, before interp, module 1).
    for (number, name), block in groupby(entries, key=lambda e: (e.module, e.module_name)):
        block = list(block)
        groups = []
        for group_name, days in groupby(block, key=lambda e: e.group):
            rows = []
            for e in days:
                # Links follow the ledger, not the working tree: a day folder that is still being
                # written (never gated) does not appear until `invoke publish` has gated it.
                exists = e.status != "not-started" and project.day_exists(e.day)
                post = project.day_dir(e.day) / "post.qmd"
                rows.append({
                    "day": e.day, "dir": day_dir_name(e.day), "topic": e.topic.replace("|", "\\|"),
                    "arena": e.arena, "arena_url": e.arena_url,
                    "status_text": STATUS_TEXT[e.status],
                    "tests_text": (f"{e.tests_passed}" + (f" / {e.tests_failed} failed" if e.tests_failed else "")
                                   if e.status != "not-started" else ""),
                    "folder": f"days/{day_dir_name(e.day)}/" if exists else None,
                    "post": f"days/{day_dir_name(e.day)}/post.qmd" if exists and post.exists() else None,
                })
            groups.append({"name": group_name, "days": rows, "total": len(rows),
                           "passed": sum(r["status_text"] == STATUS_TEXT["passed"] for r in rows),
                           "started": any(r["folder"] for r in rows)})
        passed = sum(e.status == "passed" for e in block)
        started = any(e.status != "not-started" for e in block)
        modules.append({
            "number": number, "name": name, "first": block[0].day, "last": block[-1].day,
            "groups": groups, "passed": passed, "total": len(block), "bar": _bar(passed, len(block)),
            "status": "Complete" if passed == len(block) else "In progress" if started else "Not started",
        })
    cap = ledger.capstone
    started = cap.status != "not-started" and project.unit_exists(CAPSTONE)
    capstone = {"title": cap.title, "status": cap.status, "status_text": STATUS_TEXT[cap.status],
                "tests_text": (f"{cap.tests_passed}" + (f" / {cap.tests_failed} failed" if cap.tests_failed else "")
                               if cap.status != "not-started" else ""),
                "folder": "capstone/" if started else None,
                "report": "capstone/report.qmd" if started and project.post_path(CAPSTONE).exists() else None}
    return {"modules": modules, "capstone": capstone, "badges": badges(ledger, n_posts)}


def render_sections(project: Project, ledger: Ledger, n_posts: int) -> dict[str, str]:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(project.templates_dir / "readme"),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    context = _context(project, ledger, n_posts)
    return {name: env.get_template(f"{name}.md.j2").render(**context).strip() + "\n" for name in SECTIONS}


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- generated:{name}:start -->", f"<!-- generated:{name}:end -->"


def replace_sections(text: str, sections: dict[str, str], source: str = "README.md") -> str:
    """Replace each section's body between its markers; a missing or doubled marker is an error."""
    for name, body in sections.items():
        start, end = _markers(name)
        if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
            raise ReadmeError(
                f"{source}: the generated section '{name}' needs exactly one '{start}' followed by "
                f"one '{end}' (found {text.count(start)} start and {text.count(end)} end markers)")
        pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
        text = pattern.sub(lambda _: f"{start}\n{body}{end}", text, count=1)
    return text


def update_readme(project: Project, ledger: Ledger, n_posts: int) -> bool:
    """Rewrite the README's generated sections; return False (and write nothing) if unchanged."""
    path: Path = project.readme_path
    if not path.exists():
        raise ReadmeError(f"{path} not found")
    old = path.read_text(encoding="utf-8")
    new = replace_sections(old, render_sections(project, ledger, n_posts), str(path))
    if new == old:
        return False
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(new, encoding="utf-8")
    tmp.replace(path)
    return True
