"""Terminal output for the invoke tasks: the status table, gate progress and the summary."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .gate import GateResult
from .ledger import Ledger
from .ledger import DayEntry
from .project import unit_label, unit_name
from .publish import UnitPlan, PublishSummary, Reporter, live_status

STYLE = {"passed": "green", "failing": "red", "stale": "yellow", "not-started": "dim"}


class RichReporter(Reporter):
    def __init__(self, console: Console):
        self.console = console
        self.progress: Progress | None = None
        self.task = None

    def step(self, message: str) -> None:
        self._stop()
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

    def _stop(self) -> None:
        if self.progress:
            self.progress.stop()
            self.progress = None


def status_table(ledger: Ledger, plans: list[UnitPlan], *, show_all: bool = False) -> Table:
    """The ledger as a table: started days and the capstone (or everything with show_all)."""
    table = Table(title="progress.yml", show_lines=False)
    for column in ("Day", "Module", "Topic", "Status", "Tests", "Gate s", "First passed", "Last check"):
        table.add_column(column, justify="right" if column in ("Day", "Tests", "Gate s") else "left")
    by_unit = {p.unit: p for p in plans}
    for entry in ledger.units():
        status = live_status(entry, by_unit[entry.key])
        if status == "not-started" and not show_all:
            continue
        tests = f"{entry.tests_passed}" + (f"/{entry.tests_failed}✗" if entry.tests_failed else "")
        table.add_row(unit_name(entry.key), str(entry.module) if isinstance(entry, DayEntry) else "",
                      entry.title, f"[{STYLE[status]}]{status}[/]",
                      tests if status != "not-started" else "",
                      f"{entry.gate_seconds:.1f}" if entry.gate_seconds is not None else "",
                      str(entry.first_passed or ""), entry.last_check.strftime("%Y-%m-%d %H:%M") if entry.last_check else "")
    return table


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
    bar_width = 40
    filled = round(bar_width * passed / 100)
    console.print(f"  [green]{'█' * filled}[/][dim]{'░' * (bar_width - filled)}[/] {passed}%")
