"""Day 36: the logit lens (ARENA 1.2 Intro to Mech Interp; nostalgebraist's logit lens, 2020).

The residual stream after l blocks, x_l, is what the remaining blocks read and add to. The logit
lens decodes it as if it were the last one: apply the final normalisation and the unembedding,

    lens_l(x) = N(x_l) W_U + b_U,     N = the model's final norm:
        LayerNorm:  N(x) = (x - mean(x)) / sqrt(var(x) + ε) ⊙ w + b
        RMSNorm:    N(x) = x / sqrt(mean(x²) + ε) ⊙ w

(TransformerLens folds w into W_U and b into b_U, leaving "LNPre"/"RMSPre" without weights.)
At l = n_layers this IS the model's output, so the lens interpolates from the embedding's
"prediction" (layer 0) to the final one. Each layer's stream is normalised by its own scale: a
lens is not linear in x. (TransformerLens 3.9's ``accumulated_resid(apply_ln=True)`` does the
same; ``apply_ln_to_stack`` instead divides every layer by the *final* layer's cached scale,
which is what a linear attribution needs (day 39), not a lens.)

Measured per layer: next-token accuracy, cross-entropy, and KL(final ‖ lens_l), the distance of
the layer's belief from the model's output.
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

tl_setup = importlib.import_module("days.035.tl_setup")
act_name = tl_setup.act_name


def center(model, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
    """x - mean(x) for a LayerNorm model (a linear map); x itself for an RMSNorm model."""
    kind = model.cfg.normalization_type
    if kind in ("LN", "LNPre"):
        return x - x.mean(-1, keepdim=True)
    if kind in ("RMS", "RMSPre"):
        return x
    raise NotImplementedError(f"final norm {kind!r}")


def norm_scale(model, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... 1"]:
    """The final norm's scale s(x) = sqrt(mean(center(x)²) + ε) (what ``ln_final.hook_scale`` caches)."""
    return (center(model, x).pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt()


def final_norm(model, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
    """The model's final normalisation, written out (the lens must use each layer's own statistics)."""
    ln, kind = model.ln_final, model.cfg.normalization_type
    x = center(model, x) / norm_scale(model, x)
    if kind == "LN":
        x = x * ln.w + ln.b
    elif kind == "RMS":
        x = x * ln.w
    return x


def lens_logits(model, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
    """lens(x) = N(x) W_U + b_U: the logits the model would output if its residual stream stopped here."""
    return final_norm(model, resid) @ model.W_U + model.b_U


def residual_stack(cache, n_layers: int) -> Float[Tensor, "layer_plus_1 batch pos d_model"]:
    """[x_0, …, x_L]: resid_pre of every block (x_0 = the embeddings), then the last block's resid_post."""
    return torch.stack([cache[act_name("resid_pre", l)] for l in range(n_layers)]
                       + [cache[act_name("resid_post", n_layers - 1)]])


def layer_labels(n_layers: int) -> list[str]:
    """Names of the stack indices 0..L: stack index l is the residual stream after l blocks."""
    return ["embed"] + [f"after {l} block{'s' * (l > 1)}" for l in range(1, n_layers + 1)]


@torch.no_grad()
def lens_statistics(model, tokens: Int[Tensor, "batch pos"], batch_size: int = 4,
                    layers: list[int] | None = None, margins: bool = False) -> dict[str, Tensor]:
    """Per stack index l (0..L by default, or the given ``layers``), over all batch·(pos-1) next-token
    predictions of the lens:

    accuracy  = mean[argmax lens_l = next token],
    loss      = mean[-log softmax(lens_l)[next token]],
    kl        = mean[KL(softmax(final) ‖ softmax(lens_l))],
    agreement = mean[argmax lens_l = argmax final].

    With ``margins``, also how close each argmax was to a tie, for judging what rounding could change:
    top2_gap [layer, prediction] (the lens's largest logit minus its second) and max_abs_logit [layer].
    """
    n_layers = model.cfg.n_layers
    layers = list(range(n_layers + 1)) if layers is None else list(layers)
    sums = {k: torch.zeros(len(layers), dtype=torch.float64) for k in ("accuracy", "loss", "kl", "agreement")}
    gaps: list[list[Tensor]] = [[] for _ in layers]
    max_abs = torch.zeros(len(layers))
    count = 0
    for start in range(0, tokens.shape[0], batch_size):
        chunk = tokens[start:start + batch_size]
        _, cache = model.run_with_cache(chunk, names_filter=lambda n: "resid_pre" in n or n.endswith(f"{n_layers - 1}.hook_resid_post"))
        stack = residual_stack(cache, n_layers)[:, :, :-1]  # positions that have a next token
        target = chunk[:, 1:]
        final_logits = lens_logits(model, stack[-1])
        final = final_logits.log_softmax(-1)
        final_top = final.argmax(-1)
        for i, l in enumerate(layers):
            logits = final_logits if l == n_layers else lens_logits(model, stack[l])
            logp = final if l == n_layers else logits.log_softmax(-1)
            if margins:
                top2 = logits.topk(2, dim=-1).values
                gaps[i].append((top2[..., 0] - top2[..., 1]).flatten())
                max_abs[i] = max(max_abs[i], logits.abs().max())
            top = logp.argmax(-1)
            sums["accuracy"][i] += (top == target).sum().item()
            sums["loss"][i] -= logp.gather(-1, target[..., None]).sum().item()
            sums["kl"][i] += (final.exp() * (final - logp)).sum().item()
            sums["agreement"][i] += (top == final_top).sum().item()
        count += target.numel()
    out = {k: v / count for k, v in sums.items()}
    if margins:
        out.update(top2_gap=torch.stack([torch.cat(g) for g in gaps]), max_abs_logit=max_abs)
    return out


@torch.no_grad()
def lens_top_tokens(model, tokens: Int[Tensor, "pos"]) -> tuple[Int[Tensor, "layer_plus_1 pos"], Float[Tensor, "layer_plus_1 pos"]]:
    """For one sequence: the lens's top token and its probability at every layer and position."""
    _, cache = model.run_with_cache(tokens[None])
    probs = lens_logits(model, residual_stack(cache, model.cfg.n_layers)[:, 0]).softmax(-1)
    top = probs.max(-1)
    return top.indices, top.values


# ---------------------------------------------------------------- the experiment

GATE_CORPUS = tl_setup.GATE_CORPUS  # the gate's corpus is day 35's
EXPERIMENT_CORPUS = dict(n_seq=32, seq_len=128)
PROMPT = "The Eiffel Tower is in the city of Paris, and the Colosseum is in the city of"


def plot_statistics(stats: dict[str, Tensor], n_layers: int, d_vocab: int, title: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    x = range(n_layers + 1)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.9), constrained_layout=True)
    axes[0].plot(x, stats["accuracy"], "o-", ms=3, label="next token")
    axes[0].plot(x, stats["agreement"], "s-", ms=3, label="the model's own top-1")
    axes[0].set_ylabel("top-1 agreement")
    axes[0].set_ylim(0, 1)
    axes[0].legend(fontsize=8)
    axes[1].semilogy(x, stats["loss"], "o-", ms=3, color="C2", label="lens")
    axes[1].axhline(math.log(d_vocab), color="grey", ls="--", lw=1, label=f"uniform over {d_vocab:,} tokens")
    axes[1].set_ylabel("cross-entropy (nats)")
    axes[1].legend(fontsize=8)
    axes[2].semilogy(list(x)[:-1], stats["kl"][:-1], "o-", ms=3, color="C3")  # 0 at the last layer: off the log axis
    axes[2].set_ylabel("KL(final ‖ lens)  (nats)")
    for ax in axes:
        ax.set_xlabel("blocks applied (0 = the embeddings)")
        ax.grid(True, alpha=0.3)
    fig.suptitle(title)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_lens_table(tokenizer, tokens: Tensor, top: Tensor, prob: Tensor, layers: list[int], path: Path) -> None:
    """The classic logit-lens picture: rows = layers, columns = input positions, cells = top prediction."""
    import matplotlib.pyplot as plt

    labels = tl_setup.token_labels(tokenizer, tokens)
    fig, ax = plt.subplots(figsize=(0.72 * len(labels) + 1.2, 0.4 * len(layers) + 1.3))
    ax.imshow(prob[layers].numpy(), cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for r, l in enumerate(layers):
        for c in range(len(labels)):
            text = tokenizer.decode([int(top[l, c])]).replace("\n", "⏎").strip() or "␣"
            text = text[:8]
            ax.text(c, r, text, ha="center", va="center", fontsize=7.5, color="white" if prob[l, c] > 0.6 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", rotation_mode="anchor", fontsize=9)
    names = layer_labels(max(layers))
    ax.set_yticks(range(len(layers)), [names[l] for l in layers], fontsize=9)
    ax.set_xlabel("input token (the cell shows the prediction for the NEXT one)")
    ax.set_title("Logit lens on SmolLM2: the top token at each layer (colour = its probability)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def headline(stats: dict[str, Tensor], n_layers: int, d_vocab: int) -> dict:
    """The numbers the post reads off the per-layer curves of lens_statistics (stack indices 0..n_layers)."""
    accuracy, loss = stats["accuracy"], stats["loss"]
    half = float(accuracy[-1]) / 2
    uniform = math.log(d_vocab)  # the cross-entropy of a uniform guess
    first_below = int(next(l for l in range(1, n_layers + 1) if loss[l] < uniform))
    return {
        "final_accuracy": float(accuracy[-1]),
        "embed_accuracy": float(accuracy[0]),
        "middle_accuracy": float(accuracy[n_layers // 2]),
        "penultimate_accuracy": float(accuracy[-2]),
        "final_loss": float(loss[-1]),
        "embed_loss": float(loss[0]),
        "first_layer_with_half_final_accuracy": int(next(l for l in range(n_layers + 1) if accuracy[l] >= half)),
        "max_loss_layer": int(loss.argmax()),
        "max_loss": float(loss.max()),
        "uniform_loss": uniform,
        "peak_loss_after_embed": float(loss[1:].max()),
        "peak_loss_after_embed_layer": int(loss[1:].argmax()) + 1,
        "peak_loss_over_uniform": float(loss[1:].max()) / uniform,
        "middle_loss": float(loss[n_layers // 2]),
        "first_layer_below_uniform": first_below,
        "blocks_left_when_below_uniform": n_layers - first_below,
    }


@torch.no_grad()
def embed_echo(model, tokens: Int[Tensor, "batch pos"]) -> float:
    """The fraction of positions where the embedding's lens (stack index 0) predicts the input token itself."""
    _, cache = model.run_with_cache(tokens, names_filter=act_name("resid_pre", 0), stop_at_layer=1)
    return (lens_logits(model, cache[act_name("resid_pre", 0)]).argmax(-1) == tokens).float().mean().item()


def prompt_lens(model, prompt: str = PROMPT, answers: tuple[str, str] = (" Paris", " Rome")) -> dict:
    """The lens table of one prompt, and when each answer becomes its top token: the first stack index at which
    the lens's top token is the first answer, at the position that predicts it (the answer is in the prompt),
    and the second answer at the last position; the model's final probabilities for both; the lens's top token
    at the last position by layer. The table itself is returned as ``ids``, ``top``, ``prob`` (tensors)."""
    tok, n_layers = model.tokenizer, model.cfg.n_layers
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids[0]
    top, prob = lens_top_tokens(model, ids)
    first, last = (tok(city, add_special_tokens=False).input_ids[0] for city in answers)
    first_position = ids.tolist().index(first) - 1  # the position that predicts the first answer
    return {"prompt": prompt,
            "prompt_paris_first_layer": next((l for l in range(n_layers + 1) if top[l, first_position] == first), None),
            "prompt_paris_final_prob": float(prob[-1, first_position]),
            "prompt_rome_first_layer": next((l for l in range(n_layers + 1) if top[l, -1] == last), None),
            "prompt_rome_final_prob": float(prob[-1, -1]),
            "prompt_top_by_layer_at_last_position": [tok.decode([int(t)]) for t in top[:, -1]],
            "ids": ids, "top": top, "prob": prob}


def run_experiment(out_dir: Path) -> dict:
    """SmolLM2 over WikiText-2: accuracy, loss and KL to the output by layer; the lens table of a prompt."""
    from checks.models import smollm2_hooked

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    model = smollm2_hooked()
    tok = model.tokenizer
    n_layers = model.cfg.n_layers

    tokens = tl_setup.wikitext_tokens(tok, **EXPERIMENT_CORPUS)
    stats = lens_statistics(model, tokens)
    plot_statistics(stats, n_layers, model.cfg.d_vocab, f"Logit lens, SmolLM2-135M on WikiText-2 ({EXPERIMENT_CORPUS['n_seq']}×"
                    f"{EXPERIMENT_CORPUS['seq_len']} tokens)", out_dir / "figures/lens_by_layer.png")
    gate_stats = lens_statistics(model, tl_setup.wikitext_tokens(tok, **GATE_CORPUS))

    lens = prompt_lens(model)
    ids, top, prob = lens.pop("ids"), lens.pop("top"), lens.pop("prob")
    shown = list(range(0, n_layers + 1, 3)) + ([n_layers] if n_layers % 3 else [])
    plot_lens_table(tok, ids, top, prob, shown, out_dir / "figures/lens_table.png")

    results = {
        "corpus": EXPERIMENT_CORPUS,
        "n_predictions": EXPERIMENT_CORPUS["n_seq"] * (EXPERIMENT_CORPUS["seq_len"] - 1),
        "by_layer": {k: v.tolist() for k, v in stats.items()},
        **headline(stats, n_layers, model.cfg.d_vocab),
        "embed_lens_predicts_current_token": embed_echo(model, tokens[:4]),
        "gate_corpus": GATE_CORPUS,
        "gate_by_layer": {k: v.tolist() for k, v in gate_stats.items()},
        **lens,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
