"""Day 64: progress measures through grokking (ARENA 1.5.2 Grokking, "Analysis during training"; Nanda et al. 2023).

Day 63 found the algorithm in the final model: logits ≈ Σ_k α_k cos(w_k(a + b − c)) over a few key frequencies.
Nanda et al. turn that into measures that can be taken at every checkpoint, to see *when* the algorithm forms:

- **restricted loss**: keep, in the logits, only the constant and the directions cos(w_k(a + b)),
  sin(w_k(a + b)) of the key frequencies (as functions of the input (a, b), for each output c), and measure the
  loss on all p² inputs. Low restricted loss = the algorithm alone already solves the task.
- **excluded loss**: remove exactly those directions and measure the loss on the *training* pairs. High excluded
  loss = the model relies on the algorithm even for the pairs it could have memorised.
- **weight norm** (Σθ², what weight decay pushes down) and the **singular values of W_E** (a grokked embedding
  lives in the 2K dimensions of the K key frequencies' waves).

The story the paper tells, checked here on our own run: memorisation, then *circuit formation* (excluded loss
rises, restricted loss falls, while the test loss stays high), then *cleanup* (the test loss falls; weight
decay removes the memorising parts; the weight norm drops).
"""

from __future__ import annotations

import importlib
import json
import math
import time
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from checks.timing import single_thread

HERE = Path(__file__).parent
grokking = importlib.import_module("days.062.grokking")
fourier = importlib.import_module("days.063.fourier")


def day62_committed(key: str):
    """A number day 62 committed (its results.json), e.g. the three seeds' grokking steps."""
    return json.loads((Path(grokking.__file__).parent / "results.json").read_text(encoding="utf-8"))[key]


def key_freq_directions(p: int, key_freqs: list[int]) -> Float[Tensor, "n_dir p2"]:
    """The orthonormal functions of (a, b) (flattened, a the slow index) that the logits keep under restriction:
    the constant and, for each key frequency, cos(w_k(a + b)) and sin(w_k(a + b)) (get_trig_sum_directions)."""
    dirs = [fourier.fourier_2d_basis_term(0, 0, p, torch.float64).flatten()]
    for k in key_freqs:
        cos_dir, sin_dir = fourier.get_trig_sum_directions(k, p, torch.float64)
        dirs += [cos_dir.flatten(), sin_dir.flatten()]
    return torch.stack(dirs)


def restrict_logits(logits: Float[Tensor, "p2 p"], key_freqs: list[int]) -> Float[Tensor, "p2 p"]:
    """The logits' projection, for every output c, onto the constant and the key frequencies' cos(w_k(a + b)),
    sin(w_k(a + b)) directions (a sum of project_onto_direction over orthonormal directions)."""
    p = logits.shape[-1]
    x = logits.to(torch.float64)
    return sum(fourier.project_onto_direction(x, d) for d in key_freq_directions(p, key_freqs))


def exclude_logits(logits: Float[Tensor, "p2 p"], key_freqs: list[int]) -> Float[Tensor, "p2 p"]:
    """The logits with the key frequencies' cos(w_k(a + b)), sin(w_k(a + b)) directions removed (the constant
    kept: it is the same for every input)."""
    p = logits.shape[-1]
    x = logits.to(torch.float64)
    return x - sum(fourier.project_onto_direction(x, d) for d in key_freq_directions(p, key_freqs)[1:])


def all_logits(model: HookedTransformer) -> Float[Tensor, "p2 p"]:
    p = model.cfg.d_vocab_out
    with torch.no_grad(), single_thread():
        return grokking.final_position_logits(model, grokking.all_pairs(p))


def restricted_loss(model: HookedTransformer, key_freqs: list[int]) -> float:
    """Nanda et al.'s restricted loss: the cross-entropy on all p² inputs of the logits restricted to the key
    frequencies (restrict_logits)."""
    p = model.cfg.d_vocab_out
    labels = grokking.labels_of(grokking.all_pairs(p), p)
    return float(grokking.cross_entropy_high_precision(restrict_logits(all_logits(model), key_freqs), labels))


