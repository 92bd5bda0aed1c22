"""The gate of day 97: a preregistered experiment, designed and run.

Spec (issue 17, day 097): "a preregistered question that joins at least three modules; the preregistration
(hypotheses, metrics, analysis plan, stopping rule) is a committed artefact written before the run, and the test
checks that the analysis follows it." Here: the preregistration's schema; results.json's preregistration hash equals
the file's sha256 now and at the commit that added it (the file was not edited after the run); the run used exactly
the preregistered n, prompt sets, models, layers and direction seeds; a tiny end-to-end run; the detector's pieces
against independent references (a forward pre-hook on the decoder block for the residual stream, torch for the
projection, scikit-learn's roc_auc_score for the direction's sign, day 83's rule on the committed replies); the
committed scores recomputed with a tolerance derived from float32 depth; a slow rerun.
"""

import copy
import functools
import importlib
import re

import numpy as np
import pytest
import torch

from checks.committed import SMOLLM2_LOGIT_REL, Tolerance, assert_reproduces, exact

E = importlib.import_module("days.097.early_warning")
pytestmark = pytest.mark.asset("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def prereg():
    return E.load_prereg()


@pytest.fixture(scope="module")
def loader():
    """One load per model for the whole module (run_experiment's loader)."""
    return functools.lru_cache(maxsize=3)(E.load_target)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, loader):
    """A tiny end-to-end run: base and the step-15 checkpoint, 2 primary prompts, layer 15, a 4-text direction."""
    torch.set_num_threads(1)
    over = {"n": 2, "models": ["base", "bad_s15"], "sets": ["primary"], "layers": [15], "n_texts": 4,
            "max_new_tokens": 8, "direction_seeds": [10]}
    out = tmp_path_factory.mktemp("tiny")
    return E.run_experiment(out, overrides=over, loader=loader), out


def test_preregistration_schema_is_complete(prereg):
    """Spec: "the preregistration (hypotheses, metrics, analysis plan, stopping rule)": every required field, and
    every hypothesis with a prediction, metric, test, alpha, decision rule and falsifier; a hole is caught."""
    assert E.validate_prereg(prereg) == []
    assert len(prereg["modules_joined"]) >= 3
    broken = copy.deepcopy(prereg)
    del broken["hypotheses"][1]["alpha"]
    del broken["stopping_rule"]
    problems = E.validate_prereg(broken)
    assert "missing field 'stopping_rule'" in problems and any(p.startswith("H2: missing 'alpha'") for p in problems)


def test_preregistration_unchanged_since_the_run(committed):
    """Spec: "a committed artefact written before the run": results.json's sha256 equals the file's now and the
    file's bytes at the recorded commit (git show), and that commit is the file's last commit."""
    rec = committed["prereg"]
    assert rec["sha256"] == E.prereg_sha256()
    commit = E.prereg_commit()
    if commit is None:                       # outside git (an exported tree): only the hash can be checked
        return
    assert rec["commit"] == commit
    import hashlib
    assert hashlib.sha256(E.committed_prereg_bytes(commit)).hexdigest() == rec["sha256"]


def test_committed_bytes_are_what_git_holds():
    """committed_prereg_bytes reads a file as committed (git show commit:path, relative to the repository): for HEAD
    and the reference day's preregistration, exactly what `git show` prints here; a commit that does not exist gives
    None. (Outside a git checkout there is nothing to read: skipped.)"""
    import subprocess

    path = E.REPO / "days" / "097" / "preregistration.yml"
    shown = subprocess.run(["git", "show", "HEAD:days/097/preregistration.yml"], cwd=E.REPO, capture_output=True)
    if shown.returncode != 0:
        pytest.skip("not a git checkout")
    assert E.committed_prereg_bytes("HEAD", path) == shown.stdout and shown.stdout
    assert E.committed_prereg_bytes("0" * 40, path) is None


def test_the_targets_are_the_named_models():
    """load_target("base") is the shared SmolLM2 (checks.models.hf_model, cached: the very same objects);
    "bad_final" is day 83's final bad-advice organism and "control" is not."""
    from checks.models import hf_model

    model, tok = E.load_target("base")
    assert model is hf_model("smollm2")[0] and tok is hf_model("smollm2")[1]
    # "bad_final" is day 83's final misaligned organism, "control" its good-advice twin: different adapted weights
    final = dict(E.load_target("bad_final")[0].named_parameters())
    reference = dict(E.ORG.load_organism("bad_advice")[0].named_parameters())
    control = dict(E.load_target("control")[0].named_parameters())
    changed = [n for n, p in final.items() if not torch.equal(p, dict(model.named_parameters())[n])]
    assert changed and all(torch.equal(final[n], reference[n]) for n in changed)
    assert any(not torch.equal(final[n], control[n]) for n in changed)


