"""The README's generated sections: badges that agree with the ledger, markers rewritten in place."""

import re
import urllib.parse
from datetime import date, timedelta

import pytest

from pipeline import ledger as ledger_io
from pipeline.project import Project
from pipeline.readme import Badge, ReadmeError, badges, render_sections, replace_sections

from .conftest import REPO


def _ledger(toy, passed=(), failing=()):
    ledger = toy.ledger()
    for day in passed:
        e = ledger[day]
        e.status, e.first_passed, e.fingerprint, e.tests_passed = "passed", date(2026, 3, 1) + timedelta(days=day), f"sha256:{day}", 10 + day
    for day in failing:
        e = ledger[day]
        e.status, e.fingerprint, e.tests_passed, e.tests_failed = "failing", f"sha256:{day}", 4, 2
    return ledger


def _decode(badge_url: str) -> tuple[str, str, str]:
    """Invert shields.io's static-badge encoding: (label, message, color)."""
    path = urllib.parse.urlparse(badge_url).path.removeprefix("/badge/")
    parts = re.split(r"(?<!-)-(?!-)", path)
    label, message, color = (urllib.parse.unquote(p).replace("--", "-").replace("__", "_") for p in parts)
    return label, message, color


def test_badge_urls_follow_shields_escaping():
    """Dashes and underscores are doubled, the rest URL-quoted, so the badge shows the text as given."""
    badge = Badge("Current Module", "0: Fundamentals-ish_x", "blue", "#")
    assert badge.url == ("https://img.shields.io/badge/Current%20Module-0%3A%20Fundamentals--ish__x-blue"
                         "?style=flat-square")
    assert _decode(badge.url) == ("Current Module", "0: Fundamentals-ish_x", "blue")


def test_badges_agree_with_the_ledger(toy):
    """Days complete counts passed days; tests sum the gated days; the current module is the first unpassed day's."""
    ledger = _ledger(toy, passed=range(1, 16), failing=[16])
    shown = {b.label: b.message for b in badges(ledger, n_posts=15)}
    assert shown["Days Complete"] == "15/100"
    assert shown["Blog Posts"] == "15"
    assert shown["Current Module"] == "2: Reinforcement Learning"  # day 16 is in module 2 (RL)
    assert shown["Tests"] == f"{sum(10 + d for d in range(1, 16)) + 4} passed, 2 failed"
    everything = _ledger(toy, passed=range(1, 101))
    assert {b.label: b.message for b in badges(everything, 100)}["Current Module"] == "4: Alignment Science"


def test_replace_sections_only_touches_marked_regions():
    text = "intro\n<!-- generated:badges:start -->\nold\n<!-- generated:badges:end -->\noutro\n"
    assert replace_sections(text, {"badges": "new\n"}) == (
        "intro\n<!-- generated:badges:start -->\nnew\n<!-- generated:badges:end -->\noutro\n")


@pytest.mark.parametrize("text, found", [
    ("no markers at all", "0 start and 0 end"),
    ("<!-- generated:badges:start -->\n<!-- generated:badges:start -->\n<!-- generated:badges:end -->", "2 start and 1 end"),
    ("<!-- generated:badges:end -->\n<!-- generated:badges:start -->", "1 start and 1 end"),
])
def test_broken_markers_are_clear_errors(text, found):
    with pytest.raises(ReadmeError, match=f"section 'badges'.*{found}"):
        replace_sections(text, {"badges": "x\n"})


def test_tracker_and_log_reflect_progress(toy):
    """The tracker counts each module's passed days; the log links started days' folders, posts and ARENA pages."""
    toy.write_day(1)
    toy.write_day(2)
    sections = render_sections(toy.project, _ledger(toy, passed=[1], failing=[2]), n_posts=1)
    assert "| 0 | 1–14 | Fundamentals | `█░░░░░░░░░` 1/14 | In progress |" in sections["tracker"]
    assert "| 2 | 15–29 | Reinforcement Learning | `░░░░░░░░░░` 0/15 | Not started |" in sections["tracker"]
    log = sections["log"]
    assert ("| 1 | PyTorch, einops, einsum | [0.0 Prerequisites](https://learn.arena.education/chapter0_fundamentals/00_prereqs/)"
            " | ✅ passed | 11 | [days/001](days/001/) | [post](days/001/post.qmd) |") in log
    assert "| 2 | Tensor Manipulation + Linear Algebra in Code |" in log and "❌ failing | 4 / 2 failed" in log
    assert "| 95 | Deep Dive: Deceptive Alignment | independent | · |  |  |  |" in log
    assert log.index("Module 0") < log.index("Module 2") < log.index("Module 1")  # the seed's day order


def test_committed_readme_is_in_sync_with_the_committed_ledger():
    """README.md's generated sections are exactly what progress.yml renders (run `invoke publish` to refresh)."""
    project = Project.at(REPO)
    ledger = ledger_io.load(project.ledger_path)
    n_posts = sum(1 for e in ledger.units() if e.status == "passed" and project.post_path(e.key).exists())
    readme = project.readme_path.read_text()
    assert replace_sections(readme, render_sections(project, ledger, n_posts)) == readme, (
        "README.md is out of date with progress.yml: run `invoke publish`")
    shown = {_decode(u)[0]: _decode(u)[1] for u in re.findall(r"\((https://img\.shields\.io/badge/[^)]+)\)", readme)}
    assert shown["Days Complete"] == f"{len(ledger.with_status('passed'))}/100"


def _code_blocks_after(marker_text: str, readme: str) -> list[str]:
    section = readme.split(marker_text, 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", section, re.DOTALL)]


def test_readme_gives_two_commands_and_ci_runs_the_test_command_exactly():
    """The README's set-up is one install-and-publish command and one test command; .ci/run
    installs the same extras and runs exactly the README's test command, then reruns the tests
    of committed numbers on the portable CPU kernels (the guard that they hold on any CPU)."""
    readme = (REPO / "README.md").read_text()
    main_command, test_command = _code_blocks_after("## Set up and run", readme)
    assert main_command == 'python -m pip install -e ".[dev]" && invoke publish'
    assert test_command.split()[0] == "pytest"
    ci = (REPO / ".ci/run").read_text()
    commands = [line.split("#", 1)[0].strip() for line in ci.splitlines() if line.split("#", 1)[0].strip()]
    assert test_command in commands
    guard = commands[commands.index(test_command) + 1:]
    assert len(guard) == 1 and guard[0].startswith("ATEN_CPU_CAPABILITY=default pytest")
    assert '-m "committed and not slow"' in guard[0]
    assert main_command.split(" && ")[0] in commands
    for variable in ("CI=true", "HF_HUB_OFFLINE=1", "HF_DATASETS_OFFLINE=1", "WANDB_MODE=disabled"):
        assert variable in ci
    assert "apt-get install -y chromium" in ci and "ARENA_ASSETS" in ci
