"""Day 40: probing theory: is "true" a direction in SmolLM2's residual stream? (ARENA 1.3.1 Linear Probes)

A *probe* is a classifier read off a model's internal activations. A linear probe at layer l scores the
residual stream x ∈ R^d at one token (here the last token of a statement) with

    p(true | x) = σ(w · x + b),

and the question is what w must be, how to find it, and what a good held-out accuracy does and does not prove.

- Difference of means (ARENA's ``MMProbe``, "mass-mean"): w = θ = μ₊ − μ₋, the vector between the class means,
  threshold halfway. Its covariance-corrected form w = Σ⁻¹θ (Σ the pooled within-class covariance) is Fisher's
  linear discriminant, the Bayes-optimal direction for two Gaussians sharing Σ.
- Logistic regression (``LRProbe``): w, b minimise (1/n) Σ BCE(σ(w·z + b), y) + (λ/2)‖w‖² on standardised
  activations z = (x − μ)/s; strictly convex, so there is one answer, which scikit-learn finds too.
- A probe's accuracy is only evidence about the *model* if the probe could not have made it up: Hewitt and
  Liang's control task gives each type (city) a random label; selectivity = task accuracy − control accuracy.

Every analysis takes the model by name (``"smollm2"``, or any Hugging Face id with internet) or as a
(model, tokenizer) pair.
"""

from __future__ import annotations

import copy
import importlib
import json
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from checks.timing import single_thread

S = importlib.import_module("days.040.statements")

ModelLike = "str | tuple"


# ---------------------------------------------------------------- the model and its activations


def load_model(model) -> tuple:
    """(Hugging Face causal LM in eval mode, tokenizer) from a name (checks.models.hf_model) or a pair."""
    if isinstance(model, str):
        from checks.models import hf_model

        return hf_model(model)
    return model


def pad_right(tokenizer, prompts: Sequence[str]) -> tuple[Int[Tensor, "b s"], Int[Tensor, "b s"]]:
    """Token ids right-padded to the longest prompt, and the attention mask (1 on real tokens). Padding by hand
    leaves the (memoised, shared) tokenizer's own padding settings alone; the pad id is never attended to."""
    ids = [tokenizer(p).input_ids for p in prompts]
    width = max(map(len, ids))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    tokens = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        tokens[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    return tokens, mask


@torch.no_grad()
def activations_and_logprobs(prompts: Sequence[str], layers: Sequence[int], model="smollm2", batch_size: int = 32,
                             logprobs: bool = True) -> tuple[dict[int, Float[Tensor, "n d_model"]], Float[Tensor, "n"]]:
    """One batched pass: the last real token's residual stream at ``layers`` (see extract_activations) and each
    prompt's log-probability log p(x_2..x_T | x_1) = Σ_{t≥2} log p(x_t | x_<t) (the first token is not predicted;
    with logprobs=False the unembedding is skipped and None is returned in its place)."""
    hf, tok = load_model(model)
    acts: dict[int, list[Tensor]] = {l: [] for l in layers}
    sums = []
    for start in range(0, len(prompts), batch_size):
        tokens, mask = pad_right(tok, prompts[start:start + batch_size])
        run = hf if logprobs else hf.base_model
        out = run(input_ids=tokens, attention_mask=mask, output_hidden_states=True)
        last = mask.sum(1) - 1                                        # index of each prompt's last real token
        rows = torch.arange(len(last))
        for l in layers:
            acts[l].append(out.hidden_states[l][rows, last].float())
        if logprobs:
            lp = out.logits[:, :-1].float().log_softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0]
            sums.append((lp * mask[:, 1:]).sum(1))
    return {l: torch.cat(a) for l, a in acts.items()}, (torch.cat(sums) if logprobs else None)


