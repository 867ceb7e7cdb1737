"""The step loop every notebook trains with: :func:`fit`.

A notebook writes only what its method is about, a ``loss_fn(model, batch)``; ``fit`` runs
the steps and hands the rest to small parts of its own:

* :mod:`.checkpoint`: save after every epoch, resume exactly when rerun;
* :mod:`.loss_log`: read losses back from the device every ``log_every`` steps, stop with
  :class:`NonFiniteLossError` on a NaN/Inf loss;
* :mod:`.reporter`: the progress bar and the live plot;
* :mod:`sslcourse.allocator`: on a CPU, keep freed memory in the process while training.

The loop itself puts the model and each batch on the device (``channels_last``), runs the
forward pass under bfloat16 autocast on CUDA (bf16 needs no loss scaling), can compile the
model, stops cleanly on Ctrl-C (keeping what was trained) and, with ``deadline_s``, after a
given number of seconds of training.
"""
from __future__ import annotations

import contextlib
import inspect
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from .. import cpu_bf16
from ..distributed import SINGLE, Replicas, agree, average_, average_buffers
from ..allocator import keep_freed_memory
from ..files import to_plain
from ..plots import LivePlot
from .checkpoint import load_checkpoint, save_checkpoint
from .loss_log import LossLog
from .reporter import Reporter

__all__ = ["fit", "History"]


@dataclass
class History:
    """What :func:`fit` records.

    Attributes:
        losses: the loss of every optimisation step, as floats.
        epochs: one dict per epoch: ``epoch`` (1-based), ``loss`` (mean), the mean of each
            metric ``loss_fn`` returned, ``lr``, ``time`` (seconds of training, without
            ``on_epoch_end``), and whatever ``on_epoch_end`` returned. An epoch cut short by
            the deadline also has ``partial: True`` and ``steps`` (the steps it ran).
        interrupted: True when training was stopped by Ctrl-C.
        deadline_reached: True when ``deadline_s`` stopped training before ``epochs``.
    """

    losses: list[float] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)
    interrupted: bool = False
    deadline_reached: bool = False

    def metric(self, name: str) -> list:
        """The per-epoch values of ``name``, e.g. ``history.metric("knn")``."""
        return [e[name] for e in self.epochs if name in e]

    @property
    def training_seconds(self) -> float:
        """Seconds spent in training steps (the monitor excluded), over all epochs recorded."""
        return float(sum(e.get("time", 0.0) for e in self.epochs))

    def state_dict(self) -> dict:
        return {"losses": list(self.losses), "epochs": [dict(e) for e in self.epochs if not e.get("partial")]}

    def __repr__(self) -> str:
        last = f", last epoch {self.epochs[-1]}" if self.epochs else ""
        flag = ", interrupted" if self.interrupted else ""
        flag += ", stopped at the deadline" if self.deadline_reached else ""
        return f"History({len(self.losses)} steps, {len(self.epochs)} epochs{last}{flag})"


