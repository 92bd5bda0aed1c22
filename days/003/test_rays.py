"""The gate of day 3 (ARENA 0.1 Ray Tracing: 1D rays, ray–segment intersection, batching, 2D grids).

Evidence: hand-solved cases (crossing, parallel, collinear, touching an endpoint, behind the
origin, through the origin) with their u and v worked out on paper; the batched solver against
the per-pair loop (exact equality of the hit masks) and against Cramer's rule, an independent
closed form for the 2×2 system (float64; the two differ by rounding in a well-conditioned solve,
~1e-15, and 1e-12 leaves slack for random matrices with condition numbers up to ~1e3);
geometric invariants (translating, rotating, rescaling the direction, swapping endpoints).
"""

import math
from pathlib import Path

import pytest
import torch

from checks import assert_parity
from checks.committed import assert_reproduces, float_ops

from . import rays as R

HERE = Path(__file__).parent


def ray(o, d):
    """A ray from 2D (or 3D) points: [O, D] with z = 0 unless given."""
    pad = lambda p: list(p) + [0.0] * (3 - len(p))
    return torch.tensor([pad(o), pad(d)], dtype=torch.float64)


segment = ray  # a segment is also a pair of points [L1, L2]


def random_scene(n_rays, n_segments, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    rays = torch.randn(n_rays, 2, 3, generator=g, dtype=dtype)
    segments = torch.randn(n_segments, 2, 3, generator=g, dtype=dtype)
    return rays, segments


def test_make_rays_1d_matches_arena_definition():
    """make_rays_1d: origins at 0, directions (1, y, 0) with y = linspace(-y_limit, y_limit)."""
    rays = R.make_rays_1d(9, 10.0)
    assert rays.shape == (9, 2, 3)
    assert torch.equal(rays[:, 0], torch.zeros(9, 3))
    assert torch.equal(rays[:, 1, 0], torch.ones(9))
    assert torch.equal(rays[:, 1, 2], torch.zeros(9))
    assert rays[:, 1, 1].tolist() == [-10.0, -7.5, -5.0, -2.5, 0.0, 2.5, 5.0, 7.5, 10.0]


# The spec as data: (ray, segment, expected hit, (u, v) worked out by hand, what it exercises).
HAND_CASES = [
    (ray((0, 0), (1, 0)), segment((2, -1), (2, 1)), True, (2.0, 0.5), "crossing at (2, 0)"),
    (ray((0, 0), (1, 0.5)), segment((2, 0), (2, 2)), True, (2.0, 0.5), "non-unit direction: hit at (2, 1)"),
    (ray((0, 0), (1, 0)), segment((2, 1), (2, 3)), False, (2.0, -0.5), "the line crosses below L1: v < 0"),
    (ray((0, 0), (1, 0)), segment((2, -3), (2, -1)), False, (2.0, 1.5), "the line crosses beyond L2: v > 1"),
    (ray((0, 0), (1, 0)), segment((2, 0), (2, 1)), True, (2.0, 0.0), "touching the endpoint L1: v = 0"),
    (ray((0, 0), (1, 0)), segment((2, -1), (2, 0)), True, (2.0, 1.0), "touching the endpoint L2: v = 1"),
    (ray((0, 0), (1, 0)), segment((-2, -1), (-2, 1)), False, (-2.0, 0.5), "behind the origin: u < 0"),
    (ray((0, 0), (1, 0)), segment((0, -1), (0, 1)), True, (0.0, 0.5), "through the origin itself: u = 0"),
    (ray((1, 1), (-1, -1)), segment((0, 2), (2, -2)), True, (1 / 3, 1 / 3), "origin off zero: hit at (2/3, 2/3)"),
    (ray((0, 0), (1, 0)), segment((0, 1), (5, 1)), False, None, "parallel: singular, a miss"),
    (ray((0, 0), (1, 2)), segment((1, 0), (3, 4)), False, None, "parallel, non-axis-aligned"),
    (ray((0, 0), (1, 0)), segment((1, 0), (3, 0)), False, None, "collinear: singular, a miss by convention"),
    (ray((0, 0), (1, 0)), segment((2, 0), (2, 0)), False, None, "a zero-length segment: singular, a miss"),
    (ray((0, 0), (0, 0)), segment((2, -1), (2, 1)), False, None, "a zero direction: singular, a miss"),
    (ray((0, 0, 5), (1, 0, -3)), segment((2, -1, 7), (2, 1, -2)), True, (2.0, 0.5), "z is ignored"),
]


@pytest.mark.parametrize("r, s, expected, uv, case", HAND_CASES, ids=[c[-1] for c in HAND_CASES])
def test_hand_solved_cases(r, s, expected, uv, case):
    """intersect_ray_1d and the batched solver agree with hand-solved cases: hit iff u ≥ 0 and
    0 ≤ v ≤ 1, parallel and collinear segments miss, and (u, v) are the values found on paper."""
    assert R.intersect_ray_1d(r, s) is expected
    assert R.intersect_ray_1d(r.float(), s.float()) is expected
    assert R.ray_segment_hits(r[None], s[None]).item() is expected
    u, v, parallel = R.solve_rays_segments(r[None], s[None])
    assert parallel.item() is (uv is None)
    if uv is not None:
        assert (u.item(), v.item()) == pytest.approx(uv, abs=1e-14)


def test_arena_scene_solved_by_hand():
    """ARENA's scene, solved on paper: ray i has slope y_i ∈ {-10, -7.5, ..., 10}. Segment 0
    (x = 1, y ∈ [-12, -6]) is met where y_i ∈ [-12, -6]: rays 0, 1. Segment 1 lies on
    y = 0.4 + 0.6x for x ∈ [0.5, 1]; a ray meets it at x = 0.4 / (y_i - 0.6), inside [0.5, 1]
    only for y_i ∈ [1, 1.4]: no ray. Segment 2 (x = 2, y ∈ [12, 21]) needs 2y_i ∈ [12, 21]:
    rays 7, 8."""
    rays = R.make_rays_1d(9, 10.0)
    expected = torch.zeros(9, 3, dtype=torch.bool)
    expected[[0, 1], 0] = True
    expected[[7, 8], 2] = True
    assert torch.equal(R.ray_segment_hits(rays, R.ARENA_SEGMENTS), expected)
    assert R.intersect_rays_1d(rays, R.ARENA_SEGMENTS).tolist() == [True, True] + [False] * 5 + [True, True]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batched_equals_per_pair_loop(dtype, measure):
    """The batched hit matrix equals intersect_ray_1d called on every (ray, segment) pair, and
    intersect_rays_1d equals 'any' over the loop's rows (random scene, both hits and misses)."""
    rays, segments = random_scene(40, 30, seed=1, dtype=dtype)
    loop = R.intersect_loop(rays, segments)
    batched = R.ray_segment_hits(rays, segments)
    assert torch.equal(batched, loop)
    assert torch.equal(R.intersect_rays_1d(rays, segments), loop.any(dim=1))
    hit_rate = loop.float().mean().item()
    assert 0.1 < hit_rate < 0.9, "the random scene must exercise both outcomes"
    measure(f"loop_vs_batched.{str(dtype)[6:]}.pairs_compared", loop.numel())
    measure(f"loop_vs_batched.{str(dtype)[6:]}.hit_rate", hit_rate)


def test_solver_matches_cramers_rule(measure):
    """u and v from the batched torch.linalg.solve equal Cramer's rule for [D  L1 − L2][u v]ᵀ =
    L1 − O: u = det[b E] / det[D E], v = det[D b] / det[D E], with b = L1 − O, E = L1 − L2."""
    rays, segments = random_scene(50, 40, seed=2)
    u, v, parallel = R.solve_rays_segments(rays, segments)
    assert not parallel.any()
    O, D = rays[:, None, 0, :2], rays[:, None, 1, :2]
    L1, L2 = segments[None, :, 0, :2], segments[None, :, 1, :2]
    b, E = L1 - O, L1 - L2
    cross = lambda p, q: p[..., 0] * q[..., 1] - p[..., 1] * q[..., 0]
    det = cross(D, E)
    measure.parity(assert_parity(u, cross(b, E) / det, atol=1e-12, rtol=1e-12, name="cramer.u"))
    measure.parity(assert_parity(v, cross(D, b) / det, atol=1e-12, rtol=1e-12, name="cramer.v"))


def test_intersection_is_invariant_under_rigid_motions_and_rescaling():
    """Hits are geometry, not coordinates: translating rays and segments together, rotating them
    in the xy-plane, scaling D by c > 0 (u becomes u / c) or swapping L1 and L2 (v becomes
    1 − v) changes no hit."""
    rays, segments = random_scene(30, 30, seed=3)
    hits = R.ray_segment_hits(rays, segments)
    u, v, _ = R.solve_rays_segments(rays, segments)

    shift = torch.tensor([3.0, -2.0, 0.7], dtype=torch.float64)
    moved = rays.clone()
    moved[:, 0] += shift  # only the origin moves: D is a direction
    assert torch.equal(R.ray_segment_hits(moved, segments + shift), hits)

    c, s = math.cos(0.9), math.sin(0.9)
    rot = torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=torch.float64)
    assert torch.equal(R.ray_segment_hits(rays @ rot.T, segments @ rot.T), hits)

    scaled = rays.clone()
    scaled[:, 1] *= 4.0
    u4, _, _ = R.solve_rays_segments(scaled, segments)
    assert torch.equal(R.ray_segment_hits(scaled, segments), hits)
    assert_parity(u4, u / 4, atol=1e-12, rtol=1e-12)

    swapped = segments.flip(1)
    _, v_swapped, _ = R.solve_rays_segments(rays, swapped)
    assert torch.equal(R.ray_segment_hits(rays, swapped), hits)
    assert_parity(v_swapped, 1 - v, atol=1e-12, rtol=1e-12)


