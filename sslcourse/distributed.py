"""Training on several processes with ``torch.distributed``: what ``sslcourse pretrain`` runs under ``torchrun``.

One process per GPU (or several on a CPU, with the gloo backend), each holding a model replica.
The pieces, read top to bottom:

* :class:`Replicas` and :func:`start`: who this process is (rank, world size, device) and the
  process group. Without ``torchrun`` it is the one-process case, and every function below does
  what a single process would.
* :func:`gather_interleaved`, :func:`average_`, :func:`broadcast_`, :func:`agree`: the few
  collectives the recipes need.
* :class:`ShardedBatches`: each process holds only its shards of the uint8 training set on its
  device and augments its own images; together they serve the batches one process would.
* :func:`average_buffers`: batch-norm running statistics, averaged over the replicas.

The gradients are averaged by :class:`torch.nn.parallel.DistributedDataParallel`, which
:func:`sslcourse.train.fit` wraps around the loss (``fit(..., replicas=...)``).

The layout that makes runs on different numbers of processes comparable: the training set is cut
into ``shards`` interleaved shards (image ``i`` is in shard ``i % shards``), and the global batch is
interleaved too (sample ``j`` of a global batch comes from shard ``j % shards``). Process ``r`` of
``W`` holds shards ``r, r + W, ...``, so its local batch is samples ``r, r + W, r + 2W, ...`` of the
global batch: exactly the sub-batch that :class:`sslcourse.contrastive.SplitBatchNorm` normalises
together when one process imitates ``W`` devices. With the same ``shards`` and seed, one process and
``W`` processes see the same global batches, with the same augmentation (each shard has its own
random stream), and compute the same update up to float rounding (``tests/test_distributed.py``).
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from . import environment
from .data.batches import normalize, to_float

__all__ = ["Replicas", "SINGLE", "start", "stop", "gather_interleaved", "average_", "broadcast_", "agree", "barrier",
           "average_buffers", "ShardedBatches", "shard_indices", "device_batches"]


@dataclass(frozen=True)
class Replicas:
    """This process's place among the training processes.

    Attributes:
        rank: 0 .. world - 1; rank 0 writes checkpoints, prints and draws the progress bar.
        world: the number of processes (1 without ``torchrun``).
        local_rank: the rank on this machine (which GPU).
        device: where this process trains.
        backend: ``"nccl"`` (CUDA), ``"gloo"`` (CPU), or ``None`` for one process.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        """True when there is more than one process to talk to."""
        return self.world > 1


SINGLE = Replicas()


def start(device: str | torch.device | None = None, timeout_s: float = 600) -> Replicas:
    """Join the process group ``torchrun`` set up, or return the one-process :class:`Replicas`.

    The device is ``cuda:LOCAL_RANK`` when CUDA is available (backend nccl), else the CPU (gloo);
    ``device`` or ``SSLCOURSE_DEVICE`` overrides it (``cpu`` forces gloo on a GPU machine).
    """
    process = environment.torchrun_process()
    forced = device if device is not None else environment.read().device
    if process is None:
        chosen = torch.device(forced) if forced else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return Replicas(device=chosen)
    rank, world, local_rank = process
    if forced:
        chosen = torch.device(forced)
    else:
        chosen = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if chosen.type == "cuda":
        if chosen.index is None:
            chosen = torch.device("cuda", local_rank)
        if chosen.index >= torch.cuda.device_count():
            raise RuntimeError(f"process {rank} wants cuda:{chosen.index}, but this machine has "
                               f"{torch.cuda.device_count()} GPU(s): start at most that many processes per node "
                               f"(torchrun --nproc_per_node).")
        torch.cuda.set_device(chosen)
    backend = "nccl" if chosen.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s),
                                **({"device_id": chosen} if chosen.type == "cuda" else {}))
    return Replicas(rank=rank, world=world, local_rank=local_rank, device=chosen, backend=backend)


def stop(replicas: Replicas) -> None:
    """Leave the process group (a no-op for one process)."""
    if replicas.active and dist.is_initialized():
        dist.destroy_process_group()


