"""Day 42: what breaks probes (ARENA 1.3.1 Linear Probes: probe analysis and failure modes).

A probe's held-out accuracy says that *some* direction separates the training distribution's classes. Four ways that
can mislead, each built on purpose here so that the right answer is known:

1. Distribution shift. Train on "The city of X is in Y." and test on paraphrases, role-play (the same sentence as an
   actor's line) and negations ("... is not in Y."). A probe of truth should transfer; a probe of "Y is where X
   is" (association) inverts on negations.
2. Spurious features. Put a keyword ("Indeed,") on every true training statement: a probe can be perfect by reading
   the keyword. Caught by testing where the keyword marks the false statements, or without any new labels by
   the cosine between the probe and the keyword's direction, k = mean(x | keyword) − mean(x | no keyword).
3. Correlational vs causal. Several directions classify well (difference of means θ, Fisher's Σ⁺θ, logistic
   regression); which one *moves the model's verdict* when added to the residual stream is another question.
4. Where the information is. A last-token probe reads one position; when the statement is followed by other text
   the fact may sit elsewhere. An attention probe pools the whole sequence with learned weights,

       a_s = softmax_s(q · x_s),    logit = Σ_s a_s (v · x_s) + b.
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from checks.timing import single_thread

P40 = importlib.import_module("days.040.probes_theory")
S40 = importlib.import_module("days.040.statements")
C41 = importlib.import_module("days.041.coup_probes")

Pair = S40.Pair


# ---------------------------------------------------------------- 1. distribution shift


def _city_parts(statement: str) -> tuple[str, str]:
    """('Paris', 'France') from 'The city of Paris is in France.'"""
    body = statement.removeprefix("The city of ").rstrip(".")
    city, country = body.split(" is in ")
    return city, country


def paraphrase(pair: Pair) -> Pair:
    """'The city of X is in Y.' → 'X is a city in Y.' (truth unchanged)."""
    (c, t), (_, f) = _city_parts(pair.true), _city_parts(pair.false)
    return Pair(f"{c} is a city in {t}.", f"{c} is a city in {f}.", pair.group)


def roleplay(pair: Pair) -> Pair:
    """The statement as an actor's quoted line in a play (labelled by what the line says)."""
    frame = 'In a play, an actor walks on stage and says: "{}"'
    return Pair(frame.format(pair.true), frame.format(pair.false), pair.group)


def shifted_sets(pairs: Sequence[Pair], seed: int = 0) -> dict[str, list[Pair]]:
    """The cities pairs paraphrased, role-played, and negated (day 40's neg_cities for the same cities)."""
    negated = {p.group: p for p in S40.make_pairs("neg_cities", seed)}
    return {"paraphrase": [paraphrase(p) for p in pairs], "roleplay": [roleplay(p) for p in pairs],
            "neg_cities": [negated[p.group] for p in pairs]}


# ---------------------------------------------------------------- 2. spurious features

KEYWORD = "Indeed, "


def with_keyword(statement: str) -> str:
    return KEYWORD + statement[0].lower() + statement[1:]


def confounded(pairs: Sequence[Pair], where: str) -> tuple[list[str], list[int]]:
    """The pairs flattened (true then false), the keyword on the true statements ('true'), on the false ones
    ('false'), on one statement of every pair, true and false in alternate pairs ('balanced': the keyword is
    independent of the label), or nowhere ('none')."""
    statements, labels, groups = S40.flatten(list(pairs))
    out = []
    for s, y, g in zip(statements, labels, groups):
        mark = {"true": y == 1, "false": y == 0, "balanced": y == g % 2, "none": False}[where]
        out.append(with_keyword(s) if mark else s)
    return out, labels


def keyword_direction(with_kw: Tensor, without_kw: Tensor) -> Tensor:
    """k = mean activation with the keyword − mean activation without."""
    return with_kw.double().mean(0) - without_kw.double().mean(0)


def cosine(a: Tensor, b: Tensor) -> float:
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


# ---------------------------------------------------------------- 3. correlational vs causal


