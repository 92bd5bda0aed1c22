"""The gate of day 25: the RLHF pipeline, PPO with a KL penalty on a language model (ARENA 2.4 RLHF).

Spec: https://learn.arena.education/chapter2_rl/04_rlhf/ (get_logprobs, calc_kl_penalty,
TransformerWithValueHead, get_optimizer, compute_advantages, normalize_reward, LoRA, the RLHF trainer),
Ziegler et al. (2019) / Ouyang et al. (2022) for the objective E[r] − β KL(π ‖ π_ref) and Hu et al.
(2021) for LoRA.
References: torch.nn.functional.cross_entropy and torch.distributions (Categorical.log_prob,
kl_divergence) for log-probabilities and KL; the closed-form gradient of a KL in the logits;
exhaustive enumeration of every completion for the chain rule of KL; ARENA's one-step advantage
formula and an explicit double sum for GAE; day 34's KV-cached sampler for the alignment of
generation and scoring; Hugging Face's own language-model loss (``labels=``) on SmolLM2-135M-Instruct;
TransformerLens (run_with_cache at the hook point, a HookedTransformer carrying day 32's weights) for
the value head; separate torch.optim.Adam optimisers and Adam(maximize=True) for get_optimizer; peft
(LoraConfig, get_peft_model, merge_and_unload) and central differences for LoRA.
"""

import importlib
import itertools
import json
import math
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Categorical, kl_divergence

from checks import assert_parity, grad_check
from checks.committed import Tolerance, assert_reproduces, float_ops

from . import rlhf_pipeline as R

sampling = importlib.import_module("days.034.sampling")
ppo_theory = importlib.import_module("days.021.ppo_theory")
gpt2 = importlib.import_module("days.032.gpt2")
pytestmark = pytest.mark.usefixtures("one_thread")
HERE = Path(__file__).parent
F64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def tiny_pair(d_vocab=4, seed=0):
    """Two different float64 tiny transformers (day 34's), as policy backbone and reference."""
    return sampling.random_tiny_model(d_vocab, seed=seed), sampling.random_tiny_model(d_vocab, seed=seed + 1)


# ---------------------------------------------------------------- log-probabilities


def test_get_logprobs_matches_cross_entropy_and_categorical(measure):
    """get_logprobs = log π(x_{P+t} | x_<P+t) read from the logits one position earlier: equal to
    −F.cross_entropy and to Categorical.log_prob on logits[:, P−1:−1] (float64, 1e-12); the prompt's
    tokens and the last position's logits (which predict beyond the sequence) do not enter."""
    logits = torch.randn(3, 9, 11, generator=gen(), dtype=F64)
    tokens = torch.randint(0, 11, (3, 9), generator=gen(1))
    P = 4
    ours = R.get_logprobs(logits, tokens, P)
    assert ours.shape == (3, 5)
    ce = -F.cross_entropy(logits[:, P - 1:-1].reshape(-1, 11), tokens[:, P:].reshape(-1), reduction="none").view(3, 5)
    report = assert_parity(ours, ce, atol=1e-12, name="logprobs_vs_cross_entropy")
    assert_parity(ours, Categorical(logits=logits[:, P - 1:-1]).log_prob(tokens[:, P:]), atol=1e-12)
    measure("logprobs_vs_cross_entropy.max_abs_err", report.max_abs_err, "≤ 1e-12")
    changed_tokens, changed_logits = tokens.clone(), logits.clone()
    changed_tokens[:, :P] = (tokens[:, :P] + 1) % 11
    changed_logits[:, -1] += torch.randn(3, 11, generator=gen(2), dtype=F64)
    assert torch.equal(R.get_logprobs(logits, changed_tokens, P), ours)
    assert torch.equal(R.get_logprobs(changed_logits, tokens, P), ours)


def test_generation_and_scoring_agree(measure):
    """The log-probability the sampler used for each generated token (day 34's KV-cached generate,
    its per-step logits) equals get_logprobs on a fresh full forward of the finished sequence (1e-10 in
    float64): the scoring is aligned with the sampling, token by token."""
    model = sampling.random_tiny_model(d_vocab=6, seed=3)
    prompt = torch.randint(0, 6, (4, 3), generator=gen())
    ids, step_logits = sampling.generate(model, prompt, 8, use_cache=True, generator=gen(1), return_logits=True)
    used = torch.stack(step_logits, dim=1).log_softmax(-1).gather(-1, ids[:, 3:, None])[..., 0]
    with torch.no_grad():
        rescored = R.get_logprobs(model(ids), ids, 3)
    report = assert_parity(rescored, used, atol=1e-10, name="rescoring_vs_sampling")
    measure("rescoring_vs_sampling.max_abs_err", report.max_abs_err, "≤ 1e-10")


# ---------------------------------------------------------------- the KL penalty


def test_kl_penalty_matches_torch_distributions(measure):
    """per_token_kl = KL(π_θ ‖ π_ref) = kl_divergence(Categorical(π_θ), Categorical(π_ref)) =
    F.kl_div(log π_ref, log π_θ, log_target) summed over the vocabulary, at the generating positions
    only (float64, 1e-12); kl_penalty = β · its mean. It is ≥ 0, 0 for identical logits and for logits
    shifted by a constant per position, and the reference receives no gradient."""
    P = 3
    logits = torch.randn(4, 10, 7, generator=gen(), dtype=F64) * 2
    ref = torch.randn(4, 10, 7, generator=gen(1), dtype=F64) * 2
    ours = R.per_token_kl(logits, ref, P)
    theirs = kl_divergence(Categorical(logits=logits[:, P - 1:-1]), Categorical(logits=ref[:, P - 1:-1]))
    report = assert_parity(ours, theirs, atol=1e-12, name="kl_vs_torch")
    kl_div = F.kl_div(ref[:, P - 1:-1].log_softmax(-1), logits[:, P - 1:-1].log_softmax(-1), log_target=True,
                      reduction="none").sum(-1)
    assert_parity(ours, kl_div, atol=1e-12)
    measure("kl_vs_torch.max_abs_err", report.max_abs_err, "≤ 1e-12")
    assert (ours >= 0).all()
    assert R.kl_penalty(logits, ref, 0.7, P).item() == pytest.approx(0.7 * theirs.mean().item(), abs=1e-13)
    shifted = logits + torch.randn(4, 10, 1, generator=gen(2), dtype=F64)
    assert R.per_token_kl(logits, shifted, P).abs().max() < 1e-13
    ref_leaf = ref.clone().requires_grad_(True)
    logits_leaf = logits.clone().requires_grad_(True)
    R.kl_penalty(logits_leaf, ref_leaf, 0.7, P).backward()
    assert ref_leaf.grad is None and logits_leaf.grad.abs().sum() > 0


