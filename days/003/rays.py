"""Day 3: rays, segments and batched intersection (ARENA 0.1 Ray Tracing, part 1).

ARENA's conventions: a ray is a pair of points ``[O, D]``, the origin and a direction, stored as
a tensor of shape (2, 3); it is the set of points O + u·D for u ≥ 0. The camera sits at the
origin and looks along +x; the screen is the plane x = 1, so a camera ray's direction is the
point where it pierces the screen, D = (1, y, z).

A segment is a pair of points ``[L1, L2]``, the points L1 + v·(L2 − L1) for 0 ≤ v ≤ 1. A ray
meets a segment (in the xy-plane, ignoring z as ARENA does) when

    O + u D = L1 + v (L2 − L1)   ⇔   [D  L1 − L2] [u v]ᵀ = L1 − O,

a 2×2 linear system, with u ≥ 0 (in front of the origin) and 0 ≤ v ≤ 1 (between the endpoints).
When D and L2 − L1 are parallel the matrix is singular and we say the ray misses: a parallel
segment is never crossed, and a collinear one is touched along an interval rather than at a
point, which this 1D renderer does not count (ARENA's convention).

``intersect_ray_1d`` solves one system; ``intersect_rays_1d`` solves all nrays × nsegments at
once with broadcasting and one batched ``torch.linalg.solve``. ``make_rays_2d`` builds the grid
of camera rays that days 4 and 5 render with.
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from checks.timing import best_time, single_thread



def parallel_tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance below which two directions count as parallel: 16 units of roundoff.

    The determinant det[a b] = |a||b| sin θ, so |det| ≤ tol·|a||b| means |sin θ| ≤ tol: the
    angle between them is below what the dtype can resolve after a few roundings.
    """
    return 16 * torch.finfo(dtype).eps


# ---------------------------------------------------------------- 1D rays


def make_rays_1d(num_pixels: int, y_limit: float) -> Float[Tensor, "num_pixels 2 3"]:
    """Rays from the origin through num_pixels points of the screen x = 1, z = 0.

    rays[i, 0] = O = (0, 0, 0) and rays[i, 1] = D = (1, y_i, 0), with y_i evenly spaced from
    -y_limit to +y_limit (both included).
    """
    rays = torch.zeros(num_pixels, 2, 3)
    rays[:, 1, 0] = 1.0
    rays[:, 1, 1] = torch.linspace(-y_limit, y_limit, num_pixels)
    return rays


def intersect_ray_1d(ray: Float[Tensor, "2 3"], segment: Float[Tensor, "2 3"]) -> bool:
    """Does the ray O + u·D (u ≥ 0) meet the segment L1 + v·(L2 − L1) (0 ≤ v ≤ 1)? Only x, y count.

    Solves [D  L1 − L2] [u v]ᵀ = L1 − O with torch.linalg.solve; a singular (parallel) system
    is a miss.
    """
    O, D = ray[0, :2], ray[1, :2]
    L1, L2 = segment[0, :2], segment[1, :2]
    matrix = torch.stack([D, L1 - L2], dim=1)  # columns D and L1 - L2
    det = torch.linalg.det(matrix)
    if det.abs() <= parallel_tolerance(ray.dtype) * D.norm() * (L2 - L1).norm():
        return False
    u, v = torch.linalg.solve(matrix, L1 - O)
    return bool((u >= 0) & (v >= 0) & (v <= 1))


def solve_rays_segments(
    rays: Float[Tensor, "nrays 2 3"], segments: Float[Tensor, "nsegments 2 3"]
) -> tuple[Float[Tensor, "nrays nsegments"], Float[Tensor, "nrays nsegments"], Bool[Tensor, "nrays nsegments"]]:
    """(u, v, parallel) for every ray against every segment, by one batched 2×2 solve.

    Broadcasting builds the (nrays, nsegments, 2, 2) stack of matrices [D  L1 − L2] and the
    right-hand sides L1 − O. Parallel pairs get the identity matrix instead (so the batch stays
    solvable); their u, v are meaningless and ``parallel`` marks them.
    """
    O = rays[:, None, 0, :2]                     # (nrays, 1, 2)
    D = rays[:, None, 1, :2]
    L1 = segments[None, :, 0, :2]                # (1, nsegments, 2)
    L2 = segments[None, :, 1, :2]
    D, edge = torch.broadcast_tensors(D, L1 - L2)
    matrices = torch.stack([D, edge], dim=-1)    # (nrays, nsegments, 2, 2), columns D and L1 - L2
    det = torch.linalg.det(matrices)
    parallel = det.abs() <= parallel_tolerance(rays.dtype) * D.norm(dim=-1) * edge.norm(dim=-1)
    matrices[parallel] = torch.eye(2, dtype=rays.dtype)
    solution = torch.linalg.solve(matrices, (L1 - O).expand_as(D))
    return solution[..., 0], solution[..., 1], parallel


