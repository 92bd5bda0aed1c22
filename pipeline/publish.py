"""``invoke publish``: gate what changed, update the ledger and README, stage and render the blog.

The steps run in a fixed order and stop with a clear message at the first pipeline failure
(a red day is not a pipeline failure: it is recorded and left out of the blog):

1. plan: fingerprint every started unit (the days and the capstone) and decide which need a gate
   (changed, never gated, no cached result to build the Verified box from, or all with ``--all``);
2. gate those units, in parallel where cores allow, each ``pytest days/NNN`` (``pytest capstone``)
   in its own process;
3. update ``progress.yml`` (atomically, and only if something changed);
4. stage the posts of passing units in memory (all placeholders resolved), then rewrite the
   README's generated sections, then sync ``site/posts/`` to exactly those posts;
5. render the site (skipped when its inputs are unchanged; a failed render keeps the old site);
6. return a summary for the caller to print.

A unit is published only when its ledger status is ``passed`` and its cached gate result was run
on the fingerprint its files have now: a failing or stale day (or capstone) never reaches the blog.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Callable

from . import ledger as ledger_io
from .fingerprint import unit_fingerprint
from .gate import GateResult, load_cached, run_gate, save_cached
from .ledger import Entry, Ledger
from .project import CAPSTONE, DayNumberError, Project, UnitKey, parse_unit
from .readme import update_readme
from .render import choose_engine, render_site
from .stage import StagedPost, stage_post, sync_staged

__all__ = ["UnitPlan", "PublishOptions", "PublishSummary", "live_status", "plan", "publish"]


NO_CACHE = "no cached gate result"


@dataclass
class PublishOptions:
    all: bool = False                  # gate every started day, changed or not
    only: list[UnitKey] | None = None  # gate only these units (others that changed become stale)
    engine: str = "auto"               # auto | quarto | pandoc
    render: bool = True
    jobs: int = max(1, (os.cpu_count() or 1) // 2)
    timeout: float = 900


@dataclass
class UnitPlan:
    unit: UnitKey                      # a day number, or "capstone"
    exists: bool
    fingerprint: str | None
    reason: str | None                 # why it needs a gate; None if it does not


@dataclass
class PublishSummary:
    gated: list[GateResult] = field(default_factory=list)
    published: list[UnitKey] = field(default_factory=list)
    ledger_written: bool = False
    readme_written: bool = False
    staged_changed: bool = False
    rendered: bool = False
    engine: str | None = None
    seconds: float = 0.0


def plan(project: Project, ledger: Ledger, *, gate_all: bool = False) -> list[UnitPlan]:
    """Decide, for every unit (each day, then the capstone), whether it must be gated and why."""
    plans = []
    for entry in ledger.units():
        key = entry.key
        if not project.unit_exists(key):
            plans.append(UnitPlan(key, False, None, None))
            continue
        fp = unit_fingerprint(project, key)
        cached = load_cached(project, key)
        if gate_all:
            reason = "--all"
        elif entry.status == "not-started" or entry.fingerprint is None:
            reason = "never gated"
        elif fp != entry.fingerprint:
            reason = "files changed"
        elif entry.status == "passed" and (cached is None or cached.fingerprint != fp):
            reason = NO_CACHE
        elif entry.status == "stale":
            reason = "stale"
        else:
            reason = None
        plans.append(UnitPlan(key, True, fp, reason))
    return plans


def _apply(entry: Entry, result: GateResult) -> None:
    entry.status = "passed" if result.passed else "failing"
    entry.tests_passed, entry.tests_failed, entry.tests_skipped = result.n_passed, result.n_failed, result.n_skipped
    entry.gate_seconds = result.wall_seconds
    entry.fingerprint = result.fingerprint
    checked = datetime.fromisoformat(result.checked_at)
    entry.last_check = checked
    if result.passed and entry.first_passed is None:
        entry.first_passed = checked.astimezone().date()


def _reset(entry: Entry) -> None:
    """A unit whose folder is gone is not started (the date it first passed stays on record)."""
    entry.status = "not-started"
    entry.tests_passed = entry.tests_failed = entry.tests_skipped = 0
    entry.gate_seconds = entry.fingerprint = entry.last_check = None


def live_status(entry: Entry, unit_plan: UnitPlan) -> str:
    """The status the ledger would hold now, without gating: a changed passed day is stale."""
    if not unit_plan.exists:
        return "not-started"
    if entry.status == "passed" and unit_plan.fingerprint != entry.fingerprint:
        return "stale"
    return entry.status


class Reporter:
    """Progress callbacks; the default prints nothing (tasks.py supplies a rich one)."""

    def step(self, message: str) -> None: ...
    def gates_started(self, units: list[tuple[UnitKey, str]]) -> None: ...
    def gate_finished(self, result: GateResult) -> None: ...


def publish(project: Project, options: PublishOptions | None = None, reporter: Reporter | None = None,
            gate: Callable[..., GateResult] = run_gate) -> PublishSummary:
    options = options or PublishOptions()
    reporter = reporter or Reporter()
    start = time.perf_counter()
    summary = PublishSummary()

    ledger = ledger_io.load(project.ledger_path)          # a broken ledger stops everything here
    plans = plan(project, ledger, gate_all=options.all)
    only = set(options.only) if options.only else None
    # A passed unit without a cached result is always re-gated: its post needs the Verified box.
    todo = [p for p in plans if p.reason and (only is None or p.unit in only or p.reason == NO_CACHE)]
    for p in plans:
        entry = ledger.entry(p.unit)
        if not p.exists:
            if entry.status != "not-started":
                _reset(entry)
        elif p.reason and p not in todo and entry.status == "passed" and p.fingerprint != entry.fingerprint:
            entry.status = "stale"

    # 2. gate
    reporter.gates_started([(p.unit, p.reason) for p in todo])
    if todo:
        with ThreadPoolExecutor(max_workers=max(1, options.jobs)) as pool:
            futures = {pool.submit(gate, project, p.unit, p.fingerprint, timeout=options.timeout): p for p in todo}
            for future in as_completed(futures):
                result = future.result()
                save_cached(project, result)
                _apply(ledger.entry(result.unit), result)
                summary.gated.append(result)
                reporter.gate_finished(result)
    summary.gated.sort(key=_order)

    # 3. ledger
    summary.ledger_written = ledger_io.save(ledger, project.ledger_path)

    # 4. stage (in memory first), README, then sync site/posts
    reporter.step("staging posts")
    current = {p.unit: p.fingerprint for p in plans}
    staged: list[StagedPost] = []
    for entry in ledger.units():
        if entry.status != "passed":
            continue
        cached = load_cached(project, entry.key)
        if cached is None or cached.fingerprint != entry.fingerprint or current.get(entry.key) != entry.fingerprint:
            continue  # never publish what was not gated on the files as they are now
        staged.append(stage_post(project, entry, cached, entry.first_passed or date.today()))
    summary.published = [p.unit for p in staged]
    summary.readme_written = update_readme(project, ledger, n_posts=len(staged))
    summary.staged_changed = sync_staged(project, staged)

    # 5. render
    if options.render:
        engine = choose_engine(options.engine)
        summary.engine = engine.name
        reporter.step(f"rendering with {engine.name}")
        summary.rendered = render_site(project, engine)
    summary.seconds = time.perf_counter() - start
    return summary


def _order(result: GateResult) -> tuple:
    """Days in order, then the capstone."""
    return (result.unit == CAPSTONE, result.unit if result.unit != CAPSTONE else 0)


def days_arg(text: str | None) -> list[UnitKey] | None:
    """'1,2,5-7,capstone' -> [1, 2, 5, 6, 7, 'capstone'] (each checked to be a day number)."""
    if not text:
        return None
    units: list[UnitKey] = []
    for part in str(text).split(","):
        if "-" in part.strip()[1:]:
            lo, hi = part.split("-", 1)
            units.extend(range(parse_unit_day(lo), parse_unit_day(hi) + 1))
        else:
            units.append(parse_unit(part))
    days = sorted({u for u in units if u != CAPSTONE})
    return days + ([CAPSTONE] if CAPSTONE in units else [])


def parse_unit_day(value: str) -> int:
    key = parse_unit(value)
    if key == CAPSTONE:
        raise DayNumberError("a range of days cannot include the capstone")
    return key
