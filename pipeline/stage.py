"""Staging: turn each passing unit's post (a day's ``post.qmd``, the capstone's ``report.qmd``)
into a blog post under ``site/posts/``.

A post cites numbers instead of typing them, through placeholders in Quarto's shortcode style
that staging resolves (so both engines, Quarto and pandoc, see plain markdown):

- ``{{< result key.path fmt=.3g >}}``: a value from the day's ``results.json`` (the experiment);
- ``{{< measured name fmt=.2e >}}``: a number the day's gate measured (``measure(name, ...)``);
- ``{{< code file.py symbol >}}``: the source of a function or class, straight from the tested
  implementation (``Class.method`` works too; without a symbol, the whole file). On a line of its
  own it is a code block; inside a sentence it names the code inline (```file.symbol```);
- ``{{< verified >}}``: the generated "Verified" box (appended at the end if the post has none).

Links between posts are written ``[day 11](day:11)`` or ``[the capstone](capstone:)``: staging
points them at the other post when it is published, and leaves plain text when it is not.

Images and links are found in pandoc's own document tree (pipeline/markdown.py), never by a
regular expression. An unknown key, a missing figure or linked file, an unclosed fence or div, a
leftover ``{{<`` is a StageError naming the post's source file and line: a post is never
published with a hole in it.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Mapping

import yaml

from .fingerprint import strength_fingerprint
from .gate import GateResult
from .ledger import DayEntry, Entry
from .markdown import outline
from .project import CAPSTONE, DayNumberError, Project, UnitKey, parse_day, slugify, unit_label

__all__ = ["StageError", "StagedPost", "canonical_categories", "format_number", "post_slug", "read_post", "stage_post",
           "sync_staged"]

REQUIRED_FRONT_MATTER = ("title", "description", "categories")
_PLACEHOLDER = re.compile(r"\{\{<\s*(\w+)\s*(.*?)\s*>\}\}")


class StageError(ValueError):
    """A post cannot be staged: bad front matter, an unresolvable placeholder, a missing figure."""


@dataclass
class StagedPost:
    unit: object                # a day number, or "capstone"
    slug: str
    title: str
    meta: dict                  # the staged front matter
    body: str                   # markdown, every placeholder resolved
    assets: dict[str, bytes] = field(default_factory=dict)  # figures and linked files, by relative path

    @property
    def files(self) -> dict[str, bytes]:
        """Everything under site/posts/<slug>/: index.qmd and the post's figures."""
        header = yaml.safe_dump(self.meta, sort_keys=False, allow_unicode=True, width=1000)
        return {"index.qmd": f"---\n{header}---\n{self.body}".encode("utf-8"), **self.assets}


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
    warm = f" after a shared {gate.import_seconds:.1f} s of library imports" if gate.import_seconds else ""
    lines = [
        '::: {.callout-tip .verified title="Verified"}',
        f"**{gate.n_passed} tests passed**{skipped} in {gate.wall_seconds:.1f} s "
        f"(`pytest {project.unit_rel(entry.key)}`{warm}, gated {checked}, "
        f"fingerprint `{gate.fingerprint.split(':')[-1][:12]}`).",
        "",
        "| Test | What it checks | Measured |",
        "|-------|--------|-------|",  # relative column widths 3:4:3 (pandoc and Quarto)
    ]
    for base, row in rows.items():
        label = f"`{base}`" + (f" ×{row['cases']}" if row["cases"] > 1 else "")
        lines.append(f"| {label} | {escape_markdown(row['doc'])} | {'<br>'.join(row['measured'])} |")
    strength = getattr(entry, "gate_strength", None)
    if strength and strength["fingerprint"] == strength_fingerprint(project, entry.key):
        caught, total, equivalent = strength["caught"], strength["total"], strength.get("equivalent", 0)
        judged = "" if not equivalent else (
            f"; {equivalent} of the {total - caught} that survived {'is' if equivalent == 1 else 'are'} judged "
            f"equivalent (the same result for every input; reasons in `equivalent_mutants.yml`), so {caught} of "
            f"{total - equivalent} non-equivalent breaks are caught")
        lines += ["", f"Gate strength: {caught} of {total} single-line breaks of the exercises caught{judged} "
                      f"(`invoke mutate {entry.key}`)."]
    if isinstance(entry.key, int):
        lines += ["", f"Do this day yourself: `invoke practice {entry.key}` writes it with the exercises emptied, "
                      f"and `invoke practice {entry.key} --check` grades your version with this gate."]
    lines.append(":::")
    return "\n".join(lines) + "\n"


