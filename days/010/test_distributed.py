"""The gate of day 10's distributed half (ARENA 0.3 Optimization, "Distributed training").

The clauses: broadcast, reduce, all-reduce (naive, and tree/butterfly/ring versions) and gather,
written on torch.distributed's point-to-point messages only, give what torch.distributed's own
collectives give on the same tensors; data-parallel training, each rank computing gradients on
its shard of the batch and averaging them with our all-reduce, ends with the weights of
single-process training on the whole batch.

The independent reference is torch.distributed itself (gloo's broadcast, reduce, all_reduce,
gather, all_gather), run in the same worker processes on the same tensors, and a single-process
training loop written here. Workers run on CPU with the gloo backend; the collective battery runs
once per world size (2, 3 and 4 ranks: 3 is not a power of two, 4 has a two-level tree) in
forked processes, and data-parallel training once more in spawned ones, the start method that
CUDA and NCCL need. Integer-valued tensors must match exactly; float sums within the rounding of
a reduction over the ranks in another order.
"""

import multiprocessing
import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed import ReduceOp

from checks import assert_parity
from checks.committed import float_ops

from . import distributed as D

OPS = {"sum": ReduceOp.SUM, "product": ReduceOp.PRODUCT, "min": ReduceOp.MIN, "max": ReduceOp.MAX}
COLLECTIVES = ("broadcast", "reduce", "all_reduce", "all_gather", "gather", "scatter", "reduce_scatter",
               "all_to_all", "barrier", "all_gather_into_tensor", "reduce_scatter_tensor", "all_reduce_coalesced")


class _OnlyPointToPoint:
    """Inside the block, every torch.distributed collective raises: what runs is point-to-point."""

    def __enter__(self):
        self.saved = {name: getattr(dist, name) for name in COLLECTIVES if hasattr(dist, name)}

        def refuse(name):
            def collective(*args, **kwargs):
                raise AssertionError(f"dist.{name} called: the exercise builds collectives from send/recv")
            return collective
        for name in self.saved:
            setattr(dist, name, refuse(name))

    def __exit__(self, *exc):
        for name, fn in self.saved.items():
            setattr(dist, name, fn)


def _inputs(rank: int, seed: int) -> dict[str, torch.Tensor]:
    """Per-rank inputs: integers (int64 and integer-valued float32, whose sums and products are
    exact), random floats (whose sums round), a vector shorter than the world, a non-contiguous view."""
    g = torch.Generator().manual_seed(1000 * seed + rank)
    ints = torch.randint(-5, 6, (3, 5), generator=g)
    return {"int64": ints, "intfloat": ints.float(), "float32": torch.randn(2, 7, generator=g),
            "float64": torch.randn(11, generator=g, dtype=torch.float64),
            "short": torch.randint(-3, 4, (3,), generator=g).float(),
            "strided": torch.randint(-5, 6, (4, 6), generator=g).float().T}


def _op_cases(rank: int, seed: int):
    """(op name, op, kind, tensor): sums on every kind; product, min and max on the integer
    kinds (exact; a product of random floats adds nothing a sum does not check)."""
    for kind, x in _inputs(rank, seed).items():
        for op_name, op in OPS.items():
            if op_name == "sum" or kind in ("int64", "intfloat"):
                yield op_name, op, kind, x