def extract_activations(prompts: Sequence[str], layers: Sequence[int], model="smollm2", batch_size: int = 32
                        ) -> dict[int, Float[Tensor, "n d_model"]]:
    """ARENA's extract_activations: the residual stream at the last token of each prompt, for each layer in
    ``layers``, in batches. Layer l is Hugging Face's hidden_states[l]: 0 the token embedding, l the stream after
    l blocks (TransformerLens's blocks.l.hook_resid_pre); the last (l = n_layers) comes after the final norm.
    Prompts are right-padded and each one's *last real* token is read, so a batch equals each prompt alone."""
    return activations_and_logprobs(prompts, layers, model, batch_size, logprobs=False)[0]


def statement_logprobs(prompts: Sequence[str], model="smollm2", batch_size: int = 32) -> Float[Tensor, "n"]:
    """log p(statement) under the model (see activations_and_logprobs)."""
    return activations_and_logprobs(prompts, [], model, batch_size)[1]


# ---------------------------------------------------------------- the model's own answer: True or False?

JUDGE_PREFIX = ("Answer whether each statement is true or false.\n"
                "The sky is green. This statement is: False\n"
                "Water is wet. This statement is: True\n"
                "Two plus two is five. This statement is: False\n"
                "Birds have wings. This statement is: True\n")
JUDGE_ANSWERS = (" True", " False")


def judge_suffix(statement: str) -> str:
    return f"{statement} This statement is:"


def judge_prompt(statement: str) -> str:
    """The few-shot prompt whose next token is the model's verdict on ``statement``."""
    return JUDGE_PREFIX + judge_suffix(statement)


@torch.no_grad()
def true_false_logit_diff(statements: Sequence[str], model="smollm2", batch_size: int = 32,
                          prefix: str = JUDGE_PREFIX, hooks: Callable | None = None) -> Float[Tensor, "n"]:
    """The model's own verdict, log p(' True') − log p(' False') after judge_prompt(statement) (> 0: 'True').

    The few-shot prefix is the same for every statement: it runs once, and its key/value cache is copied for each
    batch of suffixes (right-padded; the verdict is read at each suffix's last real token), which is the full prompt
    run from scratch at a fraction of the cost. ``hooks``, if given, is a context manager factory entered around
    the suffix passes only (day 41 steers there; the prefix is never touched)."""
    from contextlib import nullcontext

    hf, tok = load_model(model)
    true_id, false_id = (tok.encode(a) for a in JUDGE_ANSWERS)
    if len(true_id) != 1 or len(false_id) != 1:
        raise ValueError(f"{JUDGE_ANSWERS} must be single tokens for this tokenizer")
    prefix_ids = tok(prefix, return_tensors="pt").input_ids
    cache = hf(input_ids=prefix_ids, use_cache=True).past_key_values
    out = []
    for start in range(0, len(statements), batch_size):
        tokens, mask = pad_right(tok, [judge_suffix(s) for s in statements[start:start + batch_size]])
        batch_cache = copy.deepcopy(cache)
        batch_cache.batch_repeat_interleave(len(tokens))
        full_mask = torch.cat([torch.ones(len(tokens), prefix_ids.shape[1], dtype=torch.long), mask], 1)
        with (hooks() if hooks else nullcontext()):
            logits = hf(input_ids=tokens, attention_mask=full_mask, past_key_values=batch_cache).logits
        last = logits[torch.arange(len(tokens)), mask.sum(1) - 1].float().log_softmax(-1)
        out.append(last[:, true_id[0]] - last[:, false_id[0]])
    return torch.cat(out)


# ---------------------------------------------------------------- PCA


