"""Day 91: psychological consistency probing: steering, capping and monitoring with day 90's persona vectors (ARENA
4.4 sections 2 and 4; Chen et al. 2025; Lu et al., "The assistant axis").

**Steering.** ``ActivationSteerer`` adds α·v to the residual stream hidden_states[l] (the output of block l − 1, where
day 90 read the vectors) at every position, or only at the newest token of each forward pass (positions="response":
in cached generation, the tokens being written). It is day 41's ``DeceptionSteeringHook`` under ARENA's name, with
ARENA's argument order (model, vector, coeff, layer).

**Capping.** ``ActivationCapper`` clamps the projection of each position's stream on a unit direction û from above,

    h ← h − max(0, h·û − τ) û ,

so a position whose projection is at or below the cap τ is left exactly as it was, and one above it is moved back
along û to projection exactly τ; the component orthogonal to û never changes. Lu et al. cap the projection on the
assistant axis from below (drift *away* from the assistant); that is this capper on −û with cap −τ.

**Monitoring.** The projection of an answer's response-averaged activation on the trait's unit vector,
p = x̄^l · v/‖v‖, as a score for "this answer expresses the trait": AUROC against the judged labels, with a
stratified bootstrap interval (day 41's). Chen et al. also project the last prompt token, before any answer exists:
a forecast rather than a reading.

**Dose-response.** The fraction of answers expressing the trait (day 90's chosen scorer) against the steering
coefficient, with Wilson intervals, on the held-out questions (none of them made the vector), beside a random
direction of the same norm.
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from checks.timing import single_thread

PV = importlib.import_module("days.090.persona_vectors")   # vectors, prompts, activations, judges (day 90)
D = PV.D                                                    # day 90's data: personas, traits, hand labels
C41 = PV.C41                                                # day 41: DeceptionSteeringHook, auroc, bootstrap
I76 = PV.I76                                                # day 76: proportion (Wilson)

HERE = Path(__file__).resolve().parent
COEFFICIENTS = (0.0, 1.0, 2.0, 4.0)    # α in units of the trait vector (its unnormalised mean difference)
N_TURNS = 3


# ---------------------------------------------------------------- steering and capping hooks


class ActivationSteerer(C41.DeceptionSteeringHook):
    """ARENA's ActivationSteerer: h ← h + coeff·vector at hidden_states[layer] (output of block layer − 1), at
    every position (positions="all") or at the newest position of each forward pass ("response"). A context
    manager: ``with ActivationSteerer(model, v, coeff, layer): ...`` registers the hook on entry and removes it on
    exit."""

    def __init__(self, model, steering_vector: Float[Tensor, "d_model"], coeff: float = 1.0, layer: int = 1,
                 positions: str = "all"):
        if positions not in ("all", "response"):
            raise ValueError(f"positions must be 'all' or 'response', got {positions!r}")
        super().__init__(steering_vector, layer, coeff, apply_to_all_tokens=positions == "all")
        self.model = model

    def __enter__(self) -> "ActivationSteerer":
        self.enable(self.model)
        return self


class ActivationCapper(C41.DeceptionSteeringHook):
    """Activation capping at hidden_states[layer], every position: h ← h − max(0, h·û − cap)·û (û the unit
    direction). Projections at or below ``cap`` are left unchanged; the others are clamped to exactly ``cap``."""

    def __init__(self, model, direction: Float[Tensor, "d_model"], cap: float, layer: int):
        super().__init__(direction / direction.norm(), layer, 1.0)
        self.model, self.cap = model, float(cap)

    def _hook_fn(self, module, inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        u = self.steering_vector.to(hidden.dtype)
        excess = torch.clamp(hidden @ u - self.cap, min=0.0)
        hidden = hidden - excess[..., None] * u
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def __enter__(self) -> "ActivationCapper":
        self.enable(self.model)
        return self


def cap_projection(h: Float[Tensor, "... d"], direction: Float[Tensor, "d"], cap: float) -> Float[Tensor, "... d"]:
    """The capper's map on a tensor: h − max(0, h·û − cap)·û."""
    u = (direction / direction.norm()).to(h.dtype)
    return h - torch.clamp(h @ u - cap, min=0.0)[..., None] * u


