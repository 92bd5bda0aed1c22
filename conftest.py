"""Root conftest: what every test run needs before anything else is imported.

- beartype must be imported before nnsight: nnsight mounts a `.save` on every object and
  beartype then fails with `TypeError: unhashable type: 'instancemethod'` (see RECIPES.md).
- Figures are drawn off-screen.
- The project's pytest plugin (markers, the `measure` fixture, gate reports) is registered here.
"""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import beartype  # noqa: E402,F401  (import order matters, see above)

pytest_plugins = ["checks.pytest_plugin", "pytester"]
