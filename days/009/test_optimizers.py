"""The gate of day 9 (ARENA 0.3 Optimization: SGD, RMSprop, Adam, AdamW, parameter groups).

The reference is ``torch.optim``: the same model, the same data and the same gradients go to our
optimizer and to torch's, for 200 steps and every hyper-parameter combination in the table below,
compared two ways. Step by step (teacher-forced): before each step our parameters are reset to
torch's, so each update and each state tensor is compared on its own; in float64 the two
implementations evaluate the same formulas in a slightly different order (torch fuses some into
``addcdiv_`` and ``lerp_``), so they agree to rounding, ~1e-16, and the bar of 1e-12 still fails
on any wrong term (a missing bias correction or a misplaced weight decay moves a parameter by
1e-4 or more in one step). Free-running: each trajectory on its own for 200 steps, 1e-10, except
where the dynamics are chaotic (shown, not assumed). A float32 run per optimizer checks the
issue's bar, atol 1e-5, at single precision.
"""

import math
from pathlib import Path

import pytest
import torch

from checks import assert_parity
from checks.committed import assert_reproduces, float_ops, iterated, log_space, statistical

from . import optimizers as O

HERE = Path(__file__).parent


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one torch/BLAS thread (checks.timing)

STEPS = 200
TORCH = {"sgd": torch.optim.SGD, "rmsprop": torch.optim.RMSprop, "adam": torch.optim.Adam,
         "adamw": torch.optim.AdamW}


class Problem:
    """A small regression net, tanh(X W1ᵀ + b1) W2ᵀ + b2 against random targets: a non-convex
    loss whose gradients change at every step, so each optimizer's state really matters."""

    def __init__(self, dtype=torch.float64, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.X = torch.randn(32, 5, generator=g, dtype=dtype)
        self.y = torch.randn(32, 1, generator=g, dtype=dtype)
        self.init = [torch.randn(8, 5, generator=g, dtype=dtype) * 0.5, torch.randn(8, generator=g, dtype=dtype) * 0.1,
                     torch.randn(1, 8, generator=g, dtype=dtype) * 0.5, torch.randn(1, generator=g, dtype=dtype) * 0.1]

    def params(self) -> list[torch.Tensor]:
        return [p.clone().requires_grad_(True) for p in self.init]

    def loss(self, params) -> torch.Tensor:
        W1, b1, W2, b2 = params
        return ((torch.tanh(self.X @ W1.T + b1) @ W2.T + b2 - self.y) ** 2).mean()


def twin_run(kind: str, kwargs: dict, *, dtype=torch.float64, steps=STEPS, groups=None, skip_grad=None,
             teacher_forced=False, reference=None, nudge=0.0):
    """Train two copies, one with our optimizer and one with torch.optim's; return the worst
    parameter difference after any step (and, when teacher-forced, the worst state difference).

    ``teacher_forced``: before each step our parameters are reset to torch's, so both optimizers
    see the same parameters and gradients at every step and only their states evolve separately:
    each update is compared on its own, and rounding cannot compound through the dynamics.
    ``groups(params) -> list[dict]`` builds parameter groups; ``skip_grad(step) -> index`` names a
    parameter whose gradient is set to None at that step (it must then be left untouched).
    ``reference`` replaces our class (torch against torch); ``nudge`` shifts our copy's first weight.
    """
    problem = Problem(dtype)
    ours_p, ref_p = problem.params(), problem.params()
    with torch.no_grad():
        ours_p[0].view(-1)[0] += nudge
    ours = (reference or O.OPTIMIZERS[kind])(groups(ours_p) if groups else ours_p, **kwargs)
    ref = TORCH[kind](groups(ref_p) if groups else ref_p, **kwargs)
    worst_param = worst_state = 0.0
    for step in range(steps):
        if teacher_forced:
            with torch.no_grad():
                for a, b in zip(ours_p, ref_p):
                    a.copy_(b)
        for params, opt in ((ours_p, ours), (ref_p, ref)):
            opt.zero_grad()
            problem.loss(params).backward()
            if skip_grad is not None and skip_grad(step) is not None:
                params[skip_grad(step)].grad = None
            opt.step()
        with torch.no_grad():
            for a, b in zip(ours_p, ref_p):
                worst_param = max(worst_param, (a - b).abs().max().item())
                if teacher_forced and b in ref.state:
                    for key, value in ref.state[b].items():
                        if key != "step" and value is not None:
                            worst_state = max(worst_state, (ours.state[a][key] - value).abs().max().item())
    return worst_param, worst_state


# The spec as data: each option of each optimizer, alone and combined. The last field marks the
# one run whose dynamics are chaotic (see test_free_running_trajectories_match_torch_optim).
CASES = [
    ("sgd", dict(lr=0.1), False),
    ("sgd", dict(lr=0.05, momentum=0.9), False),
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True), False),
    ("sgd", dict(lr=0.05, momentum=0.5, dampening=0.5), False),
    ("sgd", dict(lr=0.1, weight_decay=0.01), False),
    ("sgd", dict(lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.1), False),
    ("rmsprop", dict(lr=0.01), False),
    ("rmsprop", dict(lr=0.003, alpha=0.9), True),
    ("rmsprop", dict(lr=0.003, momentum=0.9), False),
    ("rmsprop", dict(lr=0.003, centered=True), False),
    ("rmsprop", dict(lr=0.001, alpha=0.95, eps=1e-6, weight_decay=0.1, momentum=0.5, centered=True), False),
    ("adam", dict(lr=1e-3), False),
    ("adam", dict(lr=0.01, betas=(0.8, 0.99)), False),
    ("adam", dict(lr=0.01, weight_decay=0.1), False),
    ("adam", dict(lr=0.01, amsgrad=True), False),
    ("adam", dict(lr=0.003, betas=(0.5, 0.9), eps=1e-4, weight_decay=0.05, amsgrad=True), False),
    ("adamw", dict(lr=1e-3), False),
    ("adamw", dict(lr=0.01, weight_decay=0.5), False),
    ("adamw", dict(lr=0.01, betas=(0.85, 0.95), weight_decay=0.1, amsgrad=True), False),
]


