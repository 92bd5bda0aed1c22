"""The gate of day 4 (ARENA 0.1 Ray Tracing: triangles, meshes, a full render).

Evidence: hand-solved ray–triangle cases; the batched Möller–Trumbore solver against a per-pair
``torch.linalg.solve`` of ARENA's system [−D  B − A  C − A][s u v]ᵀ = O − A (float64; Cramer's
rule and LU agree to ~κ·1e-16, and the random systems here have κ below ~1e4, so 1e-9 relative
leaves slack); the rendered silhouette of an icosphere against πr² within the bounds that the
mesh's inradius and the pixel pitch give, and pixel-for-pixel against an independent 2D
point-in-projected-triangle test; depths between the circumscribed and inscribed spheres;
Lambert's cos θ on a tilted triangle; mesh topology (Euler characteristic, closed and
consistently wound) and second-order volume convergence; Rodrigues against scipy.
"""

import math
from pathlib import Path

import pytest
import torch
from scipy.spatial import ConvexHull
from scipy.spatial.transform import Rotation

from checks import assert_parity
from checks.committed import assert_reproduces, float_ops

from . import render as R

HERE = Path(__file__).parent
F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one torch/BLAS thread (checks.timing)


def t(*rows):
    return torch.tensor(rows, dtype=F64)


def random_scene(n_rays, n_triangles, seed):
    """Rays from near the origin looking roughly along +x; unit-sized random triangles spread
    along x from behind the origin to ~5, so that hits, misses and hits behind the origin
    (s < 0, which must not count) all occur."""
    g = torch.Generator().manual_seed(seed)
    rays = torch.zeros(n_rays, 2, 3, dtype=F64)
    rays[:, 0] = 0.2 * torch.randn(n_rays, 3, generator=g, dtype=F64)
    rays[:, 1, 0] = 1.0
    rays[:, 1, 1:] = 0.4 * torch.randn(n_rays, 2, generator=g, dtype=F64)
    centres = torch.randn(n_triangles, 1, 3, generator=g, dtype=F64) * t(1.5, 0.5, 0.5) + t(1.5, 0.0, 0.0)
    return rays, centres + torch.randn(n_triangles, 3, 3, generator=g, dtype=F64)


# Triangle in the plane x = 2: A = (2, 0, 0), B = (2, 1, 0), C = (2, 0, 1), so a ray from the
# origin with direction (1, y, z) reaches the plane at s = 2, where u = 2y and v = 2z.
TRIANGLE = t([2, 0, 0], [2, 1, 0], [2, 0, 1])
HAND_CASES = [
    ((0, 0, 0), (1, 0.1, 0.2), True, (2.0, 0.2, 0.4), "inside"),
    ((0, 0, 0), (1, 0.5, 0.5), False, (2.0, 1.0, 1.0), "beyond the hypotenuse: u + v = 2"),
    ((0, 0, 0), (1, 0.25, 0.25), True, (2.0, 0.5, 0.5), "on the edge BC: u + v = 1"),
    ((0, 0, 0), (1, 0, 0), True, (2.0, 0.0, 0.0), "through the vertex A"),
    ((0, 0, 0), (1, 0.5, 0), True, (2.0, 1.0, 0.0), "through the vertex B"),
    ((0, 0, 0), (1, -0.1, 0.2), False, (2.0, -0.2, 0.4), "outside the edge AC: u < 0"),
    ((0, 0, 0), (2, 0.2, 0.4), True, (1.0, 0.2, 0.4), "non-unit direction halves s"),
    ((4, 0, 0), (1, 0.1, 0.2), False, (-2.0, -0.2, -0.4), "origin beyond the plane, looking away"),
    ((4, 0, 0), (-1, 0.1, 0.2), True, (2.0, 0.2, 0.4), "origin beyond the plane, looking back"),
    ((0, 0.2, 0.2), (-1, 0, 0), False, (-2.0, 0.2, 0.2), "triangle behind the origin: s < 0"),
    ((0, 0, 0), (0, 1, 0), False, None, "parallel to the plane"),
]


