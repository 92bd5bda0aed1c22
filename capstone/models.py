"""The models the Gauntlet runs on, chosen by name so that every analysis takes the model as a parameter.

- ``"gpt2"``: GPT-2 small's pretrained weights, ``HookedTransformer.from_pretrained("gpt2")``: the
  spec's model and the default on a machine with internet (its weights do not exist on ours).
- ``"gpt2-random"``: GPT-2 small's exact shape and the real GPT-2 tokenizer with random weights:
  every structural and numerical identity (shapes, rank-nullity, gradients, symmetries) is
  checked on it here.
- ``"smollm2"``: SmolLM2-135M-Instruct from the shared assets, a real pretrained chat model: the
  analyses that need learned behaviour (semantics, sycophancy, patching, probes, steering).

Every figure and number in the report names the model it came from (``ModelSpec.label``).
"""

from __future__ import annotations

from dataclasses import dataclass

from checks.models import hooked_model

__all__ = ["MODELS", "ModelSpec", "load"]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    label: str  # how the report names it
    trained: bool  # whether its weights were learned (semantic results only mean something then)


MODELS = {
    "gpt2": ModelSpec("gpt2", "GPT-2 small (pretrained)", True),
    "gpt2-random": ModelSpec("gpt2-random", "GPT-2-small-shaped, random weights", False),
    "smollm2": ModelSpec("smollm2", "SmolLM2-135M-Instruct (pretrained)", True),
}


def load(name: str = "gpt2"):
    """The HookedTransformer called ``name`` (see MODELS), in eval mode, memoised per process
    (checks.models.hooked_model). Callers that change weights in place (gradient checks,
    symmetry tests) must restore them."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return hooked_model(name)