def case_id(kind, kwargs):
    return kind + "(" + ", ".join(f"{k}={v}" for k, v in kwargs.items()) + ")"


KINDS = list(O.OPTIMIZERS)


@pytest.mark.parametrize("kind", KINDS)
def test_step_by_step_parity_with_torch_optim(kind, measure):
    """Each optimizer, for each hyper-parameter combination of its table, makes torch.optim's
    update at every one of 200 steps: from the same parameters and gradients, the new parameters
    and every state tensor (momentum buffers, running averages, AMSGrad's maximum) agree to 1e-12
    (float64)."""
    worst = 0.0
    for k, kwargs, _ in CASES:
        if k == kind:
            worst_param, worst_state = twin_run(kind, kwargs, teacher_forced=True)
            assert worst_param <= 1e-12 and worst_state <= 1e-12, (case_id(kind, kwargs), worst_param, worst_state)
            worst = max(worst, worst_param, worst_state)
    measure(f"step_parity.{kind}.max_abs_err", worst, "≤ 1e-12")


@pytest.mark.parametrize("kind", KINDS)
def test_free_running_trajectories_match_torch_optim(kind, measure):
    """Left to run on their own for 200 steps, our trajectory stays within 1e-10 of torch.optim's,
    for every combination of the table. One RMSprop run (α = 0.9) is chaotic: a coordinate whose
    gradient hovers near zero is pushed by g/√v ≈ ±1 and oscillates, and a difference in the last
    bit grows about 3× per step, so no two implementations that round differently can stay
    together. There the test requires that the exemption is earned, torch's own run restarted
    with one weight moved by 1e-15 departs from itself by over 1e-12 (1000× the nudge), and that
    ours stays within 10× of that departure."""
    worst = 0.0
    for k, kwargs, chaotic in CASES:
        if k != kind:
            continue
        deviation, _ = twin_run(kind, kwargs)
        if not chaotic:
            assert deviation <= 1e-10, (case_id(kind, kwargs), deviation)
            worst = max(worst, deviation)
        else:
            self_departure, _ = twin_run(kind, kwargs, reference=TORCH[kind], nudge=1e-15)
            assert self_departure > 1e-12, case_id(kind, kwargs)
            assert deviation <= 10 * self_departure, (case_id(kind, kwargs), deviation, self_departure)
            measure(f"chaotic.{kind}.deviation_from_torch", deviation)
            measure(f"chaotic.{kind}.torch_self_departure", self_departure)
    measure(f"free_running.{kind}.max_abs_err", worst, "≤ 1e-10")


