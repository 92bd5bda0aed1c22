"""The gate of day 70: the module-1 review, generated with day 29's machinery from the ledger, the gate reports and
the days' results.json, set beside ARENA's reported results, with practice problems on our own toys.

Spec (issue 14): a post generated from the ledger and every module-1 day's results.json (which results reproduce
ARENA's, which differ on our models and why), in the style of day 029, plus a page of practice problems on our own
toys, each answer checked by the gate; the test fails when any source changes.
References: progress.yml parsed as plain YAML; the days' results.json read with json; for the practice answers,
direct computations that do not go through the days' functions (a hand-written balance check and the model's full
forward pass; q·k softmax from the cache's queries and keys; torch.fft.rfft; (a + b) mod p in Python).
"""

import importlib
import inspect
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from checks.committed import assert_reproduces, exact, float_ops

from . import review as R

HERE = Path(__file__).parent
R29 = importlib.import_module("days.029.review")
fixtures = importlib.import_module("days.035.fixtures")
one_thread_module = fixtures.one_thread_module


# ---------------------------------------------------------------- day 29's machinery, reused


def test_review_reuses_day_29_machinery():
    """Day 70 imports day 29's collector and tables instead of copying them: it defines none of them itself, and its
    collect is day 29's called with days 30–69 and day 70's headlines; day 29's defaults are unchanged."""
    for name in ("ledger_rows", "headline_values", "gate_measurements", "summary_table", "claims_table",
                 "headline_table", "counts", "lookup", "fmt", "escape"):
        assert not hasattr(R, name), f"day 70 defines its own {name}: import it from day 29"
    assert R.R29 is R29
    assert "R29.collect(proj, days=DAYS, headlines=HEADLINES)" in inspect.getsource(R.collect)
    assert list(R.DAYS) == list(range(30, 70))
    assert [r["day"] for r in R29.ledger_rows(R29.project())] == list(range(15, 29))
    assert R29.headline_values(R29.project(), 15) == R29.headline_values(R29.project(), 15, R29.HEADLINES)


def test_headlines_cover_module_1_and_resolve():
    """Every day 30–69 has an entry; every chosen path resolves in the day's results.json (read with json and walked
    by hand), so no headline shows as missing while the day's file exists."""
    assert set(R.HEADLINES) == set(range(30, 70))
    for day, pairs in R.HEADLINES.items():
        data = R.day_results(day)
        if data is None:
            continue
        for key, label in pairs:
            node = data
            for part in key.split("."):
                assert (part in node) if isinstance(node, dict) else (int(part) < len(node)), f"day {day}: {key}"
                node = node[part] if isinstance(node, dict) else node[int(part)]
            assert label


def test_arena_rows_cover_every_section_of_module_1():
    """Each ARENA section of module 1 has at least one comparison; each comparison cites its day's own ARENA section
    (progress.yml's `arena` field, read as YAML), a verdict from the three allowed, a citation and a reason."""
    raw = {d["day"]: d for d in yaml.safe_load((R.ROOT / "progress.yml").read_text())["days"]}
    assert R.arena_row_problems(R.ARENA, R.MODULE_SECTIONS, raw) == []
    bad = [dict(R.ARENA[0], section="1.2"), dict(R.ARENA[1], verdict="maybe"), dict(R.ARENA[2], why="")]
    assert len(R.arena_row_problems(bad, R.MODULE_SECTIONS, raw)) == 4  # + sections without rows


def test_arena_table_is_built_from_the_data():
    """On hand-made rows: sections in ARENA's order whatever the row order, pipes escaped, values printed as the posts
    print them, 'missing' when the path is absent; verdict counts per verdict."""
    rows = [
        {"section": "1.5.2", "arena_model": "1L", "cited": "keys 14 | 35 (Nanda)", "day": 62, "key": "a.b",
         "value": 2300.0, "found": True, "verdict": "differs", "why": "p = 37"},
        {"section": "1.1", "arena_model": "GPT-2", "cited": "c", "day": 32, "key": "z", "value": None, "found": False,
         "verdict": "reproduces", "why": "w"},
    ]
    lines = R.arena_table(rows).splitlines()
    assert lines[2] == "| 1.1 | GPT-2 | c | missing | `days/032/results.json: z` | reproduces | w |"
    assert lines[3] == "| 1.5.2 | 1L | keys 14 \\| 35 (Nanda) | 2300 | `days/062/results.json: a.b` | differs | p = 37 |"
    assert R.verdict_counts(rows) == {"reproduces": 1, "differs": 1, "not_comparable": 0}


