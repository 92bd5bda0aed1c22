"""``invoke publish``: gate what changed, update the ledger and README, stage and render the blog.

The steps run in a fixed order and stop with a clear message at the first pipeline failure
(a red day is not a pipeline failure: it is recorded and left out of the blog):

1. plan: fingerprint every started day and decide which need a gate (changed, never gated,
   no cached result to build the Verified box from, or all of them with ``--all``);
2. gate those days, in parallel where cores allow, each ``pytest days/NNN`` in its own process;
3. update ``progress.yml`` (atomically, and only if something changed);
4. stage the posts of passing days in memory (all placeholders resolved), then rewrite the
   README's generated sections, then sync ``site/posts/`` to exactly those posts;
5. render the site (skipped when its inputs are unchanged; a failed render keeps the old site);
6. return a summary for the caller to print.

A day is published only when its ledger status is ``passed`` and its cached gate result was run
on the fingerprint its files have now: a failing or stale day never reaches the blog.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Callable

from . import ledger as ledger_io
from .fingerprint import day_fingerprint
from .gate import GateResult, load_cached, run_gate, save_cached
from .ledger import DayEntry, Ledger
from .project import Project, parse_day
from .readme import update_readme
from .render import choose_engine, render_site
from .stage import StagedPost, stage_post, sync_staged

__all__ = ["DayPlan", "PublishOptions", "PublishSummary", "live_status", "plan", "publish"]


NO_CACHE = "no cached gate result"


@dataclass
class PublishOptions:
    all: bool = False                  # gate every started day, changed or not
    only: list[int] | None = None      # gate only these days (others that changed become stale)
    engine: str = "auto"               # auto | quarto | pandoc
    render: bool = True
    jobs: int = max(1, (os.cpu_count() or 1) // 2)
    timeout: float = 900


@dataclass
class DayPlan:
    day: int
    exists: bool
    fingerprint: str | None
    reason: str | None                 # why it needs a gate; None if it does not


@dataclass
class PublishSummary:
    gated: list[GateResult] = field(default_factory=list)
    published: list[int] = field(default_factory=list)
    ledger_written: bool = False
    readme_written: bool = False
    staged_changed: bool = False
    rendered: bool = False
    engine: str | None = None
    seconds: float = 0.0


def plan(project: Project, ledger: Ledger, *, gate_all: bool = False) -> list[DayPlan]:
    """Decide, for every day, whether it must be gated and why."""
    plans = []
    for entry in ledger:
        if not project.day_exists(entry.day):
            plans.append(DayPlan(entry.day, False, None, None))
            continue
        fp = day_fingerprint(project, entry.day)
        cached = load_cached(project, entry.day)
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
        plans.append(DayPlan(entry.day, True, fp, reason))
    return plans


def _apply(entry: DayEntry, result: GateResult) -> None:
    entry.status = "passed" if result.passed else "failing"
    entry.tests_passed, entry.tests_failed, entry.tests_skipped = result.n_passed, result.n_failed, result.n_skipped
    entry.gate_seconds = result.wall_seconds
    entry.fingerprint = result.fingerprint
    checked = datetime.fromisoformat(result.checked_at)
    entry.last_check = checked
    if result.passed and entry.first_passed is None:
        entry.first_passed = checked.astimezone().date()


def _reset(entry: DayEntry) -> None:
    """A day whose folder is gone is not started (the date it first passed stays on record)."""
    entry.status = "not-started"
    entry.tests_passed = entry.tests_failed = entry.tests_skipped = 0
    entry.gate_seconds = entry.fingerprint = entry.last_check = None


def live_status(entry: DayEntry, day_plan: DayPlan) -> str:
    """The status the ledger would hold now, without gating: a changed passed day is stale."""
    if not day_plan.exists:
        return "not-started"
    if entry.status == "passed" and day_plan.fingerprint != entry.fingerprint:
        return "stale"
    return entry.status


class Reporter:
    """Progress callbacks; the default prints nothing (tasks.py supplies a rich one)."""

    def step(self, message: str) -> None: ...
    def gates_started(self, days: list[tuple[int, str]]) -> None: ...
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
    # A passed day without a cached result is always re-gated: its post needs the Verified box.
    todo = [p for p in plans if p.reason and (only is None or p.day in only or p.reason == NO_CACHE)]
    for p in plans:
        entry = ledger[p.day]
        if not p.exists:
            if entry.status != "not-started":
                _reset(entry)
        elif p.reason and p not in todo and entry.status == "passed" and p.fingerprint != entry.fingerprint:
            entry.status = "stale"

    # 2. gate
    reporter.gates_started([(p.day, p.reason) for p in todo])
    if todo:
        with ThreadPoolExecutor(max_workers=max(1, options.jobs)) as pool:
            futures = {pool.submit(gate, project, p.day, p.fingerprint, timeout=options.timeout): p for p in todo}
            for future in as_completed(futures):
                result = future.result()
                save_cached(project, result)
                _apply(ledger[result.day], result)
                summary.gated.append(result)
                reporter.gate_finished(result)
    summary.gated.sort(key=lambda r: r.day)

    # 3. ledger
    summary.ledger_written = ledger_io.save(ledger, project.ledger_path)

    # 4. stage (in memory first), README, then sync site/posts
    reporter.step("staging posts")
    current = {p.day: p.fingerprint for p in plans}
    staged: list[StagedPost] = []
    for entry in ledger.with_status("passed"):
        cached = load_cached(project, entry.day)
        if cached is None or cached.fingerprint != entry.fingerprint or current.get(entry.day) != entry.fingerprint:
            continue  # never publish what was not gated on the files as they are now
        staged.append(stage_post(project, entry, cached, entry.first_passed or date.today()))
    summary.published = [p.day for p in staged]
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


def days_arg(text: str | None) -> list[int] | None:
    """'1,2,5-7' -> [1, 2, 5, 6, 7] (each checked to be a day number)."""
    if not text:
        return None
    days: list[int] = []
    for part in str(text).split(","):
        if "-" in part.strip()[1:]:
            lo, hi = part.split("-", 1)
            days.extend(range(parse_day(lo), parse_day(hi) + 1))
        else:
            days.append(parse_day(part))
    return sorted(set(days))

