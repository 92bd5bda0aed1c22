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
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .project import Project, UnitKey, unit_name

__all__ = ["GateResult", "load_cached", "run_gate", "save_cached"]

DEFAULT_TIMEOUT_S = 900


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
             extra_args: tuple[str, ...] = ()) -> GateResult:
    """Run the unit's gate in a subprocess and return its result (never raises for a red unit)."""
    rel = project.unit_rel(key)
    checked_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    env = {**os.environ, "ARENA_GATE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    with tempfile.TemporaryDirectory(prefix="gate-") as tmp:
        report_path = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pytest", rel, "-q", "-p", "no:cacheprovider",
               "--gate-report", str(report_path), *extra_args]
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=project.root, env=env, capture_output=True, text=True,
                                  timeout=timeout)
            exit_status, output = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            exit_status = -1
            output = f"{(exc.stdout or b'')[-4000:]!r}\ntimed out after {timeout:.0f} s"
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