def ray_segment_hits(
    rays: Float[Tensor, "nrays 2 3"], segments: Float[Tensor, "nsegments 2 3"]
) -> Bool[Tensor, "nrays nsegments"]:
    """hits[i, j]: ray i meets segment j (u ≥ 0, 0 ≤ v ≤ 1, not parallel), all pairs at once."""
    return _hit(*solve_rays_segments(rays, segments))


def _hit(u: Tensor, v: Tensor, parallel: Tensor) -> Tensor:
    return (u >= 0) & (v >= 0) & (v <= 1) & ~parallel


def intersect_rays_1d(rays: Float[Tensor, "nrays 2 3"], segments: Float[Tensor, "nsegments 2 3"]) -> Bool[Tensor, "nrays"]:
    """For each ray, does it meet any segment? (ARENA's batched intersect_rays_1d.)"""
    return ray_segment_hits(rays, segments).any(dim=1)


def nearest_hit_1d(rays: Float[Tensor, "nrays 2 3"], segments: Float[Tensor, "nsegments 2 3"]) -> Float[Tensor, "nrays"]:
    """The smallest u over the segments a ray meets (inf when it meets none): a 1D depth image.

    For camera rays D = (1, y, 0) from the origin, u is the x-coordinate of the hit, the depth.
    """
    u, v, parallel = solve_rays_segments(rays, segments)
    return torch.where(_hit(u, v, parallel), u, math.inf).amin(dim=1)


# ---------------------------------------------------------------- 2D ray grids


def make_rays_2d(num_pixels_y: int, num_pixels_z: int, y_limit: float, z_limit: float) -> Float[Tensor, "nrays 2 3"]:
    """A num_pixels_y × num_pixels_z grid of camera rays, flattened y-major (nrays = ny·nz).

    Ray i·nz + j has O = 0 and D = (1, y_i, z_j), with y_i spanning [-y_limit, y_limit] and z_j
    spanning [-z_limit, z_limit]. Reshaping a per-ray result to (ny, nz) gives an image whose
    rows are y and whose columns are z.
    """
    n = num_pixels_y * num_pixels_z
    rays = torch.zeros(n, 2, 3)
    y = torch.linspace(-y_limit, y_limit, num_pixels_y)
    z = torch.linspace(-z_limit, z_limit, num_pixels_z)
    rays[:, 1, 0] = 1.0
    rays[:, 1, 1] = y.repeat_interleave(num_pixels_z)  # y_i repeated for each z
    rays[:, 1, 2] = z.repeat(num_pixels_y)             # z cycles fastest
    return rays


# ---------------------------------------------------------------- the experiment

# ARENA's example scene: three segments in front of a nine-pixel camera.
ARENA_SEGMENTS = torch.tensor([
    [[1.0, -12.0, 0.0], [1.0, -6.0, 0.0]],
    [[0.5, 0.7, 0.0], [1.0, 1.0, 0.0]],
    [[2.0, 12.0, 0.0], [2.0, 21.0, 0.0]],
])


def room_segments() -> Float[Tensor, "nsegments 2 3"]:
    """A top-down 2D room: three walls and two square pillars standing in front of the back wall."""
    def square(cx: float, cy: float, half: float) -> list:
        corners = [(cx - half, cy - half), (cx + half, cy - half), (cx + half, cy + half), (cx - half, cy + half)]
        return [[(*corners[k], 0.0), (*corners[(k + 1) % 4], 0.0)] for k in range(4)]

    walls = [[(6.0, -4.0, 0.0), (6.0, 4.0, 0.0)],    # back wall
             [(1.0, -4.0, 0.0), (6.0, -4.0, 0.0)],   # right wall (y < 0)
             [(1.0, 4.0, 0.0), (6.0, 4.0, 0.0)]]     # left wall
    return torch.tensor(walls + square(3.0, 1.0, 0.5) + square(4.5, -1.5, 0.7))


def intersect_loop(rays: Tensor, segments: Tensor) -> Bool[Tensor, "nrays nsegments"]:
    """The per-pair reference: intersect_ray_1d in a Python double loop."""
    return torch.tensor([[intersect_ray_1d(r, s) for s in segments] for r in rays], dtype=torch.bool).reshape(
        len(rays), len(segments))


def benchmark_batched(sizes: tuple[int, ...] = (16, 64, 256), nsegments: int = 32, seed: int = 0) -> list[dict]:
    """Seconds to intersect n rays with nsegments random segments: per-pair loop vs batched
    (one thread; the minimum of 5 runs for batched, one run of the slow loop)."""
    gen = torch.Generator().manual_seed(seed)
    segments = torch.randn(nsegments, 2, 3, generator=gen) + torch.tensor([3.0, 0.0, 0.0])
    rows = []
    for n in sizes:
        rays = make_rays_1d(n, 2.0)
        loop = best_time(lambda: intersect_loop(rays, segments), repeats=1)
        batched = best_time(lambda: ray_segment_hits(rays, segments), repeats=5)
        rows.append({"nrays": n, "nsegments": nsegments, "loop_s": loop, "batched_s": batched,
                     "speedup": loop / batched})
    return rows