@pytest.mark.parametrize("O, D, expected, suv, case", HAND_CASES, ids=[c[-1] for c in HAND_CASES])
def test_hand_solved_triangle_cases(O, D, expected, suv, case):
    """A hit needs u ≥ 0, v ≥ 0, u + v ≤ 1, s ≥ 0 and a ray not parallel to the plane; edges and
    vertices count. triangle_ray_intersects (linear solve) and Möller–Trumbore agree, and give
    the (s, u, v) found on paper."""
    O, D = torch.tensor(O, dtype=F64), torch.tensor(D, dtype=F64)
    A, B, C = TRIANGLE
    assert R.triangle_ray_intersects(A, B, C, O, D) is expected
    assert R.triangle_ray_intersects(A.float(), B.float(), C.float(), O.float(), D.float()) is expected
    s, u, v, hit = R.moller_trumbore(O, D, A, B, C)
    assert hit.item() is expected
    if suv is not None:
        assert (s.item(), u.item(), v.item()) == pytest.approx(suv, abs=1e-14)


@pytest.mark.parametrize("scale, offset", [(2.0**-20, (5.0, -2.0, 7.0)), (2.0**20, (-3.0, 1.0, 0.5))])
def test_hand_cases_hold_in_any_frame(scale, offset):
    """Whether a ray hits a triangle, and where (s, u, v), does not depend on the frame: move and
    scale the whole scene (points p → c·p + t, directions D → c·D) and every hand case gives the
    same answer. This is what makes the parallel test relative (|det| against |D||E1 × E2|)."""
    t = torch.tensor(offset, dtype=F64)
    A, B, C = (scale * p + t for p in TRIANGLE)
    grazing = ((2 - 1e-7, 0.2, 0.1), (1e-6, 0, 1), True, None, "grazing: 1e-6 rad off the plane, far above roundoff")
    for O, D, expected, suv, case in HAND_CASES + [grazing]:
        O = scale * torch.tensor(O, dtype=F64) + t
        D = scale * torch.tensor(D, dtype=F64)
        assert R.triangle_ray_intersects(A, B, C, O, D) is expected, case
        s, u, v, hit = R.moller_trumbore(O, D, A, B, C)
        assert hit.item() is expected, case
        if suv is not None:   # O − A cancels: its rounding is eps·|t| against a scene of size c
            tol = 16 * torch.finfo(F64).eps * (1 + t.abs().max().item() / scale)
            assert (s.item(), u.item(), v.item()) == pytest.approx(suv, abs=tol), case


def test_parallel_rule_at_exactly_the_tolerance():
    """The parallel rule is |det| ≤ tol·|D||E1 × E2| with tol = 16·eps (day 3's parallel_tolerance: |sin θ| ≤ tol is
    parallel). In float64 tol = 2^-48, so a ray D = (2^-k, 0, 1) against the plane x = 2 (E1 = e_y, E2 = e_z, |E1 × E2|
    = 1, |D| rounds to 1, det = −2^-k: all exact) sits exactly on the rule at k = 48: parallel, a miss for both
    solvers; at k = 47 (twice the tolerance) both hit at s = 2^-50 / 2^-47 = 1/8, (u, v) = (1/4, 1/4)."""
    A, B, C = TRIANGLE
    O = torch.tensor((2 - 2.0**-50, 0.25, 0.125), dtype=F64)
    assert 16 * torch.finfo(F64).eps == 2.0**-48
    for k, expected in ((48, False), (47, True)):
        D = torch.tensor((2.0**-k, 0, 1), dtype=F64)
        assert R.triangle_ray_intersects(A, B, C, O, D) is expected, k
        s, u, v, hit = R.moller_trumbore(O, D, A, B, C)
        assert hit.item() is expected, k
    assert (s.item(), u.item(), v.item()) == (0.125, 0.25, 0.25)


def per_pair_solve(rays, triangles):
    """The reference: ARENA's 3×3 system solved one (ray, triangle) pair at a time."""
    n, m = len(rays), len(triangles)
    suv = torch.empty(n, m, 3, dtype=F64)
    for i, (O, D) in enumerate(rays):
        for j, (A, B, C) in enumerate(triangles):
            suv[i, j] = torch.linalg.solve(torch.stack([-D, B - A, C - A], dim=1), O - A)
    s, u, v = suv.unbind(-1)
    return s, u, v, (u >= 0) & (v >= 0) & (u + v <= 1) & (s >= 0)


