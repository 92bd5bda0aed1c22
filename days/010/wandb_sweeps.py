"""Day 10: Weights & Biases and hyper-parameter sweeps, offline (ARENA 0.3 Optimization).

Three pieces:

1. **Sweep configurations in W&B's format** (the YAML/dict a ``wandb sweep`` command takes):
   ``method`` (grid, random; bayes is parsed but needs W&B's server), an optional ``metric``
   {name, goal}, ``parameters`` with one spec each, ``run_cap``. A parameter is a constant
   (``value``), a categorical (``values``, optional ``probabilities``), or a distribution:
   ``int_uniform`` / ``uniform`` on [min, max], ``q_uniform`` (rounded to multiples of q),
   ``log_uniform_values`` (log X uniform on [log min, log max]), ``log_uniform`` (the same with
   min and max given as logarithms), ``q_log_uniform_values``, ``normal`` / ``q_normal``
   (mu, sigma), ``log_normal`` (log X ~ N(mu, sigma)) and ``beta`` (a, b). Without an explicit
   ``distribution`` W&B infers it: ``values`` → categorical, ``value`` → constant, integer
   min/max → int_uniform, float min/max → uniform. A spec with its own ``parameters`` nests.
2. **A local sweep runner**: a grid sweep is the Cartesian product of the discrete parameters
   (int_uniform expands to every integer in [min, max]), enumerated in W&B's order (parameters
   sorted by name, the last varying fastest); a random sweep draws each parameter
   independently. Each configuration is one W&B run in offline mode; the runner then reads the
   run's own files back and picks the best run by the metric's final (summary) value.
3. **A reader for offline run files** (``run-<id>.wandb``): W&B writes a 7-byte header
   (":W&B", magic 0xBEE1, version 0) followed by LevelDB-log records (in 32 KiB blocks, each
   chunk with a CRC-32, a length and a type: full, first, middle, last), each record a protobuf
   ``Record`` from ``wandb.proto.wandb_internal_pb2``. History rows, summary and config are read
   from there, which proves what a run recorded without a network.

The sweeps train something real but small: an MLP on scikit-learn's 8×8 digits with day 9's
optimizers.
"""

from __future__ import annotations

import importlib
import itertools
import json
import math
import shutil
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import yaml

from checks.timing import single_thread

# ---------------------------------------------------------------- sweep configurations

METHODS = ("grid", "random", "bayes")
GOALS = ("minimize", "maximize")
TOP_LEVEL_KEYS = {"method", "metric", "parameters", "name", "description", "program", "command",
                  "project", "entity", "early_terminate", "run_cap"}

# distribution -> (required keys, optional keys with defaults)
DISTRIBUTIONS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "constant": (("value",), {}),
    "categorical": (("values",), {}),
    "categorical_w_probabilities": (("values", "probabilities"), {}),
    "int_uniform": (("min", "max"), {}),
    "uniform": (("min", "max"), {}),
    "q_uniform": (("min", "max"), {"q": 1.0}),
    "log_uniform": (("min", "max"), {}),
    "log_uniform_values": (("min", "max"), {}),
    "q_log_uniform_values": (("min", "max"), {"q": 1.0}),
    "normal": ((), {"mu": 0.0, "sigma": 1.0}),
    "q_normal": ((), {"mu": 0.0, "sigma": 1.0, "q": 1.0}),
    "log_normal": ((), {"mu": 0.0, "sigma": 1.0}),
    "beta": ((), {"a": 1.0, "b": 1.0}),
}
GRID_DISTRIBUTIONS = ("constant", "categorical", "int_uniform")


class SweepConfigError(ValueError):
    """A sweep configuration that W&B's format does not allow, with the reason."""