# ---------------------------------------------------------------- projections (monitoring)


def projections(acts: Float[Tensor, "n d"], vector: Float[Tensor, "d"]) -> Float[Tensor, "n"]:
    """x · v/‖v‖ for each row."""
    return acts.double() @ (vector.double() / vector.double().norm())


@torch.no_grad()
def last_prompt_activations(prompts: Sequence[list[dict]], layer: int, model="smollm2", batch_size: int = 16
                            ) -> Float[Tensor, "n d"]:
    """hidden_states[layer] at the last token of each chat's generation prompt (before any answer), from
    left-padded batches."""
    hf, tok = C41.P40.load_model(model)
    rows = []
    for start in range(0, len(prompts), batch_size):
        tokens, mask = PV.left_padded(tok, prompts[start:start + batch_size])
        out = hf(input_ids=tokens, attention_mask=mask, output_hidden_states=True, logits_to_keep=1)
        rows.append(out.hidden_states[layer][:, -1])
    return torch.cat(rows).float()


def monitoring_auroc(scores: Tensor, labels: Tensor, seed: int = 0) -> dict:
    """AUROC of a projection score against judged labels (day 41's Mann-Whitney AUROC and stratified bootstrap),
    with the class counts; None when one class is empty."""
    labels = torch.as_tensor(labels).long()
    n_pos = int(labels.sum())
    out = {"n_pos": n_pos, "n_neg": int(len(labels) - n_pos), "auroc": None, "ci95": None}
    if 0 < n_pos < len(labels):
        out["auroc"] = C41.auroc(scores, labels)
        out["ci95"] = list(C41.bootstrap_auroc_ci(scores, labels, n_boot=1000, seed=seed))
    return out


# ---------------------------------------------------------------- generation under hooks


def steered_responses(prompts: Sequence[list[dict]], vector: Tensor, coeff: float, layer: int,
                      max_new_tokens: int = PV.MAX_NEW_TOKENS) -> list[str]:
    """Greedy answers with ActivationSteerer(coeff·vector at hidden_states[layer], every position) on the shared
    SmolLM2 (day 90's generate_responses); the hook is removed afterwards, also on error."""
    from checks.models import hf_model

    hf, _ = hf_model("smollm2")
    if coeff == 0:
        return PV.generate_responses(prompts, max_new_tokens)
    with ActivationSteerer(hf, vector, coeff, layer):
        return PV.generate_responses(prompts, max_new_tokens)


def multi_turn(system: str | None, questions: Sequence[Sequence[str]], capper: ActivationCapper | None = None,
               max_new_tokens: int = PV.MAX_NEW_TOKENS) -> list[list[dict]]:
    """Conversations of len(questions[i]) turns each, answered greedily turn by turn (batched across
    conversations), with ``capper`` active during generation when given. Returns the full chats."""
    chats = [([{"role": "system", "content": system}] if system is not None else []) for _ in questions]
    for turn in range(len(questions[0])):
        for c, qs in zip(chats, questions):
            c.append({"role": "user", "content": qs[turn]})
        if capper is None:
            answers = PV.generate_responses(chats, max_new_tokens)
        else:
            with capper:
                answers = PV.generate_responses(chats, max_new_tokens)
        for c, a in zip(chats, answers):
            c.append({"role": "assistant", "content": a})
    return chats


def turn_projections(chats: Sequence[list[dict]], vector: Tensor, layer: int, model="smollm2") -> Float[Tensor, "n turns"]:
    """For each chat and each assistant turn, the projection of that turn's response-averaged activation (with the
    whole conversation before it in context) on the unit vector."""
    out = []
    for c in chats:
        ends = [i for i, m in enumerate(c) if m["role"] == "assistant"]
        acts = PV.response_activations([c[:i + 1] for i in ends], [layer], model)[:, 0]
        out.append(projections(acts, vector))
    return torch.stack(out)


# ---------------------------------------------------------------- the experiment


def _rate(labels: Tensor) -> dict:
    return I76.proportion(int(labels.sum()), len(labels))


