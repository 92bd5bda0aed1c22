"""Day 59: SAE latents in SmolLM2's IOI circuit (ARENA 1.4.2 SAE circuits, with day 53's IOI task).

Day 53 found SmolLM2's name movers at layer 23 (L23H3, L23H0, L23H2: they attend from the final position to the
indirect object and copy it). Their OV circuit reads the residual stream at the name positions; an SAE at
``blocks.16.hook_resid_pre`` (day 57's second SAE, 1 152 TopK latents) sits upstream of them. Which of its latents carry
the names?

**Attribution.** Splice the SAE in with its error term, x = decode(a) + ε, ε = x − decode(a) held fixed, so the model's
output is unchanged, and differentiate the logit difference LD = logit(IO) − logit(S) at the final position with respect
to each latent at each position. Gradient × activation,

    attr[p, j] = a[p, j] · ∂LD/∂a[p, j] = a[p, j] · W_dec[j] · ∂LD/∂x[p],

is the first-order change in LD when the latent is removed (sign flipped): LD(a with a[p, j] = 0) ≈ LD − attr[p, j].
With ε and b_dec as the remaining parts of x, the attributions add up exactly (a linear identity, not an approximation):

    Σ_j attr[p, j] + ε[p] · g[p] + b_dec · g[p] = x[p] · g[p],        g = ∂LD/∂x.

**Exact ablation** zeroes the chosen latents (error kept) and reruns the model from layer 16: what the first-order
attribution predicts is then measured, with a t interval over prompts (day 53's ``mean_ci``).

SmolLM2's attention sink (position 0) keeps its true residual and carries no latent (day 57's convention).
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from checks.timing import single_thread

ioi = importlib.import_module("days.053.ioi_setup")              # IOIDataset, logits_to_ave_logit_diff, mean_ci
sae_circuits = importlib.import_module("days.057.sae_circuits")  # residual_at, sinks, encode_latents, splice, ...
sae_train = importlib.import_module("days.047.sae_train")        # trained_sae, train_ours, non_sink, mixed_tokens

LAYER = 16
ROLES = ("IO", "S1", "S2", "end")


def role_positions(ds) -> dict[str, Int[Tensor, " N"]]:
    """Each prompt's position of the IO name, the two subject names and the final token."""
    return {r: ds.word_idx[r] for r in ROLES}


def latent_attribution(model, sae, toks: Int[Tensor, "N seq"], answer_tokens: Int[Tensor, "N 2"],
                       end: Int[Tensor, " N"]) -> dict[str, Tensor]:
    """Gradient × activation of each prompt's LD with respect to every latent of the SAE at every position, the SAE
    spliced in with its error term (so LD is the model's own). Returns the latents a, the attributions attr = a · ∂LD/∂a
    [N, seq, d_sae], the gradient g = ∂LD/∂x at the SAE's hook [N, seq, d_model], the residual x, the error ε, and LD."""
    layer = sae_circuits.hook_layer(sae)
    with torch.no_grad():
        resid = sae_circuits.residual_at(model, toks, layer)
        sink = sae_circuits.sinks(resid)
        acts0 = sae_circuits.encode_latents(sae, resid, sink)
        err = resid - sae_circuits.splice(sae, acts0, sink, resid)
    acts = acts0.clone().requires_grad_(True)
    with sae_circuits.frozen(model, sae):
        x = sae_circuits.splice(sae, acts, sink, resid) + err
        x.retain_grad()
        logits = model(x, start_at_layer=layer)
        ld = ioi.logits_to_ave_logit_diff(logits, answer_tokens, per_prompt=True, end=end)
        ld.sum().backward()
    return {"acts": acts0, "attr": (acts0 * acts.grad).detach(), "grad": x.grad.detach(), "resid": resid, "err": err,
            "ld": ld.detach(), "sink": sink}


