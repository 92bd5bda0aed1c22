"""Day 39: MLP neurons: activations, top-activating contexts, direct logit attribution (ARENA 1.2).

A neuron n of layer l is one coordinate of the MLP's hidden layer, ``blocks.l.mlp.hook_post``:

    GPT-2:   a_n = GELU(x · W_in[:, n] + b_in[n]),                       x = the normalised residual (ln2)
    SmolLM2: a_n = SiLU(x · W_gate[:, n]) · (x · W_in[:, n])           (a gated MLP; a_n can be negative)

and it writes a_n W_out[n, :] into the residual stream. Everything the final position's residual
stream holds is a sum of such writes,

    x_L = embed (+ pos_embed) + Σ_l [ Σ_h z_lh W_O[l, h] + b_O[l] ] + Σ_l [ Σ_n a_ln W_out[l, n] + b_out[l] ],

and the logits are N(x_L) W_U + b_U with N the final norm, x ↦ (x - mean x)/s for LayerNorm or
x/s for RMSNorm, s the norm's scale (TransformerLens folds the norm's weights into W_U). With
s frozen at its value on this input (``ln_final.hook_scale``) the logit difference between
answers A and B is linear in the components:

    logit_A - logit_B = Σ_c center(c) · (W_U[:, A] - W_U[:, B]) / s  +  b_U[A] - b_U[B],

so each neuron gets a direct logit attribution a_n (center(W_out[n]) · d) / s, and the
attributions sum exactly to the difference. "Direct" means through the residual stream straight
to the unembedding: what later layers do with the neuron's output is not counted.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

from checks.timing import single_thread

tl_setup = importlib.import_module("days.035.tl_setup")
hooks = importlib.import_module("days.037.hooks")
logit_lens = importlib.import_module("days.036.logit_lens")
act_name = tl_setup.act_name

# ---------------------------------------------------------------- activations and contexts


@torch.no_grad()
def neuron_activations(model, tokens: Int[Tensor, "batch pos"], layers: list[int],
                       batch_size: int = 8) -> dict[int, Float[Tensor, "batch pos d_mlp"]]:
    """hook_post of the given layers over a corpus: only those activations are stored, the forward pass stops
    after the last block needed (no unembedding), and the corpus goes through in batches."""
    names = [act_name("post", l) for l in layers]
    store: dict[str, list[Tensor]] = {name: [] for name in names}

    def save(activation: Tensor, hook) -> None:
        store[hook.name].append(activation.detach())

    for start in range(0, tokens.shape[0], batch_size):
        model.run_with_hooks(tokens[start:start + batch_size], fwd_hooks=[(name, save) for name in names],
                             stop_at_layer=max(layers) + 1)
    return {l: torch.cat(store[act_name("post", l)]) for l in layers}


def mlp_hidden_from_input(model, layer: int, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_mlp"]:
    """The neuron activations recomputed from the MLP's (normalised) input: act(x W_in + b_in), or for a gated MLP
    act(x W_gate) ⊙ (x W_in + b_in)."""
    import torch.nn.functional as F

    mlp, cfg = model.blocks[layer].mlp, model.cfg
    act = {"gelu_new": lambda t: F.gelu(t, approximate="tanh"), "gelu": F.gelu, "silu": F.silu, "relu": F.relu}[cfg.act_fn]
    pre = x @ mlp.W_in + mlp.b_in
    return act(x @ mlp.W_gate) * pre if cfg.gated_mlp else act(pre)


def top_activations(acts: Float[Tensor, "batch pos"], k: int) -> list[tuple[float, int, int]]:
    """The k largest activations of one neuron over a corpus, as (value, sequence, position), largest first."""
    values, flat = acts.flatten().topk(k)
    return [(v.item(), int(i) // acts.shape[1], int(i) % acts.shape[1]) for v, i in zip(values, flat)]


def context_string(tokenizer, tokens: Int[Tensor, "batch pos"], seq: int, pos: int, before: int = 12) -> str:
    """The text leading up to (and including, in ⟦ ⟧) the token at (seq, pos), for display: up to ``before`` tokens
    of lead, cut to start at a word boundary (a partial first word dropped up to the whitespace that ends it, "…"
    marking the cut, so that "…" is always followed by the whitespace before a whole word), newlines shown as ⏎ and
    WikiText's <unk> marker as ⟨unk⟩ (so that it survives Markdown)."""
    start = max(0, pos - before)
    lead = tokenizer.decode(tokens[seq, start:pos])
    if start > 0 and lead and not lead[0].isspace():  # the window begins inside a word: drop up to its end
        gap = re.search(r"\s", lead)
        lead = lead[gap.start():] if gap else ""
    lead = ("…" if start > 0 else "") + lead
    text = lead + "⟦" + tokenizer.decode(tokens[seq, pos:pos + 1]) + "⟧"
    return text.replace("\n", "⏎").replace("<unk>", "⟨unk⟩")


