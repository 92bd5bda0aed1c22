"""``invoke new N``: a new day folder from ``templates/day/``, filled in from the ledger."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import jinja2

from .ledger import DayEntry, Ledger
from .project import Project, day_dir_name, parse_day, slugify

__all__ = ["DayExistsError", "module_name_for", "new_day"]


class DayExistsError(FileExistsError):
    """The day's folder already exists; scaffolding never overwrites a day."""


def module_name_for(entry: DayEntry) -> str:
    """The implementation's module name: the seed's file name without 'day_NNN_', else the topic.

    './01_backprop/day_001_tensors.py' -> 'tensors'; no seed path -> a slug of the topic.
    """
    if entry.seed_code_path:
        stem = Path(entry.seed_code_path).stem
        name = re.sub(r"^day_\d{3}_", "", stem)
    else:
        name = slugify(entry.topic, max_words=4).replace("-", "_")
    # Not an identifier, or the name of an installed package (day 10's seed file is wandb.py,
    # which would shadow wandb for a script run from the day's folder): prefix the day.
    if not name.isidentifier() or importlib.util.find_spec(name) is not None:
        name = f"day{entry.day:03d}_{name}"
    return name


def new_day(project: Project, ledger: Ledger, day) -> list[Path]:
    """Create days/NNN/ (implementation, gate, post, figures/); return the files written."""
    number = parse_day(day)
    entry = ledger[number]
    folder = project.day_dir(number)
    if folder.exists():
        raise DayExistsError(f"{folder.relative_to(project.root)} already exists; refusing to overwrite day {number}")
    module = module_name_for(entry)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(project.templates_dir / "day"),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    context = {**entry.to_yaml_dict(), "module": module, "dir": day_dir_name(number)}
    outputs = {
        "__init__.py": "__init__.py.j2",
        f"{module}.py": "implementation.py.j2",
        f"test_{module}.py": "test_implementation.py.j2",
        "post.qmd": "post.qmd.j2",
    }
    rendered = {name: env.get_template(template).render(**context) for name, template in outputs.items()}
    (folder / "figures").mkdir(parents=True)
    (project.days_dir / "__init__.py").touch(exist_ok=True)
    written = []
    for name, text in rendered.items():
        path = folder / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    (folder / "figures" / ".gitkeep").touch()
    return written
