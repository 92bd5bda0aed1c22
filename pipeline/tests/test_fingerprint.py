"""Fingerprints change exactly when something a day's gate depends on changes."""

from pipeline.fingerprint import day_dependencies, unit_fingerprint


def test_fingerprint_tracks_what_the_gate_depends_on(toy):
    """The day's files, the days it imports, checks/ and the pins count; caches, checks' tests and other days do not."""
    toy.write_day(2)
    toy.write_day(3)
    toy.write_day(4)
    impl = toy.day_dir(3) / "toy.py"
    impl.write_text(impl.read_text() + '\nimport importlib\nprev = importlib.import_module("days.002.toy")\n')
    base = unit_fingerprint(toy.project, 3)
    assert day_dependencies(toy.project, 3) == [2]

    def changed(path, text="\n# edit\n"):
        before = unit_fingerprint(toy.project, 3)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as handle:
            handle.write(text)
        return unit_fingerprint(toy.project, 3) != before

    assert not changed(toy.day_dir(3) / "__pycache__" / "toy.cpython-311.pyc")
    assert not changed(toy.root / "checks" / "tests" / "test_new.py")
    assert not changed(toy.day_dir(4) / "toy.py")                     # an unrelated day
    assert unit_fingerprint(toy.project, 3) == base
    assert changed(toy.day_dir(3) / "post.qmd")                      # the day itself
    assert changed(toy.day_dir(3) / "figures" / "new.png")
    assert changed(toy.day_dir(2) / "toy.py")                        # a day it imports
    assert changed(toy.root / "checks" / "parity.py")                # the verification library
    assert changed(toy.root / "conftest.py")
    pyproject = toy.root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"rich==15.0.0"', '"rich==15.0.1"'))
    assert unit_fingerprint(toy.project, 3) != base