def test_review_agrees_with_the_sources(committed, measure):
    """The committed review is current (day 29's check, for days 30–69): same fingerprints (else the day changed:
    rerun `invoke experiment 70`), the ledger's status and tests, the gate reports the review read, every headline
    and every ARENA row's value equal to the day's results.json now; and the four tables, the totals and the
    verdict counts are exactly what the recorded data produce."""
    results = committed
    now = R.collect()
    assert list(results["days"]) == [str(d) for d in R.DAYS]
    compared_reports = R29.assert_current(results["days"], now, review_day=70)
    assert R.arena_rows() == results["arena"], "an ARENA row changed since the review: run `invoke experiment 70`"
    assert results["tables"] == {"summary": R29.summary_table(results["days"]), "claims": R29.claims_table(results["days"]),
                                 "headlines": R29.headline_table(results["days"]), "arena": R.arena_table(results["arena"])}
    assert results["totals"] == R29.counts(results["days"])
    assert results["verdicts"] == R.verdict_counts(results["arena"])
    assert results["practice"]["questions"] == R.PRACTICE
    assert results["practice"]["checkpoint_bytes"] == R.checkpoint_bytes(), "a toy's checkpoint changed: run `invoke experiment 70`"
    measure("review.gate_reports_compared", compared_reports)
    measure("review.comparisons", len(results["arena"]))
    for name in ("module1_tests.png", "module1_verdicts.png"):
        assert (HERE / "figures" / name).stat().st_size > 10_000


# ---------------------------------------------------------------- practice problems


@pytest.fixture(scope="module")
def toys(one_thread_module):
    """Day 60's and day 62's committed models and the practice strings (loaded once for the module)."""
    B, G, _ = R._days()
    return B.load_brackets_model(), R.practice_bracket_data(), G.load_grokking_model()


def balanced(s: str) -> bool:
    depth = 0
    for c in s:
        depth += 1 if c == "(" else -1
        if depth < 0:
            return False
    return depth == 0


@torch.no_grad()
def test_practice_brackets_accuracy(toys, committed, measure):
    """Problem 1: the answer (day 60's class_logits, batched by length) equals a direct count: a hand-written balance
    check for the labels and the model's plain forward pass over the fully padded tokens, class read at [start]. The
    smallest |logit margin| is far above float32 rounding, so the count is exact on any CPU."""
    model, data, _ = toys
    answer = R.answer_brackets_accuracy(model, data)
    logits = model(data.toks)[:, 0]
    labels = torch.tensor([balanced(s) for s in data.strs])
    wrong = int((logits.argmax(-1).bool() != labels).sum())
    assert answer == {"n": len(data.strs), "n_errors": wrong, "accuracy": 1 - wrong / len(data.strs)}
    margin = float((logits[:, 1] - logits[:, 0]).abs().min())
    assert margin > 1e-3
    measure("practice.brackets_min_margin", margin, "> 1e-3")
    assert_reproduces(answer, committed["practice"]["answers"]["brackets_accuracy"],
                      exact("counts of argmaxes with margins far above rounding"), name="brackets_accuracy")


@torch.no_grad()
def test_practice_brackets_uniform_head(toys, committed):
    """Problem 2: the answer (TransformerLens's hook_pattern) equals [start]'s attention recomputed from the cache's
    queries and keys (softmax of q·k/√d_head, no mask: every string has the same length), entropy over log 42."""
    model, data, _ = toys
    answer = R.answer_brackets_uniform_head(model, data)
    idx = [i for i, s in enumerate(data.strs) if len(s) == R.PRACTICE_LEN]
    _, cache = model.run_with_cache(data.toks[idx][:, :R.PRACTICE_LEN + 2],
                                    names_filter=lambda n: n in ("blocks.0.attn.hook_q", "blocks.0.attn.hook_k"))
    q, k = cache["blocks.0.attn.hook_q"][:, 0].double(), cache["blocks.0.attn.hook_k"].double()   # [b, h, d], [b, s, h, d]
    pattern = torch.softmax(torch.einsum("bhd,bshd->bhs", q, k) / math.sqrt(model.cfg.d_head), dim=-1)
    ratio = (-(pattern * pattern.log()).sum(-1) / math.log(R.PRACTICE_LEN + 2)).mean(0)
    assert answer["n_strings"] == len(idx)
    assert answer["head"] == f"L0H{int(ratio.argmax())}"
    torch.testing.assert_close(torch.tensor(answer["by_head"], dtype=torch.float64), ratio, rtol=1e-4, atol=1e-5)
    tol = float_ops(2000, "float32", why="float32 scores and softmax over 42 keys, averaged over ~100 strings")
    assert_reproduces(answer["by_head"], committed["practice"]["answers"]["brackets_uniform_head"]["by_head"], tol,
                      name="by_head")
    assert answer["head"] == committed["practice"]["answers"]["brackets_uniform_head"]["head"]


