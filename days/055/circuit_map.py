"""Day 55: the IOI circuit of SmolLM2, class by class, each head identified by a measured score (ARENA 1.4.1, §4).

Wang et al. (2022) sorted GPT-2 small's IOI circuit into head classes by what each head does:

- name movers attend from the final position to the indirect object (IO) and copy it: their OV circuit maps a
  name's token to a high logit for that name (the *copying score*), and their direct path matters;
- negative name movers do the same with the sign flipped (the *negative copying score*);
- S-inhibition heads, in the middle, move "the subject is repeated" from S2 to the final position, where it
  steers the name movers' queries away from S (path patching into the name movers' queries finds them);
- induction and duplicate-token heads at S2 detect that S2 repeats S1 (their attention on repeated random tokens:
  the *induction* and *duplicate* scores, ARENA's ``get_attn_scores``), with previous-token heads feeding the
  induction heads;
- backup name movers take over when the name movers are knocked out (their direct logit attribution rises).

The scores, as ARENA defines them:

    copying(l, h)  = mean over names n of  [n ∈ top-k of unembed(ln_final(x_n W_OV^{l,h}))],
    negative(l, h) = the same with −W_OV,           x_n = embed(n) + MLP_0(ln_2(embed(n)))

(the name's embedding after layer 0's MLP, layer 0's attention skipped), and on a sequence of random tokens
repeated once, the mean attention from each token of the second copy to the same token in the first (duplicate),
to the token after it (induction), and from each token of the first copy to the one before (previous token).

SmolLM2 is not GPT-2 (RMSNorm, 9 query heads sharing 3 key/value heads, rotary positions, 30 layers), and the
classes are found by the same measurements with stated thresholds (``THRESHOLDS``), not assumed: a class that
comes out empty, or a head GPT-2 does not have, is a result. Path-patching effects are day 54's, read from its
results.json (16 prompts; rerunning them costs ~15 minutes): to the final stream (``path_final``) and into the name
movers' queries (``path_heads_nm_q``), and the screened paths into the name movers' and the subject suppressor's
keys and values.

Every function takes a TransformerLens model: SmolLM2 here, GPT-2 small for a user with the Hub.
"""

from __future__ import annotations

import importlib
import json
import time
from functools import partial
from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from checks.timing import single_thread

ioi = importlib.import_module("days.053.ioi_setup")          # IOIDataset, run_at_end, dla, logit differences
pp = importlib.import_module("days.054.path_patching")       # path patching (its results, and get_cache)
act_name = ioi.act_name
HERE = Path(__file__).parent
DAY54_RESULTS = Path(pp.__file__).parent / "results.json"   # found by module, so a practice copy finds it too

Head = tuple[int, int]


def label(head: Head) -> str:
    return f"L{head[0]}H{head[1]}"


def parse_label(text: str) -> Head:
    layer, head = text[1:].split("H")
    return int(layer), int(head)


# ---------------------------------------------------------------- copying scores (the OV circuit)


def name_tokens(model, names: list[str]) -> Int[Tensor, "n"]:
    """Each name's single token with its leading space (' Mary'), as the names appear in the prompts."""
    ids = [model.tokenizer(" " + n, add_special_tokens=False)["input_ids"] for n in names]
    if any(len(i) != 1 for i in ids):
        raise ValueError("copying scores need single-token names (ioi.single_token_names)")
    return torch.tensor([i[0] for i in ids])


@torch.no_grad()
def names_after_mlp0(model, tokens: Int[Tensor, "n"]) -> Float[Tensor, "n d_model"]:
    """x_n = embed(n) + MLP_0(ln_2(embed(n))): ARENA's input to a head's OV circuit (no positional embedding,
    layer 0's attention skipped)."""
    emb = model.embed(tokens[:, None])
    return (emb + model.blocks[0].mlp(model.blocks[0].ln2(emb)))[:, 0]


def _odd_final_norm(model) -> bool:
    """TransformerLens's folded final norms (LayerNormPre, RMSNormPre) are odd: ln(−x) = −ln(x), exactly in float."""
    return type(model.ln_final).__name__ in ("LayerNormPre", "RMSNormPre")


