"""The gate of day 55 (ARENA 1.4.1 IOI, §4 paper replication: the head classes and the scores that identify them).

References: ARENA's get_copying_scores written out literally (per head, through model.W_V/W_O, two unembeddings);
the model's own attention run on one-token sequences (a third route to a head's OV output); torch.diagonal of
run_with_cache's patterns for the attention scores; run_with_cache's full patterns for the attention between IOI
positions; day 54's committed path patching. Structure and identities on the 2-layer GPT-2-shaped random model in
float64; the scores of the circuit's heads on SmolLM2.

Tolerances on SmolLM2: a logit is within ε = SMOLLM2_LOGIT_REL × max|logit| of another float32 path
(checks/committed.py); a top-k membership is decided unless the name's logit is within 2ε of the k-th largest,
so a copying score reproduces within (names within 2ε of the cut) / n. A head's direct attribution is a part of a
logit difference (2ε); an attention weight is a softmax of scores computed as deep in the network as the logits,
which moves by at most half the largest error of its scores: held to the same 2ε.
"""

import copy
import importlib
import json
from pathlib import Path

import pytest
import torch

from checks import assert_parity
from checks.committed import SMOLLM2_LOGIT_REL, Tolerance, assert_reproduces, exact, float_ops
from checks.models import hooked_model

from . import circuit_map as C

HERE = Path(__file__).parent
pytestmark = pytest.mark.asset("gpt2-tokenizer", "smollm2-135m-instruct")

fixtures = importlib.import_module("days.035.fixtures")
one_thread_module, small_gpt2 = fixtures.one_thread_module, fixtures.small_gpt2
ioi = C.ioi

N_GATE = 8


@pytest.fixture(scope="module")
def g64(small_gpt2):
    """The 2-layer, 4-head random GPT-2 in float64 and 6 mixed-template IOI prompts for its tokenizer."""
    model = copy.deepcopy(small_gpt2[0]).to(torch.float64)
    return model, ioi.IOIDataset("mixed", 6, model.tokenizer, seed=3)


@pytest.fixture(scope="module")
def smol():
    """SmolLM2, the experiment's first 8 prompts and their ABC twins."""
    model = hooked_model("smollm2")
    ds, abc = ioi.build(model)
    return model, ds[:N_GATE], abc[:N_GATE]


@pytest.fixture(scope="module")
def committed_circuit(committed):
    r = committed
    return r, [x for heads in r["classes"].values() for x in heads]


# ---------------------------------------------------------------- references


def arena_copying_scores(model, k, names):
    """ARENA's get_copying_scores, literally: model.W_V[l, h] @ model.W_O[l, h], two unembeddings (ours stores row l
    at layer l, ARENA's at l − 1)."""
    tokens = C.name_tokens(model, names)
    emb = model.embed(tokens[:, None])
    resid = emb + model.blocks[0].mlp(model.blocks[0].ln2(emb))
    out = torch.zeros(2, model.cfg.n_layers, model.cfg.n_heads)
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            W_OV = model.W_V[layer, head] @ model.W_O[layer, head]
            pos = model.unembed(model.ln_final(resid @ W_OV)).squeeze(1)
            neg = model.unembed(model.ln_final(resid @ -W_OV)).squeeze(1)
            out[0, layer, head] = (pos.topk(k, -1).indices == tokens[:, None]).any(-1).float().mean()
            out[1, layer, head] = (neg.topk(k, -1).indices == tokens[:, None]).any(-1).float().mean()
    return out


@torch.no_grad()
def forward_route_output(model, head, resid):
    """A head's OV output through the model's own attention: each name a one-token sequence (its only attention
    weight is 1, to itself) whose stream entering the head's layer is set to x_n; the head's z times W_O. It differs
    from x_n W_OV only by ln_1's per-name scale 1/rms(x_n) (1/std for GPT-2's LayerNorm, on a centred stream) and
    the value and output biases (zero in SmolLM2; ARENA leaves them out): its direction is the same."""
    l, h = head
    store = {}

    def set_resid(x, hook):
        return resid[:, None].to(x.dtype)

    def keep(z, hook):
        store["z"] = z

    model.run_with_hooks(torch.zeros(len(resid), 1, dtype=torch.long), return_type=None, stop_at_layer=l + 1,
                         fwd_hooks=[(C.act_name("resid_pre", l), set_resid), (C.act_name("z", l), keep)])
    return store["z"][:, 0, h] @ model.W_O[l, h]


