"""The gate of day 47 (ARENA 1.3.3 SAEs: training an SAE on a language model and evaluating it).

References: TransformerLens's own cache and sae-lens's ActivationsStore.get_activations for the residual stream (and
Hugging Face's hidden states, an independent implementation of SmolLM2); scikit-learn's variance-weighted R² and
sae-lens's ExplainedVarianceCalculator for explained variance; sae-lens's evaluation (get_sparsity_and_variance_metrics
for L0, MSE, explained variance and latent density; get_recons_loss for the CE loss with the SAE spliced in and with
zero ablation) on our SAE loaded into sae-lens's TopKSAE; a forward pass of the Hugging Face model spliced by hand;
and sae-lens's SAETrainer and LanguageModelSAETrainingRunner, run offline on SmolLM2.

The gate trains a small SAE in seconds (16 × 64 tokens, 512 latents, k = 16, 100 steps): its metrics are
poor on purpose (it explains a fifth of the held-out variance); what the gate checks is the code that measures them. Tolerances: activations recomputed
through the same TransformerLens path are bitwise equal; Hugging Face's differ by float32 rounding through 15 blocks
(1e-3 relative to the stream's norm); CE losses through SmolLM2 in float32 within 2·SMOLLM2_LOGIT_REL × the largest
|logit| (the project's derived bound on a SmolLM2 logit's rounding).
"""

import importlib
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from checks import assert_parity
from checks.committed import SMOLLM2_LOGIT_REL, Tolerance, assert_reproduces, exact, statistical

from . import sae_train as S

HERE = Path(__file__).parent
pytestmark = pytest.mark.asset("smollm2-135m-instruct", "wikitext-2", "tinyshakespeare")

fixtures = importlib.import_module("days.035.fixtures")
one_thread_module = fixtures.one_thread_module

GATE = S.TrainConfig(d_sae=512, k=16, batch_size=128, steps=100, lr=3e-3, dead_steps=50)


@pytest.fixture(scope="module")
def model():
    from checks.models import hooked_model

    return hooked_model("smollm2")


@pytest.fixture(scope="module")
def data(model):
    """The gate's corpus: 8 + 8 windows of 64 tokens (WikiText-2 valid, Tiny Shakespeare) to train on, 4 windows of
    WikiText-2 test held out; their layer-15 residual streams."""
    tok = model.tokenizer
    train_tokens = S.mixed_tokens(tok, [("wikitext-valid", 8), ("shakespeare", 8)], seq_len=64)
    eval_tokens = S.corpus_tokens(tok, "wikitext-test", 4, seq_len=64)
    return train_tokens, S.resid_activations(model, train_tokens), eval_tokens, S.resid_activations(model, eval_tokens)


@pytest.fixture(scope="module")
def ours(data):
    """Our TopK SAE (day 46's TopKToySAE through ARENA's optimize), trained on the gate's activations."""
    _, acts, _, _ = data
    sae, log = S.train_ours(S.non_sink(acts), GATE, log_freq=10)
    return sae, log


def test_residual_stream_is_the_hook_and_hugging_faces(model, data, measure):
    """ARENA 1.3.3, the SAE's input is a hook's activation: resid_activations (stopped before block 15) equals
    run_with_cache's blocks.15.hook_resid_pre bit for bit, equals sae-lens's own ActivationsStore.get_activations for
    the same hook, and matches Hugging Face's hidden_states[15] (1e-3 × the stream's norm); position 0 is an
    attention sink (norm > 50 × the median), which sink_mask flags along with nothing else typical."""
    from checks.models import hf_model

    train_tokens, acts, _, _ = data
    tokens = train_tokens[:2, :24]
    ours = S.resid_activations(model, tokens)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[S.HOOK])
    assert torch.equal(ours, cache[S.HOOK])
    first = S.resid_activations(model, tokens, layer=1)          # the earliest layer it serves: block 1's input
    with torch.no_grad():
        _, cache1 = model.run_with_cache(tokens, names_filter=["blocks.1.hook_resid_pre"])
    assert torch.equal(first, cache1["blocks.1.hook_resid_pre"])
    with pytest.raises(ValueError, match="layer ≥ 1"):
        S.resid_activations(model, tokens, layer=0)
    store = activations_store(model, tokens)
    assert torch.equal(ours, store.get_activations(tokens))
    hf, _ = hf_model("smollm2")
    with torch.no_grad():
        hidden = hf(tokens, output_hidden_states=True).hidden_states[S.LAYER]
    norm = ours.norm(dim=-1, keepdim=True)
    report = assert_parity(ours / norm, hidden / norm, atol=1e-3, name="resid vs Hugging Face (relative to ‖x‖)")
    measure("resid_vs_hugging_face.max_rel_err", report.max_abs_err, "≤ 1e-3")
    norms = acts.norm(dim=-1)
    assert (norms[:, 0] > 50 * norms.median()).all()
    mask = S.sink_mask(acts)
    assert mask[:, 0].all() and mask[:, 2:].sum() == 0
    # "exceeds": a norm of exactly ratio × the median is not a sink
    flat = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [3.0, 0.0], [0.0, 3.5]])
    assert S.sink_mask(flat, ratio=3.0).tolist() == [False, False, False, False, True]
    measure("gate.sink_positions", int(mask.sum()), f"of {mask.numel()}")