@pytest.mark.parametrize("kind, kwargs", [("sgd", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
                                          ("rmsprop", dict(lr=0.01)),
                                          ("adam", dict(lr=0.01, weight_decay=0.05, amsgrad=True)),
                                          ("adamw", dict(lr=0.01, weight_decay=0.1))], ids=["sgd", "rmsprop", "adam", "adamw"])
def test_float32_parity_within_1e5(kind, kwargs, measure):
    """At single precision, where rounding differences do accumulate, each optimizer stays within
    the issue's bar of torch.optim: every parameter within 1e-5 after each of 200 steps."""
    worst, _ = twin_run(kind, kwargs, dtype=torch.float32)
    measure(f"float32.{kind}.max_abs_err", worst, "≤ 1e-5")
    assert worst <= 1e-5


def test_parameter_groups_match_torch(measure):
    """Parameter groups: per-group learning rates and weight decays override the defaults,
    and a group that sets nothing uses them; the trajectory equals torch.optim's with the same
    groups (1e-10, float64), for every optimizer."""
    def groups(p):
        return [{"params": [p[0], p[1]]},
                {"params": [p[2]], "lr": 0.002, "weight_decay": 0.05},
                {"params": p[3], "lr": 0.02}]
    worst_all = 0.0
    for kind, kwargs in [("sgd", dict(lr=0.05, momentum=0.9)), ("rmsprop", dict(lr=0.005)),
                         ("adam", dict(lr=0.01)), ("adamw", dict(lr=0.01, weight_decay=0.2))]:
        worst, _ = twin_run(kind, kwargs, groups=groups, steps=100)
        assert worst <= 1e-10, kind
        worst_all = max(worst_all, worst)
    measure("param_groups.max_abs_err", worst_all, "≤ 1e-10")
    opt = O.Adam(groups(Problem().params()), lr=0.01)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.002, 0.02]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.05, 0.0]


def test_groups_make_a_difference():
    """The groups are really used: the same run with every group at the default learning rate
    ends elsewhere (so the parity above is not the trivial one)."""
    problem = Problem()
    a, b = problem.params(), problem.params()
    opt_a = O.SGD([{"params": a[:2]}, {"params": a[2:], "lr": 0.001}], lr=0.1)
    opt_b = O.SGD(b, lr=0.1)
    for params, opt in ((a, opt_a), (b, opt_b)):
        for _ in range(20):
            opt.zero_grad()
            problem.loss(params).backward()
            opt.step()
    assert (a[2] - b[2]).abs().max() > 1e-3


def test_parameters_without_gradient_are_skipped(measure):
    """A parameter whose gradient is None is neither updated nor given state (torch's rule), and
    its state resumes correctly later: parity with torch.optim when a different parameter's
    gradient is dropped at every third step (1e-10)."""
    worst_all = 0.0
    for kind, kwargs in [("sgd", dict(lr=0.05, momentum=0.9)), ("rmsprop", dict(lr=0.003, centered=True)),
                         ("adam", dict(lr=0.01)), ("adamw", dict(lr=0.01))]:
        worst, _ = twin_run(kind, kwargs, steps=60, skip_grad=lambda s: s % 4 if s % 3 == 0 else None)
        assert worst <= 1e-10, kind
        worst_all = max(worst_all, worst)
    measure("sparse_grads.max_abs_err", worst_all, "≤ 1e-10")
    p = torch.zeros(3, requires_grad=True)
    q = torch.ones(2, requires_grad=True)
    opt = O.Adam([p, q], lr=0.1)
    q.grad = torch.ones(2)
    opt.step()
    assert torch.equal(p, torch.zeros(3)) and p not in opt.state and q in opt.state


@pytest.mark.parametrize("kind", list(O.OPTIMIZERS))
def test_defaults_are_torchs(kind):
    """Each constructor's default hyper-parameters equal torch.optim's for the options we share."""
    ours = O.OPTIMIZERS[kind]([torch.zeros(1, requires_grad=True)])
    ref = TORCH[kind]([torch.zeros(1, requires_grad=True)])
    for key, value in ours.defaults.items():
        assert ref.defaults[key] == value, f"{kind}.{key}: ours {value}, torch {ref.defaults[key]}"


