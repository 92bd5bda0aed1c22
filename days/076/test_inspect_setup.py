"""The gate of day 76 (ARENA 3.3, running evals with Inspect: record_to_sample and its shuffled and full
variants, the solvers system_message, prompt_template, multiple_choice_format, make_choice and
self_critique_format, a scorer, a first eval on SmolLM2 with a CI, the log read back).

References: inspect's own dataset shuffling (``json_dataset(..., shuffle_choices=seed)``), its answer
parser (``parse_answers``), its ``multiple_choice()`` solver and ``choice()`` scorer on the same scripted
``mockllm`` outputs, its prompt renderer; scipy's ``binomtest(...).proportion_ci(method="wilson")``;
``inspect_ai.log.read_eval_log`` for every log. The scripted model tests scaffolding only: every reported
number comes from SmolLM2 (a 4-sample eval in the gate, the whole dataset in run_experiment).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from inspect_ai import Task, eval
from inspect_ai.dataset import MemoryDataset, json_dataset
from inspect_ai.log import read_eval_log
from inspect_ai.model import ChatMessageSystem, ModelOutput, ModelUsage, get_model
from inspect_ai.scorer import choice
from inspect_ai.solver import generate, multiple_choice
from inspect_ai.solver._multiple_choice import SINGLE_ANSWER_TEMPLATE, parse_answers
from inspect_ai.solver._multiple_choice import prompt as inspect_prompt
from scipy.stats import binomtest

from checks.committed import assert_reproduces, exact, statistical

from . import inspect_setup as T

HERE = Path(__file__).parent
# Read here, not with the exercise load_records: a practice copy's stub must fail its own test, not the whole
# module's collection (test_load_records_reads_a_json_list checks the exercise against this).
RECORDS = json.loads(T.DATASET_PATH.read_text(encoding="utf-8"))
needs_smollm2 = pytest.mark.asset("smollm2-135m-instruct")


def text_at(sample, letter: str) -> str:
    c = sample.choices[T.LETTERS.index(letter)]
    return getattr(c, "value", c)  # a Sample holds strings, a TaskState Choice objects


def matching_text(record) -> str:
    return record["answers"][record["answer_matching_behavior"][0]]


# --------------------------------------------------------------------------- the dataset


def test_load_records_reads_a_json_list(tmp_path):
    """load_records returns the dataset's records (the committed file by default, any path given)."""
    assert T.load_records() == RECORDS
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(RECORDS[:3]), encoding="utf-8")
    assert T.load_records(path) == RECORDS[:3]


def test_dataset_is_arena_record_format_and_balanced():
    """The committed dataset: ARENA's record fields, 4-option factual and 2-option sycophancy items, the
    matching letter balanced over the options within each category (no letter can be gamed)."""
    keys = {"system", "question", "answers", "answer_matching_behavior", "answer_not_matching_behavior",
            "behavior_category"}
    assert 30 <= len(RECORDS) <= 60
    for r in RECORDS:
        assert set(r) == keys
        labels = list(r["answers"])
        assert labels == list(T.LETTERS[:len(labels)])
        assert sorted(r["answer_matching_behavior"] + r["answer_not_matching_behavior"]) == labels
        assert len(set(r["answers"].values())) == len(labels)
    for cat, n_opt in (("factual", 4), ("sycophancy", 2)):
        rs = [r for r in RECORDS if r["behavior_category"] == cat]
        assert {len(r["answers"]) for r in rs} == {n_opt}
        counts = Counter(r["answer_matching_behavior"][0] for r in rs)
        assert set(counts) == set(T.LETTERS[:n_opt]) and len(set(counts.values())) == 1
    assert len({r["question"] for r in RECORDS}) == len(RECORDS)


# --------------------------------------------------------------------------- records -> samples


