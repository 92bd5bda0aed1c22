"""``invoke publish``: gate what changed, update the ledger and README, stage and render the blog.

The steps run in a fixed order and stop with a clear message at the first pipeline failure
(a red day is not a pipeline failure: it is recorded and left out of the blog):

1. plan: fingerprint every started unit (the days and the capstone) and decide which need a gate
   (changed, never gated, no cached result to build the Verified box from, or all with ``--all``);
2. gate those units, in parallel where cores allow, each ``pytest days/NNN`` (``pytest capstone``)
   in its own process; when a worker has more than one gate to run, its gates are forked from a
   warm ``pipeline.gate_server`` that imported the heavy libraries once (pipeline/gate.py);
3. update ``progress.yml`` (atomically, and only if something changed);
4. stage the posts of passing units in memory (all placeholders resolved), then rewrite the
   README's generated sections, then sync ``site/posts/`` to exactly those posts;
5. render the site (skipped when its inputs are unchanged; a failed render keeps the old site);
6. return a summary for the caller to print.

A unit is published only when its ledger status is ``passed`` and its cached gate result was run
on the fingerprint its files have now: a failing or stale day (or capstone) never reaches the blog.

Options are checked before any gate runs. SIGINT (Ctrl-C) and SIGTERM stop a publish within
about two seconds: every running gate's process group is ended, no new gate starts, temporary
folders are removed, and the results of the gates that finished are kept in the ledger. One
publish runs at a time (``.gate/publish.lock``); the next one cleans up after a killed one.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Callable, Iterator

from . import ledger as ledger_io
from .fingerprint import unit_fingerprint
from .gate import GateProcesses, GateResult, GateServers, clean_leftovers, load_cached, pid_alive, run_gate, save_cached
from .ledger import Entry, Ledger
from .project import CAPSTONE, DayNumberError, Project, UnitKey, parse_unit
from .readme import update_readme
from .render import ENGINES, choose_engine, render_site
from .stage import StagedPost, canonical_categories, post_slug, stage_post, sync_staged

__all__ = ["OptionError", "PublishInterrupted", "PublishLocked", "PublishOptions", "PublishSummary", "UnitPlan",
           "days_arg", "jobs_arg", "live_status", "plan", "publish"]


NO_CACHE = "no cached gate result"
NEW = "new"   # a scaffolded day that was never gated (a status shown, never stored)


class OptionError(ValueError):
    """A publish option is wrong: reported before anything runs."""


class PublishLocked(RuntimeError):
    """Another publish is running in this checkout."""


class PublishInterrupted(Exception):
    """SIGINT or SIGTERM stopped the publish; ``kept`` are the units whose gates had finished."""

    def __init__(self, signum: int, kept: list[UnitKey], not_gated: list[UnitKey], cleaned: list[str]):
        self.signum, self.kept, self.not_gated, self.cleaned = signum, kept, not_gated, cleaned
        super().__init__(f"stopped by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


@dataclass
class PublishOptions:
    all: bool = False                  # gate every started day, changed or not
    only: list[UnitKey] | None = None  # gate only these units (others that changed become stale)
    engine: str = "auto"               # auto | quarto | pandoc
    render: bool = True
    # Gates run one torch thread each (conftest.py), so one gate per core keeps every core busy.
    jobs: int = max(1, os.cpu_count() or 1)
    timeout: float = 900

    def validate(self) -> None:
        """Every option checked before any gate runs (a bad engine is not found after 10 minutes)."""
        if self.engine not in ENGINES:
            raise OptionError(f"--engine {self.engine!r}: use one of {', '.join(ENGINES)}")
        if not isinstance(self.jobs, int) or isinstance(self.jobs, bool) or self.jobs < 1:
            raise OptionError(f"--jobs {self.jobs!r}: a whole number of gates to run at once, at least 1")
        if self.render:
            choose_engine(self.engine)  # quarto asked for but not installed: say so now


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
    failing: list[UnitKey] = field(default_factory=list)   # every unit the ledger records as failing
    planned: list[UnitKey] = field(default_factory=list)   # the units this publish set out to gate
    import_seconds: list[float] = field(default_factory=list)  # each warm gate server's one-time imports
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


def _confirms(entry: Entry, result: GateResult) -> bool:
    """The gate found what the ledger records: same files, same verdict, same counts."""
    return (entry.fingerprint == result.fingerprint and entry.status == ("passed" if result.passed else "failing")
            and (entry.tests_passed, entry.tests_failed, entry.tests_skipped)
            == (result.n_passed, result.n_failed, result.n_skipped))


def _apply(entry: Entry, result: GateResult, reason: str | None = None) -> None:
    """Record a gate result. A gate run only because this checkout had no cached result (a fresh
    clone) that confirms the ledger changes nothing: the committed ledger stays as it is."""
    if reason == NO_CACHE and _confirms(entry, result):
        return
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
    """The status the ledger would hold now, without gating: a changed passed day is stale, and
    a scaffolded day that was never gated is new."""
    if not unit_plan.exists:
        return "not-started"
    if entry.status == "not-started":
        return NEW
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
    options.validate()
    reporter = reporter or Reporter()
    processes = GateProcesses()
    summary = PublishSummary()
    with _publish_lock(project) as cleaned:
        if cleaned:
            reporter.step(f"cleaned up after an interrupted publish: {', '.join(cleaned)}")
        try:
            with _stop_on_signals(processes):
                return _publish(project, options, reporter, gate, processes, summary)
        except _Stop as stop:
            kept = sorted((r.unit for r in summary.gated), key=_unit_order)
            raise PublishInterrupted(stop.signum, kept, [u for u in summary.planned if u not in kept],
                                     clean_leftovers(project)) from None


def _publish(project: Project, options: PublishOptions, reporter: Reporter, gate: Callable[..., GateResult],
             processes: GateProcesses, summary: PublishSummary) -> PublishSummary:
    start = time.perf_counter()
    ledger = ledger_io.load(project.ledger_path)          # a broken ledger stops everything here
    plans = plan(project, ledger, gate_all=options.all)
    only = set(options.only) if options.only else None
    # A passed unit without a cached result is always re-gated: its post needs the Verified box.
    todo = [p for p in plans if p.reason and (only is None or p.unit in only or p.reason == NO_CACHE)]
    summary.planned = [p.unit for p in todo]
    for p in plans:
        entry = ledger.entry(p.unit)
        if not p.exists:
            if entry.status != "not-started":
                _reset(entry)
        elif p.reason and p not in todo and entry.status == "passed" and p.fingerprint != entry.fingerprint:
            entry.status = "stale"

    # 2. gate; on a signal, every gate is ended and what finished is recorded before stopping
    reporter.gates_started([(p.unit, p.reason) for p in todo])
    if todo:
        pool = ThreadPoolExecutor(max_workers=max(1, options.jobs))
        futures: dict = {}
        # Warm only pays when a worker runs a second gate: its first one costs the imports anyway.
        servers = GateServers(project, processes) if len(todo) > options.jobs else None

        def record(future, unit_plan: UnitPlan, announce: bool) -> None:
            result = future.result()
            save_cached(project, result)
            _apply(ledger.entry(result.unit), result, unit_plan.reason)
            summary.gated.append(result)
            if announce:
                reporter.gate_finished(result)

        try:
            for p in sorted(todo, key=lambda p: _expected_seconds(ledger.entry(p.unit))):
                futures[pool.submit(gate, project, p.unit, p.fingerprint, timeout=options.timeout,
                                    processes=processes, servers=servers)] = p
            for future in as_completed(futures):
                record(future, futures[future], True)
        except _Stop:
            pool.shutdown(wait=True, cancel_futures=True)
            recorded = {r.unit for r in summary.gated}
            for future, p in futures.items():  # a gate that finished while we stopped is kept too
                if (future.done() and not future.cancelled() and future.exception() is None
                        and p.unit not in recorded):
                    record(future, p, False)
            ledger_io.save(ledger, project.ledger_path)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            if servers is not None:
                summary.import_seconds = servers.import_seconds()
                servers.close()
    summary.gated.sort(key=_order)

    # 3. ledger
    summary.ledger_written = ledger_io.save(ledger, project.ledger_path)

    # 4. stage (in memory first), README, then sync site/posts
    reporter.step("staging posts")
    current = {p.unit: p.fingerprint for p in plans}
    publishable = []
    for entry in ledger.units():
        if entry.status != "passed":
            continue
        cached = load_cached(project, entry.key)
        if cached is None or cached.fingerprint != entry.fingerprint or current.get(entry.key) != entry.fingerprint:
            continue  # never publish what was not gated on the files as they are now
        publishable.append((entry, cached))
    slugs = {entry.key: post_slug(entry) for entry, _ in publishable}
    staged: list[StagedPost] = [stage_post(project, entry, cached, entry.first_passed or date.today(), slugs)
                                for entry, cached in publishable]
    canonical_categories(staged)
    summary.published = [p.unit for p in staged]
    summary.readme_written = update_readme(project, ledger, n_posts=len(staged))
    summary.staged_changed = sync_staged(project, staged)

    # 5. render
    if options.render:
        engine = choose_engine(options.engine)
        summary.engine = engine.name
        reporter.step(f"rendering with {engine.name}")
        summary.rendered = render_site(project, engine)
    summary.failing = [e.key for e in ledger.units() if e.status == "failing"]
    summary.seconds = time.perf_counter() - start
    return summary


def _expected_seconds(entry) -> float:
    """Sort key that starts the longest gates first (longest-processing-time scheduling): by the last
    recorded gate time, a unit never timed before all the others. Without it a long gate handed out last
    runs alone while the other workers idle."""
    return -math.inf if entry.gate_seconds is None else -entry.gate_seconds


class _Stop(BaseException):
    """Raised in the main thread by the signal handler (BaseException: no `except Exception` eats it)."""

    def __init__(self, signum: int):
        self.signum = signum


@contextmanager
def _stop_on_signals(processes: GateProcesses) -> Iterator[None]:
    """While inside: SIGINT/SIGTERM end every gate's process group and raise _Stop here."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are only delivered to the main thread; a caller elsewhere handles them
        return

    def handler(signum, frame):
        if processes.stopped:
            return  # a second Ctrl-C while stopping: let the clean-up finish
        processes.stop()
        raise _Stop(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def _publish_lock(project: Project) -> Iterator[list[str]]:
    """One publish at a time; leftovers of a killed one are cleaned on the way in."""
    lock = project.gate_cache_dir / "publish.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                owner = int(lock.read_text() or 0)
            except (OSError, ValueError):
                owner = 0
            if owner and owner != os.getpid() and pid_alive(owner):
                raise PublishLocked(f"another publish (pid {owner}) is running in this checkout; "
                                    f"wait for it, or stop it with Ctrl-C") from None
            lock.unlink(missing_ok=True)  # its owner died: take over
    with os.fdopen(fd, "w") as handle:
        handle.write(str(os.getpid()))
    try:
        yield clean_leftovers(project)
    finally:
        lock.unlink(missing_ok=True)


def _unit_order(unit: UnitKey) -> tuple:
    return (unit == CAPSTONE, unit if unit != CAPSTONE else 0)


def _order(result: GateResult) -> tuple:
    """Days in order, then the capstone."""
    return _unit_order(result.unit)


def days_arg(text: str | None) -> list[UnitKey] | None:
    """'1,2,5-7,capstone' -> [1, 2, 5, 6, 7, 'capstone'] (each checked to be a day number)."""
    if not text:
        return None
    units: list[UnitKey] = []
    for part in str(text).split(","):
        if not part.strip():
            raise DayNumberError(f"--days {text!r}: an empty item (write e.g. 3,5-7,capstone)")
        if "-" in part.strip()[1:]:
            lo, hi = part.split("-", 1)
            first, last = parse_unit_day(lo), parse_unit_day(hi)
            if first > last:
                raise DayNumberError(f"--days {part.strip()!r}: the range is empty (did you mean {last}-{first}?)")
            units.extend(range(first, last + 1))
        else:
            units.append(parse_unit(part))
    days = sorted({u for u in units if u != CAPSTONE})
    return days + ([CAPSTONE] if CAPSTONE in units else [])


def parse_unit_day(value: str) -> int:
    key = parse_unit(value)
    if key == CAPSTONE:
        raise DayNumberError("a range of days cannot include the capstone")
    return key


def jobs_arg(text) -> int:
    """'--jobs 3' -> 3; anything but a whole number ≥ 1 is an OptionError."""
    try:
        value = int(str(text).strip())
    except ValueError:
        raise OptionError(f"--jobs {text!r}: a whole number of gates to run at once, at least 1") from None
    if value < 1:
        raise OptionError(f"--jobs {text!r}: at least 1")
    return value
