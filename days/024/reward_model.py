"""Day 24: RLHF theory and a Bradley–Terry reward model (ARENA 2.4 RLHF, part 1).

RLHF replaces a hand-written reward with one learned from human comparisons. A labeller sees two
texts and says which is better; the **Bradley–Terry** model (1952) explains such choices with a
scalar score r(x) per text:

    P(a ≻ b) = σ(r(a) − r(b)) = 1 / (1 + exp(−(r(a) − r(b)))).

Fitting r̂_θ by maximum likelihood on pairs (chosen y_w, rejected y_l) minimises

    L(θ) = −E[ log σ(r̂_θ(y_w) − r̂_θ(y_l)) ],

the loss of InstructGPT's reward model (Ouyang et al., 2022) and of ARENA's RLHF chapter. Only
differences of r enter, so r̂ is identified up to an additive constant; its *scale* is fixed by
the noise in the labels (a difference of 1 means odds of e : 1).

Offline, we cannot ask humans. So the preferences come from a **known latent reward** r*: a
sentiment lexicon (about 75 words with weights ±1, ±2) summed over the words of a text. Pairs of
48-word snippets of Tiny Shakespeare are labelled by sampling from Bradley–Terry with r*, so the
labels are noisy exactly as the model assumes, the best achievable accuracy is known, and the
learned reward can be compared with the true one.

The reward model is linear in GPT-2 token counts, r̂(x) = Σ_t w[x_t] (one weight per token, summed
over the text). For a linear r̂, Bradley–Terry maximum likelihood *is* logistic regression on the
count difference φ(a) − φ(b) without an intercept, which gives an independent reference
(scikit-learn).

What later days use (day 25 trains a policy against it):

- ``trained_reward_model() -> RewardModel``: the experiment's model (all 50 000 training pairs,
  seed 0, L2 = ``L2``), fitted on first call (a few seconds, needs the ``tinyshakespeare`` and
  ``gpt2-tokenizer`` assets) and cached for the process.
- ``rm(texts: list[str]) -> Float[Tensor, "batch"]``: one float32 reward per text, the sum of its
  GPT-2 tokens' weights. Differences are log-odds of preference; the level is arbitrary (BT fixes
  none) and the scale is about ``headline.slope_r_hat_on_r_true`` of r*'s (results.json). Any
  tokenizer's text works: the model tokenizes the strings itself. Call it under ``torch.no_grad()``.
- ``latent_reward(texts) -> Float[Tensor, "batch"]`` (float64): the true reward r* that made the
  labels, to measure how far optimising r̂ moves r*.
"""

from __future__ import annotations

import functools
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from checks.timing import single_thread

# ---------------------------------------------------------------- the latent reward

# A hand-made sentiment lexicon for Early Modern English, chosen from words frequent in Tiny
# Shakespeare: weight 2 for the strongest words, 1 for the rest.
LEXICON: dict[str, float] = {
    **{w: 2.0 for w in "love loves loved joy happy blessed delight".split()},
    **{w: 1.0 for w in ("good sweet fair true noble honour heaven grace gracious friend friends peace best gentle "
                        "dear hope comfort kind worthy honest beauty beautiful virtue pleasure merry wise glad smile "
                        "bless praise lovely").split()},
    **{w: -2.0 for w in "death dead die dies kill killed murder hate".split()},
    **{w: -1.0 for w in ("blood bloody poor fear tears shame sorrow grief war grave false villain foul ill woe traitor "
                         "weep sin fool enemy enemies hell curse cursed sick evil vile wretched").split()},
}
_WORD = re.compile(r"[a-z']+")


def latent_reward(texts: list[str]) -> Float[Tensor, "batch"]:
    """r*(x) = Σ over the words of x (lower-cased runs of letters and apostrophes) of LEXICON[word]."""
    return torch.tensor([sum(LEXICON.get(w, 0.0) for w in _WORD.findall(t.lower())) for t in texts], dtype=torch.float64)


