"""Day 50: Activation Oracles Intro.

ARENA section: 1.3.4 Activation Oracles (https://learn.arena.education/chapter1_transformer_interp/14_activation_oracles/).

An *activation oracle* is a language model that reads another model's activation and answers a question
about it in words. The activation h (from layer l of the subject, at some token) is placed into the oracle's
own forward pass at a placeholder token " ?" of its prompt, by *norm-matched addition* at an early layer:

    r_p  <-  r_p + c · ‖r_p‖ · h / ‖h‖         (p a placeholder position, c the steering coefficient)

so the injected vector has the size the oracle's residual stream already has there, whatever the scale of
the source layer. ARENA's oracle is a LoRA-trained Qwen; today's is *untrained*: SmolLM2 reads its own
activation through an identity prompt ("cat -> cat; 1135 -> 1135; hello -> hello; ? ->", Patchscopes), and
we measure at which source layers the token identity can still be decoded.

Every function takes the model by name (``checks.models.hf_model``): 'smollm2' here, a Hub id (ARENA's
Qwen3) with internet. Layer l means the output of decoder block l (Hugging Face's hidden_states[l + 1]).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from checks.models import hf_model

P40 = importlib.import_module("days.040.probes_theory")   # day 40's Wilson interval

SPECIAL_TOKEN = " ?"
IDENTITY_PROMPT = "cat -> cat; 1135 -> 1135; hello -> hello;" + SPECIAL_TOKEN + " ->"
SOURCE_TEMPLATE = "Here is a word: {}"
INJECTION_LAYER = 1          # ARENA's (and the Activation Oracles paper's) injection layer
COEFFICIENTS = (1.0, 2.0, 4.0)

# Candidate words for token-identity decoding; only those that are one token (with a leading space) are used.
CANDIDATE_WORDS = (
    "dog cat house river apple green music table window paper water mountain king phone chair bread happy "
    "money school garden doctor winter summer island forest ocean bridge train horse night light stone "
    "flower market church letter story power heart color planet sister brother island glass silver yellow "
    "camera pencil engine rabbit orange kitchen soldier violin dragon castle pirate button candle ticket "
    "basket ladder wallet jacket mirror pillow carpet tunnel valley desert").split()


def layers_of(model) -> torch.nn.ModuleList:
    """The decoder blocks of a Hugging Face causal LM (Llama, Qwen, Gemma: ``model.model.layers``)."""
    return model.model.layers


def _hidden(out) -> Tensor:
    return out[0] if isinstance(out, tuple) else out


def _replace_hidden(out, h: Tensor):
    return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h


# ---------------------------------------------------------------- collecting activations


class EarlyStopException(Exception):
    """Raised by the hook on the last layer we need: the rest of the forward pass never runs."""


def collect_activations_multiple_layers(model, layers: list[int], inputs_BL: dict[str, Tensor],
                                        min_offset: int | None = None, max_offset: int | None = None
                                        ) -> dict[int, Float[Tensor, "batch pos d_model"]]:
    """The residual stream after each block in ``layers``, stopping the forward pass after the deepest one.

    A forward hook on block l saves its output; the hook on max(layers) then raises EarlyStopException, so
    blocks max(layers)+1 … n-1 and the unembedding never run. ``min_offset``/``max_offset`` (negative, as
    ARENA's) keep only positions [max_offset, min_offset) from the end, e.g. (-1, -3) keeps the last two."""
    saved: dict[int, Tensor] = {}
    last = max(layers)

    def make_hook(l: int):
        def hook(module, inputs, out):
            h = _hidden(out)
            if min_offset is not None or max_offset is not None:
                h = h[:, max_offset:min_offset]
            saved[l] = h.detach()
            if l == last:
                raise EarlyStopException
        return hook

    handles = [layers_of(model)[l].register_forward_hook(make_hook(l)) for l in sorted(set(layers))]
    try:
        with torch.no_grad():
            model(**inputs_BL)
    except EarlyStopException:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return saved


# ---------------------------------------------------------------- the oracle's prompt


def get_introspection_prefix(layer: int, num_positions: int) -> str:
    """ARENA's prefix: 'Layer: {layer}\\n' then ``num_positions`` placeholder tokens ' ?' and ' \\n'."""
    return f"Layer: {layer}\n" + SPECIAL_TOKEN * num_positions + " \n"


def find_pattern_in_tokens(token_ids: list[int], special_token_str: str, num_positions: int, tokenizer) -> list[int]:
    """The positions of the placeholder token in ``token_ids``: exactly ``num_positions`` of them, consecutive."""
    special = tokenizer.encode(special_token_str, add_special_tokens=False)
    if len(special) != 1:
        raise ValueError(f"{special_token_str!r} is {len(special)} tokens, not one")
    positions = [i for i, t in enumerate(token_ids) if t == special[0]]
    if len(positions) != num_positions:
        raise ValueError(f"found {len(positions)} placeholders, expected {num_positions}")
    if positions and positions[-1] - positions[0] != num_positions - 1:
        raise ValueError(f"placeholders are not consecutive: {positions}")
    return positions


# ---------------------------------------------------------------- injecting


def get_hf_activation_steering_hook(vectors: Float[Tensor, "batch n_pos d_model"], positions: list[list[int]],
                                    steering_coefficient: float = 1.0):
    """A forward hook for a decoder block: r[b, p_i] ← r[b, p_i] + c · ‖r[b, p_i]‖ · v[b, i] / ‖v[b, i]‖.

    Norm-matched addition: the added vector has ``c`` times the norm the residual stream has at that position,
    so an activation from any layer (norms from ~10 to ~10³) lands at the oracle's own scale. Only a forward
    pass of more than one position that reaches the placeholders is changed (the prompt's; in generation with a
    KV cache, later steps see one new position and pass through untouched, as in ARENA's hook)."""
    def hook(module, inputs, out):
        h = _hidden(out)
        if h.shape[1] == 1 or h.shape[1] <= max(max(p) for p in positions):
            return out           # a cached generation step (one new token), or a pass without the placeholders
        h = h.clone()
        for b, pos in enumerate(positions):
            idx = torch.tensor(pos)
            r = h[b, idx]                                                       # [n_pos, d]
            v = vectors[b].to(h.dtype)
            h[b, idx] = r + steering_coefficient * r.norm(dim=-1, keepdim=True) * v / v.norm(dim=-1, keepdim=True)
        return _replace_hidden(out, h)
    return hook


@contextlib.contextmanager
def add_hook(module: torch.nn.Module, hook):
    """Register a forward hook for the duration of the block."""
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@dataclass
class OracleInput:
    """What the oracle reads: its prompt's token ids, where the placeholders are, and what goes there."""

    input_ids: Int[Tensor, "batch seq"]
    positions: list[list[int]]
    vectors: Float[Tensor, "batch n_pos d_model"]


def create_oracle_input(prompt: str, layer: int, num_positions: int, tokenizer,
                        acts_BD: Float[Tensor, "batch n_pos d_model"] | Float[Tensor, "batch d_model"],
                        *, chat: bool = True, prefix: bool = True) -> OracleInput:
    """The oracle's input: ARENA's introspection prefix (naming the source layer, with ``num_positions``
    placeholders) before the question ``prompt``, in the chat template (``chat``); or, with ``prefix=False``,
    a prompt that carries its own placeholders (the identity prompt). The same text for every row of
    ``acts_BD``; ``positions`` found by ``find_pattern_in_tokens``."""
    if acts_BD.ndim == 2:
        acts_BD = acts_BD[:, None]
    assert acts_BD.shape[1] == num_positions, (acts_BD.shape, num_positions)
    text = (get_introspection_prefix(layer, num_positions) + prompt) if prefix else prompt
    if chat:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                            tokenize=True, return_dict=True)["input_ids"]
    else:
        ids = tokenizer.encode(text, add_special_tokens=False)
    positions = find_pattern_in_tokens(ids, SPECIAL_TOKEN, num_positions, tokenizer)
    batch = acts_BD.shape[0]
    return OracleInput(torch.tensor([ids] * batch), [positions] * batch, acts_BD)