def test_kl_gradient_has_its_closed_form(measure):
    """∂KL(p ‖ q)/∂z_i = p_i[(log p_i − log q_i) − KL(p ‖ q)] for p = softmax(z), the derivation in the
    post: autograd's gradient of per_token_kl equals it (float64, 1e-12)."""
    z = torch.randn(2, 6, 5, generator=gen(), dtype=F64, requires_grad=True)
    ref = torch.randn(2, 6, 5, generator=gen(1), dtype=F64)
    (grad,) = torch.autograd.grad(R.per_token_kl(z, ref, 1).sum(), z)
    logp, logq = z.detach()[:, :-1].log_softmax(-1), ref[:, :-1].log_softmax(-1)
    kl = (logp.exp() * (logp - logq)).sum(-1, keepdim=True)
    closed = logp.exp() * ((logp - logq) - kl)
    report = assert_parity(grad[:, :-1], closed, atol=1e-12, name="kl_gradient_vs_closed_form")
    assert torch.equal(grad[:, -1], torch.zeros_like(grad[:, -1]))
    measure("kl_gradient_vs_closed_form.max_abs_err", report.max_abs_err, "≤ 1e-12")


def test_summed_per_token_kl_is_the_sequence_kl(measure):
    """The chain rule of KL: for every one of the 4³ = 64 completions of length 3, the exact
    sequence-level KL(π_θ ‖ π_ref) = Σ_x π_θ(x) log(π_θ(x)/π_ref(x)) (enumerated, with log π(x) =
    Σ_t get_logprobs) equals E_{x~π_θ}[Σ_t per_token_kl] (enumerated too) to 1e-12; and sampled
    completions estimate it within 4 standard errors (what the trainer logs)."""
    policy, reference = tiny_pair(d_vocab=4)
    prompt = torch.tensor([[1, 2]])
    completions = torch.tensor(list(itertools.product(range(4), repeat=3)))
    ids = torch.cat([prompt.repeat(64, 1), completions], dim=1)
    with torch.no_grad():
        logits, ref_logits = policy(ids), reference(ids)
    logp_seq = R.get_logprobs(logits, ids, 2).sum(-1)
    logq_seq = R.get_logprobs(ref_logits, ids, 2).sum(-1)
    prob = logp_seq.exp()
    assert prob.sum().item() == pytest.approx(1.0, abs=1e-12)
    exact = (prob * (logp_seq - logq_seq)).sum()
    chain = (prob * R.per_token_kl(logits, ref_logits, 2).sum(-1)).sum()
    measure("sequence_kl.exact", exact)
    measure("sequence_kl.chain_rule_abs_err", abs(exact - chain), "≤ 1e-12")
    assert abs(exact - chain) < 1e-12
    sampled = sampling.generate(policy, prompt.repeat(4000, 1), 3, generator=gen(5))
    with torch.no_grad():
        estimate = R.per_token_kl(policy(sampled), reference(sampled), 2).sum(-1)
    z = (estimate.mean() - exact) / (estimate.std() / math.sqrt(len(estimate)))
    measure("sequence_kl.sampled_z", z, "|z| < 4")
    assert abs(z) < 4


# ---------------------------------------------------------------- the value head