def excl_loss(model: HookedTransformer, key_freqs: list[int], train_idx: Int[Tensor, "n"]) -> float:
    """The excluded loss: the cross-entropy on the training pairs of the logits with the key frequencies'
    directions removed (exclude_logits). ARENA's exercise returns one loss per frequency excluded alone; this is
    the paper's measure, all key frequencies at once (``excl_loss_per_freq`` gives ARENA's)."""
    p = model.cfg.d_vocab_out
    labels = grokking.labels_of(grokking.all_pairs(p), p)
    logits = exclude_logits(all_logits(model), key_freqs)
    return float(grokking.cross_entropy_high_precision(logits[train_idx], labels[train_idx]))


def excl_loss_per_freq(model: HookedTransformer, key_freqs: list[int], train_idx: Int[Tensor, "n"]) -> list[float]:
    """ARENA's excluded loss: for each key frequency on its own, the training loss with its two directions removed."""
    return [excl_loss(model, [k], train_idx) for k in key_freqs]


def weight_norm_sq(model: HookedTransformer) -> float:
    """Σθ² over the trained parameters (the biases are frozen at zero and add nothing)."""
    return sum(float(q.detach().double().pow(2).sum()) for q in model.parameters())


def embedding_singular_values(model: HookedTransformer) -> Float[Tensor, "d"]:
    """The singular values of W_E (the p residues' rows), largest first."""
    return torch.linalg.svdvals(model.W_E[: model.cfg.d_vocab_out].detach().double())


def progress_measures(model: HookedTransformer, key_freqs: list[int], train_idx: Tensor, test_idx: Tensor) -> dict:
    """All the measures of one checkpoint."""
    p = model.cfg.d_vocab_out
    logits = all_logits(model)
    labels = grokking.labels_of(grokking.all_pairs(p), p)
    ce = grokking.cross_entropy_high_precision
    restricted = restrict_logits(logits, key_freqs)
    excluded = exclude_logits(logits, key_freqs)
    sv = embedding_singular_values(model)
    norms = fourier.embedding_freq_norms(model.W_E[:p].detach().double())
    return {"train_loss": float(ce(logits[train_idx], labels[train_idx])),
            "test_loss": float(ce(logits[test_idx], labels[test_idx])),
            "train_accuracy": grokking.accuracy(logits[train_idx], labels[train_idx]),
            "test_accuracy": grokking.accuracy(logits[test_idx], labels[test_idx]),
            "restricted_loss": float(ce(restricted, labels)),
            "excluded_loss": float(ce(excluded[train_idx], labels[train_idx])),
            "weight_norm_sq": weight_norm_sq(model),
            "W_E_singular_values": sv[:20].tolist(),
            "W_E_rank_99": int((sv.pow(2).cumsum(0) / sv.pow(2).sum() < 0.99).sum()) + 1,
            "key_share_W_E": float(norms[[k - 1 for k in key_freqs]].sum() / norms.sum())}


def measures_over_training(checkpoints: list[tuple[int, dict]], p: int, key_freqs: list[int], train_idx: Tensor,
                           test_idx: Tensor) -> list[dict]:
    """progress_measures at every checkpoint (step, state dict)."""
    model = grokking.make_model(grokking.grokking_config(p))
    out = []
    for step, state in checkpoints:
        model.load_state_dict(state)
        out.append({"step": step, **progress_measures(model, key_freqs, train_idx, test_idx)})
    return out


def first_crossing(series: list[dict], key: str, level: float, below: bool = True) -> int | None:
    """The first step at which series[key] is below (or above) level."""
    return next((e["step"] for e in series if (e[key] < level if below else e[key] > level)), None)


def phase_landmarks(series: list[dict], memorised_step: int) -> dict:
    """When each measure moves, on a log scale: the first step after memorisation at which the measure has covered
    half of its (log) way from its value at memorisation to its final value. Test loss and restricted loss fall,
    excluded loss rises then falls (its peak is reported), the weight norm falls."""
    after = [e for e in series if e["step"] >= memorised_step]
    out = {}
    for key in ("test_loss", "restricted_loss", "weight_norm_sq"):
        start, end = math.log(after[0][key]), math.log(after[-1][key])
        out[f"{key}_halfway_step"] = first_crossing(after, key, math.exp((start + end) / 2))
    peak = max(after, key=lambda e: e["excluded_loss"])
    out["excluded_loss_peak_step"], out["excluded_loss_peak"] = peak["step"], peak["excluded_loss"]
    start = math.log(after[0]["excluded_loss"])
    out["excluded_loss_halfway_up_step"] = first_crossing(after, "excluded_loss", math.exp((start + math.log(peak["excluded_loss"])) / 2),
                                                          below=False)
    return out


