"""Stopping `invoke publish` with real signals: it stops within 2 s, ends every gate's whole
process group, removes its temporary folders, keeps the results of the gates that finished and
says so; a publish killed outright is cleaned up after by the next one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipeline.gate import pid_alive

SLOW_TEST = textwrap.dedent('''

    def test_slow_when_flagged():
        """Records its pid and a child's; hangs while $HANG_WHILE names a file that exists."""
        import os, pathlib, subprocess, time
        root = pathlib.Path(__file__).resolve().parents[2]
        flag = os.environ.get("HANG_WHILE")
        if not flag:
            return
        (root / "pids").mkdir(exist_ok=True)
        child = subprocess.Popen(["sleep", "120"])
        (root / "pids" / str(os.getpid())).write_text(str(child.pid))
        deadline = time.monotonic() + 120
        while pathlib.Path(flag).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    ''')


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _recorded_pids(root: Path) -> list[int]:
    """Every gate pytest pid and its child `sleep` pid that the slow tests recorded."""
    pids = []
    for path in (root / "pids").glob("*"):
        pids.append(int(path.name))
        if path.read_text().strip():
            pids.append(int(path.read_text()))
    return pids


def _start_publish(toy, hang: bool, jobs: int = 2) -> subprocess.Popen:
    """With 3 days and 2 jobs the gates are warm (forked from gate servers); with 3 jobs, cold."""
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "ARENA_GATE", "HANG_WHILE")}
    if hang:
        env["HANG_WHILE"] = str(toy.root / "slow.flag")
    return subprocess.Popen([sys.executable, "-m", "invoke", "publish", "--engine", "pandoc", "--jobs", str(jobs)],
                            cwd=toy.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture
def slow_days(toy):
    """Day 1 passes at once; days 2 and 3 each start a child process and hang until released."""
    toy.write_day(1)
    for day in (2, 3):
        toy.write_day(day, extra_tests=SLOW_TEST)
    (toy.root / "slow.flag").write_text("")
    return toy


@pytest.mark.parametrize("sig, code, jobs", [(signal.SIGINT, 130, 2), (signal.SIGTERM, 143, 2), (signal.SIGINT, 130, 3)],
                         ids=["SIGINT-warm", "SIGTERM-warm", "SIGINT-cold"])
def test_a_signal_stops_publish_within_two_seconds_and_keeps_what_finished(slow_days, sig, code, jobs, measure):
    """SIGINT (Ctrl-C) or SIGTERM (kill PID) during the gates: publish exits within 2 s with
    128 + the signal's number; no gate process (pytest, or the child it started) survives; no
    temporary folder remains; the finished gate (day 1) is recorded as passed and the stopped
    ones are not recorded at all; the README and the site are left as they were."""
    toy = slow_days
    readme_before = (toy.root / "README.md").read_bytes()
    proc = _start_publish(toy, hang=True, jobs=jobs)
    try:
        _wait_for(lambda: (toy.root / ".gate" / "001.json").exists(), 120, "day 1's gate to finish")
        _wait_for(lambda: len(list((toy.root / "pids").glob("*"))) == 2
                  and all(p.read_text() for p in (toy.root / "pids").glob("*")), 120, "both slow gates to start")
        pids = _recorded_pids(toy.root)
        assert len(pids) == 4 and all(pid_alive(p) for p in pids)
        sent = time.monotonic()
        proc.send_signal(sig)
        output, _ = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
        (toy.root / "slow.flag").unlink(missing_ok=True)
    measure(f"stop_seconds.{sig.name}.{'warm' if jobs == 2 else 'cold'}", took, "< 2")
    assert took < 2.0, f"publish took {took:.2f} s to stop\n{output}"
    assert proc.returncode == code, output
    assert "Traceback" not in output
    said = " ".join(output.split())  # rich wraps long lines at the terminal's width
    assert "results kept in progress.yml for: 001" in said and "not gated: 002, 003" in said
    _wait_for(lambda: not any(pid_alive(p) for p in pids), 1, "gate processes to be reaped")
    assert not list((toy.root / ".gate").glob("tmp/gate-*"))
    assert not list((toy.root / "site").glob("_site*"))
    ledger = toy.ledger()
    assert ledger[1].status == "passed" and ledger[1].tests_passed == 2
    assert ledger[2].status == ledger[3].status == "not-started"
    assert (toy.root / "README.md").read_bytes() == readme_before
    assert not (toy.root / ".gate" / "publish.lock").exists()


@pytest.mark.parametrize("jobs", [2, 3], ids=["warm", "cold"])
def test_a_killed_publish_is_cleaned_up_by_the_next_one(slow_days, jobs):
    """SIGKILL leaves gates running and temporary folders behind (nothing can catch it); the next
    publish ends those gate processes, removes the folders and a half-rendered site, says so,
    and then publishes normally."""
    toy = slow_days
    proc = _start_publish(toy, hang=True, jobs=jobs)
    try:
        _wait_for(lambda: len(list((toy.root / "pids").glob("*"))) == 2
                  and all(p.read_text() for p in (toy.root / "pids").glob("*")), 120, "both slow gates to start")
        proc.kill()
        proc.wait(timeout=10)
        pids = _recorded_pids(toy.root)
        assert pid_alive(pids[0]), "the gate outlived a SIGKILLed publish, as it must be able to"
        leftovers = list((toy.root / ".gate").glob("tmp/gate-*"))
        assert len(leftovers) >= 2  # the two hanging gates' folders (or their two gate servers')
        assert any("-server-" in folder.name for folder in leftovers) == (jobs == 2)  # warm gates, or cold
        (toy.root / "site" / f"_site.new-{proc.pid}").mkdir()   # as if killed while rendering
    finally:
        if proc.poll() is None:
            proc.kill()
    try:
        again = _start_publish(toy, hang=False)  # the killed publish's gates still hang meanwhile
        output, _ = again.communicate(timeout=300)
    finally:
        (toy.root / "slow.flag").unlink()
    assert again.returncode == 0, output
    assert "cleaned up after an interrupted publish" in " ".join(output.split())
    assert not any(pid_alive(p) for p in pids), "the killed publish's gates were not ended"
    assert not list((toy.root / ".gate").glob("tmp/gate-*"))
    assert not list((toy.root / "site").glob("_site.*"))
    assert [toy.ledger()[d].status for d in (1, 2, 3)] == ["passed"] * 3