def test_scaled_sae_reads_d_sae_from_its_config_or_its_weights():
    """ScaledSAE.d_sae: the wrapped SAE's cfg.d_sae when it has one (ours, sae-lens's), else the width of W_enc (an
    SAE with no config, or a config without d_sae)."""
    class Bare(torch.nn.Module):
        def __init__(self, cfg=None):
            super().__init__()
            self.W_enc = torch.nn.Parameter(torch.zeros(4, 7))
            if cfg is not None:
                self.cfg = cfg

    class Cfg:
        d_sae = 9

    assert S.ScaledSAE(Bare(), 1.0).d_sae == 7
    assert S.ScaledSAE(Bare(object()), 1.0).d_sae == 7
    assert S.ScaledSAE(Bare(Cfg()), 1.0).d_sae == 9


def test_corpora_are_consecutive_windows(model):
    """The data: corpus_tokens cuts running text into consecutive windows (skipping k windows gives the same windows
    as the tail of a longer call; Tiny Shakespeare's first window decodes to the file's first words), and
    mixed_tokens interleaves its sources."""
    tok = model.tokenizer
    for source in ("wikitext-test", "shakespeare"):
        long = S.corpus_tokens(tok, source, 5, 16)
        assert torch.equal(S.corpus_tokens(tok, source, 2, 16, skip=3), long[3:])
    from checks.assets import resolve

    text = resolve("tinyshakespeare").read_text(encoding="utf-8")
    assert text.startswith(tok.decode(S.corpus_tokens(tok, "shakespeare", 1, 16)[0]))
    mixed = S.mixed_tokens(tok, [("wikitext-valid", 3), ("shakespeare", 3)], seq_len=16)
    wiki, shake = S.corpus_tokens(tok, "wikitext-valid", 3, 16), S.corpus_tokens(tok, "shakespeare", 3, 16)
    assert torch.equal(mixed, torch.stack([wiki[0], shake[0], wiki[1], shake[1], wiki[2], shake[2]]))


def test_metric_definitions_match_sklearn_and_sae_lens(measure):
    """ARENA 1.3.3's metrics, by definition: explained variance 1 - Σ‖x - x̂‖²/Σ‖x - x̄‖² equals scikit-learn's
    variance-weighted R² and sae-lens's streaming ExplainedVarianceCalculator (fed in uneven batches); L0 counts
    non-zero latents per token; the dead fraction counts latents that are zero on every token."""
    from sae_lens.evals import ExplainedVarianceCalculator
    from sklearn.metrics import r2_score

    g = torch.Generator().manual_seed(0)
    x = 3.0 + torch.randn(500, 24, generator=g, dtype=torch.float64) * torch.linspace(0.5, 2, 24, dtype=torch.float64)
    x_hat = x + 0.4 * torch.randn(500, 24, generator=g, dtype=torch.float64)
    ev = S.explained_variance(x, x_hat)
    ref = r2_score(x.numpy(), x_hat.numpy(), multioutput="variance_weighted")
    calc = ExplainedVarianceCalculator()
    for start, stop in ((0, 7), (7, 300), (300, 500)):
        calc.add_batch(x_hat[start:stop], x[start:stop])
    assert abs(ev - ref) < 1e-12 and abs(ev - calc.compute()) < 1e-10
    measure("explained_variance_vs_sklearn.abs_err", abs(ev - ref), "≤ 1e-12")
    acts = torch.zeros(4, 6)
    acts[0, [1, 2]] = 1.0
    acts[1, [2]] = 0.5
    acts[3, [1, 2, 4]] = 2.0
    assert S.l0_norm(acts) == (2 + 1 + 0 + 3) / 4
    assert S.dead_fraction(acts) == 3 / 6        # latents 0, 3, 5 never fire


