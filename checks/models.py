"""The models the interpretability days and the capstone share, built without the Hugging Face Hub.

- ``gpt2_tokenizer()``: OpenAI's GPT-2 BPE from the shared files ('Hello world' -> [15496, 995]).
- ``gpt2_config(...)`` / ``random_gpt2(...)``: a HookedTransformer of GPT-2 small's exact shape (or
  a smaller one for fast tests) with random weights, plus the Hugging Face ``GPT2LMHeadModel``
  carrying the same weights, for structure and parity checks.
- ``load_gpt2_small()``: the real path, ``HookedTransformer.from_pretrained("gpt2")``, for a
  machine with internet (GPT-2 small's weights do not exist on ours).
- ``smollm2()`` / ``smollm2_hooked()``: SmolLM2-135M-Instruct, a real pretrained chat model, from
  the shared GGUF, as a Hugging Face model and as a HookedTransformer (ARENA's API). The GGUF
  parse is slow (pure-Python metadata reading, ~10-25 s), so a plain copy is cached in the user
  cache and reloads in well under a second with identical logits.

Every loader is memoised per process: days and tests call them freely.

Analyses take their model **by name** (``hooked_model(name)``, ``hf_model(name)``): here
``"smollm2"``, ``"gpt2-random"`` or ``"gpt2"``; on a machine with internet any TransformerLens or
Hugging Face Hub name (ARENA's Llama, Gemma, Qwen, GPT-J models) runs the same code.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import torch

from .assets import cache_dir, resolve

__all__ = ["LOCAL_MODELS", "ModelUnavailable", "SMOLLM2_CHAT_EXAMPLE", "gpt2_config", "gpt2_tokenizer", "hf_model",
           "hooked_model", "load_gpt2_small", "random_gpt2", "smollm2", "smollm2_hooked"]


@functools.lru_cache(maxsize=1)
def gpt2_tokenizer():
    """OpenAI's GPT-2 tokenizer (50,257 tokens) from the offline asset."""
    from transformers import GPT2TokenizerFast

    # Trap (transformers 5): constructing it from vocab_file/merges_file builds an EMPTY tokenizer.
    return GPT2TokenizerFast.from_pretrained(resolve("gpt2-tokenizer"))


def gpt2_config(**overrides):
    """HookedTransformerConfig of GPT-2 small (124M), with any field overridden for small test models."""
    from transformer_lens import HookedTransformerConfig

    fields = dict(d_model=768, d_head=64, n_heads=12, d_mlp=3072, n_layers=12, n_ctx=1024, d_vocab=50257,
                  eps=1e-5, act_fn="gelu_new", normalization_type="LN", use_attn_scale=True,
                  positional_embedding_type="standard", original_architecture="GPT2LMHeadModel",
                  seed=0, device="cpu")
    fields.update(overrides)
    return HookedTransformerConfig(**fields)


def random_gpt2(*, n_layers: int = 12, d_model: int = 768, n_heads: int = 12, d_mlp: int | None = None,
                n_ctx: int = 1024, seed: int = 0, randomize_layernorm: bool = True, tokenizer: bool = True):
    """A GPT-2-shaped model with random weights: (HookedTransformer, GPT2LMHeadModel) sharing them.

    With the defaults it has GPT-2 small's exact shape (HF counts 124,439,808 parameters, the
    unembedding tied to the embedding). LayerNorm weights and biases are randomised too (by
    default) so that TransformerLens's weight folding is really exercised by parity checks.
    """
    from transformer_lens import HookedTransformer
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
    from transformers import GPT2Config, GPT2LMHeadModel

    d_mlp = d_mlp or 4 * d_model
    torch.manual_seed(seed)
    hf_config = GPT2Config(n_layer=n_layers, n_embd=d_model, n_head=n_heads, n_inner=d_mlp, n_positions=n_ctx,
                           vocab_size=50257, activation_function="gelu_new", layer_norm_epsilon=1e-5)
    hf = GPT2LMHeadModel(hf_config).eval()
    if randomize_layernorm:
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name, param in hf.named_parameters():
                if ".ln_" in name or name.startswith("transformer.ln_f"):
                    noise = 0.1 * torch.randn(param.shape, generator=generator)
                    param.copy_((1.0 if name.endswith("weight") else 0.0) + noise)
    cfg = gpt2_config(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_model // n_heads,
                      d_mlp=d_mlp, n_ctx=n_ctx, seed=seed)
    model = HookedTransformer(cfg, tokenizer=gpt2_tokenizer() if tokenizer else None)
    model.load_and_process_state_dict(convert_gpt2_weights(hf, model.cfg))
    return model.eval(), hf


def load_gpt2_small():
    """GPT-2 small's pretrained weights: the real path, which needs the Hugging Face Hub."""
    from transformer_lens import HookedTransformer

    return HookedTransformer.from_pretrained("gpt2")


# ---------------------------------------------------------------- SmolLM2-135M-Instruct

SMOLLM2_CHAT_EXAMPLE = ("What is the capital of France?", "The capital of France is Paris.")