def get_pca_components(acts: Float[Tensor, "n d"], k: int = 2) -> tuple[Float[Tensor, "k d"], Float[Tensor, "k"]]:
    """ARENA's get_pca_components: the top-k principal directions of the activations (rows, unit norm) and the
    variance along each, from the SVD of the centred data X − x̄ = U S Vᵀ: directions Vᵀ[:k], variances
    S[:k]² / (n − 1)."""
    centred = acts - acts.mean(0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    return vh[:k], s[:k] ** 2 / (len(acts) - 1)


# ---------------------------------------------------------------- probes


class MMProbe(nn.Module):
    """ARENA's mass-mean probe. θ = μ₊ − μ₋ and the midpoint m = (μ₊ + μ₋)/2 from the training data;

        p(x) = σ((x − m) · θ)             (iid=False: the difference of means)
        p(x) = σ((x − m) · Σ⁺ θ)          (iid=True: covariance-corrected; Fisher's discriminant)

    with Σ the pooled within-class covariance (1/n) Σ_i (x_i − μ_{y_i})(x_i − μ_{y_i})ᵀ and Σ⁺ its pseudo-inverse
    (eigenvalues below ``atol`` dropped: with fewer statements than dimensions Σ is singular). Float64 inside."""

    def __init__(self, direction: Tensor, covariance: Tensor | None = None, inv: Tensor | None = None,
                 atol: float = 1e-3, center: Tensor | None = None):
        super().__init__()
        self.direction = nn.Parameter(direction.double(), requires_grad=False)
        self.center = nn.Parameter(torch.zeros_like(self.direction) if center is None else center.double(),
                                   requires_grad=False)
        self.covariance = None if covariance is None else covariance.double()
        self.atol = atol
        self._inv = None if inv is None else inv.double()

    @property
    def inv(self) -> Tensor:
        """Σ⁺, computed on first use (a d × d pseudo-inverse that the plain difference of means never needs)."""
        if self._inv is None:
            self._inv = torch.linalg.pinv(self.covariance, atol=self.atol, hermitian=True)
        return self._inv

    @property
    def corrected_direction(self) -> Tensor:
        """Σ⁺θ: the covariance-corrected direction."""
        return self.inv @ self.direction

    def score(self, x: Tensor, iid: bool = False) -> Tensor:
        """The logit (x − m)·θ, or (x − m)·Σ⁺θ with iid=True."""
        return (x.double() - self.center) @ (self.corrected_direction if iid else self.direction)

    def forward(self, x: Tensor, iid: bool = False) -> Tensor:
        return torch.sigmoid(self.score(x, iid))

    def pred(self, x: Tensor, iid: bool = False) -> Tensor:
        return (self.score(x, iid) > 0).long()

    @staticmethod
    def from_data(acts: Float[Tensor, "n d"], labels: Int[Tensor, "n"], atol: float = 1e-3) -> "MMProbe":
        acts, labels = acts.double(), torch.as_tensor(labels)
        pos, neg = acts[labels == 1], acts[labels == 0]
        mu_pos, mu_neg = pos.mean(0), neg.mean(0)
        centred = torch.cat([pos - mu_pos, neg - mu_neg])
        covariance = centred.T @ centred / len(acts)
        return MMProbe(mu_pos - mu_neg, covariance=covariance, atol=atol, center=(mu_pos + mu_neg) / 2)


def standardiser(acts: Float[Tensor, "n d"]) -> tuple[Float[Tensor, "d"], Tensor]:
    """The mean μ and one scale s (the root-mean-square coordinate after centring) that LRProbe standardises with:
    z = (x − μ)/s. One scalar, not one per feature, so the geometry (which direction is which) is unchanged."""
    mu = acts.mean(0)
    scale = (acts - mu).pow(2).mean().sqrt()
    return mu, scale if scale > 0 else torch.ones_like(scale)       # identical rows (layer 0): nothing to scale


def fit_logistic(z: Float[Tensor, "n d"], y: Float[Tensor, "n"], weight_decay: float, tol: float = 1e-10,
                 max_iter: int = 100) -> tuple[Float[Tensor, "d"], Tensor]:
    """The minimiser (v, c) of (1/n) Σ BCE(σ(v·z_i + c), y_i) + (λ/2)‖v‖², in float64, by Newton's method.

    The penalty makes the optimum lie in the row space of z (any component of v orthogonal to every z_i only adds
    to ‖v‖²), so with the thin SVD z = U S Vᵀ (rank r ≤ min(n, d)) we solve for β ∈ R^r with v = Vβ on the
    features U S: Newton steps [β; c] −= H⁻¹g with g = Fᵀ(p − y)/n + λ[β; 0] and H = FᵀWF/n + λ diag(1, …, 1, 0),
    F = [U S, 1], W = diag(p(1 − p)), halving a step until the objective decreases, until ‖g‖∞ < tol."""
    n = len(z)
    u, s, vh = torch.linalg.svd(z, full_matrices=False)
    keep = s > s.max() * len(s) * torch.finfo(z.dtype).eps
    u, s, vh = u[:, keep], s[keep], vh[keep]
    f = torch.cat([u * s, torch.ones(n, 1, dtype=z.dtype)], 1)          # [n, r + 1]
    penalty = torch.full((f.shape[1],), weight_decay, dtype=z.dtype)
    penalty[-1] = 0.0                                                     # the intercept is not penalised

    def objective(theta):
        return nn.functional.binary_cross_entropy_with_logits(f @ theta, y) + 0.5 * (penalty * theta * theta).sum()

    theta = torch.zeros(f.shape[1], dtype=z.dtype)
    for _ in range(max_iter):
        p = torch.sigmoid(f @ theta)
        grad = f.T @ (p - y) / n + penalty * theta
        if grad.abs().max() < tol:
            break
        hess = (f.T * (p * (1 - p))) @ f / n + torch.diag(penalty)
        step = torch.linalg.solve(hess, grad)
        current, t = objective(theta), 1.0
        while objective(theta - t * step) > current and t > 1e-8:
            t /= 2
        theta = theta - t * step
    return vh.T @ theta[:-1], theta[-1]


class LRProbe(nn.Module):
    """ARENA's logistic-regression probe, p(x) = σ(w · x + b).

    from_data fits on standardised activations z = (x − μ)/s by minimising the strictly convex objective
    (1/n) Σ BCE(σ(v·z + c), y) + (λ/2)‖v‖² to its unique minimiser (fit_logistic, float64), then folds the
    standardisation back in, w = v/s and b = c − w·μ, so the probe reads raw activations."""

    def __init__(self, d_in: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, 1, dtype=torch.float64), nn.Sigmoid())

    def score(self, x: Tensor, iid=None) -> Tensor:
        return self.net[0](x.double()).squeeze(-1)

    def forward(self, x: Tensor, iid=None) -> Tensor:
        return torch.sigmoid(self.score(x))

    def pred(self, x: Tensor, iid=None) -> Tensor:
        return (self.score(x) > 0).long()

    @property
    def direction(self) -> Tensor:
        return self.net[0].weight[0]

    @staticmethod
    def from_data(acts: Float[Tensor, "n d"], labels: Int[Tensor, "n"], weight_decay: float = 1e-2) -> "LRProbe":
        acts = acts.double()
        mu, scale = standardiser(acts)
        v, c = fit_logistic((acts - mu) / scale, torch.as_tensor(labels).double(), weight_decay)
        probe = LRProbe(acts.shape[1])
        with torch.no_grad():
            w = v / scale
            probe.net[0].weight.copy_(w[None])
            probe.net[0].bias.copy_(c - w @ mu)
        return probe


