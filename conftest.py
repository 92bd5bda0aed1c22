"""Root conftest: what every test run needs before anything else is imported.

- beartype must be imported before nnsight: nnsight mounts a `.save` on every object and
  beartype then fails with `TypeError: unhashable type: 'instancemethod'` (see RECIPES.md).
- Figures are drawn off-screen.
- One torch/BLAS thread by default (override with ARENA_TORCH_THREADS=N). The tests' tensors are
  small; on a 2-core machine with any other load, a second OpenMP thread made them 5–8× slower
  (measured: a tiny ResNet's 40 Adam steps took 4.2 s on one thread, 21.4 s on two), and one
  thread makes results independent of the machine's core count.
- The project's pytest plugin (markers, the `measure` fixture, gate reports) is registered here.
"""

import os

os.environ.setdefault("MPLBACKEND", "Agg")
_THREADS = os.environ.get("ARENA_TORCH_THREADS", "1")
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, _THREADS)

import beartype  # noqa: E402,F401  (import order matters, see above)

pytest_plugins = ["checks.pytest_plugin", "pytester"]


def pytest_configure(config):
    import torch

    torch.set_num_threads(int(_THREADS))
