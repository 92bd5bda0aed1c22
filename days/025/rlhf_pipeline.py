"""Day 25: the full RLHF pipeline, PPO on a language model (ARENA 2.4 RLHF, part 2).

RLHF fine-tunes a pretrained language model π_θ (the *policy*) to maximise a reward r(x) given to
its completions x, while a penalty keeps it close to the frozen pretrained model π_ref:

    maximise  E_{x ~ π_θ}[ r(x) ]  −  β · KL(π_θ ‖ π_ref).

Generating a completion is an episode: the state is the text so far (prompt + tokens generated),
an action is the next token, and the only reward arrives when the completion ends. PPO (days
21–23) carries over with three additions, as in ARENA's RLHF chapter:

- **Log-probabilities by gathering.** With a prompt of P tokens and G generated tokens, token
  x_{P+t} was sampled from the logits at position P + t − 1, so its log-probability is
  log_softmax(logits)[:, P−1 : −1].gather(x[:, P:]) (t = 0 … G−1).
- **A value head** V(s_t) on the transformer's final (normalised) residual stream, an MLP
  d_model → 4·d_model → 1 sharing the backbone with the policy.
- **A KL penalty to the reference** in the loss: β · mean over generated positions of the exact
  per-token KL, Σ_v π_θ(v | x_<t) (log π_θ(v | x_<t) − log π_ref(v | x_<t)). Summed over the G
  positions it is, in expectation over x ~ π_θ, the KL between the two models' distributions of
  whole completions (the chain rule of KL).

Advantages come from day 21's GAE with the reward at the last step: r_t = 0 for t < G − 1,
r_{G−1} = R(x), V(s_G) = 0 (the episode ends). With γ = 1 and λ = 0 this is ARENA's one-step
estimate Â_t = V(s_{t+1}) − V(s_t), Â_{G−1} = R − V(s_{G−1}); λ = 1 gives R − V(s_t).

The backbone is either a character-level GPT (day 32's DemoTransformer, pretrained here on Tiny
Shakespeare as on day 33: a 135M-parameter model is too slow to RL-train on a 2-core CPU), ARENA's
``TransformerWithValueHead`` (a TransformerLens HookedTransformer, the value head attached by a hook),
or any Hugging Face causal LM (SmolLM2-135M-Instruct in the tests), optionally with LoRA adapters on
its linear layers (``add_lora``: only the adapters and the value head train): the same trainer drives
them all. The reward is day 24's Bradley–Terry reward model, a learned sentiment score of the
completion's text.
"""

from __future__ import annotations

import importlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from checks.timing import single_thread

gpt2 = importlib.import_module("days.032.gpt2")
pretrained = importlib.import_module("days.033.pretrained")
sampling = importlib.import_module("days.034.sampling")
ppo_theory = importlib.import_module("days.021.ppo_theory")
a2c = importlib.import_module("days.020.a2c")
ppo_debug = importlib.import_module("days.023.ppo_debug")

RewardFn = Callable[[list[str]], Tensor]

# ---------------------------------------------------------------- the policy: backbone + value head


class ValueHead(nn.Module):
    """V(s) = w₂ᵀ ReLU(W₁ h + b₁) + b₂ on the final normalised residual h (ARENA: d_model → 4·d_model → 1)."""

    def __init__(self, d_model: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.ReLU(), nn.Linear(4 * d_model, 1))

    def forward(self, hidden: Float[Tensor, "batch seq d_model"]) -> Float[Tensor, "batch seq"]:
        return self.net(hidden)[..., 0]


class PolicyWithValueHead(nn.Module):
    """A causal LM with a value head: tokens → (next-token logits, V of each prefix).

    ``features`` returns the hidden state the unembedding reads (after the final norm) and the
    logits; the value head reads that same hidden state, so the policy and the critic share the
    whole backbone, as ARENA's TransformerWithValueHead does.
    """

    def __init__(self, backbone: nn.Module, d_model: int):
        super().__init__()
        self.backbone = backbone
        self.value_head = ValueHead(d_model)

    def features(self, tokens: Int[Tensor, "batch seq"]) -> tuple[Float[Tensor, "batch seq d_model"], Float[Tensor, "batch seq d_vocab"]]:
        raise NotImplementedError

    def forward(self, tokens: Int[Tensor, "batch seq"]) -> tuple[Float[Tensor, "batch seq d_vocab"], Float[Tensor, "batch seq"]]:
        hidden, logits = self.features(tokens)
        return logits, self.value_head(hidden)

    def logits_fn(self) -> Callable[[Tensor], Tensor]:
        """tokens → logits, for day 34's sampler."""
        return lambda tokens: self.features(tokens)[1]