def test_room_is_a_flat_top_down_scene():
    """room_segments is "a top-down 2D room: three walls and two square pillars": 3 + 2·4 segments, every end point
    in the z = 0 plane (ARENA's 2D segments' format), each pillar side of the same length (a square)."""
    room = R.room_segments()
    assert room.shape == (11, 2, 3) and (room[..., 2] == 0).all()
    for pillar in (room[3:7], room[7:11]):
        sides = (pillar[:, 1] - pillar[:, 0]).norm(dim=-1)
        assert torch.allclose(sides, sides[0].expand(4)) and torch.equal(pillar[:, 1], pillar.roll(-1, 0)[:, 0])


def test_no_segments_means_no_hits():
    """With zero segments every ray misses (any over an empty set is False)."""
    rays = R.make_rays_1d(5, 1.0)
    assert not R.intersect_rays_1d(rays, torch.zeros(0, 2, 3)).any()


def test_nearest_hit_is_the_closest_segment():
    """nearest_hit_1d is the smallest u among the hit segments (inf on a miss): two walls at
    x = 2 and x = 5 give depth 2 where both are hit, 5 where only the far one is, inf elsewhere."""
    rays = R.make_rays_1d(5, 1.0)  # slopes -1, -0.5, 0, 0.5, 1
    walls = torch.tensor([[[2.0, -0.5, 0], [2.0, 0.5, 0]],      # near wall: y ∈ [-0.5, 0.5] at x = 2
                          [[5.0, -2.6, 0], [5.0, 2.6, 0]]])     # far wall: y ∈ [-2.6, 2.6] at x = 5
    depth = R.nearest_hit_1d(rays, walls)
    # slope ±1 reaches y = ±5 at x = 5: misses both; slope ±0.5: y = ±1 at x = 2 (misses the near
    # wall), y = ±2.5 at x = 5 (hits the far one); slope 0: hits both, the near one first.
    assert depth.tolist() == [math.inf, 5.0, 2.0, 5.0, math.inf]


