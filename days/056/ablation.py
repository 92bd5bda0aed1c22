"""Day 56: validating SmolLM2's IOI circuit by mean ablation: faithfulness, completeness, minimality (ARENA 1.4.1, §4).

A circuit C is a set of heads, each kept at the positions where it matters (ARENA's ``SEQ_POS_TO_KEEP``: the name
movers at the end, induction heads at S2, …). To run "only the circuit", every other head's output z, and every
circuit head's z at the other positions, is replaced by its mean over the ABC dataset (three fresh names: "which
name is repeated" is gone), taken separately for each template (``compute_means_by_template``), so what remains is
the circuit plus what any sentence of that template carries. With F(·) the mean logit difference LD = logit(IO) −
logit(S) at the end of the prompts, Wang et al. (2022, §4) ask three things:

- faithfulness: F(C) ≈ F(M), the whole model (reported as F(M) − F(C) and as F(C)/F(M), ARENA's percentage);
- completeness: for every K ⊆ C, the incompleteness |F(C \\ K) − F(M \\ K)| is small: knocking K out of the circuit
  does what knocking it out of the model does (K tried: ∅, each class, random halves of C);
- minimality: for every v ∈ C some K ⊆ C \\ {v} gives a large |F(C \\ (K ∪ {v})) − F(C \\ K)|: every head is
  needed for something (K here: the rest of v's class, Wang et al.'s usual choice; and ∅).

M \\ K mean-ablates the heads of K at every position and keeps everything else. Each number comes with a 95%
bootstrap interval over prompts (the ablation means fixed, prompts resampled with their paired runs).

The circuit is day 55's (its committed results.json): heads classed by copying scores, attention and day 54's path
patching. ARENA's functions keep their names; the masks are per prompt (ARENA's ``get_heads_and_posns_to_keep``
marks, in every prompt, every position any prompt has for that word, which only coincides with ours when all
prompts share one template).
"""

from __future__ import annotations

import importlib
import json
import random
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from checks.timing import single_thread

cd = importlib.import_module("days.055.circuit_map")    # the circuit, word positions
ioi = cd.ioi                                                     # IOIDataset, logit differences


def day53_committed(key: str):
    """A number day 53 committed (its results.json), e.g. the per-prompt clean logit differences."""
    return json.loads((Path(ioi.__file__).parent / "results.json").read_text(encoding="utf-8"))[key]
act_name = ioi.act_name

Circuit = dict[str, list[tuple[int, int]]]


# ---------------------------------------------------------------- ARENA's mean ablation


def template_groups(dataset) -> list[list[int]]:
    """ARENA's ``means_dataset.groups``: the indices of the prompts of each template (ABBA and BABA templates are
    different templates), in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(dataset.prompts):
        groups.setdefault(p["template"], []).append(i)
    return list(groups.values())


@torch.no_grad()
def compute_means_by_template(means_dataset, model) -> Float[Tensor, "layer batch seq head d_head"]:
    """Each head's output z averaged over the prompts of the means dataset that share a template, at every
    position, and written back to each of those prompts' rows (single-token names: a template fixes the length)."""
    _, cache = model.run_with_cache(means_dataset.toks, return_type=None, names_filter=lambda name: name.endswith("hook_z"))
    L, H, d = model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head
    batch, seq = means_dataset.toks.shape
    means = torch.zeros(L, batch, seq, H, d, dtype=cache[act_name("z", 0)].dtype)
    for layer in range(L):
        z = cache[act_name("z", layer)]
        for group in template_groups(means_dataset):
            means[layer, group] = z[group].mean(0)
    return means


def get_heads_and_posns_to_keep(means_dataset, model, circuit: Circuit, seq_pos_to_keep: dict[str, str]
                                ) -> dict[int, Bool[Tensor, "batch seq head"]]:
    """Per layer, where z is *not* ablated: circuit head h of class c at prompt i's position seq_pos_to_keep[c]
    ('IO', 'S1', 'S2', 'end', 'S1+1'; 'all' = every position)."""
    batch, seq = means_dataset.toks.shape
    where = cd.word_positions(means_dataset)
    rows = torch.arange(batch)
    masks = {}
    for layer in range(model.cfg.n_layers):
        mask = torch.zeros(batch, seq, model.cfg.n_heads, dtype=torch.bool)
        for head_type, head_list in circuit.items():
            pos = seq_pos_to_keep[head_type]
            for layer_idx, head_idx in head_list:
                if layer_idx != layer:
                    continue
                if pos == "all":
                    mask[:, :, head_idx] = True
                else:
                    mask[rows, where[pos], head_idx] = True
        masks[layer] = mask
    return masks


