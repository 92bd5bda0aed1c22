"""Fingerprints change exactly when something a day's gate depends on changes."""

from pipeline.fingerprint import day_dependencies, strength_fingerprint, unit_fingerprint


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


def test_strength_fingerprint_leaves_out_only_the_tests_of_imported_days(toy):
    """Gate strength (invoke mutate) depends on the day's own folder, the code of the days it imports, checks/ and
    the pins; a test of an imported day is not part of it (the day's gate never runs it) unless the day's own code
    imports that test module. The unit fingerprint, which decides re-gating, still counts every file."""
    toy.write_day(2)
    toy.write_day(3)
    impl = toy.day_dir(3) / "toy.py"
    impl.write_text(impl.read_text() + '\nimport importlib\nprev = importlib.import_module("days.002.toy")\n')

    def changes(path, text="\n# edit\n"):
        before = strength_fingerprint(toy.project, 3), unit_fingerprint(toy.project, 3)
        with open(path, "a") as handle:
            handle.write(text)
        after = strength_fingerprint(toy.project, 3), unit_fingerprint(toy.project, 3)
        return after[0] != before[0], after[1] != before[1]

    assert strength_fingerprint(toy.project, 2) == unit_fingerprint(toy.project, 2)   # no imports: the same
    assert changes(toy.day_dir(2) / "test_toy.py") == (False, True)    # an imported day's test
    assert changes(toy.day_dir(2) / "toy.py") == (True, True)          # an imported day's code
    assert changes(toy.day_dir(3) / "test_toy.py") == (True, True)     # the day's own gate
    assert changes(toy.root / "checks" / "parity.py") == (True, True)
    impl.write_text(impl.read_text() + 'helper = importlib.import_module("days.002.test_toy")\n')
    assert changes(toy.day_dir(2) / "test_toy.py") == (True, True)     # named by the day's own code