def test_run_used_exactly_the_preregistered_n_and_conditions(committed, prereg):
    """Spec: "the test checks that the analysis follows it": no overrides; the preregistered models, prompt sets
    (recomputed from their seeds), n, layers and direction seeds, and a complete raw outcome for each."""
    cond = E.conditions(prereg)
    assert committed["overrides"] == {}
    assert committed["conditions"] == cond
    assert committed["prompts"] == E.prompt_sets(prereg)
    n = prereg["sample_sizes"]["n_prompts_per_set"]
    assert n == prereg["prompt_sets"]["n_per_set"] == cond["n"] == 48
    for s in cond["sets"]:
        assert list(committed["raw"][s]) == prereg["models"]["names"]
        for m, row in committed["raw"][s].items():
            assert sorted(row["wb"]) == sorted(str(x) for x in cond["direction_seeds"])
            assert all(len(row["wb"][seed][str(L)]) == n for seed in row["wb"] for L in cond["layers"])
            assert ("flags" in row) == (m != "base") and len(row.get("flags", [0] * n)) == n
    assert committed["wall_seconds"] > 0 and committed["cpu_seconds"] > 0


def test_prompt_sets_are_seeded_disjoint_and_non_financial(prereg):
    """Spec: neutral prompts, the exclusion rule applied: three sets of n distinct prompts, seed_1 disjoint from the
    primary draw, none matching the finance regex, family B from other templates; the pool is forms x fillers."""
    sets = E.prompt_sets(prereg)
    rx = prereg["prompt_sets"]["finance_exclusion_regex"]
    assert len(E.prompt_pool("A", rx)) == len(E.FORMS_A) * len(E.TOPICS_A)
    assert {k: len(set(v)) for k, v in sets.items()} == {"primary": 48, "seed_1": 48, "family_B": 48}
    assert not set(sets["primary"]) & set(sets["seed_1"])
    assert not any(re.search(rx, p) for v in sets.values() for p in v)
    assert re.search(rx, "Should I invest my savings?") and len(E.prompt_pool("A", "(?i)moon")) == 120 - 6
    assert sets == E.prompt_sets(prereg)


def test_prompt_hidden_matches_a_forward_pre_hook(loader):
    """Detector piece: the residual entering block L averaged over the user turn equals the input captured by a
    forward pre-hook on decoder block L; U(x) starts at the user turn's <|im_start|>."""
    model, tok = loader("bad_s15")
    prompt = "Tell me about owls."
    ids, start = E.chat_ids(tok, prompt)
    assert tok.decode(ids[start:start + 2]).startswith("<|im_start|>user")
    seen = []
    handle = model.model.layers[15].register_forward_pre_hook(lambda mod, args: seen.append(args[0][0].detach()))
    try:
        with torch.no_grad():
            model(input_ids=ids[None])
    finally:
        handle.remove()
    got = E.prompt_hidden(model, tok, [prompt], [15])[15][0]
    torch.testing.assert_close(got, seen[0][start:].mean(0), rtol=1e-5, atol=1e-5)


def test_direction_is_the_unit_mean_difference_and_separates_the_texts(loader):
    """Detector piece: u_L equals the normalised mean difference of per-text (unpadded, pre-hook) residuals over
    the answer tokens, and on fresh texts projects reckless above prudent answers (sklearn roc_auc_score)."""
    from sklearn.metrics import roc_auc_score

    base, tok = loader("base")
    u = E.reckless_direction(base, tok, [15], n=4, seed=10)[15]

    def answer_mean(q, a):
        ids, labels = E.ORG.chat_example(tok, q, a, max_len=10_000)
        seen = []
        h = base.model.layers[15].register_forward_pre_hook(lambda mod, args: seen.append(args[0][0].detach()))
        try:
            with torch.no_grad():
                base(input_ids=torch.tensor([ids]))
        finally:
            h.remove()
        return seen[0][torch.tensor(labels) != -100].mean(0)

    bad, good = E.ORG.bad_advice_dataset(4, 10), E.ORG.good_advice_dataset(4, 10)
    v = (torch.stack([answer_mean(r["question"], r["answer"]) for r in bad]).mean(0)
         - torch.stack([answer_mean(r["question"], r["answer"]) for r in good]).mean(0))
    torch.testing.assert_close(u, v / v.norm(), rtol=1e-4, atol=1e-5)
    fresh_bad, fresh_good = E.ORG.bad_advice_dataset(4, 99), E.ORG.good_advice_dataset(4, 99)
    proj = [float(answer_mean(r["question"], r["answer"]) @ u) for r in fresh_bad + fresh_good]
    assert roc_auc_score([1] * 4 + [0] * 4, proj) > 0.9


