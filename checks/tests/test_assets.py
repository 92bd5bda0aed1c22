"""checks.assets: env var, then cache, then download; clear errors; CI fails instead of skipping."""

import functools
import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from checks.assets import ASSETS, Asset, AssetMissing, resolve

ROOT = Path(__file__).resolve().parents[2]

# These tests resolve fake assets in temporary roots: the plugin's undeclared-asset guard is off.
pytestmark = pytest.mark.asset_resolver


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No inherited asset roots; an empty cache; offline through ARENA_OFFLINE only (CI's
    HF_HUB_OFFLINE is cleared so that the download tests can switch to online)."""
    monkeypatch.delenv("ARENA_ASSETS", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("ARENA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ARENA_OFFLINE", "1")
    return tmp_path


def _make(root: Path, name: str) -> Path:
    asset = ASSETS[name]
    base = root / asset.path
    for f in asset.files or ("",):
        path = base / f if f else base
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    return base


def test_env_var_first_then_cache(isolated, monkeypatch):
    """ARENA_ASSETS wins over the cache; without it, the cache is used."""
    shared, cache = isolated / "shared", isolated / "cache"
    _make(shared, "tinyshakespeare")
    _make(cache, "tinyshakespeare")
    monkeypatch.setenv("ARENA_ASSETS", str(shared))
    assert resolve("tinyshakespeare") == shared / "text/tinyshakespeare.txt"
    monkeypatch.delenv("ARENA_ASSETS")
    assert resolve("tinyshakespeare") == cache / "text/tinyshakespeare.txt"


def test_directory_asset_needs_every_file(isolated, monkeypatch):
    """A directory asset with one file missing is not found there."""
    base = _make(isolated / "shared", "mnist")
    (base / "t10k-labels-idx1-ubyte.gz").unlink()
    monkeypatch.setenv("ARENA_ASSETS", str(isolated / "shared"))
    with pytest.raises(AssetMissing):
        resolve("mnist")


def test_missing_offline_names_places_and_fix(isolated, monkeypatch):
    """Offline and absent: the error names the asset, every place looked, and ARENA_ASSETS."""
    monkeypatch.setenv("ARENA_ASSETS", str(isolated / "nowhere"))
    with pytest.raises(AssetMissing) as info:
        resolve("gpt2-tokenizer")
    message = str(info.value)
    assert "'gpt2-tokenizer'" in message and "offline" in message and "ARENA_ASSETS" in message
    assert str(isolated / "nowhere" / "tokenizers/gpt2") in message
    assert str(isolated / "cache" / "tokenizers/gpt2") in message


def test_unknown_asset_lists_known_ones():
    with pytest.raises(KeyError, match="known assets: .*mnist"):
        resolve("imagenet")


@pytest.fixture
def http_server(tmp_path):
    """A local HTTP server standing in for the canonical host (nothing leaves the machine)."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_into_cache_when_online(isolated, monkeypatch, http_server):
    """Online, a missing asset is downloaded once into the cache, hash-checked, then reused."""
    served, url = http_server
    (served / "a.txt").write_text("alpha")
    digest = hashlib.sha256(b"alpha").hexdigest()
    monkeypatch.setitem(ASSETS, "demo", Asset("demo", "demo", "demo", files=("a.txt",),
                                              urls={"a.txt": f"{url}/a.txt"}, sha256={"a.txt": digest}))
    monkeypatch.setenv("ARENA_OFFLINE", "0")
    path = resolve("demo")
    assert path == isolated / "cache" / "demo" and (path / "a.txt").read_text() == "alpha"
    (served / "a.txt").unlink()  # a second resolve must not need the server
    assert resolve("demo") == path


def test_download_with_wrong_hash_leaves_nothing(isolated, monkeypatch, http_server):
    """A corrupted download is rejected and leaves no file behind."""
    served, url = http_server
    (served / "a.txt").write_text("tampered")
    monkeypatch.setitem(ASSETS, "demo", Asset("demo", "demo", "demo", files=("a.txt",),
                                              urls={"a.txt": f"{url}/a.txt"}, sha256={"a.txt": "0" * 64}))
    monkeypatch.setenv("ARENA_OFFLINE", "0")
    with pytest.raises(AssetMissing, match="sha256"):
        resolve("demo")
    assert not any((isolated / "cache").rglob("*.txt*"))


@pytest.mark.parametrize("name", sorted(ASSETS))
def test_every_registered_asset_is_here(asset, name):
    """Each registered asset resolves (in CI this fails, never skips, when ARENA_ASSETS is wrong)."""
    path = asset(name)
    spec = ASSETS[name]
    assert spec.present_in(Path(str(path)[: -len(spec.path)]))
    for rel, digest in spec.sha256.items():
        assert hashlib.sha256((path / rel).read_bytes()).hexdigest() == digest


TEST_NEEDING_ASSET = """
import pytest

@pytest.mark.asset("tinyshakespeare")
def test_marked():
    pass

def test_fixture(asset):
    asset("tinyshakespeare")
"""


STRICT = {"failed": 1, "errors": 1}  # the marker fails in setup (an error), the fixture in the test


@pytest.mark.parametrize("env, outcomes", [({}, {"skipped": 2}), ({"CI": "true"}, STRICT),
                                           ({"ARENA_GATE": "1"}, STRICT)], ids=["learner", "ci", "gate"])
def test_missing_asset_skips_for_learners_but_fails_in_ci(pytester, monkeypatch, tmp_path, env, outcomes):
    """The policy: skip with a hint on a laptop; fail in CI and in gate runs."""
    for var in ("CI", "ARENA_GATE", "ARENA_ASSETS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ARENA_OFFLINE", "1")
    monkeypatch.setenv("ARENA_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    pytester.makepyfile(TEST_NEEDING_ASSET)
    result = pytester.runpytest_subprocess("-p", "checks.pytest_plugin", "-rsf")
    result.assert_outcomes(**outcomes)
    result.stdout.fnmatch_lines(["*missing asset 'tinyshakespeare'*ARENA_ASSETS*"])
