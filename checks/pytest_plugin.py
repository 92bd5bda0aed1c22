"""The project's pytest plugin: markers, the `measure` and `asset` fixtures, and gate reports.

- ``measure(name, value, bound=None)`` records a number a test measured (an error reached, an
  accuracy, a timing). It travels with the test's report (``user_properties``, so it survives
  pytest-xdist) into the gate report, the ledger and the post's "Verified" box.
- ``asset(name)`` returns the path of an offline asset (see checks/assets.py);
  ``@pytest.mark.asset("mnist")`` declares the need up front. Missing: a skip with a hint for a
  learner, a failure in CI and in gate runs (checks/requirements.py). A test that resolves an
  asset it did not declare (directly, through a fixture or a model loader) fails, even where the
  asset is present: otherwise it would fail instead of skipping on a machine without it.
- ``@pytest.mark.browser`` declares that a test drives a headless Chromium.
- ``committed`` is the unit's ``results.json`` (what its experiment committed). A test that uses
  it is marked ``committed`` and compares through checks/committed.py with a tolerance derived
  from the computation; CI runs ``-m committed`` once more on the portable CPU kernels.
- ``--gate-report PATH`` writes every test's outcome, duration, docstring and measurements as
  JSON: what ``invoke publish`` records for each day.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest

from . import assets as _assets
from .requirements import missing

REPORT_VERSION = 1


# ---------------------------------------------------------------- measurements


class Measure:
    """Record the numbers a test measured; see the module docstring."""

    def __init__(self, item: pytest.Item):
        self._item = item

    def __call__(self, name: str, value, bound: str | None = None):
        if hasattr(value, "item") and callable(value.item):  # tensors and numpy scalars
            value = value.item()
        if not isinstance(value, (int, float, str, bool)):
            raise TypeError(f"measure({name!r}): value must be a number or a string, got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            value = repr(value)  # JSON has no NaN/inf
        entry = {"name": name, "value": value}
        if bound is not None:
            entry["bound"] = str(bound)
        self._item.user_properties.append(("measured", entry))
        return value

    def parity(self, report, name: str | None = None):
        """Record a checks.parity.ParityReport: its worst absolute and relative errors."""
        key = name or report.name or "parity"
        self(f"{key}.max_abs_err", report.max_abs_err, f"≤ {report.atol:g}" + (
            f" + {report.rtol:g}·|ref|" if report.rtol else ""))
        self(f"{key}.max_rel_err", report.max_rel_err)
        return report

    def grad(self, report, name: str | None = None):
        """Record a checks.gradcheck.GradCheckReport."""
        key = name or f"gradcheck.{report.function}"
        self(f"{key}.max_abs_err", report.max_abs_err, f"≤ {report.atol:g} + {report.rtol:g}·|numeric|")
        self(f"{key}.n_checked", report.n_checked)
        return report


@pytest.fixture
def measure(request) -> Measure:
    """Record a measured number for the gate report and the post's Verified box."""
    return Measure(request.node)


@pytest.fixture
def one_thread():
    """Run the test on one torch/BLAS thread (tiny tensors; stable timings). Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")`` for a whole module."""
    from .timing import single_thread

    with single_thread():
        yield


@pytest.fixture(scope="module")
def committed(request) -> dict:
    """The test module's unit's ``results.json``: the numbers its experiment committed.

    Compare recomputed numbers with ``checks.committed.assert_reproduces`` and a tolerance that
    says why it holds on another CPU (see checks/committed.py)."""
    path = Path(str(request.module.__file__)).parent / "results.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        pytest.fail(f"{path} is missing: run the unit's experiment (`invoke experiment N`)", pytrace=False)
    except ValueError as exc:
        pytest.fail(f"{path} is not valid JSON: {exc}", pytrace=False)


@pytest.fixture
def asset(request):
    """``asset(name) -> Path``: an offline asset, or a skip (a failure in CI and gates)."""
    def get(name: str) -> Path:
        request.node.stash.setdefault(_DECLARED, set()).add(name)  # asking is declaring
        try:
            return _assets.resolve(name)
        except _assets.AssetMissing as exc:
            missing(f"asset {name!r}", str(exc))
    return get


# ---------------------------------------------------------------- configuration


def pytest_addoption(parser):
    group = parser.getgroup("arena", "arena-mechanistic-learning")
    group.addoption("--gate-report", metavar="PATH", default=None,
                    help="write a JSON report of outcomes and measured numbers (used by `invoke publish`)")


def pytest_configure(config):
    for line in (
        "slow: long experiments (training runs); left out by default, run with `pytest -m slow`",
        "asset(*names): needs these offline assets; skipped with a hint when missing, failed in CI and in gates",
        "browser: needs a headless Chromium; skipped with a hint when missing, failed in CI",
        "committed: compares numbers committed in results.json (set automatically by the `committed` fixture)",
        "asset_resolver: tests of checks/assets.py itself; the undeclared-asset guard is off",
    ):
        config.addinivalue_line("markers", line)
    if config.getoption("--gate-report"):
        # Gate runs make claims: a missing asset fails instead of skipping (also in xdist workers).
        os.environ["ARENA_GATE"] = "1"
    if not hasattr(config, "workerinput"):  # the controller (or the only process) writes the report
        config._arena_recorder = _Recorder(config)
        config.pluginmanager.register(config._arena_recorder, "arena-recorder")


