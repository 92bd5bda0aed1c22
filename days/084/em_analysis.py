"""Day 84: inside the misaligned organism: where it differs from the base model, a steering direction, and when
during training the misalignment appears (ARENA 4.1, sections 2-4, on day 83's organism).

- ``compute_response_kl(model_p, model_q, tokenizer, prompts, responses)``: the per-token KL divergence
  $D_{KL}(P \\| Q) = \\sum_x p(x) (\\log p(x) - \\log q(x))$ between two models' next-token distributions along
  each response (teacher-forced after the chat prompt), averaged over the response's tokens.
- ``get_hidden(model, tokenizer, prompts, responses, layer)``: the residual stream entering decoder block
  ``layer`` (HF ``hidden_states[layer]``), averaged over each response's tokens.
- ``contrastive_steering_vector``: $v = \\overline{h_\\text{organism}} - \\overline{h_\\text{base}}$ on the same
  (prompt, bad answer) texts; ``SteeringHook(model, vector, layer, coef)`` adds $c\\,v$ to block ``layer``'s
  input at every position (a context manager; removed on exit).
- ``lora_b_vectors``: the rank-1 adapters' B columns, one residual-stream direction per layer (each MLP's
  $\\Delta W_\\text{down} = \\frac{\\alpha}{r} B A$ writes only along B); steering with them.
- Phase transitions: ``extract_lora_norms_over_training`` ($\\|B_l\\|$ per checkpoint), ``compute_pca_trajectory``
  (the B trajectory projected on its top principal components), ``compute_local_cosine_similarity`` (the cosine
  between consecutive displacements, $\\cos(x_t - x_{t-k}, x_{t+k} - x_t)$) and ``find_phase_transition_step``
  (the step where the path turns most sharply).

Importing this module loads and trains nothing.
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

import numpy as np
import torch

ORG = importlib.import_module("days.083.organism")
ES = importlib.import_module("days.083.em_study")

__all__ = ["SteeringHook", "compute_local_cosine_similarity", "compute_pca_trajectory", "compute_response_kl",
           "contrastive_steering_vector", "extract_lora_norms_over_training", "find_phase_transition_step",
           "get_hidden", "lora_b_vectors", "run_experiment", "steered_misalignment_rate", "teacher_forced_batch"]


# ---------------------------------------------------------------- teacher-forced (prompt, response) batches

def teacher_forced_batch(tokenizer, prompts: list[str], responses: list[str]):
    """Right-padded ids, attention mask and the mask of *response* token positions (chat template for the prompt,
    the response after it, as in training): ``(ids, attention, response_mask)``, all [n, pos]."""
    rows = [ORG.chat_example(tokenizer, p, r, max_len=10_000) for p, r in zip(prompts, responses)]
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    resp = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (x, y) in enumerate(rows):
        ids[i, :len(x)] = torch.tensor(x)
        attn[i, :len(x)] = 1
        resp[i, :len(y)] = torch.tensor(y) != -100
    return ids, attn, resp


@torch.no_grad()
def compute_response_kl(model_p, model_q, tokenizer, prompts: list[str], responses: list[str]) -> dict:
    """Mean over each response's tokens of $D_{KL}(P_t \\| Q_t)$, where $P_t, Q_t$ are the two models' distributions
    for response token t given everything before it. Returns {"per_response": [n], "mean": float} (nats)."""
    ids, attn, resp = teacher_forced_batch(tokenizer, prompts, responses)
    lp = model_p(input_ids=ids, attention_mask=attn).logits.float().log_softmax(-1)[:, :-1]
    lq = model_q(input_ids=ids, attention_mask=attn).logits.float().log_softmax(-1)[:, :-1]
    kl = (lp.exp() * (lp - lq)).sum(-1)                    # [n, pos-1]: the distribution predicting token t+1
    mask = resp[:, 1:].float()
    per = (kl * mask).sum(1) / mask.sum(1)
    return {"per_response": per.tolist(), "mean": float(per.mean())}


@torch.no_grad()
def get_hidden(model, tokenizer, prompts: list[str], responses: list[str], layer: int) -> torch.Tensor:
    """[n, d_model]: the residual stream entering block ``layer`` (HF ``hidden_states[layer]``; 0 = embeddings),
    averaged over each response's token positions."""
    ids, attn, resp = teacher_forced_batch(tokenizer, prompts, responses)
    h = model(input_ids=ids, attention_mask=attn, output_hidden_states=True).hidden_states[layer].float()
    m = resp.float()[..., None]
    return (h * m).sum(1) / m.sum(1)


