"""invoke tasks: a thin layer over the `pipeline` package (run `invoke --list`)."""

from __future__ import annotations

import importlib
import time
from datetime import date
from contextlib import contextmanager
from pathlib import Path

import yaml
from invoke import Exit, task
from rich.console import Console

from pipeline import ledger as ledger_io
from pipeline.console import RichReporter, print_interrupted, print_summary, status_table
from pipeline.ledger import LedgerError
from pipeline.markdown import PandocMissing
from pipeline.practice import PracticeError, check_practice, make_practice
from pipeline.project import CAPSTONE, DayNumberError, Project, day_dir_name, parse_day, parse_unit, unit_label
from pipeline.fingerprint import unit_fingerprint
from pipeline.gate import run_gate
from pipeline.publish import (OptionError, PublishInterrupted, PublishLocked, PublishOptions, days_arg, jobs_arg, plan,
                              publish as run_publish)
from pipeline.readme import ReadmeError
from pipeline.render import RenderError, choose_engine, render_site
from pipeline.scaffold import DayExistsError, new_day
from pipeline.stage import StageError, post_slug, stage_post

PROJECT = Project.at(Path(__file__).parent)
console = Console()


@contextmanager
def _clear_errors():
    """Turn the pipeline's known errors into one red line and exit status 1 (no traceback)."""
    try:
        yield
    except (LedgerError, DayNumberError, DayExistsError, ReadmeError, StageError, RenderError, LookupError,
            OptionError, PublishLocked, PandocMissing, PracticeError) as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise Exit(code=1)


@task(help={"day": "the day number, 1 to 100"})
def new(c, day):
    """Scaffold days/NNN/ from templates/ with the day's topic (refuses to overwrite)."""
    with _clear_errors():
        written = new_day(PROJECT, ledger_io.load(PROJECT.ledger_path), day)
    for path in written:
        console.print(f"  created {path.relative_to(PROJECT.root)}")
    number = parse_day(day)
    console.print(f"Day {number}: write the spec tests, then run [bold]pytest days/{day_dir_name(number)}[/].")


@task(help={"all": "gate every started day, changed or not",
            "days": "gate only these days, e.g. 3,5-7,capstone (other changed ones become stale)",
            "engine": "auto (quarto if installed, else pandoc), quarto or pandoc",
            "no_render": "stop after staging the posts",
            "jobs": "gates to run at once (default: half the cores)"})
def publish(c, all=False, days=None, engine="auto", no_render=False, jobs=None):
    """Re-gate what changed, update progress.yml and the README, stage and render the blog."""
    options = PublishOptions(all=all, engine=engine, render=not no_render)
    with _clear_errors():
        options.only = days_arg(days)
        if jobs is not None:
            options.jobs = jobs_arg(jobs)
        options.validate()  # every option, before any gate runs
        reporter = RichReporter(console)
        try:
            summary = run_publish(PROJECT, options, reporter)
        except PublishInterrupted as stop:
            reporter.stop()
            print_interrupted(console, stop)
            raise Exit(code=stop.exit_code)
        print_summary(console, ledger_io.load(PROJECT.ledger_path), summary)


@task(help={"all": "list all 100 days, not only the started ones"})
def status(c, all=False):
    """Show the ledger as a table (a passed day whose files changed shows as stale)."""
    with _clear_errors():
        ledger = ledger_io.load(PROJECT.ledger_path)
        console.print(status_table(ledger, plan(PROJECT, ledger), show_all=all, width=console.width))


@task(help={"day": "the day number, 1 to 100, or 'capstone'"})
def check(c, day):
    """Dry run of publishing one day (or the capstone): its gate, then its post staged in memory."""
    with _clear_errors():
        key = parse_unit(day)
        ledger = ledger_io.load(PROJECT.ledger_path)
        entry = ledger.entry(key)
        if not PROJECT.unit_exists(key):
            hint = f"start it with `invoke new {key}`" if key != CAPSTONE else "the capstone needs a test file"
            raise LookupError(f"{PROJECT.unit_rel(key)} does not exist yet: {hint}")
        result = run_gate(PROJECT, key, unit_fingerprint(PROJECT, key))
        console.print(f"{unit_label(key)} gate: {'[green]passed[/]' if result.passed else '[red]failing[/]'} "
                      f"({result.n_passed} passed, {result.n_failed} failed, {result.n_skipped} skipped) "
                      f"in {result.wall_seconds:.1f} s", highlight=False)
        if not result.passed:
            console.print(f"  {result.failure_summary(limit=10)}", highlight=False)
            raise Exit(code=1)
        # Links to other posts resolve as they would now: to the units the ledger records as passed.
        published = {e.key: post_slug(e) for e in ledger.units() if e.status == "passed"} | {key: post_slug(entry)}
        staged = stage_post(PROJECT, entry, result, entry.first_passed or date.today(), published)
    console.print(f"post stages cleanly: {staged.slug} ({len(staged.assets)} figure or linked file(s))")


@task(help={"day": "the day number, 1 to 100",
            "into": "write the copy here instead of practice/NNN (a folder inside the repository)",
            "check": "grade the practice copy with the day's gate: a scoreboard per exercise",
            "use_mine": "earlier days whose practice copies this one imports instead of the reference, e.g. 31,32"})
