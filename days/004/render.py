"""Day 4: triangles, meshes and a full render (ARENA 0.1 Ray Tracing, part 2).

A triangle with vertices A, B, C is the set of points A + u(B − A) + v(C − A) with u ≥ 0, v ≥ 0
and u + v ≤ 1. A ray O + sD meets the triangle's plane where

    O + s D = A + u (B − A) + v (C − A)   ⇔   [−D  B − A  C − A] [s u v]ᵀ = O − A,

a 3×3 linear system (ARENA's form). The hit is a real one when the matrix is not singular (the
ray is not parallel to the plane), u ≥ 0, v ≥ 0, u + v ≤ 1 (inside the triangle) and s ≥ 0 (in
front of the origin; ARENA's version omits this test because its meshes are always in front).

Möller–Trumbore solves that system by Cramer's rule with two cross products. With E1 = B − A,
E2 = C − A, T = O − A, P = D × E2 and Q = T × E1:

    det = E1 · P,   u = (T · P) / det,   v = (D · Q) / det,   s = (E2 · Q) / det.

Every quantity is a product of ray and triangle terms, so broadcasting a (nrays, 1, 3) stack of
rays against a (1, ntriangles, 3) stack of triangles solves all pairs at once. A render takes,
for each ray, the nearest hit (the depth s; with D = (1, y, z), s is the distance along the
camera axis) and shades it with Lambert's cosine law, I = max(0, n · ℓ) for the unit normal n
facing the camera and the unit direction ℓ towards a distant light.

The meshes are built here: an icosphere (an icosahedron whose faces are split in four and whose
vertices are pushed onto the sphere, repeatedly) and a torus.
"""

from __future__ import annotations

import importlib
import json
import math
import time
from pathlib import Path

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from checks.timing import single_thread

rays03 = importlib.import_module("days.003.rays")

# ---------------------------------------------------------------- one ray, one triangle


def triangle_ray_intersects(A: Float[Tensor, "3"], B: Float[Tensor, "3"], C: Float[Tensor, "3"],
                            O: Float[Tensor, "3"], D: Float[Tensor, "3"]) -> bool:
    """ARENA's single intersection: solve [−D  B − A  C − A][s u v]ᵀ = O − A with torch.linalg.solve.

    A hit needs a non-singular system, u ≥ 0, v ≥ 0, u + v ≤ 1 and s ≥ 0.
    """
    matrix = torch.stack([-D, B - A, C - A], dim=1)
    normal = torch.linalg.cross(B - A, C - A)
    if torch.linalg.det(matrix).abs() <= rays03.parallel_tolerance(D.dtype) * D.norm() * normal.norm():
        return False
    s, u, v = torch.linalg.solve(matrix, O - A)
    return bool((u >= 0) & (v >= 0) & (u + v <= 1) & (s >= 0))


# ---------------------------------------------------------------- Möller–Trumbore, broadcast


def cross(a: Float[Tensor, "... 3"], b: Float[Tensor, "... 3"]) -> Float[Tensor, "... 3"]:
    """a × b, written out component by component.

    Elementwise products and differences only: each output element is computed by the same
    sequence of IEEE operations whatever the batch shape, so a render does not change by one bit
    when it is split into chunks (day 5 relies on this).
    """
    return torch.stack([a[..., 1] * b[..., 2] - a[..., 2] * b[..., 1],
                        a[..., 2] * b[..., 0] - a[..., 0] * b[..., 2],
                        a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]], dim=-1)