def activations_store(model, tokens):
    """sae-lens's own ActivationsStore over pre-tokenized windows (an in-memory dataset, no BOS, float32)."""
    from datasets import Dataset
    from sae_lens.training.activations_store import ActivationsStore

    n, ctx = tokens.shape
    return ActivationsStore(model=model, dataset=Dataset.from_dict({"tokens": tokens.tolist()}), streaming=False,
                            hook_name=S.HOOK, hook_head_index=None, context_size=ctx, d_in=576, n_batches_in_buffer=1,
                            total_training_tokens=n * ctx, store_batch_size_prompts=n, train_batch_size_tokens=n * ctx,
                            prepend_bos=False, normalize_activations="none", device=torch.device("cpu"),
                            dtype="float32")


def test_our_sae_loads_into_sae_lens_and_its_metrics_agree(model, data, ours, measure):
    """ARENA 1.3.3, evaluating an SAE with sae-lens: our SAE trained on scaled activations, with the scale folded in
    by sae-lens's fold_activation_norm_scaling_factor, is sae-lens's TopKSAE computing the same latents and
    reconstruction on raw activations (1e-4 × ‖x‖); sae-lens's own evaluation, get_sparsity_and_variance_metrics,
    run with SmolLM2 and an ActivationsStore over the held-out windows, reports the L0, MSE, explained variance and
    latent density that sae_metrics computes on the same tokens (every position: sae-lens has no sink mask)."""
    from sae_lens.evals import get_sparsity_and_variance_metrics
    from sae_lens.training.activation_scaler import ActivationScaler

    sae, _ = ours
    _, _, eval_tokens, eval_acts = data
    theirs = S.to_sae_lens_inference(sae)
    x = S.non_sink(eval_acts)
    with torch.no_grad():
        a_ours, a_theirs = sae.encode(x), theirs.encode(x)
        scale = x.norm(dim=-1, keepdim=True)
        assert_parity(a_ours / scale, a_theirs / scale, atol=1e-6, name="latents")
        report = assert_parity(sae(x) / scale, theirs(x) / scale, atol=1e-5, name="reconstruction / ‖x‖")
    measure("sae_lens_fold.reconstruction_rel_err", report.max_abs_err, "≤ 1e-5")

    assert torch.equal(activations_store(model, eval_tokens).get_batch_tokens(len(eval_tokens)), eval_tokens)
    metrics, features = get_sparsity_and_variance_metrics(
        theirs, model, activations_store(model, eval_tokens), ActivationScaler(), n_batches=1, compute_l2_norms=False,
        compute_sparsity_metrics=True, compute_variance_metrics=True, compute_featurewise_density_statistics=True,
        eval_batch_size_prompts=len(eval_tokens), model_kwargs={})
    mine = S.sae_metrics(sae, eval_acts.flatten(0, 1))
    assert mine["n_tokens"] == eval_acts.shape[0] * eval_acts.shape[1]
    assert abs(mine["l0"] - metrics["l0"]) < 1e-5
    assert abs(mine["explained_variance"] - metrics["explained_variance"]) < 1e-5
    assert abs(mine["mse"] - metrics["mse"]) < 1e-4 * mine["mse"]
    assert mine["dead_fraction"] == float(np.mean(np.array(features["feature_density"]) == 0))
    measure("gate_sae.explained_variance_vs_sae_lens.abs_err", abs(mine["explained_variance"] - metrics["explained_variance"]),
            "≤ 1e-5")


def ce_tolerance(model, tokens) -> float:
    """Twice a SmolLM2 logit's float32 rounding (SMOLLM2_LOGIT_REL × the largest |logit|): a mean cross-entropy
    moves by at most the largest change of a log-softmax, itself at most twice a logit's."""
    with torch.no_grad():
        return 2 * SMOLLM2_LOGIT_REL * model(tokens).abs().max().item()


@pytest.fixture(scope="module")
def ce_tokens(model, data):
    """Two held-out windows of 32 tokens for the CE checks, and their CE tolerance."""
    tokens = data[2][:2, :32]
    return tokens, ce_tolerance(model, tokens)


