"""Warm gates (pipeline/gate_server.py): each gate is still its own process running the learner's
pytest command, forked from a server that imported the libraries once. A warm gate finds what a
cold one finds; a crash or a timeout ends that gate alone; publish goes warm only when a worker
has a second gate to run; the real list of libraries imports, and a real day passes warm."""

from __future__ import annotations

import importlib
import importlib.util
import os
import textwrap
import time
from pathlib import Path

import pytest

from pipeline.gate import GateProcesses, GateServers, pid_alive, run_gate
from pipeline.gate_server import PREIMPORT
from pipeline.project import Project
from pipeline.publish import PublishOptions, publish

RECORD_PID = textwrap.dedent('''

    def test_records_its_pid():
        """Writes the gate's process id (and its process group) where the test can read them."""
        import os, pathlib
        root = pathlib.Path(__file__).resolve().parents[2]
        (root / "pids").mkdir(exist_ok=True)
        (root / "pids" / str(os.getpid())).write_text(str(os.getpgid(0)))
    ''')


@pytest.fixture
def servers(toy):
    processes = GateProcesses()
    pool = GateServers(toy.project, processes)
    yield pool
    pool.close()


def _comparable(result) -> tuple:
    return (result.passed, result.exit_status, result.counts,
            [(t["nodeid"], t["outcome"], t.get("measured")) for t in result.tests])


def test_a_warm_gate_finds_what_a_cold_gate_finds_each_in_a_process_of_its_own(toy, servers):
    """The same day gated cold and warm twice: identical verdicts, counts, outcomes and measured
    numbers; a cold gate reports no import time, a warm one the server's; every gate ran in a
    process (and process group) of its own, none of them the server."""
    toy.write_day(1, extra_tests=RECORD_PID)
    toy.write_day(2, failing=True)
    cold = [run_gate(toy.project, day, f"sha256:{day}") for day in (1, 2)]
    warm = [run_gate(toy.project, day, f"sha256:{day}", servers=servers) for day in (1, 2, 1)]
    assert [_comparable(r) for r in warm] == [_comparable(r) for r in cold + cold[:1]]
    assert cold[0].passed and not cold[1].passed and "assert 4 == 5" in warm[1].output_tail  # rewritten asserts
    assert all(r.import_seconds == 0 for r in cold) and all(r.import_seconds > 0 for r in warm)
    pids = {int(p.name): int(p.read_text()) for p in (toy.root / "pids").iterdir()}
    assert len(pids) == 3 and all(pid == pgid for pid, pgid in pids.items())
    server_pids = {s.proc.pid for s in servers._all}
    assert len(server_pids) == 1 and not server_pids & set(pids)


def test_a_crashing_or_hanging_warm_gate_ends_alone(toy, servers):
    """A gate that kills its own process fails (it does not take the server down); one that hangs
    past the timeout is ended with its child processes and reported as timed out; the next gate
    on the same server passes."""
    toy.write_day(1, extra_tests='''

def test_crash():
    import os, signal
    os.kill(os.getpid(), signal.SIGKILL)
''')
    toy.write_day(2, extra_tests='''

def test_hang():
    import pathlib, subprocess, time
    child = subprocess.Popen(["sleep", "60"])
    (pathlib.Path(__file__).resolve().parents[2] / "child.pid").write_text(str(child.pid))
    time.sleep(60)
''')
    toy.write_day(3)
    crashed = run_gate(toy.project, 1, "sha256:1", servers=servers)
    assert not crashed.passed and crashed.exit_status == -9
    # 20 s: room for pytest to start on a busy machine before the test hangs
    hung = run_gate(toy.project, 2, "sha256:2", servers=servers, timeout=20)
    assert not hung.passed and hung.exit_status == -1 and "timed out after 20 s" in hung.output_tail
    child = int((toy.root / "child.pid").read_text())
    deadline = time.monotonic() + 1  # killpg has been sent; give the kernel a moment to deliver it
    while pid_alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not pid_alive(child), "the hung gate's child process survived its timeout"
    after = run_gate(toy.project, 3, "sha256:3", servers=servers)
    assert after.passed and len(servers._all) == 1