def dot(a: Float[Tensor, "... 3"], b: Float[Tensor, "... 3"]) -> Float[Tensor, "..."]:
    """a · b = a₀b₀ + a₁b₁ + a₂b₂ in this fixed order (see ``cross`` for why not a reduction)."""
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def moller_trumbore(O: Float[Tensor, "*b 3"], D: Float[Tensor, "*b 3"], A: Float[Tensor, "*b 3"],
                    B: Float[Tensor, "*b 3"], C: Float[Tensor, "*b 3"]
                    ) -> tuple[Float[Tensor, "*b"], Float[Tensor, "*b"], Float[Tensor, "*b"], Bool[Tensor, "*b"]]:
    """(s, u, v, hit) for rays O + sD against triangles ABC; all arguments broadcast together.

    Cramer's rule on [−D  E1  E2][s u v]ᵀ = T: det = E1 · (D × E2), u = T · (D × E2) / det,
    v = D · (T × E1) / det, s = E2 · (T × E1) / det. A ray counts as parallel to the plane when
    |det| = |D||E1 × E2||cos(D, n)| is below ``parallel_tolerance``·|D||E1 × E2| (there s, u, v
    are not finite and ``hit`` is False).
    """
    E1, E2 = B - A, C - A
    P = cross(D, E2)
    det = dot(E1, P)
    T = O - A
    Q = cross(T, E1)
    u = dot(T, P) / det
    v = dot(D, Q) / det
    s = dot(E2, Q) / det
    normal = cross(E1, E2)
    scale = dot(D, D).sqrt() * dot(normal, normal).sqrt()
    parallel = det.abs() <= rays03.parallel_tolerance(det.dtype) * scale
    hit = ~parallel & (u >= 0) & (v >= 0) & (u + v <= 1) & (s >= 0)
    return s, u, v, hit


def raytrace_triangle(rays: Float[Tensor, "nrays 2 3"], triangle: Float[Tensor, "3 3"]) -> Bool[Tensor, "nrays"]:
    """Which rays meet one triangle (rows of ``triangle`` are A, B, C)."""
    return moller_trumbore(rays[:, 0], rays[:, 1], triangle[0], triangle[1], triangle[2])[3]


def raytrace_mesh_hits(rays: Float[Tensor, "nrays 2 3"], triangles: Float[Tensor, "ntriangles 3 3"]
                       ) -> tuple[Float[Tensor, "nrays"], Int[Tensor, "nrays"]]:
    """For each ray, the nearest hit's s (inf on a miss) and the triangle hit (−1 on a miss).

    All nrays × ntriangles pairs at once: memory grows like their product (day 5 bounds it).
    Ties (a ray through an edge shared by two triangles at the same depth) go to the lower
    triangle index, so the answer does not depend on how the rays are batched.
    """
    if len(triangles) == 0:
        return torch.full((len(rays),), math.inf, dtype=rays.dtype), torch.full((len(rays),), -1)
    O, D = rays[:, None, 0], rays[:, None, 1]                                       # (nrays, 1, 3)
    A, B, C = triangles[None, :, 0], triangles[None, :, 1], triangles[None, :, 2]  # (1, ntri, 3)
    s, _, _, hit = moller_trumbore(O, D, A, B, C)
    distance = torch.where(hit, s, math.inf)                                        # (nrays, ntri)
    depth = distance.amin(dim=1)
    first = (distance == depth[:, None]).to(torch.uint8).argmax(dim=1)  # argmax returns the first maximum
    index = torch.where(torch.isfinite(depth), first, -1)
    return depth, index


def raytrace_mesh(rays: Float[Tensor, "nrays 2 3"], triangles: Float[Tensor, "ntriangles 3 3"]) -> Float[Tensor, "nrays"]:
    """ARENA's raytrace_mesh: the distance s to the nearest triangle along each ray (inf on a miss)."""
    return raytrace_mesh_hits(rays, triangles)[0]


# ---------------------------------------------------------------- shading


def face_normals(triangles: Float[Tensor, "ntriangles 3 3"]) -> Float[Tensor, "ntriangles 3"]:
    """Unit normals n = (B − A) × (C − A) / |(B − A) × (C − A)| (outward for counter-clockwise faces)."""
    n = cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    return n / dot(n, n).sqrt()[:, None]


def lambert(rays: Float[Tensor, "nrays 2 3"], triangles: Float[Tensor, "ntriangles 3 3"],
            index: Int[Tensor, "nrays"], light: Float[Tensor, "3"]) -> Float[Tensor, "nrays"]:
    """Lambert's cosine law I = max(0, n · ℓ) at each ray's hit (0 on a miss).

    n is the hit triangle's unit normal, flipped if needed to face the incoming ray (n · D < 0),
    so that the side the camera sees is lit whatever the winding; ℓ is the unit direction from
    the surface towards a distant light.
    """
    if len(triangles) == 0:
        return torch.zeros(len(rays), dtype=rays.dtype)
    ell = light / dot(light, light).sqrt()
    n = face_normals(triangles)[index.clamp(min=0)]
    n = torch.where((dot(n, rays[:, 1]) > 0)[:, None], -n, n)
    intensity = dot(n, ell).clamp(min=0)
    return torch.where(index >= 0, intensity, 0.0)