def _plot(out_dir: Path, res: dict) -> None:
    import matplotlib.pyplot as plt

    traits = list(res["steering"])
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.4), constrained_layout=True)
    ax = axes[0]
    for t, colour in zip(traits, ("tab:red", "tab:orange", "tab:purple")):
        s = res["steering"][t]
        rates = [c["rate"]["p"] for c in s["by_coeff"]]
        lo = [c["rate"]["ci95"][0] for c in s["by_coeff"]]
        hi = [c["rate"]["ci95"][1] for c in s["by_coeff"]]
        ax.plot(COEFFICIENTS, rates, "o-", color=colour, label=t)
        ax.fill_between(COEFFICIENTS, lo, hi, color=colour, alpha=0.12)
        ax.plot([COEFFICIENTS[-1]], [s["random"]["rate"]["p"]], "x", color=colour, ms=9)
    ax.set_xlabel("steering coefficient α (units of the trait vector)")
    ax.set_ylabel("trait-expression rate (95% Wilson)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Steering at layer {res['layer']}, held-out questions (× = random direction)", fontsize=10)
    ax.legend(fontsize=8)
    ax = axes[1]
    for t, colour in zip(traits, ("tab:red", "tab:orange", "tab:purple")):
        m = res["multi_turn"][t]
        ax.plot(range(1, N_TURNS + 1), m["mean_projection_uncapped"], "o-", color=colour, label=f"{t}")
        ax.plot(range(1, N_TURNS + 1), m["mean_projection_capped"], "s--", color=colour, alpha=0.7)
        ax.axhline(m["cap"], color=colour, lw=0.6, ls=":")
    ax.set_xlabel("turn")
    ax.set_ylabel("projection on the trait vector (response mean)")
    ax.set_title("Multi-turn, + system prompt: uncapped (solid) vs capped (dashed); dotted = cap", fontsize=10)
    ax.legend(fontsize=8)
    ax = axes[2]
    names = [f"{t}\n{k}" for t in traits for k in ("response", "prompt")]
    vals = [res["monitoring"][t][k]["auroc"] or float("nan") for t in traits for k in ("response", "prompt")]
    lows = [(res["monitoring"][t][k]["ci95"] or [np.nan, np.nan])[0] for t in traits for k in ("response", "prompt")]
    highs = [(res["monitoring"][t][k]["ci95"] or [np.nan, np.nan])[1] for t in traits for k in ("response", "prompt")]
    ax.bar(range(len(names)), vals, color=["tab:blue", "tab:cyan"] * len(traits))
    ax.errorbar(range(len(names)), vals, yerr=[np.array(vals) - lows, np.array(highs) - vals], fmt="none", color="k")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_ylabel("AUROC (projection vs judged expression)")
    ax.set_ylim(0, 1.05)
    ax.set_title("Monitoring by projection: response mean vs last prompt token", fontsize=10)
    fig.savefig(out_dir / "figures" / "steering_capping_monitoring.png", dpi=120)
    plt.close(fig)