def pytest_collection_modifyitems(items):
    for item in items:
        if "committed" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.committed)


def pytest_itemcollected(item):
    doc = getattr(getattr(item, "function", None), "__doc__", None)
    if doc:
        first = " ".join(doc.strip().split("\n\n")[0].split())
        item.user_properties.append(("doc", first))


_DECLARED = pytest.StashKey[set]()


def _declared(item) -> set[str]:
    names = item.stash.setdefault(_DECLARED, set())
    for mark in item.iter_markers("asset"):
        names.update(mark.args)
    return names


def _guard_assets(item):
    """Fail the test at the first asset it resolves without having declared it (except in the
    resolver's own tests, marked ``asset_resolver``, which resolve fake assets in temporary roots)."""
    def check(name: str) -> None:
        if name not in _declared(item) and not item.get_closest_marker("asset_resolver"):
            pytest.fail(f"{item.nodeid} uses asset {name!r} without declaring it: add "
                        f"@pytest.mark.asset({name!r}) to the test (or `pytestmark` of its module), "
                        f"so that it is skipped with a hint where the asset is missing", pytrace=False)
    return check


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    _check_requirements(item)          # declared assets and the browser: skip (or fail) up front
    _assets.watch(_guard_assets(item))
    try:
        return (yield)                 # fixtures run here: what they resolve must be declared too
    finally:
        _assets.watch(None)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    _assets.watch(_guard_assets(item))
    try:
        return (yield)
    finally:
        _assets.watch(None)


def _check_requirements(item):
    for mark in item.iter_markers("asset"):
        for name in mark.args:
            try:
                _assets.resolve(name)
            except _assets.AssetMissing as exc:
                missing(f"asset {name!r}", str(exc))
    if item.get_closest_marker("browser"):
        from .browser import find_chromium

        if find_chromium() is None:
            missing("browser", "no Chromium found (set CHROMIUM=/path/to/chromium or "
                               "`apt-get install -y chromium`)")


# ---------------------------------------------------------------- the gate report


class _Recorder:
    """Collects outcomes and measurements on the controller and writes the gate report."""

    def __init__(self, config):
        self.config = config
        self.path = config.getoption("--gate-report")
        self.tests: dict[str, dict] = {}
        self.collect_errors: list[dict] = []
        self.started = time.time()

    def _entry(self, report) -> dict:
        entry = self.tests.setdefault(report.nodeid, {
            "nodeid": report.nodeid, "outcome": "passed", "duration_s": 0.0,
            "doc": None, "measured": [], "message": None})
        for key, value in getattr(report, "user_properties", []):
            if key == "doc":
                entry["doc"] = value
            elif key == "measured" and value not in entry["measured"]:
                entry["measured"].append(value)
        return entry

    @staticmethod
    def _message(report) -> str:
        crash = getattr(getattr(report, "longrepr", None), "reprcrash", None)
        if crash is not None:
            return crash.message[:1000]
        if isinstance(report.longrepr, tuple):  # skips: (file, line, reason)
            return str(report.longrepr[2])[:1000]
        return str(report.longreprtext)[-1000:]

    def pytest_runtest_logreport(self, report):
        entry = self._entry(report)
        entry["duration_s"] = round(entry["duration_s"] + report.duration, 6)
        if report.when == "call" or report.outcome != "passed":
            if report.failed:
                # A failure in setup or teardown is an error, in the call a failure.
                entry["outcome"] = "failed" if report.when == "call" else "error"
                entry["message"] = self._message(report)
            elif report.skipped:
                xfail = hasattr(report, "wasxfail")
                entry["outcome"] = "xfailed" if xfail else "skipped"
                entry["message"] = report.wasxfail if xfail else self._message(report)
            elif report.when == "call":
                entry["outcome"] = "xpassed" if hasattr(report, "wasxfail") else "passed"

    def pytest_collectreport(self, report):
        if report.failed:
            self.collect_errors.append({"nodeid": report.nodeid, "message": str(report.longreprtext)[-2000:]})

    def pytest_sessionfinish(self, session, exitstatus):
        if not self.path:
            return
        counts: dict[str, int] = {}
        for entry in self.tests.values():
            counts[entry["outcome"]] = counts.get(entry["outcome"], 0) + 1
        report = {
            "version": REPORT_VERSION,
            "exit_status": int(exitstatus),
            "duration_s": round(time.time() - self.started, 3),
            "counts": counts,
            "collect_errors": self.collect_errors,
            "tests": sorted(self.tests.values(), key=lambda e: e["nodeid"]),
        }
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(report, indent=1, sort_keys=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