def _move(batch: Any, device: torch.device, channels_last: bool) -> Any:
    """Move every tensor of a (nested) batch to ``device``; image batches go channels_last."""
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.ndim == 4 and batch.is_floating_point():
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, Mapping):
        return {k: _move(v, device, channels_last) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
        return type(batch)(*(_move(v, device, channels_last) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_move(v, device, channels_last) for v in batch)
    return batch


def _batches(loader: Any, epoch: int) -> Iterable:
    """The batches of epoch ``epoch``: ``loader.epoch(epoch)`` when the loader can replay an epoch
    (:class:`sslcourse.data.DeviceBatches`), else a plain iteration (a DataLoader)."""
    if hasattr(loader, "epoch") and callable(loader.epoch):
        return loader.epoch(epoch)
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    return iter(loader)


def _split_output(out: Any) -> tuple[torch.Tensor, dict]:
    loss, metrics = (out if isinstance(out, tuple) and len(out) == 2 else (out, {}))
    if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
        got = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise TypeError(f"loss_fn must return a scalar loss tensor, or (loss, {{'name': value}}); got {got}. "
                        "Reduce the loss with .mean() or .sum().")
    if not loss.requires_grad:
        raise TypeError("loss_fn returned a loss that does not depend on the model's parameters "
                        "(requires_grad=False): was it computed under torch.no_grad(), or with .item() "
                        "or .detach() somewhere on the way?")
    if not isinstance(metrics, Mapping):
        raise TypeError(f"loss_fn's second return value must be a dict of metrics, got {type(metrics).__name__}.")
    return loss, dict(metrics)


def _data_parallel(model: nn.Module, loss_fn: Callable, device: torch.device, replicas: Replicas) -> Callable:
    """``batch -> loss_fn(model, batch)``; with several processes, run inside DistributedDataParallel.

    The recipes' models have no single ``forward`` (the student's functions call their parts), so
    DDP wraps the whole loss: a module whose ``forward(batch)`` is ``loss_fn(model, batch)``. DDP's
    gradient hooks then average every gradient over the processes during ``backward``. Buffers are
    not broadcast from rank 0 (each process keeps its own batch-norm statistics, averaged at the end
    of each epoch, and MoCo's queue is the same everywhere by construction).
    """
    if not replicas.active:
        return lambda batch: loss_fn(model, batch)
    from torch.nn.parallel import DistributedDataParallel

    # torch >= 2.14 renamed broadcast_buffers to forward_sync_buffers (Colab's 2.11 has only the old name).
    # Syncing buffers once at the start is fine: every process builds the same model from the same seed.
    names = inspect.signature(DistributedDataParallel.__init__).parameters
    no_buffer_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in names else {"broadcast_buffers": False}
    return DistributedDataParallel(_LossModule(model, loss_fn), **no_buffer_sync,
                                   device_ids=[device.index] if device.type == "cuda" else None)


class _LossModule(nn.Module):
    """``loss_fn(model, batch)`` as a module, so DistributedDataParallel can wrap it."""

    def __init__(self, model: nn.Module, loss_fn: Callable):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch):
        return self.loss_fn(self.model, batch)


def _mean_over_processes(loss: torch.Tensor, metrics: dict, replicas: Replicas) -> tuple[torch.Tensor, dict]:
    """The loss and metrics to record: each process's own, averaged over the processes."""
    if not replicas.active:
        return loss, metrics
    names = list(metrics)
    values = torch.stack([loss.detach().float()] + [torch.as_tensor(metrics[n], dtype=torch.float32,
                                                                      device=loss.device).detach().reshape(())
                                                    for n in names])
    average_(values, replicas)
    return values[0], {n: values[i + 1] for i, n in enumerate(names)}


def _autocast(device: torch.device, amp: bool | str):
    """bf16 autocast on CUDA when ``amp`` is True, and on a CPU where :func:`sslcourse.cpu_bf16.use_bf16`
    measured it faster; on any device when ``amp == "bf16"``; never with ``amp=False``."""
    if amp not in (True, False, "bf16"):
        raise ValueError(f"amp must be True, False or 'bf16', got {amp!r}.")
    if amp == "bf16" or (amp is True and (device.type == "cuda" or (device.type == "cpu" and cpu_bf16.use_bf16()))):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def fit(model: nn.Module, loss_fn: Callable, loader: Any, optimizer: torch.optim.Optimizer, epochs: int, *,
        device: torch.device | str, scheduler: Any = None, checkpoint: str | os.PathLike | None = None,
        amp: bool | str = True, channels_last: bool = True, compile: bool = False,
        live_plot: bool | LivePlot = True, progress: bool = True, desc: str = "train",
        on_epoch_end: Callable | None = None, log_every: int = 10, keep_memory: bool = True,
        deadline_s: float | None = None, replicas: Replicas = SINGLE) -> History:
    """Train ``model`` for ``epochs`` epochs and return the :class:`History`.

    Args:
        model: the module whose parameters ``optimizer`` updates; moved to ``device``.
        loss_fn: ``loss_fn(model, batch) -> loss`` or ``(loss, {"name": value})``; ``batch`` is
            what the loader yields, on ``device`` (4-D float tensors in channels_last layout).
        loader: :class:`sslcourse.data.DeviceBatches` (``loader.epoch(e)`` replays epoch ``e``
            exactly, which makes resuming exact) or any iterable of batches with a ``len``.
        optimizer: built on ``model.parameters()`` (or a subset).
        epochs: total number of epochs, counting those a checkpoint already holds.
        device: where to train.
        scheduler: stepped once per optimisation step (see :func:`cosine_schedule`).
        checkpoint: a file path. After each full epoch model, optimizer, scheduler, history and
            random states are written there (atomically); if the file exists, training
            resumes from it.
        amp: True: bfloat16 autocast on CUDA, and on a CPU with native bf16 where a one-time
            micro-benchmark found it faster (:mod:`sslcourse.cpu_bf16`; never under grading or
            ``SSLCOURSE_FAST``); ``"bf16"``: bfloat16 autocast on any device; False: float32.
        channels_last: NHWC memory layout for the model and image batches (faster convs).
        compile: wrap the model in ``torch.compile`` for the steps (state dicts stay the model's).
        live_plot: draw the live loss curve (only ever in a notebook, and never under nbgrader
            or ``SSLCOURSE_FAST``); pass a :class:`sslcourse.plots.LivePlot` to choose its
            baselines and labels.
        progress: show the progress bar (it writes to stderr outside notebooks).
        desc: label of the progress bar and the plot.
        on_epoch_end: ``on_epoch_end(epoch, model) -> dict`` after each epoch (``epoch`` is
            1-based); the dict's entries join that epoch's record, e.g. a kNN monitor.
        log_every: read the loss back from the device every this many steps.
        keep_memory: on a CPU, keep freed memory in the process while training instead of
            handing large blocks back to the kernel each step (:mod:`sslcourse.allocator`;
            Linux with glibc only; steps 1.3-1.5x faster on the course's machine).
        deadline_s: stop once this many seconds of training (this call's, the monitor
            excluded) have passed. The clock is read when losses are read back, every
            ``log_every`` steps, so the overshoot is at most that many steps. The cut epoch
            gets a record (``partial: True``, ``on_epoch_end`` included) but no checkpoint,
            and ``History.deadline_reached`` is set.
        replicas: this process's place among several (:func:`sslcourse.distributed.start`, under
            ``torchrun``). With more than one process, ``loss_fn`` runs inside
            :class:`~torch.nn.parallel.DistributedDataParallel`, which averages the gradients; the
            recorded losses and metrics are the mean over the processes; batch-norm running statistics
            are averaged before ``on_epoch_end`` and each checkpoint; only rank 0 writes the checkpoint,
            prints and shows progress, and every process resumes from it. ``loader`` then serves this
            process's part of each batch (:class:`sslcourse.distributed.ShardedBatches`).

    Raises:
        NonFiniteLossError: the loss became NaN or Inf (the checkpoint keeps the last good epoch).
        CheckpointError: the checkpoint is unreadable or belongs to another model.

    Ctrl-C stops training after printing one line; the model keeps its weights and the
    returned History has ``interrupted=True``.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    steps = len(loader)
    if steps == 0:
        raise ValueError("The loader yields no batches (is the dataset smaller than one batch?).")
    history = History()
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    start_epoch = 0
    if checkpoint is not None and checkpoint.exists():
        state = load_checkpoint(checkpoint, model, optimizer, scheduler, device)
        start_epoch = state["epoch"]
        history = History(losses=list(state["history"]["losses"]), epochs=list(state["history"]["epochs"]))
        if start_epoch >= epochs:
            print(f"{desc}: the checkpoint {checkpoint} already holds {start_epoch} epochs; nothing to train.")
            return history
        if replicas.is_main:
            print(f"{desc}: resuming from {checkpoint} after epoch {start_epoch} of {epochs}.")
    step_model = torch.compile(model) if compile else model
    compute_loss = _data_parallel(step_model, loss_fn, device, replicas)
    autocast = _autocast(device, amp)
    main = replicas.is_main
    if not main:
        progress, live_plot = False, False

    log = LossLog(history.losses, epochs, steps, read_every=log_every)
    log.checkpoint, log.saved_epochs = checkpoint, start_epoch
    report = Reporter(desc, epochs * steps, start_epoch * steps, progress, live_plot)
    trained_s = 0.0                      # seconds of training in this call, the monitor excluded
    epoch = step_number = start_epoch

    def out_of_time(started: float) -> bool:
        late = deadline_s is not None and trained_s + time.perf_counter() - started >= deadline_s
        return agree(late, replicas) if deadline_s is not None else False   # every process stops at one step

    # On a CPU, large activations are freed and re-allocated every step; keep them in the process
    # instead of returning them to the kernel (see sslcourse.allocator).
    with keep_freed_memory(keep_memory and device.type == "cpu"):
        try:
            for epoch in range(start_epoch, epochs):
                model.train()
                log.start_epoch(epoch)
                started = time.perf_counter()
                cut = False
                for step_number, batch in enumerate(_batches(loader, epoch), start=1):
                    batch = _move(batch, device, channels_last)
                    with autocast:
                        loss, metrics = _split_output(compute_loss(batch))
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    if scheduler is not None:
                        scheduler.step()
                    values = log.add(step_number, *_mean_over_processes(loss, metrics, replicas))
                    report.steps_done(values, epoch, epochs, history.losses, history.epochs)
                    if values and step_number < steps and out_of_time(started):
                        cut = True
                        break
                report.steps_done(log.read_back(), epoch, epochs, history.losses, history.epochs)
                seconds = time.perf_counter() - started
                trained_s += seconds
                record = {"epoch": epoch + 1, **log.epoch_summary(), "lr": optimizer.param_groups[0]["lr"],
                          "time": seconds}
                if cut:
                    record.update(partial=True, steps=step_number)
                average_buffers(model, replicas)
                if on_epoch_end is not None:
                    extra = on_epoch_end(epoch + 1, model) or {}
                    model.train()
                    record.update({k: to_plain(v) for k, v in extra.items()})
                history.epochs.append(record)
                if checkpoint is not None and not cut and main:
                    save_checkpoint(checkpoint, epoch + 1, model, optimizer, scheduler, history.state_dict())
                    log.saved_epochs = epoch + 1
                report.epoch_done(record, history.losses, history.epochs)
                if cut or (deadline_s is not None and agree(trained_s >= deadline_s, replicas) and epoch + 1 < epochs):
                    history.deadline_reached = True
                    print(f"{desc}: stopped at the deadline of {deadline_s:g} s, after {len(history.losses)} "
                          f"steps (epoch {epoch + 1}" + (f", step {step_number}/{steps})." if cut else ")."))
                    break
        except KeyboardInterrupt:
            log.read_back()  # the pending losses are of finished steps; an unfinished step recorded none
            history.interrupted = True
            kept = f"; {checkpoint} holds epoch {log.saved_epochs}" if checkpoint is not None and log.saved_epochs else ""
            print(f"{desc}: interrupted at epoch {epoch + 1}, step {step_number}: the model keeps the weights trained so far{kept}.")
        finally:
            report.close(history.losses, history.epochs)
    return history
