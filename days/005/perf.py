"""Day 5: the renderer three ways, and what each costs (ARENA 0.1 Ray Tracing, performance).

Day 4's ``render`` traces a batch of rays against every triangle at once. Three ways to feed it
an image of nrays pixels and a mesh of ntri triangles:

- **naive**: one ray at a time, a Python loop over pixels. Memory O(ntri); time dominated by the
  interpreter and by launching ~50 small tensor operations per pixel.
- **batched**: all rays at once. Each operation runs once over an (nrays, ntri) array, but the
  intermediates (a few (nrays, ntri, 3) float32 stacks) make peak memory grow like nrays·ntri.
- **chunked**: rays in groups of c = max(1, ⌊max_pairs / ntri⌋), so no batch holds more than
  max_pairs ray–triangle pairs: peak memory is bounded by the chunk, whatever the image size,
  and the per-chunk overhead is amortised over c rays.

All three call the same elementwise Möller–Trumbore code (day 4 writes its cross and dot
products component by component and breaks depth ties towards the lower triangle index), so
every pixel is computed by the same IEEE operations: the images are identical bit for bit.

Peak memory is measured from torch's CPU allocator: the profiler (``profile_memory=True``)
records every allocation and free the allocator makes; the running sum's maximum is the peak of
live tensor bytes during the call. As a second, coarser view, the experiment reads the process's
resident-set high-water mark (``ru_maxrss``) before and after each render in a fresh subprocess.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from checks.timing import best_time, single_thread

render04 = importlib.import_module("days.004.render")

Image = tuple[Float[Tensor, "nrays"], Float[Tensor, "nrays"]]  # (depth, Lambert intensity) per ray


def render_naive(rays: Float[Tensor, "nrays 2 3"], triangles: Float[Tensor, "ntri 3 3"], light: Float[Tensor, "3"]) -> Image:
    """One ray at a time: for each pixel, trace its single ray against the whole mesh."""
    pixels = [render04.render(rays[i:i + 1], triangles, light) for i in range(len(rays))]
    return torch.cat([d for d, _ in pixels]), torch.cat([s for _, s in pixels])


def render_batched(rays: Float[Tensor, "nrays 2 3"], triangles: Float[Tensor, "ntri 3 3"], light: Float[Tensor, "3"]) -> Image:
    """All rays at once: day 4's render on the whole image (peak memory ∝ nrays·ntri)."""
    return render04.render(rays, triangles, light)


