"""A warm gate process: import the heavy libraries once, then fork one child per gate.

A cold ``pytest days/NNN`` spends 8–12 s importing torch, transformers, TransformerLens,
sae-lens and scikit-learn before its first test; on a fresh clone that is paid about 50 times.
``invoke publish`` therefore starts one of these per worker when a worker has more than one gate
to run (pipeline/gate.py decides). Each gate is still its own process, running exactly the
learner's ``pytest`` command: a forked child, in its own process group, with its output in its
own log file, so a crash, a timeout or a signal ends that gate alone; only the imports are shared.

Protocol (one JSON object per line):
  argv      ``python -m pipeline.gate_server FOLDER``: FOLDER holds this server's gate folders and
            its ``pgid`` file (the server's pid, then each child's: a later publish that finds the
            folder of a killed one ends them; FOLDER in the command line proves a pid is still ours).
  stdout    ``{"ready": seconds}`` once imported, then per gate ``{"pid": n}`` when the child
            starts and ``{"pid": n, "exit_status": code}`` when it ends (``-signal`` if killed).
  stdin     per gate ``{"args": [...pytest arguments...], "log": path}``; end of input: exit.

Which modules are imported first: ``ARENA_GATE_PREIMPORT`` (comma-separated; empty for none),
else ``PREIMPORT``. A module that fails to import is skipped: the gate imports it itself.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from pathlib import Path

# beartype before nnsight (see conftest.py); anyio and jaxtyping are pytest plugins that the
# libraries import: pytest cannot rewrite their asserts then, which only costs their messages.
PREIMPORT = ("beartype", "pytest", "numpy", "scipy", "pandas", "matplotlib.pyplot", "sklearn.linear_model",
             "torch", "einops", "jaxtyping", "transformers", "transformer_lens", "sae_lens", "gymnasium")
PYTEST_QUIET = ("-W", "ignore::pytest.PytestAssertRewriteWarning")


def preimport(names) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a library that fails here fails in the gate, with its traceback
            pass


def _modules_to_preimport() -> list[str]:
    configured = os.environ.get("ARENA_GATE_PREIMPORT")
    if configured is None:
        return list(PREIMPORT)
    return [name.strip() for name in configured.split(",") if name.strip()]


def _run_child(args: list[str], log: str) -> None:
    """In the forked child: become a process group, send output to the log, run pytest, exit."""
    os.setpgid(0, 0)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # the server's request pipe is not the gate's to read
    os.close(null)
    code = 1
    try:
        import pytest

        code = int(pytest.main([*args, *PYTEST_QUIET]))
    except BaseException as exc:  # noqa: BLE001 - never return into the server's loop
        print(f"gate crashed: {type(exc).__name__}: {exc}", file=sys.stderr)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve(folder: Path) -> None:
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever the libraries print goes to stderr, never into the protocol
    pgids = folder / "pgid"
    pgids.write_text(f"{os.getpid()}\n")
    start = time.perf_counter()
    preimport(_modules_to_preimport())
    protocol.write(json.dumps({"ready": round(time.perf_counter() - start, 2)}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            protocol.close()
            _run_child(request["args"], request["log"])
        try:
            os.setpgid(pid, pid)  # also here: the pid we report must already be a process group
        except (PermissionError, ProcessLookupError):
            pass  # the child did it first (or already exited)
        with pgids.open("a") as handle:
            handle.write(f"{pid}\n")
        protocol.write(json.dumps({"pid": pid}) + "\n")
        _, status = os.waitpid(pid, 0)
        protocol.write(json.dumps({"pid": pid, "exit_status": os.waitstatus_to_exitcode(status)}) + "\n")


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m pipeline.gate_server FOLDER")
    threads = os.environ.get("ARENA_TORCH_THREADS", "1")  # as conftest.py sets for every test run
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # its thread pool does not survive a fork
    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        serve(Path(sys.argv[1]))
    except (BrokenPipeError, KeyboardInterrupt):
        pass


if __name__ == "__main__":
    main()
