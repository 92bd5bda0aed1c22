"""Day 66: intervening on Othello-GPT's world model (ARENA 1.5.3 OthelloGPT, part 2), on day 65's model.

A mine/theirs probe at layer ℓ gives, for each square (r, c), the direction

    v_{r,c} = W[:, r, c, mine] − W[:, r, c, theirs]         (``my_probe``; ARENA's has the same meaning)

along which the residual stream says "this stone is mine" rather than "theirs". ``apply_scale`` reflects the
residual's component along the unit direction v̂ and scales it: x ← x − (scale + 1)(x·v̂) v̂, so x·v̂ becomes
−scale·(x·v̂). If the model *uses* that direction as its board, the edit should make it predict the legal moves
of the board with that stone's colour flipped (the edited board, which the engine scores), not of the board it
was given.

The residual stream is a sum, resid_post^ℓ = embed + pos_embed + Σ_{l≤ℓ} (attn_out^l + mlp_out^l), so its
projection on a probe direction splits exactly into each layer's attention and MLP contributions
(``calculate_attn_and_mlp_probe_score_contributions``). A neuron n of layer l reads x·W_in[l, :, n] and writes
a·W_out[l, n, :]; the cosine of these vectors with every square's probe direction (``calculate_neuron_input_weights``
/ ``calculate_neuron_output_weights``) says what board it reads and writes.

Importing this module trains nothing; ``run_experiment`` trains the probes on day 65's committed model.
"""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import ActivationCache, HookedTransformer

from checks.timing import single_thread

O = importlib.import_module("days.065.othello")

HERE = Path(__file__).parent
BLANK, MINE, THEIRS = 0, 1, 2


def train_mine_probe(model: HookedTransformer, layer: int, n_games: int = O.PROBE_N, seed: int = O.PROBE_SEED,
                     args: O.ProbeTrainingArgs = O.PROBE_ARGS) -> Float[Tensor, "d 8 8 3"]:
    """Day 65's blank/mine/theirs probe at ``layer`` (0 = embeddings, l = after block l), trained on day 65's
    probe games; returns its weights W (d_model, 8, 8, 3)."""
    pd = O.probe_data(model, O.generate_games(n_games, seed))
    t = O.LinearProbeTrainer(O.ProbeTrainingArgs(**{**asdict(args), "layer": layer, "d_model": model.cfg.d_model}))
    t.train(pd.resid[layer], pd.mine)
    return t.linear_probe.detach().clone()


def probe_directions(probe: Float[Tensor, "d 8 8 3"]) -> tuple[Tensor, Tensor]:
    """ARENA's normalised directions: ``my_probe`` = mine − theirs and ``blank_probe`` = blank − (mine + theirs)/2,
    each square's column divided by its norm."""
    my = probe[..., MINE] - probe[..., THEIRS]
    blank = probe[..., BLANK] - 0.5 * (probe[..., MINE] + probe[..., THEIRS])
    return my / my.norm(dim=0, keepdim=True), blank / blank.norm(dim=0, keepdim=True)


def apply_scale(resid: Float[Tensor, "batch seq d_model"], flip_dir: Float[Tensor, "d_model"], scale: float,
                pos: int) -> Float[Tensor, "batch seq d_model"]:
    """ARENA's edit at position ``pos`` (every batch row): with v̂ = flip_dir/‖flip_dir‖ and α = x·v̂,
    x ← x − (scale + 1)·α·v̂, so the component along v̂ becomes −scale·α and the rest of x is untouched. In place,
    returned."""
    v = flip_dir / flip_dir.norm()
    alpha = resid[:, pos] @ v
    resid[:, pos] -= (scale + 1) * alpha[:, None] * v
    return resid