def test_ce_recovered_equals_sae_lens_get_recons_loss(model, ce_tokens, ours, measure):
    """ARENA 1.3.3, CE loss recovered: spliced into every position (exclude_sinks=False), our clean, SAE-spliced and
    zero-ablated cross-entropies, and (CE_zero - CE_sae)/(CE_zero - CE_clean), equal sae-lens's get_recons_loss with
    our SAE loaded into its TopKSAE (ce_loss_without_sae, _with_sae, _with_ablation, ce_loss_score), to 1e-3 nats:
    the same model on the same kernels, where only the SAE's arithmetic differs (our scale against sae-lens's folded
    weights, ≤ 1e-5 × ‖x‖ in the reconstruction, measured above)."""
    from sae_lens.evals import get_recons_loss
    from sae_lens.training.activation_scaler import ActivationScaler

    sae, _ = ours
    tokens, _ = ce_tokens
    mine = S.ce_losses(model, sae, tokens, exclude_sinks=False)
    theirs = get_recons_loss(S.to_sae_lens_inference(sae), model, ActivationScaler(), tokens, compute_kl=False,
                             compute_ce_loss=True)
    tol = 1e-3  # the same model and kernels: only the SAE's scale (ours) vs folded weights (sae-lens) differ, ≤ 1e-5·‖x‖
    for ours_key, their_key in (("ce_clean", "ce_loss_without_sae"), ("ce_sae", "ce_loss_with_sae"),
                                ("ce_zero", "ce_loss_with_ablation")):
        assert abs(mine[ours_key] - theirs[their_key].mean().item()) <= tol, ours_key
    score = (theirs["ce_loss_with_ablation"].mean() - theirs["ce_loss_with_sae"].mean()) / (
        theirs["ce_loss_with_ablation"].mean() - theirs["ce_loss_without_sae"].mean())
    err = abs(mine["ce_loss_recovered"] - score.item())
    assert err <= 2 * tol / (mine["ce_zero"] - mine["ce_clean"])
    measure("ce_recovered_all_positions_vs_sae_lens.abs_err", err, "≤ 2·tol / (CE_zero − CE_clean)")


def test_ce_recovered_without_sinks_equals_a_hugging_face_splice(model, ce_tokens, ours, measure):
    """ARENA 1.3.3, CE loss recovered as this day measures it (the sinks left alone): equal to an independent
    computation on Hugging Face's SmolLM2, whose layer 15 gets the SAE's reconstruction (or zeros) at every non-sink
    position through a forward pre-hook, with torch's cross_entropy; and the ordering a useful SAE must show,
    CE_clean < CE_sae < CE_zero."""
    from checks.models import hf_model

    sae, _ = ours
    tokens, tol = ce_tokens
    mine = S.ce_losses(model, sae, tokens)
    hf, _ = hf_model("smollm2")

    def run(kind):
        def pre_hook(module, args, kwargs):
            h = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            keep = S.sink_mask(h)[..., None]
            new = torch.where(keep, h, sae(h) if kind == "sae" else torch.zeros_like(h))
            if "hidden_states" in kwargs:
                kwargs["hidden_states"] = new
                return args, kwargs
            return (new,) + args[1:], kwargs
        handle = hf.model.layers[S.LAYER].register_forward_pre_hook(pre_hook, with_kwargs=True) if kind else None
        try:
            with torch.no_grad():
                logits = hf(tokens).logits
        finally:
            if handle:
                handle.remove()
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()).item()

    ref = {"ce_clean": run(None), "ce_sae": run("sae"), "ce_zero": run("zero")}
    for key, value in ref.items():
        assert abs(mine[key] - value) <= tol, (key, mine[key], value)
    assert mine["ce_clean"] < mine["ce_sae"] < mine["ce_zero"]
    recovered = (ref["ce_zero"] - ref["ce_sae"]) / (ref["ce_zero"] - ref["ce_clean"])
    measure("ce_recovered_vs_hugging_face.abs_err", abs(recovered - mine["ce_loss_recovered"]))
    measure("gate_sae.ce_loss_recovered", mine["ce_loss_recovered"])


