"""The gate of day 27: reward hacking, Goodhart curves of best-of-n, and mitigations.

Spec: the day's topic done properly (no ARENA section): a proxy reward that diverges from the
intended one as optimisation grows, the divergence measured as a Goodhart curve, a mitigation with
measured effect. References: scipy.stats (norm, t) for the error laws; the closed form of the
Gaussian case (E[V | U] = U/2, best-of-n proxy √2 e_n and gold e_n/√2 with e_n by scipy's quad);
Monte Carlo simulation of best-of-n; brute-force enumeration of every draw for the finite-pool
formula; the closed form log n − (n − 1)/n for the KL of best-of-n (Stiennon et al., 2020).
"""

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from checks import assert_parity
from checks.committed import assert_reproduces, float_ops

from . import reward_hacking as H

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def laws():
    return {"gaussian": H.proxy_law(H.GAUSSIAN), "student_t": H.proxy_law(H.HEAVY)}


def test_error_laws_match_scipy(measure):
    """The closed-form densities and survival functions equal scipy.stats' norm and t(3, scale 1/√3) on
    x ∈ [−60, 60] (absolute 1e-14; relative 1e-6 in the upper tail, where the t's survival function
    loses digits to cancellation); both errors have variance 1 (quadrature, 1e-4: the t's tail beyond
    ±2000 holds the rest), so corr(U, V) = 1/√2 in both cases."""
    x = np.linspace(-60, 60, 4001)
    worst = 0.0
    for err in (H.GAUSSIAN, H.HEAVY):
        ref = err.dist
        worst = max(worst, np.abs(err.pdf(x) - ref.pdf(x)).max(), np.abs(err.sf(x) - ref.sf(x)).max())
        tail = (x > 0) & (ref.sf(x) > 1e-250)
        assert np.abs(err.sf(x[tail]) / ref.sf(x[tail]) - 1).max() < 1e-6
        grid = np.linspace(-2000, 2000, 2_000_001)
        assert (grid**2 * err.pdf(grid)).sum() * (grid[1] - grid[0]) == pytest.approx(1.0, abs=1e-3 if err is H.HEAVY else 1e-10)
    measure("error_laws_vs_scipy.max_abs_err", worst, "≤ 1e-14")
    assert worst < 1e-14
    assert H.HEAVY.dist.var() == pytest.approx(1.0, abs=1e-12)


def test_proxy_law_is_the_trapezoid_rule_on_v_grid():
    """proxy_law's three convolution integrals are the trapezoid rule on V_GRID (its docstring), here against
    scipy.integrate.trapezoid of φ(v) f_X(u − v), φ(v) S_X(u − v) and v φ(v) f_X(u − v) (relative 1e-12), at
    proxies from the bulk to the far tail (u = 20, 30, where the grid's end points carry most of the weight)."""
    from scipy.integrate import trapezoid

    u = np.array([-3.0, 0.0, 2.5, 20.0, 30.0])
    v = H.V_GRID
    phi = stats.norm.pdf(v)
    for err in (H.GAUSSIAN, H.HEAVY):
        law = H.proxy_law(err, u)
        for i, ui in enumerate(u):
            f = trapezoid(phi * err.dist.pdf(ui - v), v)
            assert law.density[i] == pytest.approx(f, rel=1e-12)
            assert law.survival[i] == pytest.approx(trapezoid(phi * err.dist.sf(ui - v), v), rel=1e-12)
            assert law.conditional_mean[i] == pytest.approx(trapezoid(v * phi * err.dist.pdf(ui - v), v) / f, rel=1e-12)


def test_monte_carlo_standard_errors(measure):
    """monte_carlo_best_of_n's standard errors are the sample standard deviation over √trials: with n = 1 the
    chosen sample is a plain draw, gold V ~ N(0, 1) and proxy V + X with Var = 2 (Gaussian error), so
    gold_se ≈ 1/√trials and proxy_se ≈ √2/√trials (10 000 trials: the sample sd is within 5% w.p. ≈ 1 − 1e-12)."""
    trials = 10_000
    mc = H.monte_carlo_best_of_n(H.GAUSSIAN, 1, trials, np.random.default_rng(2))
    measure("monte_carlo_n1.gold_se", mc["gold_se"], "≈ 0.01")
    assert mc["gold_se"] == pytest.approx(1 / math.sqrt(trials), rel=0.05)
    assert mc["proxy_se"] == pytest.approx(math.sqrt(2 / trials), rel=0.05)