def edited_board(board: np.ndarray, square: int) -> np.ndarray:
    """The board the edit means: the stone on ``square`` changes colour (nothing else moves)."""
    out = board.copy()
    out[square // 8, square % 8] *= -1
    return out


@torch.no_grad()
def intervened_logits(model: HookedTransformer, tokens: Tensor, pos: int, flip_dir: Tensor, layer: int,
                      scale: float) -> Float[Tensor, "batch 60"]:
    """The move logits (pad dropped) at ``pos`` with apply_scale on the residual stream after ``layer`` blocks, where
    day 65's probe of that layer reads (layer 0 = the embeddings, blocks.0.hook_resid_pre; layer ℓ ≥ 1 =
    blocks.{ℓ−1}.hook_resid_post). scale = −1 leaves the residual unchanged (the clean run)."""
    name = "blocks.0.hook_resid_pre" if layer == 0 else f"blocks.{layer - 1}.hook_resid_post"
    hook = partial(lambda resid, hook: apply_scale(resid, flip_dir, scale, pos))
    with single_thread():
        logits = model.run_with_hooks(tokens[:, :pos + 1], fwd_hooks=[(name, hook)])
    return logits[:, pos, 1:]


def topk_errors(logits: Float[Tensor, "60"], legal: np.ndarray) -> int:
    """Li et al.'s score: with N = the number of legal squares, how many of the model's top-N moves are not legal
    (0 = the top-N set is exactly the legal set)."""
    n = int(legal.sum())
    top = O.TOKEN_TO_SQUARE[logits.topk(n).indices.numpy() + 1]
    return int(n - legal[top].sum())


def intervention_cases(games: np.ndarray, replay, n_cases: int, seed: int) -> list[dict]:
    """Random (game, position, square) cases where the game goes on, the square holds a stone, and flipping its colour
    changes the legal moves of the player to move (otherwise the edit has nothing to show)."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n_cases:
        g, pos = int(rng.integers(len(games))), int(rng.integers(5, 50))
        color = replay.next_color[g, pos]
        if color == 0 or games[g, pos] == 0:
            continue
        board = replay.boards[g, pos]
        occupied = np.flatnonzero(board.reshape(64) != 0)
        sq = int(rng.choice(occupied))
        before = replay.legal[g, pos]
        after = O.legal_moves_mask(edited_board(board, sq)[None], np.array([color]))[0].reshape(64)
        if after.any() and (after != before).any():
            out.append({"game": g, "pos": pos, "square": sq, "legal_before": before, "legal_after": after})
    return out


def evaluate_interventions(model: HookedTransformer, games: np.ndarray, cases: list[dict], my_probe: Tensor,
                           layer: int, scale: float) -> dict:
    """Mean top-N errors of the clean and the edited model, each scored against the original board's legal moves and
    against the edited board's."""
    rows = []
    toks = torch.as_tensor(games)
    for c in cases:
        sq = c["square"]
        flip = my_probe[:, sq // 8, sq % 8]
        clean = intervened_logits(model, toks[c["game"]:c["game"] + 1], c["pos"], flip, layer, scale=-1.0)[0]
        edit = intervened_logits(model, toks[c["game"]:c["game"] + 1], c["pos"], flip, layer, scale=scale)[0]
        rows.append([topk_errors(clean, c["legal_before"]), topk_errors(clean, c["legal_after"]),
                     topk_errors(edit, c["legal_before"]), topk_errors(edit, c["legal_after"])])
    r = np.array(rows, dtype=float)
    return {"n": len(cases), "layer": layer, "scale": scale,
            "clean_vs_original": float(r[:, 0].mean()), "clean_vs_edited": float(r[:, 1].mean()),
            "edit_vs_original": float(r[:, 2].mean()), "edit_vs_edited": float(r[:, 3].mean())}


def calculate_attn_and_mlp_probe_score_contributions(cache: ActivationCache, probe: Float[Tensor, "d 8 8"],
                                                     layer: int, game_index: int, move: int
                                                     ) -> tuple[Float[Tensor, "layers 8 8"], Float[Tensor, "layers 8 8"]]:
    """Each layer's attention output and MLP output at (game_index, move), projected on every square's probe
    direction: (attn, mlp), each (layer + 1, 8, 8) for blocks 0..layer."""
    attn = torch.stack([torch.einsum("d,drc->rc", cache["attn_out", l][game_index, move], probe) for l in range(layer + 1)])
    mlp = torch.stack([torch.einsum("d,drc->rc", cache["mlp_out", l][game_index, move], probe) for l in range(layer + 1)])
    return attn, mlp


def calculate_neuron_input_weights(model: HookedTransformer, probe: Float[Tensor, "d 8 8"], layer: int,
                                   neuron: int) -> Float[Tensor, "8 8"]:
    """cos(W_in[layer, :, neuron], probe[:, r, c]) for every square: what board the neuron reads."""
    w = model.W_in[layer, :, neuron].detach()
    return torch.einsum("d,drc->rc", w / w.norm(), probe / probe.norm(dim=0, keepdim=True))


def calculate_neuron_output_weights(model: HookedTransformer, probe: Float[Tensor, "d 8 8"], layer: int,
                                    neuron: int) -> Float[Tensor, "8 8"]:
    """cos(W_out[layer, neuron, :], probe[:, r, c]) for every square: what board the neuron writes."""
    w = model.W_out[layer, neuron, :].detach()
    return torch.einsum("d,drc->rc", w / w.norm(), probe / probe.norm(dim=0, keepdim=True))


def neuron_output_to_moves(model: HookedTransformer, layer: int, neuron: int) -> Float[Tensor, "8 8"]:
    """W_out[layer, neuron] · W_U: how one unit of the neuron's activation moves each square's logit (the direct path,
    final LayerNorm's scale ignored); centre squares 0."""
    direct = model.W_out[layer, neuron].detach() @ model.W_U.detach()[:, 1:]
    out = torch.zeros(64)
    out[O.stoi_indices] = direct - direct.mean()
    return out.reshape(8, 8)


@torch.no_grad()
def legality_neurons(model: HookedTransformer, games: np.ndarray, replay, layer: int) -> dict:
    """For each neuron of MLP ``layer`` and each square: the correlation between the neuron's activation and "this
    square is a legal move", over every position whose game goes on; the best (neuron, square) pair."""
    with single_thread():
        _, cache = model.run_with_cache(torch.as_tensor(games[:, :59]), names_filter=f"blocks.{layer}.mlp.hook_post")
    keep = replay.next_color[:, :59] != 0
    acts = cache[f"blocks.{layer}.mlp.hook_post"][torch.as_tensor(keep)].numpy()       # (N, d_mlp)
    legal = replay.legal[:, :59][keep].astype(float)                                   # (N, 64)
    a = (acts - acts.mean(0)) / (acts.std(0) + 1e-9)
    s = (legal - legal.mean(0)) / (legal.std(0) + 1e-9)
    corr = a.T @ s / len(a)                                                            # (d_mlp, 64)
    n, sq = np.unravel_index(np.argmax(corr), corr.shape)
    return {"corr": corr, "neuron": int(n), "square": int(sq), "best_corr": float(corr[n, sq]), "acts": acts[:, n],
            "legal": legal[:, sq]}


# ---------------------------------------------------------------- the experiment

PROBES = HERE / "models" / "mine_probes.pt"
CASES_SEED, CASES_N = 7, 200
EDIT_LAYERS = (1, 2)
SCALE = 4.0
NEURON_LAYER = None         # the last MLP (set from the model)


def load_probes() -> dict[int, Tensor]:
    """The committed mine/theirs probes (every layer) that run_experiment trained on day 65's model."""
    return torch.load(PROBES, map_location="cpu", weights_only=True)


def plot(results: dict, neuron: dict, w_in_mine, w_in_blank, w_out_mine, moves, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 5, figsize=(20, 4))
    labels = ["clean vs\noriginal", "clean vs\nedited", "edit vs\noriginal", "edit vs\nedited"]
    for i, r in enumerate(results["interventions"]):
        vals = [r["clean_vs_original"], r["clean_vs_edited"], r["edit_vs_original"], r["edit_vs_edited"]]
        axes[0].bar(np.arange(4) + 0.4 * i - 0.2, vals, width=0.4, label=f"edit after layer {r['layer']}")
    axes[0].set_xticks(range(4), labels, fontsize=8)
    axes[0].set(ylabel="mean top-N errors", title="Intervention: which board do the moves follow?")
    axes[0].legend(fontsize=8)
    for ax, m, title in ((axes[1], w_in_blank, "input · blank direction"), (axes[2], w_in_mine, "input · mine direction"),
                         (axes[3], w_out_mine, "output · mine direction"), (axes[4], moves, "output → move logits")):
        lim = float(np.abs(m).max())
        im = ax.imshow(m, cmap="RdBu", vmin=-lim, vmax=lim)
        ax.set_xticks(range(8))
        ax.set_yticks(range(8), list("ABCDEFGH"))
        ax.add_patch(plt.Rectangle((neuron["square"] % 8 - 0.5, neuron["square"] // 8 - 0.5), 1, 1, fill=False, lw=2))
        ax.set_title(f"L{neuron['layer']}N{neuron['neuron']}: {title}", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_experiment(out_dir: Path = HERE) -> dict:
    """On day 65's committed model: mine/theirs probes at every layer (committed), the intervention on CASES_N cases
    at each EDIT_LAYERS, the contributions of each layer to the probe at one position, and the neuron of the last MLP
    that best predicts one square's legality, explained by its weights."""
    from sklearn.metrics import roc_auc_score

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    (out_dir / "models").mkdir(exist_ok=True)
    t0, cpu0 = time.perf_counter(), time.process_time()
    model = O.load_othello_gpt()
    L = model.cfg.n_layers
    probes = {layer: train_mine_probe(model, layer) for layer in range(L + 1)}
    torch.save(probes, out_dir / "models" / PROBES.name)
    games = O.generate_games(O.TEST_N, O.TEST_SEED)
    replay = O.replay_games(games)
    cases = intervention_cases(games, replay, CASES_N, CASES_SEED)
    interventions = [evaluate_interventions(model, games, cases, probe_directions(probes[layer])[0], layer, SCALE)
                     for layer in EDIT_LAYERS]
    nl = legality_neurons(model, games[:300], O.Replay(*(getattr(replay, f)[:300] for f in
                                                         ("boards", "mover", "next_color", "legal"))), L - 1)
    my, blank = probe_directions(probes[L - 1])
    w_in_mine = calculate_neuron_input_weights(model, my, L - 1, nl["neuron"]).numpy()
    w_in_blank = calculate_neuron_input_weights(model, blank, L - 1, nl["neuron"]).numpy()
    w_out_mine = calculate_neuron_output_weights(model, probe_directions(probes[L])[0], L - 1, nl["neuron"]).numpy()
    moves = neuron_output_to_moves(model, L - 1, nl["neuron"]).numpy()
    sq = nl["square"]
    neuron = {"layer": L - 1, "neuron": nl["neuron"], "square": sq, "label": O.to_board_label(sq),
              "corr": nl["best_corr"], "auc": float(roc_auc_score(nl["legal"], nl["acts"])),
              "move_logit_rank": int((moves.reshape(64) > moves.reshape(64)[sq]).sum()),
              "move_logit": float(moves.reshape(64)[sq]),
              "w_in_blank_at_square": float(w_in_blank.reshape(64)[sq]),
              "w_in_blank_max_square": O.to_board_label(int(np.argmax(w_in_blank))),
              "w_in_mine_top": [O.to_board_label(int(i)) for i in np.argsort(-w_in_mine.reshape(64))[:3]],
              "w_in_theirs_top": [O.to_board_label(int(i)) for i in np.argsort(w_in_mine.reshape(64))[:3]]}
    results = {"model": "day 65's committed Othello-GPT", "n_layers": L, "scale": SCALE,
               "cases": {"n": CASES_N, "seed": CASES_SEED},
               "interventions": interventions, "neuron": neuron}
    plot(results, neuron, w_in_mine, w_in_blank, w_out_mine, moves, out_dir / "figures" / "interventions.png")
    results["experiment_seconds"] = time.perf_counter() - t0
    results["experiment_cpu_seconds"] = time.process_time() - cpu0
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