def test_publish_goes_warm_only_when_a_worker_has_a_second_gate(toy):
    """Three days on one job: one gate server, its import time reported; two days on two jobs:
    cold gates, as `pytest days/NNN` runs them. Either way every day is gated and passes, and no
    temporary folder or server process is left."""
    for day in (1, 2, 3):
        toy.write_day(day)
    warm = publish(toy.project, PublishOptions(engine="pandoc", jobs=1, render=False))
    assert len(warm.import_seconds) == 1 and [r.passed for r in warm.gated] == [True] * 3
    assert all(r.import_seconds == warm.import_seconds[0] for r in warm.gated)
    toy.write_day(4)
    toy.write_day(5)
    cold = publish(toy.project, PublishOptions(engine="pandoc", jobs=2, render=False))
    assert cold.import_seconds == [] and [r.unit for r in cold.gated] == [4, 5]
    assert all(r.passed and r.import_seconds == 0 for r in cold.gated)
    assert not list((toy.root / ".gate" / "tmp").glob("gate-*"))


def test_the_libraries_to_preimport_exist():
    """Every module the gate servers import first is installed, and every preload names a function
    (a stale name would silently make every warm gate pay the import itself)."""
    missing = [name for name in PREIMPORT if importlib.util.find_spec(name.partition(":")[0].split(".")[0]) is None]
    assert missing == []
    for name in PREIMPORT:
        module, _, function = name.partition(":")
        assert not function or callable(getattr(importlib.import_module(module), function))


SMOLLM2_DAY = textwrap.dedent('''

    import pytest
    from checks.models import hooked_model

    {marker}
    def test_uses_smollm2():
        """SmolLM2 through checks.models, with or without declaring its asset."""
        assert hooked_model("smollm2").cfg.n_layers == 30
    ''')


def test_a_preloaded_model_is_still_seen_by_the_asset_guard(toy, monkeypatch):
    """The servers load SmolLM2 once for every gate; a gate that uses it without declaring its asset
    still fails, as it fails cold, and one that declares it passes, warm and cold alike."""
    assets = Path(__file__).resolve().parents[2].parent / "shared" / "assets"
    monkeypatch.setenv("ARENA_ASSETS", os.environ.get("ARENA_ASSETS", str(assets)))
    monkeypatch.setenv("ARENA_GATE_PREIMPORT", "beartype,pytest,pipeline.gate_server:preload_smollm2")
    toy.write_day(1, extra_tests=SMOLLM2_DAY.format(marker='@pytest.mark.asset("smollm2-135m-instruct")'))
    toy.write_day(2, extra_tests=SMOLLM2_DAY.format(marker=""))
    processes = GateProcesses()
    pool = GateServers(toy.project, processes)
    try:
        warm = [run_gate(toy.project, day, f"sha256:{day}", processes=processes, servers=pool) for day in (1, 2)]
    finally:
        pool.close()
    cold = [run_gate(toy.project, day, f"sha256:{day}") for day in (1, 2)]
    assert [_comparable(r) for r in warm] == [_comparable(r) for r in cold]
    assert warm[0].passed and not warm[1].passed and "smollm2-135m-instruct" in warm[1].output_tail
    assert warm[0].import_seconds > 0.5  # the model was loaded in the server, not in the gate


def test_a_real_day_passes_warm_as_it_passes_cold(monkeypatch, measure):
    """Day 001 gated warm, with the real list of libraries imported first: the same tests pass as
    when it is gated cold, and the warm gate is faster by at least part of the import time."""
    monkeypatch.delenv("ARENA_GATE_PREIMPORT", raising=False)
    project = Project.at(Path(__file__).resolve().parents[2])
    processes = GateProcesses()
    pool = GateServers(project, processes)
    try:
        warm = run_gate(project, 1, "sha256:warm", processes=processes, servers=pool)
    finally:
        pool.close()
    cold = run_gate(project, 1, "sha256:cold")
    measure("day1.warm_seconds", warm.wall_seconds)
    measure("day1.cold_seconds", cold.wall_seconds)
    measure("server.import_seconds", warm.import_seconds)
    assert warm.passed and cold.passed and _comparable(warm)[:3] == _comparable(cold)[:3]
    assert warm.import_seconds > 1.0 and warm.wall_seconds < cold.wall_seconds