@torch.no_grad()
def ablated_ld(model, sae, toks: Int[Tensor, "N seq"], answer_tokens: Int[Tensor, "N 2"], end: Int[Tensor, " N"],
               ablate: list[tuple[Tensor, int]], scale: float = 0.0, resid: Tensor | None = None) -> Float[Tensor, " N"]:
    """LD with chosen latents scaled by ``scale`` (0: ablated), the error term kept: ``ablate`` is a list of
    (positions [N], latent) pairs, latent j at each prompt's own position. ``resid``: the residual stream at the SAE's
    hook, if already computed (the run then starts there)."""
    layer = sae_circuits.hook_layer(sae)
    resid = sae_circuits.residual_at(model, toks, layer) if resid is None else resid
    sink = sae_circuits.sinks(resid)
    acts = sae_circuits.encode_latents(sae, resid, sink)
    err = resid - sae_circuits.splice(sae, acts, sink, resid)
    rows = torch.arange(len(toks))
    new = acts.clone()
    for pos, j in ablate:
        new[rows, pos, j] = acts[rows, pos, j] * scale
    logits = model(sae_circuits.splice(sae, new, sink, resid) + err, start_at_layer=layer)
    return ioi.logits_to_ave_logit_diff(logits, answer_tokens, per_prompt=True, end=end)


def by_role(attr: Float[Tensor, "N seq d_sae"], ds) -> dict[str, Float[Tensor, "N d_sae"]]:
    """Each prompt's attributions at its IO, S1, S2 and final positions, and the sum over every other position."""
    rows = torch.arange(attr.shape[0])
    out = {r: attr[rows, p] for r, p in role_positions(ds).items()}
    out["other"] = attr.sum(1) - sum(out.values())
    return out


def top_latents(per_prompt: Float[Tensor, "N d_sae"], k: int) -> list[int]:
    """The k latents with the largest mean attribution over prompts."""
    return per_prompt.mean(0).topk(k).indices.tolist()


# ---------------------------------------------------------------- the experiment

EXPERIMENT = dict(N=64, seed=1, k=4, control_seed=7, batch_size=16)


def gate_sae(model, layer: int = LAYER):
    """A small TopK SAE at the layer (256 latents, k = 8), trained in seconds on 8 windows of WikiText-2 and
    Shakespeare: what the gate tests the functions on (day 57's gate recipe)."""
    tokens = sae_train.mixed_tokens(model.tokenizer, [("wikitext-valid", 4), ("shakespeare", 4)], seq_len=64)
    name = f"blocks.{layer}.hook_resid_pre"
    _, cache = model.run_with_cache(tokens, names_filter=[name], stop_at_layer=layer + 1)
    cfg = sae_train.TrainConfig(d_sae=256, k=8, batch_size=128, steps=60, lr=3e-3, dead_steps=30)
    return sae_train.train_ours(sae_train.non_sink(cache[name]), cfg, log_freq=50, hook_name=name)[0]


def headline_sae():
    """Day 57's layer-16 SAE (day 47's headline shape, trained on 300 windows; cached after the first run)."""
    return sae_train.trained_sae(LAYER, cfg=sae_circuits.SECOND_SAE, parts=sae_circuits.SECOND_PARTS)