@dataclass(frozen=True)
class Parameter:
    """One hyper-parameter: its (dotted, for nested parameters) name, distribution and settings."""

    name: str
    distribution: str
    spec: dict[str, Any]

    def grid_values(self) -> list:
        """The values a grid search enumerates (discrete parameters only)."""
        if self.distribution == "constant":
            return [self.spec["value"]]
        if self.distribution == "categorical":
            return list(self.spec["values"])
        if self.distribution == "int_uniform":
            return list(range(self.spec["min"], self.spec["max"] + 1))
        raise SweepConfigError(f"parameter {self.name!r}: grid search needs constant, categorical or "
                               f"int_uniform parameters, not {self.distribution}")

    def sample(self, rng: np.random.Generator) -> Any:
        """One draw from the parameter's distribution."""
        s, d = self.spec, self.distribution
        if d == "constant":
            return s["value"]
        if d in ("categorical", "categorical_w_probabilities"):
            p = s.get("probabilities")
            return s["values"][int(rng.choice(len(s["values"]), p=p))]
        if d == "int_uniform":
            return int(rng.integers(s["min"], s["max"] + 1))
        if d == "uniform":
            return float(rng.uniform(s["min"], s["max"]))
        if d == "q_uniform":
            return _quantize(rng.uniform(s["min"], s["max"]), s["q"])
        if d == "log_uniform":
            return float(math.exp(rng.uniform(s["min"], s["max"])))
        if d == "log_uniform_values":
            return float(math.exp(rng.uniform(math.log(s["min"]), math.log(s["max"]))))
        if d == "q_log_uniform_values":
            return _quantize(math.exp(rng.uniform(math.log(s["min"]), math.log(s["max"]))), s["q"])
        if d == "normal":
            return float(rng.normal(s["mu"], s["sigma"]))
        if d == "q_normal":
            return _quantize(rng.normal(s["mu"], s["sigma"]), s["q"])
        if d == "log_normal":
            return float(math.exp(rng.normal(s["mu"], s["sigma"])))
        if d == "beta":
            return float(rng.beta(s["a"], s["b"]))
        raise AssertionError(d)  # parse_parameter admits only the distributions above


def _quantize(x: float, q: float) -> float | int:
    """W&B's quantisation: round(x / q) * q, an int when q is an int."""
    value = round(x / q) * q
    return int(value) if isinstance(q, int) else float(value)


@dataclass(frozen=True)
class SweepConfig:
    """A parsed sweep: method, metric (name, goal) or None, parameters in config order, run cap."""

    method: str
    parameters: tuple[Parameter, ...]
    metric_name: str | None = None
    goal: str = "minimize"
    name: str = "sweep"
    run_cap: int | None = None
    raw: dict = field(default_factory=dict, compare=False)


def infer_distribution(name: str, spec: dict) -> str:
    """W&B's rule when ``distribution`` is absent: values → categorical (with probabilities:
    categorical_w_probabilities), value → constant, int min/max → int_uniform, else uniform."""
    if "distribution" in spec:
        return spec["distribution"]
    if "values" in spec:
        return "categorical_w_probabilities" if "probabilities" in spec else "categorical"
    if "value" in spec:
        return "constant"
    if "min" in spec and "max" in spec:
        ints = all(isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("min", "max"))
        return "int_uniform" if ints else "uniform"
    raise SweepConfigError(f"parameter {name!r}: give value, values, min/max or a distribution (got {sorted(spec)})")