class DemoPolicy(PolicyWithValueHead):
    """Day 32's DemoTransformer as the backbone; h = LN_final(x_L), logits = h W_U + b_U."""

    def features(self, tokens):
        _, residuals = self.backbone.run_with_residuals(tokens)
        hidden = self.backbone.ln_final(residuals[-1])
        return hidden, self.backbone.unembed(hidden)

    def logits_fn(self):
        return self.backbone  # a DemoTransformer: day 34's sampler can use its KV cache


class HFPolicy(PolicyWithValueHead):
    """A Hugging Face causal LM as the backbone; h = its last hidden state (after the final norm)."""

    def features(self, tokens):
        out = self.backbone(tokens, output_hidden_states=True)
        return out.hidden_states[-1], out.logits


VALUE_HEAD_HOOK = "ln_final.hook_normalized"  # ARENA's hook point: the final residual stream, normalised


def hooked_transformer_from_demo(model: gpt2.DemoTransformer):
    """A TransformerLens HookedTransformer carrying a DemoTransformer's weights (same dtype, unprocessed: no folding
    or centring). Day 32 named its parameters as TransformerLens does, so they load by name."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    c = model.cfg
    dtype = next(model.parameters()).dtype
    cfg = HookedTransformerConfig(d_model=c.d_model, d_head=c.d_head, n_heads=c.n_heads, d_mlp=c.d_mlp, n_layers=c.n_layers,
                                  n_ctx=c.n_ctx, d_vocab=c.d_vocab, eps=c.layer_norm_eps, act_fn="gelu_new",
                                  normalization_type="LN", dtype=dtype, device="cpu")
    hooked = HookedTransformer(cfg)
    params = dict(hooked.named_parameters())
    weights = {name: t for name, t in model.state_dict().items() if name in params}
    if weights.keys() != params.keys():
        raise ValueError(f"parameters differ: {sorted(params.keys() ^ weights.keys())[:5]}")
    hooked.load_state_dict(weights, strict=False)
    return hooked.eval()


class TransformerWithValueHead(PolicyWithValueHead):
    """ARENA's TransformerWithValueHead: a TransformerLens HookedTransformer (``base_model``) with a value head on
    the final residual stream, attached through a forward hook on ``ln_final.hook_normalized``: during the
    forward pass the hook feeds that activation to the head and stores V of every prefix, and forward returns
    (logits, values). The hook lives only for the call (``run_with_hooks``), so ``base_model`` stays a plain
    language model, which is what the sampler calls.

    In TransformerLens the hook point sits after the normalisation and before the LayerNorm's scale w and bias
    b; for GPT-2, ``from_pretrained`` folds w and b into W_U, so it is exactly what the unembedding reads.
    """

    def __init__(self, base_model):
        super().__init__(base_model, base_model.cfg.d_model)
        self.value_head.to(base_model.cfg.dtype)
        self.value_head_output: Tensor | None = None

    @property
    def base_model(self):
        return self.backbone

    def calc_and_store_value_head_output(self, resid: Float[Tensor, "batch seq d_model"], hook) -> None:
        """The hook: V(s) of every prefix from the activation at VALUE_HEAD_HOOK (the activation is left unchanged)."""
        self.value_head_output = self.value_head(resid)

    def forward(self, input_ids: Int[Tensor, "batch seq"]) -> tuple[Float[Tensor, "batch seq d_vocab"], Float[Tensor, "batch seq"]]:
        logits = self.base_model.run_with_hooks(input_ids, return_type="logits",
                                                fwd_hooks=[(VALUE_HEAD_HOOK, self.calc_and_store_value_head_output)])
        values, self.value_head_output = self.value_head_output, None
        return logits, values

    def features(self, tokens):
        stored = {}

        def keep(resid, hook):
            stored["hidden"] = resid

        logits = self.base_model.run_with_hooks(tokens, return_type="logits", fwd_hooks=[(VALUE_HEAD_HOOK, keep)])
        return stored["hidden"], logits

    def logits_fn(self):
        return self.base_model

    @classmethod
    def from_demo_policy(cls, policy: DemoPolicy) -> "TransformerWithValueHead":
        """The same policy and critic as a DemoPolicy, built ARENA's way. DemoPolicy's head reads h = w ⊙ x̂ + b (the
        final LayerNorm's output), this one reads x̂: folding w and b into the head's first layer, W₁' = W₁ diag(w),
        b₁' = b₁ + W₁ b, gives W₁' x̂ + b₁' = W₁ h + b₁, the same values."""
        model = cls(hooked_transformer_from_demo(policy.backbone))
        w, b = policy.backbone.ln_final.w, policy.backbone.ln_final.b
        first = policy.value_head.net[0]
        with torch.no_grad():
            model.value_head.load_state_dict(policy.value_head.state_dict())
            model.value_head.net[0].weight.copy_(first.weight * w)
            model.value_head.net[0].bias.copy_(first.bias + first.weight @ b)
        return model


def reference_logits_fn(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """tokens → logits of a frozen reference: a DemoTransformer, a HookedTransformer, a Hugging Face causal LM, or
    a policy."""
    if isinstance(model, PolicyWithValueHead):
        return model.logits_fn()
    if isinstance(model, gpt2.DemoTransformer) or hasattr(model, "run_with_hooks"):  # a HookedTransformer's forward is its logits
        return model
    return lambda tokens: model(tokens).logits


# ---------------------------------------------------------------- LoRA


def lora_linear(x: Float[Tensor, "... d_in"], weight: Float[Tensor, "d_out d_in"], bias: Tensor | None,
                lora_A: Float[Tensor, "r d_in"], lora_B: Float[Tensor, "d_out r"], scaling: float) -> Float[Tensor, "... d_out"]:
    """W x + b + (α/r)·B A x, written as peft computes it: F.linear(x, W, b) + B(A(x))·scaling."""
    return F.linear(x, weight, bias) + F.linear(F.linear(x, lora_A), lora_B) * scaling


def lora_parameter_count(in_features: int, out_features: int, r: int) -> int:
    """A LoRA layer's trainable parameters: A (r × in) and B (out × r), r·(in + out)."""
    return r * (in_features + out_features)


class LoRALinear(nn.Module):
    """LoRA (Hu et al., 2021) on a linear layer: y = W x + b + (α/r)·B A x, the base W and b frozen, the rank-r update
    B A trained. A is initialised as nn.Linear initialises weights (Kaiming-uniform), B at zero, so the layer starts
    as the base layer exactly, and the update's scale α/r does not change with r at init."""

    def __init__(self, base: nn.Linear, r: int, alpha: float):
        super().__init__()
        self.base = base
        base.requires_grad_(False)
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        kw = {"dtype": base.weight.dtype, "device": base.weight.device}
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **kw))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, **kw))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_out"]:
        return lora_linear(x, self.base.weight, self.base.bias, self.lora_A, self.lora_B, self.scaling)

    def delta_weight(self) -> Float[Tensor, "d_out d_in"]:
        """(α/r)·B A, the update to W."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def merge(self) -> nn.Linear:
        """A plain nn.Linear with W' = W + (α/r)·B A and the base bias: the same function, no adapter left."""
        merged = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None,
                           dtype=self.base.weight.dtype, device=self.base.weight.device)
        with torch.no_grad():
            merged.weight.copy_(self.base.weight + self.delta_weight())
            if self.base.bias is not None:
                merged.bias.copy_(self.base.bias)
        return merged


