"""Staging: placeholders resolve to measured numbers and tested code; a hole in a post is an error."""

import textwrap
from datetime import date

import pytest

from pipeline.gate import GateResult
from pipeline.stage import StageError, escape_markdown, format_number, read_post, stage_post, sync_staged

GATE = GateResult(
    unit=5, fingerprint="sha256:0123456789abcdef", checked_at="2026-03-05T10:00:00+00:00", wall_seconds=2.5,
    exit_status=0, counts={"passed": 3},
    tests=[
        {"nodeid": "days/005/test_toy.py::test_add", "outcome": "passed", "duration_s": 0.1,
         "doc": "add(2, 2) is four, checked against the built-in sum.",
         "measured": [{"name": "sum", "value": 4, "bound": "= 4"}], "message": None},
        {"nodeid": "days/005/test_toy.py::test_err[a_b]", "outcome": "passed", "duration_s": 0.1,
         "doc": "Error of x_i * y_i below 1e-12 | tight.", "measured": [{"name": "err", "value": 3.2e-16}], "message": None},
        {"nodeid": "days/005/test_toy.py::test_err[c]", "outcome": "passed", "duration_s": 0.1,
         "doc": "Error of x_i * y_i below 1e-12 | tight.", "measured": [{"name": "err", "value": 1.1e-16}], "message": None},
    ])


def stage(toy, body: str):
    toy.write_day(5, post_body=textwrap.dedent(body))
    return stage_post(toy.project, toy.ledger()[5], GATE, date(2026, 3, 5))


def staged_text(post) -> str:
    return post.files["index.qmd"].decode()


@pytest.mark.parametrize("value, spec, text", [
    (0.123456, None, "0.1235"), (3.2e-16, None, "3.20e-16"), (124439808, None, "124,439,808"),
    (0.98, ".1%", "98.0%"), (2.0, ".2f", "2.00"), (0.0, None, "0"), (12345678.9, None, "1.23e+07"), ("n/a", None, "n/a"),
])
def test_number_formatting(value, spec, text):
    assert format_number(value, spec) == text


def test_placeholders_resolve_to_results_gate_and_code(toy):
    """result (nested keys, list indexes, formats), measured and code placeholders all resolve."""
    post = stage(toy, """\
        A {{< result headline.value fmt=.3f >}}, B {{< result headline.runs.2 >}}, C {{< measured sum >}}.

        {{< code toy.py add >}}

        {{< code toy.py Box.area >}}

        ![fig](figures/plot.png)

        {{< verified >}}
        """)
    text = staged_text(post)
    assert "A 0.123, B 3, C 4." in text
    assert '```python\ndef add(a, b):\n    """Return a + b."""\n    return a + b\n```' in text
    assert "```python\ndef area(self, w, h):\n    return w * h\n```" in text
    assert "{{<" not in text
    assert post.files["figures/plot.png"] == (toy.day_dir(5) / "figures/plot.png").read_bytes()
    front, _ = read_post_text(text)
    assert front["date"] == "2026-03-05" and front["day"] == 5
    assert front["categories"] == ["toys", "Fundamentals"]
    assert front["arena"] == toy.ledger()[5].arena == "0.1 Ray Tracing"


def read_post_text(text):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.qmd"
        path.write_text(text)
        return read_post(path)


def test_verified_box_lists_each_test_with_its_measurements(toy):
    """The box names every passed test, its docstring (escaped) and each measured number with its bound."""
    text = staged_text(stage(toy, "Body.\n\n{{< verified >}}\n"))
    assert '::: {.callout-tip .verified title="Verified"}' in text
    assert "**3 tests passed** in 2.5 s (`pytest days/005`, gated 2026-03-05, fingerprint `0123456789ab`)" in text
    assert "| `test_add` | add(2, 2) is four, checked against the built-in sum. | `sum` = 4 (= 4) |" in text
    assert "| `test_err` ×2 | Error of x\\_i \\* y\\_i below 1e-12 \\| tight. | `err[a_b]` = 3.20e-16<br>`err[c]` = 1.10e-16 |" in text


def test_verified_box_is_appended_when_the_post_has_none(toy):
    text = staged_text(stage(toy, "Just prose.\n"))
    assert text.rstrip().endswith(":::") and "## Verified" in text


@pytest.mark.parametrize("body, message", [
    ("{{< result headline.missing >}}", r"line 1: \{\{< result headline.missing >\}\}: results.json has no 'headline.missing'"),
    ("x\n{{< measured nope >}}", r"line 2: .*the gate measured no 'nope' \(measured: err, sum\)"),
    ("{{< code toy.py subtract >}}", "toy.py defines no 'subtract'"),
    ("{{< code ../../pipeline/stage.py >}}", "no file '../../pipeline/stage.py' under days/"),
    ("{{< chart x >}}", "unknown placeholder kind 'chart'"),
    ("{{< result headline.value fmt=.2q >}}", "format '.2q' does not apply"),
    ("![gone](figures/missing.png)", "figure 'figures/missing.png' not found"),
    ("{{< result >}}", "missing argument"),
])
def test_unresolvable_placeholders_are_errors_naming_the_post(toy, body, message):
    """Every way a post can have a hole is a StageError that names days/NNN/post.qmd and the cause."""
    with pytest.raises(StageError, match=message) as info:
        stage(toy, body)
    assert "days/005/post.qmd" in str(info.value)


def test_front_matter_is_required(toy):
    toy.write_day(5)
    (toy.day_dir(5) / "post.qmd").write_text("---\ntitle: x\n---\nbody\n")
    with pytest.raises(StageError, match="front matter lacks description, categories"):
        stage_post(toy.project, toy.ledger()[5], GATE, date(2026, 3, 5))
    (toy.day_dir(5) / "post.qmd").write_text("no front matter\n")
    with pytest.raises(StageError, match="no YAML front matter"):
        stage_post(toy.project, toy.ledger()[5], GATE, date(2026, 3, 5))


def test_markdown_escaping():
    assert escape_markdown("a_b *c* [d] $x$ |e|  <f>") == "a\\_b \\*c\\* \\[d\\] \\$x\\$ \\|e\\| \\<f\\>"


def test_sync_writes_only_differences_and_removes_unpublished_posts(toy):
    """site/posts/ ends up holding exactly the staged posts; a second sync changes nothing."""
    post = stage(toy, "Body.\n")
    stale = toy.root / "site/posts/day-099-old/index.qmd"
    stale.parent.mkdir(parents=True)
    stale.write_text("old")
    assert sync_staged(toy.project, [post]) is True
    names = sorted(p.relative_to(toy.root / "site/posts").as_posix() for p in (toy.root / "site/posts").rglob("*") if p.is_file())
    assert names == ["_metadata.yml", f"{post.slug}/index.qmd"]
    before = toy.snapshot()
    assert sync_staged(toy.project, [post]) is False
    assert toy.snapshot() == before
    assert sync_staged(toy.project, []) is True
    assert not any((toy.root / "site/posts").glob("day-*"))