def test_value_head_reads_the_features_the_unembedding_reads():
    """DemoPolicy: the hidden state h is LN_final of the last residual (unembedding h gives exactly the
    model's logits), the values are the head's MLP d_model → 4·d_model → 1 applied to h at every
    position, and a forward returns (logits, values) of shapes (batch, seq, d_vocab), (batch, seq)."""
    backbone = sampling.random_tiny_model(d_vocab=6, seed=0)
    policy = R.DemoPolicy(backbone, backbone.cfg.d_model).double()
    tokens = torch.randint(0, 6, (3, 7), generator=gen())
    with torch.no_grad():
        hidden, logits = policy.features(tokens)
        out_logits, values = policy(tokens)
        assert torch.equal(logits, backbone(tokens)) and torch.equal(out_logits, logits)
        assert_parity(values, policy.value_head.net(hidden)[..., 0], atol=0)
    assert values.shape == (3, 7)
    linears = [m for m in policy.value_head.net if isinstance(m, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(16, 64), (64, 1)]


# ---------------------------------------------------------------- advantages and rewards


def test_one_step_advantages_are_arenas_formula(measure):
    """With γ = 1, λ = 0: Â = cat(V[:, P:−1], R) − V[:, P−1:−1] (ARENA's compute_advantages, written
    out), and the targets are Â + V(s_t) (float64, 1e-12)."""
    values = torch.randn(5, 12, generator=gen(), dtype=F64)
    rewards = torch.randn(5, generator=gen(1), dtype=F64)
    P = 4
    adv, ret = R.compute_advantages(values, rewards, P, gamma=1.0, lam=0.0)
    arena = torch.cat([values[:, P:-1], rewards[:, None]], dim=-1) - values[:, P - 1:-1]
    report = assert_parity(adv, arena, atol=1e-12, name="advantages_vs_arena")
    assert_parity(ret, adv + values[:, P - 1:-1], atol=1e-15)
    measure("advantages_vs_arena.max_abs_err", report.max_abs_err, "≤ 1e-12")


def test_gae_advantages_match_the_explicit_sum():
    """For any γ, λ: Â_t = Σ_l (γλ)^l δ_{t+l} with δ_t = r_t + γ V(s_{t+1}) − V(s_t), r = R only at the last
    step and V(s_G) = 0, written as a double loop (float64, 1e-12); λ = 1, γ = 1 gives R − V(s_t)."""
    values = torch.randn(3, 10, generator=gen(), dtype=F64)
    rewards = torch.randn(3, generator=gen(1), dtype=F64)
    P, G = 3, 7
    for gamma, lam in [(0.9, 0.8), (1.0, 0.95), (0.5, 1.0)]:
        adv, _ = R.compute_advantages(values, rewards, P, gamma, lam)
        v = values[:, P - 1:-1]
        v_next = torch.cat([v[:, 1:], torch.zeros(3, 1, dtype=F64)], dim=1)
        r = torch.zeros(3, G, dtype=F64)
        r[:, -1] = rewards
        delta = r + gamma * v_next - v
        explicit = torch.stack([sum((gamma * lam) ** (l - t) * delta[:, l] for l in range(t, G)) for t in range(G)], 1)
        assert_parity(adv, explicit, atol=1e-12)
    adv, _ = R.compute_advantages(values, rewards, P, 1.0, 1.0)
    assert_parity(adv, rewards[:, None] - values[:, P - 1:-1], atol=1e-12)


def test_normalize_reward_closed_form(measure):
    """ARENA's normalize_reward: (r − mean r) / (std r + eps), eps = 1e-5: equal to the closed form written in
    numpy with the population std (float64, 1e-15); the result has mean 0 and population std 1 − eps/std; a
    constant batch (std 0) gives zeros, finite; a batch of one gives 0 (where ARENA's std, torch's unbiased
    default, is NaN). ARENA's character-count reward counts the character."""
    r = torch.tensor([1.0, 2.0, 4.0, 9.0, -3.5], dtype=F64)
    ours = R.normalize_reward(r)
    a = r.numpy()
    report = assert_parity(ours, (a - a.mean()) / (a.std(ddof=0) + 1e-5), atol=1e-15, name="normalize_reward")
    measure("normalize_reward_vs_numpy.max_abs_err", report.max_abs_err, "≤ 1e-15")
    std = a.std(ddof=0)
    assert abs(ours.mean().item()) < 1e-15
    assert ours.std(unbiased=False).item() == pytest.approx(std / (std + 1e-5), rel=1e-14)
    for constant in (torch.full((6,), 3.25, dtype=F64), torch.tensor([7.0], dtype=F64)):
        out = R.normalize_reward(constant)
        assert torch.isfinite(out).all() and torch.equal(out, torch.zeros_like(out))
    with pytest.warns(UserWarning, match="degrees of freedom"):
        assert torch.isnan(torch.tensor([7.0]).std())  # ARENA's std (torch's unbiased default) of one reward
    assert R.char_count_reward(["a.b.", "", "..."]).tolist() == [2.0, 0.0, 3.0]


# ---------------------------------------------------------------- ARENA's TransformerWithValueHead (TransformerLens)


def tiny_demo_policy(d_vocab=8, seed=0) -> R.DemoPolicy:
    """Day 34's float64 tiny transformer under a DemoPolicy, its value head's weights random (seeded)."""
    backbone = sampling.random_tiny_model(d_vocab, seed=seed)
    torch.manual_seed(seed + 100)
    return R.DemoPolicy(backbone, backbone.cfg.d_model).double()


def test_hooked_transformer_from_demo_is_the_same_model(measure):
    """hooked_transformer_from_demo: a TransformerLens HookedTransformer carrying a DemoTransformer's weights (day
    32's parameter names are TransformerLens's, so every parameter loads by name) computes the same logits
    (float64, 1e-12: two implementations of the same float64 forward)."""
    demo = sampling.random_tiny_model(d_vocab=8, seed=0)
    hooked = R.hooked_transformer_from_demo(demo)
    assert {n for n, _ in hooked.named_parameters()} == {n for n, _ in demo.named_parameters()}
    tokens = torch.randint(0, 8, (3, 9), generator=gen())
    with torch.no_grad():
        report = assert_parity(hooked(tokens), demo(tokens), atol=1e-12, name="hooked_vs_demo")
    measure("hooked_transformer_vs_demo.max_abs_err", report.max_abs_err, "≤ 1e-12")


def test_transformer_with_value_head_hooks_the_final_residual_stream(measure):
    """ARENA's TransformerWithValueHead: a HookedTransformer whose forward runs with a hook on
    ln_final.hook_normalized feeding the value head (an MLP d_model → 4·d_model → 1): forward returns (logits,
    values); the logits are exactly the base model's; the values are exactly the head applied to the activation
    TransformerLens's own run_with_cache records at that hook point; the hook is removed after the call. The
    values' gradient reaches the head and the base model (a shared backbone); the logits' does not reach the head."""
    model = R.TransformerWithValueHead(R.hooked_transformer_from_demo(sampling.random_tiny_model(d_vocab=8, seed=1)))
    tokens = torch.randint(0, 8, (2, 7), generator=gen(3))
    logits, values = model(tokens)
    assert logits.shape == (2, 7, 8) and values.shape == (2, 7)
    with torch.no_grad():
        reference_logits, cache = model.base_model.run_with_cache(tokens)
        assert torch.equal(logits.detach(), model.base_model(tokens)) and torch.equal(logits.detach(), reference_logits)
        expected = model.value_head.net(cache[R.VALUE_HEAD_HOOK])[..., 0]
    report = assert_parity(values.detach(), expected, atol=0, name="values_vs_cache")
    measure("value_head_vs_run_with_cache.max_abs_err", report.max_abs_err, "= 0")
    assert all(not hp.fwd_hooks for hp in model.base_model.hook_dict.values())
    linears = [m for m in model.value_head.net if isinstance(m, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(16, 64), (64, 1)]
    head, base = list(model.value_head.parameters()), list(model.base_model.parameters())
    grads = torch.autograd.grad(values.sum(), head + base, allow_unused=True, retain_graph=True)
    assert all(g is not None for g in grads[:len(head)]) and sum(g.abs().sum() for g in grads[len(head):] if g is not None) > 0
    assert all(g is None for g in torch.autograd.grad(logits.sum(), head, allow_unused=True))


def test_transformer_with_value_head_equals_the_days_demo_policy(measure):
    """ARENA's hook point reads the final LayerNorm's output before its scale w and bias b (TransformerLens folds them
    into W_U for GPT-2); the day's DemoPolicy reads after them. Folding w and b into the head's first layer
    (W₁' = W₁ diag(w), b₁' = b₁ + W₁ b: TransformerWithValueHead.from_demo_policy) makes the two compute the same
    logits and values (float64, 1e-12), and the trainer's rollout the same: the same samples and, to 1e-10, the
    same log-probs, values, advantages and reference logits."""
    demo = tiny_demo_policy()
    with torch.no_grad():
        demo.backbone.ln_final.w.mul_(1.5).add_(0.1)  # a non-trivial final LayerNorm, so the fold matters
        demo.backbone.ln_final.b.add_(0.3)
    hooked = R.TransformerWithValueHead.from_demo_policy(demo)
    tokens = torch.randint(0, 8, (3, 9), generator=gen(4))
    with torch.no_grad():
        (l1, v1), (l2, v2) = demo(tokens), hooked(tokens)
    report = assert_parity(v2, v1, atol=1e-12, name="values")
    assert_parity(l2, l1, atol=1e-12, name="logits")
    measure("transformer_with_value_head_vs_demo_policy.values.max_abs_err", report.max_abs_err, "≤ 1e-12")
    memories = []
    for policy in (demo, hooked):
        args = R.RLHFArgs(prefix="ab", gen_len=6, total_phases=1, batch_size=8, num_minibatches=2, warmup_steps=1)
        trainer = R.RLHFTrainer(args, policy, R.copy_backbone(demo.backbone), R.char_count_reward, _encode, _decode)
        memories.append(trainer.rollout_phase()[0])
    a, b = memories
    assert torch.equal(a.sample_ids, b.sample_ids)
    for name in ("logprobs", "advantages", "returns", "ref_logits"):
        assert_parity(getattr(b, name), getattr(a, name), atol=1e-10, name=name)


def test_trainer_trains_a_transformer_with_value_head():
    """The RLHF trainer takes ARENA's TransformerWithValueHead (and a HookedTransformer as the frozen reference): a
    learning phase moves both the value head and the base model; the reference stays as it was."""
    policy = R.TransformerWithValueHead(R.hooked_transformer_from_demo(sampling.random_tiny_model(d_vocab=8, seed=2)))
    reference = R.hooked_transformer_from_demo(sampling.random_tiny_model(d_vocab=8, seed=2))
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    ref_before = [p.detach().clone() for p in reference.parameters()]
    args = R.RLHFArgs(prefix="ab", gen_len=6, total_phases=1, batch_size=8, num_minibatches=2, warmup_steps=1, kl_coef=0.1)
    trainer = R.RLHFTrainer(args, policy, reference, R.char_count_reward, _encode, _decode)
    trainer.train()
    moved = {n for n, p in policy.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("value_head.") for n in moved) and any(n.startswith("backbone.") for n in moved)
    assert all(torch.equal(p, q) for p, q in zip(reference.parameters(), ref_before))


# ---------------------------------------------------------------- ARENA's get_optimizer


def test_get_optimizer_groups_partition_the_model():
    """ARENA's get_optimizer(model, base_lr, head_lr): two parameter groups, the base model at base_lr and the value
    head at head_lr, that together hold each of the model's parameters exactly once, for the day's DemoPolicy and
    for ARENA's TransformerWithValueHead; the trainer's optimizer is get_optimizer's."""
    for policy in (tiny_demo_policy(), R.TransformerWithValueHead(R.hooked_transformer_from_demo(sampling.random_tiny_model(8)))):
        optimizer = R.get_optimizer(policy, 3e-4, 3e-3)
        base, head = optimizer.param_groups
        assert (base["lr"], head["lr"]) == (3e-4, 3e-3)
        ids = [id(p) for g in (base, head) for p in g["params"]]
        assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in policy.parameters()}
        assert {id(p) for p in head["params"]} == {id(p) for p in policy.value_head.parameters()}
    trainer = char_trainer()
    assert [len(g["params"]) for g in trainer.optimizer.param_groups] == [
        len(list(trainer.policy.backbone.parameters())), len(list(trainer.policy.value_head.parameters()))]


def test_get_optimizer_steps_like_two_adams_and_like_arenas_maximize():
    """Three steps of get_optimizer on the loss equal, bit for bit, (a) two separate torch.optim.Adam, one per group
    at its own lr, and (b) ARENA's sign convention: Adam(maximize=True) on the objective = −loss (negating a
    gradient is exact), for a loss that reaches both groups."""
    policies = [tiny_demo_policy() for _ in range(3)]
    tokens = torch.randint(0, 8, (4, 6), generator=gen(6))
    ours = R.get_optimizer(policies[0], 1e-2, 3e-2)
    separate = [torch.optim.Adam(list(policies[1].backbone.parameters()), lr=1e-2, eps=1e-5),
                torch.optim.Adam(list(policies[1].value_head.parameters()), lr=3e-2, eps=1e-5)]
    maximize = torch.optim.Adam([{"params": list(policies[2].backbone.parameters()), "lr": 1e-2},
                                 {"params": list(policies[2].value_head.parameters()), "lr": 3e-2}], eps=1e-5, maximize=True)
    for _ in range(3):
        for policy, optimizers, sign in ((policies[0], [ours], 1), (policies[1], separate, 1), (policies[2], [maximize], -1)):
            logits, values = policy(tokens)
            loss = logits.log_softmax(-1)[..., 0].mean() + values.pow(2).mean()
            for opt in optimizers:
                opt.zero_grad()
            (sign * loss).backward()
            for opt in optimizers:
                opt.step()
    for other in policies[1:]:
        assert all(torch.equal(p, q) for p, q in zip(policies[0].parameters(), other.parameters()))
    assert not torch.equal(policies[0].value_head.net[0].weight, tiny_demo_policy().value_head.net[0].weight)


# ---------------------------------------------------------------- LoRA


class _OneLinear(torch.nn.Module):
    """A model with one linear layer named ``proj`` (for peft's target_modules)."""

    def __init__(self, linear):
        super().__init__()
        self.proj = linear

    def forward(self, x):
        return self.proj(x)


def _peft_twin(linear, ours: "R.LoRALinear", r, alpha):
    """peft's LoRA (LoraConfig on the same base linear) carrying our A and B."""
    import copy

    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_OneLinear(copy.deepcopy(linear)), LoraConfig(r=r, lora_alpha=alpha, target_modules=["proj"],
                                                                          lora_dropout=0.0))
    layer = model.base_model.model.proj
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(ours.lora_A)
        layer.lora_B["default"].weight.copy_(ours.lora_B)
    return model