def direction(x):
    return x / x.norm(dim=-1, keepdim=True)


# ---------------------------------------------------------------- copying scores


def test_copying_scores_match_arena_and_the_forward_route(g64, measure):
    """Copying scores (ARENA §4: the fraction of names whose token is in the top k of their OV output, and of
    −W_OV) equal ARENA's get_copying_scores run literally, for every head of the float64 random GPT-2 (exactly:
    the same decisions); the OV output behind them points the same way as the model's own attention run on one-token
    sequences (a third route, unit vectors to 1e-9); and negating a head's W_O swaps its positive and negative scores."""
    model, ds = g64
    names = ds.names[:40]
    k = 1000     # a random model copies nothing into the top 5 of 50,257 tokens: a wide k makes the scores non-trivial
    ours = C.get_copying_scores(model, k, names)
    assert torch.equal(ours, arena_copying_scores(model, k, names))
    assert ((ours > 0) & (ours < 1)).any()                                   # not a comparison of zeros
    tokens = C.name_tokens(model, names)
    resid = C.names_after_mlp0(model, tokens)
    worst = 0.0
    for head in [(0, 1), (1, 2)]:
        ov = resid @ (model.blocks[head[0]].attn.W_V[head[1]] @ model.blocks[head[0]].attn.W_O[head[1]])
        ref = forward_route_output(model, head, resid)
        worst = max(worst, assert_parity(direction(ov), direction(ref), atol=1e-9).max_abs_err)
    flipped = copy.deepcopy(model)
    with torch.no_grad():
        flipped.blocks[1].attn.W_O[2] *= -1
    swapped = C.get_copying_scores(flipped, k, names, heads=[(1, 2)])
    assert torch.equal(swapped[:, 1, 2], ours.flip(0)[:, 1, 2])
    assert swapped[:, 0].isnan().all()                                          # heads not asked for: NaN
    measure("gpt2_float64.ov_vs_forward_route.max_abs_err", worst, "≤ 1e-9")


def test_ov_name_logits_without_an_odd_final_norm(g64, measure):
    """ov_name_logits (ARENA §4's copying score: unembed(ln_final(x W_OV)) and unembed(ln_final(−x W_OV))) on a model
    whose final norm is a LayerNorm with its own weight and bias (not odd: the shortcut through −z does not apply)
    equals ARENA's two unembeddings written out literally, per head, to 1e-12 in float64."""
    from transformer_lens.components import LayerNorm

    model, ds = g64
    plain = copy.deepcopy(model)
    g = torch.Generator().manual_seed(7)
    ln = LayerNorm(plain.cfg).to(torch.float64)
    with torch.no_grad():
        ln.w.copy_(1 + 0.1 * torch.randn(ln.w.shape, generator=g, dtype=torch.float64))
        ln.b.copy_(0.1 * torch.randn(ln.b.shape, generator=g, dtype=torch.float64))
    plain.ln_final = ln
    assert not C._odd_final_norm(plain)
    tokens = C.name_tokens(plain, ds.names[:6])
    resid = C.names_after_mlp0(plain, tokens)
    heads = [(0, 1), (1, 2)]
    pos, neg = C.ov_name_logits(plain, heads, resid)
    worst = 0.0
    with torch.no_grad():
        for i, (layer, h) in enumerate(heads):
            W_OV = plain.W_V[layer, h] @ plain.W_O[layer, h]
            ref_pos = plain.unembed(plain.ln_final(resid[:, None] @ W_OV))[:, 0]
            ref_neg = plain.unembed(plain.ln_final(resid[:, None] @ -W_OV))[:, 0]
            worst = max(worst, assert_parity(pos[i], ref_pos, atol=1e-12).max_abs_err,
                        assert_parity(neg[i], ref_neg, atol=1e-12).max_abs_err)
            assert (ref_pos + ref_neg - 2 * plain.b_U).abs().max() > 1e-3      # the norm really is not odd
    measure("gpt2_float64.ov_name_logits_layernorm_vs_literal.max_abs_err", worst, "≤ 1e-12")