def test_record_to_sample_maps_every_field():
    """ARENA record_to_sample: system message only when `system` is non-empty, the question as the user
    message, choices = answer texts in letter order, target = answer_matching_behavior, metadata."""
    for r in RECORDS:
        s = T.record_to_sample(r)
        roles = [m.role for m in s.input]
        assert roles == (["system", "user"] if r["system"] else ["user"])
        assert s.input[-1].text == r["question"]
        if r["system"]:
            assert s.input[0].text == r["system"]
        assert s.choices == list(r["answers"].values())
        assert s.target == r["answer_matching_behavior"]
        assert s.metadata == {"labels": list(r["answers"]), "behavior_category": r["behavior_category"],
                              "system_prompt": bool(r["system"])}


@pytest.mark.parametrize("seed", range(5))
def test_shuffled_target_points_at_the_same_answer_text(seed):
    """ARENA record_to_sample_shuffle: the options are permuted and the target follows the correct
    answer: the text at the target letter is the matching answer's text, for every record; the same
    invariant holds for inspect's own shuffling (json_dataset(..., shuffle_choices=seed)), our reference."""
    ours = [T.record_to_sample_shuffle(r, rng=random.Random(seed * 1000 + i)) for i, r in enumerate(RECORDS)]
    theirs = json_dataset(str(T.DATASET_PATH), T.record_to_sample, shuffle_choices=seed)
    for r, s, ref in zip(RECORDS, ours, theirs):
        assert sorted(s.choices) == sorted(r["answers"].values())
        assert len(s.target) == 1
        assert text_at(s, s.target[0]) == matching_text(r)
        assert text_at(ref, ref.target[0]) == matching_text(r)  # inspect's shuffle keeps the same invariant
        assert [r["answers"][T.LETTERS[i]] for i in s.metadata["order"]] == s.choices


def test_shuffle_moves_targets_over_all_letters():
    """The shuffle really permutes: over 20 seeds every record's target lands on every letter of its
    options at least once, and an unchanged order is as rare as 1/k! predicts (not the identity)."""
    for i, r in enumerate(RECORDS):
        seen = {T.record_to_sample_shuffle(r, rng=random.Random(100 * i + s)).target[0] for s in range(40)}
        assert seen == set(r["answers"]), r["question"]
    four = [r for r in RECORDS if len(r["answers"]) == 4]
    rng = random.Random(1)
    unchanged = sum(T.record_to_sample_shuffle(r, rng=rng).metadata["order"] == [0, 1, 2, 3] for r in four * 10)
    assert unchanged < 0.15 * len(four) * 10  # expected 1/24 ≈ 4%


def test_shuffle_default_uses_the_random_module():
    """ARENA's variant draws from the global `random` module: seeding it makes the dataset reproducible."""
    random.seed(3)
    a = [T.record_to_sample_shuffle(r).choices for r in RECORDS]
    random.seed(3)
    b = [T.record_to_sample_shuffle(r).choices for r in RECORDS]
    assert a == b


@pytest.mark.parametrize("behavior", ["system", "context", None])
def test_record_to_sample_full_system_prompt_behaviour(behavior):
    """ARENA record_to_sample_full: the system prompt as a system message, folded into the user message
    as context ("Context:\\n{system}\\n\\n{question}"), or dropped; shuffled choices keep the target's text."""
    for i, r in enumerate(RECORDS):
        s = T.record_to_sample_full(r, behavior, rng=random.Random(i))
        assert text_at(s, s.target[0]) == matching_text(r)
        if not r["system"] or behavior is None:
            assert [m.role for m in s.input] == ["user"] and s.input[0].text == r["question"]
            assert s.metadata["system_prompt"] is False
        elif behavior == "system":
            assert [(m.role, m.text) for m in s.input] == [("system", r["system"]), ("user", r["question"])]
        else:
            assert [(m.role, m.text) for m in s.input] == [("user", f"Context:\n{r['system']}\n\n{r['question']}")]
    unshuffled = T.record_to_sample_full(RECORDS[1], behavior, shuffle=False)
    assert unshuffled.choices == list(RECORDS[1]["answers"].values())
    with pytest.raises(ValueError, match="system_prompt_behavior"):
        T.record_to_sample_full(RECORDS[-1], "banana")