PROBES = {"lr": LRProbe.from_data, "mm": MMProbe.from_data}


def fit_probe(kind: str, acts: Tensor, labels: Tensor):
    """'lr', 'mm' (difference of means) or 'mm_iid' (covariance-corrected); returns (probe, iid flag)."""
    if kind == "mm_iid":
        return MMProbe.from_data(acts, labels), True
    return PROBES[kind](acts, labels), False


def accuracy(probe, acts: Tensor, labels: Tensor, iid: bool = False) -> float:
    return (probe.pred(acts, iid=iid) == torch.as_tensor(labels)).double().mean().item()


# ---------------------------------------------------------------- held-out evaluation


def cv_folds(labels: Tensor, k: int = 5, seed: int = 0, groups: Tensor | None = None
             ) -> list[tuple[np.ndarray, np.ndarray]]:
    """k folds over the statements, shuffled with ``seed``: (train indices, test indices) each. With ``groups``
    (the pair each statement belongs to) a group never straddles a split, so no test statement has its twin in
    training, and since every pair is one true and one false statement every fold is exactly balanced. Without,
    the folds are stratified by label over single statements."""
    from sklearn.model_selection import GroupKFold, StratifiedKFold

    y = np.asarray(labels)
    if groups is not None:
        return list(GroupKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y, np.asarray(groups)))
    return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def cv_correct(acts: Tensor, labels: Tensor, folds, kind: str = "lr") -> np.ndarray:
    """A boolean per statement: was it classified correctly by the probe fitted on the other folds?"""
    labels = torch.as_tensor(labels)
    correct = np.zeros(len(labels), dtype=bool)
    for train, test in folds:
        probe, iid = fit_probe(kind, acts[train], labels[train])
        correct[test] = (probe.pred(acts[test], iid=iid) == labels[test]).numpy()
    return correct