_DAY_LINK = re.compile(r"\]\((day|capstone):(\d*)(#[^)\s]*)?\)")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def _unclosed_fence(lines: list[str]) -> int | None:
    """The 1-based index of a code fence that is never closed (pandoc silently swallows the rest)."""
    opener: tuple[str, int, int] | None = None
    for number, line in enumerate(lines, 1):
        match = _FENCE.match(line)
        if not match:
            continue
        run = match.group(1)
        if opener is None:
            opener = (run[0], len(run), number)
        elif run[0] == opener[0] and len(run) >= opener[1] and not line[match.end():].strip():
            opener = None
    return opener[2] if opener else None


def _link_target(unit: UnitKey, anchor: str | None, published: Mapping[UnitKey, str]) -> str | None:
    """The href of another post, seen from a post's folder; None when that unit is not published."""
    slug = published.get(unit)
    return f"../{slug}/index.html{anchor or ''}" if slug else None


def stage_post(project: Project, entry: Entry, gate: GateResult, first_passed: date,
               published: Mapping[UnitKey, str] | None = None) -> StagedPost:
    """Build one staged post in memory (nothing is written here).

    ``published`` maps every unit that this publish puts on the blog to its slug: a link
    ``[day 11](day:11)`` (or ``[the capstone](capstone:)``) becomes a link to that post when it is
    published and plain text when it is not, so the blog never holds a dead link between posts.
    Every error names the post's source file and its line there.
    """
    published = published or {}
    unit_dir = project.unit_dir(entry.key)
    post_path = project.post_path(entry.key)
    where = post_path.relative_to(project.root).as_posix()
    if not post_path.exists():
        raise StageError(f"{where}: missing (a passing {unit_label(entry.key).split()[0]} needs its post)")
    front, body = read_post(post_path)
    offset = post_path.read_text(encoding="utf-8").count("\n") - body.count("\n")  # front matter lines
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

    def substitute(match: re.Match, line: int, alone: bool) -> str:
        nonlocal used_box
        kind, args = match.group(1), match.group(2).split()
        positional, options = _options(args)
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
                source = extract_source(target, symbol)
                if not alone:  # inside a sentence: name the tested code inline, never a block mid-paragraph
                    return f"`{Path(positional[0]).stem}.{symbol}`" if symbol else f"`{positional[0]}`"
                return "```python\n" + source + "```"
            raise KeyError(f"unknown placeholder kind {kind!r} (use result, measured, code or verified)")
        except (KeyError, StageError) as exc:
            raise StageError(f"{where}, line {line}: {match.group(0)}: {exc.args[0]}") from None

    # Substitute line by line (a placeholder never spans lines), remembering where each staged
    # line came from, so that every later error names the source line.
    staged_lines: list[str] = []
    origin: list[int] = []
    for number, line in enumerate(body.split("\n"), offset + 1):
        alone = line.strip().startswith("{{<") and line.strip().endswith(">}}") and line.count("{{<") == 1
        text = _PLACEHOLDER.sub(lambda m: substitute(m, number, alone), line)
        text = _DAY_LINK.sub(lambda m: _resolve_post_link(m, published, where, number), text)
        pieces = text.split("\n")
        staged_lines.extend(pieces)
        origin.extend([number] * len(pieces))
    if not used_box:
        extra = ["", "## Verified", "", *box.rstrip("\n").split("\n")]
        staged_lines.extend(extra)
        origin.extend([origin[-1] if origin else offset + 1] * len(extra))
    body = "\n".join(staged_lines)

    def source_line(staged_line: int | None) -> str:
        if staged_line is None or not origin:
            return where
        return f"{where}, line {origin[min(max(staged_line, 1), len(origin)) - 1]}"

    def line_of(needle: str) -> str:
        hit = next((i for i, text in enumerate(staged_lines, 1) if needle in text), None)
        return source_line(hit)

    if "{{<" in body:
        raise StageError(f"{line_of('{{<')}: a placeholder is not closed ('{{{{<' without '>}}}}')")
    fence = _unclosed_fence(staged_lines)
    if fence is not None:
        raise StageError(f"{source_line(fence)}: this code fence is never closed")
    found = outline(body, project.gate_cache_dir / "markdown")
    for line, message in found.warnings:
        raise StageError(f"{source_line(line)}: pandoc: {message}")

    files: dict[str, bytes] = {}
    for kind, targets in (("figure", found.images), ("link", found.links)):
        for ref in targets:
            if not ref or ref.startswith("#") or ref.startswith("../") and kind == "link" and _is_post_href(ref, published):
                continue
            if ref.startswith(("day:", "capstone:")):
                raise StageError(f"{line_of(ref)}: link {ref!r} to another post: write it inline, "
                                 f"as [text](day:N) or [text](capstone:)")
            if _SCHEME.match(ref) or ref.startswith("//"):
                continue  # http(s), mailto: not ours to check
            path = ref.split("#", 1)[0].split("?", 1)[0]
            source = (unit_dir / path).resolve()
            if unit_dir.resolve() not in source.parents or not source.is_file():
                if kind == "link" and ref.startswith("../"):
                    raise StageError(f"{line_of(ref)}: link {ref!r} leaves the post: link another post "
                                     f"as [text](day:N) or [text](capstone:), so it is checked and never dead")
                raise StageError(f"{line_of(ref)}: {kind} {ref!r} not found in {project.unit_rel(entry.key)}/")
            files[Path(path).as_posix()] = source.read_bytes()

    meta = dict(front)
    meta["date"] = first_passed.isoformat()
    if isinstance(entry, DayEntry):
        meta["day"] = entry.day
        meta.setdefault("arena", entry.arena)
        meta.setdefault("arena_url", entry.arena_url)
        extra = entry.module_name
    else:
        extra = "Capstone"
    meta["categories"] = _unique_categories([*front["categories"], extra])
    meta["source"] = where
    return StagedPost(entry.key, post_slug(entry), str(front["title"]), meta, body, files)