def hook_fn_mask_z(z: Float[Tensor, "batch seq head d_head"], hook, heads_and_posns_to_keep: dict[int, Tensor],
                   means: Float[Tensor, "layer batch seq head d_head"]) -> Float[Tensor, "batch seq head d_head"]:
    """z where the mask keeps it, the template mean elsewhere."""
    keep = heads_and_posns_to_keep[hook.layer()].unsqueeze(-1)
    return torch.where(keep, z, means[hook.layer()].to(z.dtype))


def add_mean_ablation_hook(model, means_dataset, circuit: Circuit, seq_pos_to_keep: dict[str, str],
                           is_permanent: bool = True, means: Tensor | None = None):
    """ARENA's add_mean_ablation_hook: remove every hook, then add one on every hook_z that mean-ablates everything
    outside the circuit (means over ``means_dataset`` by template; pass ``means`` to reuse them). The model is
    shared: undo with ``model.reset_hooks(including_permanent=True)``, or use ``mean_ablation``."""
    model.reset_hooks(including_permanent=True)
    means = compute_means_by_template(means_dataset, model) if means is None else means
    keep = get_heads_and_posns_to_keep(means_dataset, model, circuit, seq_pos_to_keep)
    model.add_hook(lambda name: name.endswith("hook_z"), partial(hook_fn_mask_z, heads_and_posns_to_keep=keep,
                                                                  means=means), is_permanent=is_permanent)
    return model


@contextmanager
def mean_ablation(model, means_dataset, circuit: Circuit, seq_pos_to_keep: dict[str, str], means: Tensor | None = None):
    """add_mean_ablation_hook for the duration of a block; every hook is removed after it."""
    try:
        yield add_mean_ablation_hook(model, means_dataset, circuit, seq_pos_to_keep, means=means)
    finally:
        model.reset_hooks(including_permanent=True)


# ---------------------------------------------------------------- F(·) for circuits and knockouts


def all_heads(model) -> list[tuple[int, int]]:
    return [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]


def model_minus(model, knocked_out) -> tuple[Circuit, dict[str, str]]:
    """M \\ K as a circuit: every head but K, kept at every position."""
    out = set(map(tuple, knocked_out))
    return {"rest": [h for h in all_heads(model) if h not in out]}, {"rest": "all"}


def circuit_minus(circuit: Circuit, knocked_out) -> Circuit:
    """C \\ K: the circuit without the heads of K (classes that empty out are dropped)."""
    out = set(map(tuple, knocked_out))
    kept = {c: [h for h in heads if tuple(h) not in out] for c, heads in circuit.items()}
    return {c: heads for c, heads in kept.items() if heads}


@torch.no_grad()
def final_logits(model, ds, means_dataset, means, circuit: Circuit | None = None, seq_pos_to_keep=None
                 ) -> Float[Tensor, "batch d_vocab"]:
    """The logits at each prompt's end: of the model (circuit None) or with everything outside the circuit
    mean-ablated. ``ds`` and ``means_dataset`` are aligned prompt by prompt (the ABC twins)."""
    if circuit is None:
        return ioi.final_logits(model(ds.toks), ds.word_idx["end"])
    with mean_ablation(model, means_dataset, circuit, seq_pos_to_keep, means=means):
        return ioi.final_logits(model(ds.toks), ds.word_idx["end"])


def logit_diffs(model, ds, means_dataset, means, circuit: Circuit | None = None, seq_pos_to_keep=None
                ) -> Float[Tensor, "batch"]:
    """Per-prompt LD = logit(IO) − logit(S) at each prompt's end, of the model or of the circuit."""
    final = final_logits(model, ds, means_dataset, means, circuit, seq_pos_to_keep)
    return ioi.logits_to_ave_logit_diff(final[:, None], ds.answer_tokens, per_prompt=True)