def top_activating_contexts(model, tokens: Int[Tensor, "batch pos"], layer: int, neuron: int, k: int = 5,
                            acts: Tensor | None = None, before: int = 12) -> list[dict]:
    """ARENA's max-activating examples: the k highest activations of neuron (layer, neuron) over the corpus with
    their contexts (the activating token last)."""
    if acts is None:
        acts = neuron_activations(model, tokens, [layer])[layer]
    return [{"activation": v, "seq": s, "pos": p, "context": context_string(model.tokenizer, tokens, s, p, before)}
            for v, s, p in top_activations(acts[..., neuron], k)]


# ---------------------------------------------------------------- direct logit attribution


def logit_direction(model, correct: Int[Tensor, "batch"], wrong: Int[Tensor, "batch"]) -> Float[Tensor, "batch d_model"]:
    """d = W_U[:, A] - W_U[:, B] for each batch row: the residual direction that raises logit A over logit B."""
    return (model.W_U[:, correct] - model.W_U[:, wrong]).T


_center = logit_lens.center
final_scale = logit_lens.norm_scale  # s on the final residual stream: frozen, it makes the logits linear


@torch.no_grad()
def dla_decomposition(model, cache, correct: Int[Tensor, "batch"], wrong: Int[Tensor, "batch"], pos: int = -1,
                      scale: Float[Tensor, "batch 1"] | None = None) -> dict[str, Tensor]:
    """Each component's direct contribution to logit[correct] - logit[wrong] at position ``pos``, per batch row:

    embed, pos_embed: [batch]; heads: [batch, layer, head]; attn_bias: [batch, layer];
    neurons: [batch, layer, d_mlp]; mlp_bias: [batch, layer]; unembed_bias: [batch].
    The final norm's scale is frozen at its value on this input (by default the cached ln_final.hook_scale),
    so the parts sum exactly to the difference.
    """
    cfg = model.cfg
    d = logit_direction(model, correct, wrong)                        # [b, d_model]
    if scale is None:
        scale = cache["ln_final.hook_scale"][:, pos]                  # [b, 1]

    def project(x: Tensor) -> Tensor:                                 # [b, ..., d_model] -> [b, ...]
        x = _center(model, x)
        return einops.einsum(x, d, "b ... m, b m -> b ...") / scale.view(-1, *([1] * (x.dim() - 2)))

    out = {"embed": project(cache["hook_embed"][:, pos])}
    if "hook_pos_embed" in cache:
        out["pos_embed"] = project(cache["hook_pos_embed"][:, pos])
    heads, attn_bias, neurons, mlp_bias = [], [], [], []
    for l in range(cfg.n_layers):
        attn, mlp = model.blocks[l].attn, model.blocks[l].mlp
        z = cache[act_name("z", l)][:, pos]                           # [b, head, d_head]
        heads.append(project(einops.einsum(z, attn.W_O, "b h e, h e m -> b h m")))
        attn_bias.append(project(attn.b_O.expand(len(d), -1)))
        # a neuron writes a_n W_out[n]: project W_out once per batch row, then scale by the activation
        w = einops.einsum(_center(model, mlp.W_out), d, "n m, b m -> b n")
        neurons.append(cache[act_name("post", l)][:, pos] * w / scale)
        mlp_bias.append(project(mlp.b_out.expand(len(d), -1)))
    out.update(heads=torch.stack(heads, 1), attn_bias=torch.stack(attn_bias, 1), neurons=torch.stack(neurons, 1),
               mlp_bias=torch.stack(mlp_bias, 1), unembed_bias=model.b_U[correct] - model.b_U[wrong])
    return out