def plot_measures(series: list[dict], landmarks: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    steps = [e["step"] for e in series]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    ax = axes[0]
    for key, label in (("train_loss", "train loss"), ("test_loss", "test loss"),
                       ("restricted_loss", "restricted loss (all pairs)"), ("excluded_loss", "excluded loss (train pairs)")):
        ax.plot(steps, [e[key] for e in series], label=label)
    for key, ls in (("restricted_loss_halfway_step", ":"), ("test_loss_halfway_step", "--")):
        if landmarks.get(key) is not None:
            ax.axvline(landmarks[key], color="gray", ls=ls, lw=1)
    ax.set(xlabel="step", ylabel="cross-entropy", yscale="log", title="Losses (restricted/excluded: key frequencies)")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.plot(steps, [e["weight_norm_sq"] for e in series], color="C4")
    ax2 = ax.twinx()
    ax2.plot(steps, [e["key_share_W_E"] for e in series], color="C5")
    ax.set(xlabel="step", ylabel="Σθ² (purple)", title="Weight norm and key frequencies' share of W_E")
    ax2.set_ylabel("key share of W_E's Fourier norm (brown)")
    ax = axes[2]
    sv = torch.tensor([e["W_E_singular_values"] for e in series])
    for i in range(min(20, sv.shape[1])):
        ax.plot(steps, sv[:, i], color=plt.cm.viridis(i / 20), lw=1)
    ax.set(xlabel="step", ylabel="singular value", title="Top 20 singular values of W_E")
    for a in axes:
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_experiment(out_dir: Path = HERE, checkpoint_series: Path | None = None) -> dict:
    """Day 62's first committed run, again with a checkpoint every 100 steps (or read from ``checkpoint_series``,
    saved by day 62's run_experiment), measured at every checkpoint with the final model's key frequencies
    (day 63's find_key_freqs): results.json and figures/progress.png."""
    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    t0, cpu0 = time.perf_counter(), time.process_time()
    from dataclasses import asdict, replace

    cfg = replace(grokking.FULL, seed=0, data_seed=0, checkpoint_every=100)
    if checkpoint_series is not None and Path(checkpoint_series).exists():
        saved = torch.load(checkpoint_series, weights_only=False)
        assert saved["config"] == asdict(cfg), "the saved series is of another run"
        checkpoints, source = saved["checkpoints"], "saved by day 62's experiment"
    else:
        _, log = grokking.train(cfg)
        checkpoints, source = log["checkpoints"], "trained here"
    train_idx, test_idx = grokking.train_test_split(cfg.p, cfg.frac_train, cfg.data_seed)
    final = grokking.make_model(grokking.grokking_config(cfg.p))
    final.load_state_dict(checkpoints[-1][1])
    key_freqs, share = fourier.find_key_freqs(final.W_E[: cfg.p].detach())
    with single_thread():
        series = measures_over_training(checkpoints, cfg.p, key_freqs, train_idx, test_idx)
    memorised = next(e["step"] for e in series if e["train_accuracy"] == 1.0)
    landmarks = phase_landmarks(series, memorised)
    plot_measures(series, landmarks, out_dir / "figures" / "progress.png")
    results = {"config": asdict(cfg), "checkpoint_source": source, "key_freqs": key_freqs, "key_share_W_E": share,
               "memorised_step": memorised, "landmarks": landmarks, "series": series,
               "final": series[-1],
               "excluded_per_freq_final": excl_loss_per_freq(final, key_freqs, train_idx)}
    results["experiment_seconds"] = time.perf_counter() - t0
    results["experiment_cpu_seconds"] = time.process_time() - cpu0
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