# --------------------------------------------------------------------------- parsing and the CI


COMPLETIONS = ["ANSWER: A", "ANSWER: b", "ANSWER: C.", "answer:D", "The answer is B", "ANSWER: A, B", "ANSWER: E",
               "", "ANSWER: B\nbecause dogs bark", "I think\nANSWER: C\n", "ANSWER: A,", "Reasoning... ANSWER: D then",
               "ANSWER: AB", "ANSWER: **C**", "ANSWER: $B$", "ANSWER: (D)", "ANSWER: A\nANSWER: B"]


@pytest.mark.parametrize("completion", COMPLETIONS)
def test_parse_answer_letter_equals_inspects_parser(completion):
    """Our strict parser reads each completion as inspect's multiple_choice parser (parse_answers,
    single answer, four options) does, malformed ones included (two letters, out of range, empty)."""
    state = SimpleNamespace(output=SimpleNamespace(completion=completion), choices=[None] * 4)
    ref = parse_answers(state, multiple_correct=False)
    ours = T.parse_answer_letter(completion, 4)
    assert ({ours} if ours else set()) == ref


def test_lenient_parser_reads_formats_the_strict_one_refuses():
    """The lenient scorer's parse: "The answer is C) Paris" -> C, "B) Dog" -> B, a reply naming exactly one
    option's text -> its letter; two options named, or none, -> no answer."""
    choices = ["Paris", "Berlin", "Madrid", "Rome"]
    assert T.parse_lenient_letter("The answer is C) Madrid", choices) == "C"
    assert T.parse_lenient_letter("B) Berlin is right", choices) == "B"
    assert T.parse_lenient_letter("The capital of France is Paris.", choices) == "A"
    assert T.parse_lenient_letter("Paris or Rome", choices) is None
    assert T.parse_lenient_letter("I am not sure.", choices) is None
    assert T.parse_lenient_letter("ANSWER: D", choices) == "D"


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (7, 60), (30, 60), (60, 60), (1, 1)])
def test_wilson_interval_equals_scipy(k, n):
    """The Wilson score interval equals scipy's binomtest(k, n).proportion_ci(method='wilson') (float64,
    a handful of operations: rel 1e-12)."""
    ref = binomtest(k, n).proportion_ci(0.95, method="wilson")
    lo, hi = T.wilson_interval(k, n)
    assert lo == pytest.approx(ref.low, rel=1e-12, abs=1e-15) and hi == pytest.approx(ref.high, rel=1e-12)


# --------------------------------------------------------------------------- scripted outputs (mockllm)

FORMS = ["ANSWER: {L}", "ANSWER: {l}", "ANSWER: {L}.", "The answer is {L}", "ANSWER: A, B", "ANSWER: E", "",
         "I think\nANSWER: {L}\nbecause"]


SCRIPTED_RECORDS = RECORDS[::2]  # 20 factual + 10 sycophancy items keep the gate lean


def scripted_reply(question: str) -> str:
    """A fixed reply per question (seeded by the question text): a letter in one of eight forms."""
    rng = random.Random(question)
    return rng.choice(FORMS).format(L=(L := rng.choice("ABCD")), l=L.lower())


def _usage():
    return ModelUsage(input_tokens=10, output_tokens=3, total_tokens=13)


def scripted_model(messages, tools, tool_choice, config):
    """mockllm custom_outputs: the reply for whichever dataset question is in the conversation."""
    text = " ".join(m.text for m in messages)
    question = next(r["question"] for r in RECORDS if r["question"] in text)
    out = ModelOutput.from_content("mockllm/model", scripted_reply(question))
    out.usage = _usage()
    return out


def _eval(tsk, log_dir, **model_args):
    [log] = eval(tsk, model="mockllm/model", model_args=model_args, log_dir=str(log_dir), display="none")
    assert log.status == "success", log.error
    return read_eval_log(log.location)


