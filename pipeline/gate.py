"""Gating a unit: run ``pytest days/NNN`` (or ``pytest capstone``) in a process of its own and
read what it measured.

The run is the learner's own acceptance command plus ``--gate-report`` (checks/pytest_plugin.py),
in a separate process so that one unit's imports or crash cannot affect another's. Cold (one gate,
``invoke check``), that process is a fresh ``python -m pytest`` and its wall time includes every
import, like the 60-second budget. Warm (``invoke publish`` when a worker has several gates to
run), it is a child forked from a ``pipeline.gate_server`` that imported the heavy libraries
once: the gate's time then leaves out those imports, and ``import_seconds`` says what they cost.
The last result of each unit is cached in ``.gate/NNN.json`` or ``.gate/capstone.json`` (with
the fingerprint it was run on): the source of the post's "Verified" box.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from .project import Project, UnitKey, unit_name

__all__ = ["GateInterrupted", "GateProcesses", "GateResult", "GateServer", "GateServers", "clean_leftovers",
           "load_cached", "pid_alive", "run_gate", "save_cached"]

DEFAULT_TIMEOUT_S = 900
TMP_PREFIX = "gate-"
GRACE_S = 1.0          # SIGTERM first, SIGKILL after this: a stopped publish is gone within 2 s


class GateInterrupted(RuntimeError):
    """The publish was asked to stop (SIGINT, SIGTERM) while this gate ran or waited to run."""


class GateProcesses:
    """The gate processes a publish has running, so that a signal can end every one of them.

    Each gate runs in its own process group (a fresh session, or a forked child that made itself
    a group): pytest and anything it started (a browser, a subprocess) are ended together with
    ``killpg``. Once ``stop()`` is called no new gate starts, and every running one is terminated,
    then killed after ``GRACE_S``.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._running: dict[int, Callable[[], bool]] = {}   # process group -> "has it ended?"
        self.stopped = False

    def start(self, cmd: list[str], **kwargs) -> subprocess.Popen:
        with self._lock:
            if self.stopped:
                raise GateInterrupted("publish is stopping: gate not started")
            proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
            self._running[proc.pid] = lambda: proc.poll() is not None
            return proc

    def track(self, pgid: int) -> None:
        """A process group started elsewhere (a gate server's child) that ``stop()`` must end."""
        with self._lock:
            self._running[pgid] = lambda: not pid_alive(pgid)
        if self.stopped:  # stopped between the fork and here: end it too
            _end_groups([pgid], lambda: not pid_alive(pgid))

    def finished(self, pgid: int | subprocess.Popen) -> None:
        with self._lock:
            self._running.pop(getattr(pgid, "pid", pgid), None)

    def stop(self) -> None:
        with self._lock:
            self.stopped = True
            running = dict(self._running)
        _end_groups(list(running), lambda: all(done() for done in running.values()))


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
        ours = [pgid for pgid in _recorded_pgids(folder / "pgid") if str(folder).encode() in _cmdline(pgid)]
        if ours:  # still that gate's pytest (or gate server and its children), not recycled pids
            _end_groups(ours, lambda: not any(pid_alive(p) for p in ours))
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


def _recorded_pgids(path: Path) -> list[int]:
    """The process groups a gate folder's ``pgid`` file lists (one per line)."""
    try:
        return [int(line) for line in path.read_text().split() if line.strip().isdigit()]
    except OSError:
        return []


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


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
    wall_seconds: float        # the gate's process, from start to exit (see import_seconds)
    exit_status: int
    counts: dict[str, int] = field(default_factory=dict)
    tests: list[dict] = field(default_factory=list)
    collect_errors: list[dict] = field(default_factory=list)
    output_tail: str = ""
    # 0 for a cold gate (its wall time includes every import); for a warm one, what importing the
    # shared libraries cost its gate server once, before the gate was forked (not in wall_seconds)
    import_seconds: float = 0.0

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


