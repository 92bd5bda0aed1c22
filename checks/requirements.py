"""What a test does when something it needs (an asset, a browser) is not on this machine.

A learner running `pytest days/042` on a laptop gets a skip with a hint. Where a missing
requirement would make a claim unverified, it is a failure instead:
- in CI (`CI=true`): CI must never go green by skipping what it was meant to check;
- in a gate run (`invoke publish`, which sets ARENA_GATE=1): a day is not "passed" on skips.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

__all__ = ["is_strict", "missing"]

_TRUE = {"1", "true", "yes", "on"}


def is_strict() -> bool:
    """True in CI and in gate runs: a missing requirement fails instead of skipping."""
    return (os.environ.get("CI", "").strip().lower() in _TRUE
            or os.environ.get("ARENA_GATE", "").strip().lower() in _TRUE)


def missing(what: str, detail: str) -> NoReturn:
    """Skip (or, when strict, fail) the running test because ``what`` is not available."""
    message = f"missing {what}: {detail}"
    if is_strict():
        pytest.fail(message + " [CI and gate runs fail on missing requirements instead of skipping]",
                    pytrace=False)
    pytest.skip(message)
