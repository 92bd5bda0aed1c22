"""The gate of day 7: an MNIST classifier (ARENA 0.2 CNNs & ResNets, "Training loop" with
validation, built on day 6's layers).

References: the IDX format's published header layout (checked on hand-built files); the shared
copy's md5 (an independent number from the asset's provenance); MNIST's well-known facts (the
first labels, the per-class counts, the pixel mean 0.1307 and standard deviation 0.3081 that
every MNIST tutorial normalises with); a torch.nn twin of the ConvNet; scikit-learn's metrics.
The training bar is a stated floor for a short run, far above chance (10%), measured with margin.
"""

import gzip
import hashlib
import struct
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, confusion_matrix

from checks import assert_parity
from checks.committed import cited_results, exact, log_space, reproduction_failures, statistical, value_at

from . import mnist as M

HERE = Path(__file__).parent
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def idx_bytes(magic: int, shape: tuple[int, ...], data: bytes) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{len(shape)}I", *shape) + data


# ---------------------------------------------------------------- the loader


def test_parse_idx_reads_a_hand_built_file():
    """An IDX file is a big-endian magic (0x0803 images / 0x0801 labels), one uint32 per
    dimension, then the bytes row-major: a hand-built 2×2×3 file decodes to arange(12)."""
    raw = idx_bytes(M.IMAGE_MAGIC, (2, 2, 3), bytes(range(12)))
    assert torch.equal(M.parse_idx(raw, M.IMAGE_MAGIC), torch.arange(12, dtype=torch.uint8).reshape(2, 2, 3))
    labels = idx_bytes(M.LABEL_MAGIC, (4,), bytes([7, 2, 1, 0]))
    assert M.parse_idx(labels, M.LABEL_MAGIC).tolist() == [7, 2, 1, 0]


@pytest.mark.parametrize("raw, message", [
    (idx_bytes(M.LABEL_MAGIC, (4,), bytes(4)), "magic number 0x00000801"),       # labels read as images
    (idx_bytes(M.IMAGE_MAGIC, (2, 2, 3), bytes(11)), "file has 27 bytes"),         # truncated
    # the header implies 4 + 4·3 + 2·2·3 = 28 bytes
    (idx_bytes(M.IMAGE_MAGIC, (2, 2, 3), bytes(11)), r"shape \(2, 2, 3\) \(28 bytes\), file has 27"),
    (idx_bytes(M.LABEL_MAGIC, (), b""), "magic number 0x00000801"),               # only a (wrong) magic: 4 bytes
    (idx_bytes(M.IMAGE_MAGIC, (2, 2, 3), bytes(13)), "file has 29 bytes"),         # trailing bytes
    (b"\x00\x00", "too short"),
    # the right magic, cut off inside the three sizes: 4 + 4·3 = 16 header bytes needed
    (struct.pack(">I", M.IMAGE_MAGIC) + bytes(5), r"9 bytes is too short for a 3-dimensional IDX header \(16 bytes\)"),
])
def test_parse_idx_rejects_inconsistent_headers(raw, message):
    """A wrong magic number, or a file longer or shorter than its header says, is an IDXError whose message gives the
    header's shape and implied size (4 + 4·ndim + prod(shape) bytes) against the file's."""
    with pytest.raises(M.IDXError, match=message):
        M.parse_idx(raw, M.IMAGE_MAGIC)


@pytest.mark.asset("mnist")
def test_shared_train_images_are_exact(asset):
    """The unpacked train-images file has the published md5 6bbc9ace898e44ae57da46a324031adb and
    the size its header implies: 16 header bytes + 60 000 × 28 × 28 pixels."""
    raw = gzip.decompress((asset("mnist") / "train-images-idx3-ubyte.gz").read_bytes())
    assert hashlib.md5(raw).hexdigest() == "6bbc9ace898e44ae57da46a324031adb"
    assert len(raw) == 16 + 60_000 * 28 * 28
    assert struct.unpack(">4I", raw[:16]) == (M.IMAGE_MAGIC, 60_000, 28, 28)