def test_moller_trumbore_matches_per_pair_linear_solve(measure):
    """Broadcast Möller–Trumbore (Cramer's rule with cross products) gives the same s, u, v and
    hits as torch.linalg.solve on [−D  B − A  C − A][s u v]ᵀ = O − A, pair by pair."""
    rays, triangles = random_scene(30, 25, seed=0)
    s_ref, u_ref, v_ref, hit_ref = per_pair_solve(rays, triangles)
    A, B, C = triangles[None, :, 0], triangles[None, :, 1], triangles[None, :, 2]
    s, u, v, hit = R.moller_trumbore(rays[:, None, 0], rays[:, None, 1], A, B, C)
    for name, ours, ref in [("s", s, s_ref), ("u", u, u_ref), ("v", v, v_ref)]:
        measure.parity(assert_parity(ours, ref, atol=1e-9, rtol=1e-9, name=f"mt_vs_solve.{name}"))
    assert torch.equal(hit, hit_ref)
    assert 0.05 < hit.double().mean().item() < 0.95, "the random scene must exercise hits and misses"
    behind = (s_ref < 0) & (u_ref >= 0) & (v_ref >= 0) & (u_ref + v_ref <= 1)
    assert behind.sum() >= 10 and not hit[behind].any(), "inside the triangle but behind the origin: a miss"
    measure("mt_vs_solve.hit_rate", hit.double().mean())
    measure("mt_vs_solve.pairs_behind_origin", int(behind.sum()))


def test_raytrace_mesh_is_the_nearest_hit_of_the_loop(measure):
    """raytrace_mesh is min s over the triangles a ray hits (inf on a miss) and the index is
    the triangle attaining it, as the per-pair loop says; raytrace_triangle equals the loop of
    triangle_ray_intersects."""
    rays, triangles = random_scene(40, 6, seed=1)
    s_ref, _, _, hit_ref = per_pair_solve(rays, triangles)
    distance = torch.where(hit_ref, s_ref, math.inf)
    depth, index = R.raytrace_mesh_hits(rays, triangles)
    expected = distance.min(dim=1).values
    found = torch.isfinite(expected)
    assert found.any() and not found.all(), "the random scene must have rays that hit and rays that miss"
    assert torch.equal(torch.isfinite(depth), found) and torch.equal(index >= 0, found)
    measure.parity(assert_parity(depth[found], expected[found], atol=1e-9, rtol=1e-9, name="depth_vs_loop"))
    assert torch.equal(index[found], distance[found].argmin(dim=1))
    assert torch.equal(R.raytrace_mesh(rays, triangles), depth)
    loop = torch.tensor([R.triangle_ray_intersects(*triangles[3], O, D) for O, D in rays])
    assert torch.equal(R.raytrace_triangle(rays, triangles[3]), loop)


def test_depth_is_distance_along_the_camera_axis():
    """With camera rays D = (1, y, z) the depth s is the x-distance: a triangle covering the whole
    view in the plane x = 5 is at depth 5 for every pixel (float32, to rounding)."""
    rays = R.camera_rays(9, 7, 0.5, 0.5, (0.0, 0.0, 0.0))
    wall = torch.tensor([[[5.0, -10, -10], [5.0, 20, -10], [5.0, -10, 20]]])
    depth, index = R.raytrace_mesh_hits(rays, wall)
    assert depth.dtype == torch.float32
    assert torch.allclose(depth, torch.full_like(depth, 5.0), atol=1e-6, rtol=0)
    assert (index == 0).all()


def test_empty_mesh_renders_nothing():
    """No triangles: every depth is inf, every index −1, every intensity 0."""
    rays = R.camera_rays(3, 3, 0.5, 0.5, (0.0, 0.0, 0.0))
    depth, shade = R.render(rays, torch.zeros(0, 3, 3), torch.tensor([-1.0, 0, 0]))
    assert torch.isinf(depth).all() and (shade == 0).all()
    assert (R.raytrace_mesh_hits(rays, torch.zeros(0, 3, 3))[1] == -1).all()


