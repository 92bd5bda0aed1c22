"""Day 73: Pitfalls and benchmark gaming, measured on SmolLM2-135M-Instruct (ARENA 3.1).

ARENA section: 3.1 Intro to Evals (https://learn.arena.education/chapter3_llm_evals/01_intro_to_evals/).

Four ways an eval number can mislead, each measured:

1. **Answer-position bias.** Every factual question of day 76's dataset is shown under all $k$ cyclic
   shifts of its options (the target follows its text); the model answers by the log-probability of the
   option letter after ``ANSWER:`` (day 71's method, here over the full vocabulary). Measured: the
   distribution of answered letters, accuracy by the position of the correct answer, and accuracy after
   averaging each option's log-probability over the shifts, which removes any additive letter prior:
   if $\\ell_{q,s}(L) = \\pi(L) + c_q(\\text{text at } L)$, the shift average of option $i$'s score is
   $c_q(i) + \\bar\\pi$, whose argmax is the prior-free answer.
2. **Template sensitivity.** The same questions under paraphrased prompt templates: the spread of accuracy.
3. **Memorisation.** Per-token loss on famous public-domain passages (very likely in the pretraining data)
   against the same passages paraphrased and word-shuffled, and WikiText-2 text; and whether greedy
   decoding continues each passage verbatim. Caveat: SmolLM2's training set is not enumerated here, so a
   low loss is evidence, not proof, of having seen a text.
4. **A leaky scorer.** ``leaky_letter`` accepts any completion that contains the target letter; a
   zero-knowledge model that always replies ``ANSWER: ABCD`` scores 100% with it, and 0% with inspect's
   ``choice()`` or day 76's strict ``answer_letter``.

Importing this module loads no model.
"""

from __future__ import annotations

import importlib
import json
import math
import random
import re
import time
from pathlib import Path

import torch
from inspect_ai.model import (ChatCompletionChoice, ChatMessageAssistant, ModelAPI, ModelOutput, ModelUsage,
                              modelapi)
from inspect_ai.scorer import CORRECT, INCORRECT, Score, Target, accuracy, scorer, stderr
from inspect_ai.solver import TaskState
from inspect_ai.solver._multiple_choice import SINGLE_ANSWER_TEMPLATE
from inspect_ai.solver._multiple_choice import prompt as inspect_prompt
from inspect_ai.solver._task_state import Choices

llm = importlib.import_module("days.071.llm")
setup = importlib.import_module("days.076.inspect_setup")

HERE = Path(__file__).parent
PRACTICE_KEEP = ("plot_results",)  # drawing the figures is not one of ARENA's exercises: the learner gets it as is
LETTERS = setup.LETTERS
PREFILL = "ANSWER:"

__all__ = ["FAMOUS", "TEMPLATES", "ZeroKnowledgeAPI", "cyclic_shifts", "debiased_answers", "greedy_continuation",
           "leaky_letter", "letter_logprobs_full", "mcq_conversation", "permute_record", "per_token_loss",
           "position_bias_summary", "run_experiment", "shuffle_words", "wikitext_passages"]


# ---------------------------------------------------------------------------------------------
# Options under permutation
# ---------------------------------------------------------------------------------------------

def permute_record(record: dict, order: list[int]) -> dict:
    """The record with its answers shown in ``order`` (new position j shows old answer ``order[j]``);
    ``answer_matching_behavior`` and ``answer_not_matching_behavior`` follow their texts."""
    labels, texts = list(record["answers"]), list(record["answers"].values())
    if sorted(order) != list(range(len(texts))):
        raise ValueError(f"not a permutation of {len(texts)} options: {order}")
    new_label = {labels[old]: LETTERS[new] for new, old in enumerate(order)}
    return {**record, "answers": {LETTERS[j]: texts[old] for j, old in enumerate(order)},
            "answer_matching_behavior": sorted(new_label[x] for x in record["answer_matching_behavior"]),
            "answer_not_matching_behavior": sorted(new_label[x] for x in record["answer_not_matching_behavior"])}