def test_make_rays_2d_is_the_cartesian_grid():
    """make_rays_2d: nrays = ny·nz, origins 0, directions (1, y_i, z_j) in y-major order, exactly
    torch.cartesian_prod of the two linspaces."""
    rays = R.make_rays_2d(10, 7, 0.3, 0.5)
    assert rays.shape == (70, 2, 3)
    assert torch.equal(rays[:, 0], torch.zeros(70, 3))
    assert torch.equal(rays[:, 1, 0], torch.ones(70))
    grid = torch.cartesian_prod(torch.linspace(-0.3, 0.3, 10), torch.linspace(-0.5, 0.5, 7))
    assert torch.equal(rays[:, 1, 1:], grid)
    image = rays[:, 1, 1].reshape(10, 7)  # rows are y, columns z
    assert torch.equal(image[:, 0], torch.linspace(-0.3, 0.3, 10))


def test_results_json_is_current(committed, measure):
    """results.json (cited by the post) was written by this code: ARENA's hits and the room's
    depth range recomputed now; the room's depths are also checked by hand: the nearest surface
    is the near face of the first pillar (x = 3 − 0.5 = 2.5), the farthest the back wall (x = 6),
    and no ray escapes the room. The hits are decisions whose u and v clear the thresholds 0 and 1
    by ≥ 0.03 (compared exactly); a depth is one float32 2×2 solve (float_ops(8, float32))."""
    results = committed
    rays = R.make_rays_1d(9, 10.0)
    assert results["arena_scene"]["hits_by_ray"] == R.intersect_rays_1d(rays, R.ARENA_SEGMENTS).tolist()
    depth = R.nearest_hit_1d(R.make_rays_1d(results["room"]["n_rays"], 1.0), R.room_segments())
    depth_tol = float_ops(8, "float32", why="u of one batched 2×2 float32 solve (LU, a few roundings)")
    for key, by_hand, now in (("depth_min", 2.5, depth.min().item()), ("depth_max", 6.0, depth.max().item())):
        assert_reproduces(now, results["room"][key], depth_tol, name=f"room.{key}")
        assert_reproduces(now, by_hand, depth_tol, name=f"room.{key}, by hand")
    assert results["room"]["n_missed"] == 0 and torch.isfinite(depth).all()
    assert results["benchmark"][-1]["speedup"] > 1
    for name in ("arena_scene", "room_depth", "ray_grid"):
        assert (HERE / f"figures/{name}.png").stat().st_size > 10_000
    measure("batched_speedup_at_largest", results["speedup_at_largest"])
