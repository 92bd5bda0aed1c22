"""Run the Gauntlet: every part's computation, merged into ``capstone/results.json`` and ``figures/``.

Each part lives in its own module with a ``run(out_dir) -> dict`` that saves its figures and
returns its numbers (with the model each came from). This module is the one ``run_experiment``
the publishing pipeline calls (``invoke experiment capstone``); from the command line a subset
of parts can be re-run, and their results replace only their own keys::

    python -m capstone.gauntlet                 # every part (the report's one command)
    python -m capstone.gauntlet --parts 1a,3b   # just these
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import tempfile
import time
from pathlib import Path

from checks.timing import single_thread

__all__ = ["PARTS", "run_experiment", "run_parts"]

HERE = Path(__file__).resolve().parent

# results key -> module defining run(out_dir); in the order the report reads them
PARTS = {
    "data": "capstone.sycophancy",      # the dataset and SmolLM2's sycophancy rate
    "part1a": "capstone.geometry",      # embedding SVD, rank-nullity, cosines, PCA
    "part1b": "capstone.optimization",  # CE gradient, Hessian size, HVP, sharpness
    "part1c": "capstone.information",   # bits per token/char, KL, Bayesian update
    "part2": "capstone.mechanics",      # forward trace, W_Q gradient check, attention geometry
    "part3a": "capstone.circuits",      # logit attribution and activation patching
    "part3b": "capstone.probes",        # the sycophancy direction
    "part4b": "capstone.symmetry",      # head permutations and the symmetry group
    "part5c": "capstone.steering",      # the fix, before and after
}


def _write_json(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(tmp, path)


def run_parts(out_dir: Path, parts: list[str]) -> dict:
    """Run ``parts`` (keys of PARTS) and merge their results into ``out_dir/results.json``."""
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown part(s) {unknown}; choose from {list(PARTS)}")
    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    results_path = out_dir / "results.json"
    for part in parts:
        start = time.perf_counter()
        with single_thread():  # bit-reproducible runs, and far faster than two threads on a shared 2-core box
            result = importlib.import_module(PARTS[part]).run(out_dir)
        result["seconds"] = round(time.perf_counter() - start, 1)
        # re-read before each merge so that parts run by separate processes do not clobber each other
        merged = json.loads(results_path.read_text(encoding="utf-8")) if results_path.exists() else {}
        merged[part] = result
        merged["total_minutes"] = round(sum(merged[p]["seconds"] for p in PARTS if p in merged) / 60, 1)
        _write_json(results_path, merged)
        print(f"{part}: {result['seconds']} s")
    return json.loads(results_path.read_text(encoding="utf-8"))


def run_experiment(out_dir: Path) -> dict:
    """Every part of the Gauntlet, in order (about 10 minutes on two CPU cores)."""
    return run_parts(out_dir, list(PARTS))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, from {', '.join(PARTS)}")
    parser.add_argument("--out", type=Path, default=HERE, help="folder for results.json and figures/")
    args = parser.parse_args(argv)
    run_parts(args.out, [p.strip() for p in args.parts.split(",") if p.strip()])


if __name__ == "__main__":
    main()