def cyclic_shifts(record: dict) -> list[dict]:
    """All k cyclic shifts of a record's k options: shift s shows old answer (j + s) mod k at position j,
    so the correct answer visits every position exactly once."""
    k = len(record["answers"])
    return [permute_record(record, [(j + s) % k for j in range(k)]) for s in range(k)]


# ---------------------------------------------------------------------------------------------
# Prompt templates (paraphrases of one instruction) and letter log-probabilities
# ---------------------------------------------------------------------------------------------

TEMPLATES = {
    "inspect": SINGLE_ANSWER_TEMPLATE,
    "arena": setup.TEMPLATE_MCQ,
    "terse": "{question}\n\n{choices}\n\nAnswer with the letter of the correct option ({letters}).",
    "choices_first": "Options:\n{choices}\n\nQuestion: {question}\n\nWhich option is correct? Reply as 'ANSWER: X' "
                     "with X one of {letters}.",
}


def mcq_conversation(record: dict, template: str = SINGLE_ANSWER_TEMPLATE) -> list[dict]:
    """The chat the model answers: [system], user = inspect's rendering of the template (question, "A) ..."
    lines, letters "A,B,C,D"), and the assistant turn prefilled with ``ANSWER:`` (as day 71's solver)."""
    user = inspect_prompt(record["question"], Choices(list(record["answers"].values())), template)
    system = [{"role": "system", "content": record["system"]}] if record.get("system") else []
    return system + [{"role": "user", "content": user}, {"role": "assistant", "content": PREFILL}]


def _letter_token_ids(tok, letters: str) -> list[list[int]]:
    """For each letter, the vocabulary ids of its single-token spellings ("A" and " A")."""
    out = []
    for L in letters:
        encodings = [tok.encode(s, add_special_tokens=False) for s in (L, " " + L)]
        out.append(sorted({e[0] for e in encodings if len(e) == 1}))
    return out