def battery(rank: int, world_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Each of our collectives and torch.distributed's on the same per-rank tensors; the results
    (ours, then torch's, then the input) go back to the test process keyed by case."""
    out = {}

    def ours(fn, *args):
        with _OnlyPointToPoint():
            return fn(*args)

    for name in ("broadcast_naive", "broadcast_tree", "broadcast_ring"):
        for src in range(world_size):
            for kind, x in _inputs(rank, 1).items():
                mine, ref = x.clone(), x.clone().contiguous()
                ours(getattr(D, name), mine, src)
                dist.broadcast(ref, src)
                out[f"{name}/src{src}/{kind}"] = torch.stack([mine.contiguous(), ref])
    for name in ("reduce_naive", "reduce_tree"):
        for dst in range(world_size):
            for op_name, op, kind, x in _op_cases(rank, 2):
                mine, ref = x.clone(), x.clone().contiguous()
                ours(getattr(D, name), mine, dst, op)
                dist.reduce(ref, dst, op)
                out[f"{name}/dst{dst}/{op_name}/{kind}"] = torch.stack([mine.contiguous(), ref, x.contiguous()])
    names = ["all_reduce_naive", "all_reduce_ring"] + (["all_reduce_butterfly"] if world_size & (world_size - 1) == 0 else [])
    for name in names:
        for op_name, op, kind, x in _op_cases(rank, 3):
            mine, ref = x.clone(), x.clone().contiguous()
            ours(getattr(D, name), mine, op)
            dist.all_reduce(ref, op)
            out[f"{name}/{op_name}/{kind}"] = torch.stack([mine.contiguous(), ref, x.contiguous()])
    if world_size & (world_size - 1):
        try:
            ours(D.all_reduce_butterfly, torch.zeros(2), ReduceOp.SUM)
        except ValueError as exc:
            out["butterfly_refuses"] = torch.tensor(["power of two" in str(exc)])
    for kind, x in _inputs(rank, 4).items():
        for dst in range(world_size):
            mine = ours(D.gather_naive, x.clone(), dst)
            ref = [torch.empty_like(x.contiguous()) for _ in range(world_size)] if rank == dst else None
            dist.gather(x.contiguous(), ref, dst)
            if rank == dst:
                out[f"gather_naive/dst{dst}/{kind}"] = torch.stack([torch.stack(mine), torch.stack(ref)])
            else:
                out[f"gather_naive/dst{dst}/{kind}/not_dst"] = torch.tensor([mine is None])
        mine = ours(D.all_gather_naive, x.clone())
        ref = [torch.empty_like(x.contiguous()) for _ in range(world_size)]
        dist.all_gather(ref, x.contiguous())
        out[f"all_gather_naive/{kind}"] = torch.stack([torch.stack(mine), torch.stack(ref)])
    return out


WORLDS = (2, 3, 4)


@pytest.fixture(scope="module")
def batteries(tmp_path_factory):
    """The battery on 2, 3 and 4 forked gloo workers: {world size: [per-rank results]}, and the
    wall time of each launch (process start-up and all the collectives)."""
    runs, seconds = {}, {}
    for world in WORLDS:
        start = time.perf_counter()
        runs[world] = D.launch(battery, world, start_method="fork", timeout=60,
                               store_dir=tmp_path_factory.mktemp(f"battery{world}"))
        seconds[world] = time.perf_counter() - start
    return runs, seconds


def _cases(results, prefix):
    keys = [k for k in results[0] if k.startswith(prefix)]
    assert keys, prefix
    return keys


def _sum_bound(inputs: torch.Tensor, world: int) -> torch.Tensor:
    """Two reductions of the same `world` terms in different orders differ by at most
    2·(world − 1)·u·Σ|x| per element (Higham), times checks.committed's safety factor."""
    return float_ops(2 * (world - 1), inputs.dtype).rel * inputs.abs().sum(0)


def _compare(mine, ref, inputs, op_name, kind, world, name):
    if kind in ("float32", "float64") and op_name == "sum":
        bound = _sum_bound(inputs, world)
        assert ((mine - ref).abs() <= bound).all(), (name, (mine - ref).abs().max().item())
        return (mine - ref).abs().max().item()
    assert torch.equal(mine, ref), name  # integers, integer-valued floats, min and max: exact
    return 0.0


def test_broadcasts_match_torch_distributed(batteries, measure):
    """ARENA's broadcast_naive (the source sends to every rank), broadcast_tree (a binomial tree:
    each rank that has the tensor sends it on, log₂ W rounds) and broadcast_ring (rank to rank
    around the ring) leave on every rank exactly what dist.broadcast leaves, from every source
    rank, for integer and float tensors, a tensor shorter than the world and a non-contiguous view;
    they use no collective of torch.distributed, only send and recv."""
    runs, seconds = batteries
    n = 0
    for world, results in runs.items():
        for key in _cases(results, "broadcast_"):
            for rank in range(world):
                mine, ref = results[rank][key]
                assert torch.equal(mine, ref), (world, rank, key)
                n += 1
    measure("broadcast.cases_compared", n)


@pytest.mark.parametrize("name", ["reduce_naive", "reduce_tree"])
def test_reduces_match_torch_distributed(batteries, name, measure):
    """ARENA's reduce_naive (the destination receives from every rank) and reduce_tree (the
    binomial tree run backwards): on the destination, the result equals dist.reduce's, exactly for
    integers, min and max, within the rounding of a W-term sum in another order for floats, for
    sum (every kind), product, min and max (integers) and every destination; the other ranks' tensors are left as they were."""
    runs, _ = batteries
    worst = 0.0
    for world, results in runs.items():
        for key in _cases(results, name + "/"):
            _, dst, op_name, kind = key.split("/")
            inputs = torch.stack([results[r][key][2] for r in range(world)])
            for rank in range(world):
                mine, ref, original = results[rank][key]
                if rank == int(dst[3:]):
                    worst = max(worst, _compare(mine, ref, inputs, op_name, kind, world, (world, key)))
                else:
                    assert torch.equal(mine, original), (world, rank, key)
    measure(f"{name}.float_sum.max_abs_err_vs_torch", worst, "≤ 2(W−1)·u·Σ|x| · 8")


@pytest.mark.parametrize("name", ["all_reduce_naive", "all_reduce_butterfly", "all_reduce_ring"])
def test_all_reduces_match_torch_distributed(batteries, name, measure):
    """ARENA's all_reduce_naive (reduce to rank 0, then broadcast) and all_reduce_butterfly
    (recursive doubling: at round k every rank swaps with rank ⊕ 2ᵏ and combines), and a ring
    all-reduce (reduce-scatter, then all-gather, chunk by chunk around the ring): every rank ends
    with dist.all_reduce's result (exact for integers, min and max; float sums within rounding), and
    all ranks hold the same bits. The butterfly needs a power-of-two world and says so otherwise."""
    runs, _ = batteries
    worst = 0.0
    for world, results in runs.items():
        if name == "all_reduce_butterfly" and world & (world - 1):
            assert results[0]["butterfly_refuses"].item()
            continue
        for key in _cases(results, name + "/"):
            _, op_name, kind = key.split("/")
            inputs = torch.stack([results[r][key][2] for r in range(world)])
            for rank in range(world):
                mine, ref, _ = results[rank][key]
                worst = max(worst, _compare(mine, ref, inputs, op_name, kind, world, (world, rank, key)))
                assert torch.equal(mine, results[0][key][0]), (world, rank, key)  # identical on every rank
    measure(f"{name}.float_sum.max_abs_err_vs_torch", worst, "≤ 2(W−1)·u·Σ|x| · 8")


def test_gathers_match_torch_distributed(batteries):
    """gather_naive: the destination receives every rank's tensor, in rank order, exactly as
    dist.gather collects them, and the other ranks get None; all_gather_naive: every rank gets
    the list dist.all_gather returns."""
    runs, _ = batteries
    for world, results in runs.items():
        for rank in range(world):
            for key, value in results[rank].items():
                if key.startswith(("gather_naive", "all_gather_naive")):
                    if key.endswith("/not_dst"):
                        assert value.item(), (world, rank, key)
                    else:
                        assert torch.equal(value[0], value[1]), (world, rank, key)


def test_process_start_up_is_measured(batteries, measure):
    """The gate's budget: each forked world (start-up, gloo rendezvous, the whole battery)
    finishes in seconds; the times are recorded."""
    _, seconds = batteries
    for world, s in seconds.items():
        measure(f"battery.world{world}.seconds", s)
    assert max(seconds.values()) < 30


# ---------------------------------------------------------------- data-parallel training


def single_process_weights(config: D.DataParallelConfig) -> list[torch.Tensor]:
    """The reference: one process, the same model (rank 0's initial weights), the same global
    batches, the loss averaged over each whole batch, the same torch.optim.SGD."""
    X, y = D.toy_data(config)
    model = D.toy_model(config, seed=config.seed)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    gen = torch.Generator().manual_seed(config.seed)
    for _ in range(config.steps):
        idx = torch.randperm(len(X), generator=gen)[:config.batch_size]
        opt.zero_grad()
        F.cross_entropy(model(X[idx]), y[idx]).backward()
        opt.step()
    return [p.detach() for p in model.parameters()]


def _dp_tolerance(config, reference):
    """Per step, the averaged gradient is the same B-term mean summed in another grouping:
    at most ~B·u of the gradient's scale apart; over `steps` SGD steps with momentum the weights
    drift by at most steps·B·u relative (iterated, growth B, as in checks.committed)."""
    rel = float_ops(config.steps * config.batch_size, config.dtype).rel
    return rel * max(p.abs().max().item() for p in reference)


@pytest.mark.parametrize("world, start_method, dtype", [(2, "spawn", torch.float64), (4, "fork", torch.float64),
                                                          (4, "fork", torch.float32)],
                         ids=["2-spawn-float64", "4-fork-float64", "4-fork-float32"])
def test_data_parallel_training_matches_single_process(world, start_method, dtype, tmp_path, measure):
    """ARENA's data-parallel training: rank 0's weights are broadcast (each rank initialises with
    its own seed, so a missing broadcast shows), every rank takes its contiguous shard of the same
    global batch, computes the mean loss's gradient on it, and the gradients are summed with our
    all-reduce and divided by the world size. After 15 SGD steps with momentum every rank holds
    the same weights, and they equal single-process training on the whole batches within the
    rounding of a B-term mean taken in another grouping (float64 and float32). One run uses the
    spawn start method that CUDA/NCCL require (the same code, backend and device as parameters)."""
    config = D.DataParallelConfig(dtype=dtype)
    start = time.perf_counter()
    ranks = D.launch(D.data_parallel_worker, world, start_method=start_method, timeout=120, args=(config,),
                     store_dir=tmp_path)
    seconds = time.perf_counter() - start
    reference = single_process_weights(config)
    tol = _dp_tolerance(config, reference)
    worst = 0.0
    for rank, weights in enumerate(ranks):
        assert all(torch.equal(a, b) for a, b in zip(weights, ranks[0])), rank  # identical replicas
        for mine, ref in zip(weights, reference):
            worst = max(worst, assert_parity(mine, ref, atol=tol, name=f"rank {rank}").max_abs_err)
    initial = [p.detach() for p in D.toy_model(config, seed=config.seed).parameters()]
    moved = max((a - b).abs().max().item() for a, b in zip(reference, initial))
    assert moved > 1000 * tol  # training moved the weights far more than the tolerance
    tag = f"data_parallel.world{world}.{start_method}.{str(dtype).replace('torch.', '')}"
    measure(f"{tag}.max_abs_err", worst, f"≤ {tol:.1e}")
    measure(f"{tag}.seconds", seconds)


def test_shards_partition_the_batch():
    """Each rank's shard is its contiguous 1/W of the global batch: together they are the batch,
    in order, without overlap; a batch that the world does not divide is an error."""
    batch = torch.arange(12)
    shards = [D.shard(batch, rank, 4) for rank in range(4)]
    assert torch.equal(torch.cat(shards), batch) and all(len(s) == 3 for s in shards)
    with pytest.raises(ValueError, match="divide"):
        D.shard(batch, 0, 5)


# ---------------------------------------------------------------- the launcher


def _fails_on_rank1(rank, world_size, device):
    if rank == 1:
        raise RuntimeError("rank 1 broke")
    buffer = torch.zeros(1)
    dist.recv(buffer, src=1)  # never sent: rank 0 would wait forever without the cleanup
    return {}


def _rank1_fails_rank0_sleeps(rank, world_size, device):
    if rank == 1:
        raise RuntimeError("rank 1 broke")
    time.sleep(3600)                                                  # busy elsewhere: never notices the failure


def test_a_failed_rank_stops_the_world_after_a_five_second_grace(tmp_path):
    """launch's contract: once a rank has failed, the others get 5 s to notice, then are terminated, long before the
    launch timeout (60 s here): the WorkerError names the failed rank after at least the 5 s grace and well before the
    timeout (under 30 s: start-up and the terminate join take seconds on a loaded machine, not tens)."""
    start = time.perf_counter()
    with pytest.raises(D.WorkerError, match="rank 1 broke"):
        D.launch(_rank1_fails_rank0_sleeps, 2, start_method="fork", timeout=60, store_dir=tmp_path)
    assert 4.9 < time.perf_counter() - start < 30.0


def _hangs(rank, world_size, device):
    time.sleep(3600)


def _alive(pids):
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        alive.append(pid)
    return alive


@pytest.mark.parametrize("worker, message", [(_fails_on_rank1, "rank 1 broke"), (_hangs, "did not finish")],
                         ids=["one-rank-raises", "all-ranks-hang"])
def test_launch_cleans_up_failed_and_hung_workers(worker, message, tmp_path, measure):
    """A worker that raises, or a world that hangs, is an error naming the rank and the cause
    within the launcher's timeout, and no worker process is left behind: every child has been
    joined (terminated, then killed, if it would not stop)."""
    before = set(multiprocessing.active_children())
    start = time.perf_counter()
    with pytest.raises(D.WorkerError, match=message) as info:
        D.launch(worker, 2, start_method="fork", timeout=1.5, store_dir=tmp_path)
    measure(f"launch_failure.{worker.__name__}.seconds", time.perf_counter() - start)
    assert time.perf_counter() - start < 20
    assert set(multiprocessing.active_children()) == before
    assert info.value.pids and not _alive(info.value.pids)
