"""Day 12: train an MLP on MNIST with day 11's autograd engine (ARENA 0.4 Backpropagation).

- ``MLP``: ARENA's 784 → 64 → ReLU → 64 → ReLU → 10 network, built from day 11's ``Module``,
  ``Linear`` and ``relu`` (any widths).
- ``cross_entropy``: the mean over the batch of −log softmax(z)[y], computed stably as
  log softmax(z) = (z − m) − log Σⱼ exp(zⱼ − m) with m = maxⱼ zⱼ held constant. Its gradient
  with respect to the logits is (softmax(z) − onehot(y)) / batch, and m drops out of it.
- ``SGD``: θ ← θ − η ∇L on the engine's parameters.
- ``train`` and ``test``: ARENA's epoch loop over a loader of (images, labels) batches, and its
  evaluation under ``NoGrad`` (mean loss per example, accuracy).
- ``torch_twin``: the same network in torch with the same weights, trained on the same batches,
  to compare the losses step by step.
"""

from __future__ import annotations

import importlib
import itertools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from jaxtyping import Float, Int

from checks.timing import single_thread

A = importlib.import_module("days.011.autograd")
Tensor, Module, Linear, NoGrad = A.Tensor, A.Module, A.Linear, A.NoGrad

Arr = np.ndarray


class MLP(Module):
    """Linear layers with a ReLU between each pair; the input is flattened to (batch, sizes[0])."""

    def __init__(self, sizes: tuple[int, ...] = (784, 64, 64, 10), seed: int = 0, dtype=np.float32):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.sizes = tuple(sizes)
        self.n_layers = len(sizes) - 1
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            setattr(self, f"linear{i}", Linear(n_in, n_out, rng=rng, dtype=dtype))

    def layers(self) -> list[Linear]:
        return [getattr(self, f"linear{i}") for i in range(self.n_layers)]

    def forward(self, x: Tensor) -> Tensor:
        x = x.reshape(x.shape[0], -1)
        for i, layer in enumerate(self.layers()):
            x = layer(x)
            if i < self.n_layers - 1:
                x = x.relu()
        return x


def cross_entropy(logits: Float[Tensor, "batch classes"], labels: Int[Arr, "batch"]) -> Tensor:
    """Mean cross-entropy −(1/B) Σ_b log softmax(z_b)[y_b], stable for any logits.

    The row maximum m is a constant (a plain array): log softmax does not depend on it, so
    neither does the gradient, and no backward pass through the max is needed.
    """
    m = Tensor(logits.array.max(axis=1, keepdims=True))
    shifted = logits - m
    log_probs = shifted - shifted.exp().sum(dim=1, keepdim=True).log()
    return -log_probs[np.arange(len(labels)), labels].mean()


class SGD:
    """Plain stochastic gradient descent on engine parameters: θ ← θ − η ∇L."""

    def __init__(self, params, lr: float):
        self.params = list(params)
        self.lr = lr

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        for p in self.params:
            if p.grad is not None:
                p.array -= self.lr * p.grad.array


def torch_twin(model: MLP) -> torch.nn.Sequential:
    """The same network in torch, with copies of the same weights (and their dtype)."""
    layers: list[torch.nn.Module] = []
    for i, layer in enumerate(model.layers()):
        linear = torch.nn.Linear(layer.in_features, layer.out_features, dtype=torch.from_numpy(layer.weight.array).dtype)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(layer.weight.array))
            linear.bias.copy_(torch.from_numpy(layer.bias.array))
        layers.append(linear)
        if i < model.n_layers - 1:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(torch.nn.Flatten(), *layers)


def batches(n: int, batch_size: int, epochs: int, seed: int | None) -> Iterator[Int[Arr, "batch"]]:
    """Index batches for ``epochs`` passes, each a fresh permutation from one numpy generator
    seeded with ``seed`` (``None``: the data's own order, no shuffling)."""
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = np.arange(n) if seed is None else rng.permutation(n)
        for start in range(0, n, batch_size):
            yield order[start:start + batch_size]


@dataclass
class Run:
    """Per-step training losses and per-epoch test accuracies of one training run."""

    losses: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _array(values) -> Arr:
    """A batch as a numpy array, whether it comes as our Tensor, a torch tensor (ARENA's
    DataLoader) or an array."""
    if isinstance(values, Tensor):
        return values.array
    return values.numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


Batches = Iterable[tuple[object, object]]