def probe_directions(acts: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """The difference of means θ, Fisher's Σ⁺θ and logistic regression's w, each rescaled to ‖θ‖ (float64)."""
    mm = P40.MMProbe.from_data(acts, labels)
    theta = mm.direction.detach()
    raw = {"mm": theta, "mm_iid": mm.corrected_direction.detach(),
           "lr": P40.LRProbe.from_data(acts, labels).direction.detach()}
    return {k: v / v.norm() * theta.norm() for k, v in raw.items()}


# ---------------------------------------------------------------- 4. attention probes


def attention_probe_forward(acts: Float[Tensor, "b s d"], mask: Bool[Tensor, "b s"], query: Float[Tensor, "d"],
                            value: Float[Tensor, "d"], bias: Tensor | float = 0.0) -> Float[Tensor, "b"]:
    """ARENA's attention_probe_forward: a_s = softmax over the real tokens of q · x_s, logit = Σ_s a_s (v · x_s) + b."""
    scores = (acts @ query).masked_fill(~mask.bool(), float("-inf"))
    weights = scores.softmax(-1)
    return (weights * (acts @ value)).sum(-1) + bias


def attention_probe_loss(acts, mask, labels, query, value, bias, weight_decay: float) -> Tensor:
    """Mean BCE of the attention probe's logits + (λ/2)(‖q‖² + ‖v‖²)."""
    logits = attention_probe_forward(acts, mask, query, value, bias)
    return (nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
            + weight_decay / 2 * (query @ query + value @ value))


class AttentionProbe(nn.Module):
    """An attention probe (query q, value v, bias b) fitted by L-BFGS on standardised activations, the
    standardisation folded back into q and v (z = (x − μ)/s: q·z = (q/s)·x − q·μ/s, and the constant drops out
    of the softmax)."""

    def __init__(self, d: int):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(d, dtype=torch.float64))
        self.value = nn.Parameter(torch.zeros(d, dtype=torch.float64))
        self.bias = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def score(self, acts: Tensor, mask: Tensor) -> Tensor:
        return attention_probe_forward(acts.double(), mask, self.query, self.value, self.bias)

    def pred(self, acts: Tensor, mask: Tensor) -> Tensor:
        return (self.score(acts, mask) > 0).long()

    @staticmethod
    def from_data(acts: Float[Tensor, "b s d"], mask: Bool[Tensor, "b s"], labels: Int[Tensor, "b"],
                  weight_decay: float = 1e-2, max_iter: int = 300, seed: int = 0) -> "AttentionProbe":
        acts, mask = acts.double(), mask.bool()
        real = acts[mask]
        mu, scale = P40.standardiser(real)
        z = (acts - mu) / scale
        d = acts.shape[-1]
        g = torch.Generator().manual_seed(seed)
        q = (1e-2 * torch.randn(d, generator=g, dtype=torch.float64)).requires_grad_()   # symmetry breaking
        v = torch.zeros(d, dtype=torch.float64, requires_grad=True)
        b = torch.zeros((), dtype=torch.float64, requires_grad=True)
        y = torch.as_tensor(labels)
        opt = torch.optim.LBFGS([q, v, b], lr=1, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                                history_size=20, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = attention_probe_loss(z, mask, y, q, v, b, weight_decay)
            loss.backward()
            return loss

        opt.step(closure)
        probe = AttentionProbe(d)
        with torch.no_grad():
            probe.query.copy_(q / scale)
            probe.value.copy_(v / scale)
            probe.bias.copy_(b - (v / scale) @ mu)
        return probe


@torch.no_grad()
def sequence_activations(prompts: Sequence[str], layer: int, model="smollm2", batch_size: int = 32
                         ) -> tuple[Float[Tensor, "b s d"], Bool[Tensor, "b s"]]:
    """The residual stream at ``layer`` at every position (right-padded to the longest prompt) and the mask of
    real tokens."""
    hf, tok = P40.load_model(model)
    tokens, mask = P40.pad_right(tok, prompts)
    out = []
    for start in range(0, len(prompts), batch_size):
        hidden = hf.base_model(input_ids=tokens[start:start + batch_size], attention_mask=mask[start:start + batch_size],
                               output_hidden_states=True).hidden_states[layer]
        out.append(hidden.float())
    return torch.cat(out), mask.bool()


def last_token(acts: Tensor, mask: Tensor) -> Tensor:
    return acts[torch.arange(len(acts)), mask.sum(1) - 1]


def mean_pool(acts: Tensor, mask: Tensor) -> Tensor:
    m = mask.to(acts.dtype)[..., None]
    return (acts * m).sum(1) / m.sum(1)


FILLERS = ("My teacher told me so.", "I read this in a book last week.", "We talked about it over dinner.",
           "A friend mentioned it on the phone yesterday, and I wrote it down.", "That is what I heard.",
           "It came up in a quiz at the library this morning, between two questions about rivers.")


def with_filler(statement: str, i: int) -> str:
    """The statement followed by unrelated text of varying length: the last token is no longer the fact's."""
    return f"{statement} {FILLERS[i % len(FILLERS)]}"


# ---------------------------------------------------------------- the experiment

LAYER = 12
CAUSAL_PAIRS = 50
CAUSAL_COEF = 4.0
N_RANDOM = 12                 # random directions of the same norm (their flip rates vary widely: day 41)


def counted(correct: np.ndarray | Tensor) -> dict:
    correct = np.asarray(correct, dtype=bool)
    k, n = int(correct.sum()), len(correct)
    return {"correct": k, "n": n, "accuracy": k / n, "ci": list(P40.wilson_interval(k, n))}


def split_pairs(n_pairs: int, seed: int, train_fraction: float = 0.6) -> tuple[Tensor, Tensor]:
    """Statement indices of a train/test split by pair (both twins on the same side)."""
    perm = torch.randperm(n_pairs, generator=torch.Generator().manual_seed(seed))
    cut = int(train_fraction * n_pairs)
    idx = lambda p: torch.stack([2 * p, 2 * p + 1], 1).flatten().sort().values
    return idx(perm[:cut]), idx(perm[cut:])


def numbers(tree):
    """The numeric leaves of a result (what the slow test compares), dropping strings."""
    if isinstance(tree, dict):
        return {k: numbers(v) for k, v in tree.items()
                if not isinstance(v, str) and not (isinstance(v, list) and any(isinstance(x, str) for x in v))}
    if isinstance(tree, list):
        return [numbers(v) for v in tree]
    return tree


def compute_results(model="smollm2", seed: int = 0) -> dict:
    """Everything the post cites, from scratch (no files written)."""
    from checks.committed import SMOLLM2_LOGIT_REL, Tolerance

    pairs_all = S40.make_pairs("cities", seed)
    statements, labels, _ = S40.flatten(pairs_all)
    acts, logprobs = P40.activations_and_logprobs(statements, [LAYER], model)
    known = P40.known_pairs(logprobs)
    pairs = [p for p, k in zip(pairs_all, known) if k]
    keep = known.repeat_interleave(2)
    x, y = acts[LAYER][keep], torch.tensor(labels)[keep]
    train, test = split_pairs(len(pairs), seed)
    probes = {"lr": P40.LRProbe.from_data(x[train], y[train]), "mm": P40.MMProbe.from_data(x[train], y[train])}
    near = [float((probes["lr"].score(x).abs() < 100 * SMOLLM2_LOGIT_REL * probes["lr"].score(x).abs().max())
                  .double().mean())]

    # 1. distribution shift
    shift = {"in_distribution": {k: counted(p.pred(x[test]) == y[test]) for k, p in probes.items()}}
    for name, sset in shifted_sets(pairs, seed).items():
        s_statements, s_labels, _ = S40.flatten(sset)
        xs = P40.extract_activations(s_statements, [LAYER], model)[LAYER]
        ys = torch.tensor(s_labels)
        shift[name] = counted(probes["lr"].pred(xs[test]) == ys[test])
        shift[name]["mm"] = counted(probes["mm"].pred(xs[test]) == ys[test])
        shift[name]["example"] = sset[0].true
        refit = P40.LRProbe.from_data(xs[train], ys[train])           # the same set can be probed on its own
        shift[name]["own_probe"] = counted(refit.pred(xs[test]) == ys[test])
        near.append(float((probes["lr"].score(xs).abs() < 100 * SMOLLM2_LOGIT_REL * probes["lr"].score(xs).abs().max())
                          .double().mean()))

    # 2. spurious features: the keyword on every true training statement
    kw = {}
    for where in ("true", "false", "balanced"):
        k_statements, _ = confounded(pairs, where)
        kw[where] = P40.extract_activations(k_statements, [LAYER], model)[LAYER]
    k_statements, _ = confounded(pairs, "balanced")
    has = torch.tensor([s.startswith(KEYWORD) for s in k_statements])
    kw_dir = keyword_direction(kw["balanced"][has], kw["balanced"][~has])
    confounded_probe = P40.LRProbe.from_data(kw["true"][train], y[train])
    balanced_probe = P40.LRProbe.from_data(kw["balanced"][train], y[train])
    confounded_mm = P40.MMProbe.from_data(kw["true"][train], y[train])
    spurious = {
        "keyword": KEYWORD.strip(),
        "in_distribution": counted(confounded_probe.pred(kw["true"][test]) == y[test]),
        "clean": counted(confounded_probe.pred(x[test]) == y[test]),
        "anti": counted(confounded_probe.pred(kw["false"][test]) == y[test]),
        "anti_mm": counted(confounded_mm.pred(kw["false"][test]) == y[test]),
        "balanced_on_anti": counted(balanced_probe.pred(kw["false"][test]) == y[test]),
        "cos_keyword": {"confounded_lr": cosine(confounded_probe.direction, kw_dir),
                        "confounded_mm": cosine(confounded_mm.direction, kw_dir),
                        "plain_lr": cosine(probes["lr"].direction, kw_dir),
                        "balanced_lr": cosine(balanced_probe.direction, kw_dir)},
    }

    # 3. correlational vs causal: the same norm, three directions, steering the True/False verdict
    directions = probe_directions(x, y)
    pair_ids = torch.arange(len(pairs)).repeat_interleave(2)          # folds keep each pair together
    steer_statements, _, _ = S40.flatten(pairs[:CAUSAL_PAIRS])
    baseline = P40.true_false_logit_diff(steer_statements, model)
    causal = {"coef": CAUSAL_COEF, "layer": LAYER, "n_statements": len(steer_statements),
              "cos": {"mm_lr": cosine(directions["mm"], directions["lr"]),
                      "mm_mm_iid": cosine(directions["mm"], directions["mm_iid"]),
                      "lr_mm_iid": cosine(directions["lr"], directions["mm_iid"])},
              "accuracy": {k: counted(P40.cv_correct(x, y, P40.cv_folds(y, 5, seed, pair_ids), k))
                           for k in ("mm", "mm_iid", "lr")},
              "conditions": {}}
    raw_conditions = C41.steering_conditions(steer_statements, {k: d.float() for k, d in directions.items()}, LAYER,
                                             CAUSAL_COEF, model, baseline, seed, n_random=N_RANDOM)
    for name, c in raw_conditions.items():
        causal["conditions"][name] = {"correct": c["flipped"], "n": c["n"], "rate": c["rate"], "ci": c["ci"],
                                      "mean_shift_towards_other": c["mean_shift_towards_other"]}
    causal["random_per_direction"] = raw_conditions["random"]["per_direction"]

    # 4. attention probes: the statement followed by unrelated text
    f_statements = [with_filler(s, i // 2) for i, s in enumerate(statements) if keep[i]]
    seq, mask = sequence_activations(f_statements, LAYER, model)
    attention = {"example": f_statements[0]}
    attn_probe = AttentionProbe.from_data(seq[train], mask[train], y[train])
    attention["attention"] = counted(attn_probe.pred(seq[test], mask[test]) == y[test])
    for name, pool in (("last_token", last_token), ("mean_pool", mean_pool)):
        pooled = pool(seq, mask)
        probe = P40.LRProbe.from_data(pooled[train], y[train])
        attention[name] = counted(probe.pred(pooled[test]) == y[test])
    fact_end = torch.tensor([len(P40.pad_right(P40.load_model(model)[1], [s])[0][0]) - 1
                             for i, s in enumerate(statements) if keep[i]])
    at_fact = seq[torch.arange(len(seq)), fact_end]
    probe = P40.LRProbe.from_data(at_fact[train], y[train])
    attention["fact_token"] = counted(probe.pred(at_fact[test]) == y[test])
    weights = (seq.double() @ attn_probe.query).masked_fill(~mask, float("-inf")).softmax(-1)
    attention["weight_on_fact_token"] = float(weights[torch.arange(len(seq)), fact_end].mean())
    attention["weight_on_last_token"] = float(weights[torch.arange(len(seq)), mask.sum(1) - 1].mean())
    attention["mean_length"] = float(mask.sum(1).double().mean())
    attention["weights_example"] = weights[test[0], :int(mask[test[0]].sum())].tolist()
    attention["tokens_example"] = [P40.load_model(model)[1].decode([t]) for t in
                                   P40.pad_right(P40.load_model(model)[1], [f_statements[int(test[0])]])[0][0]]

    n_test = len(test)
    tol = Tolerance(abs=max(near) + 2 / n_test,
                    reason="predictions within rounding of the boundary (100 × SMOLLM2_LOGIT_REL of the largest "
                           "score), plus two test statements for the refitted probes and the attention probe's "
                           "L-BFGS path")
    return {"model": model if isinstance(model, str) else "custom", "layer": LAYER, "n_known_pairs": len(pairs),
            "n_train_statements": len(train), "n_test_statements": n_test, "shift": shift, "spurious": spurious,
            "causal": causal, "attention": attention, "tolerance": tol}


@single_thread()
def run_experiment(out_dir: Path) -> dict:
    """Four failure modes of probes, built on purpose on SmolLM2 and measured."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    results = compute_results("smollm2")
    results.pop("tolerance")
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")   # the numbers first, then figures

    def bars(ax, entries: dict, title: str, key="accuracy"):
        names = list(entries)
        vals = [entries[n][key] for n in names]
        err = np.array([[entries[n][key] - entries[n]["ci"][0], entries[n]["ci"][1] - entries[n][key]] for n in names]).T
        err = np.clip(err, 0, None)          # Wilson's bound at an accuracy of 1 is 1 up to rounding
        ax.bar(range(len(names)), vals, yerr=err, capsize=4, color=[f"C{i}" for i in range(len(names))])
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_ylim(0, 1.05)
        ax.set_title(title, fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)

    s = results["shift"]
    fig, ax = plt.subplots(figsize=(7, 3.8), constrained_layout=True)
    bars(ax, {"held-out cities": s["in_distribution"]["lr"], "paraphrase": s["paraphrase"],
              "role-play": s["roleplay"], "negated": s["neg_cities"]},
         f"A cities probe (LR, layer {results['layer']}) under distribution shift")
    ax.set_ylabel("accuracy")
    fig.savefig(out_dir / "figures/shift.png", dpi=120)
    plt.close(fig)

    sp = results["spurious"]
    fig, ax = plt.subplots(figsize=(7, 3.8), constrained_layout=True)
    bars(ax, {"keyword on true (train dist.)": sp["in_distribution"], "no keyword": sp["clean"],
              "keyword on false": sp["anti"], "balanced probe, keyword on false": sp["balanced_on_anti"]},
         f"'{sp['keyword']},' on every true training statement")
    ax.set_ylabel("accuracy")
    fig.savefig(out_dir / "figures/spurious.png", dpi=120)
    plt.close(fig)

    c = results["causal"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    bars(axes[0], {k: c["accuracy"][k] for k in ("mm", "mm_iid", "lr")}, "Held-out accuracy (5-fold)")
    bars(axes[1], c["conditions"], f"Verdicts flipped by steering, c = {c['coef']:g}, same norm", key="rate")
    axes[1].set_ylim(0, 1.05)
    fig.savefig(out_dir / "figures/causal.png", dpi=120)
    plt.close(fig)

    at = results["attention"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), constrained_layout=True)
    bars(axes[0], {"last token": at["last_token"], "mean pool": at["mean_pool"], "attention probe": at["attention"],
                   "the fact's last token": at["fact_token"]}, "Statement + unrelated text")
    axes[1].bar(range(len(at["weights_example"])), at["weights_example"])
    axes[1].set_xticks(range(len(at["tokens_example"])), [t.replace("$", r"\$") for t in at["tokens_example"]],
                       rotation=90, fontsize=7)
    axes[1].set_title("The attention probe's weights on one held-out sequence", fontsize=10)
    fig.savefig(out_dir / "figures/attention.png", dpi=120)
    plt.close(fig)

    results["cpu_seconds"] = time.process_time() - cpu0
    results["wall_seconds"] = time.perf_counter() - wall0
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