def analyse(model, sae, cfg: dict = EXPERIMENT) -> dict:
    """Attributions on N IOI prompts (per role), the top-k latents at the IO position and at S2, exact ablation of
    each set with its prediction, and a control of k random latents active at the same positions."""
    ds = ioi.IOIDataset("mixed", cfg["N"], model.tokenizer, seed=cfg["seed"])
    end = ds.word_idx["end"]
    parts = []
    for s in range(0, len(ds), cfg["batch_size"]):
        sl = slice(s, s + cfg["batch_size"])
        a = latent_attribution(model, sae, ds.toks[sl], ds.answer_tokens[sl], end[sl])
        parts.append({k: a[k] for k in ("attr", "acts", "ld", "grad", "resid", "err")})
        del a
    pad = max(p["attr"].shape[1] for p in parts)

    def cat(key):
        return torch.cat([torch.nn.functional.pad(p[key], (0, 0, 0, pad - p[key].shape[1])) if p[key].dim() == 3
                          else p[key] for p in parts])

    attr, acts, ld = cat("attr"), cat("acts"), cat("ld")
    roles = by_role(attr, ds)
    rows = torch.arange(len(ds))
    total = attr.sum((1, 2))
    results = {"experiment": cfg, "d_sae": int(acts.shape[-1]), "layer": LAYER,
               "ld": ioi.mean_ci(ld), "latent_attr_total": ioi.mean_ci(total),
               "role_share": {r: (v.sum(-1).mean() / total.mean()).item() for r, v in roles.items()},
               "role_attr": {r: ioi.mean_ci(v.sum(-1)) for r, v in roles.items()}}
    gen = torch.Generator().manual_seed(cfg["control_seed"])
    with torch.no_grad():
        resid = sae_circuits.residual_at(model, ds.toks, LAYER)

    def ablated(pairs):
        return ablated_ld(model, sae, ds.toks, ds.answer_tokens, end, pairs, resid=resid) - ld
    for role in ("IO", "S2", "end"):
        pos = ds.word_idx[role]
        top = top_latents(roles[role], cfg["k"])
        predicted = -roles[role][:, top].sum(-1)
        measured = ablated([(pos, j) for j in top])
        single = []
        for j in top:
            m = ablated([(pos, j)])
            single.append({"latent": j, "mean_attr": roles[role][:, j].mean().item(),
                           "active_fraction": (acts[rows, pos, j] > 0).double().mean().item(),
                           "measured": ioi.mean_ci(m), "predicted": ioi.mean_ci(-roles[role][:, j])})
        active = (acts[rows, pos] > 0)
        pool = [j for j in torch.nonzero(active.any(0)).flatten().tolist() if j not in top]
        ctrl = [pool[i] for i in torch.randperm(len(pool), generator=gen)[:cfg["k"]].tolist()]
        control = ablated([(pos, j) for j in ctrl])
        results[f"ablate_{role}"] = {
            "latents": top, "single": single, "measured": ioi.mean_ci(measured), "predicted": ioi.mean_ci(predicted),
            "measured_over_ld": measured.mean().item() / ld.mean().item(),
            "pearson": torch.corrcoef(torch.stack([measured.double(), predicted.double()]))[0, 1].item(),
            "control_latents": ctrl, "control_measured": ioi.mean_ci(control),
            "control_predicted": ioi.mean_ci(-roles[role][:, ctrl].sum(-1))}
    return results


def run_experiment(out_dir: Path = Path(__file__).parent) -> dict:
    """SmolLM2 with day 57's layer-16 SAE on 64 IOI prompts: where the latents' attribution to LD sits, and exact
    ablations of the top latents at the IO, S2 and final positions against their attributions."""
    import matplotlib.pyplot as plt

    from checks.models import hooked_model

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    with single_thread():
        model = hooked_model("smollm2")
        sae = headline_sae()
        results = analyse(model, sae)
    roles = ["IO", "S1", "S2", "end", "other"]
    fig, ax = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    ax[0].bar(roles, [results["role_attr"][r][0] for r in roles],
              yerr=[[results["role_attr"][r][0] - results["role_attr"][r][1] for r in roles],
                    [results["role_attr"][r][2] - results["role_attr"][r][0] for r in roles]])
    ax[0].set_ylabel("Σ latent attribution to LD (logits)")
    ax[0].set_title(f"Layer-{LAYER} SAE latents, by position")
    labels, meas, pred, ctrl = [], [], [], []
    for role in ("IO", "S2", "end"):
        r = results[f"ablate_{role}"]
        labels.append(role)
        meas.append(r["measured"])
        pred.append(r["predicted"])
        ctrl.append(r["control_measured"])
    x = torch.arange(3).float()
    for off, data, lab in [(-0.25, pred, "predicted (−attribution)"), (0.0, meas, "measured (exact ablation)"),
                           (0.25, ctrl, "control: k random active latents")]:
        ax[1].bar(x + off, [d[0] for d in data], width=0.25, label=lab,
                  yerr=[[d[0] - d[1] for d in data], [d[2] - d[0] for d in data]])
    ax[1].set_xticks(x.tolist(), [f"top {EXPERIMENT['k']} at {lab}" for lab in labels])
    ax[1].set_ylabel("change in LD (95 % t interval)")
    ax[1].legend(fontsize=7)
    fig.savefig(out_dir / "figures/ablation.png", dpi=120)
    plt.close(fig)
    results["wall_seconds"] = time.perf_counter() - wall0
    results["cpu_seconds"] = time.process_time() - cpu0
    text = json.dumps(results, indent=1)
    (out_dir / "results.json").write_text(text + "\n")
    return json.loads(text)
