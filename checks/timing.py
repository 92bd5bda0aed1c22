"""Timing without fooling yourself: best-of-n wall times, measured on one thread.

The minimum over repeats is the least noisy estimate of a function's cost (noise only ever adds
time). Benchmarks and tiny-tensor tests run on one thread: on a small shared machine, extra
OpenMP/BLAS threads competing with other processes make small kernels many times slower, so a
timing would measure the neighbours instead of the code.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from threadpoolctl import threadpool_limits

__all__ = ["best_time", "single_thread"]


def best_time(fn: Callable[[], object], repeats: int = 5) -> float:
    """The minimum wall time of ``fn()`` over ``repeats`` calls, in seconds."""
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch and the BLAS/OpenMP pools on one thread inside the block (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(threads)
