"""Where things live in a checkout, and the names derived from a day's number and topic.

The tooling publishes *units*: the 100 days (keyed by their number) and the capstone (keyed by
the string ``"capstone"``). Each unit is a folder with a gate (its tests), a post and, usually,
an experiment: ``days/NNN/post.qmd`` for a day, ``capstone/report.qmd`` for the capstone.
"""

from __future__ import annotations

import ast
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Union

__all__ = ["CAPSTONE", "DAYS", "DayNumberError", "Project", "UnitKey", "day_dir_name", "parse_day",
           "parse_unit", "slugify", "unit_label", "unit_name"]

DAYS = range(1, 101)
CAPSTONE = "capstone"
UnitKey = Union[int, str]  # a day number, or CAPSTONE


class DayNumberError(ValueError):
    """A day number that is not an integer in 1..100 (or, where allowed, 'capstone')."""


def parse_day(value) -> int:
    """Parse '7', '007', 7 into 7; anything else (0, 101, 'seven', 7.5) is a DayNumberError."""
    if isinstance(value, bool):
        raise DayNumberError(f"day must be a number from 1 to 100, got {value!r}")
    if isinstance(value, int):
        day = value
    elif isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
        day = int(value)
    else:
        raise DayNumberError(f"day must be a number from 1 to 100, got {value!r}")
    if day not in DAYS:
        raise DayNumberError(f"day {day} is out of range: the challenge has days 1 to 100")
    return day


def parse_unit(value) -> UnitKey:
    """A day number (as parse_day) or 'capstone'."""
    if isinstance(value, str) and value.strip().lower() == CAPSTONE:
        return CAPSTONE
    try:
        return parse_day(value)
    except DayNumberError as exc:
        raise DayNumberError(f"{exc} (or 'capstone')") from None


def day_dir_name(day: int) -> str:
    return f"{day:03d}"


def unit_name(key: UnitKey) -> str:
    """'007' for day 7, 'capstone' for the capstone: file names (gate cache) use it."""
    return CAPSTONE if key == CAPSTONE else day_dir_name(key)


def unit_label(key: UnitKey) -> str:
    """'day 007' or 'capstone', for messages."""
    return CAPSTONE if key == CAPSTONE else f"day {day_dir_name(key)}"


def slugify(text: str, max_words: int = 8) -> str:
    """'Triangle Meshes + Full Render Pipeline' -> 'triangle-meshes-full-render-pipeline'."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    words = re.findall(r"[a-z0-9]+", ascii_text.lower())
    return "-".join(words[:max_words])


@dataclass(frozen=True)
class Project:
    """A checkout of the project: every path the tooling reads or writes."""

    root: Path

    @classmethod
    def at(cls, root: str | Path) -> "Project":
        return cls(Path(root).resolve())

    @property
    def ledger_path(self) -> Path:
        return self.root / "progress.yml"

    @property
    def syllabus_path(self) -> Path:
        """The 100-day plan the ledger's authored fields come from (`invoke ledger` reads it)."""
        return self.templates_dir / "syllabus.yml"

    @property
    def readme_path(self) -> Path:
        return self.root / "README.md"

    @property
    def days_dir(self) -> Path:
        return self.root / "days"

    @property
    def capstone_dir(self) -> Path:
        return self.root / CAPSTONE

    @property
    def site_dir(self) -> Path:
        return self.root / "site"

    @property
    def staged_posts_dir(self) -> Path:
        return self.site_dir / "posts"

    @property
    def templates_dir(self) -> Path:
        return self.root / "templates"

    @property
    def gate_cache_dir(self) -> Path:
        """The last gate report of each unit (a cache: not committed, rebuilt by gating)."""
        return self.root / ".gate"

    def day_dir(self, day: int) -> Path:
        return self.days_dir / day_dir_name(day)

    def unit_dir(self, key: UnitKey) -> Path:
        return self.capstone_dir if key == CAPSTONE else self.day_dir(key)

    def unit_rel(self, key: UnitKey) -> str:
        """The unit's folder relative to the root, as pytest is given it: 'days/007' or 'capstone'."""
        return CAPSTONE if key == CAPSTONE else f"days/{day_dir_name(key)}"

    def post_path(self, key: UnitKey) -> Path:
        return self.unit_dir(key) / ("report.qmd" if key == CAPSTONE else "post.qmd")

    def experiment_module(self, key: UnitKey) -> str:
        """The importable name of the unit's module that defines ``run_experiment``."""
        folder = self.unit_dir(key)
        found = [path.stem for path in sorted(folder.glob("*.py"))
                 if not path.name.startswith("test_") and path.name != "__init__.py"
                 and any(isinstance(node, ast.FunctionDef) and node.name == "run_experiment"
                         for node in ast.parse(path.read_text(encoding="utf-8")).body)]
        if len(found) != 1:
            raise LookupError(f"{self.unit_rel(key)} needs exactly one module defining run_experiment, "
                              f"found {found or 'none'}")
        return f"{self.unit_rel(key).replace('/', '.')}.{found[0]}"

    def day_exists(self, day: int) -> bool:
        """A day is started once its folder exists (``invoke new`` creates it)."""
        return self.day_dir(day).is_dir()

    def unit_exists(self, key: UnitKey) -> bool:
        """The capstone exists once its folder holds a test file; a day once its folder exists."""
        if key == CAPSTONE:
            return self.capstone_dir.is_dir() and any(self.capstone_dir.glob("test_*.py"))
        return self.day_exists(key)