def snippets(text: str, n_words: int = 48) -> list[str]:
    """Consecutive, non-overlapping runs of ``n_words`` whitespace-separated words, joined by spaces."""
    words = text.split()
    return [" ".join(words[i:i + n_words]) for i in range(0, len(words) - n_words + 1, n_words)]


# ---------------------------------------------------------------- Bradley–Terry


def preference_probability(r_a: Float[Tensor, "batch"], r_b: Float[Tensor, "batch"]) -> Float[Tensor, "batch"]:
    """P(a ≻ b) = σ(r(a) − r(b))."""
    return torch.sigmoid(r_a - r_b)


def bradley_terry_loss(r_chosen: Float[Tensor, "batch"], r_rejected: Float[Tensor, "batch"]) -> Tensor:
    """−mean log σ(r(y_w) − r(y_l)), with log σ computed stably (logsigmoid, finite for any margin)."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


@dataclass
class Preferences:
    """Pairs of items a, b (indices into a list of texts); ``a_wins`` is the sampled label, ``p_a`` the
    true probability σ(r*(a) − r*(b)) it was drawn with."""

    a: Int[Tensor, "pairs"]
    b: Int[Tensor, "pairs"]
    a_wins: torch.Tensor  # bool, (pairs,)
    p_a: Float[Tensor, "pairs"]

    def chosen_rejected(self) -> tuple[Int[Tensor, "pairs"], Int[Tensor, "pairs"]]:
        """(indices of the preferred items, indices of the others)."""
        return torch.where(self.a_wins, self.a, self.b), torch.where(self.a_wins, self.b, self.a)

    def __len__(self) -> int:
        return int(self.a.shape[0])


def sample_preferences(true_rewards: Float[Tensor, "items"], n_pairs: int, generator: torch.Generator) -> Preferences:
    """Uniformly random pairs of distinct items, each labelled a ≻ b with probability σ(r*(a) − r*(b))."""
    n = true_rewards.shape[0]
    a = torch.randint(0, n, (n_pairs,), generator=generator)
    b = (a + torch.randint(1, n, (n_pairs,), generator=generator)) % n  # ≠ a, uniform over the others
    p_a = preference_probability(true_rewards[a], true_rewards[b])
    a_wins = torch.rand(n_pairs, generator=generator, dtype=p_a.dtype) < p_a
    return Preferences(a, b, a_wins, p_a)


def preference_accuracy(scores: Float[Tensor, "items"], prefs: Preferences) -> float:
    """Fraction of pairs where the higher score belongs to the labelled winner (ties count half)."""
    margin = scores[prefs.a] - scores[prefs.b]
    right = torch.where(prefs.a_wins, margin > 0, margin < 0).double()
    return float((right + 0.5 * (margin == 0).double()).mean())


def bayes_accuracy(prefs: Preferences) -> float:
    """The best any reward can do on these labels in expectation: mean max(p, 1 − p)."""
    return float(torch.maximum(prefs.p_a, 1 - prefs.p_a).mean())


# ---------------------------------------------------------------- the reward model


class RewardModel(nn.Module):
    """r̂(x) = Σ_t w[x_t]: one learned weight per GPT-2 token, summed over the text's tokens.

    Call it on a list of strings: ``rm(["a text", "another"])`` returns a float tensor of rewards,
    one per text (differences are log-odds of preference; the level is arbitrary). ``score_ids``
    scores pre-tokenised texts. Weights start at 0, so tokens never seen in training score 0.
    """

    def __init__(self, vocab_size: int = 50257, tokenizer=None):
        super().__init__()
        self.weights = nn.EmbeddingBag(vocab_size, 1, mode="sum")
        nn.init.zeros_(self.weights.weight)
        self._tokenizer = tokenizer

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from checks.models import gpt2_tokenizer

            self._tokenizer = gpt2_tokenizer()
        return self._tokenizer

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """GPT-2 token ids of each text (no special tokens, no truncation)."""
        return self.tokenizer(list(texts))["input_ids"] if len(texts) else []

    def score_ids(self, ids: list[list[int]]) -> Float[Tensor, "batch"]:
        """Σ_t w[x_t] for each token list (an empty text scores 0)."""
        if not ids:
            return self.weights.weight.new_zeros(0)
        flat = torch.tensor([t for seq in ids for t in seq], dtype=torch.long)
        offsets = torch.tensor([0] + [len(seq) for seq in ids[:-1]], dtype=torch.long).cumsum(0)
        return self.weights(flat, offsets)[:, 0]

    def forward(self, texts: list[str]) -> Float[Tensor, "batch"]:
        return self.score_ids(self.tokenize(texts))


def count_matrix(ids: list[list[int]], vocab: np.ndarray):
    """Sparse (len(ids), len(vocab)) matrix of token counts φ(x) (scipy CSR), columns in ``vocab``'s order."""
    from scipy import sparse

    column = {int(t): k for k, t in enumerate(vocab.tolist())}
    rows = np.array([i for i, seq in enumerate(ids) for _ in seq], dtype=np.int64)
    cols = np.array([column[t] for seq in ids for t in seq], dtype=np.int64)
    return sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(ids), len(vocab)))


