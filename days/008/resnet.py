"""Day 8: ResNets, architecture and CIFAR-10 training (ARENA 0.2 CNNs & ResNets, part 3).

A residual block computes  y = ReLU(F(x) + S(x))  where the *left* branch is
F = BN ∘ conv3×3 ∘ ReLU ∘ BN ∘ conv3×3(stride s) and the *right* (shortcut) branch S is the
identity, or, where the shape changes (stride s > 1 or new channel count), the projection
S = BN ∘ conv1×1(stride s). Blocks are stacked into groups; ResNet34 is

    stem:   conv 7×7 stride 2 (3→64) → BN → ReLU → maxpool 3×3 stride 2
    groups: [3, 4, 6, 3] blocks with [64, 128, 256, 512] channels, first strides [1, 2, 2, 2]
    head:   global average pool → linear 512 → 1000

with 21 797 672 parameters, torchvision's figure. Everything is built from day 6's layers. For
32×32 CIFAR images the stem can be the CIFAR one of He et al. (conv 3×3 stride 1, no max pool).
Also here: ARENA's ``copy_weights`` (a torchvision state_dict copied in by position) and
``get_resnet_for_feature_extraction`` (a frozen ResNet34 with a new trainable
head), a loader for CIFAR-10's official python-pickle batches, and a training run on it.
"""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import asdict
from importlib import import_module
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn
from jaxtyping import Float, Int
from torch import Tensor

from checks.assets import resolve

L = import_module("days.006.conv")
mnist = import_module("days.007.mnist")


# ---------------------------------------------------------------- the blocks


class AveragePool(nn.Module):
    """Global average pooling: (b, c, h, w) → (b, c), the mean over h and w."""

    def forward(self, x: Float[Tensor, "b c h w"]) -> Float[Tensor, "b c"]:
        return x.mean(dim=(2, 3))


class ResidualBlock(nn.Module):
    """y = ReLU(left(x) + right(x)); left = conv3×3(stride) → BN → ReLU → conv3×3 → BN.

    right is the identity when the shape is unchanged (stride 1, in = out channels), else the
    projection conv1×1(stride) → BN, so that both branches have shape (b, out, ⌈h/s⌉, ⌈w/s⌉).
    Convolutions carry no bias: each is followed by a BatchNorm whose β plays that role.
    """

    def __init__(self, in_feats: int, out_feats: int, first_stride: int = 1):
        super().__init__()
        self.left = L.Sequential(
            L.Conv2d(in_feats, out_feats, 3, stride=first_stride, padding=1, bias=False), L.BatchNorm2d(out_feats),
            L.ReLU(),
            L.Conv2d(out_feats, out_feats, 3, stride=1, padding=1, bias=False), L.BatchNorm2d(out_feats))
        if first_stride == 1 and in_feats == out_feats:
            self.right = nn.Identity()
        else:
            self.right = L.Sequential(
                L.Conv2d(in_feats, out_feats, 1, stride=first_stride, bias=False), L.BatchNorm2d(out_feats))
        self.relu = L.ReLU()

    def forward(self, x: Float[Tensor, "b c h w"]) -> Float[Tensor, "b o h_out w_out"]:
        return self.relu(self.left(x) + self.right(x))


class BlockGroup(L.Sequential):
    """n_blocks residual blocks: the first changes (in_feats, stride), the rest keep the shape."""

    def __init__(self, n_blocks: int, in_feats: int, out_feats: int, first_stride: int = 1):
        super().__init__(ResidualBlock(in_feats, out_feats, first_stride),
                         *[ResidualBlock(out_feats, out_feats) for _ in range(n_blocks - 1)])


class ResNet(nn.Module):
    """A ResNet of basic blocks; the defaults are ResNet34's (torchvision's layout and size).

    stem "imagenet": conv 7×7 stride 2 pad 3 → BN → ReLU → maxpool 3×3 stride 2 pad 1 (÷4 spatially);
    stem "cifar":    conv 3×3 stride 1 pad 1 → BN → ReLU (for 32×32 inputs, as in He et al. §4.2).
    """

    def __init__(self, n_blocks_per_group: tuple[int, ...] = (3, 4, 6, 3),
                 out_features_per_group: tuple[int, ...] = (64, 128, 256, 512),
                 first_strides_per_group: tuple[int, ...] = (1, 2, 2, 2),
                 n_classes: int = 1000, stem: str = "imagenet"):
        super().__init__()
        if not len(n_blocks_per_group) == len(out_features_per_group) == len(first_strides_per_group):
            raise ValueError("one block count, width and first stride per group")
        width = out_features_per_group[0]
        if stem == "imagenet":
            self.in_layers = L.Sequential(L.Conv2d(3, width, 7, stride=2, padding=3, bias=False), L.BatchNorm2d(width),
                                          L.ReLU(), L.MaxPool2d(3, stride=2, padding=1))
        elif stem == "cifar":
            self.in_layers = L.Sequential(L.Conv2d(3, width, 3, stride=1, padding=1, bias=False), L.BatchNorm2d(width),
                                          L.ReLU())
        else:
            raise ValueError(f"unknown stem {stem!r}: use 'imagenet' or 'cifar'")
        ins = (width, *out_features_per_group[:-1])
        self.residual_layers = L.Sequential(*[
            BlockGroup(n, i, o, s) for n, i, o, s in
            zip(n_blocks_per_group, ins, out_features_per_group, first_strides_per_group)])
        self.out_layers = L.Sequential(AveragePool(), L.Linear(out_features_per_group[-1], n_classes))

    def forward(self, x: Float[Tensor, "b 3 h w"]) -> Float[Tensor, "b n_classes"]:
        return self.out_layers(self.residual_layers(self.in_layers(x)))