@torch.no_grad()
def ov_name_logits(model, heads: list[Head], resid: Float[Tensor, "n d_model"]
                   ) -> tuple[Float[Tensor, "k n d_vocab"], Float[Tensor, "k n d_vocab"]]:
    """unembed(ln_final(x W_OV)) and unembed(ln_final(−x W_OV)) for each head (W_OV = W_V W_O, no biases, as
    ARENA). With an odd final norm the second is −(first − b_U) + b_U: one unembedding per head, not two."""
    pos, neg = [], []
    for l, h in heads:
        attn = model.blocks[l].attn
        out = resid @ (attn.W_V[h] @ attn.W_O[h])                      # W_V repeats SmolLM2's shared kv heads
        if _odd_final_norm(model):
            z = model.ln_final(out[:, None])[:, 0] @ model.W_U
            pos.append(z + model.b_U)
            neg.append(-z + model.b_U)
        else:
            pos.append(model.unembed(model.ln_final(out[:, None]))[:, 0])
            neg.append(model.unembed(model.ln_final(-out[:, None]))[:, 0])
    return torch.stack(pos), torch.stack(neg)


def in_top_k(logits: Float[Tensor, "... n d_vocab"], tokens: Int[Tensor, "n"], k: int) -> Tensor:
    """Whether each name's own token is among the k largest logits of its row."""
    return (logits.topk(k, dim=-1).indices == tokens[:, None]).any(-1)


@torch.no_grad()
def get_copying_scores(model, k: int = 5, names: list[str] | None = None, heads: list[Head] | None = None
                       ) -> Float[Tensor, "2 layer head"]:
    """ARENA's copying scores: [0] the fraction of names whose token is in the top k of their OV output's logits,
    [1] the same for −W_OV (negative copying), for every head (or those in ``heads``; the others NaN). Row l is
    layer l (ARENA's row l is layer l + 1: it skips layer 0); names carry their leading space."""
    names = names if names is not None else ioi.single_token_names(model.tokenizer)
    tokens = name_tokens(model, names)
    resid = names_after_mlp0(model, tokens)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    heads = [(l, h) for l in range(L) for h in range(H)] if heads is None else heads
    results = torch.full((2, L, H), torch.nan)
    for start in range(0, len(heads), 9):                              # a layer's worth of logits at a time
        chunk = heads[start:start + 9]
        pos, neg = ov_name_logits(model, chunk, resid)
        for (l, h), p, n in zip(chunk, pos, neg):
            results[0, l, h] = in_top_k(p, tokens, k).float().mean()
            results[1, l, h] = in_top_k(n, tokens, k).float().mean()
    return results


# ---------------------------------------------------------------- attention scores on repeated random tokens


def generate_repeated_tokens(model, seq_len: int, batch: int = 1, seed: int = 0) -> Int[Tensor, "batch 2*seq_len"]:
    """Random tokens (uniform over the vocabulary, ``torch.Generator`` seeded), the sequence repeated once, no BOS."""
    g = torch.Generator().manual_seed(seed)
    half = torch.randint(0, model.cfg.d_vocab, (batch, seq_len), generator=g)
    return torch.cat([half, half], dim=-1)


HEAD_TYPES = ("duplicate", "prev", "induction")


def score_positions(seq_len: int, head_type: str) -> tuple[range, range]:
    """(destination, source) positions whose attention a score averages, on a sequence repeated once."""
    if head_type == "duplicate":
        return range(seq_len, 2 * seq_len), range(seq_len)
    if head_type == "prev":
        return range(1, seq_len + 1), range(seq_len)
    if head_type == "induction":
        return range(seq_len, 2 * seq_len), range(1, seq_len + 1)
    raise ValueError(f"Unknown head type {head_type}")


@torch.no_grad()
def get_all_attn_scores(model, seq_len: int, batch: int, seed: int = 0) -> dict[str, Float[Tensor, "layer head"]]:
    """The three scores of ``get_attn_scores`` from one run: mean attention from each destination to its source."""
    tokens = generate_repeated_tokens(model, seq_len, batch, seed)
    _, cache = model.run_with_cache(tokens, return_type=None, names_filter=lambda name: name.endswith("pattern"))
    out = {}
    for head_type in HEAD_TYPES:
        dest, src = score_positions(seq_len, head_type)
        out[head_type] = torch.stack([cache[act_name("pattern", l)][:, :, list(dest), list(src)].mean((0, 2))
                                      for l in range(model.cfg.n_layers)])
    return out