class Evaluator:
    """F(·) per prompt for circuits and knockouts on one dataset, the means computed once, results memoised."""

    def __init__(self, model, ds, means_dataset, circuit: Circuit, seq_pos_to_keep: dict[str, str], means=None):
        self.model, self.ds, self.means_dataset = model, ds, means_dataset
        self.circuit, self.pos = circuit, seq_pos_to_keep
        self.means = compute_means_by_template(means_dataset, model) if means is None else means
        self.cache: dict[tuple, Tensor] = {}
        self.max_abs_logit = 0.0      # the largest final logit seen: the scale of float32 rounding (checks/committed.py)

    def full(self) -> Tensor:
        """F(M) per prompt."""
        return self._run(("M",), None, None)

    def of_circuit(self, knocked_out=()) -> Tensor:
        """F(C \\ K) per prompt."""
        key = ("C", tuple(sorted(map(tuple, knocked_out))))
        return self._run(key, circuit_minus(self.circuit, knocked_out), self.pos)

    def of_model(self, knocked_out=()) -> Tensor:
        """F(M \\ K) per prompt."""
        key = ("M", tuple(sorted(map(tuple, knocked_out))))
        if not knocked_out:
            return self.full()
        return self._run(key, *model_minus(self.model, knocked_out))

    def _run(self, key, circuit, pos) -> Tensor:
        if key not in self.cache:
            final = final_logits(self.model, self.ds, self.means_dataset, self.means, circuit, pos)
            self.max_abs_logit = max(self.max_abs_logit, final.abs().max().item())
            self.cache[key] = ioi.logits_to_ave_logit_diff(final[:, None], self.ds.answer_tokens, per_prompt=True)
        return self.cache[key]


# ---------------------------------------------------------------- bootstrap


def bootstrap_ci(statistic, *samples: Tensor, n_boot: int = 2000, seed: int = 0, level: float = 0.95
                 ) -> tuple[float, float, float]:
    """(point, low, high): the statistic on the prompts and its percentile bootstrap interval, resampling prompts
    with replacement (the same indices for every paired sample)."""
    arrays = [np.asarray(s, dtype=np.float64) for s in samples]
    n = len(arrays[0])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    boots = np.array([statistic(*(a[i] for a in arrays)) for i in idx])
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return float(statistic(*arrays)), float(lo), float(hi)


def mean_gap(a, b) -> float:
    return float(np.mean(a) - np.mean(b))


def abs_entry(point_low_high: tuple[float, float, float]) -> dict:
    """|gap| and its interval, the image of the signed gap's interval under |·| ([0, max] when it straddles 0):
    a percentile interval of |gap*| itself need not contain |gap| when the gap is near zero."""
    point, lo, hi = point_low_high
    ends = sorted((abs(lo), abs(hi)))
    return {"value": abs(point), "ci": [0.0 if lo <= 0 <= hi else ends[0], ends[1]], "signed": point}


def ratio_of_means(a, b) -> float:
    return float(np.mean(a) / np.mean(b))


def entry(point_low_high: tuple[float, float, float]) -> dict:
    point, lo, hi = point_low_high
    return {"value": point, "ci": [lo, hi]}


# ---------------------------------------------------------------- Wang et al.'s three criteria


def faithfulness(ev: Evaluator, n_boot: int = 2000) -> dict:
    """F(M), F(C), F(∅) (everything mean-ablated: the ABC baseline), F(M) − F(C), F(C)/F(M) (ARENA's percentage)
    and (F(C) − F(∅)) / (F(M) − F(∅)) (the share of the behaviour above the baseline the circuit keeps), each with
    its bootstrap interval."""
    m, c, empty = ev.full(), ev.of_circuit(), ev.of_circuit([h for heads in ev.circuit.values() for h in heads])
    return {"F_M": entry(bootstrap_ci(np.mean, m, n_boot=n_boot)), "F_C": entry(bootstrap_ci(np.mean, c, n_boot=n_boot)),
            "F_empty": entry(bootstrap_ci(np.mean, empty, n_boot=n_boot)),
            "gap": entry(bootstrap_ci(mean_gap, m, c, n_boot=n_boot)),
            "ratio": entry(bootstrap_ci(ratio_of_means, c, m, n_boot=n_boot)),
            "normalised": entry(bootstrap_ci(lambda c_, m_, e_: (np.mean(c_) - np.mean(e_)) / (np.mean(m_) - np.mean(e_)),
                                             c, m, empty, n_boot=n_boot))}


