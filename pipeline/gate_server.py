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
else ``PREIMPORT``; an entry ``module:function`` imports the module and calls the function (a
preload). A module that fails to import is skipped: the gate imports it itself. Then the server
imports every installed pytest plugin (pytest would load them in each gate) and freezes the heap
(``gc.freeze``): a gate's garbage collections then skip the libraries' millions of objects (pytest
collects twice at exit), and the pages they live on stay shared. Measured on days 003/006/029:
1.7 s per gate before, 0.4–0.7 s after.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import sys
import time
from pathlib import Path

# beartype before nnsight (see conftest.py); anyio and jaxtyping are pytest plugins that the
# libraries import: pytest cannot rewrite their asserts then, which only costs their messages.
PREIMPORT = ("beartype", "pytest", "numpy", "scipy", "pandas", "matplotlib.pyplot", "sklearn.linear_model",
             "torch", "einops", "jaxtyping", "transformers", "transformer_lens", "sae_lens", "gymnasium",
             "pipeline.gate_server:preload_smollm2")
PYTEST_QUIET = ("-W", "ignore::pytest.PytestAssertRewriteWarning")
SMOLLM2_ASSET = "smollm2-135m-instruct"


def preimport(names) -> None:
    for name in names:
        module, _, function = name.partition(":")
        try:
            loaded = importlib.import_module(module)
            if function:
                getattr(loaded, function)()
        except Exception:  # noqa: BLE001 - a library that fails here fails in the gate, with its traceback
            pass


def pytest_plugin_modules() -> list[str]:
    from importlib.metadata import entry_points

    return [entry.value.partition(":")[0] for entry in entry_points(group="pytest11")]


def preload_smollm2() -> None:
    """Load SmolLM2 (plain and hooked) once, for the ~20 gates that use it (1.3–1.5 s each).

    The asset guard (checks/plugin.py) must still see a gate use the model: on a cold load
    ``checks.models`` resolves the asset the first time it is called in the process. So the loaders
    are replaced by ones that resolve the asset on their first call in the gate's process, then return
    the preloaded model: a test that uses SmolLM2 without declaring it fails warm as it fails cold.
    A gate that changes the weights changes its own copy (the fork copies a page when it is written)."""
    from checks import assets, models

    def first_call_resolves(model):
        resolved = False  # set in the gate's process only: the server never calls the wrapper

        def load():
            nonlocal resolved
            if not resolved:
                assets.resolve(SMOLLM2_ASSET)
                resolved = True
            return model
        return load

    plain, hooked = models.smollm2(), models.smollm2_hooked()
    models.smollm2, models.smollm2_hooked = first_call_resolves(plain), first_call_resolves(hooked)


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
    preimport(pytest_plugin_modules())
    gc.collect()
    gc.freeze()
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