def _replace_modules(model: nn.Module, pick: Callable[[str, nn.Module], nn.Module | None]) -> nn.Module:
    for name, module in list(model.named_modules()):
        new = pick(name, module)
        if new is not None:
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    return model


def add_lora(model: nn.Module, target_modules: list[str], r: int, alpha: float) -> nn.Module:
    """Freeze every parameter of ``model`` and put a LoRALinear on each nn.Linear whose name is a target or ends in
    '.' + a target (peft's matching rule for ``target_modules``): afterwards only the adapters train."""
    model.requires_grad_(False)
    matches = lambda name: any(name == t or name.endswith("." + t) for t in target_modules)
    return _replace_modules(model, lambda name, m: LoRALinear(m, r, alpha)
                            if isinstance(m, nn.Linear) and not isinstance(m, LoRALinear) and matches(name) else None)


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear by its merged nn.Linear (peft's merge_and_unload)."""
    return _replace_modules(model, lambda name, m: m.merge() if isinstance(m, LoRALinear) else None)


def count_trainable_parameters(model: nn.Module) -> int:
    """Parameters that receive gradients (requires_grad), each tensor counted once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters() if p.requires_grad}.values())


# ---------------------------------------------------------------- log-probabilities, KL, entropy


def get_logprobs(logits: Float[Tensor, "batch seq d_vocab"], tokens: Int[Tensor, "batch seq"],
                 prefix_len: int) -> Float[Tensor, "batch gen"]:
    """log π(x_{P+t} | x_<P+t) for the generated tokens t = 0 … G−1: the logits at position P+t−1
    predict token P+t, so log_softmax(logits[:, P−1:−1]) gathered at tokens[:, P:]."""
    logprobs = logits[:, prefix_len - 1:-1].log_softmax(dim=-1)
    return logprobs.gather(-1, tokens[:, prefix_len:, None])[..., 0]


def per_token_kl(logits: Float[Tensor, "batch seq d_vocab"], ref_logits: Float[Tensor, "batch seq d_vocab"],
                 prefix_len: int) -> Float[Tensor, "batch gen"]:
    """KL(π_θ(· | x_<t) ‖ π_ref(· | x_<t)) = Σ_v p(v)(log p(v) − log q(v)) at each generating position."""
    logp = logits[:, prefix_len - 1:-1].log_softmax(dim=-1)
    logq = ref_logits[:, prefix_len - 1:-1].log_softmax(dim=-1)
    return (logp.exp() * (logp - logq)).sum(dim=-1)


def kl_penalty(logits: Float[Tensor, "batch seq d_vocab"], ref_logits: Float[Tensor, "batch seq d_vocab"],
               kl_coef: float, prefix_len: int) -> Tensor:
    """β · mean over batch and generated positions of the exact per-token KL(π_θ ‖ π_ref) (ARENA's
    calc_kl_penalty); the reference is a constant."""
    return kl_coef * per_token_kl(logits, ref_logits.detach(), prefix_len).mean()


def entropy_bonus(logits: Float[Tensor, "batch seq d_vocab"], ent_coef: float, prefix_len: int) -> Tensor:
    """c_e · mean entropy H(π_θ(· | x_<t)) over the generating positions (day 20's entropy)."""
    return ent_coef * a2c.entropy(logits[:, prefix_len - 1:-1]).mean()


# ---------------------------------------------------------------- rewards and advantages


def normalize_reward(reward: Float[Tensor, "batch"], eps: float = 1e-5) -> Float[Tensor, "batch"]:
    """ARENA's normalize_reward: (r − mean r) / (std r + eps) over the batch, with the population std (ARENA uses
    torch's default, the unbiased one): a normalised batch has std 1 up to eps, and a batch of one gives 0."""
    return (reward - reward.mean()) / (reward.std(unbiased=False) + eps)


def char_count_reward(texts: list[str], char: str = ".") -> Float[Tensor, "batch"]:
    """ARENA's first reward: how many times ``char`` occurs in each text."""
    return torch.tensor([float(t.count(char)) for t in texts])


def compute_advantages(values: Float[Tensor, "batch seq"], rewards: Float[Tensor, "batch"], prefix_len: int,
                       gamma: float = 1.0, lam: float = 0.0) -> tuple[Float[Tensor, "batch gen"], Float[Tensor, "batch gen"]]:
    """GAE advantages and value targets for the generated tokens.

    Step t = 0 … G−1 is in state s_t = x_<P+t with V(s_t) = values[:, P−1+t]; its reward is 0 except
    R at t = G−1, after which the episode terminates (V = 0). Day 21's ``gae`` does the sum
    Â_t = Σ_l (γλ)^l δ_{t+l}, δ_t = r_t + γ V(s_{t+1}) − V(s_t); the targets are R̂_t = Â_t + V(s_t).
    """
    v = values[:, prefix_len - 1:-1]  # V(s_t)
    gen = v.shape[1]
    next_v = torch.cat([values[:, prefix_len:-1], torch.zeros_like(v[:, :1])], dim=1)
    step_rewards = torch.zeros_like(v)
    step_rewards[:, -1] = rewards.to(v.dtype)
    last = torch.zeros_like(v, dtype=torch.bool)
    last[:, -1] = True
    advantages = ppo_theory.gae(step_rewards.T, v.T, next_v.T, last.T, last.T, gamma, lam).T
    assert advantages.shape == (values.shape[0], gen)
    return advantages, advantages + v


# ---------------------------------------------------------------- the trainer


@dataclass
class RLHFArgs:
    """ARENA's RLHFArgs, scaled for a small model on a CPU (ARENA: batch 128, minibatch 32, KL 2.5)."""

    prefix: str = "JULIET:\n"
    gen_len: int = 48
    total_phases: int = 100
    batch_size: int = 64
    num_minibatches: int = 4
    batches_per_learning_phase: int = 2  # passes over each phase's batch
    base_lr: float = 3e-4
    head_lr: float = 3e-3
    warmup_steps: int = 20
    max_grad_norm: float = 1.0
    clip_coef: float = 0.2
    vf_coef: float = 0.15
    ent_coef: float = 0.001
    kl_coef: float = 0.5
    gamma: float = 1.0
    gae_lambda: float = 0.95
    temperature: float = 1.0
    normalize_reward: bool = True
    seed: int = 0

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches


@dataclass
class ReplayMemory:
    """One phase's batch: the samples and what the policy and the reference said about them."""

    sample_ids: Int[Tensor, "batch seq"]
    logprobs: Float[Tensor, "batch gen"]
    advantages: Float[Tensor, "batch gen"]
    returns: Float[Tensor, "batch gen"]
    ref_logits: Float[Tensor, "batch seq d_vocab"]

    def minibatches(self, n: int, generator: torch.Generator):
        """n random disjoint minibatches covering the batch."""
        order = torch.randperm(self.sample_ids.shape[0], generator=generator)
        for idx in order.chunk(n):
            yield ReplayMemory(self.sample_ids[idx], self.logprobs[idx], self.advantages[idx], self.returns[idx],
                               self.ref_logits[idx])


@dataclass
class PhaseStats:
    phase: int
    reward_mean: float  # raw reward of the completions, before normalisation
    reward_std: float
    kl_per_sequence: float  # mean over the batch of Σ_t exact KL(π_θ ‖ π_ref) at the rollout
    entropy_per_token: float
    approx_kl_old_new: float = 0.0  # day 23's k3 between the rollout policy and the updated one
    clip_fraction: float = 0.0
    sample: str = ""


def get_optimizer(model: PolicyWithValueHead, base_lr: float, head_lr: float) -> torch.optim.Adam:
    """ARENA's get_optimizer: Adam with two parameter groups, the base model at ``base_lr`` and the value head at
    ``head_lr`` (each of the model's parameters in exactly one). It minimises the loss −objective; ARENA's is
    AdamW(maximize=True) on the objective: the same steps, bit for bit, but for AdamW's weight decay."""
    head = list(model.value_head.parameters())
    in_head = {id(p) for p in head}
    base = [p for p in model.parameters() if id(p) not in in_head]
    return torch.optim.Adam([{"params": base, "lr": base_lr}, {"params": head, "lr": head_lr}], eps=1e-5)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then linear decay to 0 at ``total`` (ARENA's schedule)."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, 1 - (step - warmup) / max(1, total - warmup))


class RLHFTrainer:
    """PPO with a KL penalty to a frozen reference, on any PolicyWithValueHead.

    ``encode``/``decode`` map text to token ids and back; ``reward_fn`` scores decoded completions
    (the prompt is not included).
    """

    def __init__(self, args: RLHFArgs, policy: PolicyWithValueHead, reference: nn.Module, reward_fn: RewardFn,
                 encode: Callable[[str], Tensor], decode: Callable[[Tensor], str]):
        self.args, self.policy, self.reward_fn, self.decode = args, policy, reward_fn, decode
        self.reference = reference.eval()
        for p in self.reference.parameters():
            p.requires_grad_(False)
        self.ref_fn = reference_logits_fn(self.reference)
        self.prefix_ids = encode(args.prefix)
        self.prefix_len = int(self.prefix_ids.shape[0])
        self.generator = torch.Generator().manual_seed(args.seed)
        self.optimizer = get_optimizer(policy, args.base_lr, args.head_lr)
        total_steps = args.total_phases * args.batches_per_learning_phase * args.num_minibatches
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, args.warmup_steps, total_steps))
        self.stats: list[PhaseStats] = []
        self.phase = 0

    # -- rollout
    @torch.no_grad()
    def sample(self, n: int) -> Int[Tensor, "n seq"]:
        """n completions of the prompt, gen_len tokens each, sampled at the given temperature."""
        prompt = self.prefix_ids[None].repeat(n, 1)
        model = self.policy.logits_fn()
        use_cache = isinstance(model, gpt2.DemoTransformer)
        was_training = self.policy.training
        self.policy.eval()
        ids = sampling.generate(model, prompt, self.args.gen_len, use_cache=use_cache, generator=self.generator,
                                temperature=self.args.temperature)
        self.policy.train(was_training)
        return ids

    def completions(self, sample_ids: Int[Tensor, "batch seq"]) -> list[str]:
        return [self.decode(row[self.prefix_len:]) for row in sample_ids]

    @torch.no_grad()
    def rollout_phase(self) -> tuple[ReplayMemory, PhaseStats]:
        """Sample a batch, score it, and compute log-probs, values, reference logits and advantages."""
        a, P = self.args, self.prefix_len
        sample_ids = self.sample(a.batch_size)
        logits, values = self.policy(sample_ids)
        ref_logits = self.ref_fn(sample_ids)
        logprobs = get_logprobs(logits, sample_ids, P)
        raw = self.reward_fn(self.completions(sample_ids)).to(values.dtype)
        rewards = normalize_reward(raw) if a.normalize_reward else raw
        advantages, returns = compute_advantages(values, rewards, P, a.gamma, a.gae_lambda)
        stats = PhaseStats(self.phase, float(raw.mean()), float(raw.std()),
                           float(per_token_kl(logits, ref_logits, P).sum(-1).mean()),
                           float(a2c.entropy(logits[:, P - 1:-1]).mean()),
                           sample=self.completions(sample_ids[:1])[0])
        return ReplayMemory(sample_ids, logprobs, advantages, returns, ref_logits), stats

    # -- learning
    def objective(self, mb: ReplayMemory) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss = −L^CLIP + c_v·value loss − c_e·entropy + β·KL(π_θ ‖ π_ref) on one minibatch."""
        a, P = self.args, self.prefix_len
        logits, values = self.policy(mb.sample_ids)
        logprobs = get_logprobs(logits, mb.sample_ids, P)
        parts = {
            "clipped_surrogate": ppo_theory.clipped_surrogate(logprobs.flatten(), mb.logprobs.flatten(),
                                                              mb.advantages.flatten(), a.clip_coef),
            "value_loss": ppo_theory.value_loss(values[:, P - 1:-1], mb.returns, a.vf_coef),
            "entropy_bonus": entropy_bonus(logits, a.ent_coef, P),
            "kl_penalty": kl_penalty(logits, mb.ref_logits, a.kl_coef, P),
            "logratio": (logprobs - mb.logprobs).detach(),
        }
        loss = -parts["clipped_surrogate"] + parts["value_loss"] - parts["entropy_bonus"] + parts["kl_penalty"]
        return loss, parts

    def learning_phase(self, memory: ReplayMemory, stats: PhaseStats) -> None:
        a = self.args
        logratios = []
        for _ in range(a.batches_per_learning_phase):
            for mb in memory.minibatches(a.num_minibatches, self.generator):
                loss, parts = self.objective(mb)
                self.optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(self.policy.parameters(), a.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                logratios.append(parts["logratio"].flatten())
        logratio = torch.cat(logratios[-a.num_minibatches:])  # the last pass: how far the update moved π
        stats.approx_kl_old_new = ppo_debug.approx_kl(logratio)
        stats.clip_fraction = ppo_debug.clip_fraction(logratio, a.clip_coef)

    def train(self, log: Callable[[str], None] | None = None) -> list[PhaseStats]:
        self.policy.train()
        for _ in range(self.args.total_phases):
            memory, stats = self.rollout_phase()
            self.learning_phase(memory, stats)
            self.stats.append(stats)
            if log:
                log(f"phase {self.phase:4d}  reward {stats.reward_mean:6.3f}  KL {stats.kl_per_sequence:6.3f}  "
                    f"{stats.sample[:40]!r}")
            self.phase += 1
        return self.stats


# ---------------------------------------------------------------- the character-level model


def copy_backbone(model: gpt2.DemoTransformer) -> gpt2.DemoTransformer:
    """An independent copy (same weights) of a DemoTransformer."""
    clone = gpt2.DemoTransformer(model.cfg)
    clone.load_state_dict(model.state_dict())
    return clone


def demo_policy(backbone: gpt2.DemoTransformer, seed: int = 0) -> DemoPolicy:
    """A DemoPolicy on a copy of ``backbone`` with a freshly initialised value head."""
    torch.manual_seed(seed)
    return DemoPolicy(copy_backbone(backbone), backbone.cfg.d_model)


PRETRAIN = pretrained.TrainArgs(d_model=64, n_layers=2, n_heads=4, n_ctx=64, batch_size=32, steps=800, lr=3e-3,
                                warmup=50, eval_every=100, eval_batches=8, seed=0)
EXPERIMENT = RLHFArgs()
KL_COEFS = (0.5, 0.2, 0.0)  # the headline run, a weaker penalty, and the ablation without one
EVAL_SAMPLES = 256
MODELS_DIR = "models"  # days/025/models/{reference,policy}.pt, read by day 26


def shakespeare_model(args: pretrained.TrainArgs = PRETRAIN) -> tuple[pretrained.CharTokenizer, gpt2.DemoTransformer, dict]:
    """Day 33's recipe at a smaller size: a character-level GPT pretrained on Tiny Shakespeare."""
    from checks.assets import resolve

    tok, train_ids, val_ids = pretrained.shakespeare(resolve("tinyshakespeare"))
    model, history = pretrained.train(args, train_ids, val_ids, len(tok.chars), log=lambda s: None)
    return tok, model, history


def save_models(out_dir: Path, reference: gpt2.DemoTransformer, policy: DemoPolicy, tok: pretrained.CharTokenizer,
                args: RLHFArgs) -> None:
    """Write the reference backbone and the tuned policy (backbone + value head) for day 26."""
    folder = Path(out_dir) / MODELS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"cfg": asdict(reference.cfg), "chars": tok.chars, "prefix": args.prefix, "gen_len": args.gen_len}
    torch.save({"meta": meta, "state_dict": reference.state_dict()}, folder / "reference.pt")
    torch.save({"meta": meta, "state_dict": policy.state_dict()}, folder / "policy.pt")