@pytest.mark.asset("mnist")
def test_load_mnist_returns_the_documented_tensors(measure):
    """load_mnist: float32 (N, 1, 28, 28) in [0, 1] and int64 (N,) labels; 60 000 train and 10 000
    test examples in file order (first labels 5 0 4 1 9… and 7 2 1 0 4…), MNIST's per-class
    counts, and the train pixel mean 0.1307 and std 0.3081 of every MNIST tutorial."""
    images, labels = M.load_mnist("train")
    assert images.shape == (60_000, 1, 28, 28) and images.dtype == torch.float32
    assert labels.shape == (60_000,) and labels.dtype == torch.int64
    assert images.min() == 0.0 and images.max() == 1.0
    assert labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert torch.bincount(labels).tolist() == TRAIN_COUNTS
    mean, std = images.double().mean().item(), images.double().std().item()
    measure("train_pixel_mean", mean, "0.1307 ± 5e-5")
    assert mean == pytest.approx(0.1307, abs=5e-5) and std == pytest.approx(0.3081, abs=5e-5)
    test_images, test_labels = M.load_mnist("test")
    assert test_images.shape == (10_000, 1, 28, 28)
    assert test_labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert torch.bincount(test_labels).tolist() == TEST_COUNTS
    few, few_labels = M.load_mnist("test", limit=7)
    assert torch.equal(few, test_images[:7]) and torch.equal(few_labels, test_labels[:7])
    with pytest.raises(ValueError, match="unknown MNIST split"):
        M.load_mnist("validation")


# ---------------------------------------------------------------- the model


def test_convnet_equals_its_torch_nn_twin():
    """ConvNet is ARENA's architecture: it loads the state_dict of the same stack written with
    torch.nn (strict), gives the same logits (float64, 1e-12), and has the parameter count of
    its layer sizes: (1·9 + 1)·32 + (32·9 + 1)·64 + (3136 + 1)·128 + (128 + 1)·10 = 421 642."""
    twin = nn.Sequential(
        nn.Conv2d(1, 32, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, 1, 1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3136, 128), nn.ReLU(), nn.Linear(128, 10)).double()
    model = M.ConvNet().double()
    model.load_state_dict(twin.state_dict(), strict=True)
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert_parity(model(x), twin(x), atol=1e-12)
    assert sum(p.numel() for p in model.parameters()) == 421_642
    assert sum(p.numel() for p in M.ConvNet(channels=(16, 32), hidden=64).parameters()) == \
        (9 + 1) * 16 + (16 * 9 + 1) * 32 + (32 * 49 + 1) * 64 + (64 + 1) * 10