def run_experiment(out_dir: Path) -> dict:
    """ARENA's nine-ray scene, a 1D depth image of a room, the 2D ray grid, and loop vs batched."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)

    # 1. ARENA's scene: which of 9 rays meet which of 3 segments.
    rays = make_rays_1d(9, 10.0)
    hits = ray_segment_hits(rays, ARENA_SEGMENTS)
    u, _, _ = solve_rays_segments(rays, ARENA_SEGMENTS)
    fig, ax = plt.subplots(figsize=(7, 4.6))
    for i, ray in enumerate(rays):
        hit = bool(hits[i].any())
        ax.plot([0, 2.4], [0, 2.4 * ray[1, 1].item()], color="tab:red" if hit else "0.7", lw=1.2 if hit else 0.8)
    for j, seg in enumerate(ARENA_SEGMENTS):
        ax.plot(seg[:, 0], seg[:, 1], color="tab:blue", lw=3, solid_capstyle="butt")
        ax.annotate(f"segment {j}", seg[1, :2].tolist(), xytext=(6, 0), textcoords="offset points", color="tab:blue")
    for i, j in hits.nonzero().tolist():
        point = rays[i, 0, :2] + u[i, j] * rays[i, 1, :2]
        ax.plot(*point.tolist(), "o", color="tab:red", ms=5)
    ax.axvline(1.0, color="k", ls=":", lw=0.8)
    ax.text(1.02, -23.5, "screen x = 1", fontsize=8)
    ax.set_xlim(-0.1, 2.7)
    ax.set_ylim(-25, 25)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title("make_rays_1d(9, 10): rays that meet a segment in red")
    fig.tight_layout()
    fig.savefig(out_dir / "figures/arena_scene.png", dpi=120)
    plt.close(fig)

    # 2. A 1D depth image of a room seen from the origin.
    room = room_segments()
    camera = make_rays_1d(400, 1.0)
    depth = nearest_hit_1d(camera, room)
    fig, (top, strip) = plt.subplots(1, 2, figsize=(10, 4.2), gridspec_kw={"width_ratios": [1.1, 1]})
    for seg in room:
        top.plot(seg[:, 0], seg[:, 1], color="tab:blue", lw=2)
    for i in range(0, 400, 16):
        d = depth[i].item()
        end = camera[i, 1, :2] * (d if math.isfinite(d) else 7.0)
        top.plot([0, end[0]], [0, end[1]], color="tab:red", lw=0.6, alpha=0.7)
    top.plot([0], [0], "k^", ms=8)
    top.set_aspect("equal")
    top.set_xlabel("x")
    top.set_ylabel("y")
    top.set_title("the room from above (every 16th ray)")
    strip.plot(camera[:, 1, 1], depth, color="tab:red", lw=1.2)
    strip.set_xlabel("pixel: screen coordinate y")
    strip.set_ylabel("depth u of the nearest hit (= x)")
    strip.set_title("1D depth image: 400 rays × 11 segments")
    strip.invert_xaxis()  # looking along +x, +y is to the left
    strip.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "figures/room_depth.png", dpi=120)
    plt.close(fig)

    # 3. The 2D ray grid, drawn in 3D.
    grid = make_rays_2d(5, 7, 0.3, 0.4)
    fig = plt.figure(figsize=(6, 4.6))
    ax = fig.add_subplot(projection="3d")
    ax.view_init(elev=20, azim=-55)
    ax.set_box_aspect((1.6, 1, 1))
    for ray in grid:
        ax.plot([0, 1], [0, ray[1, 1].item()], [0, ray[1, 2].item()], color="tab:red", lw=0.6)
    ax.scatter(grid[:, 1, 0], grid[:, 1, 1], grid[:, 1, 2], color="tab:blue", s=10)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_zlabel("z")
    ax.set_title("make_rays_2d(5, 7, 0.3, 0.4): 35 rays through the screen x = 1")
    fig.tight_layout()
    fig.savefig(out_dir / "figures/ray_grid.png", dpi=120)
    plt.close(fig)

    with single_thread():
        bench = benchmark_batched()
    results = {
        "arena_scene": {
            "hits_by_ray": intersect_rays_1d(rays, ARENA_SEGMENTS).tolist(),
            "hit_pairs": hits.nonzero().tolist(),
        },
        "room": {
            "n_rays": len(camera),
            "n_segments": len(room),
            "depth_min": depth.min().item(),
            "depth_max": depth[torch.isfinite(depth)].max().item(),
            "n_missed": int((~torch.isfinite(depth)).sum()),
        },
        "grid_shape": list(grid.shape),
        "benchmark": bench,
        "speedup_at_largest": bench[-1]["speedup"],
        "torch_threads": 1,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