def near_cut(logits, tokens, k, tol):
    """How many names' logits lie within tol of the k-th / (k+1)-th boundary of their row."""
    top = logits.topk(k + 1, -1).values
    own = logits.gather(-1, tokens[:, None])[:, 0]
    cut = (top[:, k - 1] + top[:, k]) / 2
    return int(((own - cut).abs() <= tol).sum())


def test_copying_scores_of_the_circuit_on_smollm2(smol, committed_circuit, measure):
    """SmolLM2's copying scores for the heads the post names: the OV output points the same way as the route through the
    model's own (grouped-query) attention (unit vectors within float32 rounding); every score recomputed equals results.json within the names whose logit
    sits within 2ε of the top-5 cut (exactly where there are none)."""
    model, ds, _ = smol
    r, heads = committed_circuit
    tokens = C.name_tokens(model, ds.names)
    resid = C.names_after_mlp0(model, tokens)
    chosen = [C.parse_label(x) for x in heads if C.parse_label(x)[0] > 0][:4]
    pos, neg = C.ov_name_logits(model, chosen, resid)
    eps = SMOLLM2_LOGIT_REL * pos.abs().max().item()
    unit = float_ops(2 * 576 + 64, "float32").rel       # a unit vector after a 576- and a 64-term product, twice
    worst_route = 0.0
    for l, h in chosen[:2]:
        ov = resid @ (model.blocks[l].attn.W_V[h] @ model.blocks[l].attn.W_O[h])
        ref = forward_route_output(model, (l, h), resid)
        worst_route = max(worst_route, assert_parity(direction(ov), direction(ref), atol=unit).max_abs_err)
    scores = C.get_copying_scores(model, r["experiment"]["k"], ds.names, heads=chosen)
    worst = 0.0
    for i, (l, h) in enumerate(chosen):
        for row, key, logits in ((0, "copying", pos[i]), (1, "negative_copying", neg[i])):
            near = near_cut(logits, tokens, r["experiment"]["k"], 2 * eps)
            tol = Tolerance(abs=near / len(tokens), reason=f"{near} names within 2ε of the top-k cut") if near else \
                exact("no name within rounding of the top-k cut")
            worst = max(worst, assert_reproduces(scores[row, l, h], r["heads"][C.label((l, h))][key], tol, name=key))
    measure("smollm2.ov_vs_forward_route.max_abs_err", worst_route, f"≤ {unit:.1e}")
    measure("smollm2.copying_vs_committed", worst, "≤ 1 (fraction of the tolerance)")


# ---------------------------------------------------------------- attention scores


def test_attention_scores_are_the_diagonals(g64, measure):
    """get_attn_scores (ARENA §4): on random tokens repeated once (seeded, halves equal), the duplicate, previous-
    token and induction scores are the means of the attention patterns' diagonals at offsets −n, −1 and −(n − 1)
    over ARENA's destination ranges (torch.diagonal of run_with_cache's patterns), 1e-12; the three come from one
    run and each equals get_attn_scores of its type."""
    model, _ = g64
    n, batch = 7, 3
    tokens = C.generate_repeated_tokens(model, n, batch, seed=4)
    assert torch.equal(tokens[:, :n], tokens[:, n:]) and torch.equal(tokens, C.generate_repeated_tokens(model, n, batch, 4))
    assert not torch.equal(tokens, C.generate_repeated_tokens(model, n, batch, 5))
    scores = C.get_all_attn_scores(model, n, batch, seed=4)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    worst = 0.0
    for head_type, offset, keep in (("duplicate", -n, slice(0, n)), ("prev", -1, slice(0, n)),
                                    ("induction", -(n - 1), slice(1, n + 1))):
        ref = torch.stack([cache["pattern", l].diagonal(offset, dim1=-2, dim2=-1)[..., keep].mean((0, 2))
                           for l in range(model.cfg.n_layers)])
        worst = max(worst, assert_parity(scores[head_type], ref, atol=1e-12).max_abs_err)
        assert torch.equal(C.get_attn_scores(model, n, batch, head_type, seed=4), scores[head_type])
    with pytest.raises(ValueError):
        C.score_positions(n, "copying")
    measure("gpt2_float64.attn_scores_vs_diagonals.max_abs_err", worst, "≤ 1e-12")


