"""Staging: turn each passing unit's post (a day's ``post.qmd``, the capstone's ``report.qmd``)
into a blog post under ``site/posts/``.

A post cites numbers instead of typing them, through placeholders in Quarto's shortcode style
that staging resolves (so both engines, Quarto and pandoc, see plain markdown):

- ``{{< result key.path fmt=.3g >}}``: a value from the day's ``results.json`` (the experiment);
- ``{{< measured name fmt=.2e >}}``: a number the day's gate measured (``measure(name, ...)``);
- ``{{< code file.py symbol >}}``: the source of a function or class, straight from the tested
  implementation (``Class.method`` works too; without a symbol, the whole file);
- ``{{< verified >}}``: the generated "Verified" box (appended at the end if the post has none).

An unknown key, a missing figure or a leftover ``{{<`` is a StageError naming the post and
the placeholder: a post is never published with a hole in it.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import yaml

from .gate import GateResult
from .ledger import DayEntry, Entry
from .project import CAPSTONE, Project, slugify, unit_label

__all__ = ["StageError", "StagedPost", "format_number", "post_slug", "read_post", "stage_post", "sync_staged"]

REQUIRED_FRONT_MATTER = ("title", "description", "categories")
_PLACEHOLDER = re.compile(r"\{\{<\s*(\w+)\s*(.*?)\s*>\}\}")
_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)")


class StageError(ValueError):
    """A post cannot be staged: bad front matter, an unresolvable placeholder, a missing figure."""


@dataclass
class StagedPost:
    unit: object                # a day number, or "capstone"
    slug: str
    title: str
    files: dict[str, bytes] = field(default_factory=dict)  # relative to site/posts/<slug>/


def post_slug(entry: Entry) -> str:
    if entry.key == CAPSTONE:
        return f"capstone-{slugify(entry.title)}"
    return f"day-{entry.day:03d}-{slugify(entry.topic)}"


def read_post(path: Path) -> tuple[dict, str]:
    """Split a .qmd file into (front matter, body); the front matter must be a YAML mapping."""
    text = path.read_text(encoding="utf-8")
    match = re.match(r"^---\s*\n(.*?)\n---\s*\n", text, re.DOTALL)
    if not match:
        raise StageError(f"{path}: no YAML front matter (the file must start with a '---' block)")
    try:
        front = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError as exc:
        raise StageError(f"{path}: front matter is not valid YAML: {exc}") from None
    if not isinstance(front, dict):
        raise StageError(f"{path}: front matter must be a mapping")
    return front, text[match.end():]


def format_number(value, spec: str | None = None) -> str:
    """Format a measured value for prose: ints with separators, floats to 4 significant digits."""
    if spec:
        try:
            return format(value, spec)
        except (TypeError, ValueError) as exc:
            raise StageError(f"format {spec!r} does not apply to {value!r}: {exc}") from None
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}"
        return f"{value:.2e}"
    return str(value)


def _lookup(data, dotted: str, what: str):
    node = data
    for part in dotted.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise KeyError(f"{what} has no {dotted!r} (stuck at {part!r})")
    return node


def _options(args: list[str]) -> tuple[list[str], dict[str, str]]:
    positional, options = [], {}
    for arg in args:
        if "=" in arg:
            key, value = arg.split("=", 1)
            options[key] = value.strip("\"'")
        else:
            positional.append(arg.strip("\"'"))
    return positional, options


def extract_source(path: Path, symbol: str | None) -> str:
    """The source of a top-level function/class (or Class.method) in ``path``, decorators included."""
    source = path.read_text(encoding="utf-8")
    if not symbol:
        return source.rstrip() + "\n"
    tree = ast.parse(source)
    lines = source.splitlines()
    scope: list[ast.stmt] = tree.body
    node = None
    for part in symbol.split("."):
        node = next((n for n in scope if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                     and n.name == part), None)
        if node is None:
            raise KeyError(f"{path.name} defines no {symbol!r}")
        scope = node.body
    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
    block = lines[first - 1: node.end_lineno]
    indent = min(len(l) - len(l.lstrip()) for l in block if l.strip())
    return "\n".join(l[indent:] for l in block).rstrip() + "\n"


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]<>$|#~^])")


def escape_markdown(text: str) -> str:
    """Make plain text (a docstring, a bound) render literally inside a markdown table cell."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(text.split()))


def verified_box(project: Project, entry: Entry, gate: GateResult) -> str:
    """The generated callout listing what the gate ran and the numbers it measured."""
    rows: dict[str, dict] = {}
    for test in gate.tests:
        if test["outcome"] not in ("passed", "xpassed"):
            continue
        name = test["nodeid"].split("::", 1)[-1]
        base = name.split("[", 1)[0]
        row = rows.setdefault(base, {"doc": test.get("doc") or "", "cases": 0, "measured": []})
        row["cases"] += 1
        case = name[len(base):]
        for m in test.get("measured", []):
            text = f"`{m['name']}{case}` = {escape_markdown(format_number(m['value']))}"
            if m.get("bound"):
                text += f" ({escape_markdown(m['bound'])})"
            row["measured"].append(text)
    checked = gate.checked_at[:10]
    skipped = f", {gate.n_skipped} skipped" if gate.n_skipped else ""
    lines = [
        '::: {.callout-tip .verified title="Verified"}',
        f"**{gate.n_passed} tests passed**{skipped} in {gate.wall_seconds:.1f} s "
        f"(`pytest {project.unit_rel(entry.key)}`, gated {checked}, "
        f"fingerprint `{gate.fingerprint.split(':')[-1][:12]}`).",
        "",
        "| Test | What it checks | Measured |",
        "|-------|--------|-------|",  # relative column widths 3:4:3 (pandoc and Quarto)
    ]
    for base, row in rows.items():
        label = f"`{base}`" + (f" ×{row['cases']}" if row["cases"] > 1 else "")
        lines.append(f"| {label} | {escape_markdown(row['doc'])} | {'<br>'.join(row['measured'])} |")
    lines.append(":::")
    return "\n".join(lines) + "\n"


