"""Fixtures for the tooling tests: a throwaway copy of the project with small, real days.

The copy holds the real tooling (tasks.py, pipeline/, checks/, templates/, site/, pyproject.toml,
the root conftest) and a fresh ledger. Its days are tiny but real: each has an implementation,
a pytest gate that really runs in a subprocess, a post with placeholders, a figure and a
results.json, so publishing them exercises the whole pipeline in seconds.
"""

from __future__ import annotations

import shutil
import textwrap
from datetime import date
from pathlib import Path

import pytest
from PIL import Image

from pipeline import ledger as ledger_io
from pipeline.project import Project, day_dir_name

REPO = Path(__file__).resolve().parents[2]
COPIED = ["tasks.py", "conftest.py", "pyproject.toml", "README.md", "pipeline", "checks", "templates", "site"]
IGNORE = shutil.ignore_patterns("__pycache__", "_site", "_site.*", ".quarto", "day-*", "tests")


def fresh_ledger_text() -> str:
    """The committed ledger with every measured field reset: the plan, nothing done."""
    ledger = ledger_io.load(REPO / "progress.yml")
    for entry in ledger.units():
        entry.status, entry.first_passed, entry.last_check = "not-started", None, None
        entry.tests_passed = entry.tests_failed = entry.tests_skipped = 0
        entry.gate_seconds = entry.fingerprint = entry.gate_strength = None
    return ledger_io.dumps(ledger)


class ToyProject:
    """A copy of the project in tmp_path, with helpers to write and break small days."""

    def __init__(self, root: Path):
        self.root = root
        self.project = Project.at(root)
        root.mkdir(parents=True)
        for name in COPIED:
            source = REPO / name
            if source.is_dir():
                shutil.copytree(source, root / name, ignore=IGNORE)
            else:
                shutil.copy(source, root / name)
        (root / "progress.yml").write_text(fresh_ledger_text())
        (root / "days").mkdir()
        (root / "days" / "__init__.py").write_text("")

    def day_dir(self, day: int) -> Path:
        return self.root / "days" / day_dir_name(day)

    def write_day(self, day: int, *, failing: bool = False, extra_tests: str = "", post_body: str | None = None,
                  results: str = '{"headline": {"value": 0.123456, "runs": [1, 2, 3]}}') -> Path:
        folder = self.day_dir(day)
        (folder / "figures").mkdir(parents=True, exist_ok=True)
        (folder / "__init__.py").write_text(f'"""Toy day {day}."""\n')
        (folder / "toy.py").write_text(textwrap.dedent('''\
            """A toy implementation."""


            def add(a, b):
                """Return a + b."""
                return a + b


            class Box:
                def area(self, w, h):
                    return w * h
            '''))
        expected = 5 if failing else 4
        (folder / "test_toy.py").write_text(textwrap.dedent(f'''\
            from . import toy


            def test_add(measure):
                """add(2, 2) is four, checked against the built-in sum."""
                measure("sum", toy.add(2, 2), "= 4")
                assert toy.add(2, 2) == {expected}


            def test_area():
                """A 2×3 box has area 6."""
                assert toy.Box().area(2, 3) == 6
            ''') + textwrap.dedent(extra_tests))
        (folder / "results.json").write_text(results)
        Image.new("RGB", (40, 30), (30 * day % 255, 90, 160)).save(folder / "figures" / "plot.png")
        body = post_body if post_body is not None else textwrap.dedent(f'''\
            ## Derive

            The sum is $a + b$, and $$\\sum_{{i=1}}^n i = \\frac{{n(n+1)}}{{2}}.$$

            {{{{< code toy.py add >}}}}

            The gate measured {{{{< measured sum >}}}}; the experiment gave {{{{< result headline.value fmt=.3f >}}}}.

            ![A toy figure.](figures/plot.png){{#fig-plot}}

            See @fig-plot.

            {{{{< verified >}}}}
            ''')
        (folder / "post.qmd").write_text(textwrap.dedent(f'''\
            ---
            title: "Toy day {day}"
            description: "The toy post of day {day}."
            categories: [toys]
            ---

            ''') + body)
        return folder

    def write_files(self, day: int, files: dict[str, str]) -> Path:
        """A day made of exactly these files (and an empty __init__.py)."""
        folder = self.day_dir(day)
        folder.mkdir(parents=True)
        for name, text in {"__init__.py": "", **files}.items():
            (folder / name).write_text(text)
        return folder

    def write_capstone(self, *, failing: bool = False) -> Path:
        """A toy capstone: one test file, a report citing a measured number, a result and a figure."""
        folder = self.root / "capstone"
        (folder / "figures").mkdir(parents=True, exist_ok=True)
        (folder / "__init__.py").write_text('"""Toy capstone."""\n')
        (folder / "test_gauntlet.py").write_text(textwrap.dedent(f'''\
            def test_rank_nullity(measure):
                """50257 - 768 is the null-space dimension."""
                measure("nullity", 50257 - 768, "= 49489")
                assert 50257 - 768 == {49490 if failing else 49489}
            '''))
        (folder / "results.json").write_text('{"part1a": {"energy": 0.4321}}')
        Image.new("RGB", (40, 30), (200, 90, 60)).save(folder / "figures" / "svd.png")
        (folder / "report.qmd").write_text(textwrap.dedent('''\
            ---
            title: "The Gauntlet"
            description: "A toy capstone report."
            categories: [proofs]
            ---

            ## Part 1

            The null space has dimension {{< measured nullity >}}; energy {{< result part1a.energy fmt=.2f >}}.

            ![Singular values.](figures/svd.png){#fig-svd}

            {{< verified >}}
            '''))
        return folder

    def snapshot(self) -> dict[str, tuple[bytes, int]]:
        """Every file's bytes and mtime (ns), except the gate cache's temporary files."""
        return {str(p.relative_to(self.root)): (p.read_bytes(), p.stat().st_mtime_ns)
                for p in sorted(self.root.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}

    def ledger(self):
        return ledger_io.load(self.root / "progress.yml")


@pytest.fixture
def toy(tmp_path, monkeypatch) -> ToyProject:
    monkeypatch.delenv("CI", raising=False)
    # Toy days import nothing heavy: a warm gate server need not spend 10 s importing torch
    # (tests/test_gate_server.py checks the real list on a real day).
    monkeypatch.setenv("ARENA_GATE_PREIMPORT", "beartype,pytest")
    return ToyProject(tmp_path / "project")


@pytest.fixture
def today() -> date:
    return date.today()