@pytest.fixture(scope="module")
def scripted_logs(tmp_path_factory):
    base = tmp_path_factory.mktemp("scripted")
    ds = MemoryDataset([T.record_to_sample(r) for r in SCRIPTED_RECORDS])
    ours = _eval(Task(dataset=ds, solver=[T.multiple_choice_format(), generate()],
                      scorer=[T.answer_letter(), T.lenient_letter()]), base / "ours", custom_outputs=scripted_model)
    theirs = _eval(Task(dataset=ds, solver=multiple_choice(), scorer=choice()), base / "theirs",
                   custom_outputs=scripted_model)
    return ours, theirs


def test_our_mc_solver_and_scorer_equal_inspects_multiple_choice_and_choice(scripted_logs):
    """Our multiple_choice_format + generate + answer_letter score every sample as inspect's built-in
    multiple_choice() + choice() do on the same scripted outputs (C, I and N alike), read back from both logs."""
    ours, theirs = scripted_logs
    got = {s.id: s.scores["answer_letter"].value for s in ours.samples}
    ref = {s.id: s.scores["choice"].value for s in theirs.samples}
    assert got == ref and len(got) == len(SCRIPTED_RECORDS)
    assert {"C", "I", "N"} <= set(got.values())  # the script exercises all three outcomes
    assert {s.id: s.scores["answer_letter"].answer for s in ours.samples} == \
           {s.id: s.scores["choice"].answer for s in theirs.samples}
    assert ours.results.scores[0].metrics["accuracy"].value == pytest.approx(
        theirs.results.scores[0].metrics["accuracy"].value, abs=1e-12)


def test_multiple_choice_format_renders_inspects_prompt(scripted_logs):
    """ARENA multiple_choice_format with inspect's SINGLE_ANSWER_TEMPLATE gives inspect's own rendering
    (up to the letters' separator, ", " in ARENA and "," in inspect); with ARENA's TEMPLATE_MCQ the user
    message is that template filled with the question and "A) ..." lines."""
    from inspect_ai.solver._task_state import Choices

    ours, theirs = scripted_logs
    for s_ours, s_theirs, r in zip(ours.samples, theirs.samples, SCRIPTED_RECORDS):
        letters, lines = T.letters_and_answer_options(list(r["answers"].values()))
        user = next(m for m in s_ours.messages if m.role == "user").text
        assert user == T.TEMPLATE_MCQ.format(question=r["question"], letters=letters, choices=lines)
        inspect_user = next(m for m in s_theirs.messages if m.role == "user").text
        assert inspect_user == inspect_prompt(r["question"], Choices(list(r["answers"].values())),
                                              SINGLE_ANSWER_TEMPLATE)
        assert T.TEMPLATE_MCQ.count("{letters}") == 1
        mine_with_theirs = SINGLE_ANSWER_TEMPLATE.format(question=r["question"], choices=lines,
                                                         letters=letters.replace(", ", ","))
        assert mine_with_theirs == inspect_user


def test_lenient_scorer_credits_at_least_the_strict_ones(scripted_logs):
    """lenient_letter accepts every strict answer and more ("The answer is B" is read as B)."""
    ours, _ = scripted_logs
    strict = [s.scores["answer_letter"].value == "C" for s in ours.samples]
    lenient = [s.scores["lenient_letter"].value == "C" for s in ours.samples]
    assert all(b for a, b in zip(strict, lenient) if a)
    for s in ours.samples:
        if s.output.completion.startswith("The answer is") and s.output.completion[-1] in T.LETTERS[:len(s.choices)]:
            assert s.scores["lenient_letter"].answer == s.output.completion[-1]