def layer_sweep(acts: dict[int, Tensor], labels: Tensor, probe: str = "lr", k: int = 5, seed: int = 0,
                groups: Tensor | None = None) -> dict[int, float]:
    """Held-out (k-fold, grouped by pair if ``groups`` is given) accuracy of a probe at each layer, same folds."""
    folds = cv_folds(labels, k, seed, groups)
    return {l: float(cv_correct(a, labels, folds, probe).mean()) for l, a in acts.items()}


def nested_layer_selection(acts: dict[int, Tensor], labels: Tensor, probe: str = "lr", k_outer: int = 5,
                           k_inner: int = 4, seed: int = 0, groups: Tensor | None = None) -> dict:
    """The best layer's accuracy without the optimism of picking it on the test data: in each outer fold the layer
    is chosen by an inner cross-validation on the training statements only (ties: the earliest layer), and the
    probe fitted there scores the outer test statements."""
    labels = torch.as_tensor(labels)
    groups = None if groups is None else torch.as_tensor(groups)
    correct = np.zeros(len(labels), dtype=bool)
    chosen = []
    for train, test in cv_folds(labels, k_outer, seed, groups):
        inner = cv_folds(labels[train], k_inner, seed + 1, None if groups is None else groups[train])
        scores = {l: cv_correct(a[train], labels[train], inner, probe).mean() for l, a in acts.items()}
        best = max(scores, key=lambda l: (scores[l], -l))
        chosen.append(best)
        fitted, iid = fit_probe(probe, acts[best][train], labels[train])
        correct[test] = (fitted.pred(acts[best][test], iid=iid) == labels[test]).numpy()
    return {"correct": int(correct.sum()), "n": len(correct), "accuracy": float(correct.mean()),
            "ci": list(wilson_interval(int(correct.sum()), len(correct))), "layers_chosen": chosen}


def generalization_matrix(data: dict[str, tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]], probe: str = "lr",
                          k: int = 5, seed: int = 0, center_each: bool = True) -> tuple[list[str], list[list[float]]]:
    """Train on data set i, test on data set j. Off the diagonal the probe is fitted on all of i and scores all of
    j; on the diagonal the accuracy is held-out (k-fold, grouped by pair when a data set carries its groups), so
    every entry is about statements the probe never saw. With center_each, each set's activations are first
    centred on that set's own mean (no labels needed), so that what transfers is the direction, not an offset
    between sets: each set here is balanced, and its mean is where a threshold belongs."""
    names = list(data)
    prepared = {}
    for name, entry in data.items():
        x, y = entry[0].double(), torch.as_tensor(entry[1])
        prepared[name] = (x - x.mean(0) if center_each else x, y, entry[2] if len(entry) > 2 else None)
    matrix = []
    for i in names:
        xi, yi, gi = prepared[i]
        fitted, iid = fit_probe(probe, xi, yi)
        row = []
        for j in names:
            if i == j:
                row.append(float(cv_correct(xi, yi, cv_folds(yi, k, seed, gi), probe).mean()))
            else:
                row.append(accuracy(fitted, prepared[j][0], prepared[j][1], iid=iid))
        matrix.append(row)
    return names, matrix