# ---------------------------------------------------------------- the sphere

SPHERE_CENTRE = t(3.0, 0.0, 0.0)
SPHERE_PIXELS, SPHERE_HALF_WIDTH = 101, 1.05


@pytest.fixture(scope="module")
def sphere():
    """The unit icosphere (2 subdivisions, 320 faces) at x = 3 seen by 101² orthographic rays (float64)."""
    vertices, faces = R.icosphere(2)
    triangles = R.mesh_triangles(vertices + SPHERE_CENTRE, faces)
    rays = R.orthographic_rays(SPHERE_PIXELS, SPHERE_HALF_WIDTH, 0.0).double()
    depth, index = R.raytrace_mesh_hits(rays, triangles)
    inradius = R.dot(R.face_normals(triangles), triangles[:, 0] - SPHERE_CENTRE).min().item()
    return {"triangles": triangles, "rays": rays, "depth": depth, "index": index, "inradius": inradius}


def test_sphere_silhouette_area_is_pi_r_squared(sphere, measure):
    """The rendered silhouette of an icosphere of radius r = 1 has area πr² up to the mesh's
    discretization: the inscribed polyhedron contains the ball of its inradius r_in, so its
    silhouette area lies in [π r_in², π r²], widened by the pixel-count error 2εP + πε²
    (ε = h/√2 for pixel pitch h, perimeter P ≤ 2πr)."""
    pitch = 2 * SPHERE_HALF_WIDTH / (SPHERE_PIXELS - 1)
    area = torch.isfinite(sphere["depth"]).sum().item() * pitch**2
    eps = pitch / math.sqrt(2)
    pixel_bound = 2 * eps * 2 * math.pi + math.pi * eps**2
    r_in = sphere["inradius"]
    measure("sphere.silhouette_area", area)
    measure("sphere.relative_area_error", abs(area - math.pi) / math.pi, f"≤ {(math.pi * (1 - r_in**2) + pixel_bound) / math.pi:.3f}")
    measure("sphere.inradius", r_in)
    assert 0.98 < r_in < 1
    assert math.pi * r_in**2 - pixel_bound <= area <= math.pi + pixel_bound
    # silhouette_area reports the same count and the same bounds, and the inradius the convex hull gives
    reported = R.silhouette_area(2, SPHERE_PIXELS, SPHERE_HALF_WIDTH)
    vertices, _ = R.icosphere(2)
    hull_inradius = -ConvexHull(vertices.numpy()).equations[:, -1].max()
    assert reported["area"] == area and reported["relative_error"] == abs(area - math.pi) / math.pi
    assert reported["inradius"] == pytest.approx(hull_inradius, rel=1e-12) == pytest.approx(r_in, rel=1e-12)
    assert reported["pixel_error_bound"] == pytest.approx(pixel_bound, rel=1e-12)
    assert reported["mesh_error_bound"] == pytest.approx(math.pi * (1 - r_in**2), rel=1e-12)


def test_sphere_silhouette_equals_2d_projection(sphere, measure):
    """Pixel for pixel, the 3D render's silhouette is the set of pixel centres inside some
    triangle projected onto the screen plane (an independent 2D edge-function test)."""
    p = sphere["rays"][:, None, 0, 1:]                          # (npix, 1, 2): (y, z) of each ray
    a, b, c = (sphere["triangles"][None, :, k, 1:] for k in range(3))
    edge = lambda q, r, x: (r[..., 0] - q[..., 0]) * (x[..., 1] - q[..., 1]) - (r[..., 1] - q[..., 1]) * (x[..., 0] - q[..., 0])
    e0, e1, e2 = edge(a, b, p), edge(b, c, p), edge(c, a, p)
    area2 = edge(a, b, c)
    inside = ((e0 >= 0) & (e1 >= 0) & (e2 >= 0)) | ((e0 <= 0) & (e1 <= 0) & (e2 <= 0))
    covered = (inside & (area2.abs() > 1e-12)).any(dim=1)
    rendered = torch.isfinite(sphere["depth"])
    assert torch.equal(rendered, covered)
    measure("sphere.pixels_covered", int(covered.sum()))


