"""Staging: placeholders resolve to measured numbers and tested code; a hole in a post is an error."""

import textwrap
from datetime import date

import pytest

from pipeline.gate import GateResult
from pipeline.stage import (StageError, canonical_categories, escape_markdown, format_number, read_post, stage_post,
                            sync_staged)

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


def stage(toy, body: str, published=None):
    toy.write_day(5, post_body=textwrap.dedent(body))
    return stage_post(toy.project, toy.ledger()[5], GATE, date(2026, 3, 5), published)


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
    ("{{< result headline.missing >}}", r"post.qmd, line 7: \{\{< result headline.missing >\}\}: results.json has no 'headline.missing'"),
    ("x\n{{< measured nope >}}", r"post.qmd, line 8: .*the gate measured no 'nope' \(measured: err, sum\)"),
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


# The body of a toy post starts on line 7 of its post.qmd (five lines of front matter, one blank).
FIRST_LINE = 7


def test_images_are_found_in_pandocs_tree_even_with_brackets_in_the_alt_text(toy):
    """An alt text holding ']' (as '[P] previous-token' in the capstone) hides nothing: the figure
    is copied when present, and its absence is an error naming the source line."""
    post = stage(toy, "Intro.\n\n![Heads: [P] previous, [D] current.](figures/plot.png){#fig-grid}\n")
    assert "figures/plot.png" in post.files
    body = "Intro.\n\n![Heads: [P] previous, [D] current.](figures/grid.png){#fig-grid}\n"
    with pytest.raises(StageError, match=rf"days/005/post.qmd, line {FIRST_LINE + 2}: figure 'figures/grid.png' not found"):
        stage(toy, body)


def test_code_in_backticks_is_not_mistaken_for_an_image(toy):
    """'![x](nowhere.png)' inside a code span or block is text, not a figure to find."""
    post = stage(toy, "Write `![x](nowhere.png)` for a figure.\n\n```markdown\n![y](gone.png)\n```\n")
    assert set(post.files) == {"index.qmd"}


def test_errors_after_an_expanded_code_block_name_the_source_line(toy):
    """A code placeholder expands into many staged lines; an error further down still names the
    line of post.qmd, not of the staged copy."""
    body = "{{< code toy.py add >}}\n\ntext\n\n::: {.callout-note}\nnever closed\n"
    with pytest.raises(StageError, match=rf"days/005/post.qmd, line {FIRST_LINE + 4}: pandoc: Div at line"):
        stage(toy, body)
    body = "{{< code toy.py Box >}}\n\nprose\n\n```python\nx = 1\n"
    with pytest.raises(StageError, match=rf"line {FIRST_LINE + 4}: this code fence is never closed"):
        stage(toy, body)
    with pytest.raises(StageError, match=rf"line {FIRST_LINE + 2}: .*not closed"):
        stage(toy, "a\n\n{{< result headline.value\n")


def test_inline_code_placeholder_names_the_code_inside_the_sentence(toy):
    """{{< code f.py sym >}} inside a sentence stays in the sentence (no block mid-paragraph)."""
    text = staged_text(stage(toy, "Every analysis ({{< code toy.py add >}}) takes a model.\n"))
    assert "Every analysis (`toy.add`) takes a model." in text
    assert "```python" not in text.split("::: {.callout-tip")[0]


def test_links_between_posts_land_on_published_posts_or_become_text(toy):
    """[text](day:N) points at day N's post when it is published, and is plain text otherwise;
    a bad day number is an error; a hand-written link to another post's folder is refused."""
    body = "See [day 2](day:2), [the capstone](capstone:#part-1) and [day 3](day:3).\n"
    text = staged_text(stage(toy, body, published={2: "day-002-two", "capstone": "capstone-x"}))
    assert "[day 2](../day-002-two/index.html)" in text
    assert "[the capstone](../capstone-x/index.html#part-1)" in text
    assert '[day 3]{.unpublished title="day 003 is not published"}' in text
    with pytest.raises(StageError, match=rf"line {FIRST_LINE}: link \(day:101\): day 101 is out of range"):
        stage(toy, "See [x](day:101).\n")
    with pytest.raises(StageError, match=rf"line {FIRST_LINE + 1}: link '../day-002-two/index.html' leaves the post"):
        stage(toy, "a\nSee [x](../day-002-two/index.html).\n")


def test_local_links_must_exist_and_travel_with_the_post(toy):
    """A link to a file of the day (the raw numbers) is copied beside the post; a missing one is an error."""
    post = stage(toy, "The [raw numbers](results.json) and [a site](https://example.org).\n")
    assert post.files["results.json"] == (toy.day_dir(5) / "results.json").read_bytes()
    with pytest.raises(StageError, match="link 'data.csv' not found in days/005/"):
        stage(toy, "The [data](data.csv).\n")


def test_categories_are_one_per_case_insensitive_slug(toy):
    """'fundamentals' and the module category 'Fundamentals' are one category, in one spelling."""
    one = stage(toy, "Body.\n")
    assert one.meta["categories"] == ["toys", "Fundamentals"]
    two = stage(toy, "Body.\n")
    two.meta["categories"] = ["fundamentals", "Toys", "toys"]
    three = stage(toy, "Body.\n")
    three.meta["categories"] = ["TOYS"]
    canonical_categories([one, two, three])
    assert one.meta["categories"] == ["toys", "Fundamentals"]
    assert two.meta["categories"] == ["Fundamentals", "toys"]
    assert three.meta["categories"] == ["toys"]