def parse_parameter(name: str, spec: Any) -> list[Parameter]:
    """Validate one parameter spec (recursing into nested ``parameters``)."""
    if not isinstance(spec, dict):
        raise SweepConfigError(f"parameter {name!r}: a spec must be a mapping, got {spec!r}")
    if "parameters" in spec:
        if not isinstance(spec["parameters"], dict) or not spec["parameters"]:
            raise SweepConfigError(f"parameter {name!r}: nested 'parameters' must be a non-empty mapping")
        return [p for sub, s in spec["parameters"].items() for p in parse_parameter(f"{name}.{sub}", s)]
    distribution = infer_distribution(name, spec)
    if distribution == "categorical" and "probabilities" in spec:
        distribution = "categorical_w_probabilities"
    if distribution not in DISTRIBUTIONS:
        raise SweepConfigError(f"parameter {name!r}: unknown or unsupported distribution {distribution!r} "
                               f"(supported: {', '.join(DISTRIBUTIONS)})")
    required, optional = DISTRIBUTIONS[distribution]
    missing = [k for k in required if k not in spec]
    if missing:
        raise SweepConfigError(f"parameter {name!r}: distribution {distribution} needs {missing}")
    allowed = set(required) | set(optional) | {"distribution"}
    extra = sorted(set(spec) - allowed)
    if extra:
        raise SweepConfigError(f"parameter {name!r}: keys {extra} do not belong to distribution {distribution}")
    full = {**optional, **{k: v for k, v in spec.items() if k != "distribution"}}
    if "values" in full and (not isinstance(full["values"], list) or not full["values"]):
        raise SweepConfigError(f"parameter {name!r}: 'values' must be a non-empty list")
    if distribution == "categorical_w_probabilities":
        p = full["probabilities"]
        if len(p) != len(full["values"]) or any(x < 0 for x in p) or abs(sum(p) - 1) > 1e-6:
            raise SweepConfigError(f"parameter {name!r}: probabilities must be one non-negative number per value, summing to 1")
    if "min" in full and not full["min"] <= full["max"]:
        raise SweepConfigError(f"parameter {name!r}: min {full['min']} > max {full['max']}")
    if distribution == "int_uniform" and not all(isinstance(full[k], int) for k in ("min", "max")):
        raise SweepConfigError(f"parameter {name!r}: int_uniform needs integer min and max")
    if distribution in ("log_uniform_values", "q_log_uniform_values") and full["min"] <= 0:
        raise SweepConfigError(f"parameter {name!r}: {distribution} needs min > 0 (its logarithm is taken)")
    for key in ("sigma", "q", "a", "b"):
        if key in full and full[key] <= 0:
            raise SweepConfigError(f"parameter {name!r}: {key} must be positive")
    return [Parameter(name, distribution, full)]


