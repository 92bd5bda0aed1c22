"""`invoke publish` end to end on a throwaway project with small real days."""

import re
import shutil
import time
from datetime import date

import pytest

from pipeline.ledger import LedgerError
from pipeline.project import DayNumberError
from pipeline.publish import PublishOptions, days_arg, plan, publish
from pipeline.readme import ReadmeError
from pipeline.render import RenderError
from pipeline.stage import StageError

PANDOC = PublishOptions(engine="pandoc", jobs=2)


def badge(toy, label: str) -> str:
    readme = (toy.root / "README.md").read_text()
    match = re.search(rf"\[!\[{label}\]\(https://img\.shields\.io/badge/[^-]+(?:--[^-]*)*-(.+?)-[a-z]+\?", readme)
    return match.group(1).replace("%2F", "/").replace("%20", " ").replace("%2C", ",")


def listed_posts(toy) -> list[str]:
    index = (toy.root / "site/_site/index.html").read_text()
    return re.findall(r'<h3 class="listing-title"><a href="[^"]+">([^<]+)</a>', index)


def test_publish_from_scratch_gates_records_stages_and_renders(toy):
    """Two new days: both gated, recorded as passed with their counts, README badges updated,
    posts staged with every placeholder resolved, and the site lists both."""
    toy.write_day(1)
    toy.write_day(2)
    summary = publish(toy.project, PANDOC)
    assert [r.unit for r in summary.gated] == [1, 2] and all(r.passed for r in summary.gated)
    ledger = toy.ledger()
    for day in (1, 2):
        e = ledger[day]
        assert (e.status, e.tests_passed, e.tests_failed) == ("passed", 2, 0)
        assert e.first_passed == date.today() and e.fingerprint.startswith("sha256:") and e.gate_seconds > 0
    assert ledger[3].status == "not-started"
    assert badge(toy, "Days Complete") == "2/100" and badge(toy, "Blog Posts") == "2"
    assert badge(toy, "Tests") == "4 passed"
    staged = (toy.root / "site/posts/day-001-pytorch-einops-einsum/index.qmd").read_text()
    assert "The gate measured 4; the experiment gave 0.123." in staged
    assert listed_posts(toy) == ["Toy day 2", "Toy day 1"]
    assert summary.rendered and summary.engine == "pandoc"


def test_publish_twice_with_nothing_changed_changes_nothing(toy):
    """The second run gates nothing, writes no file (bytes and mtimes identical) and takes seconds."""
    toy.write_day(1)
    publish(toy.project, PANDOC)
    before = toy.snapshot()
    start = time.perf_counter()
    summary = publish(toy.project, PANDOC)
    elapsed = time.perf_counter() - start
    assert summary.gated == [] and not (summary.ledger_written or summary.readme_written
                                        or summary.staged_changed or summary.rendered)
    assert toy.snapshot() == before
    assert elapsed < 5, f"an unchanged publish took {elapsed:.1f} s"


def test_a_broken_day_disappears_from_the_site_and_the_badges_then_returns(toy):
    """Breaking day 2 makes it failing: gone from site/posts, the listing and the badges; fixing it
    brings it back with its original first-passed date."""
    toy.write_day(1)
    toy.write_day(2)
    publish(toy.project, PANDOC)
    first = toy.ledger()[2].first_passed

    toy.write_day(2, failing=True)
    summary = publish(toy.project, PANDOC)
    assert [(r.unit, r.passed) for r in summary.gated] == [(2, False)]
    e = toy.ledger()[2]
    assert (e.status, e.tests_passed, e.tests_failed) == ("failing", 1, 1)
    assert "test_add" in summary.gated[0].failure_summary()
    assert not (toy.root / "site/posts/day-002-tensor-manipulation-linear-algebra-in-code").exists()
    assert listed_posts(toy) == ["Toy day 1"]
    assert badge(toy, "Days Complete") == "1/100" and badge(toy, "Blog Posts") == "1"
    assert badge(toy, "Tests") == "3 passed, 1 failed"

    toy.write_day(2)
    publish(toy.project, PANDOC)
    assert toy.ledger()[2].status == "passed" and toy.ledger()[2].first_passed == first
    assert listed_posts(toy) == ["Toy day 2", "Toy day 1"]


def test_a_changed_day_that_is_not_regated_is_stale_and_unpublished(toy):
    """With --days restricting the gate, a passed day whose files changed becomes stale and leaves the blog."""
    toy.write_day(1)
    toy.write_day(2)
    publish(toy.project, PANDOC)
    (toy.day_dir(1) / "toy.py").write_text((toy.day_dir(1) / "toy.py").read_text() + "\n# edited\n")
    summary = publish(toy.project, PublishOptions(engine="pandoc", only=[2]))
    assert summary.gated == []
    assert toy.ledger()[1].status == "stale" and summary.published == [2]
    assert listed_posts(toy) == ["Toy day 2"]
    assert badge(toy, "Days Complete") == "1/100"
    publish(toy.project, PANDOC)  # without the restriction it is gated again and returns
    assert toy.ledger()[1].status == "passed" and listed_posts(toy) == ["Toy day 2", "Toy day 1"]