@torch.no_grad()
def test_practice_grokking_key_freqs(toys, committed):
    """Problem 3: the answer (day 63's find_key_freqs in its real Fourier basis) equals torch.fft.rfft over the
    residues: power |rfft|² summed over d_model at k = 1 … ⌊p/2⌋ (proportional to cos² + sin², the same constant for
    every k ≥ 1 when p is odd); the key frequencies are the top ones by power and carry the same share."""
    _, _, model = toys
    answer = R.answer_grokking_key_freqs(model)
    p = model.cfg.d_vocab_out
    power = torch.fft.rfft(model.W_E[:p].double(), dim=0).abs().pow(2).sum(-1)[1:]
    share = power / power.sum()
    top = sorted((share.argsort(descending=True)[:len(answer["key_freqs"])] + 1).tolist())
    assert answer["key_freqs"] == top
    assert math.isclose(answer["share"], float(share[[k - 1 for k in top]].sum()), rel_tol=1e-10)
    assert_reproduces(answer, committed["practice"]["answers"]["grokking_key_freqs"],
                      float_ops(37 * 128, "float64", why="a float64 Fourier transform of a fixed 37×128 matrix"),
                      name="grokking_key_freqs")


@torch.no_grad()
def test_practice_grokking_accuracy(toys, committed, measure):
    """Problem 4: the answer (day 62's final_position_logits on all_pairs) equals the model's plain forward pass on
    every (a, b, =) built in Python, scored against (a + b) mod p computed in Python, the training pairs taken from
    the recorded seed's permutation; margins far above rounding."""
    _, _, model = toys
    answer = R.answer_grokking_accuracy(model)
    p = model.cfg.d_vocab_out
    tokens = torch.tensor([[a, b, p] for a in range(p) for b in range(p)])
    logits = model(tokens)[:, -1]
    labels = torch.tensor([(a + b) % p for a in range(p) for b in range(p)])
    wrong = int((logits.argmax(-1) != labels).sum())
    meta = json.loads((R.ROOT / "days/062/models/grokking_model.json").read_text())["train_config"]
    perm = torch.randperm(p * p, generator=torch.Generator().manual_seed(meta["data_seed"]))
    in_train = torch.zeros(p * p, dtype=torch.bool)
    in_train[perm[:int(meta["frac_train"] * p * p)]] = True           # the split as Nanda et al. cut it
    wrong_train = int(((logits.argmax(-1) != labels) & in_train).sum())
    assert answer == {"p": p, "n": p * p, "n_errors": wrong, "accuracy": 1 - wrong / (p * p),
                      "n_errors_on_training_pairs": wrong_train}
    top2 = logits.topk(2, dim=-1).values
    margin = float((top2[:, 0] - top2[:, 1]).min())
    assert margin > 1e-3
    measure("practice.grokking_min_margin", margin, "> 1e-3")
    assert_reproduces(answer, committed["practice"]["answers"]["grokking_accuracy"],
                      exact("counts of argmaxes with margins far above rounding"), name="grokking_accuracy")


@torch.no_grad()
def test_practice_two_hop_entity_head(one_thread_module, committed):
    """Problem 5: the answer (TransformerLens's hook_pattern) equals the attention recomputed from the cache's queries
    and keys, softmax(q·k/√d_head) at the last position (which sees every key under the causal mask), read at each
    prompt's entity slot (the slot taken from the tokens themselves: the one entity token)."""
    T = R._two_hop()
    model = T.load_toy()[0]
    data = R.two_hop_data()
    answer = R.answer_two_hop_entity_head(model, data)
    toks = data["tokens"]
    is_entity = (toks >= T.TASK.entity(0)) & (toks <= T.TASK.entity(T.TASK.n_entities - 1))
    assert bool((is_entity.sum(1) == 1).all())
    slot = is_entity.int().argmax(1)
    _, cache = model.run_with_cache(toks, names_filter=lambda n: n.endswith(("hook_q", "hook_k")))
    by_head = []
    for layer in range(model.cfg.n_layers):
        q = cache[f"blocks.{layer}.attn.hook_q"][:, -1].double()                    # [b, h, d]
        k = cache[f"blocks.{layer}.attn.hook_k"].double()                           # [b, s, h, d]
        pattern = torch.softmax(torch.einsum("bhd,bshd->bhs", q, k) / math.sqrt(model.cfg.d_head), dim=-1)
        by_head.append(pattern[torch.arange(len(slot)), :, slot].mean(0))
    by_head = torch.stack(by_head)
    layer, head = divmod(int(by_head.argmax()), model.cfg.n_heads)
    assert answer["head"] == f"L{layer}H{head}"
    torch.testing.assert_close(torch.tensor(answer["by_head"], dtype=torch.float64), by_head, rtol=1e-4, atol=1e-5)
    tol = float_ops(2000, "float32", why="float32 scores and softmax over 7 keys, averaged over 2,000 prompts")
    assert_reproduces(answer["by_head"], committed["practice"]["answers"]["two_hop_entity_head"]["by_head"], tol,
                      name="by_head")
    assert answer["head"] == committed["practice"]["answers"]["two_hop_entity_head"]["head"]