def practice(c, day, into=None, check=False, use_mine=""):
    """Practice a day: its exercises emptied (`raise NotImplementedError`), graded by the day's own gate."""
    with _clear_errors():
        folder = Path(into) if into else None
        if not check:
            mine = tuple(int(d) for d in use_mine.replace(",", " ").split()) if use_mine else ()
            manifest = make_practice(PROJECT, day, into=folder, use_mine=mine)
            where = folder or Path("practice") / day_dir_name(parse_day(day))
            console.print(f"wrote {where}/: {len(manifest['exercises'])} exercises to fill in:", highlight=False)
            for e in manifest["exercises"]:
                console.print(f"  {e['module']}:{e['qualname']}  [dim]{e['summary']}[/]", highlight=False)
            console.print(f"Grade it with [bold]invoke practice {parse_day(day)} --check[/] "
                          f"(or [bold]pytest {where}[/]).")
            return
        board = check_practice(PROJECT, day, folder=folder)
    colours = {"passed": "green", "failing": "red", "waiting": "yellow", "not yet implemented": "dim"}
    for row in board.rows:
        detail = f"  [dim]{', '.join(row['failing'][:3])}[/]" if row["status"] == "failing" else ""
        console.print(f"  [{colours[row['status']]}]{row['status']:>19}[/]  {row['exercise']}{detail}", highlight=False)
    counts = board.counts()
    console.print(f"Day {board.day}: {counts['passed']} of {len(board.rows)} exercises pass "
                  f"({counts['failing']} failing, {counts['waiting']} waiting on others, "
                  f"{counts['not yet implemented']} not yet implemented); gate: {board.tests_passed} passed, "
                  f"{board.tests_failed} failed in {board.gate_seconds:.1f} s", highlight=False)
    if counts["passed"] != len(board.rows):
        raise Exit(code=1)


@task(help={"day": "the day number, 1 to 100",
            "limit": "at most this many mutants (one per line, drawn with a fixed seed)",
            "force": "measure again even if the day's fingerprint has a cached measurement"})
def mutate(c, day, limit=None, force=False):
    """Gate strength: break single lines of the day's exercises and count how many breaks its gate catches."""
    from pipeline.mutate import DEFAULT_LIMIT, JUDGEMENTS_FILE, judge_survivors, measure_gate_strength, record

    def progress(i, n, mutant, caught):
        mark = "[green]caught[/]" if caught else "[red]survived[/]"
        console.print(f"  {i:>3}/{n} {mark}  {mutant.module}:{mutant.line} {mutant.qualname}: {mutant.change}",
                      highlight=False)

    with _clear_errors():
        result = measure_gate_strength(PROJECT, day, int(limit) if limit else DEFAULT_LIMIT, force=force,
                                       progress=progress)
        recorded = record(PROJECT, result)
    cached_note = " (cached for this fingerprint)" if result.get("from_cache") else f" in {result['seconds']:.0f} s"
    console.print(f"Day {result['day']}: gate strength {result['caught']} of {result['total']} single-line breaks "
                  f"caught{cached_note}; {result['candidates']} possible breaks in its exercises.", highlight=False)
    if not recorded:
        console.print("[yellow]the day changed while it was measured: not written to the ledger[/]")
        return
    equivalent, still_open, unused = judge_survivors(PROJECT, result)
    for s in equivalent:
        console.print(f"  equivalent: {s['module']}:{s['line']} {s['qualname']}: {s['change']} ({s['why']})",
                      highlight=False)
    for s in still_open:
        console.print(f"  survived: {s['module']}:{s['line']} {s['qualname']}: {s['change']} "
                      f"(a missing test, or an equivalent mutant? Judge it in {JUDGEMENTS_FILE})", highlight=False)
    for j in unused:
        console.print(f"[yellow]  unused verdict in {JUDGEMENTS_FILE}: {j.module} {j.qualname}: {j.change} on "
                      f"`{j.code}` matches no survivor (the line changed, or the gate now catches it)[/]",
                      highlight=False)
    if equivalent:
        console.print(f"Non-equivalent breaks caught: {result['caught']} of {result['total'] - len(equivalent)}.",
                      highlight=False)


@task(help={"day": "the day number, 1 to 100, or 'capstone'"})
def experiment(c, day):
    """Run a day's (or the capstone's) experiment: writes its figures/ and results.json."""
    with _clear_errors():
        key = parse_unit(day)
        module = importlib.import_module(PROJECT.experiment_module(key))
        start = time.perf_counter()
        results = module.run_experiment(PROJECT.unit_dir(key))
    console.print(f"{unit_label(key)}: experiment done in {time.perf_counter() - start:.1f} s")
    console.print(results, highlight=False)


@task(help={"engine": "auto, quarto or pandoc", "force": "render even if nothing changed"})
def render(c, engine="auto", force=False):
    """Render site/ from the posts already staged (no gating)."""
    with _clear_errors():
        eng = choose_engine(engine)
        done = render_site(PROJECT, eng, force=force)
    console.print(f"site {'rendered with ' + eng.name if done else 'unchanged'}: site/_site/index.html")


@task(help={"syllabus": "a syllabus.yml (list of days with topic, module, group, arena ...); "
                        "default: templates/syllabus.yml"})
def ledger(c, syllabus=str(PROJECT.syllabus_path.relative_to(PROJECT.root))):
    """Rebuild progress.yml's authored fields from a syllabus, keeping every measured field."""
    with _clear_errors():
        previous = ledger_io.load(PROJECT.ledger_path) if PROJECT.ledger_path.exists() else None
        path = Path(syllabus) if Path(syllabus).is_absolute() else PROJECT.root / syllabus
        if not path.is_file():
            raise LedgerError(f"{syllabus}: no such syllabus file")
        entries = yaml.safe_load(path.read_text(encoding="utf-8"))
        changed = ledger_io.save(ledger_io.from_syllabus(entries, previous), PROJECT.ledger_path)
    console.print(f"progress.yml {'updated' if changed else 'unchanged'}")