def train(model: Module, train_loader: Batches, optimizer: SGD, epoch: int,
          train_loss_list: list[float] | None = None) -> list[float]:
    """ARENA's training loop for one epoch: for each (images, labels) batch of the loader,
    zero the gradients, compute the mean cross-entropy of the model's logits, backpropagate and
    step. Appends each batch's loss to ``train_loss_list`` (if given) and returns this epoch's
    losses. ``epoch`` only labels the epoch, as in ARENA (which prints it in a progress bar)."""
    losses = train_loss_list if train_loss_list is not None else []
    for data, target in train_loader:
        optimizer.zero_grad()
        loss = cross_entropy(model(Tensor(_array(data))), _array(target))
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test(model: Module, test_loader: Batches, test_loss_list: list[float] | None = None) -> float:
    """ARENA's evaluation: under NoGrad, the cross-entropy summed over every example of the loader
    and divided by their number (appended to ``test_loss_list``, if given), and the accuracy of
    the argmax prediction, which is returned."""
    total_loss, correct, n_data = 0.0, 0, 0
    with NoGrad():
        for data, target in test_loader:
            labels = _array(target)
            logits = model(Tensor(_array(data)))
            total_loss += cross_entropy(logits, labels).item() * len(labels)
            correct += int((logits.array.argmax(axis=1) == labels).sum())
            n_data += len(labels)
    if test_loss_list is not None:
        test_loss_list.append(total_loss / n_data)
    return correct / n_data


def accuracy_ours(model: MLP, images: Arr, labels: Arr, batch: int = 2000) -> float:
    """ARENA's ``test`` on the arrays, in batches of ``batch``."""
    return test(model, ((images[i:i + batch], labels[i:i + batch]) for i in range(0, len(images), batch)))


def accuracy_torch(model: torch.nn.Module, images: Arr, labels: Arr) -> float:
    with torch.no_grad():
        return (model(torch.from_numpy(images)).argmax(1).numpy() == labels).mean().item()


def _train(step: Callable[[Int[Arr, "batch"]], float], evaluate: Callable[[], float] | None, n: int, *,
           epochs: int, batch_size: int, seed: int | None) -> Run:
    """The torch twin's loop: one ``step(batch indices) -> loss`` per batch, and
    ``evaluate() -> test accuracy`` after each epoch (ours is ``train_ours``, on the same batches)."""
    run = Run()
    steps_per_epoch = math.ceil(n / batch_size)
    start = time.perf_counter()
    for i, idx in enumerate(batches(n, batch_size, epochs, seed)):
        run.losses.append(step(idx))
        if evaluate is not None and (i + 1) % steps_per_epoch == 0:
            run.test_accuracy.append(evaluate())
    run.seconds = time.perf_counter() - start
    return run


def train_ours(model: MLP, images: Arr, labels: Arr, *, epochs: int, batch_size: int, lr: float, seed: int | None = 0,
               test: tuple[Arr, Arr] | None = None) -> Run:
    """Mini-batch SGD on the cross-entropy with our engine, one call of ARENA's ``train`` per epoch
    on the batches ``batches`` draws (the same as the torch twin's); the test accuracy after each
    epoch."""
    opt = SGD(model.parameters(), lr)
    run = Run()
    stream = batches(len(images), batch_size, epochs, seed)
    per_epoch = math.ceil(len(images) / batch_size)
    start = time.perf_counter()
    for epoch in range(epochs):
        loader = ((images[idx], labels[idx]) for idx in itertools.islice(stream, per_epoch))
        train(model, loader, opt, epoch, run.losses)
        if test is not None:
            run.test_accuracy.append(accuracy_ours(model, *test))
    run.seconds = time.perf_counter() - start
    return run


def train_torch(model: torch.nn.Module, images: Arr, labels: Arr, *, epochs: int, batch_size: int, lr: float,
                seed: int | None = 0, test: tuple[Arr, Arr] | None = None) -> Run:
    """The same loop in torch: the same batches, torch.optim.SGD, F.cross_entropy."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(labels)

    def step(idx: Arr) -> float:
        t = torch.from_numpy(idx)
        loss = torch.nn.functional.cross_entropy(model(x_all[t]), y_all[t])
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    evaluate = (lambda: accuracy_torch(model, *test)) if test is not None else None
    return _train(step, evaluate, len(images), epochs=epochs, batch_size=batch_size, seed=seed)


def mnist_arrays(split: str, limit: int | None = None) -> tuple[Float[Arr, "n 1 28 28"], Int[Arr, "n"]]:
    """MNIST from day 7's loader, as numpy arrays (float32 images in [0, 1], int64 labels)."""
    mnist = importlib.import_module("days.007.mnist")
    images, labels = mnist.load_mnist(split, limit=limit)
    return images.numpy(), labels.numpy()


