"""Day 7: an MNIST classifier (ARENA 0.2 CNNs & ResNets).

- ``load_mnist``: MNIST from its original IDX files, found through the asset resolver
  (``checks.assets.resolve("mnist")``). An IDX file is a big-endian header, then raw bytes:

      magic = 0x00 0x00 <dtype code> <number of dimensions>    (0x08 = unsigned byte)
      one uint32 per dimension (the sizes), then prod(sizes) values, row-major.

  Images are 0x00000803 (N, 28, 28), labels 0x00000801 (N,). The header is checked against the
  file's length, so a truncated or padded file is an error, not a silent misread.
- ``SimpleMLP``: ARENA's first model, flatten → linear(784→100) → ReLU → linear(100→10).
- ``ConvNet``: ARENA's classifier built from day 6's modules,
  conv(1→32, 3×3, pad 1) → ReLU → maxpool 2 → conv(32→64) → ReLU → maxpool 2 → flatten →
  linear(3136→128) → ReLU → linear(128→10).
- ``train``: mini-batch Adam on the cross-entropy, with a held-out validation split scored
  after every epoch (and a few times within it, for the learning curve).
"""

from __future__ import annotations

import gzip
import json
import struct
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import import_module
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from checks.assets import resolve

# ---------------------------------------------------------------- the IDX loader

SPLITS = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60_000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10_000),
}
IMAGE_MAGIC, LABEL_MAGIC = 0x00000803, 0x00000801


class IDXError(ValueError):
    """An IDX file whose header does not describe its contents."""