@pytest.mark.parametrize("in_features, out_features, r, alpha", [(12, 7, 4, 8), (20, 33, 2, 16)])
def test_lora_linear_matches_peft(in_features, out_features, r, alpha, measure):
    """LoRA (Hu et al., 2021; ARENA's LoRA exercises): y = W x + b + (α/r)·B A x with W, b frozen, A (r × in) random
    and B (out × r) zero at init, so the layer starts as the base layer exactly. Against peft (a LoraConfig on the
    same base linear carrying the same A and B, float64): identical outputs at init and with a trained (random)
    B; identical trainable counts, r·(in + out); merging (W' = W + (α/r)·B A) gives peft's merge_and_unload
    weights exactly, and a plain linear layer whose outputs equal the unmerged layer's to float64 rounding."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(in_features, out_features).double()
    ours = R.LoRALinear(linear, r=r, alpha=alpha)
    x = torch.randn(5, 3, in_features, dtype=F64, generator=gen(1))
    assert ours.lora_A.abs().sum() > 0 and torch.equal(ours.lora_B, torch.zeros(out_features, r, dtype=F64))
    twin = _peft_twin(linear, ours, r, alpha)
    with torch.no_grad():
        assert torch.equal(ours(x), linear(x)) and torch.equal(twin(x), ours(x))
        ours.lora_B.copy_(torch.randn(out_features, r, dtype=F64, generator=gen(2)))
        twin.base_model.model.proj.lora_B["default"].weight.copy_(ours.lora_B)
        y = ours(x)
        assert torch.equal(twin(x), y) and not torch.allclose(y, linear(x))
    assert R.count_trainable_parameters(ours) == R.lora_parameter_count(in_features, out_features, r) == r * (in_features + out_features)
    trainable, total = twin.get_nb_trainable_parameters()
    assert (trainable, total) == (R.count_trainable_parameters(ours), sum(p.numel() for p in ours.parameters()))
    merged = ours.merge()
    peft_merged = twin.merge_and_unload().proj
    assert isinstance(merged, torch.nn.Linear) and torch.equal(merged.weight, peft_merged.weight)
    assert torch.equal(merged.bias, peft_merged.bias)
    with torch.no_grad():
        report = assert_parity(merged(x), y, atol=1e-12, name="merged_vs_unmerged")
    measure(f"lora_merged_vs_unmerged.r_{r}.max_abs_err", report.max_abs_err, "≤ 1e-12")


def test_lora_gradients_by_central_differences(measure):
    """The LoRA layer's gradients with respect to the input, A and B are autograd's and equal central differences
    in float64 (grad_check; B non-zero, so A's gradient is too); the frozen W and b receive none."""
    torch.manual_seed(1)
    linear = torch.nn.Linear(6, 5).double()
    layer = R.LoRALinear(linear, r=3, alpha=6)
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(5, 3, dtype=F64, generator=gen(3)))
    x = torch.randn(4, 6, dtype=F64, generator=gen(4))
    f = lambda x, A, B: R.lora_linear(x, linear.weight, linear.bias, A, B, layer.scaling)
    report = grad_check(f, [x, layer.lora_A.detach(), layer.lora_B.detach()], names=["x", "lora_A", "lora_B"])
    measure.grad(report, "gradcheck.lora_linear")
    layer(x).sum().backward()
    assert linear.weight.grad is None and linear.bias.grad is None
    assert layer.lora_A.grad.abs().sum() > 0 and layer.lora_B.grad.abs().sum() > 0