def test_solver_templates_are_checked():
    """prompt_template needs {prompt} and nothing else; multiple_choice_format needs {question} and
    {choices}, may have {letters}, nothing else (ARENA's assertions, as ValueError)."""
    with pytest.raises(ValueError):
        T.prompt_template("no field")
    with pytest.raises(ValueError):
        T.prompt_template("{prompt} and {other}")
    with pytest.raises(ValueError):
        T.multiple_choice_format("{question} only")
    with pytest.raises(ValueError):
        T.multiple_choice_format("{question} {choices} {extra}")
    T.prompt_template("Q: {prompt}")
    T.multiple_choice_format("{question}\n{choices}")


CRITIQUE = "The original answer is fully correct"


def chain_model(messages, tools, tool_choice, config):
    """A scripted subject: a reasoning line, then after make_choice the final letter."""
    last = messages[-1].text
    text = "ANSWER: B" if "Please make a choice" in last else ("Improved: B" if "[Critique]" in last else "Thinking")
    out = ModelOutput.from_content("mockllm/model", text)
    out.usage = _usage()
    return out


def test_solver_chain_system_message_prompt_template_critique_make_choice(tmp_path):
    """ARENA's chain on scripted outputs: system_message goes after the dataset's own system message;
    prompt_template rewrites the user prompt; self_critique_format asks the critic about the question and
    the last completion and appends its critique; make_choice asks for "ANSWER: $LETTERS" with the letters."""
    from inspect_ai.model import ModelOutput as MO

    def critic_output(messages, tools, tool_choice, config):
        """The critic answers CRITIQUE only when shown the question and the subject's last completion."""
        prompt = messages[-1].text
        ok = "[Answer]: Thinking" in prompt and "[Question]: " in prompt and "Critique: " in prompt
        out = MO.from_content("mockllm/model", CRITIQUE if ok else "critic saw the wrong prompt")
        out.usage = _usage()
        return out

    critic = get_model("mockllm/model", custom_outputs=critic_output)
    records = [r for r in RECORDS if r["system"]][:2] + RECORDS[:2]
    ds = MemoryDataset([T.record_to_sample(r) for r in records])
    solver = [T.system_message("Be honest."), T.prompt_template("Question: {prompt}"), T.multiple_choice_format(),
              generate(), T.self_critique_format(critic), generate(), T.make_choice(), generate()]
    log = _eval(Task(dataset=ds, solver=solver, scorer=T.answer_letter()), tmp_path, custom_outputs=chain_model)
    for s, r in zip(log.samples, records):
        roles = [m.role for m in s.messages]
        systems = [m.text for m in s.messages if isinstance(m, ChatMessageSystem)]
        assert systems == ([r["system"], "Be honest."] if r["system"] else ["Be honest."])
        assert roles == ["system"] * len(systems) + ["user", "assistant", "user", "assistant", "user", "assistant"]
        first_user = s.messages[len(systems)].text
        assert first_user.startswith("\nAnswer the following") and f"Question: {r['question']}" in first_user
        critique_msg = s.messages[len(systems) + 2].text
        assert "[Answer]: Thinking" in critique_msg and f"[Critique]: {CRITIQUE}" in critique_msg
        assert f"[Question]: {r['question']}\n" in critique_msg  # state.input_text: the sample's own input
        letters = ", ".join(T.LETTERS[:len(r["answers"])])
        assert s.messages[-2].text == T.TEMPLATE_MCQ_MAKE_CHOICE.format(letters=letters)
        assert s.scores["answer_letter"].answer == "B"