def dla_total(parts: dict[str, Tensor]) -> Float[Tensor, "batch"]:
    """The sum of every component's attribution: the logit difference itself."""
    return sum(v.flatten(1).sum(1) if v.dim() > 1 else v for v in parts.values())


def dla_by_layer(parts: dict[str, Tensor]) -> tuple[Float[Tensor, "layer"], Float[Tensor, "layer"]]:
    """Attention (heads + b_O) and MLP (neurons + b_out) attribution per layer, averaged over the batch."""
    attn = (parts["heads"].sum(2) + parts["attn_bias"]).mean(0)
    mlp = (parts["neurons"].sum(2) + parts["mlp_bias"]).mean(0)
    return attn, mlp


# ---------------------------------------------------------------- the experiment

CORPUS = dict(n_seq=96, seq_len=128)
N_NEURONS = 4


def top_neurons(parts: dict[str, Tensor], k: int) -> list[tuple[int, int]]:
    """The k neurons with the largest batch-mean direct attribution, largest first, as (layer, neuron)."""
    neurons = parts["neurons"].mean(0)                                # [layer, d_mlp]
    order = neurons.flatten().argsort(descending=True)
    return [(int(i) // neurons.shape[1], int(i) % neurons.shape[1]) for i in order[:k]]


def dla_summary(parts: dict[str, Tensor], diff: Float[Tensor, "batch"]) -> dict:
    """The numbers the post reads off a direct logit attribution (``parts`` from dla_decomposition, ``diff`` the
    model's logit differences): totals by component kind, the strongest layers, head and neurons (batch means)."""
    attn, mlp = dla_by_layer(parts)
    neurons = parts["neurons"].mean(0)                                # [layer, d_mlp]
    order = neurons.flatten().argsort(descending=True)
    top = top_neurons(parts, 1)[0]
    total_neurons = parts["neurons"].sum((1, 2)).mean().item()
    heads = parts["heads"].mean(0)                                    # [layer, head]
    hl, hh = divmod(int(heads.argmax()), heads.shape[1])
    return {
        "logit_diff": diff.tolist(),
        "mean_logit_diff": diff.mean().item(),
        "dla_total_error": (dla_total(parts) - diff).abs().max().item(),
        "attn_by_layer": attn.tolist(), "mlp_by_layer": mlp.tolist(),
        "total_attn": attn.sum().item(), "total_mlp": mlp.sum().item(),
        "total_neurons": total_neurons,
        "embed": parts["embed"].mean().item(),
        "top_neuron_share_of_neurons": float(neurons[top] / total_neurons),
        "top10_neuron_sum": float(neurons.flatten().sort(descending=True).values[:10].sum()),
        "n_neurons_over_tenth": int((neurons > 0.1).sum()), "n_neurons_under_minus_tenth": int((neurons < -0.1).sum()),
        "top10_neurons": [{"layer": int(i) // neurons.shape[1], "neuron": int(i) % neurons.shape[1],
                           "dla": float(neurons.flatten()[i])} for i in order[:10]],
        "bottom_neuron": {"layer": int(order[-1]) // neurons.shape[1], "neuron": int(order[-1]) % neurons.shape[1],
                          "dla": float(neurons.flatten()[order[-1]])},
        "largest_mlp_layer": int(mlp.argmax()), "largest_attn_layer": int(attn.argmax()),
        "top_head": {"layer": hl, "head": hh, "dla": float(heads[hl, hh]), "dla_by_prompt": parts["heads"][:, hl, hh].tolist()},
    }


def neuron_on_prompts(parts: dict[str, Tensor], cache, layer: int, neuron: int, pos: int = -1) -> dict:
    """One neuron on the prompts: its mean and per-prompt attribution and its activation at ``pos``."""
    return {"layer": layer, "neuron": neuron, "label": f"L{layer}N{neuron}",
            "dla": float(parts["neurons"][:, layer, neuron].mean()),
            "dla_by_prompt": parts["neurons"][:, layer, neuron].tolist(),
            "activation_on_prompts": cache[act_name("post", layer)][:, pos, neuron].tolist()}


def neuron_on_corpus(model, tokens: Int[Tensor, "batch pos"], acts: Float[Tensor, "batch pos d_mlp"], layer: int,
                     neuron: int, k: int = 5) -> dict:
    """One neuron over a corpus (``acts`` = its layer's neuron_activations): its largest and mean activation, the
    fraction of tokens above half the largest, and its k top-activating contexts."""
    a = acts[..., neuron]
    contexts = top_activating_contexts(model, tokens, layer, neuron, k=k, acts=acts)
    return {"corpus_max": float(a.max()), "corpus_mean": float(a.mean()),
            "corpus_fraction_above_half_max": float((a > a.max() / 2).float().mean()),
            "contexts": contexts, "top_context": contexts[0]["context"]}


@single_thread()  # many small forward passes: a second thread only spins on a shared machine
def run_experiment(out_dir: Path) -> dict:
    """SmolLM2 on day 37's landmark task: which layers and neurons write "Paris, not Rome" directly, and what
    those neurons respond to across WikiText-2."""
    import time

    import matplotlib.pyplot as plt

    from checks.models import smollm2_hooked

    out_dir = Path(out_dir)
    cpu0 = time.process_time()
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    model = smollm2_hooked()
    tok = model.tokenizer
    clean, _, correct, wrong = hooks.landmark_batch(tok)
    with torch.no_grad():
        logits, cache = model.run_with_cache(clean)
    parts = dla_decomposition(model, cache, correct, wrong)
    diff = (logits[:, -1].gather(-1, correct[:, None]) - logits[:, -1].gather(-1, wrong[:, None]))[:, 0]
    attn, mlp = dla_by_layer(parts)
    neurons = parts["neurons"].mean(0)                                # [layer, d_mlp]
    top = top_neurons(parts, N_NEURONS)

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), constrained_layout=True)
    x = torch.arange(model.cfg.n_layers)
    axes[0].bar(x - 0.2, attn, width=0.4, label="attention (heads + b_O)")
    axes[0].bar(x + 0.2, mlp, width=0.4, label="MLP (neurons + b_out)")
    axes[0].set_xlabel("layer")
    axes[0].set_ylabel("direct contribution (logits)")
    axes[0].set_title("Direct logit attribution of 'right city − wrong city', by layer")
    axes[0].legend(fontsize=8)
    axes[0].grid(True, axis="y", alpha=0.3)
    flat = neurons.flatten().sort().values
    axes[1].plot(flat.flip(0)[:200], "o", ms=3, label="most positive")
    axes[1].plot(flat[:200], "o", ms=3, label="most negative")
    axes[1].axhline(0, color="grey", lw=0.5)
    axes[1].set_xlabel("rank")
    axes[1].set_ylabel("direct contribution (logits)")
    axes[1].set_title(f"The 200 most positive and most negative of {neurons.numel():,} neurons")
    axes[1].legend(fontsize=8)
    axes[1].grid(True, alpha=0.3)
    fig.savefig(out_dir / "figures/dla.png", dpi=120)
    plt.close(fig)

    tokens = tl_setup.wikitext_tokens(tok, **CORPUS)
    acts = neuron_activations(model, tokens, sorted({l for l, _ in top}))
    neuron_report = [neuron_on_prompts(parts, cache, l, n) | neuron_on_corpus(model, tokens, acts[l], l, n)
                     for l, n in top]

    fig, axes = plt.subplots(1, len(top), figsize=(3.2 * len(top), 3.2), constrained_layout=True)
    for ax, (l, n) in zip(axes, top):
        values = acts[l][..., n].flatten()
        ax.hist(values.numpy(), bins=80, log=True, color="C0")
        for a in cache[act_name("post", l)][:, -1, n].tolist():
            ax.axvline(a, color="C3", lw=1)
        ax.set_title(f"L{l}N{n}", fontsize=10)
        ax.set_xlabel("activation")
    axes[0].set_ylabel(f"count over {values.numel():,} WikiText tokens")
    fig.suptitle("Activations of the top neurons over WikiText-2 (red: on the four landmark prompts)")
    fig.savefig(out_dir / "figures/neuron_histograms.png", dpi=120)
    plt.close(fig)

    results = {
        "prompts": [hooks.LANDMARKS[c][0] for c, _ in hooks.PAIRS],
        "answers": [[tok.decode([int(a)]), tok.decode([int(b)])] for a, b in zip(correct, wrong)],
        **dla_summary(parts, diff),
        "neurons": neuron_report,
        "corpus": CORPUS,
        "cpu_seconds": time.process_time() - cpu0,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