def tiny_llama(seed=0):
    """A random 2-layer Llama (Hugging Face transformers) over the 8 characters, float32."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(CHARS), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32, tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval()


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # peft calling transformers 5
def test_add_lora_on_a_transformer_matches_peft(measure):
    """add_lora(model, targets, r, α) puts a LoRA layer on every nn.Linear named by a target (q_proj and v_proj of
    each attention layer of a Llama) and freezes the rest, as peft's get_peft_model does with the same LoraConfig:
    the same trainable count, Σ r·(in + out); with peft carrying our A and (random) B, the same logits; merge_lora
    and peft's merge_and_unload give the same merged weights."""
    import copy

    from peft import LoraConfig, get_peft_model

    base = tiny_llama()
    ours = R.add_lora(copy.deepcopy(base), ["q_proj", "v_proj"], r=2, alpha=4)
    twin = get_peft_model(copy.deepcopy(base), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    layers = {n: m for n, m in ours.named_modules() if isinstance(m, R.LoRALinear)}
    assert len(layers) == 4
    expected = sum(R.lora_parameter_count(m.base.in_features, m.base.out_features, 2) for m in layers.values())
    assert R.count_trainable_parameters(ours) == expected == twin.get_nb_trainable_parameters()[0]
    peft_layers = {n.removeprefix("base_model.model."): m for n, m in twin.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}
    assert set(peft_layers) == set(layers)
    g = gen(7)
    with torch.no_grad():
        for name, layer in layers.items():
            layer.lora_B.copy_(0.3 * torch.randn(layer.lora_B.shape, generator=g))
            peft_layers[name].lora_A["default"].weight.copy_(layer.lora_A)
            peft_layers[name].lora_B["default"].weight.copy_(layer.lora_B)
        tokens = torch.randint(0, len(CHARS), (2, 10), generator=gen(8))
        assert torch.equal(ours(tokens).logits, twin(tokens).logits)
        merged, peft_merged = R.merge_lora(ours), twin.merge_and_unload()
        for (n1, p1), (n2, p2) in zip(merged.named_parameters(), peft_merged.named_parameters()):
            assert n1 == n2 and torch.equal(p1, p2), n1
    assert not any(isinstance(m, R.LoRALinear) for m in merged.modules())


def test_rlhf_trains_a_lora_policy():
    """LoRA where RLHF uses it: a Hugging Face policy whose attention projections carry LoRA layers, trained by the
    same RLHF trainer against the frozen base model as reference. At phase 0 the adapters are zero (B = 0), so the
    policy is the reference and the logged KL is exactly 0; training moves only the LoRA parameters and the value
    head (the count the optimiser can move: Σ r·(in + out) + the head's), while every base weight stays bit for
    bit the reference's."""
    import copy

    reference = tiny_llama(seed=3)
    backbone = R.add_lora(copy.deepcopy(reference), ["q_proj", "v_proj"], r=2, alpha=4)
    torch.manual_seed(3)
    policy = R.HFPolicy(backbone, 16)
    lora = sum(R.lora_parameter_count(m.base.in_features, m.base.out_features, 2) for m in backbone.modules() if isinstance(m, R.LoRALinear))
    assert R.count_trainable_parameters(policy) == lora + sum(p.numel() for p in policy.value_head.parameters())
    args = R.RLHFArgs(prefix="ab", gen_len=8, total_phases=2, batch_size=16, num_minibatches=2, warmup_steps=1,
                      base_lr=1e-2, head_lr=1e-2, kl_coef=0.1)
    trainer = R.RLHFTrainer(args, policy, reference, R.char_count_reward, _encode, _decode)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    trainer.train()
    assert trainer.stats[0].kl_per_sequence == 0.0
    moved = {n for n, p in policy.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all(".lora_" in n or n.startswith("value_head.") for n in moved)
    assert any(".lora_B" in n for n in moved)
    merged = R.merge_lora(copy.deepcopy(backbone))
    base_names = {n.replace(".base.", "."): p for n, p in backbone.named_parameters() if ".lora_" not in n}
    for name, param in reference.named_parameters():
        assert torch.equal(base_names[name], param), name
    assert any(not torch.equal(p, dict(reference.named_parameters())[n]) for n, p in merged.named_parameters())


# ---------------------------------------------------------------- the trainer

CHARS = "abcdefg."
_encode = lambda s: torch.tensor([CHARS.index(c) for c in s])
_decode = lambda ids: "".join(CHARS[int(i)] for i in ids)


def char_trainer(kl_coef=0.0, phases=3, seed=0, **overrides):
    """A trainer on a random tiny character model (8 characters), rewarded by the count of '.'."""
    torch.manual_seed(seed)
    cfg = gpt2.Config(d_model=32, n_layers=1, n_heads=2, d_head=16, d_mlp=64, n_ctx=24, d_vocab=len(CHARS))
    backbone = gpt2.DemoTransformer(cfg)
    args = R.RLHFArgs(prefix="ab", gen_len=12, total_phases=phases, batch_size=32, num_minibatches=2,
                      base_lr=3e-3, head_lr=3e-3, warmup_steps=2, kl_coef=kl_coef, gae_lambda=0.95, seed=seed, **overrides)
    encode = lambda s: torch.tensor([CHARS.index(c) for c in s])
    decode = lambda ids: "".join(CHARS[int(i)] for i in ids)
    return R.RLHFTrainer(args, R.demo_policy(backbone, seed), R.copy_backbone(backbone), R.char_count_reward, encode, decode)


def test_rollout_phase_stores_what_the_models_said(measure):
    """A rollout: every sample starts with the prompt; the stored log-probs are get_logprobs of the policy
    on the samples, the reference logits are the reference's, the advantages are compute_advantages of
    the policy's values and the batch-normalised rewards; at phase 0 the policy IS the reference, so the
    logged KL is 0."""
    trainer = char_trainer()
    memory, stats = trainer.rollout_phase()
    P = trainer.prefix_len
    assert memory.sample_ids.shape == (32, P + 12)
    assert torch.equal(memory.sample_ids[:, :P], trainer.prefix_ids.repeat(32, 1))
    with torch.no_grad():
        logits, values = trainer.policy(memory.sample_ids)
        assert_parity(memory.logprobs, R.get_logprobs(logits, memory.sample_ids, P), atol=1e-6)
        assert_parity(memory.ref_logits, trainer.reference(memory.sample_ids), atol=1e-6)
        rewards = R.normalize_reward(R.char_count_reward(trainer.completions(memory.sample_ids)))
        adv, ret = R.compute_advantages(values, rewards, P, 1.0, 0.95)
    assert_parity(memory.advantages, adv, atol=1e-5)
    assert_parity(memory.returns, ret, atol=1e-5)
    measure("phase0.kl_per_sequence", stats.kl_per_sequence, "≤ 1e-6")
    assert abs(stats.kl_per_sequence) < 1e-6
    assert stats.reward_mean == pytest.approx(float(R.char_count_reward(trainer.completions(memory.sample_ids)).mean()))


def test_objective_is_clip_minus_value_minus_entropy_plus_kl():
    """Loss = −L^CLIP + c_v·value loss − c_e·entropy + β·KL, each part equal to its definition (day 21's
    clipped surrogate and value loss); before any update the ratio is 1 and the policy equals the
    reference, so L^CLIP is the mean normalised advantage (0) and the KL part is 0. The value loss
    reaches the value head; the surrogate, entropy and KL parts do not; the reference gets no gradient."""
    trainer = char_trainer(kl_coef=0.3)
    memory, _ = trainer.rollout_phase()
    loss, parts = trainer.objective(memory)
    P = trainer.prefix_len
    assert parts["logratio"].abs().max() < 1e-5
    assert abs(parts["clipped_surrogate"].item()) < 1e-5
    assert abs(parts["kl_penalty"].item()) < 1e-6
    logits, values = trainer.policy(memory.sample_ids)
    assert parts["value_loss"].item() == pytest.approx(0.15 * F.mse_loss(values[:, P - 1:-1], memory.returns).item(), rel=1e-5)
    assert parts["entropy_bonus"].item() == pytest.approx(0.001 * Categorical(logits=logits[:, P - 1:-1]).entropy().mean().item(), rel=1e-5)
    total = -parts["clipped_surrogate"] + parts["value_loss"] - parts["entropy_bonus"] + parts["kl_penalty"]
    assert loss.item() == pytest.approx(total.item(), abs=1e-7)
    head = list(trainer.policy.value_head.parameters())
    for name in ("clipped_surrogate", "entropy_bonus", "kl_penalty"):
        grads = torch.autograd.grad(parts[name], head, allow_unused=True, retain_graph=True)
        assert all(g is None for g in grads), name
    grads = torch.autograd.grad(parts["value_loss"], head, retain_graph=True)
    assert all(g.abs().sum() > 0 for g in grads)
    assert all(not p.requires_grad for p in trainer.reference.parameters())


def test_learning_rate_warms_up_then_decays_to_zero():
    """Two parameter groups (backbone at base_lr, value head at head_lr); the factor rises linearly over
    the warm-up, then falls linearly to 0 at the last optimiser step (ARENA's schedule)."""
    trainer = char_trainer(phases=2)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [pytest.approx(3e-3 / 2)] * 2
    total = 2 * trainer.args.batches_per_learning_phase * trainer.args.num_minibatches
    factors = [R.lr_factor(s, 2, total) for s in range(total + 1)]
    assert factors[:3] == [0.5, 1.0, 1.0] and factors[-1] == 0.0
    assert all(a >= b for a, b in zip(factors[1:], factors[2:]))


def test_ppo_raises_reward_and_the_kl_penalty_bounds_kl(measure):
    """Behaviour of the whole loop on ARENA's character-count reward (a random 8-character model, the
    count of '.' in 12 characters): without a penalty, 12 phases raise the mean reward from ≈ 1.5 to at
    least 2.5× the first phase's; with β = 2, the KL to the reference ends at most half the unpenalised
    run's."""
    free = char_trainer(kl_coef=0.0, phases=12)
    lines = []
    free.train(log=lines.append)
    # each phase's stats and log line carry its index, 0..11, and the trainer ends at phase 12
    assert [s.phase for s in free.stats] == list(range(12)) and free.phase == 12
    assert [line.split()[1] for line in lines] == [str(i) for i in range(12)]
    tied = char_trainer(kl_coef=2.0, phases=12)
    tied.train()
    first, last = free.stats[0].reward_mean, sum(s.reward_mean for s in free.stats[-3:]) / 3
    kl_free, kl_tied = free.stats[-1].kl_per_sequence, tied.stats[-1].kl_per_sequence
    measure("tiny.reward_first_phase", first)
    measure("tiny.reward_last_3_phases", last, "≥ 2.5 × first")
    measure("tiny.kl_without_penalty", kl_free)
    measure("tiny.kl_with_penalty", kl_tied, "≤ ½ × without")
    assert last >= 2.5 * first
    assert kl_tied <= 0.5 * kl_free


@pytest.mark.asset("smollm2-135m-instruct")
def test_the_same_code_runs_smollm2(measure):
    """The real path: SmolLM2-135M-Instruct (Hugging Face) as the backbone of the same trainer. A rollout
    of 2 × 6 tokens gives log-probs whose mean equals −HF's own language-model loss with the prompt
    masked out (labels = −100), to 1e-4; its hidden state is the one lm_head reads; with the policy
    equal to the reference the logged KL is 0; one Adam step of the value head on HF features lowers
    its value loss."""
    from checks.models import smollm2

    hf, tok = smollm2()
    flags = [p.requires_grad for p in hf.parameters()]
    try:
        torch.manual_seed(0)
        policy = R.HFPolicy(hf, hf.config.hidden_size)
        args = R.RLHFArgs(prefix="The capital of France is", gen_len=6, batch_size=2, num_minibatches=1,
                          total_phases=1, head_lr=1e-5, warmup_steps=1)
        encode = lambda s: tok(s, return_tensors="pt").input_ids[0]
        trainer = R.RLHFTrainer(args, policy, hf, lambda texts: torch.tensor([float(len(t)) for t in texts]),
                                encode, tok.decode)  # the reference is the same (frozen) model
        memory, stats = trainer.rollout_phase()
        P = trainer.prefix_len
        labels = memory.sample_ids.clone()
        labels[:, :P] = -100
        with torch.no_grad():
            out = hf(memory.sample_ids, labels=labels, output_hidden_states=True)
            assert_parity(hf.lm_head(out.hidden_states[-1]), out.logits, atol=1e-4)
        gap = abs(memory.logprobs.mean().item() + out.loss.item())
        measure("smollm2.logprobs_vs_hf_loss.abs_err", gap, "≤ 1e-4")
        assert gap < 1e-4
        assert abs(stats.kl_per_sequence) < 1e-5
        hidden = out.hidden_states[-1][:, P - 1:-1]
        loss = lambda: ppo_theory.value_loss(policy.value_head(hidden), memory.returns, args.vf_coef)
        before = loss()
        trainer.optimizer.zero_grad()
        before.backward()
        trainer.optimizer.step()
        assert loss().item() < before.item()
    finally:
        for p, flag in zip(hf.parameters(), flags):
            p.requires_grad_(flag)
            p.grad = None


# ---------------------------------------------------------------- the experiment


# The saved models are a 2-layer float32 GPT (d_model 64, d_mlp 256, 65 characters): a logit is ≈ 1 200
# float32 roundings deep (the 64- and 256-term dot products of two blocks, the unembedding), and such errors
# add like a random walk, √n·u (Higham & Mary 2019): float_ops(√1 200 ≈ 35), 1.7e-5 relative to the logits'
# scale, |logit| ≤ 12 here (measured: 11.3), so a logit is off by ≤ 2e-4. A token's −log p (its logit and the
# log-sum-exp) by twice that, and so the mean validation loss; a token's KL(π‖π_ref) = Σ p·(log p − log q) by
# ≤ 2·err·(2 + Σ p·|log p − log q|) ≤ 2·err·4.2 (that sum is ≤ 2.2 here), and a completion's 48 of them add like a
# random walk (√48). Measured across kernels: ≤ 1.5e-8 and 7e-8 relative. The KL is of *sampled* completions:
# the test assumes the same 256 samples, which other rounding changes only if a uniform draw lands within ~1e-7
# of a category boundary (policy weights perturbed at 1e-7: no sample changed).
LOGIT_ERR = 12 * float_ops(35, "float32").rel
VAL_LOSS_TOL = Tolerance(abs=2 * LOGIT_ERR, reason="a mean of −log p, each within two float32 logit errors (2e-4)")
SEQUENCE_KL_TOL = Tolerance(abs=2 * LOGIT_ERR * 4.2 * math.sqrt(48),
                            reason="48 per-token KLs, each within 2·err·4.2, adding like a random walk")


@pytest.mark.asset("tinyshakespeare")
def test_results_json_is_current(committed, measure):
    """results.json came from this configuration; the saved reference reproduces its pretraining validation
    loss (day 33's 8 fixed batches) and the saved tuned policy reproduces the logged KL of its fresh
    samples, both within the float32 rounding of the 2-layer model (4e-4 and 1.2e-2 nats: VAL_LOSS_TOL,
    SEQUENCE_KL_TOL). The headline holds: with β = 0.5 the reward model's score rose by at least 0.5
    (its units are log-odds of a labeller's preference) while the KL to the reference stayed below 5 nats per
    completion over the whole second half of training; weaker penalties buy more reward with more KL, and
    without a penalty the KL ends at least 10× higher."""
    from checks.assets import resolve

    results = committed
    assert results["rlhf_args"] == json.loads(json.dumps(asdict(R.EXPERIMENT)))
    assert results["pretrain"]["args"] == asdict(R.PRETRAIN)
    assert results["kl_coefs"] == list(R.KL_COEFS)
    reference, policy, tok, meta = R.load_models(HERE / R.MODELS_DIR)
    _, _, val_ids = R.pretrained.shakespeare(resolve("tinyshakespeare"))
    g = gen(R.PRETRAIN.seed + 2)
    batches = [R.pretrained.batch(val_ids, R.PRETRAIN.batch_size, R.PRETRAIN.n_ctx, g) for _ in range(R.PRETRAIN.eval_batches)]
    with torch.no_grad():
        val = sum(R.pretrained.next_token_loss(reference, b).item() for b in batches) / len(batches)
    worst = assert_reproduces(val, results["pretrain"]["final_val_loss"], VAL_LOSS_TOL, name="pretrain.final_val_loss")
    trainer = R.RLHFTrainer(R.EXPERIMENT, policy, reference, R.char_count_reward, tok.encode, tok.decode)
    kl = R.sequence_kl(trainer, R.fresh_samples(trainer, R.EVAL_SAMPLES, seed=20_000)).double().mean().item()
    headline = results["headline"]
    worst = max(worst, assert_reproduces(kl, headline["kl_after"], SEQUENCE_KL_TOL, name="headline.kl_after"))
    measure("experiment.vs_committed", worst, "≤ 1 (fraction of the tolerance)")
    measure("experiment.reward_before", headline["reward_before"])
    measure("experiment.reward_after", headline["reward_after"], "≥ before + 0.5")
    measure("experiment.kl_max_second_half", headline["kl_max_second_half"], "≤ 5 nats")
    measure("experiment.kl_after_without_penalty", headline["kl_after_without_penalty"], "≥ 10 × with β = 0.5")
    check_headline(results)
    assert (HERE / "figures/rlhf_curves.png").stat().st_size > 10_000


def check_headline(results):
    h, runs = results["headline"], results["runs"]
    assert h["reward_after"] >= h["reward_before"] + 0.5
    assert h["kl_after"] <= 5 and h["kl_max_second_half"] <= 5
    assert h["kl_after_without_penalty"] >= 10 * h["kl_after"]
    after = [runs[R.run_key(b)]["after"] for b in R.KL_COEFS]  # β decreasing
    assert all(a["reward_mean"] < b["reward_mean"] and a["kl_mean"] < b["kl_mean"] for a, b in zip(after, after[1:]))


@pytest.mark.slow
def test_rlhf_raises_reward_with_bounded_kl(tmp_path, measure):
    """Slow: pretraining, then RLHF against day 24's reward model with β = 0.5, 0.2 and 0: with β = 0.5 the
    reward rises by at least 0.5 while the KL stays below 5 nats per completion through the second half;
    smaller β gives more reward and more KL; without a penalty the KL ends at least 10× higher."""
    results = R.run_experiment(tmp_path)
    h = results["headline"]
    measure("slow.reward_gain", h["reward_gain"], "≥ 0.5")
    measure("slow.kl_max_second_half", h["kl_max_second_half"], "≤ 5")
    measure("slow.experiment_seconds", results["experiment_seconds"])
    check_headline(results)