def test_zero_grad_semantics():
    """zero_grad() sets gradients to None (torch's default); zero_grad(set_to_none=False) zeroes them."""
    p = torch.ones(3, requires_grad=True)
    opt = O.SGD([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.zero_grad(set_to_none=False)
    assert torch.equal(p.grad, torch.zeros(3))
    opt.zero_grad()
    assert p.grad is None


@pytest.mark.parametrize("make, message", [
    (lambda p: O.SGD([], lr=0.1), "empty"),
    (lambda p: O.SGD([p, p], lr=0.1), "more than one"),
    (lambda p: O.SGD([{"params": [p]}, {"params": [p]}], lr=0.1), "more than one"),
    (lambda p: O.SGD([{"params": [p], "betas": (0.9, 0.9)}], lr=0.1), "unknown hyper-parameter"),
    (lambda p: O.SGD([p], lr=0.1, nesterov=True), "Nesterov"),
    (lambda p: O.SGD([p], lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "Nesterov"),
    (lambda p: O.Adam([p], lr=-1.0), "learning rate"),
    (lambda p: O.Adam([p], betas=(0.9, 1.0)), "betas"),
    (lambda p: O.AdamW([p], weight_decay=-0.1), "weight_decay"),
])
def test_invalid_configurations_are_clear_errors(make, message):
    """Configurations torch rejects (or that would silently misbehave) are ValueErrors that say why."""
    with pytest.raises(ValueError, match=message):
        make(torch.zeros(2, requires_grad=True))


def test_adam_first_step_is_a_sign_step(measure):
    """Closed form: after one step the bias corrections make m̂ = g and v̂ = g², so every
    coordinate moves by exactly lr·g/(|g| + ε) ≈ lr·sign(g), whatever the gradient's scale."""
    g = torch.tensor([1e-3, -2.0, 50.0, -1e-6], dtype=torch.float64)
    p = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    opt = O.Adam([p], lr=0.01, eps=1e-8)
    p.grad = g.clone()
    opt.step()
    expected = -0.01 * g / (g.abs() + 1e-8)
    report = assert_parity(p.detach(), expected, atol=1e-17, rtol=1e-14)
    measure("adam_first_step.max_abs_err", report.max_abs_err, "≤ 1e-17 + 1e-14·|ref|")


def test_adamw_decay_is_decoupled_from_the_gradient():
    """With a zero loss gradient, AdamW shrinks θ by exactly (1 − ηλ) per step, proportionally to
    θ, while Adam's L2 term λθ is normalised like any gradient (m̂/√v̂ ≈ 1) and moves θ by about η
    per step whatever its size: L2 regularisation is not weight decay under Adam (Loshchilov &
    Hutter). The 1% band allows for λθ changing slightly as θ shrinks, which makes m̂/√v̂ ≠ 1."""
    lr, wd, steps = 0.01, 0.1, 10
    start = torch.tensor([5.0, 500.0], dtype=torch.float64)
    pw, pa = start.clone().requires_grad_(), start.clone().requires_grad_()
    adamw, adam = O.AdamW([pw], lr=lr, weight_decay=wd), O.Adam([pa], lr=lr, weight_decay=wd)
    for _ in range(steps):
        pw.grad, pa.grad = torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
        adamw.step()
        adam.step()
    assert_parity(pw.detach(), start * (1 - lr * wd) ** steps, atol=1e-12)
    assert_parity(start - pa.detach(), torch.full((2,), steps * lr, dtype=torch.float64), atol=0.01 * steps * lr)


@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.5, False), (0.9, False), (0.5, True), (0.9, True)])
def test_momentum_stability_limit_closed_form(momentum, nesterov):
    """Closed form: on f = ½hθ², our SGD with momentum μ converges for ηh 2% below the derived
    limit (2(1 + μ) heavy ball, 2(1 + μ)/(1 + 2μ) Nesterov) and diverges 2% above it; with μ = 0
    both are plain gradient descent's ηh < 2."""
    limit = O.momentum_stability_limit(momentum, nesterov)
    h = 3.0
    for factor, converges in ((0.98, True), (1.02, False)):
        theta = torch.ones(1, dtype=torch.float64, requires_grad=True)
        opt = O.SGD([theta], lr=factor * limit / h, momentum=momentum, nesterov=nesterov)
        for _ in range(3000):
            theta.grad = h * theta.detach()
            opt.step()
        assert (theta.abs().item() < 1e-3) == converges, (factor, theta.item())