def network_grad_check(sizes: tuple[int, ...], n_images: int = 4, seed: int = 0):
    """Central-difference check of every parameter of an MLP at once, float64.

    f maps all weights and biases to the batch cross-entropy on a few MNIST test images;
    grad_fn is one backward pass of our engine. Returns checks.grad_check's report.
    """
    from checks import grad_check

    images, labels = mnist_arrays("test", limit=n_images)
    x = images.astype(np.float64)
    model = MLP(sizes, seed=seed, dtype=np.float64)
    params = list(model.parameters())
    names = [n for n, _ in model.named_parameters()]

    def load(arrays):
        for p, a in zip(params, arrays):
            p.array = a.numpy().copy()
            p.grad = None

    def f(*arrays):
        load(arrays)
        with NoGrad():
            return cross_entropy(model(Tensor(x)), labels).item()

    def grad_fn(*arrays):
        load(arrays)
        cross_entropy(model(Tensor(x)), labels).backward()
        return [p.grad.array for p in params]

    return grad_check(f, [torch.from_numpy(p.array) for p in params], grad_fn=grad_fn, names=names)


# ---------------------------------------------------------------- the experiment

EPOCHS, BATCH, LR, SEED = 5, 64, 0.1, 0


def run_experiment(out_dir: Path) -> dict:
    """Train ARENA's MLP on all 60 000 MNIST images with our engine and, from the same initial
    weights and on the same batches, with torch; plot both loss curves and their difference."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    images, labels = mnist_arrays("train")
    test = mnist_arrays("test")
    ours = MLP(seed=SEED)
    twin = torch_twin(ours)
    with single_thread():  # both engines on one BLAS thread: a like-for-like timing
        run_ours = train_ours(ours, images, labels, epochs=EPOCHS, batch_size=BATCH, lr=LR, seed=SEED, test=test)
        run_torch = train_torch(twin, images, labels, epochs=EPOCHS, batch_size=BATCH, lr=LR, seed=SEED, test=test)

    losses_ours, losses_torch = np.array(run_ours.losses), np.array(run_torch.losses)
    gap = np.abs(losses_ours - losses_torch)
    steps_per_epoch = math.ceil(len(images) / BATCH)

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.4))
    ax = axes[0]
    window = 50
    smooth = lambda v: np.convolve(v, np.ones(window) / window, mode="valid")  # noqa: E731
    ax.plot(losses_ours, color="tab:blue", alpha=0.25, lw=0.6)
    ax.plot(np.arange(window - 1, len(losses_ours)), smooth(losses_ours), color="tab:blue", label="our engine")
    ax.plot(np.arange(window - 1, len(losses_torch)), smooth(losses_torch), "--", color="tab:orange", label="torch twin")
    for e in range(1, EPOCHS):
        ax.axvline(e * steps_per_epoch, color="0.8", lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("step (batch 64; grey lines: epochs)")
    ax.set_ylabel("training cross-entropy (50-step mean)")
    ax.set_title(f"Test accuracy after {EPOCHS} epochs: ours {run_ours.test_accuracy[-1]:.2%}, torch {run_torch.test_accuracy[-1]:.2%}")
    ax.legend()
    ax.grid(True, which="major", alpha=0.3)
    ax = axes[1]
    steps = np.arange(len(gap))
    nonzero = gap > 0
    ax.scatter(steps[nonzero], gap[nonzero], s=1.5, color="tab:purple", label="steps with different losses")
    ax.plot(steps, np.maximum.accumulate(np.maximum(gap, 1e-9)), color="k", lw=1, label="running maximum")
    ax.set_yscale("log")
    ax.set_ylim(bottom=1e-9)
    ax.set_xlabel("step")
    ax.set_ylabel("|loss(ours) − loss(torch)|")
    ax.set_title(f"Same weights, same batches, float32: {np.mean(~nonzero):.0%} of the losses identical")
    ax.legend(loc="upper left", fontsize=8, markerscale=4)
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "figures/training.png", dpi=110)
    plt.close(fig)

    results = {
        "config": {"sizes": list(MLP().sizes), "epochs": EPOCHS, "batch_size": BATCH, "lr": LR, "seed": SEED,
                   "n_train": len(images), "n_test": len(test[0]), "steps": len(losses_ours)},
        "ours": {"test_accuracy": run_ours.test_accuracy, "final_test_accuracy": run_ours.test_accuracy[-1],
                 "seconds": run_ours.seconds, "first_losses": run_ours.losses[:20],
                 "final_loss_mean_last_epoch": float(losses_ours[-steps_per_epoch:].mean())},
        "torch": {"test_accuracy": run_torch.test_accuracy, "final_test_accuracy": run_torch.test_accuracy[-1],
                  "seconds": run_torch.seconds, "first_losses": run_torch.losses[:20],
                  "final_loss_mean_last_epoch": float(losses_torch[-steps_per_epoch:].mean())},
        "loss_gap": {"max_first_100_steps": float(gap[:100].max()), "max": float(gap.max()),
                     "median": float(np.median(gap)), "identical_fraction": float(np.mean(gap == 0)),
                     "first_step_above_1e-4": int(np.argmax(gap > 1e-4)) if (gap > 1e-4).any() else None},
        "time_ratio": run_ours.seconds / run_torch.seconds,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