def get_attn_scores(model, seq_len: int, batch: int, head_type: Literal["duplicate", "prev", "induction"],
                    seed: int = 0) -> Float[Tensor, "layer head"]:
    """ARENA's get_attn_scores: each head's mean attention on a repeated random sequence, to the duplicate of the
    current token (duplicate), the previous token (prev), or the token after the duplicate (induction)."""
    return get_all_attn_scores(model, seq_len, batch, seed)[head_type]


# ---------------------------------------------------------------- attention between the IOI positions


def word_positions(ds) -> dict[str, Int[Tensor, "batch"]]:
    """Day 53's word_idx (IO, S1, S2, end) plus ARENA's 'S1+1', the token after the first subject."""
    return {**ds.word_idx, "S1+1": ds.word_idx["S1"] + 1}


IOI_ATTENTION = (("end", "IO"), ("end", "S1"), ("end", "S2"), ("S2", "S1"), ("S2", "S1+1"), ("S1+1", "S1"))


@torch.no_grad()
def attention_between(model, ds, pairs=IOI_ATTENTION, batch_size: int = 32) -> dict[str, Float[Tensor, "layer head batch"]]:
    """For each (destination, source) pair of word positions, each head's attention from the destination to the
    source in every prompt (keys 'end_to_IO', …): only those rows of the patterns are kept."""
    where = word_positions(ds)
    store: dict[str, list[list[Tensor]]] = {f"{d}_to_{s}": [[] for _ in range(model.cfg.n_layers)] for d, s in pairs}
    for start in range(0, len(ds), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(ds)))

        def keep(pattern: Tensor, hook, rows=rows) -> None:
            r = torch.arange(len(rows))
            for d, s in pairs:
                store[f"{d}_to_{s}"][hook.layer()].append(pattern[r, :, where[d][rows], where[s][rows]].T)

        model.run_with_hooks(ds.toks[rows], return_type=None, fwd_hooks=[(lambda n: n.endswith("hook_pattern"), keep)])
    return {key: torch.stack([torch.cat(chunks, dim=-1) for chunks in layers]) for key, layers in store.items()}


# ---------------------------------------------------------------- backup name movers


def patch_heads_from(source_z: dict[str, Tensor], heads: list[Head]) -> list:
    """Forward hooks that set the given heads' outputs z (all positions) to their values in ``source_z``."""
    hooks = []
    for layer in sorted({l for l, _ in heads}):
        hs = [h for l, h in heads if l == layer]

        def hook(z: Tensor, hook, hs=hs) -> Tensor:
            z[:, :, hs] = source_z[hook.name][:, :, hs]
            return z
        hooks.append((act_name("z", layer), hook))
    return hooks


@torch.no_grad()
def head_dla(model, ds, fwd_hooks=()) -> tuple[Float[Tensor, "layer head batch"], Float[Tensor, "batch"]]:
    """Each head's direct logit attribution per prompt (day 53's, through the frozen final scale) and the logit
    differences, with ``fwd_hooks`` in place."""
    end = ds.word_idx["end"]
    final, cache = ioi.run_at_end(model, ds.toks, end, ioi.dla_names(model), batch_size=len(ds), fwd_hooks=list(fwd_hooks))
    ld = ioi.logits_to_ave_logit_diff(final[:, None], ds.answer_tokens, per_prompt=True)
    return ioi.dla(model, cache, ds.answer_tokens)["heads"], ld


@torch.no_grad()
def backup_scores(model, ds, abc, knocked_out: list[Head]) -> dict[str, Tensor]:
    """Knock out ``knocked_out`` (their z at every position replaced by their values on the ABC prompts: they see
    the same sentence with other names) and measure each head's direct logit attribution before and after; a
    backup head is one whose attribution rises. Returns per-prompt DLA before/after [layer, head, batch] and the
    logit differences."""
    layers = {l for l, _ in knocked_out}
    _, abc_cache = model.run_with_cache(abc.toks, return_type=None,
                                        names_filter=lambda n: n in {act_name("z", l) for l in layers})
    before, ld = head_dla(model, ds)
    after, ld_after = head_dla(model, ds, patch_heads_from(dict(abc_cache.items()), knocked_out))
    return {"dla": before, "dla_knockout": after, "logit_diff": ld, "logit_diff_knockout": ld_after}