def _gguf_key(gguf: Path) -> str:
    stat = gguf.stat()
    return hashlib.sha256(f"{gguf.name}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]


def _plain_cache(gguf: Path) -> Path:
    return Path(os.environ.get("ARENA_MODEL_CACHE", cache_dir().parent / "models")) / f"smollm2-plain-{_gguf_key(gguf)}"


@functools.lru_cache(maxsize=1)
def smollm2():
    """SmolLM2-135M-Instruct as (AutoModelForCausalLM in float32, eval mode; its tokenizer)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = resolve("smollm2-135m-instruct")
    cached = _plain_cache(gguf)
    if (cached / "config.json").exists() and (cached / "model.safetensors").exists():
        tok = AutoTokenizer.from_pretrained(cached)
        model = AutoModelForCausalLM.from_pretrained(cached, dtype=torch.float32)
        return model.eval(), tok
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain one with the same weights, cache it.
    config = hf.config.to_dict()
    config.pop("quantization_config", None)
    plain = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
    plain.load_state_dict(hf.state_dict())
    plain.eval()
    tmp = cached.with_name(cached.name + f".tmp-{os.getpid()}")
    try:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "SOURCE.json").write_text(json.dumps({"gguf": str(gguf)}) + "\n")
        os.replace(tmp, cached)
    except OSError:
        pass  # a read-only cache only costs speed
    return plain, tok


@functools.lru_cache(maxsize=1)
def smollm2_hooked():
    """SmolLM2-135M-Instruct as a HookedTransformer (the Llama config written out by hand).

    TransformerLens's weight processing (folding the RMSNorm scales, splitting grouped K/V) takes
    several seconds; its result is cached next to the plain model and reloads in about one.
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_llama_weights

    hf, tok = smollm2()
    c = hf.config
    cfg = HookedTransformerConfig(
        d_model=c.hidden_size, d_head=c.hidden_size // c.num_attention_heads, n_heads=c.num_attention_heads,
        d_mlp=c.intermediate_size, n_layers=c.num_hidden_layers, n_ctx=2048, d_vocab=c.vocab_size,
        eps=c.rms_norm_eps, act_fn="silu", n_key_value_heads=c.num_key_value_heads,
        normalization_type="RMS", positional_embedding_type="rotary", rotary_adjacent_pairs=False,
        rotary_dim=c.hidden_size // c.num_attention_heads, rotary_base=c.rope_parameters["rope_theta"],
        final_rms=True, gated_mlp=True, original_architecture="LlamaForCausalLM",
        default_prepend_bos=False, tokenizer_prepends_bos=False, device="cpu")
    processed = _plain_cache(resolve("smollm2-135m-instruct")) / "hooked_processed.pt"
    if processed.exists():
        saved = torch.load(processed, weights_only=False)  # our own cache file: config + weights
        model = HookedTransformer(HookedTransformerConfig.from_dict(saved["cfg"]), tokenizer=tok)
        model.load_state_dict(saved["state_dict"])
        return model.eval()
    model = HookedTransformer(cfg, tokenizer=tok)
    model.load_and_process_state_dict(convert_llama_weights(hf, model.cfg))
    try:
        tmp = processed.with_name(processed.name + f".tmp-{os.getpid()}")
        torch.save({"cfg": model.cfg.to_dict(), "state_dict": model.state_dict()}, tmp)
        os.replace(tmp, processed)
    except OSError:
        pass  # a read-only cache only costs speed
    return model.eval()


# ---------------------------------------------------------------- models by name

LOCAL_MODELS = ("smollm2", "gpt2-random")   # what loads on a machine without the Hub


class ModelUnavailable(RuntimeError):
    """A model name that neither this machine nor the Hub can provide (offline)."""


def _from_hub(name: str, load):
    try:
        return load()
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"model {name!r} is not available here ({type(exc).__name__}: {exc}); "
                               f"offline, use one of {', '.join(LOCAL_MODELS)}") from exc


@functools.lru_cache(maxsize=None)
def hooked_model(name: str = "smollm2"):
    """A HookedTransformer by name, eval mode, memoised: 'smollm2', 'gpt2-random' (GPT-2 small's
    shape, random weights), or any name ``HookedTransformer.from_pretrained`` knows (with internet).

    Callers that change weights in place must restore them."""
    if name == "smollm2":
        return smollm2_hooked()
    if name == "gpt2-random":
        return random_gpt2()[0]
    from transformer_lens import HookedTransformer

    return _from_hub(name, lambda: HookedTransformer.from_pretrained(name).eval())


@functools.lru_cache(maxsize=None)
def hf_model(name: str = "smollm2"):
    """(AutoModelForCausalLM in float32, eval mode; tokenizer) by name: 'smollm2' from the shared
    asset, else a Hugging Face Hub id (with internet)."""
    if name == "smollm2":
        return smollm2()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return _from_hub(name, lambda: (AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32).eval(),
                                    AutoTokenizer.from_pretrained(name)))