def render(rays: Float[Tensor, "nrays 2 3"], triangles: Float[Tensor, "ntriangles 3 3"],
           light: Float[Tensor, "3"]) -> tuple[Float[Tensor, "nrays"], Float[Tensor, "nrays"]]:
    """The full pipeline for a batch of rays: (depth, Lambert intensity), both per ray."""
    depth, index = raytrace_mesh_hits(rays, triangles)
    return depth, lambert(rays, triangles, index, light)


# ---------------------------------------------------------------- cameras


def camera_rays(num_pixels_y: int, num_pixels_z: int, y_limit: float, z_limit: float,
                origin: tuple[float, float, float]) -> Float[Tensor, "nrays 2 3"]:
    """A pinhole camera: day 3's make_rays_2d grid, moved to ``origin`` (still looking along +x)."""
    rays = rays03.make_rays_2d(num_pixels_y, num_pixels_z, y_limit, z_limit)
    rays[:, 0] = torch.tensor(origin)
    return rays


def orthographic_rays(num_pixels: int, half_width: float, x: float) -> Float[Tensor, "nrays 2 3"]:
    """Parallel rays along +x from the square grid {x} × [−w, w]², pixel centres at the grid points."""
    grid = rays03.make_rays_2d(num_pixels, num_pixels, half_width, half_width)
    rays = torch.zeros_like(grid)
    rays[:, 0, 0] = x
    rays[:, 0, 1:] = grid[:, 1, 1:]
    rays[:, 1, 0] = 1.0
    return rays


# ---------------------------------------------------------------- meshes

_PHI = (1 + math.sqrt(5)) / 2
_ICOSAHEDRON_VERTICES = [(-1, _PHI, 0), (1, _PHI, 0), (-1, -_PHI, 0), (1, -_PHI, 0),
                         (0, -1, _PHI), (0, 1, _PHI), (0, -1, -_PHI), (0, 1, -_PHI),
                         (_PHI, 0, -1), (_PHI, 0, 1), (-_PHI, 0, -1), (-_PHI, 0, 1)]
_ICOSAHEDRON_FACES = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11),
                      (1, 5, 9), (5, 11, 4), (11, 10, 2), (10, 7, 6), (7, 1, 8),
                      (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9),
                      (4, 9, 5), (2, 4, 11), (6, 2, 10), (8, 6, 7), (9, 8, 1)]


def icosphere(subdivisions: int) -> tuple[Float[Tensor, "nv 3"], Int[Tensor, "nf 3"]]:
    """The unit icosphere as (vertices, faces), faces counter-clockwise seen from outside.

    Start from the regular icosahedron (12 vertices, 20 faces) and, ``subdivisions`` times, split
    every face into four at its edge midpoints and push the midpoints onto the unit sphere:
    20·4ᵏ faces, 30·4ᵏ edges, 10·4ᵏ + 2 vertices (V − E + F = 2).
    """
    vertices = [tuple(c / math.sqrt(1 + _PHI**2) for c in v) for v in _ICOSAHEDRON_VERTICES]
    faces = list(_ICOSAHEDRON_FACES)
    for _ in range(subdivisions):
        midpoint_of: dict[tuple[int, int], int] = {}

        def midpoint(i: int, j: int) -> int:
            key = (min(i, j), max(i, j))
            if key not in midpoint_of:
                m = [(a + b) / 2 for a, b in zip(vertices[i], vertices[j])]
                norm = math.sqrt(sum(c * c for c in m))
                vertices.append(tuple(c / norm for c in m))
                midpoint_of[key] = len(vertices) - 1
            return midpoint_of[key]

        new_faces = []
        for a, b, c in faces:
            ab, bc, ca = midpoint(a, b), midpoint(b, c), midpoint(c, a)
            new_faces += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        faces = new_faces
    return torch.tensor(vertices, dtype=torch.float64), torch.tensor(faces)