def test_attention_between_ioi_positions(g64, measure):
    """attention_between reads, for every prompt of a right-padded mixed-template batch, the attention from one word
    position to another (end→IO, S2→S1, S2→S1+1, …) out of the full pattern run_with_cache gives, in batches of any
    size (1e-12); 'S1+1' is the token after the subject's first mention."""
    model, ds = g64
    ours = C.attention_between(model, ds, batch_size=4)
    with torch.no_grad():
        _, cache = model.run_with_cache(ds.toks)
    where = C.word_positions(ds)
    worst = 0.0
    for d, s in C.IOI_ATTENTION:
        ref = torch.stack([torch.stack([cache["pattern", l][i, :, where[d][i], where[s][i]] for i in range(len(ds))], -1)
                           for l in range(model.cfg.n_layers)])
        worst = max(worst, assert_parity(ours[f"{d}_to_{s}"], ref, atol=1e-12).max_abs_err)
    for i, p in enumerate(ds.prompts):
        assert ds.toks[i, where["S1+1"][i]] != ds.toks[i, where["S1"][i]]
        assert model.tokenizer.decode(ds.toks[i, where["S1"][i]]) == " " + p["S"]
    measure("gpt2_float64.attention_between_vs_run_with_cache.max_abs_err", worst, "≤ 1e-12")


# ---------------------------------------------------------------- knockouts and classes


def test_backup_knockout_identities(g64):
    """The knockout behind the backup score: knocking out no head changes no attribution (exactly); knocking out
    a layer-1 head with its own clean values changes nothing; with the ABC values it changes that head's
    attribution and, in a 2-layer model, no layer-0 head's except through the final scale."""
    model, ds = g64
    abc = ds.gen_flipped_prompts(ioi.ABC)
    none = C.backup_scores(model, ds, abc, [])
    assert torch.equal(none["dla"], none["dla_knockout"])
    with torch.no_grad():
        _, clean = model.run_with_cache(ds.toks)
    same, _ = C.head_dla(model, ds, C.patch_heads_from(dict(clean.items()), [(1, 2)]))
    assert_parity(same, none["dla"], atol=1e-12)
    out = C.backup_scores(model, ds, abc, [(1, 2)])
    assert (out["dla_knockout"][1, 2] - out["dla"][1, 2]).abs().max() > 1e-6       # float64: far above rounding
    ratio = out["dla_knockout"][0] / out["dla"][0]              # layer-0 outputs are unchanged: one factor per prompt
    assert_parity(ratio, ratio[:1].expand_as(ratio), atol=1e-9)
    assert (ratio - 1).abs().max() > 1e-9                       # ... the final scale, which did move


