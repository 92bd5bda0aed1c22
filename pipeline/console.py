"""Terminal output for the invoke tasks: the status table, gate progress and the summary."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .gate import GateResult
from .ledger import Ledger
from .ledger import DayEntry
from .project import unit_label, unit_name
from .publish import NEW, PublishInterrupted, UnitPlan, PublishSummary, Reporter, live_status

STYLE = {"passed": "green", "failing": "red", "stale": "yellow", "not-started": "dim", NEW: "cyan"}


class RichReporter(Reporter):
    def __init__(self, console: Console):
        self.console = console
        self.progress: Progress | None = None
        self.task = None

    def step(self, message: str) -> None:
        self.stop()
        self.console.print(f"[bold]→[/] {message}")

    def gates_started(self, days: list[tuple[int, str]]) -> None:
        if not days:
            self.console.print("[bold]→[/] nothing changed: no day to gate")
            return
        self.console.print(f"[bold]→[/] gating {len(days)} unit(s): "
                           + ", ".join(f"{unit_name(d)} ({why})" for d, why in days))
        self.progress = Progress(TextColumn("  gates"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 console=self.console, transient=False)
        self.progress.start()
        self.task = self.progress.add_task("gates", total=len(days))

    def gate_finished(self, result: GateResult) -> None:
        verdict = "[green]passed[/]" if result.passed else f"[red]failing[/]: {result.failure_summary()}"
        line = (f"  {unit_label(result.unit)}: {verdict} ({result.n_passed} passed, {result.n_failed} failed, "
                f"{result.n_skipped} skipped; {result.wall_seconds:.1f} s)")
        if self.progress:
            self.progress.console.print(line)
            self.progress.advance(self.task)
        else:
            self.console.print(line)

    def stop(self) -> None:
        """End the progress bar (before printing a summary, or when interrupted)."""
        if self.progress:
            self.progress.stop()
            self.progress = None


def status_table(ledger: Ledger, plans: list[UnitPlan], *, show_all: bool = False, width: int = 120) -> Table:
    """The ledger as a table: started days (scaffolded ones show as new) and the capstone, or
    everything with show_all. Below 120 columns the module and first-passed columns are dropped
    and the topic is cut with an ellipsis, so each unit stays on one line."""
    narrow = width < 120
    table = Table(title="progress.yml", show_lines=False)
    columns = ["Day", "Module", "Topic", "Status", "Tests", "Gate s", "First passed", "Last check"]
    if narrow:
        columns = ["Day", "Topic", "Status", "Tests", "Gate s", "Last check"]
    by_unit = {p.unit: p for p in plans}
    rows = []
    for entry in ledger.units():
        status = live_status(entry, by_unit[entry.key])
        if status == "not-started" and not show_all:
            continue
        tests = f"{entry.tests_passed}" + (f"/{entry.tests_failed}✗" if entry.tests_failed else "")
        gated = status not in ("not-started", NEW)
        cells = {
            "Day": unit_name(entry.key), "Module": str(entry.module) if isinstance(entry, DayEntry) else "",
            "Topic": entry.title, "Status": status, "Tests": tests if gated else "",
            "Gate s": f"{entry.gate_seconds:.1f}" if entry.gate_seconds is not None and gated else "",
            "First passed": str(entry.first_passed or ""),
            "Last check": (entry.last_check.strftime("%m-%d %H:%M" if narrow else "%Y-%m-%d %H:%M")
                           if entry.last_check and gated else ""),
        }
        rows.append([cells[c] for c in columns])
    fits = [max([len(column)] + [len(row[i]) for row in rows]) for i, column in enumerate(columns)]
    # Every column but the topic keeps its full width; the topic gets what is left (each column
    # costs its padding and one rule), cut with an ellipsis.
    topic_at = columns.index("Topic")
    left = width - sum(f + 3 for i, f in enumerate(fits) if i != topic_at) - 4
    for i, column in enumerate(columns):
        table.add_column(column, justify="right" if column in ("Day", "Tests", "Gate s") else "left",
                         no_wrap=True, overflow="ellipsis", min_width=fits[i] if i != topic_at else None,
                         max_width=max(8, left) if i == topic_at else None)
    status_at = columns.index("Status")
    for row in rows:
        row[status_at] = f"[{STYLE[row[status_at]]}]{row[status_at]}[/]"
        table.add_row(*row)
    return table


def print_interrupted(console: Console, stop: PublishInterrupted) -> None:
    """What a stopped publish kept, and what it did not do."""
    kept = ", ".join(unit_name(u) for u in stop.kept) or "none"
    console.print(f"[bold yellow]stopped[/] ({stop}): every gate process was ended; "
                  f"results kept in progress.yml for: {kept}", highlight=False)
    if stop.not_gated:
        console.print(f"  not gated: {', '.join(unit_name(u) for u in stop.not_gated)} "
                      f"(the next `invoke publish` gates them)", highlight=False)
    if stop.cleaned:
        console.print(f"  removed: {', '.join(stop.cleaned)}", highlight=False)
    console.print("  README and blog left as they were.", highlight=False)


def print_summary(console: Console, ledger: Ledger, summary: PublishSummary) -> None:
    passed = len(ledger.with_status("passed"))
    console.print(
        f"[bold]done[/] in {summary.seconds:.1f} s: {len(summary.gated)} gated, "
        f"{len(summary.published)} post(s) published, {passed}/100 days passed"
        f"{', capstone passed' if ledger.capstone.status == 'passed' else ''}; "
        f"ledger {'updated' if summary.ledger_written else 'unchanged'}, "
        f"README {'updated' if summary.readme_written else 'unchanged'}, "
        f"posts {'restaged' if summary.staged_changed else 'unchanged'}, "
        + (f"site {'rendered with ' + summary.engine if summary.rendered else 'unchanged'}"
           if summary.engine else "site not rendered"))
    if summary.import_seconds:
        console.print(f"  gates forked from {len(summary.import_seconds)} warm process(es); their library imports took "
                      + ", ".join(f"{s:.1f}" for s in summary.import_seconds)
                      + " s once, not counted in each gate's time", highlight=False)
    bar_width = 40
    filled = round(bar_width * passed / 100)
    console.print(f"  [green]{'█' * filled}[/][dim]{'░' * (bar_width - filled)}[/] {passed}%")
    if summary.failing:  # every publish names them, not only the one that gated them
        console.print(f"[yellow]not published (failing):[/] {', '.join(unit_label(u) for u in summary.failing)}"
                      " — `invoke check N` shows why", highlight=False)
