"""One training loop for every notebook: :func:`fit`.

A notebook writes only what its method is about, a ``loss_fn(model, batch)``;
``fit`` does the rest:

* puts the model (and each batch) on the device, in ``channels_last`` layout;
* runs the forward pass under bfloat16 autocast on CUDA (bf16 needs no loss scaling);
* optionally compiles the model with ``torch.compile``;
* on a CPU, keeps freed memory in the process while it trains, so the large activations
  are not faulted in again every step (:mod:`sslcourse.allocator`);
* shows a progress bar (``tqdm.auto``: a widget in a notebook, text elsewhere) and a
  live loss curve in notebooks (:class:`sslcourse.plots.LivePlot`, redrawn at most
  every 1.5 s);
* checkpoints after every epoch and resumes from the checkpoint when rerun, ending
  exactly where an uninterrupted run would;
* stops with :class:`NonFiniteLossError` on a NaN/Inf loss, and stops cleanly on
  Ctrl-C (the "interrupt kernel" button), keeping what was trained.

The loss is read back from the device only every ``log_every`` steps, so the CPU can
queue the next steps while the GPU works.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from .allocator import keep_freed_memory
from .plots import LivePlot, live_plot_allowed

__all__ = ["fit", "History", "NonFiniteLossError", "CheckpointError", "cosine_schedule"]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped."""


class CheckpointError(RuntimeError):
    """A checkpoint could not be read or does not fit the model being trained."""


@dataclass
class History:
    """What :func:`fit` records.

    Attributes:
        losses: the loss of every optimisation step, as floats.
        epochs: one dict per finished epoch: ``epoch`` (1-based), ``loss`` (mean),
            the mean of each metric ``loss_fn`` returned, ``lr``, ``time`` (seconds of
            training, without ``on_epoch_end``), and whatever ``on_epoch_end`` returned.
        interrupted: True when training was stopped by Ctrl-C.
    """

    losses: list[float] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)
    interrupted: bool = False

    def metric(self, name: str) -> list:
        """The per-epoch values of ``name``, e.g. ``history.metric("knn")``."""
        return [e[name] for e in self.epochs if name in e]

    def state_dict(self) -> dict:
        return {"losses": list(self.losses), "epochs": [dict(e) for e in self.epochs]}

    def __repr__(self) -> str:
        last = f", last epoch {self.epochs[-1]}" if self.epochs else ""
        flag = ", interrupted" if self.interrupted else ""
        return f"History({len(self.losses)} steps, {len(self.epochs)} epochs{last}{flag})"


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                    final_fraction: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up for ``warmup_steps``, then cosine decay to ``final_fraction`` of the base lr.

    :func:`fit` steps the scheduler once per optimisation step, so pass
    ``total_steps = epochs * len(loader)``.
    """
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --------------------------------------------------------------------------- helpers

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


def _plain(value: Any) -> Any:
    """A tensor or NumPy value as a Python number or list (checkpoints and JSON hold plain values)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, (np.generic, np.ndarray)):
        return value.item() if value.size == 1 else value.tolist()
    return value