def parse_idx(raw: bytes, expected_magic: int, name: str = "idx") -> Int[Tensor, "..."]:
    """Decode an unpacked IDX file of unsigned bytes into a uint8 tensor of the header's shape.

    Checks: the magic number (dtype 0x08, the expected number of dimensions), and that the file
    holds exactly 4 + 4·ndim header bytes plus prod(sizes) data bytes.
    """
    if len(raw) < 4:
        raise IDXError(f"{name}: {len(raw)} bytes is too short for an IDX header")
    (magic,) = struct.unpack(">I", raw[:4])
    if magic != expected_magic:
        raise IDXError(f"{name}: magic number 0x{magic:08x}, expected 0x{expected_magic:08x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IDXError(f"{name}: {len(raw)} bytes is too short for a {ndim}-dimensional IDX header ({header} bytes)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    n_values = 1
    for size in shape:
        n_values *= size
    if len(raw) != header + n_values:
        raise IDXError(f"{name}: header says shape {shape} ({header + n_values} bytes), file has {len(raw)} bytes")
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(shape)


def read_idx_gz(path: Path, expected_magic: int) -> Int[Tensor, "..."]:
    """Unpack a gzipped IDX file and parse it (see ``parse_idx``)."""
    return parse_idx(gzip.decompress(Path(path).read_bytes()), expected_magic, Path(path).name)


@lru_cache(maxsize=2)
def _load_split_uint8(split: str) -> tuple[Tensor, Tensor]:
    image_file, label_file, n = SPLITS[split]
    root = resolve("mnist")
    images = read_idx_gz(root / image_file, IMAGE_MAGIC)
    labels = read_idx_gz(root / label_file, LABEL_MAGIC)
    if tuple(images.shape) != (n, 28, 28) or tuple(labels.shape) != (n,):
        raise IDXError(f"MNIST {split}: images {tuple(images.shape)}, labels {tuple(labels.shape)}; "
                       f"expected ({n}, 28, 28) and ({n},)")
    if int(labels.max()) > 9:
        raise IDXError(f"MNIST {split}: a label above 9")
    return images, labels


def load_mnist(split: str = "train", limit: int | None = None) -> tuple[Float[Tensor, "n 1 28 28"], Int[Tensor, "n"]]:
    """MNIST images as float32 in [0, 1] (pixel / 255), shape (N, 1, 28, 28), and int64 labels (N,).

    ``split`` is "train" (60 000) or "test" (10 000); ``limit`` keeps the first ``limit`` examples
    (the files' own order). The files come from ``checks.assets.resolve("mnist")``: the shared
    copy, the user cache, or a download when online. Decoded files are cached in memory.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown MNIST split {split!r}: use 'train' or 'test'")
    images, labels = _load_split_uint8(split)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images[:, None].to(torch.float32) / 255.0, labels.to(torch.int64)


# ---------------------------------------------------------------- the model

nn6 = import_module("days.006.conv")


class SimpleMLP(torch.nn.Module):
    """ARENA's first MNIST model, from day 6's layers: (1, 28, 28) → flatten 784 → linear 100 →
    ReLU → linear 10 (logits); (784 + 1)·100 + (100 + 1)·10 = 79 510 parameters."""

    def __init__(self):
        super().__init__()
        self.flatten = nn6.Flatten()
        self.linear1 = nn6.Linear(28 * 28, 100)
        self.relu = nn6.ReLU()
        self.linear2 = nn6.Linear(100, 10)

    def forward(self, x: Float[Tensor, "b 1 28 28"]) -> Float[Tensor, "b 10"]:
        return self.linear2(self.relu(self.linear1(self.flatten(x))))


class ConvNet(nn6.Sequential):
    """ARENA's MNIST ConvNet from day 6's layers (a ``Sequential``, so its state_dict keys are torch's).

    (1, 28, 28) → conv 3×3 pad 1 → 32×28×28 → ReLU → maxpool 2 → 32×14×14 → conv 3×3 pad 1 →
    64×14×14 → ReLU → maxpool 2 → 64×7×7 → flatten 3136 → linear 128 → ReLU → linear 10 (logits).
    """

    def __init__(self, channels: tuple[int, int] = (32, 64), hidden: int = 128, n_classes: int = 10):
        c1, c2 = channels
        super().__init__(
            nn6.Conv2d(1, c1, 3, stride=1, padding=1), nn6.ReLU(), nn6.MaxPool2d(2),
            nn6.Conv2d(c1, c2, 3, stride=1, padding=1), nn6.ReLU(), nn6.MaxPool2d(2),
            nn6.Flatten(), nn6.Linear(c2 * 7 * 7, hidden), nn6.ReLU(), nn6.Linear(hidden, n_classes))


# ---------------------------------------------------------------- training with validation


@dataclass
class TrainConfig:
    """Mini-batch Adam on the mean cross-entropy; validation every ``eval_every`` steps and at each epoch's end."""

    epochs: int = 1
    batch_size: int = 64
    lr: float = 1e-3
    eval_every: int = 100
    seed: int = 0


@dataclass
class History:
    """What a training run measured: per-step training loss, and validation points (step, loss, accuracy)."""

    train_loss: list[float] = field(default_factory=list)
    val_step: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0


@torch.no_grad()
def evaluate(model: torch.nn.Module, images: Float[Tensor, "n 1 28 28"], labels: Int[Tensor, "n"],
             batch_size: int = 1000) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` in eval mode; the previous mode is restored."""
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(images), batch_size):
        logits = model(images[start: start + batch_size])
        y = labels[start: start + batch_size]
        total_loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(dim=1) == y).sum().item()
    model.train(was_training)
    return total_loss / len(images), correct / len(images)


def train(model: torch.nn.Module, train_data: tuple[Tensor, Tensor], val_data: tuple[Tensor, Tensor],
          config: TrainConfig, augment: Callable[[Tensor, torch.Generator], Tensor] | None = None) -> History:
    """Train with Adam on shuffled mini-batches; score the validation set as the run goes.

    Each step: logits = model(x_batch); loss = mean_i −log softmax(logits_i)[y_i]; Adam update.
    ``augment(x_batch, generator)``, if given, transforms each training batch (never validation).
    The shuffling (and augmentation) use one generator seeded by ``config.seed``, so a run is
    reproducible.
    """
    images, labels = train_data
    gen = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    history = History()
    start = time.perf_counter()
    step = 0
    model.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(images), generator=gen)
        for first in range(0, len(images), config.batch_size):
            idx = order[first: first + config.batch_size]
            x = images[idx] if augment is None else augment(images[idx], gen)
            loss = F.cross_entropy(model(x), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            history.train_loss.append(loss.item())
            step += 1
            if step % config.eval_every == 0:
                _record(history, step, model, val_data)
        if not history.val_step or history.val_step[-1] != step:
            _record(history, step, model, val_data)
    history.seconds = time.perf_counter() - start
    return history


def _record(history: History, step: int, model: torch.nn.Module, val_data: tuple[Tensor, Tensor]) -> None:
    loss, accuracy = evaluate(model, *val_data)
    history.val_step.append(step)
    history.val_loss.append(loss)
    history.val_accuracy.append(accuracy)


def split_train_val(n_val: int, limit: int | None = None, seed: int = 0) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """MNIST's training file split at random into (train, validation); validation has ``n_val`` examples."""
    images, labels = load_mnist("train", limit)
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    val, tr = perm[:n_val], perm[n_val:]
    return (images[tr], labels[tr]), (images[val], labels[val])


def confusion_matrix(predictions: Int[Tensor, "n"], labels: Int[Tensor, "n"], n_classes: int = 10) -> Int[Tensor, "k k"]:
    """counts[true, predicted]: bincount of true·k + predicted."""
    return torch.bincount(labels * n_classes + predictions, minlength=n_classes**2).reshape(n_classes, n_classes)


@torch.no_grad()
def predict(model: torch.nn.Module, images: Tensor, batch_size: int = 1000) -> Int[Tensor, "n"]:
    """argmax of the logits, in eval mode, batch by batch."""
    model.eval()
    return torch.cat([model(images[s: s + batch_size]).argmax(1) for s in range(0, len(images), batch_size)])


# ---------------------------------------------------------------- the experiment

EXPERIMENT = TrainConfig(epochs=1, batch_size=64, lr=1e-3, eval_every=50, seed=0)
EXPERIMENT_MODEL = {"channels": (32, 64), "hidden": 128}  # ARENA's ConvNet
N_VAL = 5_000


def run_experiment(out_dir: Path) -> dict:
    """Train the ConvNet on 55k MNIST images (5k held out for validation), score the 10k test set,
    draw the learning curves and the test set's most confident mistakes."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(EXPERIMENT.seed)
    model = ConvNet(**EXPERIMENT_MODEL)
    train_data, val_data = split_train_val(N_VAL, seed=EXPERIMENT.seed)
    history = train(model, train_data, val_data, EXPERIMENT)
    test_images, test_labels = load_mnist("test")
    test_loss, test_accuracy = evaluate(model, test_images, test_labels)
    predictions = predict(model, test_images)
    confusion = confusion_matrix(predictions, test_labels)

    steps_per_epoch = -(-len(train_data[0]) // EXPERIMENT.batch_size)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    window = 50
    losses = torch.tensor(history.train_loss)
    smooth = losses.unfold(0, window, 1).mean(1)
    ax1.semilogy(range(1, len(losses) + 1), losses, color="tab:blue", alpha=0.2, lw=0.6, label="training batch")
    ax1.semilogy(range(window, len(losses) + 1), smooth, color="tab:blue", label=f"training, mean of {window} batches")
    ax1.semilogy(history.val_step, history.val_loss, "o-", color="tab:orange", ms=3, label="validation (5k)")
    ax1.set_xlabel("step (batch of 64)")
    ax1.set_ylabel("cross-entropy")
    ax1.legend()
    ax2.plot(history.val_step, [100 * a for a in history.val_accuracy], "o-", color="tab:orange", ms=3, label="validation")
    ax2.axhline(100 * test_accuracy, color="k", ls="--", lw=1, label=f"test, end of training ({100 * test_accuracy:.2f}%)")
    ax2.set_ylim(95, 100)
    ax2.set_xlabel("step (batch of 64)")
    ax2.set_ylabel("accuracy (%)")
    ax2.legend(loc="lower right")
    for ax in (ax1, ax2):
        for epoch in range(1, EXPERIMENT.epochs):
            ax.axvline(epoch * steps_per_epoch, color="grey", lw=0.8, ls=":")
        ax.grid(True, alpha=0.3)
    fig.suptitle("ConvNet from day 6's layers on MNIST" + (" (dotted: epoch boundary)" if EXPERIMENT.epochs > 1 else ""))
    fig.tight_layout()
    fig.savefig(out_dir / "figures/learning_curve.png", dpi=120)
    plt.close(fig)

    with torch.no_grad():
        model.eval()
        probs = torch.softmax(model(test_images), dim=1)
    wrong = (predictions != test_labels).nonzero()[:, 0]
    worst = wrong[probs[wrong, predictions[wrong]].argsort(descending=True)][:16]
    fig, axes = plt.subplots(2, 8, figsize=(11, 3.3))
    for ax, i in zip(axes.flat, worst.tolist()):
        ax.imshow(test_images[i, 0].numpy(), cmap="gray_r")
        ax.set_title(f"{test_labels[i].item()} → {predictions[i].item()} ({probs[i, predictions[i]]:.0%})", fontsize=9)
        ax.set_axis_off()
    fig.suptitle("The test set's most confident mistakes: true → predicted (probability)")
    fig.tight_layout()
    fig.savefig(out_dir / "figures/mistakes.png", dpi=120)
    plt.close(fig)

    results = {
        "config": asdict(EXPERIMENT),
        "model": EXPERIMENT_MODEL,
        "n_train": len(train_data[0]),
        "n_val": len(val_data[0]),
        "n_test": len(test_images),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "steps": len(history.train_loss),
        "train_seconds": history.seconds,
        "seconds_per_step": history.seconds / len(history.train_loss),
        "final_val_accuracy": history.val_accuracy[-1],
        "val_accuracy_after_first_eval": history.val_accuracy[0],
        "test_loss": test_loss,
        "test_accuracy": test_accuracy,
        "test_errors": int((predictions != test_labels).sum()),
        "most_confused": _most_confused(confusion),
        "confusion": confusion.tolist(),
        "history": asdict(history),
        "torch_threads": torch.get_num_threads(),
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results


def _most_confused(confusion: Tensor) -> dict:
    off = confusion.clone()
    off.fill_diagonal_(0)
    flat = int(off.argmax())
    return {"true": flat // 10, "predicted": flat % 10, "count": int(off.max())}