def load_models(folder: Path) -> tuple[gpt2.DemoTransformer, DemoPolicy, pretrained.CharTokenizer, dict]:
    """(reference, tuned policy, tokenizer, meta) as saved by ``save_models``."""
    folder = Path(folder)
    ref_file = torch.load(folder / "reference.pt", weights_only=False)  # our own files: config + weights
    pol_file = torch.load(folder / "policy.pt", weights_only=False)
    meta = ref_file["meta"]
    cfg = gpt2.Config(**meta["cfg"])
    reference = gpt2.DemoTransformer(cfg)
    reference.load_state_dict(ref_file["state_dict"])
    policy = DemoPolicy(gpt2.DemoTransformer(cfg), cfg.d_model)
    policy.load_state_dict(pol_file["state_dict"])
    tok = pretrained.CharTokenizer("".join(meta["chars"]))
    return reference.eval(), policy.eval(), tok, meta


def run_key(kl_coef: float) -> str:
    """'kl_0p5' for β = 0.5: a results.json key without a dot (posts address values by dotted paths)."""
    return "kl_" + f"{kl_coef:g}".replace(".", "p")


def one_line(text: str) -> str:
    """A completion on one line, newlines shown as ⏎."""
    return text.replace("\n", " ⏎ ")


@torch.no_grad()
def fresh_samples(trainer: RLHFTrainer, n: int, seed: int) -> Int[Tensor, "n seq"]:
    """n completions from the trainer's current policy, drawn with a generator seeded by ``seed``."""
    trainer.generator.manual_seed(seed)
    return trainer.sample(n)