def test_sphere_depth_lies_between_circumscribed_and_inscribed_spheres(sphere, measure):
    """Orthographic rays at distance ρ from the axis enter the unit sphere at x = 3 − √(1 − ρ²);
    the inscribed mesh is hit no earlier, and no later than its inscribed ball, at
    3 − √(r_in² − ρ²)."""
    rho2 = sphere["rays"][:, 0, 1:].square().sum(-1)
    depth, r_in = sphere["depth"], sphere["inradius"]
    hit = torch.isfinite(depth)
    assert (rho2[hit] <= 1 + 1e-12).all()
    assert (depth[hit] >= 3 - (1 - rho2[hit]).clamp(min=0).sqrt() - 1e-12).all()
    inner = rho2 < r_in**2
    assert hit[inner].all()
    assert (depth[inner] <= 3 - (r_in**2 - rho2[inner]).sqrt() + 1e-12).all()
    measure("sphere.max_depth_gap_to_sphere", (depth[hit] - 3 + (1 - rho2[hit]).clamp(min=0).sqrt()).max())


def test_lambert_is_cosine_of_the_tilt():
    """Lambert's law on a triangle tilted by θ about the z-axis, lit along −x (towards the camera):
    intensity cos θ, whatever the winding; lit from behind it is dark (0)."""
    base = t([2, -1, -1], [2, 2, -1], [2, -1, 2])                       # plane x = 2, contains (2, 0, 0)
    ray = t([0, 0, 0], [1, 0, 0])[None]
    for degrees in (0, 20, 45, 70, 85):
        theta = math.radians(degrees)
        rot = R.rotation_matrix((0.0, 0.0, 1.0), theta)
        tri = (base - t(2, 0, 0)) @ rot.T + t(2, 0, 0)
        for winding in (tri, tri[[0, 2, 1]]):
            depth, shade = R.render(ray, winding[None], t(-1, 0, 0))
            assert depth.item() == pytest.approx(2.0, abs=1e-12)
            assert shade.item() == pytest.approx(math.cos(theta), abs=1e-12)
            assert R.render(ray, winding[None], t(1, 0, 0))[1].item() == 0.0


# ---------------------------------------------------------------- meshes


def directed_edges(faces):
    return [(int(f[i]), int(f[(i + 1) % 3])) for f in faces for i in range(3)]


def assert_closed_and_consistently_wound(faces):
    """Every directed edge once, and its reverse once: a closed surface whose neighbouring faces
    wind the same way."""
    edges = directed_edges(faces)
    assert len(set(edges)) == len(edges)
    assert set(edges) == {(b, a) for a, b in edges}


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_icosphere_topology_and_geometry(k):
    """Icosphere k: 20·4ᵏ faces, 30·4ᵏ edges, 10·4ᵏ + 2 vertices (V − E + F = 2), closed and
    consistently wound, every vertex on the unit sphere, every face normal pointing outwards."""
    vertices, faces = R.icosphere(k)
    n_edges = len(set(frozenset(e) for e in directed_edges(faces)))
    assert (len(vertices), n_edges, len(faces)) == (10 * 4**k + 2, 30 * 4**k, 20 * 4**k)
    assert len(vertices) - n_edges + len(faces) == 2
    assert_closed_and_consistently_wound(faces)
    assert_parity(vertices.norm(dim=1), torch.ones(len(vertices), dtype=F64), atol=1e-15)
    triangles = R.mesh_triangles(vertices, faces)
    assert (R.dot(R.face_normals(triangles), triangles.mean(dim=1)) > 0).all()


def test_torus_topology():
    """Torus 24×12: 576 faces, V − E + F = 0 (genus 1), closed and consistently wound, outward
    (positive volume)."""
    vertices, faces = R.torus(1.0, 0.35, 24, 12)
    n_edges = len(set(frozenset(e) for e in directed_edges(faces)))
    assert (len(vertices), len(faces)) == (288, 576)
    assert len(vertices) - n_edges + len(faces) == 0
    assert_closed_and_consistently_wound(faces)
    assert R.mesh_volume(R.mesh_triangles(vertices, faces)) > 0