def test_gaussian_case_has_its_closed_form(laws, measure):
    """With Gaussian error: m(u) = E[V | U = u] = u/2 (|u| ≤ 6, 1e-9), and best-of-n has E[proxy] = √2 e_n and
    E[gold] = e_n/√2, with e_n = E[max of n standard normals] from scipy's quad, for n up to 10 000 (1e-4: the
    grid's quadrature error). Gold is exactly half the proxy: regressional Goodhart."""
    law = laws["gaussian"]
    mid = np.abs(law.u) <= 6
    assert_parity(law.conditional_mean[mid], law.u[mid] / 2, atol=1e-9)
    ns = [2, 8, 64, 1024, 10_000]
    curves = H.best_of_n(law, ns)
    worst = 0.0
    for n, proxy, gold in zip(ns, curves["proxy"], curves["gold"]):
        e = H.expected_max_standard_normal(n)
        worst = max(worst, abs(proxy - math.sqrt(2) * e), abs(gold - e / math.sqrt(2)))
    measure("gaussian_best_of_n_vs_closed_form.max_abs_err", worst, "≤ 1e-4")
    assert worst < 1e-4


def test_quadrature_matches_monte_carlo(laws, measure):
    """For both error laws and n ∈ {4, 64, 512}, the quadrature's E[gold] and E[proxy] of best-of-n lie within 4
    standard errors of 3 000 simulated best-of-n draws."""
    rng = np.random.default_rng(0)
    worst = 0.0
    for name, err in (("gaussian", H.GAUSSIAN), ("student_t", H.HEAVY)):
        exact = H.best_of_n(laws[name], [4, 64, 512])
        for i, n in enumerate([4, 64, 512]):
            mc = H.monte_carlo_best_of_n(err, n, 3000, rng)
            z_gold = (mc["gold"] - exact["gold"][i]) / mc["gold_se"]
            z_proxy = (mc["proxy"] - exact["proxy"][i]) / mc["proxy_se"]
            worst = max(worst, abs(z_gold), abs(z_proxy))
    measure("quadrature_vs_monte_carlo.max_abs_z", worst, "< 4")
    assert worst < 4


def test_heavy_tailed_error_makes_gold_fall(laws, measure):
    """Extremal Goodhart: with the Student-t error, E[V | U = u] peaks and then decays (m(100) < 0.05 < m(2)), and
    best-of-n's gold rises to a peak at some n between 16 and 256, then falls below 0.1 by n = 10⁶, while the
    proxy keeps rising; the Gaussian error's gold at n = 10⁶ is above 3."""
    law = laws["student_t"]
    m = np.interp([2.0, 100.0], law.u, law.conditional_mean)
    assert m[1] < 0.05 < m[0]
    curves = H.best_of_n(law, H.TOY_NS)
    gold, proxy = np.array(curves["gold"]), np.array(curves["proxy"])
    peak = int(np.argmax(gold))
    measure("heavy.peak_n", H.TOY_NS[peak])
    measure("heavy.peak_gold", gold[peak])
    measure("heavy.gold_at_1e6", gold[-1], "< 0.1")
    assert 16 <= H.TOY_NS[peak] <= 256 and gold[-1] < 0.1
    assert np.all(np.diff(proxy) > 0)
    assert H.best_of_n(laws["gaussian"], [10**6])["gold"][0] > 3


def test_pool_formula_equals_enumerating_every_draw(measure):
    """Best-of-n from a finite pool (draws with replacement, ties split evenly): the selection probabilities, the
    expected proxy and gold and the KL to the uniform pool equal a brute-force enumeration of all Nⁿ draws
    (N = 6 with a tie, n = 1 … 4; 1e-12)."""
    proxy = np.array([0.3, -1.0, 2.0, 0.3, 5.0, 1.1])
    gold = np.array([1.0, 0.0, -2.0, 3.0, -1.0, 0.5])
    N = len(proxy)
    for n in range(1, 5):
        chosen = np.zeros(N)
        for draw in itertools.product(range(N), repeat=n):
            best = max(proxy[list(draw)])
            winners = sorted({i for i in draw if proxy[i] == best})
            chosen[winners] += 1 / len(winners) / N**n
        ours = H.pool_best_of_n(proxy, gold, [n])
        assert ours["proxy"][0] == pytest.approx(chosen @ proxy, abs=1e-12)
        assert ours["gold"][0] == pytest.approx(chosen @ gold, abs=1e-12)
        nz = chosen > 0
        assert ours["kl"][0] == pytest.approx(float(chosen[nz] @ np.log(N * chosen[nz])), abs=1e-12)
    assert H.pool_selection_probabilities(N, 3).sum() == pytest.approx(1.0, abs=1e-15)


def test_pool_kl_tends_to_the_closed_form(measure):
    """For a large pool of distinct proxies (N = 10⁶), the exact KL of best-of-n tends to log n − (n − 1)/n
    (within 1e-3 for n ≤ 64: the pool's discreteness is a O(n/N) correction)."""
    N = 1_000_000
    proxy = np.arange(N, dtype=float)
    worst = 0.0
    for n in (1, 2, 8, 64):
        kl = H.pool_best_of_n(proxy, proxy, [n])["kl"][0]
        assert abs(kl - H.bon_kl(n)) < 1e-3, n     # per n: a NaN must not hide inside max()
        worst = max(worst, abs(kl - H.bon_kl(n)))
    measure("pool_kl_vs_closed_form.max_abs_err", worst, "≤ 1e-3")
    assert worst < 1e-3