def test_sae_lens_trainer_trains_on_our_batches(data, ours, measure):
    """ARENA 1.3.3, training with sae-lens: its SAETrainer (TopKTrainingSAE, W&B off) consumes exactly our batch
    iterator (steps × batch samples) and, with the scale folded back, reconstructs the raw activations: after 100
    steps both SAEs explain more than 30% of the variance of the tokens they trained on (an untrained one explains
    none) and more of the held-out tokens' than zero."""
    _, acts, _, eval_acts = data
    x, x_eval = S.non_sink(acts), S.non_sink(eval_acts)
    theirs, trainer = S.train_sae_lens(x, GATE)
    assert trainer.n_training_samples == GATE.steps * GATE.batch_size and trainer.n_training_steps == GATE.steps
    assert theirs.cfg.metadata.hook_name == S.HOOK and theirs.cfg.d_sae == GATE.d_sae and theirs.cfg.k == GATE.k
    sae, log = ours
    assert log["L_reconstruction"][-1] < 0.5 * log["L_reconstruction"][0]
    for who, model in (("ours", sae), ("sae_lens", theirs)):
        train_ev = S.sae_metrics(model, x)["explained_variance"]
        eval_ev = S.sae_metrics(model, x_eval)["explained_variance"]
        measure(f"gate_sae.explained_variance.{who}", eval_ev)
        assert train_ev > 0.3 and eval_ev > 0, (who, train_ev, eval_ev)


def test_language_model_runner_runs_offline(model, data):
    """ARENA 1.3.3's route, LanguageModelSAETrainingRunner, offline: given our HookedTransformer (override_model) and
    an in-memory pre-tokenized dataset (override_dataset), with W&B off and nothing written (no output or checkpoint
    path), it trains a TopK SAE on SmolLM2's blocks.15.hook_resid_pre; the activations its store serves are the ones
    resid_activations computes."""
    from datasets import Dataset
    from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, TopKTrainingSAEConfig
    from sae_lens.config import LoggingConfig

    train_tokens, acts, _, _ = data
    cfg = LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(d_in=576, d_sae=64, k=4), model_name="smollm2", hook_name=S.HOOK,
        dataset_path="", is_dataset_tokenized=True, streaming=False, context_size=32, prepend_bos=False,
        seqpos_slice=(1, None), training_tokens=2 * 2 * 31, train_batch_size_tokens=31, store_batch_size_prompts=2,
        n_batches_in_buffer=2, device="cpu", logger=LoggingConfig(log_to_wandb=False), output_path=None,
        checkpoint_path=None, verbose=False)
    rows = train_tokens[:4, :32]
    runner = LanguageModelSAETrainingRunner(cfg, override_dataset=Dataset.from_dict({"tokens": rows.tolist()}),
                                            override_model=model)
    store_acts = runner.activations_store.get_activations(rows[:2])
    assert torch.equal(store_acts, S.resid_activations(model, rows[:2])[:, 1:])
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        sae = runner.run()
    finally:                                       # the runner installs its own SIGINT/SIGTERM handlers: restore ours
        for s, h in handlers.items():
            signal.signal(s, h)
    assert sae.cfg.metadata.hook_name == S.HOOK and sae.W_dec.shape == (64, 576)
    assert runner.activations_store.n_dataset_processed > 0


def test_trained_sae_for_any_layer_is_cached(model):
    """For later days (49: the deceptive prompts of day 41): trained_sae(layer) returns an SAE on
    blocks.{layer}.hook_resid_pre, trained on that layer's activations the first time and read back from the user
    cache afterwards (the same weights, scale and hook); it reconstructs its own training activations better than
    their mean does. Shown on a tiny configuration at layer 4 (4 windows, 30 steps)."""
    from checks.assets import cache_dir

    tiny = S.TrainConfig(d_sae=128, k=8, batch_size=64, steps=30, lr=3e-3, dead_steps=20)
    parts = [("wikitext-valid", 4)]
    path = S.sae_cache_path(tiny, "smollm2", 4, parts)
    assert cache_dir().parent in path.parents and path != S.sae_cache_path(tiny, "smollm2", 5, parts)
    path.unlink(missing_ok=True)
    first = S.trained_sae(4, "smollm2", tiny, parts)
    assert path.exists()
    again = S.trained_sae(4, "smollm2", tiny, parts)
    assert first.hook_name == again.hook_name == "blocks.4.hook_resid_pre"
    assert again.scale == first.scale
    for name, tensor in first.sae.state_dict().items():
        assert torch.equal(tensor, again.sae.state_dict()[name]), name
    _, acts = S.cached_activations("smollm2", parts, 4)
    assert S.sae_metrics(again, S.non_sink(acts))["explained_variance"] > 0.1


