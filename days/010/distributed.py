"""Day 10, second half: distributed training (ARENA 0.3 Optimization, "Distributed training").

Collective operations built from point-to-point messages only (``dist.send``/``dist.recv`` and
paired ``isend``/``irecv`` through ``dist.batch_isend_irecv``), on W processes of ranks 0 … W − 1:

- **broadcast**: the source's tensor ends up on every rank. Naive: the source sends W − 1 times.
  Tree: a binomial tree on ranks relative to the source, r = (rank − src) mod W; in round k
  (mask m = 2ᵏ) every rank r < m that already has the tensor sends it to r + m, so ⌈log₂ W⌉
  rounds. Ring: each rank receives from its left neighbour and passes it to its right, W − 1 hops.
- **reduce** (sum, product, min or max) onto a destination: naive, every rank sends to it; tree,
  the binomial tree run backwards (a rank with bit k of r set sends its partial result to r − 2ᵏ
  and stops). The destination's tensor receives the result; the other ranks' tensors are left
  untouched (torch leaves them unspecified).
- **all-reduce**: naive, reduce onto rank 0 and broadcast from it; butterfly (recursive doubling,
  W a power of two), in round k every rank swaps its partial result with rank ⊕ 2ᵏ and combines
  the two, log₂ W rounds; ring, a reduce-scatter then an all-gather over W chunks of the tensor,
  2(W − 1) steps each moving 1/W of it (the bandwidth-optimal schedule of NCCL and Horovod).
- **gather** / **all-gather**: every rank's tensor, in rank order, on one rank / on every rank.

Data-parallel training: every rank holds a replica of the model (rank 0's weights, broadcast);
each step every rank takes its own contiguous 1/W shard of the same global batch, computes the
gradient of the mean loss on it, and the gradients are all-reduced and divided by W. With equal
shards, (1/W) Σ_r (W/B) Σ_{i ∈ shard r} ∇ℓ_i = (1/B) Σ_i ∇ℓ_i: the gradient of the whole batch,
so every replica takes the single-process step, up to the rounding of summing in another order.

``launch`` runs a function on W processes (gloo on CPU; NCCL on GPUs, one per rank, with the
spawn start method CUDA needs) and returns each rank's result; a failing or hung world is
terminated and reported, never left running.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.distributed import ReduceOp

# ---------------------------------------------------------------- helpers


def _rank_world() -> tuple[int, int]:
    return dist.get_rank(), dist.get_world_size()


def _combine(a: Tensor, b: Tensor, op) -> Tensor:
    """op(a, b) elementwise, for the reductions gloo and NCCL share."""
    if op == ReduceOp.SUM:
        return a + b
    if op == ReduceOp.PRODUCT:
        return a * b
    if op == ReduceOp.MIN:
        return torch.minimum(a, b)
    if op == ReduceOp.MAX:
        return torch.maximum(a, b)
    raise ValueError(f"unsupported reduction {op}: use SUM, PRODUCT, MIN or MAX")


@contextmanager
def _contiguous(tensor: Tensor) -> Iterator[Tensor]:
    """A contiguous buffer for ``tensor`` (messages need one), written back into it at the end."""
    buffer = tensor if tensor.is_contiguous() else tensor.contiguous()
    yield buffer
    if buffer is not tensor:
        tensor.copy_(buffer)


def _send_recv(send: Tensor, to: int, recv: Tensor, source: int) -> None:
    """Send ``send`` to rank ``to`` while receiving ``recv`` from rank ``source``. The two are
    posted together (``batch_isend_irecv``), so ranks that all send before they receive (a ring,
    a pairwise swap) cannot deadlock, on NCCL either. Empty tensors are not sent (the peer, whose
    matching tensor is empty too, does not wait for them)."""
    ops = ([dist.P2POp(dist.isend, send, to)] if send.numel() else []) + \
          ([dist.P2POp(dist.irecv, recv, source)] if recv.numel() else [])
    for request in dist.batch_isend_irecv(ops) if ops else []:
        request.wait()


# ---------------------------------------------------------------- broadcast


def broadcast_naive(tensor: Tensor, src: int) -> None:
    """The source sends its tensor to every other rank, one after the other (W − 1 sends)."""
    rank, world = _rank_world()
    with _contiguous(tensor) as buffer:
        if rank == src:
            for other in range(world):
                if other != src:
                    dist.send(buffer, other)
        else:
            dist.recv(buffer, src)


def broadcast_tree(tensor: Tensor, src: int) -> None:
    """Binomial tree: in round k every rank that has the tensor (relative rank r < 2ᵏ) sends it to
    r + 2ᵏ; ⌈log₂ W⌉ rounds."""
    rank, world = _rank_world()
    r = (rank - src) % world
    with _contiguous(tensor) as buffer:
        mask = 1
        while mask < world:
            if r < mask and r + mask < world:
                dist.send(buffer, (r + mask + src) % world)
            elif mask <= r < 2 * mask:
                dist.recv(buffer, (r - mask + src) % world)
            mask *= 2


def broadcast_ring(tensor: Tensor, src: int) -> None:
    """Around the ring from the source: receive from the left neighbour, pass to the right one."""
    rank, world = _rank_world()
    r = (rank - src) % world
    with _contiguous(tensor) as buffer:
        if r > 0:
            dist.recv(buffer, (rank - 1) % world)
        if r < world - 1:
            dist.send(buffer, (rank + 1) % world)


# ---------------------------------------------------------------- reduce


def reduce_naive(tensor: Tensor, dst: int, op=ReduceOp.SUM) -> None:
    """Every rank sends its tensor to ``dst``, which combines them in rank order."""
    rank, world = _rank_world()
    with _contiguous(tensor) as buffer:
        if rank != dst:
            dist.send(buffer, dst)
            return
        result = None
        for other in range(world):
            part = buffer.clone() if other == dst else torch.empty_like(buffer)
            if other != dst:
                dist.recv(part, other)
            result = part if result is None else _combine(result, part, op)
        buffer.copy_(result)


def reduce_tree(tensor: Tensor, dst: int, op=ReduceOp.SUM) -> None:
    """The binomial tree backwards: in round k a rank whose relative rank r has bit k as its lowest
    set bit sends its partial result to r − 2ᵏ and is done; r with those bits clear receives from
    r + 2ᵏ (if it exists) and combines. ``dst`` ends with the result after ⌈log₂ W⌉ rounds."""
    rank, world = _rank_world()
    r = (rank - dst) % world
    with _contiguous(tensor) as buffer:
        partial = buffer.clone()
        mask = 1
        while mask < world:
            if r % (2 * mask) == mask:
                dist.send(partial, (r - mask + dst) % world)
                return
            if r % (2 * mask) == 0 and r + mask < world:
                incoming = torch.empty_like(partial)
                dist.recv(incoming, (r + mask + dst) % world)
                partial = _combine(partial, incoming, op)
            mask *= 2
        buffer.copy_(partial)  # only r = 0, the destination, gets here


# ---------------------------------------------------------------- all-reduce


def all_reduce_naive(tensor: Tensor, op=ReduceOp.SUM) -> None:
    """Reduce onto rank 0, then broadcast from it: every rank ends with the same bits."""
    reduce_naive(tensor, dst=0, op=op)
    broadcast_naive(tensor, src=0)


def all_reduce_butterfly(tensor: Tensor, op=ReduceOp.SUM) -> None:
    """Recursive doubling: in round k every rank exchanges its partial result with rank ⊕ 2ᵏ and
    combines the two (the lower rank's first, so both compute the same bits); log₂ W rounds."""
    rank, world = _rank_world()
    if world & (world - 1):
        raise ValueError(f"the butterfly all-reduce needs a world size that is a power of two, not {world}")
    with _contiguous(tensor) as buffer:
        partial = buffer.clone()
        mask = 1
        while mask < world:
            peer = rank ^ mask
            theirs = torch.empty_like(partial)
            _send_recv(partial, peer, theirs, peer)
            partial = _combine(partial, theirs, op) if rank < peer else _combine(theirs, partial, op)
            mask *= 2
        buffer.copy_(partial)


def all_reduce_ring(tensor: Tensor, op=ReduceOp.SUM) -> None:
    """Ring all-reduce over W chunks. Reduce-scatter: in step s every rank sends chunk (rank − s)
    to its right neighbour and folds the chunk (rank − s − 1) it receives from its left one into
    its own; after W − 1 steps rank holds the full reduction of chunk (rank + 1). All-gather: the
    finished chunks travel once more around the ring. Works for any W (chunks may be empty)."""
    rank, world = _rank_world()
    right, left = (rank + 1) % world, (rank - 1) % world
    with _contiguous(tensor) as buffer:
        chunks = buffer.view(-1).tensor_split(world)
        for step in range(world - 1):
            send, recv = chunks[(rank - step) % world], chunks[(rank - step - 1) % world]
            incoming = torch.empty_like(recv)
            _send_recv(send, right, incoming, left)
            recv.copy_(_combine(recv, incoming, op))
        for step in range(world - 1):
            _send_recv(chunks[(rank - step + 1) % world], right, chunks[(rank - step) % world], left)


# ---------------------------------------------------------------- gather


def gather_naive(tensor: Tensor, dst: int) -> list[Tensor] | None:
    """Every rank's tensor, in rank order, on ``dst`` (a new list); None on the other ranks."""
    rank, world = _rank_world()
    with _contiguous(tensor) as buffer:
        if rank != dst:
            dist.send(buffer, dst)
            return None
        parts = []
        for other in range(world):
            part = buffer.clone() if other == dst else torch.empty_like(buffer)
            if other != dst:
                dist.recv(part, other)
            parts.append(part)
        return parts


def all_gather_naive(tensor: Tensor) -> list[Tensor]:
    """Every rank's tensor, in rank order, on every rank: gather onto rank 0, broadcast each part."""
    rank, world = _rank_world()
    parts = gather_naive(tensor, dst=0)
    if parts is None:
        parts = [torch.empty_like(tensor.contiguous()) for _ in range(world)]
    for part in parts:
        broadcast_naive(part, src=0)
    return parts


# ---------------------------------------------------------------- data-parallel training


def shard(batch: Tensor, rank: int, world_size: int) -> Tensor:
    """Rank ``rank``'s contiguous 1/W of a global batch (indices or examples)."""
    if len(batch) % world_size:
        raise ValueError(f"a batch of {len(batch)} does not divide into {world_size} equal shards")
    size = len(batch) // world_size
    return batch[rank * size:(rank + 1) * size]


def broadcast_parameters(model: nn.Module, src: int = 0, broadcast: Callable = broadcast_tree) -> None:
    """Make every replica rank ``src``'s: its parameters and buffers, broadcast one by one."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            broadcast(tensor.data, src)


def all_reduce_gradients(model: nn.Module, world_size: int, all_reduce: Callable = all_reduce_ring) -> None:
    """Replace each gradient by its mean over the ranks: the gradients are flattened into one
    message (as DDP's buckets do), summed with ``all_reduce``, divided by W and copied back."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    all_reduce(flat, ReduceOp.SUM)
    flat /= world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, inputs: Tensor, labels: Tensor,
                  world_size: int, all_reduce: Callable = all_reduce_ring) -> Tensor:
    """One data-parallel step on this rank's shard: the mean loss's gradient, averaged over the
    ranks, then the optimizer's step (the same on every replica). Returns the shard's loss."""
    loss = F.cross_entropy(model(inputs), labels)
    optimizer.zero_grad()
    loss.backward()
    all_reduce_gradients(model, world_size, all_reduce)
    optimizer.step()
    return loss.detach()


@dataclass(frozen=True)
class DataParallelConfig:
    """A small classification problem and its SGD run, the same on every rank."""

    dtype: torch.dtype = torch.float32
    n_samples: int = 256
    n_features: int = 8
    hidden: int = 16
    n_classes: int = 3
    steps: int = 15
    batch_size: int = 32
    lr: float = 0.1
    momentum: float = 0.9
    seed: int = 0
    all_reduce: str = "all_reduce_ring"


def toy_data(config: DataParallelConfig) -> tuple[Tensor, Tensor]:
    """Gaussian inputs labelled by a random linear teacher (argmax of n_classes scores)."""
    g = torch.Generator().manual_seed(config.seed)
    X = torch.randn(config.n_samples, config.n_features, generator=g, dtype=torch.float64)
    y = (X @ torch.randn(config.n_features, config.n_classes, generator=g, dtype=torch.float64)).argmax(1)
    return X.to(config.dtype), y


def toy_model(config: DataParallelConfig, seed: int) -> nn.Module:
    """An MLP n_features → hidden → n_classes with tanh, initialised from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(config.n_features, config.hidden), nn.Tanh(),
                              nn.Linear(config.hidden, config.n_classes))
    return model.to(config.dtype)


def data_parallel_worker(rank: int, world_size: int, device: torch.device, config: DataParallelConfig) -> list[Tensor]:
    """Data-parallel SGD on the toy problem; returns this replica's final weights (on the CPU).

    Each rank initialises its replica from its own seed, so the broadcast of rank 0's weights is
    what makes the replicas equal. All ranks draw the same global batches (one shared seed)."""
    model = toy_model(config, seed=config.seed + rank).to(device)
    broadcast_parameters(model, src=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    X, y = toy_data(config)
    X, y = X.to(device), y.to(device)
    batches = torch.Generator().manual_seed(config.seed)
    all_reduce = globals()[config.all_reduce]
    for _ in range(config.steps):
        idx = shard(torch.randperm(len(X), generator=batches)[:config.batch_size], rank, world_size).to(device)
        training_step(model, optimizer, X[idx], y[idx], world_size, all_reduce)
    return [p.detach().cpu() for p in model.parameters()]


# ---------------------------------------------------------------- launching a world


class WorkerError(RuntimeError):
    """A world of workers that failed or did not finish; ``pids`` are its (reaped) processes."""

    def __init__(self, message: str, pids: list[int]):
        super().__init__(message)
        self.pids = pids


def _run_rank(fn: Callable, rank: int, world_size: int, backend: str, store_path: str, timeout: float,
              args: tuple, out_dir: str) -> None:
    """One process of the world: join the process group, run ``fn(rank, world_size, device, *args)``,
    save its result (or the traceback) for the launcher."""
    out = Path(out_dir)
    try:
        torch.set_num_threads(1)  # the ranks are the parallelism
        if backend == "gloo" and sys.platform.startswith("linux"):
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # one machine: talk over loopback
        device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, store=dist.FileStore(store_path, world_size), rank=rank,
                                world_size=world_size, timeout=timedelta(seconds=timeout))
        try:
            result = fn(rank, world_size, device, *args)
        finally:
            dist.destroy_process_group()
        torch.save(result, out / f"rank{rank}.pt")
    except BaseException:  # noqa: BLE001 (the launcher reports it)
        (out / f"rank{rank}.err").write_text(traceback.format_exc(), encoding="utf-8")
        sys.exit(1)


def launch(fn: Callable, world_size: int, *, backend: str = "gloo", start_method: str | None = None,
           timeout: float = 120.0, args: tuple = (), store_dir: Path | None = None) -> list[Any]:
    """Run ``fn(rank, world_size, device, *args)`` on ``world_size`` processes; return the results
    in rank order.

    The processes rendezvous through a FileStore (no port to choose). ``backend`` is gloo (CPU) or
    nccl (one GPU per rank, ``device`` = cuda:rank). ``start_method``: spawn by default (what CUDA
    needs); fork starts in milliseconds on Linux for CPU work. Within ``timeout`` seconds every
    process has finished, or all are terminated (then killed) and reaped; a failure raises
    WorkerError with each failed rank's traceback. No process outlives the call.
    """
    method = start_method or "spawn"
    if backend == "nccl" and method != "spawn":
        raise ValueError("CUDA cannot be used in forked processes: launch NCCL worlds with spawn")
    context = multiprocessing.get_context(method)
    root = Path(tempfile.mkdtemp(prefix="dist-", dir=store_dir))
    processes = [context.Process(target=_run_rank, name=f"rank{rank}", daemon=True,
                                 args=(fn, rank, world_size, backend, str(root / "store"), timeout, args, str(root)))
                 for rank in range(world_size)]
    try:
        for process in processes:
            process.start()
        deadline = time.monotonic() + timeout
        while (running := [p for p in processes if p.is_alive()]) and time.monotonic() < deadline:
            wait([p.sentinel for p in running], timeout=max(0.0, deadline - time.monotonic()))
            if any(p.exitcode not in (None, 0) for p in processes):  # a rank failed: the rest get 5 s to notice
                deadline = min(deadline, time.monotonic() + 5.0)
        hung = [p.name for p in processes if p.is_alive()]
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join(2.0)
            if process.is_alive():
                process.kill()
            process.join()
    pids = [p.pid for p in processes]
    errors = [f"{p.name} (exit code {p.exitcode}):\n" + _read(root / f"{p.name}.err")
              for p in processes if p.exitcode != 0 and p.name not in hung]
    try:
        if hung or errors:
            message = (f"{', '.join(hung)} did not finish within {timeout:g} s. " if hung else "") + "\n".join(errors)
            raise WorkerError(message.strip(), pids)
        return [torch.load(root / f"rank{rank}.pt", weights_only=False) for rank in range(world_size)]
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.exists() else "(no traceback: the process ended before its worker could report)"