def test_a_deleted_day_is_not_started_again(toy):
    toy.write_day(1)
    publish(toy.project, PANDOC)
    shutil.rmtree(toy.day_dir(1))
    publish(toy.project, PANDOC)
    e = toy.ledger()[1]
    assert (e.status, e.fingerprint, e.tests_passed) == ("not-started", None, 0)
    assert listed_posts(toy) == []


def test_gate_all_regates_unchanged_days(toy):
    toy.write_day(1)
    publish(toy.project, PANDOC)
    summary = publish(toy.project, PublishOptions(engine="pandoc", all=True))
    assert [r.unit for r in summary.gated] == [1]


def test_slow_tests_are_left_out_of_the_gate(toy):
    """A `slow` test (a long experiment) does not run in the gate, as in the default `pytest`."""
    toy.write_day(1, extra_tests='''
        import pytest

        @pytest.mark.slow
        def test_long_training():
            raise AssertionError("a slow test ran in the gate")
        ''')
    summary = publish(toy.project, PANDOC)
    assert summary.gated[0].passed and summary.gated[0].n_passed == 2


def test_a_missing_asset_fails_the_gate_instead_of_skipping(toy, monkeypatch):
    """In a gate, a test whose asset is absent fails: a day is never 'passed' on skips."""
    monkeypatch.setenv("ARENA_ASSETS", str(toy.root / "no-assets"))
    monkeypatch.setenv("ARENA_CACHE", str(toy.root / "no-cache"))
    monkeypatch.setenv("ARENA_OFFLINE", "1")
    toy.write_day(1, extra_tests='''
        def test_needs_text(asset):
            """Reads Tiny Shakespeare."""
            assert asset("tinyshakespeare").stat().st_size > 0
        ''')
    summary = publish(toy.project, PANDOC)
    result = summary.gated[0]
    assert not result.passed and toy.ledger()[1].status == "failing"
    assert "missing asset 'tinyshakespeare'" in result.failure_summary()


def test_corrupt_ledger_stops_publish_and_touches_nothing(toy):
    """A broken progress.yml is reported and every file (ledger, README, site) stays as it was."""
    toy.write_day(1)
    publish(toy.project, PANDOC)
    ledger_path = toy.root / "progress.yml"
    ledger_path.write_text(ledger_path.read_text().replace("status: passed", "status: finished", 1))
    (toy.day_dir(1) / "toy.py").write_text("# changed, so a publish would re-gate\n" + (toy.day_dir(1) / "toy.py").read_text())
    before = toy.snapshot()
    with pytest.raises(LedgerError, match="day 1: 'status' is 'finished'"):
        publish(toy.project, PANDOC)
    assert toy.snapshot() == before


def test_failed_render_keeps_the_previous_site(toy):
    """If the engine fails, site/_site is the previous render, byte for byte, with no debris."""
    toy.write_day(1)
    publish(toy.project, PANDOC)
    site = {p.relative_to(toy.root): p.read_bytes() for p in (toy.root / "site/_site").rglob("*") if p.is_file()}
    (toy.root / "templates/site/page.html.j2").write_text("{% for broken %}")
    toy.write_day(2)
    with pytest.raises(RenderError, match="pandoc render failed: TemplateSyntaxError"):
        publish(toy.project, PANDOC)
    after = {p.relative_to(toy.root): p.read_bytes() for p in (toy.root / "site/_site").rglob("*") if p.is_file()}
    assert after == site
    assert sorted(p.name for p in (toy.root / "site").iterdir() if p.name.startswith("_site")) == ["_site"]


def test_a_post_with_a_hole_stops_publish_before_the_site_changes(toy):
    """An unresolvable placeholder stops publishing at staging; the staged posts and site stay as they were."""
    toy.write_day(1)
    publish(toy.project, PANDOC)
    site_before = {p: p.read_bytes() for p in (toy.root / "site").rglob("*") if p.is_file()}
    toy.write_day(2, post_body="{{< result no.such.key >}}\n")
    with pytest.raises(StageError, match="days/002/post.qmd, line 7"):  # the line in post.qmd itself
        publish(toy.project, PANDOC)
    assert {p: p.read_bytes() for p in (toy.root / "site").rglob("*") if p.is_file()} == site_before


def test_readme_without_markers_is_a_clear_error(toy):
    (toy.root / "README.md").write_text("# A README someone rewrote\n")
    with pytest.raises(ReadmeError, match="generated section 'badges'"):
        publish(toy.project, PANDOC)