# --------------------------------------------------------------------------- collectives

def gather_interleaved(x: torch.Tensor, replicas: Replicas) -> torch.Tensor:
    """Every process's ``[n, ...]`` joined into the global ``[W·n, ...]``, with process ``r``'s rows at
    ``r, r + W, ...`` (the interleaved layout of the module docstring). No gradient flows back."""
    if not replicas.active:
        return x
    parts = [torch.empty_like(x) for _ in range(replicas.world)]
    dist.all_gather(parts, x.contiguous())
    return torch.stack(parts, dim=1).reshape(-1, *x.shape[1:])


def average_(tensor: torch.Tensor, replicas: Replicas) -> torch.Tensor:
    """Replace ``tensor`` by its mean over the processes, in place; returns it."""
    if replicas.active:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(replicas.world)
    return tensor


def broadcast_(tensor: torch.Tensor, replicas: Replicas, source: int = 0) -> torch.Tensor:
    """Overwrite ``tensor`` with process ``source``'s, in place; returns it."""
    if replicas.active:
        dist.broadcast(tensor, source)
    return tensor


def barrier(replicas: Replicas) -> None:
    """Wait until every process gets here."""
    if replicas.active:
        dist.barrier()


def agree(flag: bool, replicas: Replicas) -> bool:
    """True on every process when ``flag`` is True on any (e.g. the deadline: all stop at the same step)."""
    if not replicas.active:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=replicas.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def average_buffers(module: nn.Module, replicas: Replicas) -> None:
    """Average every floating-point buffer over the processes (batch-norm running mean and variance).

    Each process's running statistics follow its own local batches; their mean is what one
    process with :class:`~sslcourse.contrastive.SplitBatchNorm` keeps (an exponential moving average
    is linear). Buffers that are the same everywhere (MoCo's queue) stay as they are.
    """
    if not replicas.active:
        return
    for buffer in module.buffers():
        if buffer.is_floating_point():
            average_(buffer.data, replicas)


# --------------------------------------------------------------------------- the data

