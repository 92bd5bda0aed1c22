"""The verification library the days' tests use.

- ``grad_check``: central-difference gradient checks in float64 (checks/gradcheck.py);
- ``compare`` / ``assert_parity``: our result against an independent reference (checks/parity.py);
- ``assets.resolve``: offline models, tokenizers and data (checks/assets.py);
- the pytest plugin (checks/pytest_plugin.py): ``measure``, ``asset``, markers, gate reports.

Names load lazily so that the pytest plugin (and tooling that only needs assets) does not pay
for importing torch.
"""

import importlib

_EXPORTS = {
    "GradCheckReport": "gradcheck", "GradientMismatch": "gradcheck", "grad_check": "gradcheck",
    "ParityError": "parity", "ParityReport": "parity", "assert_parity": "parity", "compare": "parity",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'checks' has no attribute {name!r}")