def test_results_json_is_current(model, committed, measure):
    """results.json (cited by the post) comes from today's code: the configurations, corpora and bars exactly as
    defined here; both committed SAEs clear the bars (explained variance ≥ 0.75, CE loss recovered ≥ 0.8, dead ≤ 10%)
    with L0 = k; each headline metric consistent with the others (recovered = (zero - sae)/(zero - clean)); the clean
    cross-entropy of the first two held-out windows recomputed now within twice a logit's float32 rounding; the
    figures exist."""
    from dataclasses import asdict

    r = committed
    assert r["headline_config"] == asdict(S.HEADLINE) and r["train_parts"] == [list(p) for p in S.TRAIN_PARTS]
    assert r["eval"] == S.EVAL and r["bars"] == S.BARS and r["frontier_k"] == S.FRONTIER_K
    for who in ("ours", "sae_lens"):
        m = r["metrics"][who]
        rec = (m["ce_zero"] - m["ce_sae"]) / (m["ce_zero"] - m["ce_clean"])
        assert_reproduces(rec, m["ce_loss_recovered"], exact("the same three numbers"), name=f"{who}.recovered")
        for key, bar in S.BARS.items():              # the committed headline clears the day's bars
            measure(f"committed.{who}.{key}", m[key], f"{'≤' if key == 'dead_fraction' else '≥'} {bar}")
            assert (m[key] <= bar) if key == "dead_fraction" else (m[key] >= bar), (who, key, m[key])
        assert m["l0"] == S.HEADLINE.k
    tokens = S.corpus_tokens(model.tokenizer, r["eval"]["source"], 2)
    with torch.no_grad():
        loss = S.token_losses(model(tokens), tokens).mean(-1)
    assert_reproduces(loss.tolist(), r["ce_clean_first_two"],
                      Tolerance(abs=ce_tolerance(model, tokens), reason="a mean CE through SmolLM2 in float32"),
                      name="ce_clean_first_two")
    for name in ("frontier", "metrics", "training"):
        assert (HERE / f"figures/{name}.png").stat().st_size > 10_000


@pytest.mark.slow
def test_experiment_reproduces_the_headline(tmp_path, committed, measure):
    """(slow: about 10 CPU minutes with the activations cached in the user cache, 35 wall minutes on a busy 2-core
    machine) The full experiment: ours and sae-lens's TopK SAEs (1 152 latents, k = 32) on SmolLM2's layer-15 residual
    stream, rerun, reproduce every number the post cites within a float32 training run's spread (statistical: 0.01 in
    explained variance and CE recovered, 0.02 in the dead fraction, 10% relative in MSE, exactly k for L0), and so
    clear the day's bars up to that spread (ours cleared explained variance ≥ 0.75 by 0.003 in the committed run: a
    rerun on other kernels may land a little under it, which the spread allows and this test reports)."""
    r = S.run_experiment(tmp_path)
    spread = {"explained_variance": 0.01, "ce_loss_recovered": 0.01, "dead_fraction": 0.02}
    for who in ("ours", "sae_lens"):
        m, then = r["metrics"][who], committed["metrics"][who]
        for key, bar in S.BARS.items():
            measure(f"slow.{who}.{key}", m[key], f"{'≤' if key == 'dead_fraction' else '≥'} {bar} (± {spread[key]})")
            assert (m[key] <= bar + spread[key]) if key == "dead_fraction" else (m[key] >= bar - spread[key])
        for key, tol in spread.items():
            assert_reproduces(m[key], then[key], statistical(tol, why="a float32 SAE training run"), name=f"{who}.{key}")
        assert_reproduces(m["mse"], then["mse"], statistical(0.0, rel=0.1, why="a float32 SAE training run"),
                          name=f"{who}.mse")
        assert m["l0"] == then["l0"] == S.HEADLINE.k
    for now, then in zip(r["frontier"], committed["frontier"]):
        assert now["k"] == then["k"] and now["l0"] == then["l0"]
        assert_reproduces(now["explained_variance"], then["explained_variance"],
                          statistical(0.01, why="a float32 SAE training run"), name=f"frontier k={now['k']}")