# ---------------------------------------------------------------- classes from scores


THRESHOLDS = dict(
    attention=0.2,      # a head "attends to" a position if it gives it this much attention on average
    copying=0.5,        # half the names in the top 5 of its OV output (ARENA: GPT-2's name movers ~0.9–1.0)
    path=0.05,          # |path patching to the final stream| ≥ 5% of the clean-vs-ABC logit difference
    s_inhibition=0.02,  # path patching into the name movers' queries ≤ −2%
    key_value=0.01,     # |path patching into a circuit head's key or value| ≥ 1% (day 54's screened senders)
    pattern=0.3,        # induction / duplicate / previous-token score on repeated random tokens
    backup=0.1,         # direct attribution rises by ≥ 0.1 logits when the name movers are knocked out
)

CLASSES = ("name mover", "negative name mover", "subject suppressor", "direct, no name", "s2 inhibition",
           "induction", "duplicate token", "previous token", "backup name mover")

# ARENA's SEQ_POS_TO_KEEP: where a class's output matters (its z is kept there by the ablation of day 56)
SEQ_POS_TO_KEEP = {"name mover": "end", "negative name mover": "end", "subject suppressor": "end",
                   "direct, no name": "end", "s2 inhibition": "end", "backup name mover": "end",
                   "induction": "S2", "duplicate token": "S2", "previous token": "S1+1"}


def classify_heads(s: dict[str, Tensor], senders_kv: dict[str, float], t: dict = THRESHOLDS,
                   into_induction: dict[str, float] | None = None) -> dict[str, list[str]]:
    """The head classes from the measured scores (each a [layer, head] grid): a head joins a class when every one
    of the class's conditions holds; a head is listed in the first class it meets (CLASSES' order).

    - name mover: attends end→IO ≥ attention, more than to S1 + S2; copying ≥ copying; path_final ≤ −path;
    - negative name mover: attends end→IO ≥ attention; negative copying ≥ copying; path_final ≥ +path;
    - subject suppressor (SmolLM2; GPT-2's closest is copy suppression): attends end→S2 ≥ attention, more than
      to IO; negative copying ≥ copying; path_final ≤ −path;
    - direct, no name: |path_final| ≥ path, attends none of IO, S1, S2 as much as ``attention``;
    - s2 inhibition: path into the name movers' queries ≤ −s_inhibition;
    - induction / duplicate token: the score on repeated tokens ≥ pattern, the same attention in the IOI prompts
      (S2→S1+1 / S2→S1) ≥ attention, and a path into a circuit head's key or value |·| ≥ key_value
      (``senders_kv``: label → largest |effect| among day 54's screened senders);
    - previous token: prev score ≥ pattern and S1+1→S1 ≥ attention, and (given ``into_induction``: label → path
      patching into the induction heads' keys) a path into an induction head's key |·| ≥ key_value; without it,
      every candidate is listed (the first pass of ``run_experiment``, which then measures those paths);
    - backup name mover: direct attribution rises ≥ backup under the knockout, and attends end→IO ≥ attention.
    """
    L, H = s["path_final"].shape
    classes: dict[str, list[str]] = {c: [] for c in CLASSES}
    kv = torch.zeros(L, H)
    for name, value in senders_kv.items():
        kv[parse_label(name)] = abs(value)
    prev = torch.ones(L, H, dtype=torch.bool)
    if into_induction is not None:
        prev = torch.zeros(L, H, dtype=torch.bool)
        for name, value in into_induction.items():
            prev[parse_label(name)] = abs(value) >= t["key_value"]
    nm_q = s["path_nm_q"]
    nm_q = torch.cat([nm_q, torch.full((L - len(nm_q), H), torch.nan)]) if len(nm_q) < L else nm_q
    io, s1, s2 = s["end_to_IO"], s["end_to_S1"], s["end_to_S2"]
    rules = {
        "name mover": (io >= t["attention"]) & (io > s1 + s2) & (s["copying"] >= t["copying"])
        & (s["path_final"] <= -t["path"]),
        "negative name mover": (io >= t["attention"]) & (s["negative_copying"] >= t["copying"])
        & (s["path_final"] >= t["path"]),
        "subject suppressor": (s2 >= t["attention"]) & (s2 > io) & (s["negative_copying"] >= t["copying"])
        & (s["path_final"] <= -t["path"]),
        "direct, no name": (s["path_final"].abs() >= t["path"]) & (torch.stack([io, s1, s2]).amax(0) < t["attention"]),
        "s2 inhibition": nm_q.nan_to_num(0) <= -t["s_inhibition"],
        "induction": (s["induction"] >= t["pattern"]) & (s["S2_to_S1+1"] >= t["attention"]) & (kv >= t["key_value"]),
        "duplicate token": (s["duplicate"] >= t["pattern"]) & (s["S2_to_S1"] >= t["attention"]) & (kv >= t["key_value"]),
        "previous token": (s["prev"] >= t["pattern"]) & (s["S1+1_to_S1"] >= t["attention"]) & prev,
        "backup name mover": (s["backup"] >= t["backup"]) & (io >= t["attention"]),
    }
    taken: set[str] = set()
    for name in CLASSES:
        for l, h in rules[name].nonzero().tolist():
            if label((l, h)) not in taken:
                classes[name].append(label((l, h)))
                taken.add(label((l, h)))
    return classes