def shard_indices(count: int, replicas: Replicas) -> torch.Tensor:
    """The rows of ``count`` items this process encodes for a gathered result: ``r, r + W, ...``, padded with
    its last row to ``ceil(count / W)`` so every process sends as many (drop the padding after
    :func:`gather_interleaved` with ``[:count]``)."""
    per = -(-count // replicas.world)
    rows = torch.arange(replicas.rank, count, replicas.world)
    if len(rows) < per:
        rows = torch.cat([rows, rows[-1:].expand(per - len(rows))])
    return rows


class ShardedBatches:
    """This process's part of every global batch, served from its device (a sharded ``DeviceBatches``).

    The training set is cut into ``shards`` interleaved shards; this process keeps only shards
    ``rank, rank + world, ...`` on its device. Epoch ``e`` draws one permutation of the positions
    within a shard from ``(seed, e)`` (the same on every process), so global batch ``b`` holds, at
    sample ``j``, image ``shards · π[b·B/shards + j // shards] + j % shards``. Each shard's views are
    augmented with that shard's own random stream, so the batches do not depend on how many
    processes share the work. With ``shards = 1`` (one process) this is exactly
    :class:`sslcourse.data.DeviceBatches` with the same seed.

    Args:
        images: uint8 ``[N, 3, H, W]``, all of the training set (only this process's shards are kept);
            ``N`` is cut to a multiple of ``shards``.
        labels: int64 ``[N]``.
        batch_size: the **global** batch size, a multiple of ``shards``.
        device: this process's device.
        replicas: this process's place; ``shards`` must be a multiple of ``replicas.world``.
        shards: default ``replicas.world``; keep it when resuming on a different number of processes.
        augment, views, mean, std, seed: as for :class:`~sslcourse.data.DeviceBatches`.

    Yields ``(x, y)`` (``views=1``) or ``((x1, x2), y)`` with ``x`` float32 ``[B / world, 3, H, W]``.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, device, replicas: Replicas, *,
                 shards: int | None = None, augment: Callable | None = None, views: int = 1, mean=None, std=None,
                 seed: int = 0):
        shards = replicas.world if shards is None else shards
        if shards < 1 or shards % replicas.world:
            raise ValueError(f"ShardedBatches: shards must be a positive multiple of the {replicas.world} "
                             f"processes, got {shards}.")
        if batch_size % shards:
            raise ValueError(f"ShardedBatches: the global batch of {batch_size} does not split into {shards} "
                             f"shards; use a batch size that is a multiple of {shards}.")
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise TypeError(f"ShardedBatches expects uint8 images [N, C, H, W], got {images.dtype} {tuple(images.shape)}.")
        if views not in (1, 2):
            raise ValueError(f"views must be 1 or 2, got {views}.")
        per_shard = len(images) // shards
        if per_shard * shards < batch_size:
            raise ValueError(f"ShardedBatches: {len(images)} images make no global batch of {batch_size}.")
        mine = torch.arange(replicas.rank, shards, replicas.world)            # the shards this process keeps
        self.device = torch.device(device)
        # [per_shard, shards, ...] -> this process's columns: [per_shard, shards / world, ...]
        self.images = images[:per_shard * shards].view(per_shard, shards, *images.shape[1:])[:, mine].to(self.device)
        self.labels = labels[:per_shard * shards].view(per_shard, shards)[:, mine].to(self.device)
        self.shard_ids = mine.tolist()
        self.shards, self.batch_size, self.replicas = shards, batch_size, replicas
        self.augment, self.views, self.mean, self.std, self.seed = augment, views, mean, std, seed

    def __len__(self) -> int:
        return len(self.images) // (self.batch_size // self.shards)

    def _generators(self, epoch: int) -> tuple[torch.Generator, list[torch.Generator]]:
        """The permutation's stream (the same on every process) and one augmentation stream per shard held.
        Shard 0 continues the permutation's stream, as :class:`~sslcourse.data.DeviceBatches` does."""
        base = self.seed * 1_000_003 + epoch
        order = torch.Generator(device=self.device).manual_seed(base)
        streams = [order if shard == 0 else
                   torch.Generator(device=self.device).manual_seed(base * 7919 + shard) for shard in self.shard_ids]
        return order, streams

    def _view(self, x_uint8: torch.Tensor, streams: list[torch.Generator]) -> torch.Tensor:
        """``[b, shards held, C, H, W]`` uint8 -> ``[b · shards held, C, H, W]`` float, in the interleaved order."""
        views = []
        for column, stream in enumerate(streams):
            x = to_float(x_uint8[:, column])
            if self.augment is not None:
                x = self.augment(x, stream)
            views.append(x)
        x = torch.stack(views, dim=1).flatten(0, 1)
        return normalize(x, self.mean, self.std) if self.mean is not None else x

    def epoch(self, epoch: int = 0) -> Iterator:
        """Yield this process's part of each global batch of epoch ``epoch``."""
        order, streams = self._generators(epoch)
        positions = torch.randperm(len(self.images), device=self.device, generator=order)
        rows = self.batch_size // self.shards
        for b in range(len(self)):
            idx = positions[b * rows:(b + 1) * rows]
            x, y = self.images[idx], self.labels[idx].flatten()
            if self.views == 1:
                yield self._view(x, streams), y
            else:
                yield (self._view(x, streams), self._view(x, streams)), y

    def __iter__(self) -> Iterator:
        return self.epoch(0)


def device_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, device, replicas: Replicas = SINGLE,
                   *, shards: int | None = None, **kwargs):
    """A recipe's loader: :class:`sslcourse.data.DeviceBatches` on one process, or this process's
    :class:`ShardedBatches` when there are several (or when ``shards`` is given, to compare one process
    with several). ``batch_size`` is the global batch; ``kwargs`` (augment, views, mean, std, seed) go to either."""
    if replicas.active or shards is not None:
        return ShardedBatches(images, labels, batch_size, device, replicas, shards=shards, **kwargs)
    from .data import DeviceBatches

    return DeviceBatches(images, labels, batch_size, device, **kwargs)