def test_classify_heads_on_hand_made_scores():
    """classify_heads on hand-made 4-layer × 3-head grids: each class's rule admits the head built to meet it and
    rejects the same head with one condition just past its threshold; a head meeting two classes is listed in the
    first; the circuit layout and load_circuit's positions follow."""
    t = C.THRESHOLDS
    z = lambda: torch.zeros(4, 3)  # noqa: E731
    s = {k: z() for k in ("copying", "negative_copying", "end_to_IO", "end_to_S1", "end_to_S2", "S2_to_S1", "S2_to_S1+1",
                          "S1+1_to_S1", "induction", "duplicate", "prev", "backup", "path_final")}
    s["path_nm_q"] = torch.zeros(3, 3)
    s["end_to_IO"][3, 0], s["copying"][3, 0], s["path_final"][3, 0] = 0.5, 0.9, -0.2          # name mover
    s["end_to_IO"][3, 1], s["negative_copying"][3, 1], s["path_final"][3, 1] = 0.4, 0.8, 0.1   # negative name mover
    s["end_to_S2"][3, 2], s["negative_copying"][3, 2], s["path_final"][3, 2] = 0.6, 0.7, -0.3  # subject suppressor
    s["path_nm_q"][2, 0] = -0.05                                                              # s2 inhibition
    s["induction"][1, 1], s["S2_to_S1+1"][1, 1] = 0.5, 0.3                                      # induction
    s["duplicate"][0, 2], s["S2_to_S1"][0, 2] = 0.6, 0.4                                        # duplicate token
    s["prev"][0, 0], s["S1+1_to_S1"][0, 0] = 0.7, 0.5                                           # previous token
    s["backup"][2, 2], s["end_to_IO"][2, 2] = 0.2, 0.3                                          # backup
    kv = {"L1H1": 0.02, "L0H2": -0.03}
    got = C.classify_heads(s, kv)
    assert got == {"name mover": ["L3H0"], "negative name mover": ["L3H1"], "subject suppressor": ["L3H2"],
                   "direct, no name": [], "s2 inhibition": ["L2H0"], "induction": ["L1H1"],
                   "duplicate token": ["L0H2"], "previous token": ["L0H0"], "backup name mover": ["L2H2"]}
    for cls, key, cell, value in (("name mover", "copying", (3, 0), t["copying"] - 1e-3),
                                  ("negative name mover", "path_final", (3, 1), t["path"] - 1e-3),
                                  ("subject suppressor", "end_to_S2", (3, 2), t["attention"] - 1e-3),
                                  ("s2 inhibition", "path_nm_q", (2, 0), -t["s_inhibition"] + 1e-3),
                                  ("induction", "S2_to_S1+1", (1, 1), t["attention"] - 1e-3),
                                  ("previous token", "prev", (0, 0), t["pattern"] - 1e-3),
                                  ("backup name mover", "backup", (2, 2), t["backup"] - 1e-3)):
        changed = {**s, key: s[key].clone()}
        changed[key][cell] = value
        assert C.label(cell) not in C.classify_heads(changed, kv)[cls], key
    assert C.label((1, 1)) not in C.classify_heads(s, {"L0H2": 0.03})["induction"]    # no path into the circuit
    assert C.classify_heads(s, kv, into_induction={"L0H0": -0.02})["previous token"] == ["L0H0"]
    assert C.classify_heads(s, kv, into_induction={"L0H0": 0.005})["previous token"] == []   # too small a path
    assert C.classify_heads(s, kv, into_induction={})["previous token"] == []
    both = {**s, "backup": s["backup"].clone()}
    both["backup"][3, 0] = 1.0                                                            # a name mover rising too
    assert C.classify_heads(both, kv)["backup name mover"] == ["L2H2"]
    circuit = C.circuit_of(got)
    assert circuit["name mover"] == [(3, 0)] and "direct, no name" not in circuit