def circuit_of(classes: dict[str, list[str]]) -> dict[str, list[Head]]:
    """ARENA's CIRCUIT layout (class → [(layer, head)]) of the non-empty classes."""
    return {c: [parse_label(x) for x in heads] for c, heads in classes.items() if heads}


def load_circuit(path: Path = HERE / "results.json") -> tuple[dict[str, list[Head]], dict[str, str]]:
    """The circuit this day found (committed results.json) and the positions where each class is kept."""
    classes = json.loads(Path(path).read_text())["classes"]
    circuit = circuit_of(classes)
    return circuit, {c: SEQ_POS_TO_KEEP[c] for c in circuit}


def day54_paths(path: Path = DAY54_RESULTS) -> dict:
    """Day 54's path patching (16 prompts, ABC into clean, ioi_metric_2): to the final stream [layer, head], into
    the name movers' queries [layer < 23, head], and the screened senders into the circuit heads' keys/values."""
    r = json.loads(Path(path).read_text())
    senders: dict[str, float] = {}
    edges = []
    for key, rows in r["screened_paths"].items():
        receiver, x = key.rsplit("_", 1)
        for c in rows:
            senders[c["label"]] = max(senders.get(c["label"], 0.0), abs(c["value"])) if x in "kv" else senders.get(c["label"], 0.0)
            edges.append({"sender": c["label"], "receiver": receiver, "input": x, "value": c["value"]})
    for c in r["path_heads_nm_q_top"]:
        edges.append({"sender": c["label"], "receiver": "name_movers", "input": "q", "value": c["value"]})
    return {"path_final": torch.tensor(r["path_final"]), "path_nm_q": torch.tensor(r["path_heads_nm_q"]),
            "senders_kv": {k: v for k, v in senders.items() if v > 0}, "edges": edges,
            "receivers": r["receivers"], "n_prompts": r["n_heads_prompts"]}


# ---------------------------------------------------------------- the experiment

EXPERIMENT = dict(model="smollm2", N=64, k=5, seq_len=25, batch=16, seed=0)


def score_grids(model, ds, abc, cfg: dict = EXPERIMENT, paths: dict | None = None) -> tuple[dict, dict]:
    """Every score of every head ([layer, head] grids) and the per-prompt tensors behind them."""
    paths = paths if paths is not None else day54_paths()
    copying = get_copying_scores(model, cfg["k"])
    attn = get_all_attn_scores(model, cfg["seq_len"], cfg["batch"], cfg["seed"])
    between = attention_between(model, ds)
    name_movers = [parse_label(x) for x in paths["receivers"]["name_movers"]]
    backup = backup_scores(model, ds, abc, name_movers)
    grids = {"copying": copying[0], "negative_copying": copying[1], **attn,
             **{k: v.mean(-1) for k, v in between.items()},
             "dla": backup["dla"].mean(-1), "dla_knockout": backup["dla_knockout"].mean(-1),
             "backup": (backup["dla_knockout"] - backup["dla"]).mean(-1),
             "path_final": paths["path_final"], "path_nm_q": paths["path_nm_q"]}
    return grids, {"between": between, **backup}