def fit_reward_model(model: RewardModel, ids: list[list[int]], prefs: Preferences, l2: float,
                     max_iter: int = 2_000) -> dict:
    """Minimise the Bradley–Terry loss on ``prefs`` (items given as token lists) plus (l2/2)·‖w‖², full
    batch, to convergence: the regularised maximum-likelihood estimate.

    Only the weights of tokens that occur in the paired items can move (the others get no gradient
    and a penalty pulling them to 0, where they start), so the fit runs on those columns of a sparse
    count matrix X, with scores s = X w. The loss and ∂loss/∂s come from ``bradley_terry_loss`` and
    torch.autograd; ∂loss/∂w = Xᵀ ∂loss/∂s + l2·w; scipy's L-BFGS-B drives it, in float64.
    """
    from scipy.optimize import minimize

    chosen, rejected = prefs.chosen_rejected()
    used = torch.unique(torch.cat([chosen, rejected]))
    position = torch.full((len(ids),), -1, dtype=torch.long)
    position[used] = torch.arange(len(used))
    vocab = np.unique(np.array([t for i in used.tolist() for t in ids[i]], dtype=np.int64))
    X = count_matrix([ids[i] for i in used.tolist()], vocab)
    c, r = position[chosen], position[rejected]

    def loss_and_grad(w: np.ndarray) -> tuple[float, np.ndarray]:
        scores = torch.from_numpy(X @ w).requires_grad_(True)
        loss = bradley_terry_loss(scores[c], scores[r])
        loss.backward()
        return loss.item() + 0.5 * l2 * float(w @ w), X.T @ scores.grad.numpy() + l2 * w

    w0 = model.weights.weight.detach()[torch.from_numpy(vocab), 0].double().numpy()
    with single_thread():  # small vectors: extra BLAS/OpenMP threads only spin on a shared machine
        result = minimize(loss_and_grad, w0, jac=True, method="L-BFGS-B",
                          options={"maxiter": max_iter, "gtol": 1e-10, "ftol": 1e-15})
    with torch.no_grad():
        model.weights.weight[torch.from_numpy(vocab), 0] = torch.from_numpy(result.x).to(model.weights.weight.dtype)
    return {"loss": float(result.fun), "iterations": int(result.nit), "converged": bool(result.success),
            "n_tokens": len(vocab), "n_items": len(used)}


# ---------------------------------------------------------------- the data set and the trained model


@dataclass
class PreferenceData:
    texts: list[str]
    ids: list[list[int]]
    true_rewards: Float[Tensor, "items"]
    train_items: Int[Tensor, "n_train"]
    test_items: Int[Tensor, "n_test"]
    train: Preferences  # pairs of training snippets
    test: Preferences  # pairs of held-out snippets (never seen in training)