def test_classify_heads_thresholds_are_inclusive():
    """classify_heads' docstring states each threshold as inclusive (attends ≥ attention, copying ≥ copying,
    path_final ≤ −path / ≥ +path, path into the name movers' queries ≤ −s_inhibition, |key/value path| ≥
    key_value, score ≥ pattern, backup rise ≥ backup) and "more than" / "as much as" as strict: a head built with
    every condition exactly at its threshold joins its class; one attending exactly ``attention`` to IO is not
    "direct, no name"."""
    t = C.THRESHOLDS
    z = lambda: torch.zeros(4, 3, dtype=torch.float64)  # noqa: E731
    s = {k: z() for k in ("copying", "negative_copying", "end_to_IO", "end_to_S1", "end_to_S2", "S2_to_S1", "S2_to_S1+1",
                          "S1+1_to_S1", "induction", "duplicate", "prev", "backup", "path_final")}
    s["path_nm_q"] = torch.zeros(3, 3, dtype=torch.float64)
    A, P = t["attention"], t["path"]
    s["end_to_IO"][3, 0], s["copying"][3, 0], s["path_final"][3, 0] = A, t["copying"], -P              # name mover
    s["end_to_IO"][3, 1], s["negative_copying"][3, 1], s["path_final"][3, 1] = A, t["copying"], P      # negative nm
    s["end_to_S2"][3, 2], s["negative_copying"][3, 2], s["path_final"][3, 2] = A, t["copying"], -P     # suppressor
    s["path_final"][1, 0] = P                                                                          # direct
    s["end_to_IO"][1, 2], s["path_final"][1, 2] = A, -P                          # attends IO: not direct, nothing
    s["path_nm_q"][2, 0] = -t["s_inhibition"]                                                          # s2 inhibition
    s["induction"][1, 1], s["S2_to_S1+1"][1, 1] = t["pattern"], A                                      # induction
    s["duplicate"][0, 2], s["S2_to_S1"][0, 2] = t["pattern"], A                                        # duplicate
    s["prev"][0, 0], s["S1+1_to_S1"][0, 0] = t["pattern"], A                                           # previous token
    s["backup"][2, 2], s["end_to_IO"][2, 2] = t["backup"], A                                           # backup
    kv = {"L1H1": t["key_value"], "L0H2": -t["key_value"]}
    got = C.classify_heads(s, kv, into_induction={"L0H0": -t["key_value"]})
    assert got == {"name mover": ["L3H0"], "negative name mover": ["L3H1"], "subject suppressor": ["L3H2"],
                   "direct, no name": ["L1H0"], "s2 inhibition": ["L2H0"], "induction": ["L1H1"],
                   "duplicate token": ["L0H2"], "previous token": ["L0H0"], "backup name mover": ["L2H2"]}


def test_day54_paths_keeps_only_key_and_value_senders(tmp_path):
    """day54_paths' senders_kv holds the screened senders into a circuit head's key or value (label → the largest
    |effect| over those paths, the key_value rule of classify_heads); a sender screened only into a query is not
    one of them. Checked on a hand-made file in day 54's layout."""
    r = {"screened_paths": {"name_movers_k": [{"label": "L0H1", "value": -0.02}],
                            "name_movers_v": [{"label": "L0H1", "value": 0.01}, {"label": "L1H0", "value": 0.03}],
                            "s_suppressor_q": [{"label": "L0H2", "value": 0.5}, {"label": "L1H0", "value": -0.9}]},
         "path_heads_nm_q_top": [{"label": "L0H2", "value": -0.1}],
         "path_final": [[0.0, 0.1], [0.2, 0.0]], "path_heads_nm_q": [[0.0, -0.1]],
         "receivers": {}, "n_heads_prompts": 4}
    path = tmp_path / "day54.json"
    path.write_text(json.dumps(r))
    paths = C.day54_paths(path)
    assert paths["senders_kv"] == {"L0H1": 0.02, "L1H0": 0.03}
    assert len(paths["edges"]) == 6


# ---------------------------------------------------------------- the committed results


