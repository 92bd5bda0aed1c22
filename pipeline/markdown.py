"""Reading a post the way the renderer will: through pandoc's own document tree.

Staging must know which strings of a post are images and links. A regular expression cannot
(an alt text may hold ``]``, a code block may hold ``![x](y)``), so the post is parsed by the
pandoc that renders it (``pandoc --to json``) and the tree is walked. Pandoc's warnings from the
reader (an unclosed div, a duplicate reference) come back with their line numbers.

A parse costs ~0.1–0.2 s of CPU, so results are cached by the text's hash under ``.gate/``:
an unchanged publish re-reads the cache instead of re-parsing 40 posts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

__all__ = ["Outline", "PandocMissing", "outline", "pandoc_path"]

_CACHE_VERSION = "1"


class PandocMissing(RuntimeError):
    """No pandoc to parse posts with."""


@lru_cache(maxsize=1)
def pandoc_path() -> str:
    """pandoc from pypandoc-binary (a pinned dependency), else pandoc on PATH."""
    try:
        import pypandoc

        return pypandoc.get_pandoc_path()
    except (ImportError, OSError):
        found = shutil.which("pandoc")
        if found:
            return found
    raise PandocMissing("pandoc not found: install the project (`pip install -e .`), which brings pypandoc-binary")


@dataclass
class Outline:
    """What staging checks in a post: its image and link targets, code-block count and warnings."""

    images: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    warnings: list[tuple[int | None, str]] = field(default_factory=list)  # (line in the text, message)


def _walk(node, out: Outline) -> None:
    if isinstance(node, dict):
        kind = node.get("t")
        if kind in ("Image", "Link"):
            target = node["c"][2][0]
            (out.images if kind == "Image" else out.links).append(target)
        for value in node.values():
            _walk(value, out)
    elif isinstance(node, list):
        for value in node:
            _walk(value, out)


_LINE = re.compile(r"line (\d+)")


def _parse(text: str) -> Outline:
    proc = subprocess.run([pandoc_path(), "--from=markdown", "--to=json"], input=text,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        match = _LINE.search(proc.stderr)
        return Outline(warnings=[(int(match.group(1)) if match else None, proc.stderr.strip())])
    out = Outline()
    _walk(json.loads(proc.stdout)["blocks"], out)
    for line in proc.stderr.splitlines():
        if line.startswith("[WARNING]"):
            match = _LINE.search(line)
            out.warnings.append((int(match.group(1)) if match else None, line[len("[WARNING]"):].strip()))
    return out


def outline(text: str, cache_dir: Path | None = None) -> Outline:
    """Parse markdown with pandoc and return its images, links and reader warnings (cached)."""
    key = hashlib.sha256((_CACHE_VERSION + "\0" + text).encode()).hexdigest()
    path = cache_dir / f"{key}.json" if cache_dir is not None else None
    if path is not None and path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return Outline(data["images"], data["links"], [tuple(w) for w in data["warnings"]])
        except (OSError, ValueError, KeyError):
            pass
    result = _parse(text)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(result)), encoding="utf-8")
        os.replace(tmp, path)
    return result