def control_labels(groups: Tensor, seed: int = 0) -> Int[Tensor, "n"]:
    """Hewitt and Liang's control task: each type (group) gets a random label, the same for all its statements,
    exactly half of the types each label (a seeded permutation)."""
    groups = torch.as_tensor(groups)
    types = groups.unique()
    g = torch.Generator().manual_seed(seed)
    per_type = (torch.arange(len(types)) % 2)[torch.randperm(len(types), generator=g)]
    return per_type[torch.searchsorted(types, groups)]


def selectivity(task_accuracy: float, control_accuracy: float) -> float:
    """Hewitt and Liang's selectivity: task accuracy minus control-task accuracy."""
    return task_accuracy - control_accuracy


def mean_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Student's t interval for the mean of a few repeated measurements: x̄ ± t_{n−1} s/√n (s the sample standard
    deviation). Used where the repeats are the unit (control tasks with several random labellings)."""
    from scipy.stats import t

    v = np.asarray(values, dtype=np.float64)
    half = t.ppf((1 + level) / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return float(v.mean() - half), float(v.mean() + half)


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson's score interval for a proportion k/n (95% by default):
    (p̂ + z²/2n ± z √(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n)."""
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


# ---------------------------------------------------------------- the experiment

LAYERS = list(range(31))          # hidden_states 0..30 of SmolLM2 (30 blocks)
PROBE_SETS = ("cities", "sp_en_trans", "larger_than", "smaller_than")
N_CONTROL_SEEDS = 10              # random labellings of the control task


def known_pairs(logprobs: Tensor) -> Tensor:
    """Pairs whose true statement the model finds more likely than its false twin (statements in flatten order)."""
    lp = logprobs.view(-1, 2)
    return lp[:, 0] > lp[:, 1]


def near_boundary_fraction(scores: Tensor, rel: float) -> float:
    """The fraction of probe scores within rel × the largest |score| of the decision boundary 0: predictions that
    rounding on another CPU could flip. Scores that are all exactly 0 (identical activations: every prediction is
    exactly 'false' on every CPU) flip nothing."""
    top = scores.abs().max()
    if top == 0:
        return 0.0
    return float((scores.abs() <= rel * top).double().mean())