def resnet34(n_classes: int = 1000) -> ResNet:
    """ResNet34 exactly as torchvision's ``resnet34()``: 21 797 672 parameters for 1000 classes."""
    return ResNet(n_classes=n_classes)


# ---------------------------------------------------------------- torchvision's names

_RENAMES = [  # (our key pattern, torchvision's key), applied to state_dict keys
    (r"^in_layers\.0\.", "conv1."),
    (r"^in_layers\.1\.", "bn1."),
    (r"^residual_layers\.(\d+)\.(\d+)\.left\.0\.", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.conv1."),
    (r"^residual_layers\.(\d+)\.(\d+)\.left\.1\.", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.bn1."),
    (r"^residual_layers\.(\d+)\.(\d+)\.left\.3\.", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.conv2."),
    (r"^residual_layers\.(\d+)\.(\d+)\.left\.4\.", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.bn2."),
    (r"^residual_layers\.(\d+)\.(\d+)\.right\.(\d)\.", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.{m[3]}."),
    (r"^out_layers\.1\.", "fc."),
]


def torchvision_key(key: str) -> str:
    """Our state_dict key → torchvision's, e.g. residual_layers.1.0.right.0.weight → layer2.0.downsample.0.weight."""
    for pattern, replacement in _RENAMES:
        new, n = re.subn(pattern, replacement, key)
        if n:
            return new
    raise KeyError(f"no torchvision name for {key!r}")


def load_torchvision_state_dict(model: ResNet, state_dict: dict[str, Tensor]) -> None:
    """Load weights saved by torchvision's ResNet (e.g. ``resnet34(weights="IMAGENET1K_V1")``) by name.

    On a machine with torchvision and internet:
    ``load_torchvision_state_dict(m := resnet34(), torchvision.models.resnet34(weights="IMAGENET1K_V1").state_dict())``.
    Strict: every key on both sides must be matched.
    """
    ours = {torchvision_key(k): k for k in model.state_dict()}
    missing, unexpected = set(ours) - set(state_dict), set(state_dict) - set(ours)
    if missing or unexpected:
        raise KeyError(f"missing {sorted(missing)[:5]}…, unexpected {sorted(unexpected)[:5]}…")
    model.load_state_dict({ours[k]: v for k, v in state_dict.items()}, strict=True)


def copy_weights(my_resnet: ResNet, pretrained_resnet: nn.Module | Mapping[str, Tensor]) -> ResNet:
    """ARENA's weight copy: the i-th entry of the pretrained model's state_dict (a module, e.g.
    torchvision's ``resnet34(weights="IMAGENET1K_V1")``, or a state_dict) goes into the i-th entry
    of ours, which lists the same parameters and buffers in the same order under other names.

    Each pair must agree in shape and in kind (the last part of the name: weight, bias,
    running_mean, running_var, num_batches_tracked), and the two must have as many entries;
    otherwise a ValueError names the first entry that does not fit, and nothing is copied.
    Returns ``my_resnet``.
    """
    mine = my_resnet.state_dict()
    theirs = pretrained_resnet.state_dict() if isinstance(pretrained_resnet, nn.Module) else dict(pretrained_resnet)
    if len(mine) != len(theirs):
        raise ValueError(f"mismatching state dicts: {len(theirs)} entries to copy into a model with {len(mine)} entries")
    to_load = {}
    for i, ((my_key, my_value), (key, value)) in enumerate(zip(mine.items(), theirs.items())):
        if tuple(value.shape) != tuple(my_value.shape) or key.rsplit(".", 1)[-1] != my_key.rsplit(".", 1)[-1]:
            raise ValueError(f"entry {i}: {key!r} {tuple(value.shape)} cannot go into {my_key!r} {tuple(my_value.shape)}")
        to_load[my_key] = value
    my_resnet.load_state_dict(to_load, strict=True)
    return my_resnet


def get_resnet_for_feature_extraction(n_classes: int, weights: str | Path | None = None) -> ResNet:
    """ARENA's feature extractor: a ResNet34 whose parameters are all frozen, with its final layer
    replaced by a new, trainable Linear(512, n_classes), so that training fits only that head.

    ``weights`` is the path of a torchvision-style ResNet34 state_dict saved with ``torch.save``
    (on a machine with internet, torchvision's ImageNet weights:
    ``torch.save(torchvision.models.resnet34(weights="IMAGENET1K_V1").state_dict(), path)``);
    it is loaded by position with ``copy_weights``, as ARENA does. ``None`` keeps random weights
    (what the gate tests, and all this machine has). Freezing covers parameters only: in training
    mode BatchNorm still updates its running statistics, so put the model in eval mode for a
    backbone that does not move at all.
    """
    model = resnet34()
    if weights is not None:
        copy_weights(model, torch.load(weights, map_location="cpu", weights_only=True))
    model.requires_grad_(False)
    model.out_layers.add_module("1", L.Linear(model.out_layers[1].in_features, n_classes))  # trainable
    return model


# ---------------------------------------------------------------- CIFAR-10

CIFAR_TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def decode_cifar_batch(batch: dict) -> tuple[Int[Tensor, "n 3 32 32"], Int[Tensor, "n"]]:
    """One python-pickle batch → (uint8 images (n, 3, 32, 32), int64 labels (n,)).

    Each row of b"data" holds 3072 bytes: the 1024 red values of the 32×32 image in row-major
    order, then the 1024 green, then the 1024 blue, so a reshape to (n, 3, 32, 32) is exact.
    """
    data = torch.as_tensor(batch[b"data"])
    labels = torch.as_tensor(batch[b"labels"], dtype=torch.int64)
    if data.dtype != torch.uint8 or data.dim() != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(f"not a CIFAR-10 batch: data {tuple(data.shape)} {data.dtype}, {len(labels)} labels")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(split: str = "train", limit: int | None = None, root: Path | None = None
                 ) -> tuple[Float[Tensor, "n 3 32 32"], Int[Tensor, "n"]]:
    """CIFAR-10 as float32 images in [0, 1], shape (N, 3, 32, 32), and int64 labels (N,).

    "train" concatenates every data_batch_1 … data_batch_5 present (the official set has all
    five, 50 000 images; the shared copy one batch of 5 000); "test" is test_batch. ``limit``
    keeps the first examples. ``root`` defaults to ``checks.assets.resolve("cifar10")``.
    """
    root = Path(root) if root is not None else resolve("cifar10")
    if split == "train":
        files = [root / name for name in CIFAR_TRAIN_FILES if (root / name).exists()]
    elif split == "test":
        files = [root / "test_batch"]
    else:
        raise ValueError(f"unknown CIFAR-10 split {split!r}: use 'train' or 'test'")
    parts = [decode_cifar_batch(_unpickle(f)) for f in files]
    images, labels = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images.to(torch.float32) / 255.0, labels


def cifar10_label_names(root: Path | None = None) -> list[str]:
    """The ten class names, from batches.meta."""
    root = Path(root) if root is not None else resolve("cifar10")
    return [name.decode() for name in _unpickle(root / "batches.meta")[b"label_names"]]


def random_crop_flip(x: Float[Tensor, "b c h w"], generator: torch.Generator, pad: int = 4) -> Float[Tensor, "b c h w"]:
    """The standard CIFAR augmentation: zero-pad by ``pad``, crop a random h×w window, flip half the images.

    The crop reuses day 6's window view: windows(x_pad, (h, w)) has shape (b, c, 2p+1, 2p+1, h, w),
    and image i takes window (dy_i, dx_i).
    """
    b, _, h, w = x.shape
    all_crops = L.windows(L.pad2d(x, pad, pad, pad, pad), (h, w), (1, 1))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    crops = all_crops[torch.arange(b), :, dy, dx]
    flip = torch.rand(b, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], crops.flip(-1), crops)


# ---------------------------------------------------------------- the experiment

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # the usual per-channel normalisation of CIFAR-10
CIFAR_STD = (0.2470, 0.2435, 0.2616)
# A ResNet-8 of the day's blocks: the CIFAR stem, three groups of one block at 16/32/64 channels.
# Its first group also halves the resolution (32 → 16 → 8 → 4), which makes a step 4× cheaper
# on a CPU than He et al.'s 32 → 32 → 16 → 8, at some cost in accuracy.
EXPERIMENT_MODEL = {"n_blocks_per_group": (1, 1, 1), "out_features_per_group": (16, 32, 64),
                    "first_strides_per_group": (2, 2, 2), "n_classes": 10, "stem": "cifar"}
N_VAL = 500
EXPERIMENT = mnist.TrainConfig(epochs=15, batch_size=64, lr=2e-3, eval_every=71, seed=0)  # 71 steps = 1 epoch


def normalise(x: Float[Tensor, "b 3 h w"]) -> Float[Tensor, "b 3 h w"]:
    """(x − mean) / std per channel."""
    return (x - torch.tensor(CIFAR_MEAN)[:, None, None]) / torch.tensor(CIFAR_STD)[:, None, None]


def run_experiment(out_dir: Path) -> dict:
    """Train a small CIFAR ResNet (the day's blocks, [1, 1, 1] × [16, 32, 64]) on 4 500 images of the
    shared 5k subset (500 held out) with crop+flip augmentation; score the 1k test set; draw the
    learning curve and the confusion matrix."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    images, labels = load_cifar10("train")
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(EXPERIMENT.seed))
    val, tr = perm[:N_VAL], perm[N_VAL:]
    train_data, val_data = (normalise(images[tr]), labels[tr]), (normalise(images[val]), labels[val])
    test_images, test_labels = load_cifar10("test")
    test_images = normalise(test_images)

    torch.manual_seed(EXPERIMENT.seed)
    model = ResNet(**EXPERIMENT_MODEL)
    history = mnist.train(model, train_data, val_data, EXPERIMENT, augment=random_crop_flip)
    test_loss, test_accuracy = mnist.evaluate(model, test_images, test_labels)
    _, train_accuracy = mnist.evaluate(model, *train_data)
    predictions = mnist.predict(model, test_images)
    confusion = mnist.confusion_matrix(predictions, test_labels)
    names = cifar10_label_names()

    steps_per_epoch = -(-len(tr) // EXPERIMENT.batch_size)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    losses = torch.tensor(history.train_loss)
    window = steps_per_epoch
    ax1.plot(range(1, len(losses) + 1), losses, color="tab:blue", alpha=0.2, lw=0.6, label="training batch")
    ax1.plot(range(window, len(losses) + 1), losses.unfold(0, window, 1).mean(1), color="tab:blue",
             label="training, mean over an epoch")
    ax1.plot(history.val_step, history.val_loss, "o-", color="tab:orange", ms=3, label=f"validation ({N_VAL})")
    ax1.set_xlabel("step (batch of 64)")
    ax1.set_ylabel("cross-entropy")
    ax1.legend()
    ax2.plot(history.val_step, [100 * a for a in history.val_accuracy], "o-", color="tab:orange", ms=3, label="validation")
    ax2.axhline(100 * test_accuracy, color="k", ls="--", lw=1, label=f"test, end ({100 * test_accuracy:.1f}%)")
    ax2.axhline(10, color="grey", ls=":", lw=1, label="chance")
    ax2.set_xlabel("step (batch of 64)")
    ax2.set_ylabel("accuracy (%)")
    ax2.legend(loc="lower right")
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"A small ResNet on the CIFAR-10 subset ({len(tr)} training images, {EXPERIMENT.epochs} epochs)")
    fig.tight_layout()
    fig.savefig(out_dir / "figures/learning_curve.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.8, 5.8))
    ax.imshow(confusion.numpy(), cmap="Blues")
    for i in range(10):
        for j in range(10):
            value = confusion[i, j].item()
            ax.text(j, i, str(value), ha="center", va="center", fontsize=8,
                    color="white" if value > confusion.max().item() / 2 else "black")
    ax.set_xticks(range(10), names, rotation=45, ha="right")
    ax.set_yticks(range(10), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix on the 1 000 test images ({100 * test_accuracy:.1f}% correct)")
    fig.tight_layout()
    fig.savefig(out_dir / "figures/confusion.png", dpi=120)
    plt.close(fig)

    per_class = (confusion.diagonal().double() / confusion.sum(1)).tolist()
    off = confusion.clone()
    off.fill_diagonal_(0)
    flat = int(off.argmax())
    results = {
        "model": EXPERIMENT_MODEL,
        "config": asdict(EXPERIMENT),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "resnet34_parameters": sum(p.numel() for p in resnet34().parameters()),
        "n_train": len(tr), "n_val": N_VAL, "n_test": len(test_labels),
        "train_seconds": history.seconds,
        "train_minutes": history.seconds / 60,
        "test_accuracy": test_accuracy,
        "test_loss": test_loss,
        "train_accuracy": train_accuracy,
        "final_val_accuracy": history.val_accuracy[-1],
        "per_class_accuracy": dict(zip(names, per_class)),
        "best_class": names[max(range(10), key=lambda i: per_class[i])],
        "worst_class": names[min(range(10), key=lambda i: per_class[i])],
        "most_confused": {"true": names[flat // 10], "predicted": names[flat % 10], "count": int(off.max())},
        "confusion": confusion.tolist(),
        "label_names": names,
        "history": asdict(history),
        "torch_threads": torch.get_num_threads(),
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