def stage_post(project: Project, entry: Entry, gate: GateResult, first_passed: date) -> StagedPost:
    """Build one staged post in memory (nothing is written here)."""
    unit_dir = project.unit_dir(entry.key)
    post_path = project.post_path(entry.key)
    where = post_path.relative_to(project.root).as_posix()
    if not post_path.exists():
        raise StageError(f"{where}: missing (a passing {unit_label(entry.key).split()[0]} needs its post)")
    front, body = read_post(post_path)
    absent = [k for k in REQUIRED_FRONT_MATTER if not front.get(k)]
    if absent:
        raise StageError(f"{where}: front matter lacks {', '.join(absent)}")
    if not isinstance(front["categories"], list):
        raise StageError(f"{where}: 'categories' must be a list")
    # Code may be quoted from any day or from the capstone, never from outside them.
    code_roots = [project.days_dir.resolve(), project.capstone_dir.resolve()]

    results_path = unit_dir / "results.json"
    results = json.loads(results_path.read_text(encoding="utf-8")) if results_path.exists() else None
    measured = gate.measurements()
    box = verified_box(project, entry, gate)
    used_box = False

    def substitute(match: re.Match) -> str:
        nonlocal used_box
        kind, args = match.group(1), match.group(2).split()
        positional, options = _options(args)
        line = body.count("\n", 0, match.start()) + 1
        try:
            if kind == "verified":
                used_box = True
                return box
            if not positional:
                raise KeyError(f"missing argument (e.g. {{{{< {kind} name >}}}})")
            if kind == "result":
                if results is None:
                    raise KeyError(f"{project.unit_rel(entry.key)} has no results.json (run its experiment)")
                return format_number(_lookup(results, positional[0], "results.json"), options.get("fmt"))
            if kind == "measured":
                if positional[0] not in measured:
                    raise KeyError(f"the gate measured no {positional[0]!r} "
                                   f"(measured: {', '.join(sorted(measured)) or 'nothing'})")
                return format_number(measured[positional[0]]["value"], options.get("fmt"))
            if kind == "code":
                target = (unit_dir / positional[0]).resolve()
                if not any(root in target.parents for root in code_roots) or not target.is_file():
                    raise KeyError(f"no file {positional[0]!r} under days/ or capstone/")
                symbol = positional[1] if len(positional) > 1 else None
                return "```python\n" + extract_source(target, symbol) + "```"
            raise KeyError(f"unknown placeholder kind {kind!r} (use result, measured, code or verified)")
        except (KeyError, StageError) as exc:
            message = exc.args[0]
            raise StageError(f"{where}, line {line}: {match.group(0)}: {message}") from None

    body = _PLACEHOLDER.sub(substitute, body)
    if not used_box:
        body = body.rstrip() + "\n\n## Verified\n\n" + box
    if "{{<" in body:
        line = body[: body.index("{{<")].count("\n") + 1
        raise StageError(f"{where}: unresolved shortcode near line {line} of the staged post")

    files: dict[str, bytes] = {}
    for ref in _IMAGE.findall(body):
        if re.match(r"^[a-z]+://", ref):
            continue
        source = (unit_dir / ref).resolve()
        if unit_dir.resolve() not in source.parents or not source.is_file():
            raise StageError(f"{where}: figure {ref!r} not found in {project.unit_rel(entry.key)}/")
        files[Path(ref).as_posix()] = source.read_bytes()

    meta = dict(front)
    meta["date"] = first_passed.isoformat()
    if isinstance(entry, DayEntry):
        meta["day"] = entry.day
        meta.setdefault("arena", entry.arena)
        meta.setdefault("arena_url", entry.arena_url)
        extra = entry.module_name
    else:
        extra = "Capstone"
    meta["categories"] = list(dict.fromkeys([*front["categories"], extra]))
    header = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000)
    files["index.qmd"] = f"---\n{header}---\n{body}".encode("utf-8")
    return StagedPost(entry.key, post_slug(entry), str(front["title"]), files)


def sync_staged(project: Project, posts: list[StagedPost]) -> bool:
    """Make ``site/posts/`` hold exactly these posts; write only what differs. Returns changed."""
    root = project.staged_posts_dir
    wanted = {f"{p.slug}/{rel}": data for p in posts for rel, data in p.files.items()}
    changed = False
    if root.exists():
        for path in sorted(root.rglob("*"), reverse=True):
            rel = path.relative_to(root).as_posix()
            if path.is_file() and rel not in wanted and path.name != "_metadata.yml":
                path.unlink()
                changed = True
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
    for rel, data in wanted.items():
        path = root / rel
        if path.exists() and path.read_bytes() == data:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        changed = True
    return changed