def test_paid_model_without_key_is_a_clear_error(monkeypatch):
    """The same task on an API model: without a key (or the client package) inspect refuses clearly,
    naming the provider, before any sample runs (the paid path itself is not exercised here)."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(Exception, match=r"(?i)openai|api.key"):
        get_model("openai/gpt-4o-mini")


# --------------------------------------------------------------------------- a first eval on SmolLM2


@pytest.fixture(scope="module")
def smol_logs(tmp_path_factory):
    base = tmp_path_factory.mktemp("smol")
    model = get_model("smollm2/smollm2")
    out = {}
    for answering, n in (("logprob", 4), ("generate", 2)):
        [log] = eval(T.alignment_eval(answering=answering, n=n, max_tokens=10), model=model,
                     log_dir=str(base / answering), display="none")
        assert log.status == "success", log.error
        out[answering] = read_eval_log(log.location)
    return out


@needs_smollm2
def test_smollm2_logprob_eval_reads_back(smol_logs):
    """A real SmolLM2 eval (4 samples, log-probability answering): the log read back with read_eval_log
    holds every sample; each answer is the argmax of its letter log-probs and choice() scored it against
    the target; the log's accuracy is the mean of the per-sample scores."""
    log = smol_logs["logprob"]
    assert len(log.samples) == 4
    for s, r in zip(log.samples, RECORDS):
        lp = s.metadata["letter_logprobs"]
        best = max(lp, key=lp.get)
        assert s.scores["choice"].answer == best
        assert s.scores["choice"].value == ("C" if best == r["answer_matching_behavior"][0] else "I")
    acc = sum(s.scores["choice"].value == "C" for s in log.samples) / 4
    assert log.results.scores[0].metrics["accuracy"].value == pytest.approx(acc, abs=1e-12)


@needs_smollm2
def test_smollm2_generation_eval_scored_strictly_and_leniently(smol_logs):
    """A real SmolLM2 eval (2 samples, 10 tokens, generation): each completion is scored by answer_letter as
    inspect's parser reads it, and by lenient_letter as parse_lenient_letter reads it."""
    log = smol_logs["generate"]
    assert len(log.samples) == 2
    for s in log.samples:
        c = s.output.completion
        assert c.strip()
        ref = parse_answers(SimpleNamespace(output=SimpleNamespace(completion=c), choices=s.choices),
                            multiple_correct=False)
        assert ({s.scores["answer_letter"].answer} - {""}) == ref
        assert (s.scores["lenient_letter"].answer or None) == T.parse_lenient_letter(c, s.choices)


# --------------------------------------------------------------------------- committed results


def test_committed_numbers_are_those_of_the_committed_logs(committed):
    """results.json holds what read_eval_log reads from the committed logs: per category proportions
    and their Wilson intervals recomputed from the samples (exact: counts, then the same float64
    formula), the answer-letter counts, and the log file names. n = the whole dataset."""
    for name, scorer_name in (("logprob", "choice"), ("generate", "answer_letter")):
        block = committed[name]
        log = read_eval_log(str(HERE / "logs" / block["log_file"]))
        assert len(log.samples) == committed["n_records"] == len(RECORDS)
        now = T.summarise_log(log, scorer_name)
        assert_reproduces(now, {k: block[k] for k in now}, exact("counts from the same log, same formula"),
                          name=name)
        for key in ("factual", "sycophancy", "all"):
            ref = binomtest(block[key]["k"], block[key]["n"]).proportion_ci(method="wilson")
            assert_reproduces(block[key]["ci95"], [ref.low, ref.high],
                              statistical(1e-12, why="scipy's Wilson interval, float64"), name=f"{name}.{key}")
    assert (HERE / "logs" / committed["generate"]["log_file"]).stat().st_size < 300_000
    assert (HERE / "figures" / "first_eval.png").stat().st_size > 10_000


@pytest.mark.slow
@needs_smollm2
def test_experiment_reproduces_the_committed_eval(tmp_path, committed, measure):
    """(slow) run_experiment again on the whole dataset. Greedy answers on another CPU's kernels can flip
    where two letters are within rounding of each other (float32 logits, rel ~2e-4): each proportion
    within 2/n of the committed one (two flipped samples), and the answers agree on at least 90% of samples."""
    now = T.run_experiment(tmp_path)
    measure("slow.wall_seconds", now["wall_seconds"])
    measure("slow.cpu_seconds", now["cpu_seconds"])
    for name in ("logprob", "generate"):
        for key in ("factual", "sycophancy"):
            n = now[name][key]["n"]
            assert_reproduces(now[name][key]["p"], committed[name][key]["p"],
                              statistical(2 / n, why="two greedy answers may flip on other kernels"),
                              name=f"{name}.{key}.p")
        a = read_eval_log(str(tmp_path / "logs" / now[name]["log_file"]))
        b = read_eval_log(str(HERE / "logs" / committed[name]["log_file"]))
        key = "choice" if name == "logprob" else "answer_letter"
        same = sum(x.scores[key].answer == y.scores[key].answer for x, y in zip(a.samples, b.samples))
        assert same >= 0.9 * len(a.samples)