def _gate_env() -> dict[str, str]:
    return {**os.environ, "ARENA_GATE": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def _pytest_args(project: Project, key: UnitKey, report: Path, extra_args: tuple[str, ...]) -> list[str]:
    return [project.unit_rel(key), "-q", "-p", "no:cacheprovider", "--gate-report", str(report), *extra_args]


def run_gate(project: Project, key: UnitKey, fingerprint: str, *, timeout: float = DEFAULT_TIMEOUT_S,
             extra_args: tuple[str, ...] = (), processes: GateProcesses | None = None,
             servers: "GateServers | None" = None) -> GateResult:
    """Run the unit's gate in a process of its own and return its result: a fresh ``python -m
    pytest``, or a child forked from one of ``servers`` (warm). Never raises for a red unit;
    raises GateInterrupted when ``processes`` was stopped before or while the gate ran."""
    processes = processes or GateProcesses()
    if servers is not None:
        with servers.checkout() as server:
            return server.gate(project, key, fingerprint, timeout=timeout, extra_args=extra_args)
    checked_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    _tmp_root(project).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=_tmp_root(project)) as tmp:
        report_path = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pytest", *_pytest_args(project, key, report_path, extra_args)]
        start = time.perf_counter()
        proc = processes.start(cmd, cwd=project.root, env=_gate_env(), stdout=subprocess.PIPE,
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
        return _result(key, fingerprint, checked_at, time.perf_counter() - start, exit_status, report_path, output)


def _result(key: UnitKey, fingerprint: str, checked_at: str, wall: float, exit_status: int, report_path: Path,
            output: str, import_seconds: float = 0.0) -> GateResult:
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    return GateResult(
        unit=key, fingerprint=fingerprint, checked_at=checked_at, wall_seconds=round(wall, 2),
        exit_status=exit_status, counts=report.get("counts", {}), tests=report.get("tests", []),
        collect_errors=report.get("collect_errors", []), output_tail=output[-4000:],
        import_seconds=round(import_seconds, 2))


class GateServerDied(RuntimeError):
    """The gate server exited or stopped answering (its gate is reported as a crash)."""


class GateServer:
    """One running ``pipeline.gate_server`` (see there): gates run one at a time, each a forked child.

    Its folder (``.gate/tmp/gate-<publish pid>-server-*``) holds the gates' reports and logs and
    the ``pgid`` file that lets a later publish end what a killed one left running."""

    def __init__(self, project: Project, processes: GateProcesses):
        self.processes = processes
        _tmp_root(project).mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-server-", dir=_tmp_root(project)))
        with open(self.folder / "server.log", "wb") as log:
            self.proc = processes.start([sys.executable, "-m", "pipeline.gate_server", str(self.folder)],
                                        cwd=project.root, env=_gate_env(), stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=log)
        self._pending = b""
        self.import_seconds: float | None = None

    def _read(self, timeout: float | None = None) -> dict | None:
        """The server's next message, or None if ``timeout`` seconds pass first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._pending:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([fd], [], [], wait)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise GateServerDied(f"gate server exited with status {self.proc.wait()} "
                                     f"(its log: {self.folder / 'server.log'})")
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return json.loads(line)

    def ready(self) -> float:
        """Wait until the server has imported its libraries; returns how long that took."""
        if self.import_seconds is None:
            self.import_seconds = float(self._read()["ready"])
        return self.import_seconds

    def gate(self, project: Project, key: UnitKey, fingerprint: str, *, timeout: float,
             extra_args: tuple[str, ...] = ()) -> GateResult:
        """Run one gate in a forked child; a server that dies gives a failing result, not an error."""
        checked_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        try:
            return self._gate(project, key, fingerprint, timeout, extra_args)
        except GateServerDied as exc:
            if self.processes.stopped:
                raise GateInterrupted(f"{unit_name(key)}: gate stopped") from None
            return GateResult(unit=key, fingerprint=fingerprint, checked_at=checked_at, wall_seconds=0.0,
                              exit_status=-1, output_tail=str(exc))

    def _gate(self, project: Project, key: UnitKey, fingerprint: str, timeout: float,
              extra_args: tuple[str, ...]) -> GateResult:
        import_seconds = self.ready()
        if self.processes.stopped:
            raise GateInterrupted(f"{unit_name(key)}: gate not started")
        checked_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with tempfile.TemporaryDirectory(prefix=f"{unit_name(key)}-", dir=self.folder) as tmp:
            report_path, log = Path(tmp) / "report.json", Path(tmp) / "output.log"
            exit_status, wall, output = self.run(_pytest_args(project, key, report_path, extra_args), log, timeout)
            if self.processes.stopped:
                raise GateInterrupted(f"{unit_name(key)}: gate stopped")
            return _result(key, fingerprint, checked_at, wall, exit_status, report_path, output, import_seconds)

    def run(self, args: list[str], log: Path, timeout: float) -> tuple[int, float, str]:
        """Run ``pytest args`` in a forked child, its output in ``log``: (exit status, wall seconds, output);
        status -1 when it ran past ``timeout`` seconds (then ended)."""
        self.ready()
        request = {"args": list(args), "log": str(log)}
        start = time.perf_counter()
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()
        pid = self._read()["pid"]
        self.processes.track(pid)
        try:
            message = self._read(timeout)
            if message is None:
                _end_groups([pid], lambda: not pid_alive(pid))
                message = self._read()
                message["timed_out"] = True
        finally:
            self.processes.finished(pid)
        wall = time.perf_counter() - start
        output = log.read_text(errors="replace") if log.exists() else ""
        exit_status = message["exit_status"]
        if message.get("timed_out"):
            output, exit_status = f"{output[-4000:]}\ntimed out after {timeout:.0f} s", -1
        return exit_status, wall, output

    def close(self) -> None:
        """End the server (at the end of input it exits by itself) and remove its folder."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            _end_groups([self.proc.pid], lambda: self.proc.poll() is not None)
        self.processes.finished(self.proc)
        self.proc.stdout.close()
        shutil.rmtree(self.folder, ignore_errors=True)


class GateServers:
    """Warm gate servers for a publish: at most one per worker thread, started on first use and
    reused by the worker's next gates; ``close()`` ends them all."""

    def __init__(self, project: Project, processes: GateProcesses):
        self.project, self.processes = project, processes
        self._lock = threading.Lock()
        self._idle: list[GateServer] = []
        self._all: list[GateServer] = []

    @contextmanager
    def checkout(self) -> Iterator[GateServer]:
        with self._lock:
            server = self._idle.pop() if self._idle else None
        if server is None:
            server = GateServer(self.project, self.processes)
            with self._lock:
                self._all.append(server)
        try:
            yield server
        finally:
            if server.proc.poll() is None and not self.processes.stopped:  # a dead one is not reused
                with self._lock:
                    self._idle.append(server)

    def import_seconds(self) -> list[float]:
        return [s.import_seconds for s in self._all if s.import_seconds is not None]

    def close(self) -> None:
        for server in self._all:
            server.close()


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