@single_thread()
def run_experiment(out_dir: Path = HERE, model: str = "smollm2") -> dict:
    """Dose-response of steering for each trait, monitoring by projection, and multi-turn capping, with day 90's
    vectors at day 90's chosen layer and day 90's chosen trait scorer."""
    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    tensors, meta = PV.load_vectors()
    day90 = json.loads((PV.HERE / "results.json").read_text())
    layer, scorer = int(meta["layer"]), day90["scorer"]
    res: dict = {"model": model, "layer": layer, "scorer": scorer, "coefficients": list(COEFFICIENTS),
                 "max_new_tokens": PV.MAX_NEW_TOKENS, "steering": {}, "monitoring": {}, "multi_turn": {}}
    for trait, spec in D.TRAITS.items():
        v = tensors[f"trait/{trait}"][layer]
        held = spec["questions"][D.N_EXTRACT:]
        plain = [PV.chat(None, q) for q in held]

        # dose-response on the held-out questions, default assistant (no trait prompt)
        by_coeff, texts = [], {}
        for a in COEFFICIENTS:
            answers = steered_responses(plain, v, a, layer)
            labels = PV.trait_scores(trait, held, answers, scorer, model) > PV.THRESHOLD
            by_coeff.append({"coeff": a, "rate": _rate(labels), "rule_rate": _rate(PV.rule_scores(trait, answers))})
            texts[str(a)] = answers
        g = torch.Generator().manual_seed(0)
        r = torch.randn(v.shape, generator=g)
        r = r / r.norm() * v.norm()
        rand_answers = steered_responses(plain, r, COEFFICIENTS[-1], layer)
        rand_labels = PV.trait_scores(trait, held, rand_answers, scorer, model) > PV.THRESHOLD
        from scipy.stats import fisher_exact

        top, zero = by_coeff[-1]["rate"], by_coeff[0]["rate"]
        res["steering"][trait] = {
            "n": len(held), "by_coeff": by_coeff, "responses": texts,
            "random": {"rate": _rate(rand_labels), "responses": rand_answers},
            "fisher_p_top_vs_zero": float(fisher_exact([[top["k"], top["n"] - top["k"]],
                                                        [zero["k"], zero["n"] - zero["k"]]])[1]),
            "fisher_p_top_vs_random": float(fisher_exact([[top["k"], top["n"] - top["k"]],
                                                          [int(rand_labels.sum()), len(held) - int(rand_labels.sum())]])[1]),
            "vector_norm": float(v.norm())}

        # monitoring: answers to the held-out questions under the + and − prompts of the first instruction pair
        pos, neg = PV.contrastive_prompts(trait, held, pairs=[0])
        prompts = pos + neg
        answers = PV.generate_responses(prompts)
        labels = (PV.trait_scores(trait, held + held, answers, scorer, model) > PV.THRESHOLD).long()
        acts = PV.response_activations([p + [{"role": "assistant", "content": a}] for p, a in zip(prompts, answers)],
                                       [layer], model)[:, 0]
        resp_proj = projections(acts, v)
        prompt_proj = projections(last_prompt_activations(prompts, layer, model), v)
        instructed = torch.tensor([1] * len(pos) + [0] * len(neg))
        res["monitoring"][trait] = {"response": monitoring_auroc(resp_proj, labels),
                                    "prompt": monitoring_auroc(prompt_proj, labels),
                                    "response_vs_instruction": monitoring_auroc(resp_proj, instructed),
                                    "rate_pos": _rate(labels[:len(pos)]), "rate_neg": _rate(labels[len(pos):]),
                                    "responses": answers, "labels": labels.tolist(),
                                    "projection_response": resp_proj.tolist(), "projection_prompt": prompt_proj.tolist()}

        # multi-turn: the + system prompt for three turns, uncapped and capped at the 75th percentile of the −
        # answers' response projections (where a suppressed answer sits)
        neg_proj = resp_proj[len(pos):]
        cap = float(torch.quantile(neg_proj, 0.75))
        system = PV.construct_system_prompt(trait, spec["instructions"][0][0])
        convs = [held[i::3][:N_TURNS] for i in range(3)]
        convs = [c for c in convs if len(c) == N_TURNS]
        from checks.models import hf_model

        hf, _ = hf_model(model)
        plain_chats = multi_turn(system, convs)
        capped_chats = multi_turn(system, convs, ActivationCapper(hf, v, cap, layer))
        proj_u = turn_projections(plain_chats, v, layer, model)
        proj_c = turn_projections(capped_chats, v, layer, model)
        turn_answers = {k: [m["content"] for c in chats for m in c if m["role"] == "assistant"]
                        for k, chats in (("uncapped", plain_chats), ("capped", capped_chats))}
        turn_qs = [m["content"] for c in plain_chats for m in c if m["role"] == "user"]
        lab = {k: PV.trait_scores(trait, turn_qs, a, scorer, model) > PV.THRESHOLD for k, a in turn_answers.items()}
        res["multi_turn"][trait] = {"n_conversations": len(convs), "cap": cap,
                                    "mean_projection_uncapped": proj_u.mean(0).tolist(),
                                    "mean_projection_capped": proj_c.mean(0).tolist(),
                                    "rate_uncapped": _rate(lab["uncapped"]), "rate_capped": _rate(lab["capped"]),
                                    "answers": turn_answers}
    _plot(out_dir, res)
    res["seconds"] = {"wall": time.perf_counter() - wall0, "cpu": time.process_time() - cpu0}
    (out_dir / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    return res