def letter_logprobs_full(conversations: list[list[dict]], n_letters: int = 4, batch_size: int = 16,
                         model_name: str = "smollm2") -> torch.Tensor:
    """$\\log p(L \\mid \\text{prompt})$ for the first ``n_letters`` letters, shape [n_conv, n_letters].

    Full-vocabulary log-softmax at the last position of each chat-templated conversation (the last
    message an assistant prefill, continued), summed over the letter's spellings:
    $\\log p(L) = \\operatorname{logsumexp}(\\ell_{\\text{"L"}}, \\ell_{\\text{" L"}})$. Left-padded batches
    with positions counted over real tokens, one torch thread.
    """
    from checks.models import hf_model
    from checks.timing import single_thread

    model, tok = hf_model(model_name)
    spell = _letter_token_ids(tok, LETTERS[:n_letters])
    prompts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=False, continue_final_message=True)
               for c in conversations]
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    rows = []
    with single_thread(), torch.no_grad():
        for i in range(0, len(prompts), batch_size):
            batch = tok(prompts[i:i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            position_ids = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            logits = model(**batch, position_ids=position_ids).logits[:, -1, :].float()
            lp = torch.log_softmax(logits, dim=-1)
            rows.append(torch.stack([torch.logsumexp(lp[:, ids], dim=-1) for ids in spell], dim=-1))
    return torch.cat(rows)


# ---------------------------------------------------------------------------------------------
# Position-bias summaries
# ---------------------------------------------------------------------------------------------

def debiased_answers(logprobs: torch.Tensor) -> torch.Tensor:
    """Permutation-averaged answers. ``logprobs[q, s, j]`` is the score of letter j for question q under
    cyclic shift s (position j shows option (j + s) mod k). Option i sits at position (i - s) mod k, so its
    shift-averaged score is $\\bar\\ell_q(i) = \\frac1k\\sum_s \\ell_{q,s}((i - s) \\bmod k)$; returns
    $\\arg\\max_i \\bar\\ell_q(i)$, shape [Q] (original option indices)."""
    Q, S, k = logprobs.shape
    idx = torch.tensor([[(i - s) % k for i in range(k)] for s in range(S)])  # [S, k]: position of option i
    per_option = torch.gather(logprobs, 2, idx.expand(Q, S, k))
    return per_option.mean(dim=1).argmax(dim=-1)


def position_bias_summary(logprobs: torch.Tensor, targets: list[int]) -> dict:
    """From ``logprobs[q, s, j]`` (cyclic shifts, see ``debiased_answers``) and each question's original
    target index: answered-letter counts and proportions with Wilson intervals, a chi-square test of the
    letters against uniform, accuracy by the correct answer's position, overall and permutation-debiased
    accuracy, and the share of questions answered with the same option text under every shift."""
    from scipy.stats import chisquare

    Q, S, k = logprobs.shape
    answers = logprobs.argmax(dim=-1)  # [Q, S] letter positions
    t = torch.tensor(targets)
    correct_pos = (t[:, None] - torch.arange(S)[None, :]) % k  # where the target sits under shift s
    right = answers == correct_pos
    counts = [int((answers == j).sum()) for j in range(k)]
    chosen_option = (answers + torch.arange(S)[None, :]) % k  # the original index of the chosen text
    consistent = int((chosen_option == chosen_option[:, :1]).all(dim=1).sum())
    by_pos = {LETTERS[p]: setup.proportion(int(right[correct_pos == p].sum()), int((correct_pos == p).sum()))
              for p in range(k)}
    deb = debiased_answers(logprobs)
    return {"n_questions": Q, "n_prompts": Q * S,
            "letter_counts": dict(zip(LETTERS, counts)),
            "letter_share": {LETTERS[j]: setup.proportion(counts[j], Q * S) for j in range(k)},
            "chi2_uniform_p": float(chisquare(counts).pvalue),
            "accuracy": setup.proportion(int(right.sum()), Q * S),
            "accuracy_by_correct_position": by_pos,
            "consistent_across_shifts": setup.proportion(consistent, Q),
            "debiased_accuracy": setup.proportion(int((deb == t).sum()), Q)}


# ---------------------------------------------------------------------------------------------
# Memorisation
# ---------------------------------------------------------------------------------------------

# (id, famous public-domain passage, our paraphrase of it)
FAMOUS = [
    ("declaration", "We hold these truths to be self-evident, that all men are created equal, that they are endowed by "
     "their Creator with certain unalienable Rights, that among these are Life, Liberty and the pursuit of Happiness.",
     "We take these facts as obvious: every person is born equal, and each has been given by the one who made them "
     "some rights that cannot be taken away, among them living, being free and seeking joy."),
    ("gettysburg", "Four score and seven years ago our fathers brought forth on this continent, a new nation, conceived "
     "in Liberty, and dedicated to the proposition that all men are created equal.",
     "Eighty-seven years back, our ancestors founded a new country on this land, born in freedom and committed to the "
     "idea that every person is equal."),
    ("hamlet", "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer the slings and "
     "arrows of outrageous fortune, or to take arms against a sea of troubles",
     "Should I live or should I die, that is what I must decide: whether it is braver to endure the blows of cruel "
     "luck, or to fight back against an ocean of problems"),
    ("genesis", "In the beginning God created the heaven and the earth. And the earth was without form, and void; and "
     "darkness was upon the face of the deep.",
     "At the start of everything God made the sky and the land. The land had no shape and was empty, and the deep "
     "waters lay in the dark."),
    ("two_cities", "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
     "foolishness, it was the epoch of belief, it was the epoch of incredulity",
     "Those days were the finest and also the most terrible, a period of good sense and of silliness, an era of faith "
     "and an era of doubt"),
    ("lords_prayer", "Our Father, which art in heaven, Hallowed be thy Name. Thy Kingdom come. Thy will be done in "
     "earth, As it is in heaven.",
     "Father of ours who lives in the sky, may your name be kept holy. May your rule arrive, and may what you want "
     "happen here on the ground just as it does above."),
    ("pride_prejudice", "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
     "must be in want of a wife.",
     "Everybody agrees that an unmarried man who has a lot of money is surely looking for someone to marry."),
    ("preamble", "We the People of the United States, in Order to form a more perfect Union, establish Justice, insure "
     "domestic Tranquility, provide for the common defence, promote the general Welfare",
     "The citizens of America, wanting a better union, set up fairness, keep the peace at home, arrange for shared "
     "protection and advance the wellbeing of all"),
    ("moby_dick", "Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my "
     "purse, and nothing particular to interest me on shore, I thought I would sail about a little and see the "
     "watery part of the world.",
     "My name is Ishmael. A few years back, the exact number does not matter, I had almost no cash and nothing on land "
     "held my attention, so I decided to go to sea for a while and look at the oceans."),
    ("twinkle", "Twinkle, twinkle, little star, How I wonder what you are! Up above the world so high, Like a diamond "
     "in the sky.",
     "Shine and sparkle, tiny star, I am curious about what you might be! High over the planet, like a gem up in the "
     "heavens."),
    ("psalm_23", "The Lord is my shepherd; I shall not want. He maketh me to lie down in green pastures: he leadeth me "
     "beside the still waters.",
     "God looks after me like a herdsman, so I lack nothing. He lets me rest in fresh meadows and guides me next to "
     "calm streams."),
    ("pledge", "I pledge allegiance to the Flag of the United States of America, and to the Republic for which it "
     "stands, one Nation under God, indivisible, with liberty and justice for all.",
     "I promise loyalty to the American flag and to the country it represents, a single nation under God that cannot "
     "be divided, where everyone has freedom and fairness."),
]


def shuffle_words(text: str, seed: int) -> str:
    """The words of ``text`` in a seeded random order (same words, same counts, no syntax)."""
    words = text.split()
    random.Random(seed).shuffle(words)
    return " ".join(words)


def _detokenize_wikitext(line: str) -> str:
    line = line.replace(" @-@ ", "-").replace(" @.@ ", ".").replace(" @,@ ", ",")
    line = re.sub(r" ([.,;:!?)'])", r"\1", line)
    line = line.replace("( ", "(").replace(" n't", "n't").replace(" 's", "'s")
    return line.strip()


def wikitext_passages(path: Path, n: int = 12, min_words: int = 20, max_words: int = 40) -> list[str]:
    """``n`` passages from WikiText-2 (Wikipedia, so plausibly in pretraining, though not famous): the first
    sentence of body paragraphs without ``<unk>``, of ``min_words``-``max_words`` words, detokenized, taken at
    evenly spaced paragraphs so they come from different articles."""
    paras = [p for p in Path(path).read_text(encoding="utf-8").split("\n")
             if p.strip() and not p.strip().startswith("=") and "<unk>" not in p]
    picked = []
    step = max(1, len(paras) // (4 * n))
    for p in paras[::step]:
        sentence = _detokenize_wikitext(p.split(" . ")[0]) + "."
        if min_words <= len(sentence.split()) <= max_words:
            picked.append(sentence)
        if len(picked) == n:
            break
    return picked


def per_token_loss(texts: list[str], model_name: str = "smollm2") -> list[list[float]]:
    """Per-token negative log-likelihood $-\\log p(x_t \\mid x_{<t})$, $t = 2 \\dots T$, of each raw text
    (no chat template, BOS prepended if the tokenizer has one), one text per forward pass."""
    from checks.models import hf_model
    from checks.timing import single_thread

    model, tok = hf_model(model_name)
    out = []
    with single_thread(), torch.no_grad():
        for text in texts:
            ids = tok(text, return_tensors="pt")["input_ids"]
            logits = model(input_ids=ids).logits[0, :-1].float()
            nll = -torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None])[:, 0]
            out.append(nll.tolist())
    return out


def greedy_continuation(texts: list[str], n_prefix_words: int, n_new: int = 16,
                        model_name: str = "smollm2") -> list[dict]:
    """Extractable memorisation: greedy-decode ``n_new`` tokens after the first ``n_prefix_words`` words of
    each text (no chat template) and count how many of the text's true next tokens it reproduces in a row."""
    from checks.models import hf_model
    from checks.timing import single_thread

    model, tok = hf_model(model_name)
    out = []
    with single_thread(), torch.no_grad():
        for text in texts:
            words = text.split()
            prefix = " ".join(words[:n_prefix_words])
            p_ids = tok(prefix, return_tensors="pt")["input_ids"]
            full = tok(text, return_tensors="pt")["input_ids"][0]
            if not torch.equal(full[:p_ids.shape[1]], p_ids[0]):
                raise ValueError(f"prefix tokenizes differently inside the text: {prefix!r}")
            truth = full[p_ids.shape[1]:p_ids.shape[1] + n_new].tolist()
            gen = model.generate(p_ids, attention_mask=torch.ones_like(p_ids), max_new_tokens=len(truth),
                                 do_sample=False, pad_token_id=tok.eos_token_id)[0, p_ids.shape[1]:].tolist()
            run = next((i for i, (a, b) in enumerate(zip(gen, truth)) if a != b), min(len(gen), len(truth)))
            out.append({"prefix": prefix, "continuation": tok.decode(gen), "truth": tok.decode(truth),
                        "n_truth": len(truth), "verbatim_tokens": run})
    return out


# ---------------------------------------------------------------------------------------------
# A leaky scorer and a zero-knowledge model that games it
# ---------------------------------------------------------------------------------------------

@scorer(metrics=[accuracy(), stderr()])
def leaky_letter():
    """A broken MCQ scorer: correct if the target letter appears anywhere in the completion."""

    async def score(state: TaskState, target: Target) -> Score:
        completion = state.output.completion
        hit = any(t in completion for t in target.target)
        return Score(value=CORRECT if hit else INCORRECT, answer=completion, explanation=completion)

    return score


class ZeroKnowledgeAPI(ModelAPI):
    """An inspect model that never reads its input: it replies ``ANSWER: ABCD`` to everything
    (``zeroknowledge/abcd``). Not a stand-in for a model: the adversary a scorer must withstand."""

    def __init__(self, model_name: str, base_url: str | None = None, api_key: str | None = None, config=None,
                 reply: str = "ANSWER: ABCD", **model_args):
        from inspect_ai.model import GenerateConfig

        super().__init__(model_name=model_name, base_url=base_url, api_key=api_key, config=config or GenerateConfig())
        self.reply = reply

    async def generate(self, input, tools, tool_choice, config):
        return ModelOutput(model=self.model_name, choices=[ChatCompletionChoice(
            message=ChatMessageAssistant(content=self.reply, model=self.model_name), stop_reason="stop")],
            usage=ModelUsage(input_tokens=1, output_tokens=len(self.reply), total_tokens=1 + len(self.reply)))


@modelapi(name="zeroknowledge")
def _zeroknowledge():
    return ZeroKnowledgeAPI


def gaming_eval(records: list[dict], log_dir: Path, model: str = "zeroknowledge/abcd"):
    """Inspect's ``multiple_choice()`` on the records, scored by the leaky scorer, inspect's ``choice()`` and
    day 76's strict ``answer_letter``; returns the log read back with ``read_eval_log``."""
    from inspect_ai import Task, eval as inspect_eval
    from inspect_ai.dataset import MemoryDataset
    from inspect_ai.log import read_eval_log
    from inspect_ai.scorer import choice
    from inspect_ai.solver import multiple_choice

    task = Task(dataset=MemoryDataset([setup.record_to_sample(r) for r in records]), solver=multiple_choice(),
                scorer=[leaky_letter(), choice(), setup.answer_letter()], name="gaming_eval")
    [log] = inspect_eval(task, model=model, log_dir=str(log_dir), log_format="eval", display="none")
    if log.status != "success":
        raise RuntimeError(f"gaming eval failed: {log.error}")
    return read_eval_log(log.location)


def score_shares(log, scorer_names: list[str]) -> dict:
    """Per scorer: the proportion of samples scored C, with its Wilson interval."""
    n = len(log.samples)
    return {name: setup.proportion(sum(s.scores[name].value == CORRECT for s in log.samples), n)
            for name in scorer_names}


def rescore_generation_log(path: Path):
    """Day 76's committed SmolLM2 generation log rescored (in memory, nothing written) with the leaky,
    strict and lenient scorers, through inspect's ``score()``."""
    from inspect_ai import score
    from inspect_ai.log import read_eval_log

    log = read_eval_log(str(path))
    return score(log, [leaky_letter(), setup.answer_letter(), setup.lenient_letter()], action="overwrite",
                 display="none")


def day076_generation_log() -> Path:
    """The committed day-76 eval log whose task answered by generation."""
    from inspect_ai.log import read_eval_log

    for path in sorted((Path(importlib.import_module("days.076").__file__).parent / "logs").glob("*.eval")):
        if read_eval_log(str(path), header_only=True).eval.task_args.get("answering") == "generate":
            return path
    raise FileNotFoundError("no generation log in days/076/logs: run day 76's experiment")


# ---------------------------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------------------------

def _mean_ci(values: list[float]) -> dict:
    """Mean, and a 95% t interval over the passages (the unit of sampling)."""
    from scipy.stats import t as student

    n = len(values)
    m = sum(values) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    h = float(student.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": m, "ci95": [m - h, m + h]}


def factual_records() -> list[dict]:
    return [r for r in setup.load_records() if r["behavior_category"] == "factual"]


def position_logprobs(records: list[dict], template: str) -> torch.Tensor:
    """``[Q, S, k]`` letter log-probabilities of every record under every cyclic shift."""
    convs = [mcq_conversation(shifted, template) for r in records for shifted in cyclic_shifts(r)]
    k = len(records[0]["answers"])
    return letter_logprobs_full(convs, n_letters=k).reshape(len(records), k, k)


def run_experiment(out_dir: Path = HERE) -> dict:
    """All four measurements; figures to out_dir/figures, numbers to out_dir/results.json."""
    from scipy.stats import binomtest

    from checks.assets import resolve

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    records = factual_records()
    targets = [LETTERS.index(r["answer_matching_behavior"][0]) for r in records]
    results: dict = {"model": "smollm2", "n_factual_questions": len(records)}

    # 1-2. position bias and template sensitivity (all cyclic shifts under each template)
    templates = {}
    for name, template in TEMPLATES.items():
        lp = position_logprobs(records, template)
        templates[name] = {**position_bias_summary(lp, targets), "logprobs": [[[round(float(v), 5) for v in row]
                                                                               for row in q] for q in lp]}
    results["templates"] = templates
    accs = {n: t["accuracy"]["p"] for n, t in templates.items()}
    debs = {n: t["debiased_accuracy"]["p"] for n, t in templates.items()}
    results["template_swing"] = {"accuracy": max(accs.values()) - min(accs.values()),
                                 "debiased_accuracy": max(debs.values()) - min(debs.values()),
                                 "best": max(accs, key=accs.get), "worst": min(accs, key=accs.get)}
    results["position_bias"] = {k: v for k, v in templates["inspect"].items() if k != "logprobs"}

    # 3. memorisation
    wiki = wikitext_passages(resolve("wikitext-2") / "wikitext-2-valid.txt", n=len(FAMOUS))
    sets = {"famous": [f for _, f, _ in FAMOUS], "paraphrase": [p for _, _, p in FAMOUS],
            "famous_shuffled": [shuffle_words(f, i) for i, (_, f, _) in enumerate(FAMOUS)],
            "wikitext": wiki, "wikitext_shuffled": [shuffle_words(w, i) for i, w in enumerate(wiki)]}
    mem: dict = {"passage_ids": [i for i, _, _ in FAMOUS], "wikitext_passages": wiki}
    losses = {name: [sum(x) / len(x) for x in per_token_loss(texts)] for name, texts in sets.items()}
    mem["mean_token_loss"] = {name: _mean_ci(v) for name, v in losses.items()}
    mem["per_passage_loss"] = losses
    lower = sum(a < b for a, b in zip(losses["famous"], losses["paraphrase"]))
    mem["famous_below_paraphrase"] = {**setup.proportion(lower, len(FAMOUS)),
                                      "sign_test_p": float(binomtest(lower, len(FAMOUS)).pvalue)}
    cont = {name: greedy_continuation(sets[name], n_prefix_words=8) for name in ("famous", "paraphrase", "wikitext")}
    mem["continuations"] = cont
    mem["verbatim_8_tokens"] = {name: setup.proportion(sum(c["verbatim_tokens"] >= 8 for c in v), len(v))
                                for name, v in cont.items()}
    mem["verbatim_tokens_mean"] = {name: sum(c["verbatim_tokens"] for c in v) / len(v) for name, v in cont.items()}
    results["memorisation"] = mem

    # 4. leaky scorer: a zero-knowledge model, and SmolLM2's day-76 generations rescored
    for old in (out_dir / "logs").glob("*.eval"):
        old.unlink()
    all_records = setup.load_records()
    game = gaming_eval(all_records, out_dir / "logs")
    gen_path = day076_generation_log()
    rescored = rescore_generation_log(gen_path)
    names = ["leaky_letter", "choice", "answer_letter"]
    results["leaky_scorer"] = {
        "n": len(all_records), "log_file": Path(game.location).name,
        "zero_knowledge": score_shares(game, names),
        "smollm2_generation": {"source_log": f"days/076/logs/{gen_path.name}",
                               **score_shares(rescored, ["leaky_letter", "answer_letter", "lenient_letter"])}}
    results["wall_seconds"] = time.perf_counter() - wall0
    results["cpu_seconds"] = time.process_time() - cpu0
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    plot_results(results, out_dir / "figures")
    return results


def _err(props, key="p"):
    """Error-bar lengths below and above each value (clamped at 0: at k = n the upper Wilson bound is 1
    up to rounding)."""
    return [[max(0.0, p[key] - p["ci95"][0]) for p in props], [max(0.0, p["ci95"][1] - p[key]) for p in props]]


def _bar(ax, labels, props, **kw):
    ax.bar(labels, [p["p"] for p in props], yerr=_err(props), capsize=3, **kw)


def plot_results(results: dict, fig_dir: Path) -> None:
    """Three figures: position bias, template spread, memorisation (+ the leaky scorer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pb = results["position_bias"]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    _bar(axes[0], list(pb["letter_share"]), list(pb["letter_share"].values()), color="tab:blue")
    axes[0].axhline(0.25, color="grey", ls="--", lw=1)
    axes[0].set(title="answered letter (all shifts)", ylabel="share (95% CI)", ylim=(0, 1))
    _bar(axes[1], list(pb["accuracy_by_correct_position"]), list(pb["accuracy_by_correct_position"].values()),
         color="tab:orange")
    axes[1].axhline(0.25, color="grey", ls="--", lw=1)
    axes[1].set(title="accuracy by position of the correct answer", ylim=(0, 1.05))
    fig.tight_layout()
    fig.savefig(fig_dir / "position_bias.png", dpi=120)
    plt.close(fig)

    t = results["templates"]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    xs = range(len(t))
    for off, key, label in ((-0.2, "accuracy", "raw (all shifts)"), (0.2, "debiased_accuracy", "shift-averaged")):
        props = [v[key] for v in t.values()]
        ax.bar([x + off for x in xs], [p["p"] for p in props], width=0.4, label=label,
               yerr=_err(props), capsize=3)
    ax.axhline(0.25, color="grey", ls="--", lw=1, label="chance")
    ax.set_xticks(list(xs), list(t))
    ax.set(ylabel="accuracy (95% CI)", ylim=(0, 1), title="the same 40 questions under paraphrased templates")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(fig_dir / "templates.png", dpi=120)
    plt.close(fig)

    m = results["memorisation"]["mean_token_loss"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    names = list(m)
    axes[0].bar(names, [m[n]["mean"] for n in names], capsize=3,
                yerr=_err([m[n] for n in names], key="mean"))
    axes[0].set(ylabel="mean per-token loss (nats, 95% CI)", title="memorisation")
    axes[0].tick_params(axis="x", rotation=25, labelsize=7)
    lk = results["leaky_scorer"]
    labels = ["0-know\nleaky", "0-know\nchoice()", "0-know\nstrict", "SmolLM2\nleaky", "SmolLM2\nstrict",
              "SmolLM2\nlenient"]
    props = [lk["zero_knowledge"][k] for k in ("leaky_letter", "choice", "answer_letter")] + \
            [lk["smollm2_generation"][k] for k in ("leaky_letter", "answer_letter", "lenient_letter")]
    _bar(axes[1], labels, props, color=["tab:red", "tab:green", "tab:green", "tab:red", "tab:green", "tab:olive"])
    axes[1].set(title="a leaky scorer", ylabel="scored correct (95% CI)", ylim=(0, 1.05))
    axes[1].tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(fig_dir / "memorisation_leaky.png", dpi=120)
    plt.close(fig)