def torus(major_radius: float, minor_radius: float, n_major: int, n_minor: int
          ) -> tuple[Float[Tensor, "nv 3"], Int[Tensor, "nf 3"]]:
    """A torus around the z-axis as (vertices, faces), faces counter-clockwise seen from outside.

    Vertex (i, j) = ((R + r cos φ_j) cos θ_i, (R + r cos φ_j) sin θ_i, r sin φ_j) with
    θ_i = 2πi / n_major, φ_j = 2πj / n_minor; each grid quad becomes two triangles
    (2·n_major·n_minor faces, V − E + F = 0).
    """
    theta = torch.arange(n_major, dtype=torch.float64) * 2 * math.pi / n_major
    phi = torch.arange(n_minor, dtype=torch.float64) * 2 * math.pi / n_minor
    ring = major_radius + minor_radius * phi.cos()                         # (n_minor,)
    vertices = torch.stack([ring[None, :] * theta.cos()[:, None],
                            ring[None, :] * theta.sin()[:, None],
                            (minor_radius * phi.sin())[None, :].expand(n_major, n_minor)], dim=-1).reshape(-1, 3)
    i, j = torch.meshgrid(torch.arange(n_major), torch.arange(n_minor), indexing="ij")
    i, j = i.reshape(-1), j.reshape(-1)
    at = lambda a, b: (a % n_major) * n_minor + (b % n_minor)
    p00, p10, p01, p11 = at(i, j), at(i + 1, j), at(i, j + 1), at(i + 1, j + 1)
    faces = torch.cat([torch.stack([p00, p10, p11], 1), torch.stack([p00, p11, p01], 1)])
    return vertices, faces


def mesh_triangles(vertices: Float[Tensor, "nv 3"], faces: Int[Tensor, "nf 3"]) -> Float[Tensor, "nf 3 3"]:
    """The (nf, 3, 3) stack of triangles [A, B, C] that the renderer takes."""
    return vertices[faces]


def mesh_volume(triangles: Float[Tensor, "nf 3 3"]) -> float:
    """Volume of a closed mesh by the divergence theorem: Σ A · (B × C) / 6 over the faces
    (positive when the faces wind counter-clockwise seen from outside)."""
    return (dot(triangles[:, 0], cross(triangles[:, 1], triangles[:, 2])).sum() / 6).item()


def rotation_matrix(axis: tuple[float, float, float], angle: float) -> Float[Tensor, "3 3"]:
    """Rodrigues: R = I + sin θ K + (1 − cos θ) K², K the cross-product matrix of the unit axis."""
    k = torch.tensor(axis, dtype=torch.float64)
    k = k / k.norm()
    K = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]], dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K


# ---------------------------------------------------------------- the experiment

LIGHT = (-1.0, 0.8, -0.6)   # towards the camera and its upper left (y up, z to the right)


def demo_scene() -> Float[Tensor, "ntriangles 3 3"]:
    """A tilted torus and an icosphere partly behind it: 896 float32 triangles in front of x = 0."""
    tv, tf = torus(1.0, 0.35, 24, 12)
    tv = tv @ rotation_matrix((0.0, 1.0, 0.0), math.radians(60)).T @ rotation_matrix((1.0, 0.0, 0.0), math.radians(20)).T
    sv, sf = icosphere(2)
    torus_tris = mesh_triangles(tv + torch.tensor([4.0, 0.0, 0.0], dtype=torch.float64), tf)
    sphere_tris = mesh_triangles(0.7 * sv + torch.tensor([5.2, -0.5, 0.9], dtype=torch.float64), sf)
    return torch.cat([torus_tris, sphere_tris]).float()


def demo_camera(num_pixels: int) -> Float[Tensor, "nrays 2 3"]:
    """The square camera that frames ``demo_scene``: origin at x = 0, field of view ±0.4."""
    return camera_rays(num_pixels, num_pixels, 0.4, 0.4, (0.0, 0.0, 0.0))