def _is_post_href(ref: str, published: Mapping[UnitKey, str]) -> bool:
    """A resolved day:/capstone: link: ../<published slug>/index.html[#anchor]."""
    parts = ref.split("#", 1)[0].split("/")
    return len(parts) == 3 and parts[2] == "index.html" and parts[1] in published.values()


def _resolve_post_link(match: re.Match, published: Mapping[UnitKey, str], where: str, line: int) -> str:
    kind, number, anchor = match.group(1), match.group(2), match.group(3)
    try:
        unit: UnitKey = CAPSTONE if kind == "capstone" else parse_day(number)
    except DayNumberError as exc:
        raise StageError(f"{where}, line {line}: link ({kind}:{number}): {exc}") from None
    if kind == "capstone" and number:
        raise StageError(f"{where}, line {line}: link (capstone:{number}): write (capstone:)")
    href = _link_target(unit, anchor, published)
    if href is None:  # not on the blog (yet): plain text, never a dead link
        return "]{.unpublished title=\"" + f"{unit_label(unit)} is not published" + "\"}"
    return f"]({href})"


def _unique_categories(names: list) -> list[str]:
    """Categories without case-insensitive duplicates ('fundamentals' and 'Fundamentals' are one)."""
    seen: dict[str, str] = {}
    for name in names:
        seen.setdefault(slugify(str(name)), str(name))
    return list(seen.values())


def canonical_categories(posts: list[StagedPost]) -> None:
    """One spelling per category across the blog: the most used one (ties: the first, by unit).

    Categories are compared by slug, so 'fundamentals' in a post and the module category
    'Fundamentals' are one category with one page and one count, under Quarto and pandoc alike."""
    spellings: dict[str, dict[str, int]] = {}
    for post in posts:
        for name in post.meta["categories"]:
            counts = spellings.setdefault(slugify(name), {})
            counts[name] = counts.get(name, 0) + 1
    best = {slug: max(counts, key=lambda n: (counts[n], sum(c.isupper() for c in n)))
            for slug, counts in spellings.items()}
    for post in posts:
        post.meta["categories"] = _unique_categories([best[slugify(n)] for n in post.meta["categories"]])


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