def parse_sweep_config(config: dict | str | Path) -> SweepConfig:
    """Parse and validate a sweep configuration given as a dict, YAML text or a YAML file."""
    if isinstance(config, Path) or (isinstance(config, str) and "\n" not in config and config.endswith((".yaml", ".yml"))):
        config = Path(config).read_text(encoding="utf-8")
    if isinstance(config, str):
        config = yaml.safe_load(config)
    if not isinstance(config, dict):
        raise SweepConfigError("a sweep configuration is a mapping")
    unknown = sorted(set(config) - TOP_LEVEL_KEYS)
    if unknown:
        raise SweepConfigError(f"unknown top-level key(s) {unknown}")
    method = config.get("method")
    if method not in METHODS:
        raise SweepConfigError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    metric_name, goal = None, "minimize"
    if "metric" in config:
        metric = config["metric"]
        if not isinstance(metric, dict) or "name" not in metric:
            raise SweepConfigError("metric needs a name")
        metric_name, goal = metric["name"], metric.get("goal", "minimize")
        if goal not in GOALS:
            raise SweepConfigError(f"metric goal must be minimize or maximize, got {goal!r}")
    elif method == "bayes":
        raise SweepConfigError("a bayes sweep needs a metric to model")
    params = config.get("parameters")
    if not isinstance(params, dict) or not params:
        raise SweepConfigError("parameters must be a non-empty mapping")
    parsed = tuple(p for name, spec in params.items() for p in parse_parameter(name, spec))
    run_cap = config.get("run_cap")
    if run_cap is not None and (not isinstance(run_cap, int) or run_cap < 1):
        raise SweepConfigError(f"run_cap must be a positive integer, got {run_cap!r}")
    if method == "grid":
        for p in parsed:
            p.grid_values()  # raises for continuous parameters
    return SweepConfig(method, parsed, metric_name, goal, config.get("name", "sweep"), run_cap, config)


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{'optimizer.lr': 0.1} -> {'optimizer': {'lr': 0.1}}: the config a run sees."""
    out: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = out
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def configurations(sweep: SweepConfig, count: int | None = None, seed: int = 0) -> Iterator[dict]:
    """The run configurations of a sweep, at most ``count`` (and at most ``run_cap``).

    Grid: itertools.product over the parameters sorted by name, the last varying fastest (the
    order of W&B's own grid search). Random: independent draws from a numpy Generator seeded
    with ``seed``; needs a count or run_cap.
    """
    limit = min((n for n in (count, sweep.run_cap) if n is not None), default=None)
    if sweep.method == "grid":
        params = sorted(sweep.parameters, key=lambda p: p.name)
        names = [p.name for p in params]
        combos = itertools.product(*(p.grid_values() for p in params))
        for values in itertools.islice(combos, limit):
            yield nest(dict(zip(names, values)))
    elif sweep.method == "random":
        if limit is None:
            raise SweepConfigError("a random sweep never ends by itself: give a count or a run_cap")
        rng = np.random.default_rng(seed)
        for _ in range(limit):
            yield nest({p.name: p.sample(rng) for p in sweep.parameters})
    else:
        raise SweepConfigError(f"method {sweep.method!r} needs W&B's sweep server (a Gaussian-process "
                               "model of the metric); this local runner does grid and random")


# ---------------------------------------------------------------- ARENA's ResNet fine-tuning sweep


@dataclass
class ResNetFinetuningArgs:
    """ARENA 0.3's training arguments for fine-tuning a ResNet34 on CIFAR-10."""

    n_classes: int = 10
    batch_size: int = 128
    epochs: int = 3
    learning_rate: float = 1e-3
    weight_decay: float = 0.0


@dataclass
class WandbResNetFinetuningArgs(ResNetFinetuningArgs):
    """The same, logged to W&B."""

    wandb_project: str | None = "arena-day-010"
    wandb_name: str | None = None


def resnet_sweep_config() -> dict:
    """ARENA's sweep: maximise accuracy; the learning rate log-uniform over three decades, four
    batch sizes, and weight decay switched off half the time (W&B's format has no mixture: a
    weighted categorical, 0 with probability 1/2, else one of four decades)."""
    return dict(
        method="random",
        metric=dict(name="accuracy", goal="maximize"),
        parameters=dict(
            learning_rate=dict(min=1e-4, max=1e-1, distribution="log_uniform_values"),
            batch_size=dict(values=[32, 64, 128, 256]),
            weight_decay=dict(values=[0.0, 1e-5, 1e-4, 1e-3, 1e-2], probabilities=[0.5, 0.125, 0.125, 0.125, 0.125]),
        ),
    )


sweep_config = resnet_sweep_config()  # ARENA's name for it


def update_args(args: WandbResNetFinetuningArgs, sampled_parameters: dict[str, Any]) -> WandbResNetFinetuningArgs:
    """The run's arguments: ``args`` with each sampled field replaced (``wandb.config`` of a sweep
    run holds the draws). A key that is not a field is an error, never silently dropped."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(args)}
    unknown = sorted(set(sampled_parameters) - fields)
    if unknown:
        raise ValueError(f"sampled parameter(s) {unknown} are not fields of {type(args).__name__} "
                         f"(fields: {sorted(fields)})")
    return dataclasses.replace(args, **sampled_parameters)


# ---------------------------------------------------------------- reading offline run files

HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class RunFileError(ValueError):
    """A .wandb file that is not W&B's format, or whose checksums fail."""


def read_records(path: Path) -> Iterator[bytes]:
    """The record payloads of a .wandb file, reassembled from LevelDB-log chunks, CRCs checked.

    Each chunk: CRC-32 (4 bytes, little-endian) of the type byte then the data, the data's length
    (2 bytes), the type (1 byte), the data. A chunk never straddles a 32 KiB block; a block's
    last < 7 bytes are zero padding.
    """
    data = Path(path).read_bytes()
    if data[:len(HEADER)] != HEADER:
        raise RunFileError(f"{path}: not a W&B run file (header {data[:7]!r})")
    offset, pending = len(HEADER), b""
    while offset + 7 <= len(data):
        left_in_block = BLOCK - offset % BLOCK
        if left_in_block < 7:
            offset += left_in_block
            continue
        crc, length, kind = struct.unpack("<IHB", data[offset:offset + 7])
        if kind == 0 and length == 0:  # zero padding written before a flush
            offset += left_in_block
            continue
        chunk = data[offset + 7: offset + 7 + length]
        if len(chunk) < length:
            raise RunFileError(f"{path}: truncated record at byte {offset}")
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
            raise RunFileError(f"{path}: checksum mismatch at byte {offset}")
        offset += 7 + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""
        else:
            raise RunFileError(f"{path}: unknown chunk type {kind} at byte {offset}")


@dataclass
class OfflineRun:
    """What an offline run recorded: its id, config, history rows (one dict per log call) and summary."""

    path: Path
    run_id: str
    config: dict[str, Any]
    history: list[dict[str, Any]]
    summary: dict[str, Any]
    finished: bool
    exit_code: int | None = None


def _key(item) -> str:
    return item.key or ".".join(item.nested_key)


def read_offline_run(path: Path) -> OfflineRun:
    """Parse an offline run: ``path`` is its folder (offline-run-…) or its .wandb file."""
    from wandb.proto import wandb_internal_pb2 as pb

    path = Path(path)
    file = path if path.is_file() else next(path.glob("run-*.wandb"))
    run_id, config, history, summary, finished, exit_code = "", {}, [], {}, False, None
    for payload in read_records(file):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run_id = record.run.run_id
            for item in record.run.config.update:
                config[_key(item)] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                config[_key(item)] = json.loads(item.value_json)
        elif kind == "history":
            history.append({_key(item): json.loads(item.value_json) for item in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                summary[_key(item)] = json.loads(item.value_json)
            for item in record.summary.remove:
                summary.pop(_key(item), None)
        elif kind == "exit":
            finished, exit_code = True, record.exit.exit_code
    config.pop("_wandb", None)
    return OfflineRun(path if path.is_dir() else path.parent, run_id, config, history, summary, finished, exit_code)


def read_finished_run(path: Path, timeout: float = 60.0) -> OfflineRun:
    """Read an offline run once its exit record is on disk.

    ``run.finish()`` returns before W&B's writer process has flushed the file (about 10 ms
    later here), so poll until the run's exit record can be read, or fail after ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            record = read_offline_run(path)
        except RunFileError:
            record = None  # a chunk still being written
        if record is not None and record.finished:
            return record
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: the run's exit record did not appear within {timeout} s")
        time.sleep(0.01)


# ---------------------------------------------------------------- the runner


@dataclass
class RunResult:
    """One configuration's run, as read back from its offline files."""

    config: dict[str, Any]
    metric: float | None
    record: OfflineRun
    error: str | None = None


@dataclass
class SweepResult:
    sweep: SweepConfig
    runs: list[RunResult]
    best: RunResult | None


def choose_best(runs: list[RunResult], goal: str) -> RunResult | None:
    """The run with the lowest (minimize) or highest (maximize) finite metric; ties keep the first."""
    scored = [r for r in runs if r.metric is not None and math.isfinite(r.metric)]
    if not scored:
        return None
    sign = 1 if goal == "minimize" else -1
    return min(scored, key=lambda r: sign * r.metric)


def _metric_value(record: OfflineRun, name: str | None) -> float | None:
    """A run's metric as W&B reads it: the summary value (the last logged, unless set explicitly)."""
    if name is None or name not in record.summary:
        return None
    value = record.summary[name]
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


WANDB_SETTINGS = dict(silent=True, console="off", x_disable_stats=True, x_disable_meta=True,
                      x_disable_machine_info=True, save_code=False, disable_git=True, disable_job_creation=True)


def run_sweep(sweep: SweepConfig | dict | str, train: Callable[[dict, Callable[[dict], None]], None], *,
              dir: Path, count: int | None = None, seed: int = 0, project: str = "arena-day-010") -> SweepResult:
    """Run every configuration as an offline W&B run, read each back, and choose the best.

    ``train(config, log)`` trains one configuration and calls ``log(metrics)`` (wandb's
    ``run.log``) as it goes. Runs are written under ``dir/wandb/``; nothing leaves the machine.
    A configuration whose training raises is recorded as a failed run (exit code 1, no metric)
    and the sweep goes on, as a W&B agent does.
    """
    import wandb

    if not isinstance(sweep, SweepConfig):
        sweep = parse_sweep_config(sweep)
    Path(dir).mkdir(parents=True, exist_ok=True)
    settings = wandb.Settings(**WANDB_SETTINGS)
    results = []
    for i, config in enumerate(configurations(sweep, count, seed)):
        run = wandb.init(mode="offline", dir=str(dir), project=project, group=sweep.name,
                         name=f"{sweep.name}-{i:03d}", config=config, settings=settings)
        error = None
        try:
            train(config, run.log)
        except Exception as exc:  # noqa: BLE001 (a failed configuration must not end the sweep)
            error = f"{type(exc).__name__}: {exc}"
        run.finish(exit_code=1 if error else 0)
        record = read_finished_run(Path(run.settings.sync_file))
        metric = None if error else _metric_value(record, sweep.metric_name)
        results.append(RunResult(config, metric, record, error))
    return SweepResult(sweep, results, choose_best(results, sweep.goal))


# ---------------------------------------------------------------- the training job: digits with day 9's optimizers

optimizers = importlib.import_module("days.009.optimizers")


def digits_split(seed: int = 0):
    """scikit-learn's 1797 8×8 digits, pixels scaled from 0..16 to 0..1; 500 held out for validation."""
    import torch
    from sklearn.datasets import load_digits

    digits = load_digits()
    X = torch.tensor(digits.data, dtype=torch.float32) / 16
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))
    val, train = order[:500], order[500:]
    return X[train], y[train], X[val], y[val]


def train_digits(config: dict, log: Callable[[dict], None]):
    """Train a 64-hidden-unit MLP on the digits with day 9's optimizer ``config['optimizer']``.

    Config keys: optimizer (sgd, rmsprop, adam, adamw), lr, epochs, batch_size, and optionally
    hidden (64), momentum (SGD, 0), weight_decay (0), seed (0). Logs, after each epoch, the
    epoch's mean training loss, the validation cross-entropy and the validation accuracy.
    Returns the trained model.
    """
    import torch
    import torch.nn.functional as F

    X, y, Xv, yv = digits_split()
    torch.manual_seed(config.get("seed", 0))
    model = torch.nn.Sequential(torch.nn.Linear(64, config.get("hidden", 64)), torch.nn.ReLU(),
                                torch.nn.Linear(config.get("hidden", 64), 10))
    kind = config["optimizer"]
    extra = {"momentum": config.get("momentum", 0.0)} if kind == "sgd" else {}
    opt = optimizers.OPTIMIZERS[kind](model.parameters(), lr=config["lr"],
                                      weight_decay=config.get("weight_decay", 0.0), **extra)
    gen = torch.Generator().manual_seed(config.get("seed", 0))
    batch = config["batch_size"]
    for epoch in range(1, config["epochs"] + 1):
        order = torch.randperm(len(X), generator=gen)
        total = 0.0
        for start in range(0, len(X), batch):
            idx = order[start:start + batch]
            loss = F.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        with torch.no_grad():
            logits = model(Xv)
            log({"epoch": epoch, "train_loss": total / len(X),
                 "val_loss": F.cross_entropy(logits, yv).item(),
                 "val_accuracy": (logits.argmax(1) == yv).float().mean().item()})
    return model


GRID_SWEEP = """\
name: digits-grid
method: grid
metric:
  name: val_loss
  goal: minimize
parameters:
  optimizer:
    values: [sgd, rmsprop, adam]
  lr:
    values: [0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0]
  batch_size:
    value: 64
  epochs:
    value: 10
"""

RANDOM_SWEEP = """\
name: digits-random
method: random
metric:
  name: val_loss
  goal: minimize
run_cap: 40
parameters:
  optimizer:
    values: [sgd, adam]
  lr:
    distribution: log_uniform_values
    min: 0.0001
    max: 1.0
  momentum:
    distribution: uniform
    min: 0.0
    max: 0.95
  batch_size:
    values: [16, 32, 64, 128]
  weight_decay:
    distribution: log_uniform_values
    min: 0.000001
    max: 0.01
  epochs:
    value: 10
"""


def _summarise(result: SweepResult) -> dict:
    return {
        "name": result.sweep.name,
        "method": result.sweep.method,
        "n_runs": len(result.runs),
        "n_finished": sum(r.record.finished for r in result.runs),
        "runs": [{"config": r.config, "val_loss": r.metric, "run_id": r.record.run_id,
                  "val_accuracy": r.record.summary.get("val_accuracy"), "n_history_rows": len(r.record.history)}
                 for r in result.runs],
        "best": {"config": result.best.config, "val_loss": result.best.metric,
                 "val_accuracy": result.best.record.summary.get("val_accuracy"), "run_id": result.best.record.run_id},
    }


def run_experiment(out_dir: Path) -> dict:
    """Run the grid and the random sweep offline; plot validation loss against learning rate."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    scratch = out_dir / "runs"  # offline runs go to runs/wandb/ (ignored by git and the fingerprint)
    shutil.rmtree(scratch / "wandb", ignore_errors=True)  # keep exactly this experiment's runs
    with single_thread():  # tiny matrices: threads only add overhead, and one thread is reproducible
        grid = run_sweep(GRID_SWEEP, train_digits, dir=scratch)
        rand = run_sweep(RANDOM_SWEEP, train_digits, dir=scratch, seed=0)

    colors = {"sgd": "tab:blue", "rmsprop": "tab:red", "adam": "tab:purple"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    axes[1].sharey(axes[0])
    ax = axes[0]
    for kind in ("sgd", "rmsprop", "adam"):
        runs = sorted((r for r in grid.runs if r.config["optimizer"] == kind), key=lambda r: r.config["lr"])
        ax.semilogx([r.config["lr"] for r in runs], [r.metric for r in runs], "o-", color=colors[kind], label=kind)
    ax.plot(grid.best.config["lr"], grid.best.metric, "k*", ms=16, label="best")
    ax.set_yscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("validation loss after 10 epochs")
    ax.set_title(f"Grid sweep: {len(grid.runs)} runs")
    ax.legend()
    ax.grid(True, which="major", alpha=0.3)

    ax = axes[1]
    for kind in ("sgd", "adam"):
        runs = [r for r in rand.runs if r.config["optimizer"] == kind]
        ax.scatter([r.config["lr"] for r in runs], [r.metric for r in runs], s=[r.config["batch_size"] for r in runs],
                   color=colors[kind], alpha=0.7, label=kind)
    ax.plot(rand.best.config["lr"], rand.best.metric, "k*", ms=16, label="best")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("learning rate (drawn log-uniformly)")
    ax.set_ylabel("validation loss after 10 epochs")
    ax.set_title(f"Random sweep: {len(rand.runs)} runs (marker area ∝ batch size)")
    ax.legend()
    ax.grid(True, which="major", alpha=0.3)

    ax = axes[2]
    for label, res, style in (("grid best", grid, "-"), ("random best", rand, "--")):
        hist = res.best.record.history
        ax.plot([h["epoch"] for h in hist], [h["val_loss"] for h in hist], style, color="k", label=f"{label}: validation")
        ax.plot([h["epoch"] for h in hist], [h["train_loss"] for h in hist], style, color="tab:green", label=f"{label}: training")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy")
    ax.set_title("The two best runs, read back from their .wandb files")
    ax.legend(fontsize=8)
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "figures/sweeps.png", dpi=110)
    plt.close(fig)

    best_by_optimizer = {kind: min((r for r in grid.runs if r.config["optimizer"] == kind and r.metric is not None),
                                   key=lambda r: r.metric) for kind in ("sgd", "rmsprop", "adam")}
    results = {"grid": _summarise(grid), "random": _summarise(rand),
               "grid_best_by_optimizer": {kind: {"lr": r.config["lr"], "val_loss": r.metric,
                                                 "val_accuracy": r.record.summary["val_accuracy"]}
                                          for kind, r in best_by_optimizer.items()},
               "grid_distinct_lrs": len({r.config["lr"] for r in grid.runs}),
               "random_distinct_lrs": len({r.config["lr"] for r in rand.runs}),
               # P(at least one of n independent draws lands in the best 5% of the space) = 1 − 0.95ⁿ
               "random_p_top5pct": 1 - 0.95 ** len(rand.runs)}
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
