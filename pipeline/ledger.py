"""The ledger, ``progress.yml``: the 100-day plan, the capstone, and each one's measured status.

Authored fields come from the syllabus (topic, module, group, ARENA section and link); measured
fields are written by ``invoke publish``, for each day and for the capstone alike. The file is read with validation (a clear error that
names every problem, never a silent reset) and written atomically (a temporary file in the same
directory, then a rename), so an interrupted write cannot leave half a ledger.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from datetime import date, datetime
from pathlib import Path
from typing import Iterable

import yaml

from .project import CAPSTONE, DAYS, UnitKey

__all__ = ["AUTHORED_FIELDS", "CapstoneEntry", "DayEntry", "Entry", "Ledger", "LedgerError", "MEASURED_FIELDS",
           "STATUSES", "dumps", "from_syllabus", "load", "parse", "save"]

SCHEMA = 1
STATUSES = ("not-started", "failing", "passed", "stale")
AUTHORED_FIELDS = ("topic", "module", "module_name", "group", "arena", "arena_url", "seed_code_path")
MEASURED_FIELDS = ("status", "first_passed", "last_check", "tests_passed", "tests_failed",
                   "tests_skipped", "gate_seconds", "fingerprint", "gate_strength")

# libyaml's C loader and dumper when present: 10× faster, same documents.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

HEADER = """\
# progress.yml: the ledger of the 100-day plan.
# Authored fields (topic, module, module_name, group, arena, arena_url, seed_code_path) come from
# the syllabus and may be edited by hand. Measured fields (status, first_passed, last_check,
# tests_passed, tests_failed, tests_skipped, gate_seconds, fingerprint) are written by
# `invoke publish` from the gate runs, and gate_strength by `invoke mutate`: do not edit them. The
# capstone has the same measured fields.
"""
CAPSTONE_TITLE = "The Alignment Researcher's Gauntlet"


class LedgerError(ValueError):
    """progress.yml is missing, not YAML, or does not describe the 100 days correctly."""


@dataclass(kw_only=True)
class Entry:
    """What the tooling measures for a unit (a day or the capstone)."""

    status: str = "not-started"
    first_passed: date | None = None
    last_check: datetime | None = None
    tests_passed: int = 0
    tests_failed: int = 0
    tests_skipped: int = 0
    gate_seconds: float | None = None
    fingerprint: str | None = None
    # `invoke mutate N`: single-line breaks of the exercises its gate caught, and the fingerprint measured on.
    gate_strength: dict | None = None

    def to_yaml_dict(self) -> dict:
        d = asdict(self)
        if d["gate_strength"] is None:
            del d["gate_strength"]  # most units were never mutated: keep the ledger short
        d["first_passed"] = self.first_passed.isoformat() if self.first_passed else None
        d["last_check"] = self.last_check.isoformat(timespec="seconds") if self.last_check else None
        return d


@dataclass(kw_only=True)
class DayEntry(Entry):
    day: int
    topic: str
    module: int
    module_name: str
    group: str
    arena: str | None = None
    arena_url: str | None = None
    seed_code_path: str | None = None

    @property
    def key(self) -> UnitKey:
        return self.day

    @property
    def title(self) -> str:
        return self.topic

    def to_yaml_dict(self) -> dict:
        d = super().to_yaml_dict()
        authored = {name: d.pop(name) for name in ("day",) + AUTHORED_FIELDS}
        return {**authored, **d}  # authored fields first, as in the syllabus


@dataclass(kw_only=True)
class CapstoneEntry(Entry):
    title: str = CAPSTONE_TITLE

    @property
    def key(self) -> UnitKey:
        return CAPSTONE

    def to_yaml_dict(self) -> dict:
        d = super().to_yaml_dict()
        return {"title": d.pop("title"), **d}


_FIELD_NAMES = tuple(f.name for f in fields(DayEntry))
_CAPSTONE_FIELDS = tuple(f.name for f in fields(CapstoneEntry))


@dataclass
class Ledger:
    days: dict[int, DayEntry]
    capstone: CapstoneEntry = field(default_factory=CapstoneEntry)

    def __getitem__(self, day: int) -> DayEntry:
        return self.days[day]

    def __iter__(self):
        """The days, in order (the capstone is separate: see units())."""
        return iter(self.days[d] for d in sorted(self.days))

    def with_status(self, *statuses: str) -> list[DayEntry]:
        """The days with one of these statuses (not the capstone)."""
        return [e for e in self if e.status in statuses]

    def entry(self, key: UnitKey) -> Entry:
        return self.capstone if key == CAPSTONE else self.days[key]

    def units(self) -> list[Entry]:
        """Every publishable unit: the days in order, then the capstone."""
        return [*self, self.capstone]


# ---------------------------------------------------------------- reading


def _check_measured(raw: dict, where: str, problems: list[str]) -> dict | None:
    """Validate the measured fields of a day or the capstone; return them parsed, or None."""
    before = len(problems)
    if raw.get("fingerprint") is not None and not isinstance(raw.get("fingerprint"), str):
        problems.append(f"{where}: 'fingerprint' must be a string or null, got {raw.get('fingerprint')!r}")
    status = raw.get("status", "not-started")
    if status not in STATUSES:
        problems.append(f"{where}: 'status' is {status!r}, not one of {', '.join(STATUSES)}")
    for name in ("tests_passed", "tests_failed", "tests_skipped"):
        value = raw.get(name, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            problems.append(f"{where}: '{name}' must be a non-negative integer, got {value!r}")
    seconds = raw.get("gate_seconds")
    if seconds is not None and (not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds < 0):
        problems.append(f"{where}: 'gate_seconds' must be a non-negative number or null, got {seconds!r}")
    first = _parse_time(raw.get("first_passed"), date, f"{where}: 'first_passed'", problems)
    last = _parse_time(raw.get("last_check"), datetime, f"{where}: 'last_check'", problems)
    if len(problems) > before:
        return None
    if status == "passed" and (first is None or raw.get("fingerprint") is None
                               or raw.get("tests_passed", 0) == 0 or raw.get("tests_failed", 0) != 0):
        problems.append(f"{where}: status 'passed' needs first_passed, a fingerprint, "
                        f"tests_passed > 0 and tests_failed = 0")
        return None
    strength = raw.get("gate_strength")
    if strength is not None:
        counts = ("caught", "total", "equivalent")
        ok = (isinstance(strength, dict)
              and {"caught", "total", "fingerprint"} <= set(strength) <= {*counts, "fingerprint"}
              and all(isinstance(strength[k], int) and not isinstance(strength[k], bool)
                      for k in counts if k in strength)
              and 0 <= strength["caught"] <= strength["caught"] + strength.get("equivalent", 0) <= strength["total"]
              and strength.get("equivalent", 0) >= 0 and isinstance(strength["fingerprint"], str))
        if not ok:
            problems.append(f"{where}: 'gate_strength' must be {{caught, total, fingerprint}} (and optionally "
                            f"equivalent) with 0 <= caught, 0 <= equivalent, caught + equivalent <= total, "
                            f"got {strength!r}")
            return None
    values = {k: raw[k] for k in MEASURED_FIELDS if k in raw}
    values.update(first_passed=first, last_check=last, gate_strength=strength)
    return values


def _unknown_fields(raw: dict, known: tuple[str, ...], where: str, problems: list[str]) -> None:
    unknown = sorted(set(raw) - set(known))
    if unknown:
        problems.append(f"{where}: unknown field(s) {', '.join(map(repr, unknown))} (known: {', '.join(known)})")


def _check_entry(raw, position: int, problems: list[str]) -> DayEntry | None:
    where = f"entry {position + 1}"
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a mapping of fields, got {type(raw).__name__}")
        return None
    day = raw.get("day")
    if not isinstance(day, int) or isinstance(day, bool) or day not in DAYS:
        problems.append(f"{where}: 'day' must be an integer from 1 to 100, got {day!r}")
        return None
    where = f"day {day}"
    before = len(problems)
    _unknown_fields(raw, _FIELD_NAMES, where, problems)
    for name in ("topic", "module_name", "group"):
        if not isinstance(raw.get(name), str) or not raw.get(name).strip():
            problems.append(f"{where}: '{name}' must be a non-empty string, got {raw.get(name)!r}")
    module = raw.get("module")
    if not isinstance(module, int) or isinstance(module, bool) or not 0 <= module <= 4:
        problems.append(f"{where}: 'module' must be an integer from 0 to 4, got {module!r}")
    for name in ("arena", "arena_url", "seed_code_path"):
        if raw.get(name) is not None and not isinstance(raw.get(name), str):
            problems.append(f"{where}: '{name}' must be a string or null, got {raw.get(name)!r}")
    measured = _check_measured(raw, where, problems)
    if measured is None or len(problems) > before:
        return None
    return DayEntry(**{k: raw[k] for k in ("day",) + AUTHORED_FIELDS if k in raw}, **measured)


def _check_capstone(raw, problems: list[str]) -> CapstoneEntry | None:
    if raw is None:
        return CapstoneEntry()  # a ledger from before the capstone existed: not started
    if not isinstance(raw, dict):
        problems.append(f"capstone: expected a mapping of fields, got {type(raw).__name__}")
        return None
    before = len(problems)
    _unknown_fields(raw, _CAPSTONE_FIELDS, "capstone", problems)
    if not isinstance(raw.get("title", CAPSTONE_TITLE), str):
        problems.append(f"capstone: 'title' must be a string, got {raw.get('title')!r}")
    measured = _check_measured(raw, "capstone", problems)
    if measured is None or len(problems) > before:
        return None
    return CapstoneEntry(title=raw.get("title", CAPSTONE_TITLE), **measured)


def _parse_time(value, kind, where: str, problems: list[str]):
    if value is None:
        return None
    if kind is date and isinstance(value, date) and not isinstance(value, datetime):
        return value
    if kind is datetime and isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return kind.fromisoformat(value)
        except ValueError:
            pass
    problems.append(f"{where} must be an ISO {'date' if kind is date else 'date-time'} or null, got {value!r}")
    return None


def parse(text: str, source: str = "progress.yml") -> Ledger:
    """Parse and validate ledger text; LedgerError lists every problem found."""
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise LedgerError(f"{source}: not valid YAML{at}: {problem}") from None
    if not isinstance(data, dict) or not isinstance(data.get("days"), list):
        raise LedgerError(f"{source}: expected a mapping with a 'days' list at the top level")
    if data.get("schema") != SCHEMA:
        raise LedgerError(f"{source}: 'schema' is {data.get('schema')!r}; this tooling reads schema {SCHEMA}")
    problems: list[str] = []
    days: dict[int, DayEntry] = {}
    for position, raw in enumerate(data["days"]):
        entry = _check_entry(raw, position, problems)
        if entry is None:
            continue
        if entry.day in days:
            problems.append(f"day {entry.day}: listed twice")
        days[entry.day] = entry
    absent = [d for d in DAYS if d not in days]
    if absent and not problems:
        problems.append(f"missing day(s): {_ranges(absent)} (the ledger holds all 100 days)")
    capstone = _check_capstone(data.get("capstone"), problems)
    unknown = sorted(set(data) - {"schema", "days", "capstone"})
    if unknown:
        problems.append(f"unknown top-level key(s) {', '.join(map(repr, unknown))} (known: schema, days, capstone)")
    if problems:
        shown = "\n  - ".join(problems[:12])
        more = f"\n  (and {len(problems) - 12} more)" if len(problems) > 12 else ""
        raise LedgerError(f"{source} is invalid; nothing was changed:\n  - {shown}{more}")
    return Ledger(days, capstone)


def _ranges(days: list[int]) -> str:
    """[1, 2, 3, 7] -> '1–3, 7'."""
    spans: list[str] = []
    start = prev = days[0]
    for day in days[1:] + [None]:
        if day is not None and day == prev + 1:
            prev = day
            continue
        spans.append(str(start) if start == prev else f"{start}–{prev}")
        start = prev = day
    return ", ".join(spans)


def load(path: Path) -> Ledger:
    path = Path(path)
    if not path.exists():
        raise LedgerError(f"{path} not found: the ledger is committed with the project; restore it with "
                          f"`git checkout -- {path.name}`, or rebuild the plan (without measurements) "
                          f"with `invoke ledger` from templates/syllabus.yml")
    return parse(path.read_text(encoding="utf-8"), str(path))


# ---------------------------------------------------------------- writing


def dumps(ledger: Ledger) -> str:
    body = {"schema": SCHEMA, "days": [entry.to_yaml_dict() for entry in ledger],
            "capstone": ledger.capstone.to_yaml_dict()}
    return HEADER + yaml.dump(body, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)


def save(ledger: Ledger, path: Path) -> bool:
    """Write atomically; return False (and touch nothing) when the content is unchanged."""
    path = Path(path)
    text = dumps(ledger)
    parse(text, str(path))  # never write what we could not read back
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file 0600: keep the ledger's own mode (a new one gets 0666 minus umask).
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def from_syllabus(entries: Iterable[dict], previous: Ledger | None = None) -> Ledger:
    """Build the ledger from syllabus entries, keeping the measured fields of ``previous``."""
    days: dict[int, DayEntry] = {}
    for raw in entries:
        authored = {k: raw.get(k) for k in ("day",) + AUTHORED_FIELDS}
        entry = DayEntry(**authored)
        if previous is not None and entry.day in previous.days:
            old = previous[entry.day]
            for name in MEASURED_FIELDS:
                setattr(entry, name, getattr(old, name))
        days[entry.day] = entry
    ledger = Ledger(days, previous.capstone if previous is not None else CapstoneEntry())
    parse(dumps(ledger), "syllabus")  # the same validation as a ledger read from disk
    return ledger