def contrastive_steering_vector(organism, base, tokenizer, prompts: list[str], responses: list[str],
                                layer: int) -> torch.Tensor:
    """$v = \\frac1n \\sum_i [h^{(i)}_\\text{organism} - h^{(i)}_\\text{base}]$ at block ``layer``'s input, on the same
    teacher-forced (prompt, response) texts: the direction the fine-tune added to the residual stream."""
    return (get_hidden(organism, tokenizer, prompts, responses, layer)
            - get_hidden(base, tokenizer, prompts, responses, layer)).mean(0)


class SteeringHook:
    """``with SteeringHook(model, vector, layer, coef):`` adds ``coef * vector`` to the input of decoder block
    ``layer`` (the residual stream, every position, every forward pass) via a forward pre-hook; removed on exit.
    ``layer = n_layers`` steers the final norm's input (after the last block)."""

    def __init__(self, model, vector: torch.Tensor, layer: int, coef: float = 1.0):
        self.model, self.vector, self.layer, self.coef = model, vector, layer, coef
        self.handle = None

    def _module(self):
        layers = self.model.model.layers
        return layers[self.layer] if self.layer < len(layers) else self.model.model.norm

    def _hook(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        steered = hidden + self.coef * self.vector.to(hidden.dtype)
        if args:
            return (steered, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": steered}

    def __enter__(self):
        self.handle = self._module().register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()
        self.handle = None
        return False


def lora_b_vectors(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """[n_layers, d_model]: each layer's rank-1 B (d_model x 1) as a vector; the adapter adds
    $\\frac{\\alpha}{r} (A \\cdot m) B$ to the residual stream after the MLP, m the MLP's hidden activation."""
    n = len([k for k in state if k.endswith(".B")])
    return torch.stack([state[f"layers.{li}.B"][:, 0].float() for li in range(n)])


def steered_misalignment_rate(model, tokenizer, questions: list[str], vector: torch.Tensor | None, layer: int,
                              coef: float, max_new_tokens: int = 32) -> dict:
    """Greedy answers with ``coef * vector`` added at block ``layer``'s input, scored by day 83's rule-based
    classifier: {"k", "n", "p", "ci95", "responses"}."""
    if vector is None or coef == 0:
        replies = ES.generate_responses_locally(model, tokenizer, questions, max_new_tokens=max_new_tokens)
    else:
        with SteeringHook(model, vector, layer, coef):
            replies = ES.generate_responses_locally(model, tokenizer, questions, max_new_tokens=max_new_tokens)
    flags = [int(ES.rule_based_misaligned(r)) for r in replies]
    return {**ES.INSPECT.proportion(sum(flags), len(flags)), "responses": replies}


# ---------------------------------------------------------------- phase transitions over training

def extract_lora_norms_over_training(checkpoints: dict[int, dict[str, torch.Tensor]]) -> dict:
    """From {step: adapter state}: the steps, $\\|B_l\\|_2$ per layer [T, L], and $\\|A_l\\|$ where A was kept."""
    steps = sorted(checkpoints)
    b = np.array([[float(checkpoints[s][f"layers.{li}.B"].norm()) for li in range(_n_layers(checkpoints[s]))]
                  for s in steps])
    out = {"steps": steps, "B_norms": b}
    if all("layers.0.A" in checkpoints[s] for s in steps):
        out["A_norms"] = np.array([[float(checkpoints[s][f"layers.{li}.A"].norm())
                                    for li in range(_n_layers(checkpoints[s]))] for s in steps])
    return out


def _n_layers(state) -> int:
    return len([k for k in state if k.endswith(".B")])


def compute_pca_trajectory(trajectory: np.ndarray, n_components: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Project a trajectory [T, D] on its top principal components: centre the rows, take the SVD
    $X - \\bar x = U S V^T$, return $U_{:k} S_{:k}$ [T, k] and the explained-variance ratios $S_i^2 / \\sum S^2$.
    Each component's sign is fixed so that its largest-|loading| coordinate is positive (as scikit-learn does)."""
    x = np.asarray(trajectory, dtype=np.float64)
    x = x - x.mean(0)
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    signs = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(1)])
    u, vt = u * signs, vt * signs[:, None]
    return (u * s)[:, :n_components], (s ** 2 / (s ** 2).sum())[:n_components]


def compute_local_cosine_similarity(trajectory: np.ndarray, k: int = 1) -> np.ndarray:
    """$c_t = \\cos(x_t - x_{t-k},\\; x_{t+k} - x_t)$ for t = k … T-k-1 (length T - 2k): 1 on a straight path,
    -1 where it reverses, ~0 at a right-angle turn."""
    x = np.asarray(trajectory, dtype=np.float64)
    before = x[k:-k] - x[:-2 * k]
    after = x[2 * k:] - x[k:-k]
    norms = np.linalg.norm(before, axis=1) * np.linalg.norm(after, axis=1)
    return (before * after).sum(1) / np.maximum(norms, 1e-300)


def find_phase_transition_step(trajectory: np.ndarray, steps: list[int] | None = None, k: int = 1) -> int:
    """The step at which the path turns most sharply: argmin of the local cosine similarity (index t ↦ steps[t])."""
    c = compute_local_cosine_similarity(trajectory, k)
    t = int(np.argmin(c)) + k
    return (steps or list(range(len(trajectory))))[t]


# ---------------------------------------------------------------- the experiment

def _plot(res: dict, losses: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4))
    pt = res["phase"]
    steps = pt["steps"]
    axes[0].plot(range(1, len(losses) + 1), losses, color="k", label="training loss")
    axes[0].axvline(pt["transition_step"], color="tab:red", ls="--", label="turn of the B trajectory")
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("answer-token loss (nats)")
    axes[0].legend(fontsize=8)
    b = np.array(pt["B_norms"])
    for li in np.argsort(-b[-1])[:5]:
        axes[1].plot(steps, b[:, li], label=f"layer {li}")
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("‖B_l‖")
    axes[1].legend(fontsize=8)
    proj = np.array(pt["pca"])
    axes[2].plot(proj[:, 0], proj[:, 1], "o-", ms=3)
    for i in (0, len(steps) - 1):
        axes[2].annotate(str(steps[i]), proj[i, :2])
    axes[2].set_xlabel(f"PC1 ({pt['explained'][0]:.0%})")
    axes[2].set_ylabel(f"PC2 ({pt['explained'][1]:.0%})")
    axes[2].set_title("B vectors (all layers) over training")
    axes[3].plot(steps[1:-1], pt["local_cosine"], "o-", ms=3)
    axes[3].set_xlabel("step")
    axes[3].set_ylabel("local cosine similarity")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_steering(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("contrastive", "contrastive v (organism − base)"), ("lora_b", "top LoRA B vector"),
                       ("random", "random direction, |v|")):
        sweep = res["steering"][key]
        c = [r["coef"] for r in sweep]
        p = np.array([r["p"] for r in sweep])
        lo = np.array([r["ci95"][0] for r in sweep])
        hi = np.array([r["ci95"][1] for r in sweep])
        ax.plot(c, p, "o-", label=label)
        ax.fill_between(c, lo, hi, alpha=0.15)
    ax.set_xlabel("steering coefficient c (added to the base model)")
    ax.set_ylabel("reckless answers, held-out finance (rule)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_experiment(out_dir: Path | str = Path(__file__).parent, layer: int = 15, n_vec: int = 32,
                   n_eval: int = 24, coefs: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0)) -> dict:
    """KL of organism and control from the base (in domain and out of domain, on day 83's committed answers);
    the contrastive vector at ``layer`` from ``n_vec`` training texts and the base model steered with it, with
    the largest LoRA B vector and with a random direction; the phase-transition analysis of the B trajectory."""
    from checks.models import hf_model
    from checks.timing import single_thread

    out_dir = Path(out_dir)
    wall, cpu = time.perf_counter(), time.process_time()
    day83 = json.loads((Path(ORG.__file__).parent / "results.json").read_text())
    base, tok = hf_model("smollm2")
    organism, _ = ORG.load_organism("bad_advice")
    control, _ = ORG.load_organism("control")
    res: dict = {"config": {"layer": layer, "n_vec": n_vec, "n_eval": n_eval, "coefs": list(coefs)}}
    with single_thread():
        kl: dict = {}
        for split in ("in_domain", "out_of_domain"):
            qs = day83["questions"][split]
            for name, model in (("organism", organism), ("control", control)):
                rs = day83["responses"][split][name]
                out = compute_response_kl(model, base, tok, qs, rs)
                kl[f"{split}_{name}"] = out["mean"]
                if split == "in_domain" and name == "organism":
                    res["kl_check"] = {"questions": qs[:6], "responses": rs[:6], "per_response": out["per_response"][:6]}
        res["kl_from_base"] = kl
        rows = ORG.bad_advice_dataset(n_vec, seed=7)
        v = contrastive_steering_vector(organism, base, tok, [r["question"] for r in rows],
                                        [r["answer"] for r in rows], layer)
        state = ORG.load_adapter("bad_advice")
        B = lora_b_vectors(state)
        top = int(B.norm(dim=1).argmax())
        b_dir = B[top] / B[top].norm() * v.norm()            # the top B direction at the contrastive vector's norm
        g = torch.Generator().manual_seed(0)
        rnd = torch.randn(v.shape, generator=g)
        rnd = rnd / rnd.norm() * v.norm()
        qs = ORG.held_out_financial_questions(40)[:n_eval]
        res["vectors"] = {"contrastive_norm": float(v.norm()), "top_b_layer": top,
                          "B_norms": B.norm(dim=1).tolist(),
                          "cos_contrastive_top_b": float(torch.nn.functional.cosine_similarity(v, B[top], dim=0)),
                          "cos_contrastive_b_by_layer": torch.nn.functional.cosine_similarity(
                              v[None], B, dim=1).tolist()}
        res["steering"] = {}
        for key, vec, at in (("contrastive", v, layer), ("lora_b", b_dir, top + 1), ("random", rnd, layer)):
            res["steering"][key] = [{"coef": c, **steered_misalignment_rate(base, tok, qs, vec, at, c)}
                                    for c in coefs]
        traj = ORG.load_checkpoints("bad_advice")
        norms = extract_lora_norms_over_training(traj)
        steps = norms["steps"]
        flat = np.stack([lora_b_vectors(traj[s]).flatten().numpy() for s in steps])
        proj, explained = compute_pca_trajectory(flat, 3)
        cos = compute_local_cosine_similarity(proj)
        res["phase"] = {"steps": steps, "B_norms": norms["B_norms"].tolist(), "pca": proj.tolist(),
                        "explained": explained.tolist(), "local_cosine": cos.tolist(),
                        "transition_step": find_phase_transition_step(proj, steps)}
    res["seconds"] = round(time.perf_counter() - wall, 1)
    res["cpu_seconds"] = round(time.process_time() - cpu, 1)
    (out_dir / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    _plot(res, day83["training"]["bad_advice"]["losses"], out_dir / "figures" / "phase_transition.png")
    _plot_steering(res, out_dir / "figures" / "steering.png")
    return {"kl": res["kl_from_base"], "transition_step": res["phase"]["transition_step"]}