def completeness_sets(circuit: Circuit, n_random: int, seed: int = 0) -> dict[str, list[tuple[int, int]]]:
    """The K tried: ∅, each class, and ``n_random`` random subsets (each circuit head in with probability ½,
    ``random.Random(seed)``)."""
    heads = [h for hs in circuit.values() for h in hs]
    rng = random.Random(seed)
    sets = {"empty": [], **{f"class: {c}": list(hs) for c, hs in circuit.items()}}
    for i in range(n_random):
        sets[f"random {i}"] = [h for h in heads if rng.random() < 0.5]
    return sets


def completeness(ev: Evaluator, sets: dict[str, list], n_boot: int = 2000) -> dict:
    """For each K: F(C \\ K), F(M \\ K) and the incompleteness |F(C \\ K) − F(M \\ K)| with its interval."""
    out = {}
    for name, K in sets.items():
        c, m = ev.of_circuit(K), ev.of_model(K)
        out[name] = {"K": [cd.label(h) for h in K], "F_C_minus_K": float(c.mean()), "F_M_minus_K": float(m.mean()),
                     "incompleteness": abs_entry(bootstrap_ci(mean_gap, c, m, n_boot=n_boot))}
    return out


def minimality(ev: Evaluator, n_boot: int = 2000) -> dict:
    """For each circuit head v, with K = the rest of v's class (Wang et al.'s usual choice) and with K = ∅:
    |F(C \\ (K ∪ {v})) − F(C \\ K)| with its interval, and as a fraction of F(C); the larger of the two is v's score."""
    out = {}
    f_c = float(ev.of_circuit().mean())
    for cls, heads in ev.circuit.items():
        for v in heads:
            rest = [h for h in heads if h != v]
            rows = {}
            for name, K in (("class", rest), ("empty", [])):
                without, with_v = ev.of_circuit(K + [v]), ev.of_circuit(K)
                rows[name] = abs_entry(bootstrap_ci(mean_gap, without, with_v, n_boot=n_boot))
            best = max(rows, key=lambda k: rows[k]["value"])
            out[cd.label(v)] = {"class": cls, "K": best, **rows[best], "fraction_of_F_C": rows[best]["value"] / f_c,
                                "by_K": rows}
    return out