def compute_results(model="smollm2", seed: int = 0) -> dict:
    """Everything the post cites, from scratch (no files written)."""
    from sklearn.metrics import roc_auc_score

    from checks.committed import SMOLLM2_LOGIT_REL

    hf, tok = load_model(model)
    layers = list(range(hf.config.num_hidden_layers + 1))
    data, datasets = {}, {}
    near_pairs = 0
    for name in S.DATASETS:
        pairs = S.make_pairs(name, seed)
        statements, labels, groups = S.flatten(pairs)
        acts, logprobs = activations_and_logprobs(statements, layers, model)
        known = known_pairs(logprobs)
        # a log-probability sums ≤ 16 token log-softmaxes, each within 2 × SMOLLM2_LOGIT_REL × 40 (|logit| ≤ 40)
        gap = (logprobs.view(-1, 2)[:, 0] - logprobs.view(-1, 2)[:, 1]).abs()
        near_pairs += int((gap < 2 * 16 * 2 * SMOLLM2_LOGIT_REL * 40).sum())
        verdict = true_false_logit_diff(statements, model)
        y = torch.tensor(labels)
        datasets[name] = {"n_pairs": len(pairs), "n_known": int(known.sum()), "example": [pairs[0].true, pairs[0].false],
                          "judge_accuracy": float(((verdict > 0).long() == y).double().mean()),
                          "judge_says_true": float((verdict > 0).double().mean()),
                          "judge_auroc": float(roc_auc_score(y.numpy(), verdict.numpy()))}
        keep = known.repeat_interleave(2)
        data[name] = {"acts": {l: a[keep] for l, a in acts.items()}, "labels": y[keep],
                      "groups": torch.tensor(groups)[keep]}

    sweeps = {name: {kind: {str(l): v for l, v in layer_sweep(data[name]["acts"], data[name]["labels"], kind,
                                                               groups=data[name]["groups"]).items()}
                     for kind in ("lr", "mm", "mm_iid")} for name in PROBE_SETS}
    cities = data["cities"]
    x, y, g = cities["acts"], cities["labels"], cities["groups"]
    headline = nested_layer_selection(x, y, "lr", groups=g)
    best = max(layers, key=lambda l: (sweeps["cities"]["lr"][str(l)], -l))

    # Hewitt and Liang's control task: a random label per city. On held-out cities (the task's own folds) it is at
    # chance; on held-out statements of *seen* cities (each test statement's twin, with the same control label, in
    # training) a probe that memorises which city a statement is about scores above chance. One random labelling
    # is one draw: the twins of a city share their label and nearly always their prediction, so a single draw's
    # accuracy varies like a proportion over ~126 cities, not 252 statements. The control is therefore repeated
    # over N_CONTROL_SEEDS labellings at the best layer, and its interval is the t interval over the labellings.
    control_sweep = layer_sweep(x, control_labels(g, seed), "lr", groups=g)
    memo_sweep = layer_sweep(x, control_labels(g, seed), "lr")

    def control_runs(grouped: bool) -> dict:
        accs = []
        for s in range(N_CONTROL_SEEDS):
            labels_s = control_labels(g, seed + s)
            folds = cv_folds(labels_s, 5, seed, g if grouped else None)
            accs.append(float(cv_correct(x[best], labels_s, folds, "lr").mean()))
        return {"layer": best, "accuracies": accs, "mean": float(np.mean(accs)), "ci": list(mean_interval(accs))}

    control, memorisation = control_runs(True), control_runs(False)

    gen = {n: (data[n]["acts"][best], data[n]["labels"], data[n]["groups"]) for n in PROBE_SETS}
    names, matrix = generalization_matrix(gen, "lr")
    _, matrix_mm = generalization_matrix(gen, "mm")

    # Rounding on another CPU can flip a prediction only where the probe's score is within rounding of 0. The
    # activations carry SMOLLM2_LOGIT_REL relative error; refitting on them moves the L2-regularised optimum by at
    # most 1/λ = 100 times that (the objective's Hessian is ≥ λ I in standardised coordinates): scores within
    # 100 × SMOLLM2_LOGIT_REL of the largest |score| are the ones that may flip, counted over every set and layer
    # after the embedding (at layer 0 every score is exactly 0 and every prediction is exactly 'false').
    near = max(near_boundary_fraction(fit_probe(kind, data[n]["acts"][l], data[n]["labels"])[0]
                                      .score(data[n]["acts"][l]).detach(), 100 * SMOLLM2_LOGIT_REL)
               for n in PROBE_SETS for l in layers[1:] for kind in ("lr", "mm"))
    probe = LRProbe.from_data(x[best], y)
    mm = MMProbe.from_data(x[best], y)
    return {
        "model": model if isinstance(model, str) else "custom",
        "layers": layers,
        "datasets": datasets,
        "sweeps": sweeps,
        "best_layer": best,
        "headline": headline,
        "control": {**control, "sweep": {str(l): v for l, v in control_sweep.items()},
                    "selectivity": {str(l): selectivity(sweeps["cities"]["lr"][str(l)], control_sweep[l])
                                    for l in layers},
                    "selectivity_best": selectivity(sweeps["cities"]["lr"][str(best)], control["mean"])},
        "memorisation": {**memorisation, "sweep": {str(l): v for l, v in memo_sweep.items()}},
        "generalization": {"layer": best, "names": names, "matrix": matrix, "matrix_mm": matrix_mm},
        "directions": {"cos_mm_lr": float(nn.functional.cosine_similarity(mm.direction, probe.direction.detach(), 0)),
                       "cos_mm_iid_lr": float(nn.functional.cosine_similarity(mm.corrected_direction,
                                                                              probe.direction.detach(), 0)),
                       "cos_mm_mm_iid": float(nn.functional.cosine_similarity(mm.direction, mm.corrected_direction,
                                                                              0))},
        "near_boundary": {"pairs": near_pairs, "fraction": near},
        "_data": data,
    }


