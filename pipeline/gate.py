"""Gating a unit: run ``pytest days/NNN`` (or ``pytest capstone``) in a fresh process and read
what it measured.

The run is the learner's own acceptance command plus ``--gate-report`` (checks/pytest_plugin.py),
in a subprocess so that one unit's imports or crash cannot affect another's, and so that its wall
time includes imports, like the 60-second budget. The last result of each unit is cached in
``.gate/NNN.json`` or ``.gate/capstone.json`` (with the fingerprint it was run on): the source of
the post's "Verified" box.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .project import Project, UnitKey, unit_name

__all__ = ["GateInterrupted", "GateProcesses", "GateResult", "clean_leftovers", "load_cached", "pid_alive", "run_gate",
           "save_cached"]

DEFAULT_TIMEOUT_S = 900
TMP_PREFIX = "gate-"
GRACE_S = 1.0          # SIGTERM first, SIGKILL after this: a stopped publish is gone within 2 s


class GateInterrupted(RuntimeError):
    """The publish was asked to stop (SIGINT, SIGTERM) while this gate ran or waited to run."""


class GateProcesses:
    """The gate processes a publish has running, so that a signal can end every one of them.

    Each gate runs in its own session (process group): pytest and anything it started (xdist
    workers, a browser) are ended together with ``killpg``. Once ``stop()`` is called no new
    gate starts, and every running one is terminated, then killed after ``GRACE_S``.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._running: dict[int, subprocess.Popen] = {}
        self.stopped = False

    def start(self, cmd: list[str], **kwargs) -> subprocess.Popen:
        with self._lock:
            if self.stopped:
                raise GateInterrupted("publish is stopping: gate not started")
            proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
            self._running[proc.pid] = proc
            return proc

    def finished(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._running.pop(proc.pid, None)

    def stop(self) -> None:
        with self._lock:
            self.stopped = True
            procs = list(self._running.values())
        _end_groups([p.pid for p in procs], lambda: all(p.poll() is not None for p in procs))


def _end_groups(pgids: list[int], done, grace: float = GRACE_S) -> None:
    """SIGTERM each process group, then SIGKILL whatever is left after ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pgid in pgids:
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and not done():
            time.sleep(0.02)
        if done():
            return


def _tmp_root(project: Project) -> Path:
    return project.gate_cache_dir / "tmp"


def pid_alive(pid: int) -> bool:
    """The process exists and has not exited (a zombie waiting to be reaped counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def clean_leftovers(project: Project) -> list[str]:
    """Remove what a killed publish left behind: its gates' temporary folders (ending any gate
    process still running there) and half-rendered sites. Returns what was removed.

    Only leftovers of dead publishes are touched: each folder carries its owner's pid."""
    removed = []
    root = _tmp_root(project)
    for folder in sorted(root.glob(f"{TMP_PREFIX}*")) if root.exists() else []:
        owner = _owner(folder.name)
        if owner is not None and owner != os.getpid() and pid_alive(owner):
            continue
        pid_file = folder / "pgid"
        if pid_file.exists():
            try:
                pgid = int(pid_file.read_text())
                cmdline = Path(f"/proc/{pgid}/cmdline").read_bytes()
            except (OSError, ValueError):
                cmdline = b""
            if str(folder).encode() in cmdline:  # still that gate's pytest, not a recycled pid
                _end_groups([pgid], lambda: not pid_alive(pgid))
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(str(folder.relative_to(project.root)))
    for pattern in ("_site.new-*", "_site.old-*"):
        for folder in sorted(project.site_dir.glob(pattern)):
            owner = _owner(folder.name)
            if owner is not None and owner != os.getpid() and pid_alive(owner):
                continue
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(str(folder.relative_to(project.root)))
    return removed


def _owner(name: str) -> int | None:
    """The publish pid in 'gate-<pid>-xyz' or '_site.new-<pid>'."""
    tail = name.split("-", 1)[1] if "-" in name else ""
    head = tail.split("-", 1)[0]
    return int(head) if head.isdigit() else None


@dataclass
class GateResult:
    unit: UnitKey              # a day number, or "capstone"
    fingerprint: str
    checked_at: str            # ISO date-time (UTC) when the run started
    wall_seconds: float        # the whole `pytest days/NNN`, imports included
    exit_status: int
    counts: dict[str, int] = field(default_factory=dict)
    tests: list[dict] = field(default_factory=list)
    collect_errors: list[dict] = field(default_factory=list)
    output_tail: str = ""

    @property
    def n_passed(self) -> int:
        return self.counts.get("passed", 0) + self.counts.get("xpassed", 0)

    @property
    def n_failed(self) -> int:
        return self.counts.get("failed", 0) + self.counts.get("error", 0) + len(self.collect_errors)

    @property
    def n_skipped(self) -> int:
        return self.counts.get("skipped", 0) + self.counts.get("xfailed", 0)

    @property
    def passed(self) -> bool:
        """Green: pytest exited 0, something passed, nothing failed or errored."""
        return self.exit_status == 0 and self.n_passed > 0 and self.n_failed == 0

    def failure_summary(self, limit: int = 3) -> str:
        lines = [f"{e['nodeid']}: collection error" for e in self.collect_errors]
        lines += [f"{t['nodeid']}: {t['outcome']}: {(t.get('message') or '').splitlines()[0] if t.get('message') else ''}"
                  for t in self.tests if t["outcome"] in ("failed", "error")]
        if not lines and self.exit_status != 0:
            lines = [f"pytest exited with status {self.exit_status}: "
                     + (self.output_tail.strip().splitlines() or ["no output"])[-1]]
        if not lines and self.n_passed == 0:
            lines = ["no test passed (none collected?)"]
        more = f" (+{len(lines) - limit} more)" if len(lines) > limit else ""
        return "; ".join(lines[:limit]) + more

    def measurements(self) -> dict[str, dict]:
        """Every measured number of the unit by name: {name: {value, bound, nodeid}}."""
        found: dict[str, dict] = {}
        for test in self.tests:
            for m in test.get("measured", []):
                found.setdefault(m["name"], {**m, "nodeid": test["nodeid"]})
        return found

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "GateResult":
        return cls(**json.loads(text))


def run_gate(project: Project, key: UnitKey, fingerprint: str, *, timeout: float = DEFAULT_TIMEOUT_S,
             extra_args: tuple[str, ...] = (), processes: GateProcesses | None = None) -> GateResult:
    """Run the unit's gate in a subprocess and return its result (never raises for a red unit;
    raises GateInterrupted when ``processes`` was stopped before or while the gate ran)."""
    processes = processes or GateProcesses()
    rel = project.unit_rel(key)
    checked_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    env = {**os.environ, "ARENA_GATE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    _tmp_root(project).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=_tmp_root(project)) as tmp:
        report_path = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pytest", rel, "-q", "-p", "no:cacheprovider",
               "--gate-report", str(report_path), *extra_args]
        start = time.perf_counter()
        proc = processes.start(cmd, cwd=project.root, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        (Path(tmp) / "pgid").write_text(str(proc.pid))
        try:
            output, _ = proc.communicate(timeout=timeout)
            exit_status = proc.returncode
        except subprocess.TimeoutExpired:
            _end_groups([proc.pid], lambda: proc.poll() is not None)
            output, _ = proc.communicate()
            exit_status = -1
            output = f"{(output or '')[-4000:]}\ntimed out after {timeout:.0f} s"
        except BaseException:  # Ctrl-C in the caller's thread: the gate's own session never saw it
            _end_groups([proc.pid], lambda: proc.poll() is not None)
            raise
        finally:
            processes.finished(proc)
        if processes.stopped:
            raise GateInterrupted(f"{unit_name(key)}: gate stopped")
        wall = time.perf_counter() - start
        report = json.loads(report_path.read_text()) if report_path.exists() else {}
    return GateResult(
        unit=key, fingerprint=fingerprint, checked_at=checked_at, wall_seconds=round(wall, 2),
        exit_status=exit_status, counts=report.get("counts", {}), tests=report.get("tests", []),
        collect_errors=report.get("collect_errors", []), output_tail=output[-4000:])


def _cache_path(project: Project, key: UnitKey) -> Path:
    return project.gate_cache_dir / f"{unit_name(key)}.json"


def save_cached(project: Project, result: GateResult) -> None:
    path = _cache_path(project, result.unit)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(result.to_json(), encoding="utf-8")
    os.replace(tmp, path)


def load_cached(project: Project, key: UnitKey) -> GateResult | None:
    """The cached result of the unit's last gate, or None if absent or unreadable."""
    path = _cache_path(project, key)
    try:
        return GateResult.from_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return None