def chunk_rays(n_triangles: int, max_pairs: int) -> int:
    """Rays per chunk so that a chunk holds at most max_pairs ray–triangle pairs (at least one ray)."""
    return max(1, max_pairs // max(1, n_triangles))


def render_chunked(rays: Float[Tensor, "nrays 2 3"], triangles: Float[Tensor, "ntri 3 3"], light: Float[Tensor, "3"],
                   max_pairs: int = 2**20) -> Image:
    """Rays in chunks of ``chunk_rays(ntri, max_pairs)``: peak memory bounded by the chunk size."""
    parts = [render04.render(chunk, triangles, light) for chunk in rays.split(chunk_rays(len(triangles), max_pairs))]
    return torch.cat([d for d, _ in parts]), torch.cat([s for _, s in parts])


RENDERERS = {"naive": render_naive, "batched": render_batched, "chunked": render_chunked}


# ---------------------------------------------------------------- measuring


def peak_allocated_bytes(fn) -> tuple[object, int]:
    """Run fn() and return (its result, the peak of tensor bytes it had allocated at once).

    Reads the CPU allocator's allocation and free records from torch.profiler
    (``profile_memory=True``): the peak of their running sum, counted from zero at the call.
    Tensors alive before the call do not count; the result's own bytes do.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return result, peak


def largest_intermediate_bytes(n_rays: int, n_triangles: int, itemsize: int = 4) -> int:
    """Analytic size of the largest single tensor in one render call: an (nrays, ntri, 3) stack
    (D × E2, O − A or T × E1 in Möller–Trumbore) of ``itemsize``-byte floats."""
    return n_rays * n_triangles * 3 * itemsize


def rss_delta_bytes(version: str, num_pixels: int, max_pairs: int) -> int:
    """Resident-set growth of one render of day 4's scene, in a fresh Python process (Linux).

    The child resets the kernel's resident high-water mark (writing 5 to /proc/self/clear_refs),
    renders once, and reports VmHWM after minus VmRSS before: how far the render pushed resident
    memory above what the process already held. A fresh process, because a warm one reuses pages
    the C allocator kept from earlier calls. It counts what the allocator maps, not just live
    tensors: a coarser view than ``peak_allocated_bytes``, from outside torch.
    """
    call = f"P.RENDERERS[{version!r}](rays, scene, light" + (f", max_pairs={max_pairs})" if version == "chunked" else ")")
    code = "\n".join([
        "import gc, importlib, re, torch",
        "torch.set_num_threads(1)",
        "P = importlib.import_module('days.005.perf')",
        f"scene, rays = P.render04.demo_scene(), P.render04.demo_camera({num_pixels})",
        "light = torch.tensor(P.render04.LIGHT)",
        "kib = lambda key: int(re.search(key + r':\\s+(\\d+) kB', open('/proc/self/status').read()).group(1))",
        "gc.collect()",
        "open('/proc/self/clear_refs', 'w').write('5')",
        "before = kib('VmRSS')",
        f"out = {call}",
        "print((kib('VmHWM') - before) * 1024)",
    ])
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(root)})
    return int(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the benchmark

SIZES = (16, 32, 64, 128)
MAX_PAIRS = 2**20
NAIVE_MEMORY_UP_TO = 32  # the profiler slows the naive loop ~10×; its memory is flat anyway


def benchmark(sizes: tuple[int, ...] = SIZES, max_pairs: int = MAX_PAIRS) -> list[dict]:
    """Time, allocator peak and RSS growth of the three renderers on day 4's scene, per image size.

    Checks at every size that the three images are identical (torch.equal on depth and shading).
    The naive loop's memory is measured up to NAIVE_MEMORY_UP_TO² pixels (None beyond).
    """
    scene = render04.demo_scene()
    light = torch.tensor(render04.LIGHT)
    rows = []
    for n in sizes:
        rays = render04.demo_camera(n)
        calls = {"naive": lambda: render_naive(rays, scene, light),
                 "batched": lambda: render_batched(rays, scene, light),
                 "chunked": lambda: render_chunked(rays, scene, light, max_pairs)}
        per_chunk = min(len(rays), chunk_rays(len(scene), max_pairs))
        row = {"num_pixels": n, "n_rays": len(rays), "n_triangles": len(scene), "chunk_rays": per_chunk,
               "largest_intermediate_bytes": {"naive": largest_intermediate_bytes(1, len(scene)),
                                              "batched": largest_intermediate_bytes(len(rays), len(scene)),
                                              "chunked": largest_intermediate_bytes(per_chunk, len(scene))},
               "seconds": {}, "peak_bytes": {}, "rss_delta_bytes": {}}
        images = {}
        for name, call in calls.items():
            measure_memory = name != "naive" or n <= NAIVE_MEMORY_UP_TO
            if measure_memory:
                images[name], row["peak_bytes"][name] = peak_allocated_bytes(call)
                row["rss_delta_bytes"][name] = rss_delta_bytes(name, n, max_pairs)
            else:
                images[name] = call()
                row["peak_bytes"][name] = row["rss_delta_bytes"][name] = None
            row["seconds"][name] = best_time(call, repeats=1 if name == "naive" else 5)
        row["identical"] = all(torch.equal(images[name][k], images["batched"][k]) for name in images for k in (0, 1))
        row["speedup_vs_naive"] = {name: row["seconds"]["naive"] / row["seconds"][name] for name in ("batched", "chunked")}
        for key in ("peak", "rss_delta"):
            row[f"{key}_mib"] = {name: None if b is None else b / 2**20 for name, b in row[f"{key}_bytes"].items()}
        rows.append(row)
    return rows


def chunk_sweep(num_pixels: int = 128, exponents: tuple[int, ...] = (14, 16, 18, 20, 22, 24)) -> list[dict]:
    """Time and allocator peak of the chunked renderer as max_pairs grows from 2^14 (18 rays a
    chunk on day 4's scene) to 2^24 (the whole 128² image in one chunk, i.e. batched)."""
    scene = render04.demo_scene()
    light = torch.tensor(render04.LIGHT)
    rays = render04.demo_camera(num_pixels)
    rows = []
    for e in exponents:
        call = lambda: render_chunked(rays, scene, light, 2**e)
        _, peak = peak_allocated_bytes(call)
        rows.append({"num_pixels": num_pixels, "max_pairs": 2**e, "chunk_rays": chunk_rays(len(scene), 2**e),
                     "seconds": best_time(call, repeats=3), "peak_bytes": peak})
    return rows


def l3_cache_bytes() -> int | None:
    """The CPU's L3 cache size from Linux sysfs (None where it cannot be read)."""
    try:
        text = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
    except OSError:
        return None
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def run_experiment(out_dir: Path) -> dict:
    """The scaling benchmark and the chunk-size sweep: figures/scaling.png, figures/chunk_sweep.png."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    with single_thread():
        rows = benchmark()
        sweep = chunk_sweep()

    colours = {"naive": "tab:red", "batched": "tab:blue", "chunked": "tab:green"}
    pixels = [r["n_rays"] for r in rows]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.4))
    for name, colour in colours.items():
        ax_t.loglog(pixels, [r["seconds"][name] for r in rows], "o-", color=colour, label=name)
        measured = [r for r in rows if r["peak_bytes"][name] is not None]
        ax_m.loglog([r["n_rays"] for r in measured], [r["peak_bytes"][name] / 2**20 for r in measured], "o-",
                    color=colour, label=f"{name}: allocator peak")
        ax_m.loglog([r["n_rays"] for r in measured], [r["rss_delta_bytes"][name] / 2**20 for r in measured], "x:",
                    color=colour, label=f"{name}: RSS growth")
    ax_m.loglog(pixels, [r["largest_intermediate_bytes"]["batched"] / 2**20 for r in rows], "k--", lw=1,
                label="batched: largest tensor (analytic)")
    ax_t.set_title(f"render time, {rows[0]['n_triangles']} triangles")
    ax_t.set_ylabel("seconds (best of runs)")
    ax_m.set_title(f"peak memory (chunks of ≤ {MAX_PAIRS:,} pairs)")
    ax_m.set_ylabel("MiB")
    for ax in (ax_t, ax_m):
        ax.set_xlabel("pixels (rays)")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "figures/scaling.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.3))
    xs = [r["max_pairs"] for r in sweep]
    ax.semilogx(xs, [r["seconds"] for r in sweep], "o-", color="tab:green")
    ax.set_xlabel("max ray–triangle pairs per chunk")
    ax.set_ylabel("seconds", color="tab:green")
    twin = ax.twinx()
    twin.loglog(xs, [r["peak_bytes"] / 2**20 for r in sweep], "s--", color="tab:purple")
    twin.set_ylabel("allocator peak (MiB)", color="tab:purple")
    ax.set_title(f"chunked render of {sweep[0]['num_pixels']}² pixels: time and memory against chunk size")
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "figures/chunk_sweep.png", dpi=120)
    plt.close(fig)

    largest = rows[-1]
    fastest = min(sweep, key=lambda r: r["seconds"])
    results = {
        "benchmark": rows,
        "by_size": {str(r["num_pixels"]): r for r in rows},
        "chunk_sweep": sweep,
        "max_pairs": MAX_PAIRS,
        "all_identical": all(r["identical"] for r in rows),
        "largest": {
            "num_pixels": largest["num_pixels"],
            "speedup_batched": largest["speedup_vs_naive"]["batched"],
            "speedup_chunked": largest["speedup_vs_naive"]["chunked"],
            "peak_mib_batched": largest["peak_bytes"]["batched"] / 2**20,
            "peak_mib_chunked": largest["peak_bytes"]["chunked"] / 2**20,
            "peak_ratio_batched_vs_chunked": largest["peak_bytes"]["batched"] / largest["peak_bytes"]["chunked"],
            "batched_bytes_per_pair": largest["peak_bytes"]["batched"] / (largest["n_rays"] * largest["n_triangles"]),
            "batched_peak_in_largest_tensors": largest["peak_bytes"]["batched"] / largest["largest_intermediate_bytes"]["batched"],
        },
        "fastest_chunk": fastest,
        "sweep_smallest_vs_fastest": sweep[0]["seconds"] / fastest["seconds"],
        "sweep_whole_image_vs_fastest": sweep[-1]["seconds"] / fastest["seconds"],
        "l3_cache_mib": None if l3_cache_bytes() is None else l3_cache_bytes() / 2**20,
        "whole_image_peak_vs_l3": None if l3_cache_bytes() is None else sweep[-1]["peak_bytes"] / l3_cache_bytes(),
        "torch_threads": 1,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