@torch.no_grad()
def sequence_kl(trainer: RLHFTrainer, sample_ids: Int[Tensor, "batch seq"]) -> Float[Tensor, "batch"]:
    """Σ_t KL(π_θ(· | x_<t) ‖ π_ref(· | x_<t)) over each completion's generated positions."""
    logits, _ = trainer.policy(sample_ids)
    return per_token_kl(logits, trainer.ref_fn(sample_ids), trainer.prefix_len).sum(-1)


def evaluate_policy(trainer: RLHFTrainer, reward_fn: RewardFn, n: int, seed: int) -> dict:
    """Fresh samples from the policy: mean reward and mean sequence KL to the reference (± s.e.)."""
    ids = fresh_samples(trainer, n, seed)
    kl = sequence_kl(trainer, ids).double()
    rewards = reward_fn(trainer.completions(ids)).double()
    return {"reward_mean": float(rewards.mean()), "reward_se": float(rewards.std() / math.sqrt(n)),
            "kl_mean": float(kl.mean()), "kl_se": float(kl.std() / math.sqrt(n)),
            "samples": trainer.completions(ids[:6])}


def run_experiment(out_dir: Path, pretrain: pretrained.TrainArgs = PRETRAIN, args: RLHFArgs = EXPERIMENT,
                   kl_coefs: tuple[float, ...] = KL_COEFS) -> dict:
    """Pretrain a small character-level GPT, then RLHF it against day 24's reward model with and
    without the KL penalty: reward and KL per phase, and a fresh evaluation before and after."""
    import matplotlib.pyplot as plt

    reward_model = importlib.import_module("days.024.reward_model")
    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with single_thread():  # the run is bit-reproducible only on a fixed thread count
        t0 = time.perf_counter()
        tok, reference, history = shakespeare_model(pretrain)
        pretrain_seconds = time.perf_counter() - t0
        rm = reward_model.trained_reward_model()

        def reward_fn(texts):
            with torch.no_grad():
                return rm(texts).double()

        runs, trainers = {}, {}
        for kl_coef in kl_coefs:
            run_args = RLHFArgs(**{**asdict(args), "kl_coef": kl_coef})
            policy = demo_policy(reference, seed=args.seed)
            trainer = RLHFTrainer(run_args, policy, copy_backbone(reference), reward_fn, tok.encode, tok.decode)
            before = evaluate_policy(trainer, reward_fn, EVAL_SAMPLES, seed=10_000) if not runs else runs[run_key(kl_coefs[0])]["before"]
            t0 = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - t0
            after = evaluate_policy(trainer, reward_fn, EVAL_SAMPLES, seed=20_000)
            runs[run_key(kl_coef)] = {"kl_coef": kl_coef, "before": before, "after": after, "train_seconds": seconds,
                                  "phases": [asdict(s) for s in trainer.stats]}
            trainers[kl_coef] = trainer
        main = trainers[kl_coefs[0]]
        save_models(out_dir, reference, main.policy, tok, main.args)

    # Figures: reward and KL per phase for both runs.
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    colors = dict(zip(kl_coefs, ["tab:blue", "tab:orange", "tab:red", "tab:green", "tab:purple"]))
    for kl_coef, trainer in trainers.items():
        phases = [s.phase for s in trainer.stats]
        label = f"β = {kl_coef:g}" + (" (no KL penalty)" if kl_coef == 0 else "")
        axes[0].plot(phases, [s.reward_mean for s in trainer.stats], lw=1, color=colors.get(kl_coef), label=label)
        axes[1].plot(phases, [s.kl_per_sequence for s in trainer.stats], lw=1, color=colors.get(kl_coef), label=label)
    axes[0].set_ylabel("mean reward of the batch (day 24's reward model)")
    axes[1].set_ylabel("KL(π_θ ‖ π_ref) per completion (nats)")
    axes[1].set_yscale("symlog", linthresh=1)
    for ax in axes:
        ax.set_xlabel(f"phase ({args.batch_size} completions of {args.gen_len} characters each)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title("Reward rises under PPO", fontsize=10)
    axes[1].set_title("The KL penalty keeps the policy near the reference", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_dir / "figures/rlhf_curves.png", dpi=120)
    plt.close(fig)

    penalised, free = runs[run_key(kl_coefs[0])], runs[run_key(kl_coefs[-1])]
    results = {
        "pretrain": {"args": asdict(pretrain), "parameters": gpt2.count_parameters(reference),
                     "final_val_loss": history["val"][-1]["loss"], "seconds": pretrain_seconds},
        "rlhf_args": asdict(args),
        "kl_coefs": list(kl_coefs),
        "runs": runs,
        "headline": {
            "reward_before": penalised["before"]["reward_mean"],
            "reward_after": penalised["after"]["reward_mean"],
            "reward_gain": penalised["after"]["reward_mean"] - penalised["before"]["reward_mean"],
            "kl_after": penalised["after"]["kl_mean"],
            "kl_max_second_half": max(p["kl_per_sequence"] for p in penalised["phases"][args.total_phases // 2:]),
            "kl_after_without_penalty": free["after"]["kl_mean"],
            "reward_after_without_penalty": free["after"]["reward_mean"],
        },
        "samples": {key: [one_line(t) for t in run["after"]["samples"][:3]] for key, run in runs.items()},
        "samples_before": [one_line(t) for t in penalised["before"]["samples"][:3]],
        "experiment_seconds": time.perf_counter() - start,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