def run_oracle(model_name: str, oracle_input: OracleInput, *, injection_layer: int = INJECTION_LAYER,
               steering_coefficient: float = 1.0, max_new_tokens: int = 1, share_prefix: bool = True
               ) -> tuple[Tensor, Tensor]:
    """Greedy generation by the oracle with the activations injected: (new token ids [batch, new],
    first-step logits [batch, vocab]). One row per activation; all rows share one prompt, so no padding.

    With ``share_prefix`` the tokens before the first placeholder, identical in every row and causally upstream
    of the injection, go through the model once (batch 1); their keys and values are repeated for the batch and
    only the rest of the prompt runs per row, the hook's positions shifted accordingly."""
    model, _ = hf_model(model_name)
    ids, positions = oracle_input.input_ids, oracle_input.positions
    start = min(min(p) for p in positions) if share_prefix else 0
    start = min(start, ids.shape[1] - 2)       # the steered pass must see more than one position (see the hook)
    past = None
    with torch.no_grad():
        if start > 0:
            assert (ids[:, :start] == ids[:1, :start]).all(), "rows must share the prefix"
            past = model(input_ids=ids[:1, :start], use_cache=True).past_key_values
            past.batch_repeat_interleave(ids.shape[0])
        hook = get_hf_activation_steering_hook(oracle_input.vectors, [[q - start for q in p] for p in positions],
                                               steering_coefficient)
        with add_hook(layers_of(model)[injection_layer], hook):
            out = model(input_ids=ids[:, start:], past_key_values=past, use_cache=True)
            logits, past = out.logits[:, -1], out.past_key_values
            new = [logits.argmax(-1)]
            for _ in range(max_new_tokens - 1):
                out = model(input_ids=new[-1][:, None], past_key_values=past, use_cache=True)
                past = out.past_key_values
                new.append(out.logits[:, -1].argmax(-1))
    return torch.stack(new, 1), logits