def silhouette_area(subdivisions: int, num_pixels: int, half_width: float = 1.05) -> dict:
    """Orthographic silhouette of the unit icosphere: pixel-count area, πr² and the mesh's bounds.

    The inscribed polyhedron lies between the unit sphere and the ball of its inradius r_in (the
    smallest distance from the centre to a face plane), so its silhouette area lies in
    [π r_in², π]. Counting pixel centres adds at most 2εP + πε² with ε = h/√2 (h the pixel
    pitch, P ≤ 2π the perimeter): the boundary band that a pixel square can straddle.
    """
    vertices, faces = icosphere(subdivisions)
    triangles = mesh_triangles(vertices + torch.tensor([3.0, 0.0, 0.0], dtype=torch.float64), faces)
    rays = orthographic_rays(num_pixels, half_width, 0.0).double()
    hits = torch.isfinite(raytrace_mesh(rays, triangles))
    pitch = 2 * half_width / (num_pixels - 1)
    normals = face_normals(mesh_triangles(vertices, faces))
    inradius = dot(normals, vertices[faces[:, 0]]).min().item()
    eps = pitch / math.sqrt(2)
    area = hits.sum().item() * pitch**2
    return {"subdivisions": subdivisions, "n_faces": len(faces), "num_pixels": num_pixels,
            "area": area, "pi_r2": math.pi, "relative_error": abs(area - math.pi) / math.pi, "inradius": inradius,
            "mesh_error_bound": math.pi * (1 - inradius**2),
            "pixel_error_bound": 2 * eps * 2 * math.pi + math.pi * eps**2}


def run_experiment(out_dir: Path) -> dict:
    """Render the demo scene (depth and Lambert shading) and the silhouette-area convergence."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)

    n = 150
    scene = demo_scene()
    rays = demo_camera(n)
    with single_thread():
        start = time.perf_counter()
        depth, shade = render(rays, scene, torch.tensor(LIGHT))
        seconds = time.perf_counter() - start
    depth_img, shade_img = depth.reshape(n, n), shade.reshape(n, n)
    hit = torch.isfinite(depth_img)

    fig, (ax_d, ax_s) = plt.subplots(1, 2, figsize=(10, 4.9))
    shown = torch.where(hit, depth_img, torch.nan)
    im = ax_d.imshow(shown, origin="lower", cmap="viridis_r", extent=(-0.4, 0.4, -0.4, 0.4))
    fig.colorbar(im, ax=ax_d, fraction=0.046, label="depth s (distance along x)")
    ax_d.set_title("depth of the nearest hit")
    background = torch.full_like(shade_img, 0.25)
    ax_s.imshow(torch.where(hit, 0.08 + 0.92 * shade_img, background), origin="lower", cmap="gray",
                vmin=0, vmax=1, extent=(-0.4, 0.4, -0.4, 0.4))
    ax_s.set_title("Lambert shading, light from the upper left")
    for ax in (ax_d, ax_s):
        ax.set_xlabel("screen z")
        ax.set_ylabel("screen y")
    fig.suptitle(f"{len(scene)} triangles, {n}×{n} rays, one batched Möller–Trumbore pass")
    fig.tight_layout()
    fig.savefig(out_dir / "figures/render.png", dpi=120)
    plt.close(fig)

    with single_thread():
        sweep = [silhouette_area(k, 121) for k in range(4)]
    fig, ax = plt.subplots(figsize=(7, 4.3))
    ks = [r["n_faces"] for r in sweep]
    ax.loglog(ks, [abs(r["area"] - math.pi) / math.pi for r in sweep], "o-", label="|area − πr²| / πr², pixel count")
    ax.loglog(ks, [r["mesh_error_bound"] / math.pi for r in sweep], "s--", label="mesh bound 1 − r_in²")
    ax.axhline(sweep[0]["pixel_error_bound"] / math.pi, color="k", ls=":", lw=1, label="pixel-count bound (121² rays)")
    ax.set_xlabel("faces of the icosphere (subdivisions 0–3)")
    ax.set_ylabel("relative error")
    ax.set_title("Silhouette of the unit icosphere against πr²")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "figures/silhouette_area.png", dpi=120)
    plt.close(fig)

    results = {
        "render": {"num_pixels": n, "n_triangles": len(scene), "seconds": seconds,
                   "hit_fraction": hit.float().mean().item(),
                   "largest_intermediate_mib": n * n * len(scene) * 3 * 4 / 2**20,
                   "depth_min": depth[torch.isfinite(depth)].min().item(),
                   "depth_max": depth[torch.isfinite(depth)].max().item()},
        "silhouette": sweep,
        "silhouette_by_subdivisions": {str(r["subdivisions"]): r for r in sweep},
        "torch_threads": 1,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