def build_preference_data(n_train_pairs: int = 50_000, n_test_pairs: int = 5_000, n_words: int = 48,
                          test_fraction: float = 0.2, seed: int = 0, tokenizer=None) -> PreferenceData:
    """Snippets of Tiny Shakespeare, split into training and held-out snippets, each side paired at
    random and labelled by Bradley–Terry on ``latent_reward``."""
    from checks.assets import resolve

    texts = snippets(resolve("tinyshakespeare").read_text(encoding="utf-8"), n_words)
    if tokenizer is None:
        from checks.models import gpt2_tokenizer

        tokenizer = gpt2_tokenizer()
    ids = tokenizer(texts)["input_ids"]
    rewards = latent_reward(texts)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(texts), generator=g)
    n_test = int(len(texts) * test_fraction)
    test_items, train_items = order[:n_test], order[n_test:]

    def pairs(items, n):
        local = sample_preferences(rewards[items], n, g)
        return Preferences(items[local.a], items[local.b], local.a_wins, local.p_a)

    return PreferenceData(texts, ids, rewards, train_items, test_items, pairs(train_items, n_train_pairs),
                          pairs(test_items, n_test_pairs))


def subset(prefs: Preferences, n: int) -> Preferences:
    """The first n pairs."""
    return Preferences(prefs.a[:n], prefs.b[:n], prefs.a_wins[:n], prefs.p_a[:n])


L2 = 1e-3  # chosen on a validation split of the training pairs (see run_experiment's l2 sweep)


def train_reward_model(data: PreferenceData, n_pairs: int | None = None, l2: float = L2) -> RewardModel:
    """Fit a RewardModel on the first n_pairs training pairs (all by default)."""
    torch.manual_seed(0)
    model = RewardModel()
    prefs = data.train if n_pairs is None else subset(data.train, n_pairs)
    fit_reward_model(model, data.ids, prefs, l2)
    return model.eval()


@functools.lru_cache(maxsize=1)
def trained_reward_model() -> RewardModel:
    """The reward model of the experiment (all 50 000 training pairs, seed 0), trained on first use
    (a few seconds) and cached: what day 25 optimises a policy against."""
    return train_reward_model(build_preference_data())


def evaluate(model: RewardModel, data: PreferenceData) -> dict:
    """Held-out preference accuracy (against the noisy labels and against the true preference, ties
    excluded), the Bayes-optimal accuracy, and how r̂ tracks r* on held-out snippets."""
    with torch.no_grad():
        scores = model.score_ids(data.ids).double()
    test, items = data.test, data.test_items
    true_sign = torch.sign(data.true_rewards[test.a] - data.true_rewards[test.b])
    margin = scores[test.a] - scores[test.b]
    decided = true_sign != 0
    r_hat, r_true = scores[items], data.true_rewards[items]
    slope = float(((r_hat - r_hat.mean()) * (r_true - r_true.mean())).sum() / ((r_true - r_true.mean()) ** 2).sum())
    return {
        "test_accuracy": preference_accuracy(scores, test),
        "test_accuracy_of_true_reward": preference_accuracy(data.true_rewards, test),
        "bayes_accuracy": bayes_accuracy(test),
        "test_accuracy_vs_true_preference": float((torch.sign(margin[decided]) == true_sign[decided]).double().mean()),
        "fraction_of_test_pairs_tied_under_true_reward": float(1 - decided.double().mean()),
        "test_log_likelihood": float(-bradley_terry_loss(torch.where(test.a_wins, scores[test.a], scores[test.b]),
                                                         torch.where(test.a_wins, scores[test.b], scores[test.a]))),
        "pearson_r_hat_vs_r_true": float(torch.corrcoef(torch.stack([r_hat, r_true]))[0, 1]),
        "slope_r_hat_on_r_true": slope,
    }


# ---------------------------------------------------------------- the experiment

PAIR_COUNTS = [250, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000]
L2_GRID = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]