def test_mesh_volumes_converge_at_second_order(measure):
    """Inscribed meshes converge to the true volumes (4πr³/3, 2π²Rr²) from below, at second
    order: halving the edge length (one icosphere subdivision; doubling the torus grid) divides
    the volume error by 4 (within 10%)."""
    sphere_err = [4 * math.pi / 3 - R.mesh_volume(R.mesh_triangles(*R.icosphere(k))) for k in (2, 3, 4)]
    exact = 2 * math.pi**2 * 1.0 * 0.35**2
    torus_err = [exact - R.mesh_volume(R.mesh_triangles(*R.torus(1.0, 0.35, n, n // 2))) for n in (24, 48, 96)]
    for errors, name in [(sphere_err, "icosphere"), (torus_err, "torus")]:
        assert all(e > 0 for e in errors)
        ratio = errors[1] / errors[2]
        measure(f"volume_convergence.{name}_error_ratio", ratio, "4 ± 10%")
        assert ratio == pytest.approx(4, rel=0.1)


def test_rotation_matrix_matches_scipy(measure):
    """Rodrigues' formula equals scipy's rotation from a rotation vector (axis · angle)."""
    worst = 0.0
    for axis, angle in [((0, 0, 1), 0.3), ((1, 2, 3), 2.0), ((-1, 0.5, 0.2), -1.1), ((0, 1, 0), math.pi)]:
        k = torch.tensor(axis, dtype=F64)
        ref = Rotation.from_rotvec((k / k.norm() * angle).numpy()).as_matrix()
        worst = max(worst, assert_parity(R.rotation_matrix(axis, angle), ref, atol=1e-14).max_abs_err)
    measure("rotation_vs_scipy.max_abs_err", worst, "≤ 1e-14")


def test_cameras():
    """camera_rays is day 3's grid moved to the origin given; orthographic rays are parallel
    (+x) from the grid points of the square {x} × [−w, w]²."""
    rays = R.camera_rays(4, 5, 0.3, 0.2, (-2.0, 0.5, 0.0))
    assert torch.equal(rays[:, 1], R.rays03.make_rays_2d(4, 5, 0.3, 0.2)[:, 1])
    assert torch.equal(rays[:, 0], torch.tensor([-2.0, 0.5, 0.0]).expand(20, 3))
    ortho = R.orthographic_rays(3, 1.0, -4.0)
    assert torch.equal(ortho[:, 1], torch.tensor([1.0, 0, 0]).expand(9, 3))
    assert ortho[:, 0].tolist() == [[-4.0, y, z] for y in (-1.0, 0.0, 1.0) for z in (-1.0, 0.0, 1.0)]


def test_results_json_is_current(committed, measure):
    """results.json (cited by the post) was written by this code: the silhouette sweep at one
    subdivision is recomputed now, every recorded area sits inside its stated bounds, and the
    figures exist. The area is a pixel count (every pixel centre is over 1e-6 from the outline:
    shifting the grid by 1e-6 in any direction changes no hit) times pitch² in Python floats;
    the inradius is a minimum of float64 dot products of unit normals (float_ops(32))."""
    results = committed
    scene = R.demo_scene()
    assert results["render"]["n_triangles"] == len(scene)
    assert (scene[..., 0] > 0).all()                            # the whole scene is in front of x = 0
    recorded = results["silhouette_by_subdivisions"]["1"]
    now = R.silhouette_area(1, recorded["num_pixels"])
    assert_reproduces(now["area"], recorded["area"],
                      float_ops(2, why="count × pitch², the count a decision with a margin of 1e-6"), name="area")
    assert_reproduces(now["inradius"], recorded["inradius"],
                      float_ops(32, why="normal = cross product / its norm, then a dot product"), name="inradius")
    for row in results["silhouette"]:
        assert math.pi * row["inradius"] ** 2 - row["pixel_error_bound"] <= row["area"] <= math.pi + row["pixel_error_bound"]
    errors = [abs(r["area"] - math.pi) for r in results["silhouette"]]
    assert errors == sorted(errors, reverse=True), "more faces, smaller silhouette error"
    for name in ("render", "silhouette_area"):
        assert (HERE / f"figures/{name}.png").stat().st_size > 10_000
    measure("render.seconds", results["render"]["seconds"])