def random_circuits(model, circuit: Circuit, n: int, seed: int = 0) -> list[Circuit]:
    """``n`` circuits of the same shape (the same classes, as many heads each, kept at the same positions) with the
    heads drawn at random (``random.Random(seed)``) from the whole model: a baseline for F(C)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        heads = rng.sample(all_heads(model), sum(len(v) for v in circuit.values()))
        it = iter(heads)
        out.append({c: [next(it) for _ in hs] for c, hs in circuit.items()})
    return out


# ---------------------------------------------------------------- the experiment

EXPERIMENT = dict(model="smollm2", N=64, n_random=6, n_random_circuits=3, n_boot=2000, seed=0)


def plot(results: dict, out_dir: Path) -> None:
    import matplotlib.pyplot as plt

    f = results["faithfulness"]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5), constrained_layout=True, gridspec_kw={"width_ratios": [0.6, 1.2, 1.2]})
    keys = [("F_M", "model"), ("F_C", "circuit"), ("F_empty", "all ablated")]
    vals = [f[k]["value"] for k, _ in keys]
    errs = np.array([[f[k]["value"] - f[k]["ci"][0], f[k]["ci"][1] - f[k]["value"]] for k, _ in keys]).T
    axes[0].bar(range(3), vals, yerr=errs, capsize=4, color=["C0", "C2", "C7"])
    axes[0].set_xticks(range(3), [t for _, t in keys])
    axes[0].set_ylabel("mean logit difference (95% bootstrap CI)")
    axes[0].set_title("Faithfulness")

    comp = results["completeness"]
    names = list(comp)
    x = np.arange(len(names))
    axes[1].scatter(x - 0.1, [comp[n]["F_C_minus_K"] for n in names], label="F(C \\ K)", marker="o")
    axes[1].scatter(x + 0.1, [comp[n]["F_M_minus_K"] for n in names], label="F(M \\ K)", marker="s")
    axes[1].set_xticks(x, names, rotation=60, ha="right", fontsize=8)
    axes[1].set_ylabel("mean logit difference")
    axes[1].set_title("Completeness: knocking K out of the circuit vs out of the model")
    axes[1].legend(fontsize=8)

    mini = results["minimality"]
    heads = list(mini)
    vals = [mini[h]["value"] for h in heads]
    errs = np.array([[mini[h]["value"] - mini[h]["ci"][0], mini[h]["ci"][1] - mini[h]["value"]] for h in heads]).T
    axes[2].bar(range(len(heads)), vals, yerr=np.clip(errs, 0, None), capsize=3)
    axes[2].set_xticks(range(len(heads)), [f"{h}\n{mini[h]['class']}" for h in heads], rotation=70, fontsize=7)
    axes[2].set_ylabel("|F(C \\ (K ∪ {v})) − F(C \\ K)|")
    axes[2].set_title("Minimality of each circuit head")
    fig.savefig(out_dir / "figures/validation.png", dpi=110)
    plt.close(fig)


@single_thread()
def run_experiment(out_dir: Path, cfg: dict = EXPERIMENT) -> dict:
    """Day 55's circuit on day 53's first N prompts, everything else mean-ablated by template over their ABC twins:
    faithfulness, completeness (∅, each class, random halves), minimality (every head), bootstrap intervals."""
    from checks.models import hooked_model

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    model = hooked_model(cfg["model"])
    ds, abc = ioi.build(model)
    ds, abc = ds[:cfg["N"]], abc[:cfg["N"]]
    circuit, pos = cd.load_circuit()
    ev = Evaluator(model, ds, abc, circuit, pos)
    sets = completeness_sets(circuit, cfg["n_random"], cfg["seed"])
    results = {"experiment": cfg, "n_prompts": len(ds), "n_templates": len(template_groups(abc)),
               "circuit": {c: [cd.label(h) for h in hs] for c, hs in circuit.items()}, "seq_pos_to_keep": pos,
               "n_circuit_heads": sum(len(v) for v in circuit.values())}
    results["faithfulness"] = faithfulness(ev, cfg["n_boot"])
    results["completeness"] = completeness(ev, sets, cfg["n_boot"])
    results["minimality"] = minimality(ev, cfg["n_boot"])
    randoms = random_circuits(model, circuit, cfg["n_random_circuits"], cfg["seed"])
    results["random_circuits"] = [{"circuit": {c: [cd.label(h) for h in hs] for c, hs in rc.items()},
                                   "F": entry(bootstrap_ci(np.mean, ev._run(("random", i), rc, pos), n_boot=cfg["n_boot"]))}
                                  for i, rc in enumerate(randoms)]
    comp = results["completeness"]
    worst = max(comp, key=lambda k: comp[k]["incompleteness"]["value"])
    mini = results["minimality"]
    results["summary"] = {
        "worst_incompleteness_K": worst, "worst_incompleteness": comp[worst]["incompleteness"]["value"],
        "least_minimal_head": min(mini, key=lambda k: mini[k]["value"]),
        "least_minimality": min(m["value"] for m in mini.values()),
        "n_heads_minimality_ci_above_zero_point_1": sum(m["ci"][0] > 0.1 for m in mini.values()),
    }
    results["per_prompt"] = {"F_M": ev.full().tolist(), "F_C": ev.of_circuit().tolist(),
                             "F_empty": ev.of_circuit([h for hs in circuit.values() for h in hs]).tolist()}
    results["max_abs_logit"] = ev.max_abs_logit
    results["n_forward_passes"] = len(ev.cache)
    plot(results, out_dir)
    results["cpu_seconds"] = time.process_time() - cpu0
    results["wall_seconds"] = time.perf_counter() - wall0
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