def test_plan_explains_why_each_day_is_gated(toy):
    toy.write_day(1)
    toy.write_day(2)
    publish(toy.project, PANDOC)
    (toy.day_dir(2) / "post.qmd").write_text((toy.day_dir(2) / "post.qmd").read_text() + "\nMore.\n")
    (toy.root / ".gate/001.json").unlink()
    toy.write_day(3)
    reasons = {p.unit: p.reason for p in plan(toy.project, toy.ledger()) if p.exists}
    assert reasons == {1: "no cached gate result", 2: "files changed", 3: "never gated"}


def test_the_capstone_is_a_unit_gated_recorded_and_published_like_a_day(toy):
    """capstone/ is gated with the days, recorded in the ledger's capstone entry, shown in the
    README tracker and log, and its report is published only while its tests pass."""
    toy.write_day(1)
    toy.write_capstone()
    summary = publish(toy.project, PANDOC)
    assert [r.unit for r in summary.gated] == [1, "capstone"] and all(r.passed for r in summary.gated)
    cap = toy.ledger().capstone
    assert (cap.status, cap.tests_passed, cap.tests_failed) == ("passed", 1, 0) and cap.fingerprint
    readme = (toy.root / "README.md").read_text()
    assert re.search(r"\| Capstone \|.*passed \| Complete \|", readme), "the tracker shows the capstone's status"
    assert re.search(r"\| Parts 1–5 \| .*passed \| 1 \| \[capstone/\]", readme), "the log links the folder"
    assert badge(toy, "Days Complete") == "1/100" and badge(toy, "Tests") == "3 passed"
    staged = next((toy.root / "site/posts").glob("capstone-*/index.qmd")).read_text()
    assert "dimension 49,489; energy 0.43." in staged and "Capstone" in staged
    assert set(listed_posts(toy)) == {"The Gauntlet", "Toy day 1"}

    toy.write_capstone(failing=True)
    summary = publish(toy.project, PANDOC)
    assert [r.unit for r in summary.gated] == ["capstone"] and not summary.gated[0].passed
    assert toy.ledger().capstone.status == "failing"
    assert listed_posts(toy) == ["Toy day 1"]
    assert not list((toy.root / "site/posts").glob("capstone-*"))


def test_publish_days_flag_accepts_the_capstone(toy):
    """`--days capstone` gates the capstone alone; a bad unit name is a clear error."""
    toy.write_day(1)
    toy.write_capstone()
    summary = publish(toy.project, PublishOptions(engine="pandoc", jobs=2, only=days_arg("capstone")))
    assert [r.unit for r in summary.gated] == ["capstone"]
    assert days_arg("2,capstone,1") == [1, 2, "capstone"] or days_arg("2,capstone,1") == [2, "capstone", 1]
    with pytest.raises(DayNumberError, match="capstone"):
        days_arg("capstan")


def test_a_fresh_clone_regates_everything_and_leaves_the_committed_files_as_they_were(toy):
    """A clone has no gate cache: publish gates every passed day again (the posts need their
    Verified boxes), and when each gate confirms the ledger, progress.yml and the README keep their
    bytes, so the README's set-up command leaves a clean git tree."""
    toy.write_day(1)
    toy.write_day(2)
    publish(toy.project, PANDOC)
    committed = {name: (toy.root / name).read_bytes() for name in ("progress.yml", "README.md")}
    shutil.rmtree(toy.root / ".gate")
    shutil.rmtree(toy.root / "site" / "_site")
    summary = publish(toy.project, PANDOC)
    assert sorted(r.unit for r in summary.gated) == [1, 2] and all(r.passed for r in summary.gated)
    assert summary.published == [1, 2] and summary.rendered
    assert not summary.ledger_written and not summary.readme_written
    assert {name: (toy.root / name).read_bytes() for name in committed} == committed


def test_the_longest_gates_start_first(toy):
    """Gates are handed to the workers longest first, by the ledger's last gate_seconds (a unit never
    timed first of all: it may be long), so a long gate is not left alone at the end while the other
    worker idles (on a fresh clone the capstone was last and the publish ran 1.25 × the test suite)."""
    from pipeline import ledger as ledger_io
    from pipeline.gate import run_gate

    for day in (1, 2, 3, 4):
        toy.write_day(day)
    publish(toy.project, PANDOC)
    ledger = ledger_io.load(toy.project.ledger_path)
    for day, seconds in ((1, 2.0), (2, 9.0), (3, None), (4, 5.0)):
        ledger.entry(day).gate_seconds = seconds
    ledger_io.save(ledger, toy.project.ledger_path)
    started = []

    def recording_gate(project, unit, *args, **kwargs):
        started.append(unit)
        return run_gate(project, unit, *args, **kwargs)

    publish(toy.project, PublishOptions(engine="pandoc", jobs=1, all=True, render=False), gate=recording_gate)
    assert started == [3, 2, 4, 1]