# --------------------------------------------------------------------------- proposed (judge of day 76's survivors)


def test_full_shuffle_draws_from_the_rng_it_is_given():
    """record_to_sample_full(shuffle=True, rng=...) (alignment_eval: "shuffle permutes the choices with
    random.Random(seed)"): the same seeded rng gives the same orders whatever the global random state; without
    an rng it draws from the random module, as record_to_sample_shuffle does (reseeding it reproduces)."""
    random.seed(1)
    a = [T.record_to_sample_full(r, "system", rng=random.Random(7)).metadata["order"] for r in RECORDS]
    random.seed(2)
    b = [T.record_to_sample_full(r, "system", rng=random.Random(7)).metadata["order"] for r in RECORDS]
    assert a == b
    random.seed(3)
    c = [T.record_to_sample_full(r, "system").choices for r in RECORDS]
    random.seed(3)
    assert c == [T.record_to_sample_full(r, "system").choices for r in RECORDS]


def test_system_message_goes_right_after_the_last_system_message_later_in_a_chain(tmp_path):
    """ARENA's system_message inserts right after the last existing system message, wherever it runs in the chain:
    after a generate() on a record with its own system prompt the messages are [system, ours, user, assistant]."""
    record = next(r for r in RECORDS if r["system"])
    log = _eval(Task(dataset=MemoryDataset([T.record_to_sample(record)]),
                     solver=[generate(), T.system_message("Be honest.")]), tmp_path,
                custom_outputs=chain_model)
    [s] = log.samples
    assert [(m.role, m.text if m.role == "system" else None) for m in s.messages] == [
        ("system", record["system"]), ("system", "Be honest."), ("user", None), ("assistant", None)]


def test_self_critique_template_can_use_the_samples_metadata(tmp_path):
    """self_critique_format passes the sample's metadata to both templates (ARENA: **metadata), leaving out only the
    keys it fills itself: a critique template asking about {behavior_category} shows the critic the record's
    category, and a metadata key named like one of its own fields does not clash."""
    from inspect_ai.dataset import Sample

    record = RECORDS[0]
    seen = []

    def critic_output(messages, tools, tool_choice, config):
        seen.append(messages[-1].text)
        out = ModelOutput.from_content("mockllm/model", CRITIQUE)
        out.usage = _usage()
        return out

    critic = get_model("mockllm/model", custom_outputs=critic_output)
    sample = T.record_to_sample(record)
    sample = Sample(input=sample.input, target=sample.target, choices=sample.choices,
                    metadata={**sample.metadata, "question": "not the question"})
    template = T.TEMPLATE_MCQ_CRITIQUE + "\n[Category]: {behavior_category}"
    _eval(Task(dataset=MemoryDataset([sample]),
               solver=[T.multiple_choice_format(), generate(), T.self_critique_format(critic, template), generate()]),
          tmp_path, custom_outputs=chain_model)
    assert seen and f"[Category]: {record['behavior_category']}" in seen[0] and record["question"] in seen[0]


def test_alignment_eval_answers_greedily():
    """The eval the post reports is greedy (temperature 0): alignment_eval's generate path sets it."""
    assert T.alignment_eval(n=1).config.temperature == 0.0


def test_wilson_interval_needs_a_positive_n():
    """wilson_interval: n ≤ 0 has no proportion: a ValueError (not a division by zero) for n = 0 and n < 0."""
    for n in (0, -1):
        with pytest.raises(ValueError, match="positive"):
            T.wilson_interval(0, n)