def test_simple_mlp_is_arenas_and_equals_an_nn_sequential(measure):
    """ARENA 0.2 "Training loop": SimpleMLP is flatten → Linear(28·28, 100) → ReLU → Linear(100, 10)
    with submodules named flatten, linear1, relu, linear2 as in ARENA, and (784 + 1)·100 +
    (100 + 1)·10 = 79 510 parameters (the closed form). With the same weights copied in, its logits
    and every parameter's gradient equal those of nn.Sequential(nn.Flatten(), nn.Linear(784, 100),
    nn.ReLU(), nn.Linear(100, 10)) on a batch of (b, 1, 28, 28) images (float64, atol 1e-12: sums
    of ≤ 784 products of O(1) values round at ~1e-13)."""
    model = M.SimpleMLP().double()
    assert [name for name, _ in model.named_children()] == ["flatten", "linear1", "relu", "linear2"]
    n_params = sum(p.numel() for p in model.parameters())
    measure("simple_mlp.n_parameters", n_params, "= (784 + 1)·100 + (100 + 1)·10")
    assert n_params == (28 * 28 + 1) * 100 + (100 + 1) * 10 == 79_510
    twin = nn.Sequential(nn.Flatten(), nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 10)).double()
    twin.load_state_dict({"1.weight": model.linear1.weight, "1.bias": model.linear1.bias,
                          "3.weight": model.linear2.weight, "3.bias": model.linear2.bias}, strict=True)
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(5), dtype=torch.float64) - 0.5
    out, ref = model(x), twin(x)
    assert out.shape == (6, 10)
    report = assert_parity(out, ref, atol=1e-12, name="SimpleMLP logits")
    measure("simple_mlp.max_abs_err", report.max_abs_err, "≤ 1e-12")
    cot = torch.randn(6, 10, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    (out * cot).sum().backward()
    (ref * cot).sum().backward()
    pairs = [(model.linear1.weight, twin[1].weight), (model.linear1.bias, twin[1].bias),
             (model.linear2.weight, twin[3].weight), (model.linear2.bias, twin[3].bias)]
    for ours, theirs in pairs:
        assert_parity(ours.grad, theirs.grad, atol=1e-12)


@pytest.mark.asset("mnist")
def test_simple_mlp_trains_with_the_training_loop(measure):
    """ARENA trains SimpleMLP first: three epochs of the day's loop (Adam at ARENA's 1e-3, batch
    64, 96 steps) on 2 000 MNIST digits take it to ≥ 80% on 1 000 unseen test digits (chance: 10%;
    seeds 0–2 all reach 84.0%)."""
    torch.manual_seed(0)
    model = M.SimpleMLP()
    train_data, val_data = M.split_train_val(200, limit=2_200, seed=0)
    M.train(model, train_data, val_data, M.TrainConfig(epochs=3, batch_size=64, lr=1e-3, eval_every=1000, seed=0))
    _, accuracy = M.evaluate(model, *M.load_mnist("test", limit=1_000))
    measure("simple_mlp.short_run.test_accuracy", accuracy, "≥ 0.80")
    assert accuracy >= 0.80


def test_evaluation_metrics_match_torch_and_sklearn():
    """evaluate's loss is F.cross_entropy's mean and its accuracy sklearn's accuracy_score, across
    uneven batches; the confusion matrix equals sklearn's; evaluation restores training mode."""
    torch.manual_seed(1)
    model = M.ConvNet(channels=(4, 8), hidden=16)
    x = torch.rand(250, 1, 28, 28)
    y = torch.randint(0, 10, (250,))
    loss, accuracy = M.evaluate(model, x, y, batch_size=64)
    assert model.training
    with torch.no_grad():
        logits = model(x)
    assert loss == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    predictions = M.predict(model, x, batch_size=64)
    assert torch.equal(predictions, logits.argmax(1))
    assert accuracy == pytest.approx(accuracy_score(y.numpy(), predictions.numpy()), abs=1e-12)
    assert M.confusion_matrix(predictions, y).tolist() == confusion_matrix(y.numpy(), predictions.numpy(), labels=range(10)).tolist()


def test_training_is_reproducible_from_its_seed():
    """Two runs with the same seeds (weights and batch order) give identical loss histories."""
    x, y = torch.rand(192, 1, 28, 28, generator=torch.Generator().manual_seed(2)), torch.arange(192) % 10
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        model = M.ConvNet(channels=(4, 8), hidden=16)
        runs.append(M.train(model, (x, y), (x[:32], y[:32]), M.TrainConfig(batch_size=64, eval_every=2, seed=4)))
    assert runs[0].train_loss == runs[1].train_loss and len(runs[0].train_loss) == 3
    assert runs[0].val_step == [2, 3]  # every eval_every steps, and at the end of the epoch


def test_each_epoch_trains_on_every_image_once():
    """train's epoch is one pass over the shuffled training set in mini-batches of batch_size: the batches that
    augment sees (each training batch, per the docstring) are, over 2 epochs of 150 images in batches of 64,
    64, 64, 22 twice, and each epoch's batches hold every training image exactly once. history.seconds is the
    run's wall time: positive and at most the time measured around the call."""
    x, y = torch.rand(150, 16, generator=torch.Generator().manual_seed(5)), torch.arange(150) % 10
    seen = []

    def record(batch, generator):
        seen.append(batch.clone())
        return batch

    torch.manual_seed(0)
    model = nn.Linear(16, 10)                    # any classifier: train only needs logits
    t0 = time.perf_counter()
    history = M.train(model, (x, y), (x[:16], y[:16]), M.TrainConfig(epochs=2, batch_size=64, eval_every=100), record)
    elapsed = time.perf_counter() - t0
    assert [len(b) for b in seen] == [64, 64, 22] * 2
    key = x                                      # uniform random floats: every image is distinct
    for epoch in (seen[:3], seen[3:]):
        got = torch.cat(epoch)
        assert torch.equal(got[torch.argsort(got[:, 0])], key[torch.argsort(key[:, 0])])
    assert 0 < history.seconds <= elapsed


@pytest.mark.asset("mnist")
def test_short_run_on_a_subset_clears_the_bar(measure):
    """Gate: the experiment's ConvNet trained for one epoch on 2 000 training images (batch 32,
    Adam 2e-3) classifies 2 000 unseen test images with ≥ 85% accuracy (chance: 10%), its
    training loss falls, and its validation accuracy is scored during the run."""
    torch.manual_seed(0)
    model = M.ConvNet(**M.EXPERIMENT_MODEL)
    train_data, val_data = M.split_train_val(500, limit=2_500, seed=0)
    history = M.train(model, train_data, val_data, M.TrainConfig(epochs=1, batch_size=32, lr=2e-3, eval_every=30, seed=0))
    _, accuracy = M.evaluate(model, *M.load_mnist("test", limit=2_000))
    measure("short_run.test_accuracy", accuracy, "≥ 0.85")
    measure("short_run.seconds", history.seconds)
    assert sum(history.train_loss[-10:]) < 0.5 * sum(history.train_loss[:10])
    assert history.val_step == [30, 60, 63]
    assert accuracy >= 0.85


# ---------------------------------------------------------------- the experiment


def test_results_json_is_current(committed, measure):
    """results.json (cited by the post) is consistent: the headline test accuracy is ≥ 98% on all
    10 000 test images, equals the confusion matrix's trace / 10 000 with row sums equal to
    MNIST's test class counts, and the figures exist."""
    results = committed
    confusion = torch.tensor(results["confusion"])
    assert confusion.sum(1).tolist() == TEST_COUNTS
    assert results["test_accuracy"] == pytest.approx(confusion.trace().item() / 10_000, abs=1e-12)
    assert results["n_train"] + results["n_val"] == 60_000 and results["n_test"] == 10_000
    assert results["model"] == {"channels": list(M.EXPERIMENT_MODEL["channels"]), "hidden": M.EXPERIMENT_MODEL["hidden"]}
    assert results["test_accuracy"] >= 0.98
    for name in ("learning_curve", "mistakes"):
        assert (HERE / f"figures/{name}.png").stat().st_size > 10_000
    measure("experiment.test_accuracy", results["test_accuracy"], "≥ 0.98")


# ---------------------------------------------------------------- every number the post cites

# How the slow test's rerun of the experiment reproduces each number the post cites from
# results.json. The accuracies come from a float32 training run whose trajectory rounding changes:
# the same seed on the portable kernels (ATEN_CPU_CAPABILITY=default) kept the losses equal to
# about step 33 and then diverged; a run with seed 1 also changes the initialisation, the split
# and the batch order. SPREAD is how far each moved from the committed run. The accuracies'
# tolerances cover the seed's deviation and three times the rounding's, and are three binomial
# standard errors of the difference of two networks' accuracies on the same n images, √(d/n),
# with d at most the sum of their error rates (the most they can disagree on). The most confused pair is
# the seed's: the rounding rerun confused 9 → 4 exactly as often (17), seed 1 other digits (6 → 0
# the most, 13 times; 9 → 4 only 7), so the slow test, which reruns seed 0, allows a cell 1.5 ×
# the Poisson deviation of a count of 17 (√17 ≈ 4).
SPREAD = {  # |rerun − committed|: (seed 0 on the portable kernels, seed 1)
    "test_accuracy": (0.0006, 0.0034), "final_val_accuracy": (0.0012, 0.0018),
    "val_accuracy_after_first_eval": (0.0, 0.0010), "most_confused.count": (0, 4),
    "count of the committed pair (9 → 4)": (0, 10),
}
ACCURACY = statistical(0.006, why="float32 training, 10 000 test images, d ≤ 2 × 1.9%: 3 binomial SEs")
VAL_ACCURACY = statistical(0.009, why="float32 training, 5 000 validation images, d ≤ 2 × 2.1%: 3 binomial SEs")
EARLY_VAL_ACCURACY = statistical(0.021, why="after 50 steps, 5 000 validation images, d ≤ 2 × 12.3%: 3 binomial SEs")
CONFUSIONS = statistical(6, why="one cell's count of test images (≈ 17): 1.5 × its Poisson deviation, for seed 0")
SETTING = exact("a setting of the experiment, not a computed number")
COUNT = exact("a count fixed by the data and the configuration")
TIMING = log_space(1.0, why="a timing: reproducible in order of magnitude only (another CPU, another load)")
CITED = {
    "config.batch_size": SETTING, "config.eval_every": SETTING, "config.lr": SETTING, "torch_threads": SETTING,
    "n_parameters": COUNT, "n_train": COUNT, "n_val": COUNT, "steps": COUNT,
    "test_accuracy": ACCURACY,
    "test_errors": statistical(10_000 * ACCURACY.abs, why="10 000 × the test accuracy's tolerance"),
    "final_val_accuracy": VAL_ACCURACY,
    "val_accuracy_after_first_eval": EARLY_VAL_ACCURACY,
    "most_confused.count": CONFUSIONS,
    "most_confused.true": "pair", "most_confused.predicted": "pair",  # see test_experiment_reproduces_the_posts_numbers
    "train_seconds": TIMING, "seconds_per_step": TIMING,
}



def test_every_number_the_post_cites_has_a_reproduction(committed):
    """Every number the post cites from results.json ({{< result key >}}) is in CITED, so the slow
    test recomputes it and compares it under a stated tolerance (or, for a setting, for equality),
    and exists in results.json; CITED has no stale entries. The exact ones are checked here too:
    the parameter count is the model's, the split sizes and the step count follow from the data
    and the configuration, and test_errors is 10 000 × (1 − test_accuracy)."""
    cited = cited_results(HERE / "post.qmd")
    assert cited == set(CITED)
    for key in cited:
        value_at(committed, key)
    assert committed["n_parameters"] == sum(p.numel() for p in M.ConvNet(**M.EXPERIMENT_MODEL).parameters())
    assert (committed["n_train"], committed["n_val"]) == (60_000 - M.N_VAL, M.N_VAL)
    assert committed["steps"] == M.EXPERIMENT.epochs * -(-committed["n_train"] // M.EXPERIMENT.batch_size)
    assert committed["test_errors"] == round(10_000 * (1 - committed["test_accuracy"]))
    assert committed["config"] == asdict(M.EXPERIMENT)


def _reproduction_failures(results: dict, committed: dict) -> list[str]:
    """What a rerun's results fail to reproduce of the committed ones (CITED's tolerances; the most
    confused pair as a claim about counts, see the slow test), one message per number."""
    pair = committed["most_confused"]
    count = results["confusion"][pair["true"]][pair["predicted"]]
    return reproduction_failures(results, committed, CITED, extra=[
        ("the committed pair's count now, against its committed count", count, pair["count"], CONFUSIONS),
        ("the committed pair's count now, against the largest count now", count,
         results["most_confused"]["count"], CONFUSIONS)])


@pytest.mark.slow
@pytest.mark.asset("mnist")
def test_experiment_reproduces_the_posts_numbers(tmp_path, committed, measure):
    """Slow: the full experiment rerun (one epoch on 55 000 images, one thread, seed 0, about ten
    minutes) reproduces every number the post cites within its tolerance in CITED. The most
    confused pair (a true 9 read as a 4) is reproduced as a claim about counts: in the rerun's
    confusion matrix that pair's count is within CONFUSIONS of the committed count, and of the
    rerun's own largest off-diagonal count (another pair may edge ahead by a few images)."""
    results = M.run_experiment(tmp_path)
    for key in CITED:
        if not isinstance(value_at(results, key), str):
            measure(f"slow.{key}", value_at(results, key))
    failures = _reproduction_failures(results, committed)
    assert not failures, "\n".join(failures)