def run_experiment(out_dir: Path) -> dict:
    """Build the preference data; choose the L2 strength on a validation split of the training pairs;
    fit on all 50 000 pairs; report held-out accuracy against the Bayes bound, r̂ against r*, the
    learning curve in the number of pairs, calibration, and the tokens the model learned."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = build_preference_data()

    # L2 on a validation split: the last 10 000 training pairs, fitted on the first 40 000.
    n_fit = len(data.train) - 10_000
    validation = Preferences(data.train.a[n_fit:], data.train.b[n_fit:], data.train.a_wins[n_fit:], data.train.p_a[n_fit:])
    sweep = []
    for l2 in L2_GRID:
        model = train_reward_model(data, n_fit, l2)
        with torch.no_grad():
            scores = model.score_ids(data.ids)
        c, r = validation.chosen_rejected()
        sweep.append({"l2": l2, "validation_loss": float(bradley_terry_loss(scores[c], scores[r])),
                      "validation_accuracy": preference_accuracy(scores, validation)})
    best_l2 = min(sweep, key=lambda row: row["validation_loss"])["l2"]

    fit_start = time.perf_counter()
    model = train_reward_model(data, None, best_l2)
    fit_seconds = time.perf_counter() - fit_start
    headline = evaluate(model, data)
    curve = [{"n_pairs": n, **evaluate(train_reward_model(data, n, best_l2), data)} for n in PAIR_COUNTS]

    with torch.no_grad():
        scores = model.score_ids(data.ids).double()
    items = data.test_items
    r_hat, r_true = scores[items], data.true_rewards[items]
    offset = float((r_hat - r_true).mean())

    # Calibration on held-out pairs: predicted P(a ≻ b) in bins against the observed frequency.
    p_pred = preference_probability(scores[data.test.a], scores[data.test.b])
    bins = torch.linspace(0, 1, 11, dtype=torch.float64)
    which = torch.bucketize(p_pred, bins[1:-1])
    calibration = [{"p_predicted": float(p_pred[which == k].mean()), "p_observed": float(data.test.a_wins[which == k].double().mean()),
                    "p_true": float(data.test.p_a[which == k].mean()), "n": int((which == k).sum())}
                   for k in range(10) if (which == k).sum() >= 20]

    weights = model.weights.weight.detach()[:, 0]
    top = torch.argsort(weights, descending=True)
    tok = model.tokenizer
    strongest = {"positive": [(tok.decode([int(i)]), float(weights[i])) for i in top[:15]],
                 "negative": [(tok.decode([int(i)]), float(weights[i])) for i in top.flip(0)[:15]]}
    train_counts = torch.bincount(torch.tensor([t for i in data.train_items.tolist() for t in data.ids[i]]),
                                  minlength=weights.shape[0])
    lexicon_tokens = {}
    for word, value in LEXICON.items():
        token = tok(" " + word)["input_ids"]
        if len(token) == 1:
            lexicon_tokens[word] = {"true": value, "learned": float(weights[token[0]]),
                                    "train_count": int(train_counts[token[0]])}
    lex = np.array([[v["true"], v["learned"]] for v in lexicon_tokens.values()])
    least_learned = sorted(lexicon_tokens.items(), key=lambda kv: kv[1]["learned"] / kv[1]["true"])[:5]
    nonlexicon = torch.ones_like(weights, dtype=torch.bool)
    for word in LEXICON:
        for variant in (" " + word, word, " " + word.capitalize(), word.capitalize(), " " + word.upper()):
            ids = tok(variant)["input_ids"]
            if len(ids) == 1:
                nonlexicon[ids[0]] = False
    seen = torch.zeros_like(weights, dtype=torch.bool)
    seen[torch.tensor([t for i in data.train_items.tolist() for t in data.ids[i]])] = True

    # Figures.
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    ax = axes[0]
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(items))
    ax.scatter(r_true.numpy() + jitter, (r_hat - offset).numpy(), s=4, alpha=0.35)
    lim = [float(r_true.min()) - 1, float(r_true.max()) + 1]
    ax.plot(lim, lim, color="black", lw=1, label="r̂ = r* (up to a constant)")
    ax.set_xlabel("true reward r* (lexicon sum; jittered)")
    ax.set_ylabel("learned reward r̂ − mean offset")
    ax.set_title(f"held-out snippets: Pearson {headline['pearson_r_hat_vs_r_true']:.3f}, slope {headline['slope_r_hat_on_r_true']:.2f}", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[1]
    ax.plot([row["n_pairs"] for row in curve], [row["test_accuracy"] for row in curve], "o-", label="learned r̂")
    ax.axhline(headline["bayes_accuracy"], color="black", ls="--", lw=1, label="Bayes-optimal (expected)")
    ax.axhline(headline["test_accuracy_of_true_reward"], color="gray", ls=":", lw=1, label="true r* on these labels")
    ax.set_xscale("log")
    ax.set_xlabel("training pairs")
    ax.set_ylabel("held-out preference accuracy")
    ax.set_title("learning curve", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[2]
    ax.plot([0, 1], [0, 1], color="black", lw=1)
    ax.plot([c["p_predicted"] for c in calibration], [c["p_observed"] for c in calibration], "o-", label="observed frequency")
    ax.plot([c["p_predicted"] for c in calibration], [c["p_true"] for c in calibration], "s", ms=3, color="gray", label="true σ(Δr*)")
    ax.set_xlabel("predicted P(a ≻ b) = σ(r̂(a) − r̂(b))")
    ax.set_ylabel("P(a ≻ b)")
    ax.set_title("calibration on held-out pairs", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "figures/reward_model.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.scatter(lex[:, 0] + np.random.default_rng(1).uniform(-0.1, 0.1, len(lex)), lex[:, 1], s=12, label="lexicon word (' word' token)")
    other = weights[nonlexicon & seen].numpy()
    ax.scatter(np.zeros(len(other)) + np.random.default_rng(2).uniform(-0.25, 0.25, len(other)), other, s=2, alpha=0.15,
               color="gray", label="every other token seen in training")
    ax.set_xticks([-2, -1, 0, 1, 2])
    ax.set_xlabel("true lexicon weight")
    ax.set_ylabel("learned token weight w")
    ax.set_title("What the reward model learned, token by token", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "figures/token_weights.png", dpi=120)
    plt.close(fig)

    results = {
        "data": {"source": "Tiny Shakespeare (karpathy/char-rnn), non-overlapping 48-word snippets",
                 "n_snippets": len(data.texts), "n_train_snippets": len(data.train_items), "n_test_snippets": len(data.test_items),
                 "n_train_pairs": len(data.train), "n_test_pairs": len(data.test), "lexicon_size": len(LEXICON),
                 "true_reward_mean": float(data.true_rewards.mean()), "true_reward_std": float(data.true_rewards.std()),
                 "fraction_of_snippets_with_zero_true_reward": float((data.true_rewards == 0).double().mean())},
        "l2_sweep": sweep, "l2": best_l2,
        "headline": headline,
        "accuracy_gap_to_bayes": headline["bayes_accuracy"] - headline["test_accuracy"],
        "fit_seconds": fit_seconds,
        "learning_curve": curve,
        "calibration": calibration,
        "strongest_tokens": strongest,
        "lexicon_token_weights": {"pearson_with_lexicon": float(np.corrcoef(lex[:, 0], lex[:, 1])[0, 1]),
                                  "n": len(lex), "least_learned": [{"word": w, **v} for w, v in least_learned]},
        "non_lexicon_tokens": {"n_seen": int((nonlexicon & seen).sum()),
                               "mean_abs_weight": float(weights[nonlexicon & seen].abs().mean()),
                               "max_abs_weight": float(weights[nonlexicon & seen].abs().max())},
        "experiment_seconds": time.perf_counter() - start,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