@single_thread()
def run_experiment(out_dir: Path) -> dict:
    """Probe SmolLM2 for truth: which statements it knows, where true and false separate (layer sweeps with three
    probes and a control task), the best layer's held-out accuracy, PCA pictures, generalization across sets."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    results = compute_results("smollm2")
    data = results.pop("_data")
    layers, best = results["layers"], results["best_layer"]

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), constrained_layout=True)
    for name in PROBE_SETS:
        axes[0].plot(layers, [results["sweeps"][name]["lr"][str(l)] for l in layers], marker="o", ms=3,
                     label=f"{name} (LR)")
    axes[0].plot(layers, [results["control"]["sweep"][str(l)] for l in layers], "k--", label="cities control task")
    axes[0].plot(layers, [results["memorisation"]["sweep"][str(l)] for l in layers], "k:",
                 label="control task, cities seen in training")
    axes[0].axhline(0.5, color="grey", lw=0.5)
    axes[0].set_xlabel("layer (0 = embeddings)")
    axes[0].set_ylabel("held-out accuracy (5 folds by pair)")
    axes[0].set_title("Where true and false separate")
    axes[0].legend(fontsize=8)
    axes[0].grid(True, alpha=0.3)
    for kind, label in (("lr", "logistic regression"), ("mm", "difference of means"), ("mm_iid", "MM, covariance-corrected")):
        axes[1].plot(layers, [results["sweeps"]["cities"][kind][str(l)] for l in layers], marker="o", ms=3, label=label)
    axes[1].plot(layers, [results["control"]["selectivity"][str(l)] for l in layers], "k--", label="selectivity (LR)")
    axes[1].axhline(0.5, color="grey", lw=0.5)
    axes[1].set_xlabel("layer")
    axes[1].set_title("cities: three probes, and selectivity over the control task")
    axes[1].legend(fontsize=8)
    axes[1].grid(True, alpha=0.3)
    fig.savefig(out_dir / "figures/layer_sweep.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(PROBE_SETS), figsize=(4 * len(PROBE_SETS), 3.8), constrained_layout=True)
    for ax, name in zip(axes, PROBE_SETS):
        acts, labels = data[name]["acts"][best], data[name]["labels"]
        comps, _ = get_pca_components(acts.double(), 2)
        xy = ((acts.double() - acts.double().mean(0)) @ comps.T).numpy()
        for value, colour, label in ((1, "C2", "true"), (0, "C3", "false")):
            ax.scatter(*xy[labels.numpy() == value].T, s=10, c=colour, label=label, alpha=0.7)
        ax.set_title(f"{name}, layer {best}")
        ax.set_xlabel("PC 1")
    axes[0].set_ylabel("PC 2")
    axes[0].legend(fontsize=8)
    fig.savefig(out_dir / "figures/pca.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), constrained_layout=True)
    for ax, key, title in ((axes[0], "matrix", "logistic regression"), (axes[1], "matrix_mm", "difference of means")):
        m = np.array(results["generalization"][key])
        im = ax.imshow(m, vmin=0, vmax=1, cmap="RdBu")
        for i in range(len(m)):
            for j in range(len(m)):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=9)
        names = results["generalization"]["names"]
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("tested on")
        ax.set_title(f"{title}, layer {best}")
    axes[0].set_ylabel("trained on")
    fig.colorbar(im, ax=axes, shrink=0.8, label="accuracy")
    fig.savefig(out_dir / "figures/generalization.png", dpi=120)
    plt.close(fig)

    results["cpu_seconds"] = time.process_time() - cpu0
    results["wall_seconds"] = time.perf_counter() - wall0
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