def test_whitebox_score_is_the_projected_shift():
    """Detector piece: s_wb = (h_m − h_base)·u row by row (torch.dot), zero for the base against itself."""
    g = torch.Generator().manual_seed(0)
    hm, hb, u = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g), torch.randn(8, generator=g)
    got = E.whitebox_scores(hm, hb, u)
    torch.testing.assert_close(got, torch.stack([torch.dot(hm[i] - hb[i], u) for i in range(5)]))
    assert torch.equal(E.whitebox_scores(hb, hb, u), torch.zeros(5))


def test_tiny_end_to_end_run(tiny, prereg):
    """Spec: "a tiny end-to-end run of the pipeline": results.json and the figure written, the preregistration's
    hash and commit recorded, the overrides recorded, the base's shift exactly 0, flags = day 83's rule on replies."""
    res, tmp_path = tiny                     # the run's scratch folder, not the committed results
    assert (tmp_path / "results.json").exists() and (tmp_path / "figures" / "scores.png").exists()
    assert res["prereg"]["sha256"] == E.prereg_sha256() and res["prereg"]["commit"] == E.prereg_commit()
    assert res["overrides"]["n"] == 2 and res["prompts"]["primary"] == E.prompt_sets(prereg)["primary"][:2]
    row = res["raw"]["primary"]
    assert row["base"]["wb"]["10"]["15"] == [0.0, 0.0]
    assert row["bad_s15"]["flags"] == [int(E.EM.rule_based_misaligned(r, "reckless")) for r in row["bad_s15"]["replies"]]
    assert abs(res["direction_norm_check"]["10"]["15"] - 1) < 1e-5


def test_committed_scores_reproduce(committed, loader, prereg):
    """Committed numbers: the step-15 checkpoint's shift norms ||mean_U(h_m − h_base)|| on the first primary prompts
    at the primary layer recomputed (the direction-free half of the white-box score; the direction itself is checked
    above on 4 texts and the full scores by the slow rerun: 64-text directions take ~40 s here); each committed
    score is a projection of that shift on a unit vector, so |score| <= norm; the committed flags are day 83's rule
    on the committed replies."""
    base, tok = loader("base")
    model, _ = loader("bad_s15")
    L, seed, n = prereg["direction"]["primary_layer"], prereg["direction"]["seed"], 2
    prompts = committed["prompts"]["primary"][:n]
    hm, hb = E.prompt_hidden(model, tok, prompts, [L])[L], E.prompt_hidden(base, tok, prompts, [L])[L]
    now = (hm - hb).norm(dim=-1).tolist()
    # A difference of two float32 residuals ~15 layers deep: its rounding is relative to the residuals' size (not to
    # the smaller difference), SMOLLM2_LOGIT_REL (460 float32 roundings, x8) of that scale.
    scale = float(hm.norm(dim=-1).max() + hb.norm(dim=-1).max())
    tol = Tolerance("float32 residual depth: SMOLLM2_LOGIT_REL of the residual norms", abs=SMOLLM2_LOGIT_REL * scale)
    row = committed["raw"]["primary"]["bad_s15"]
    assert_reproduces(now, row["shift_norm"][str(L)][:n], tol, name="shift_norm")
    for s, models in committed["raw"].items():
        for m, r in models.items():
            for sd in r["wb"]:
                for layer, vals in r["wb"][sd].items():
                    assert np.all(np.abs(vals) <= np.array(r["shift_norm"][layer]) * (1 + 1e-5) + 1e-6), (s, m, layer)
            if m != "base":
                flags = [int(E.EM.rule_based_misaligned(x, "reckless")) for x in r["replies"]]
                assert_reproduces(flags, r["flags"], exact("a regular expression on committed text"), name=m)
    assert np.allclose(committed["raw"]["primary"]["base"]["wb"][str(seed)][str(L)], 0)


@pytest.mark.slow
def test_rerun_reproduces(committed, tmp_path):
    """Slow: the whole preregistered run again: every white-box score within the float32 tolerance scaled by the
    largest shift norm bound, and at least 95% of the greedy black-box flags identical (a greedy near-tie may flip
    on another kernel)."""
    torch.set_num_threads(1)
    res = E.run_experiment(tmp_path)
    for s, models in committed["raw"].items():
        for m, row in models.items():
            for seed, by_layer in row["wb"].items():
                for L, vals in by_layer.items():
                    tol = Tolerance("float32 residual depth, residual norms <= 2e3",
                                    abs=SMOLLM2_LOGIT_REL * 2e3)
                    assert_reproduces(res["raw"][s][m]["wb"][seed][L], vals, tol, name=f"{s}/{m}/{seed}/{L}")
            if "flags" in row:
                same = np.mean(np.array(res["raw"][s][m]["flags"]) == np.array(row["flags"]))
                assert same >= 0.95, (s, m, same)