def _autocast(device: torch.device, amp: bool | str):
    """bf16 autocast on CUDA when ``amp`` is True; on any device when ``amp == "bf16"``."""
    if amp == "bf16" or (amp is True and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if amp not in (True, False, "bf16"):
        raise ValueError(f"amp must be True, False or 'bf16', got {amp!r}.")
    return contextlib.nullcontext()


def _rng_state() -> dict:
    """The global random states a ``loss_fn`` may draw from (noise, masks, dropout)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _save_checkpoint(path: Path, state: dict) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path, model: nn.Module, optimizer, scheduler, device: torch.device) -> dict:
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(state, dict) or state.get("format") != "sslcourse.fit/1":
            raise ValueError("not a checkpoint written by sslcourse.train.fit")
    except Exception as error:
        raise CheckpointError(f"Cannot read the checkpoint {path} ({type(error).__name__}: {error}). "
                              "Delete it (or pass another checkpoint path) to train from scratch.") from error
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        raise CheckpointError(f"The checkpoint {path} was written for a different model or optimizer "
                              f"({str(error).splitlines()[0]}). Delete it, or pass another checkpoint path, "
                              "to train this model from scratch.") from error
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    return state


def _non_finite_message(value: float, epoch: int, epochs: int, step: int, steps: int, global_step: int,
                        checkpoint: Path | None, saved_epochs: int) -> str:
    kept = ""
    if checkpoint is not None and saved_epochs > 0:
        kept = (f"\nThe checkpoint {checkpoint} still holds the last good state (after epoch {saved_epochs}); "
                "fix the cause and rerun to resume from there, or delete it to start over.")
    return (f"The loss became {value} at epoch {epoch}/{epochs}, step {step}/{steps} "
            f"(step {global_step} overall). Likely causes:\n"
            "  - the learning rate is too high (try 10x smaller, or a warm-up);\n"
            "  - a log of 0 (use F.log_softmax / F.cross_entropy, or add a small epsilon inside the log);\n"
            "  - a division by a zero norm (use F.normalize, which has an epsilon);\n"
            "  - the loss function returns NaN for some inputs (call it on one batch and check "
            "torch.isfinite on each intermediate)." + kept)


# ------------------------------------------------------------------------------ fit

def fit(model: nn.Module, loss_fn: Callable, loader: Any, optimizer: torch.optim.Optimizer, epochs: int, *,
        device: torch.device | str, scheduler: Any = None, checkpoint: str | os.PathLike | None = None,
        amp: bool | str = True, channels_last: bool = True, compile: bool = False, live_plot: bool = True,
        progress: bool = True, desc: str = "train", on_epoch_end: Callable | None = None,
        log_every: int = 10, keep_memory: bool = True) -> History:
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
        checkpoint: a file path. After each epoch model, optimizer, scheduler, history and
            random states are written there (atomically); if the file exists, training
            resumes from it.
        amp: True: bfloat16 autocast on CUDA, none elsewhere (whether bf16 helps on a CPU
            depends on the processor); ``"bf16"``: bfloat16 autocast on any device; False: float32.
        channels_last: NHWC memory layout for the model and image batches (faster convs).
        compile: wrap the model in ``torch.compile`` for the steps (state dicts stay the model's).
        live_plot: draw the live loss curve (only ever in a notebook, and never under nbgrader
            or ``SSLCOURSE_FAST``).
        progress: show the progress bar (it writes to stderr outside notebooks).
        desc: label of the progress bar and the plot.
        on_epoch_end: ``on_epoch_end(epoch, model) -> dict`` after each epoch (``epoch`` is
            1-based); the dict's entries join that epoch's record, e.g. a kNN monitor.
        log_every: read the loss back from the device every this many steps.
        keep_memory: on a CPU, keep freed memory in the process while training instead of
            handing large blocks back to the kernel each step (:mod:`sslcourse.allocator`;
            Linux with glibc only; steps 1.3-1.5x faster on the course's machine).

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
        state = _load_checkpoint(checkpoint, model, optimizer, scheduler, device)
        start_epoch = state["epoch"]
        history = History(losses=list(state["history"]["losses"]), epochs=list(state["history"]["epochs"]))
        if start_epoch >= epochs:
            print(f"{desc}: the checkpoint {checkpoint} already holds {start_epoch} epochs; nothing to train.")
            return history
        print(f"{desc}: resuming from {checkpoint} after epoch {start_epoch} of {epochs}.")
    step_model = torch.compile(model) if compile else model
    autocast = _autocast(device, amp)

    from tqdm.auto import tqdm

    bar = tqdm(total=epochs * steps, initial=start_epoch * steps, desc=desc, disable=not progress,
               dynamic_ncols=True, unit="step")
    live = LivePlot(title=desc, enabled=live_plot and live_plot_allowed())
    saved_epochs = start_epoch
    epoch = step = start_epoch
    pending: list[tuple[torch.Tensor, dict]] = []  # losses and metrics not yet read back from the device
    epoch_losses: list[float] = []
    epoch_metrics: dict[str, list[float]] = defaultdict(list)

    def read_back() -> None:
        """One device-to-host transfer for the pending losses; checks them, logs them."""
        if not pending:
            return
        values = torch.stack([loss.float() for loss, _ in pending]).tolist()
        first_step = step - len(pending) + 1
        for i, value in enumerate(values):
            if not math.isfinite(value):
                at = first_step + i
                raise NonFiniteLossError(_non_finite_message(value, epoch + 1, epochs, at, steps,
                                                             epoch * steps + at, checkpoint, saved_epochs))
        for _, metrics in pending:
            for name, value in metrics.items():
                epoch_metrics[name].append(float(np.mean(_plain(value))))
        history.losses.extend(values)
        epoch_losses.extend(values)
        bar.update(len(values))
        bar.set_postfix_str(f"epoch {epoch + 1}/{epochs}, loss {np.mean(values):.4f}", refresh=False)
        pending.clear()
        live.update(history.losses, history.epochs)

    # On a CPU, large activations are freed and re-allocated every step; keep them in the process
    # instead of returning them to the kernel (see sslcourse.allocator).
    with keep_freed_memory(keep_memory and device.type == "cpu"):
        try:
            for epoch in range(start_epoch, epochs):
                model.train()
                started = time.perf_counter()
                epoch_losses.clear()
                epoch_metrics.clear()
                for step, batch in enumerate(_batches(loader, epoch), start=1):
                    batch = _move(batch, device, channels_last)
                    with autocast:
                        loss, metrics = _split_output(loss_fn(step_model, batch))
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    if scheduler is not None:
                        scheduler.step()
                    pending.append((loss.detach(), {k: v.detach() if isinstance(v, torch.Tensor) else v
                                                    for k, v in metrics.items()}))
                    if len(pending) >= log_every:
                        read_back()
                read_back()
                record = {"epoch": epoch + 1, "loss": float(np.mean(epoch_losses)) if epoch_losses else float("nan")}
                record.update({name: float(np.mean(values)) for name, values in epoch_metrics.items()})
                record["lr"] = optimizer.param_groups[0]["lr"]
                record["time"] = time.perf_counter() - started  # training only, not the monitor below
                if on_epoch_end is not None:
                    extra = on_epoch_end(epoch + 1, model) or {}
                    model.train()
                    record.update({k: _plain(v) for k, v in extra.items()})
                history.epochs.append(record)
                if checkpoint is not None:
                    _save_checkpoint(checkpoint, {
                        "format": "sslcourse.fit/1", "epoch": epoch + 1, "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict() if scheduler is not None else None,
                        "history": history.state_dict(), "rng": _rng_state(),
                    })
                    saved_epochs = epoch + 1
                bar.set_postfix_str(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                              for k, v in record.items() if k not in ("lr", "time")))
                live.update(history.losses, history.epochs)
        except KeyboardInterrupt:
            read_back()  # the pending losses are of finished steps; an unfinished step recorded none
            history.interrupted = True
            bar.close()
            kept = f"; {checkpoint} holds epoch {saved_epochs}" if checkpoint is not None and saved_epochs else ""
            print(f"{desc}: interrupted at epoch {epoch + 1}, step {step}: the model keeps the weights trained so far{kept}.")
        finally:
            bar.close()
            live.close(history.losses, history.epochs)
    return history