# ---------------------------------------------------------------- token identity


def identity_words(tokenizer, words=CANDIDATE_WORDS) -> list[str]:
    """The candidate words (deduplicated, in order) that are a single token with a leading space."""
    seen: list[str] = []
    for w in words:
        if w not in seen and len(tokenizer.encode(" " + w, add_special_tokens=False)) == 1:
            seen.append(w)
    return seen


def source_activations(model_name: str, words: list[str], layers: list[int]) -> dict[int, Tensor]:
    """Layer -> [n_words, d_model]: the residual stream at each word (the last token of SOURCE_TEMPLATE)."""
    model, tok = hf_model(model_name)
    enc = tok([SOURCE_TEMPLATE.format(w) for w in words], return_tensors="pt")
    lengths = {len(tok.encode(SOURCE_TEMPLATE.format(w), add_special_tokens=False)) for w in words}
    assert len(lengths) == 1, "single-token words give equal lengths (no padding)"
    acts = collect_activations_multiple_layers(model, layers, dict(input_ids=enc["input_ids"]), max_offset=-1)
    return {l: a[:, -1] for l, a in acts.items()}


def random_like_norms(acts: Float[Tensor, "n d"], seed: int) -> Float[Tensor, "n d"]:
    """Gaussian vectors with each row's norm equal to that of ``acts`` (the control: the hook only sees the
    direction anyway, but the control keeps the norm so nothing else differs)."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(acts.shape, generator=g)
    return r * acts.norm(dim=-1, keepdim=True) / r.norm(dim=-1, keepdim=True)


def decode_token_identity(model_name: str, words: list[str], acts: Float[Tensor, "n d"], *,
                          injection_layer: int = INJECTION_LAYER, steering_coefficient: float = 1.0) -> dict:
    """The untrained oracle on the identity prompt: does its next token equal the source word's token?
    Returns per word: correct (bool), the margin of the decision (logit of its top token minus the runner-up:
    how much rounding it would take to flip it), and the predicted token."""
    _, tok = hf_model(model_name)
    target = torch.tensor([tok.encode(" " + w, add_special_tokens=False)[0] for w in words])
    oracle_input = create_oracle_input(IDENTITY_PROMPT, 0, 1, tok, acts, chat=False, prefix=False)
    new, logits = run_oracle(model_name, oracle_input, injection_layer=injection_layer,
                             steering_coefficient=steering_coefficient)
    top2 = logits.topk(2, dim=-1).values
    return dict(correct=(new[:, 0] == target).tolist(), margin=(top2[:, 0] - top2[:, 1]).tolist(),
                predicted=tok.convert_ids_to_tokens(new[:, 0].tolist()), max_abs_logit=logits.abs().max().item())


def identity_curve(model_name: str, layers: list[int], words: list[str], coefficients=COEFFICIENTS,
                   injection_layer: int = INJECTION_LAYER, seed: int = 0) -> dict:
    """Token-identity accuracy by source layer, for each steering coefficient, and for the control (a random
    vector of the activation's norm). Entries: {coef: {'oracle': [per layer ...], 'control': [...]}}."""
    acts = source_activations(model_name, words, layers)
    out: dict = {}
    for c in coefficients:
        rows = {"oracle": [], "control": []}
        for l in layers:
            for kind, vec in (("oracle", acts[l]), ("control", random_like_norms(acts[l], seed + l))):
                r = decode_token_identity(model_name, words, vec, injection_layer=injection_layer,
                                          steering_coefficient=c)
                k = sum(r["correct"])
                rows[kind].append(dict(layer=l, k=k, n=len(words), accuracy=k / len(words),
                                       ci=list(P40.wilson_interval(k, len(words))), correct=r["correct"],
                                       margin=r["margin"], max_abs_logit=r["max_abs_logit"],
                                       predicted=r["predicted"]))
        out[f"{c:g}"] = rows
    return out


# ---------------------------------------------------------------- experiment


def plot_curve(curve: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4))
    for i, (c, rows) in enumerate(curve.items()):
        color = f"C{i}"
        for kind, style in (("oracle", "-o"), ("control", ":x")):
            layers = [r["layer"] for r in rows[kind]]
            acc = [r["accuracy"] for r in rows[kind]]
            lo = [r["accuracy"] - r["ci"][0] for r in rows[kind]]
            hi = [r["ci"][1] - r["accuracy"] for r in rows[kind]]
            ax.errorbar(layers, acc, yerr=[lo, hi], fmt=style, color=color, ms=3, capsize=2, lw=1,
                        label=f"c = {c}, {'activation' if kind == 'oracle' else 'random vector'}")
    ax.set_xlabel("source layer l (activation of the word after block l)")
    ax.set_ylabel("token-identity accuracy")
    ax.set_ylim(-0.03, 1.03)
    ax.legend(fontsize=7, ncol=2, loc="center left")
    ax.set_title("Untrained oracle (SmolLM2, identity prompt, injected at layer 1)")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def summarise(curve: dict) -> dict:
    """Per coefficient: the best layer (the earliest among ties) with its accuracy and interval, the layers where
    at least half the words decode, the mean accuracy over layers, the control's best, and how many of the
    oracle's answers are ' hello' (the identity prompt's last example, repeated instead of the injection)."""
    summary = {}
    for c, rows in curve.items():
        best = max(rows["oracle"], key=lambda r: (r["accuracy"], -r["layer"]))
        half = [r["layer"] for r in rows["oracle"] if r["accuracy"] >= 0.5]
        answers = [p for r in rows["oracle"] for p in r["predicted"]]
        summary[c] = dict(best_layer=best["layer"], best_accuracy=best["accuracy"], best_ci=best["ci"],
                          first_layer_at_least_half=min(half, default=None),
                          last_layer_at_least_half=max(half, default=None),
                          mean_accuracy=sum(r["accuracy"] for r in rows["oracle"]) / len(rows["oracle"]),
                          control_max_accuracy=max(r["accuracy"] for r in rows["control"]),
                          control_correct=sum(r["k"] for r in rows["control"]),
                          control_n=sum(r["n"] for r in rows["control"]),
                          hello_share=sum(p == "Ġhello" for p in answers) / len(answers))
    return summary


def run_experiment(out_dir: Path, model_name: str = "smollm2") -> dict:
    """The token-identity curve over all source layers, three coefficients and the control; figure + results."""
    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    model, tok = hf_model(model_name)
    wall, cpu = time.perf_counter(), time.process_time()
    words = identity_words(tok)
    layers = list(range(model.config.num_hidden_layers))
    curve = identity_curve(model_name, layers, words)
    plot_curve(curve, out_dir / "figures" / "identity_curve.png")
    summary = summarise(curve)
    results = dict(model=model_name, words=words, n_words=len(words), source_template=SOURCE_TEMPLATE,
                   identity_prompt=IDENTITY_PROMPT, injection_layer=INJECTION_LAYER, layers=layers,
                   coefficients=[f"{c:g}" for c in COEFFICIENTS], curve=curve, summary=summary,
                   wall_seconds=time.perf_counter() - wall, cpu_seconds=time.process_time() - cpu,
                   torch_threads=torch.get_num_threads())
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