def path_into_induction(model, candidates: dict[str, list[str]], cfg: dict = EXPERIMENT) -> dict[str, float]:
    """Path patching (day 54's, on its 16 prompts, ABC into clean, ioi_metric_2) from each previous-token
    candidate into the keys of the heads classed induction: what a previous-token head is for."""
    receivers = [parse_label(x) for x in candidates["induction"]]
    senders = [parse_label(x) for x in candidates["previous token"] if parse_label(x)[0] < max(l for l, _ in receivers)] \
        if receivers else []
    if not senders:
        return {}
    ds, abc, _, _ = pp.datasets(model)
    clean_cache, abc_cache, _, _, ld_c, ld_a = pp.baseline(model, ds, abc)
    metric2 = partial(pp.ioi_metric_2_final, answer_tokens=ds.answer_tokens, clean_logit_diff=ld_c,
                      corrupted_logit_diff=ld_a)
    grid = pp.get_path_patch_head_to_heads(receivers, "k", model, metric2, abc, ds, abc_cache, clean_cache,
                                           senders=senders)
    return {label(h): float(grid[h]) for h in senders}


def head_table(grids: dict, heads: list[str]) -> dict[str, dict]:
    """Every score of the named heads (the post cites these)."""
    out = {}
    for x in heads:
        l, h = parse_label(x)
        cells = {k: (float(v[l, h]) if l < len(v) else float("nan")) for k, v in grids.items()}
        out[x] = {k: (None if value != value else value) for k, value in cells.items()}     # NaN: not measured
    return out


def plot(results: dict, grids: dict, paths: dict, out_dir: Path) -> None:
    import matplotlib.pyplot as plt

    panels = (("copying", "copying score (OV, top-5)"), ("negative_copying", "negative copying score"),
              ("end_to_IO", "attention end → IO"), ("end_to_S2", "attention end → S2"),
              ("induction", "induction score (repeated tokens)"), ("duplicate", "duplicate-token score"),
              ("path_final", "path patching → final stream (day 54)"), ("backup", "DLA change, name movers knocked out"))
    fig, axes = plt.subplots(2, 4, figsize=(16, 9), constrained_layout=True)
    for ax, (key, title) in zip(axes.flat, panels):
        grid = grids[key].nan_to_num(0)
        signed = key in ("path_final", "backup")
        lim = grid.abs().max().item() or 1.0
        im = ax.imshow(grid.numpy(), cmap="RdBu" if signed else "Blues", vmin=-lim if signed else 0, vmax=lim,
                       aspect="auto")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.savefig(out_dir / "figures/scores.png", dpi=110)
    plt.close(fig)

    # the circuit: heads placed by (head, layer), coloured by class; edges: day 54's path-patching effects
    colours = dict(zip(CLASSES, plt.get_cmap("tab10").colors))
    fig, ax = plt.subplots(figsize=(9, 9), constrained_layout=True)
    where = {}
    for c, heads in results["classes"].items():
        for x in heads:
            l, h = parse_label(x)
            where[x] = (h, l)
            ax.scatter([h], [l], s=260, color=colours[c], zorder=3, label=c if x == heads[0] else None)
            ax.annotate(x, (h, l), textcoords="offset points", xytext=(9, -3), fontsize=8)
    receivers = dict(paths["receivers"])        # day 54 patched into its receivers jointly: an edge to each
    receivers["induction"] = results["classes"].get("induction", [])
    edges = paths["edges"] + [{"sender": x, "receiver": "induction", "input": "k", "value": v}
                              for x, v in results.get("into_induction", {}).items()]
    biggest = max((abs(e["value"]) for e in edges), default=1.0)
    for e in edges:
        if e["sender"] not in where:
            continue
        for r in receivers.get(e["receiver"], []):
            if r in where:
                (x0, y0), (x1, y1) = where[e["sender"]], where[r]
                ax.annotate("", (x1, y1), (x0, y0), arrowprops=dict(arrowstyle="->", lw=0.5 + 4 * abs(e["value"]) / biggest,
                                                                     color="grey", alpha=0.7))
                ax.annotate(e["input"], ((x0 + x1) / 2, (y0 + y1) / 2), fontsize=7, color="grey")
    ax.set_xlim(-0.5, 8.8)
    ax.set_ylim(-0.5, 29.5)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title("SmolLM2's IOI circuit: classes from measured scores\n"
                 "arrows: path patching into q/k/v (width ∝ |effect|; into day 54's receivers and the induction heads)",
                 fontsize=10)
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.savefig(out_dir / "figures/circuit.png", dpi=110)
    plt.close(fig)