def test_rosenbrock_gradient_matches_autograd():
    """The analytic Rosenbrock gradient equals torch.autograd's at 100 random points (1e-10), and
    the minimum is at (1, 1) with value and gradient zero."""
    xy = (torch.rand(100, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 4 - 2).requires_grad_()
    O.rosenbrock(xy).sum().backward()
    assert_parity(O.rosenbrock_grad(xy.detach()), xy.grad, atol=1e-10, rtol=1e-12)
    one = torch.tensor(O.MINIMUM, dtype=torch.float64)
    assert O.rosenbrock(one).item() == 0 and torch.equal(O.rosenbrock_grad(one), torch.zeros(2, dtype=torch.float64))


class _Scripted:
    """A stand-in optimizer that moves the point through a fixed list of positions, one per
    ``step()``, and counts its steps: it pins ``optimize_path``'s bookkeeping without any dynamics."""

    def __init__(self, params, points):
        (self.xy,) = params
        self.points = [torch.tensor(p, dtype=torch.float64) for p in points]
        self.steps = 0

    def step(self):
        with torch.no_grad():
            self.xy.copy_(self.points[self.steps])
        self.steps += 1


@pytest.mark.parametrize("start", [O.START, (0.3, -0.7), (2.0**-30, 1e6)])
def test_optimize_path_starts_at_the_start_point(start):
    """The path of ``optimize_path`` begins at the given start (ARENA's ``opt_fn_with_sgd`` records
    the start, then one point per step): ``path[0]`` equals ``start`` exactly, ``losses[0]`` is
    f(start), and ``path[1]`` is one SGD step from it, xy − η∇f(xy), computed here by hand with
    autograd's gradient (the torch.optim comparisons cannot see this: their reference path is
    built by the same function). A start at |y| = 1e6 exactly is still inside the stop rule."""
    lr = 1e-4
    path, losses = O.optimize_path(lambda p: O.SGD(p, lr=lr), 3, start=start)
    first = torch.tensor(start, dtype=torch.float64)
    assert torch.equal(path[0], first)
    assert losses[0].item() == O.rosenbrock(first).item()
    xy = first.clone().requires_grad_()
    O.rosenbrock(xy).backward()
    assert_parity(path[1], first - lr * xy.grad, atol=0, rtol=1e-15)
    assert len(path) == len(losses) == 4


def test_steps_to_reach_is_the_first_step_strictly_below():
    """steps_to_reach gives the step at which the loss first drops below the threshold (the post's
    steps_to_loss_1e-2, read by results.json's check as "first drops below 1e-2"): strictly below, so a loss equal
    to the threshold has not reached it yet; None when no step gets below."""
    losses = torch.tensor([1.0, 0.5, 1e-2, 1e-3, 1e-4], dtype=torch.float64)
    assert O.steps_to_reach(losses, 1e-2) == 3
    assert O.steps_to_reach(losses, 0.75) == 1 and O.steps_to_reach(losses, 1e-5) is None


def test_optimize_path_stop_rule_exactly():
    """The stop rule, pinned with a scripted optimizer: the run stops at the first step whose point
    has a coordinate of magnitude strictly above 1e6 (max-abs, not the norm: (7e5, 8e5) continues;
    |x| = 1e6 exactly continues; −1e6 − 1 stops), that point is not recorded, the rest of the path
    repeats the last recorded point, and no further step is taken. A non-finite point stops it too."""
    steps = 8
    script = [(1.0, 2.0), (7e5, 8e5), (-1e6, 1e6), (3.0, 4.0), (-1e6 - 1, 0.0), (5.0, 5.0), (6.0, 6.0), (7.0, 7.0)]
    made = []

    def scripted(points):
        def make(params):
            made.append(_Scripted(params, points))
            return made[-1]
        return make

    path, losses = O.optimize_path(scripted(script), steps, start=(0.5, 0.5))
    assert made[-1].steps == 5  # the fifth point exceeds 1e6: nothing after it is stepped
    expected = torch.tensor([(0.5, 0.5), *script[:4], *[script[3]] * 4], dtype=torch.float64)
    assert torch.equal(path, expected)
    assert torch.equal(losses, O.rosenbrock(expected))
    for bad in (float("nan"), float("inf")):
        path, losses = O.optimize_path(scripted([(1.0, 1.0), (bad, 0.0), (2.0, 2.0)]), 3, start=(0.0, 0.0))
        assert made[-1].steps == 2 and torch.isfinite(path).all() and torch.isfinite(losses).all()
        assert torch.equal(path, torch.tensor([(0.0, 0.0), (1.0, 1.0), (1.0, 1.0), (1.0, 1.0)], dtype=torch.float64))


def test_diverging_run_stops_once_beyond_1e6(measure):
    """A diverging run ends by the stop rule, not by running every step into inf/NaN: plain SGD at
    η = 0.1 on Rosenbrock from (−1.2, 1) (ηλ_max ≫ 2) is iterated here by hand, xy ← xy − η∇f(xy)
    with autograd's gradient, until a coordinate exceeds 1e6 at step k. ``optimize_path`` must take
    exactly k optimizer steps of 2000, record the k points before it (equal to the hand iteration to
    rounding), repeat the last one to the end, and stay finite with every coordinate within 1e6."""
    lr, steps = 0.1, 2000
    manual = [torch.tensor(O.START, dtype=torch.float64)]
    while manual[-1].abs().max() <= 1e6:
        xy = manual[-1].clone().requires_grad_()
        O.rosenbrock(xy).backward()
        manual.append((manual[-1] - lr * xy.grad).detach())
    k = len(manual) - 1  # the step that crosses 1e6
    counted = []

    def counting_sgd(params):
        opt = O.SGD(params, lr=lr)
        original = opt.step

        def step():
            counted.append(1)
            original()
        opt.step = step
        return opt

    path, losses = O.optimize_path(counting_sgd, steps)
    measure("diverging_sgd.stop_step", k)
    assert len(counted) == k < steps
    assert_parity(path[:k], torch.stack(manual[:k]), atol=0, rtol=1e-12)
    assert torch.equal(path[k:], path[k - 1].expand(steps + 1 - k, 2))
    assert torch.isfinite(path).all() and torch.isfinite(losses).all() and path.abs().max() <= 1e6
    assert manual[k].abs().max() > 1e6 and torch.isfinite(manual[k]).all()  # the live branch is the 1e6 one


def _hessian_norm(xy: torch.Tensor) -> torch.Tensor:
    """‖∇²f‖_F ≥ ‖∇²f‖₂ of Rosenbrock at each point: [[2 − 400y + 1200x², −400x], [−400x, 200]]."""
    x, y = xy[..., 0], xy[..., 1]
    return torch.sqrt((2 - 400 * y + 1200 * x**2) ** 2 + 2 * (400 * x) ** 2 + 200.0**2)


def _reproduction_tolerances(name: str, rec: dict, path: torch.Tensor) -> dict:
    """How far this path's final loss, tail loss and final distance may be from the committed run's.

    Non-chaotic paths: another CPU rounds each of the 2000 steps differently, and a rounding
    is amplified at most as much as the experiment measured for a one-ulp nudge of the start
    (torch's own path; recorded as torch_self_deviation_after_1ulp_nudge): iterated(2000, growth=
    that factor) bounds the shift δ of every point of the path. The distance moves by at most δ,
    a loss by at most |∇f|·δ + ½‖∇²f‖·δ² at its point (plus f's own few roundings).
    Chaotic paths (a nudge departs by over 1e-6) end on a zigzag whose phase rounding decides:
    ours against torch (another rounding of the same run) differs by 0.4% in final loss and 0.7% in
    final distance, three one-ulp nudges of the start by at most 0.5% and 0.7%, and the tail loss
    (a mean over 200 steps) by at most 0.06%: statistical, rel 3% for the end point, 1% (the bar
    against torch) for the tail."""
    if rec["torch_self_deviation_after_1ulp_nudge"] > 1e-6:
        end = statistical(0.0, rel=0.03, why="a chaotic path's end point: 4× the spread of other roundings")
        return {"final_loss": end, "final_distance": end,
                "tail_loss": statistical(0.0, rel=0.01, why="a chaotic path's 200-step mean: 16× the spread")}
    growth = max(1.0, rec["torch_self_deviation_after_1ulp_nudge"] / 2.0**-52)
    shift = iterated(O.STEPS, growth=growth, why="rounding at each step, amplified as a nudge of the start")
    delta = shift.rel * path.abs().max().item()  # the rounding of a coordinate is relative to its size
    tail = path[-max(1, len(path) // 10):]
    moved = O.rosenbrock_grad(tail).norm(dim=-1) * delta + 0.5 * _hessian_norm(tail) * delta**2
    why = f"{name}: each point shifts by at most δ = {delta:.1e} (growth {growth:.0f})"
    return {"final_loss": float_ops(8, why=why, abs=moved[-1].item()),
            "tail_loss": float_ops(8 + len(tail), why=why, abs=moved.max().item()),
            "final_distance": float_ops(4, why=why, abs=delta)}


def test_results_json_is_current(committed, measure):
    """The post's Rosenbrock numbers are reproduced now: each optimizer's path at its recorded
    learning rate ends at the recorded loss and distance, within what rounding on another CPU
    can change over 2000 steps (see _reproduction_tolerances: a bound propagated along the path
    for the four non-chaotic paths, the measured spread of other roundings for the chaotic one),
    and the recorded learning rate is the best of the recorded sweep. Each path equals
    torch.optim's to 1e-9 over 2000 steps, except where the path itself is chaotic (torch's own
    path, started one ulp away, departs by over 1e-6): there our tail loss must equal torch's
    within 1%, and the recorded gap to torch's path reproduces in order of magnitude (a gap between
    two roundings of a chaotic path, within 1 decade; the three nudges: within 0.5). Torch's own
    path restarted one ulp away departs by the recorded gap in order of magnitude (1 decade: a
    gap between two roundings). The other numbers the post cites are recomputed: the steps to a
    loss of 1e-2 (exactly, on the non-chaotic paths, where the crossing's margin is far above the
    rounding shift), ηλ_max, the condition number and the two stability limits. The headline
    claims hold: momentum beats plain SGD's tail loss by over 100×, and Adam gets below 1e-8."""
    results = committed
    assert results["steps"] == O.STEPS and results["learning_rates"] == O.LEARNING_RATES
    non_chaotic_gap = 0.0
    for name, rec in results["optimizers"].items():
        path, losses = O.optimize_path(O.contestant(name, rec["lr"]), O.STEPS)
        now = {"final_loss": losses[-1].item(), "tail_loss": O.tail_loss(losses),
               "final_distance": math.dist(path[-1].tolist(), O.MINIMUM)}
        for key, tol in _reproduction_tolerances(name, rec, path).items():
            worst = assert_reproduces(now[key], rec[key], tol, name=f"optimizers.{name}.{key}")
            measure(f"rosenbrock.{name}.{key}.deviation_from_committed", worst, "≤ 1 (fraction of the tolerance)")
        by_lr = rec["tail_loss_by_lr"]
        assert min(by_lr, key=by_lr.get) == f"{rec['lr']:.3g}"
        ref_path, ref_losses = O.optimize_path(O.torch_contestant(name, rec["lr"]), O.STEPS)
        deviation = (path - ref_path).abs().max().item()
        if rec["torch_self_deviation_after_1ulp_nudge"] > 1e-6:
            assert O.tail_loss(losses) == pytest.approx(O.tail_loss(ref_losses), rel=0.01), name
            assert_reproduces(deviation, rec["max_abs_deviation_from_torch_optim"],
                              log_space(1.0, why="the gap between two roundings of a chaotic path"),
                              name=f"optimizers.{name}.max_abs_deviation_from_torch_optim")
            measure(f"rosenbrock.{name}.chaotic_deviation_from_torch", deviation)
        else:
            # Two roundings of the same path: a rounding error (0 on some kernels), so no value to
            # reproduce; both the recorded and today's gap must be under the bar.
            assert deviation <= 1e-9 and rec["max_abs_deviation_from_torch_optim"] <= 1e-9, name
            measure(f"rosenbrock.{name}.max_abs_deviation_from_torch", deviation, "≤ 1e-9")
            non_chaotic_gap = max(non_chaotic_gap, deviation)
            # The step at which the loss first drops below 1e-2: a decision, exact when the losses
            # on both sides of the crossing are farther from 1e-2 than rounding can move them.
            k = O.steps_to_reach(losses, 1e-2)
            assert k == rec["steps_to_loss_1e-2"], name
            if k is not None:
                assert losses[k - 1] > 1e-2 * (1 + 1e-6) and losses[k] < 1e-2 * (1 - 1e-6), name
        assert_reproduces(O.one_ulp_departure(name, rec["lr"], ref_path), rec["torch_self_deviation_after_1ulp_nudge"],
                          log_space(1.0, why="the gap between two roundings of one path, one ulp apart at the start"),
                          name=f"optimizers.{name}.torch_self_deviation_after_1ulp_nudge")
    measure("rosenbrock.non_chaotic.max_abs_deviation_from_torch", non_chaotic_gap, "≤ 1e-9")
    opts = results["optimizers"]
    # The Hessian at (1, 1) is [[802, −400], [−400, 200]]: eigenvalues (1002 ± √(1002² − 1600)) / 2.
    root = math.sqrt(1002**2 - 4 * 400)
    # (eigvalsh is backward stable: each eigenvalue is within a few roundings of ‖H‖ ≈ 1002.)
    assert_reproduces(results["hessian_eigenvalues_at_minimum"], [(1002 - root) / 2, (1002 + root) / 2],
                      float_ops(8, why="symmetric 2×2 eigenvalues, relative to ‖H‖", abs=float_ops(8).rel * 1002),
                      name="hessian_eigenvalues_at_minimum")
    eigenvalues = torch.linalg.eigvalsh(torch.autograd.functional.hessian(
        O.rosenbrock, torch.tensor(O.MINIMUM, dtype=torch.float64))).tolist()
    assert_reproduces(results["condition_number_at_minimum"], eigenvalues[1] / eigenvalues[0],
                      float_ops(8 * 2500, why="a ratio whose small eigenvalue carries ‖H‖·u of error: κ·u"),
                      name="condition_number_at_minimum")
    for name, rec in opts.items():
        assert_reproduces(rec["lr_times_top_curvature"], rec["lr"] * eigenvalues[1],
                          float_ops(16, why="a product with the top eigenvalue (a few roundings)"),
                          name=f"optimizers.{name}.lr_times_top_curvature")
    assert_reproduces(results["stability_limit"], {"heavy_ball": O.momentum_stability_limit(0.9),
                                                   "nesterov": O.momentum_stability_limit(0.9, True)},
                      float_ops(4, why="2(1 + μ)/(1 + 2μ): four roundings"), name="stability_limit")
    # At lr 10^-2.5, ηλ_max = 3.17: inside heavy ball's limit 3.8, outside Nesterov's 1.36.
    assert opts["momentum"]["tail_loss_by_lr"]["0.00316"] < 1e-20
    assert opts["nesterov"]["tail_loss_by_lr"]["0.00316"] > 1e3
    assert opts["nesterov"]["lr_times_top_curvature"] < results["stability_limit"]["nesterov"]
    assert opts["momentum"]["tail_loss"] * 100 < opts["sgd"]["tail_loss"]
    assert opts["adam"]["tail_loss"] < 1e-8
    for name in ("rosenbrock_paths", "rosenbrock_losses"):
        assert (HERE / f"figures/{name}.png").stat().st_size > 10_000


def test_learning_rate_sweep_is_current(committed, measure):
    """The experiment's learning-rate sweep, rerun now (5 optimizers × 8 learning rates × 2000
    steps): each optimizer's tail loss at each learning rate reproduces the recorded one in order
    of magnitude (1 decade: the sweep holds diverging runs stopped by the 1e6 rule, a chaotic one
    and losses at the rounding floor, 1e-25, where only the order of magnitude is reproducible;
    the post uses the table only through its arg-min and orders of magnitude), and each arg-min,
    the learning rate the post reports, is the recorded one with a margin of at least 2× over the
    runner-up, far more than any rounding moves a tail loss (1% for the chaotic path)."""
    tuned = O.tune_learning_rates()
    worst = 0.0
    for name, rec in committed["optimizers"].items():
        now = tuned[name]
        worst = max(worst, assert_reproduces(now["tail_loss_by_lr"], rec["tail_loss_by_lr"],
                                             log_space(1.0, why="a sweep of diverging, chaotic and rounding-floor runs"),
                                             name=f"optimizers.{name}.tail_loss_by_lr"))
        assert now["lr"] == rec["lr"], name
        best, runner_up = sorted(now["tail_loss_by_lr"].values())[:2]
        assert runner_up > 2 * best, name
    measure("lr_sweep.worst_deviation_decades", worst, "≤ 1 decade")
    # The stability edge the post points at: the same grid point, two momentum forms.
    assert tuned["momentum"]["tail_loss_by_lr"]["0.00316"] < 1e-20 < 1e3 < tuned["nesterov"]["tail_loss_by_lr"]["0.00316"]