def test_results_json_is_current(smol, committed_circuit, committed, measure):
    """results.json (cited by the post; the circuit day 56 validates): its classes are classify_heads applied to its
    own committed score grids, day 54's committed path patching and its own path patching from the previous-token
    candidates into the induction heads' keys (exactly: a decision re-made on the same numbers); every class that the path-patching rules define contains only heads whose path-patching effect is
    past the stated threshold; the circuit heads' attention between the IOI positions and their direct attribution
    on the first 8 prompts recomputed now within 2ε of the committed per-prompt values."""
    model, ds, abc = smol
    r, heads = committed_circuit
    c = committed
    assert c["experiment"] == C.EXPERIMENT and c["thresholds"] == C.THRESHOLDS
    paths = C.day54_paths()
    grids = {k: torch.tensor(v) for k, v in c["grids"].items()}
    grids.update(path_final=paths["path_final"], path_nm_q=paths["path_nm_q"])
    assert C.classify_heads(grids, paths["senders_kv"]) == c["candidates"]
    assert C.classify_heads(grids, paths["senders_kv"], into_induction=c["into_induction"]) == c["classes"]
    assert set(c["into_induction"]) <= set(c["candidates"]["previous token"])
    for x in c["classes"]["previous token"]:
        assert abs(c["into_induction"][x]) >= C.THRESHOLDS["key_value"], x
    for cls in ("name mover", "subject suppressor", "direct, no name"):
        for x in c["classes"][cls]:
            assert paths["path_final"][C.parse_label(x)].abs() >= C.THRESHOLDS["path"], x
    for x in c["classes"]["s2 inhibition"]:
        assert paths["path_nm_q"][C.parse_label(x)] <= -C.THRESHOLDS["s_inhibition"], x
    assert len(heads) == c["n_circuit_heads"] > 0
    between = C.attention_between(model, ds)
    dla, ld = C.head_dla(model, ds)
    eps = SMOLLM2_LOGIT_REL * c["max_abs_logit_diff"]
    two = Tolerance(abs=2 * eps, reason="an attention weight or a head's attribution: within 2ε of another float32 path")
    worst = 0.0
    for x in heads:
        cell = C.parse_label(x)
        for key, values in between.items():
            worst = max(worst, assert_reproduces(values[cell], c["per_prompt"][x][key][:N_GATE], two, name=f"{x}.{key}"))
        worst = max(worst, assert_reproduces(dla[cell], c["per_prompt"][x]["dla"][:N_GATE], two, name=f"{x}.dla"))
    for name in ("scores", "circuit"):
        assert (HERE / f"figures/{name}.png").stat().st_size > 10_000
    measure("results_vs_committed", worst, "≤ 1 (fraction of the tolerance)")


@pytest.mark.slow
def test_experiment_reproduces(tmp_path, committed, measure):
    """(slow: every head's copying scores through SmolLM2's 49k-token unembedding, the repeated-token and IOI
    attention, the knockout) The experiment rerun: the classes exactly where every deciding score is farther than
    its tolerance from its threshold; every grid within its tolerance (attention and attributions 2ε; copying
    scores within 2/n_names: a name or two at the top-k cut)."""
    r = C.run_experiment(tmp_path)
    c = committed
    eps = SMOLLM2_LOGIT_REL * c["max_abs_logit_diff"]
    worst = 0.0
    for key in c["grids"]:
        tol = (Tolerance(abs=2 / c["n_names"], reason="one or two names at the top-k cut")
               if "copying" in key else Tolerance(abs=2 * eps, reason="attention / attribution within 2ε"))
        worst = max(worst, assert_reproduces(r["grids"][key], c["grids"][key], tol, name=key))
    # path patching on day 54's prompts: a normalised metric m = (LD − c)/(c − a) with |m| ≤ 2 moves by at most
    # 2ε(2 + 2|m|)/(c − a) when each logit moves by ε (day 54's metric_tolerance)
    d54 = json.loads(C.DAY54_RESULTS.read_text())
    eps54 = SMOLLM2_LOGIT_REL * d54["max_abs_logit"]
    path = Tolerance(abs=2 * eps54 * 6 / (d54["clean_logit_diff"] - d54["abc_logit_diff"]),
                     reason="ioi_metric_2 of SmolLM2 logits, |m| ≤ 2")
    worst = max(worst, assert_reproduces(r["into_induction"], c["into_induction"], path, name="into_induction"))
    assert r["candidates"] == c["candidates"] and r["classes"] == c["classes"]
    measure("experiment_vs_committed", worst, "≤ 1 (fraction of the tolerance)")
    measure("experiment.wall_seconds", r["wall_seconds"])