@single_thread()
def run_experiment(out_dir: Path, cfg: dict = EXPERIMENT) -> dict:
    """SmolLM2 on day 53's first N prompts: every head's copying scores, attention scores on repeated tokens,
    attention between the IOI positions, direct attribution before and after knocking out the name movers;
    day 54's path patching; the classes they imply; the figures."""
    from checks.models import hooked_model

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    model = hooked_model(cfg["model"])
    ds, abc = ioi.build(model)
    ds, abc = ds[:cfg["N"]], abc[:cfg["N"]]
    paths = day54_paths()
    grids, per_prompt = score_grids(model, ds, abc, cfg, paths)
    candidates = classify_heads(grids, paths["senders_kv"])
    into_induction = path_into_induction(model, candidates, cfg)
    classes = classify_heads(grids, paths["senders_kv"], into_induction=into_induction)
    in_circuit = [x for heads in classes.values() for x in heads]
    results = {
        "experiment": cfg, "thresholds": THRESHOLDS, "n_prompts": len(ds), "n_names": len(ds.names),
        "day54_n_prompts": paths["n_prompts"], "day54_receivers": paths["receivers"],
        "clean_logit_diff": per_prompt["logit_diff"].mean().item(),
        "knockout_logit_diff": per_prompt["logit_diff_knockout"].mean().item(),
        "classes": classes, "n_circuit_heads": len(in_circuit), "candidates": candidates,
        "candidates_n_previous": len(candidates["previous token"]),
        "class_lists": {c.replace(",", "").replace(" ", "_"): ", ".join(v) or "none" for c, v in classes.items()},
        "into_induction": into_induction,
        "n_per_class": {c: len(v) for c, v in classes.items()},
        "heads": head_table(grids, in_circuit),
        "grids": {k: v.tolist() for k, v in grids.items() if k not in ("path_final", "path_nm_q")},
        "per_prompt": {x: {k: per_prompt["between"][k][parse_label(x)].tolist() for k in per_prompt["between"]}
                       | {"dla": per_prompt["dla"][parse_label(x)].tolist()} for x in in_circuit},
        "max_abs_logit_diff": per_prompt["logit_diff"].abs().max().item(),
        "top_copying": [label(h) for h in ioi.top_heads(grids["copying"].nan_to_num(0), 5)],
        "top_negative_copying": [label(h) for h in ioi.top_heads(grids["negative_copying"].nan_to_num(0), 5)],
        "top_induction": [label(h) for h in ioi.top_heads(grids["induction"], 5)],
        "top_duplicate": [label(h) for h in ioi.top_heads(grids["duplicate"], 5)],
        "top_prev": [label(h) for h in ioi.top_heads(grids["prev"], 5)],
        "top_backup": [label(h) for h in ioi.top_heads(grids["backup"], 5)],
        "n_induction_over_threshold": int((grids["induction"] >= THRESHOLDS["pattern"]).sum()),
        "n_duplicate_over_threshold": int((grids["duplicate"] >= THRESHOLDS["pattern"]).sum()),
        "n_copying_over_threshold": int((grids["copying"] >= THRESHOLDS["copying"]).sum()),
        "n_negative_copying_over_threshold": int((grids["negative_copying"] >= THRESHOLDS["copying"]).sum()),
    }
    plot(results, grids, paths, out_dir)
    results["cpu_seconds"] = time.process_time() - cpu0
    results["wall_seconds"] = time.perf_counter() - wall0
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
