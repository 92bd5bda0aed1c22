"""Where things live in a checkout, and the names derived from a day's number and topic."""

from __future__ import annotations

import ast
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DAYS", "DayNumberError", "Project", "day_dir_name", "parse_day", "slugify"]

DAYS = range(1, 101)


class DayNumberError(ValueError):
    """A day number that is not an integer in 1..100."""


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


def day_dir_name(day: int) -> str:
    return f"{day:03d}"


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
    def readme_path(self) -> Path:
        return self.root / "README.md"

    @property
    def days_dir(self) -> Path:
        return self.root / "days"

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
        """The last gate report of each day (a cache: not committed, rebuilt by gating)."""
        return self.root / ".gate"

    def day_dir(self, day: int) -> Path:
        return self.days_dir / day_dir_name(day)

    def experiment_module(self, day: int) -> str:
        """The importable name of the day's module that defines ``run_experiment``."""
        found = [path.stem for path in sorted(self.day_dir(day).glob("*.py"))
                 if not path.name.startswith("test_") and path.name != "__init__.py"
                 and any(isinstance(node, ast.FunctionDef) and node.name == "run_experiment"
                         for node in ast.parse(path.read_text(encoding="utf-8")).body)]
        if len(found) != 1:
            raise LookupError(f"days/{day_dir_name(day)} needs exactly one module defining run_experiment, "
                              f"found {found or 'none'}")
        return f"days.{day_dir_name(day)}.{found[0]}"

    def day_exists(self, day: int) -> bool:
        """A day is started once its folder exists (``invoke new`` creates it)."""
        return self.day_dir(day).is_dir()