def test_median_ensemble_mitigates_extremal_goodhart(measure):
    """Mitigation, measured: at n = 1 024 with Student-t errors (800 trials), the median of 5 independent
    proxies keeps the chosen sample's gold above 2.5, more than 0.3 above the mean of 5 (whose average keeps a
    heavy tail) and more than 1.5 above a single proxy."""
    rng = np.random.default_rng(1)
    single = H.monte_carlo_best_of_n(H.HEAVY, 1024, 800, rng)
    mean5 = H.monte_carlo_best_of_n(H.HEAVY, 1024, 800, rng, k=5, combine="mean")
    median5 = H.monte_carlo_best_of_n(H.HEAVY, 1024, 800, rng, k=5, combine="median")
    measure("ensemble_1024.single_gold", single["gold"])
    measure("ensemble_1024.mean5_gold", mean5["gold"])
    measure("ensemble_1024.median5_gold", median5["gold"], "> 2.5")
    assert median5["gold"] > 2.5
    assert median5["gold"] > mean5["gold"] + 0.3 > single["gold"] + 1.5 + 0.3


# E[gold] of best-of-n = Σ m(u_i)·ΔF_i over the 4 000 intervals of the proxy grid, |m| ≤ 8.5 (V_GRID's edge) and
# Σ|ΔF| = 1 (F is monotone); each ΔF is a difference of two numbers ≤ 1 (absolute error ~u each), and F and m
# are themselves 1 201-term float64 quadratures: ≈ 3·4 000 + 1 201 rounding steps, each of size ≤ 8.5·u in
# absolute terms (the heavy-tailed gold falls towards 0 at large n, so the bound must be absolute): ≈ 1e-10.
TOY_STEPS = 3 * 4_000 + 1_201
TOY_GOLD_TOL = float_ops(TOY_STEPS, abs=8.5 * float_ops(TOY_STEPS).rel,
                         why="a 4 000-interval float64 Stieltjes sum of |m| ≤ 8.5 over 1 201-term quadratures")


def test_results_json_is_current(laws, committed, measure):
    """results.json came from this configuration; its toy curves are reproduced by the quadrature now (float64
    sums over the grids: 1e-10 absolute, TOY_GOLD_TOL);
    the real pool's curves satisfy their own bookkeeping (KL from the pool formula, nondecreasing proxy); and
    the headline holds: on day 25's samples the strongest reward model's best-of-n gold is at least the
    weakest one's at every n, and every proxy's best-of-4096 beats the pool's mean gold by more than 1."""
    results = committed
    toy = results["toy"]
    assert toy["ns"] == H.TOY_NS and results["real"]["pool_size"] == H.POOL_SIZE
    for name, law in laws.items():
        now = H.best_of_n(law, H.TOY_NS)
        worst = assert_reproduces(np.array(now["gold"]), np.array(toy["curves"][name]["gold"]), TOY_GOLD_TOL,
                                  name=f"toy.{name}.gold")
        measure(f"toy.{name}.gold_vs_committed", worst, "≤ 1 (fraction of the tolerance)")
    real = results["real"]
    for name, curve in real["curves"].items():
        assert np.all(np.diff(curve["proxy"]) >= -1e-12), name
        assert curve["kl"][0] == pytest.approx(0.0, abs=1e-12)
    weak = real["curves"][f"single_{H.PAIR_COUNTS[0]}"]["gold"]
    strong = real["curves"][f"single_{H.PAIR_COUNTS[-1]}"]["gold"]
    measure("real.weak_proxy_gold_at_max_n", weak[-1])
    measure("real.strong_proxy_gold_at_max_n", strong[-1])
    assert all(s >= w for s, w in zip(strong, weak)) and strong[-1] > weak[-1]
    assert min(curve["gold"][-1] for curve in real["curves"].values()) > real["pool_gold_mean"] + 1
    for name in ("toy_goodhart", "real_best_of_n"):
        assert (HERE / f"figures/{name}.png").stat().st_size > 10_000


@pytest.mark.slow
def test_experiment_headline(tmp_path, measure):
    """Slow: the whole experiment. Toy: the heavy-tailed gold peaks and falls below 0.1 by n = 10⁶; with 2 000
    trials at n = 4 096 the median-of-5 ensemble's gold exceeds the single proxy's by more than 2. Real: the
    weakest reward model's best-of-4096 gold is below the strongest one's."""
    results = H.run_experiment(tmp_path)
    toy, ens = results["toy"], results["ensembles"]["curves"]
    measure("slow.heavy_gold_at_max_n", toy["heavy_gold_at_max_n"])
    measure("slow.experiment_seconds", results["experiment_seconds"])
    assert toy["heavy_gold_at_max_n"] < 0.1 < toy["heavy_peak_gold"]
    assert ens["median_of_5"][-1]["gold"] > ens["single"][-1]["gold"] + 2
    real = results["real"]["curves"]
    assert real[f"single_{H.PAIR_COUNTS[-1]}"]["gold"][-1] > real[f"single_{H.PAIR_COUNTS[0]}"]["gold"][-1]
