"""Student-facing checks that say *what was expected and what came instead*.

Test cells call these before any numeric comparison, so a wrong shape reads as
"expected shape (8, 8), got (8, 16)" rather than as a broadcasting error deep
inside a formula. Every check raises :class:`AssertionError` on failure and
prints one line to **stdout** on success. Nothing here writes to stderr:
nbgrader scores a test cell that does as 0.

Numeric comparisons happen in float64 on the CPU, with the tolerances stated
in the call, so they do not depend on the student's device or dtype.
"""
from __future__ import annotations

import contextlib
import functools
import io
import os
import sys
import tempfile
import warnings
from typing import Any, Callable, Iterator, Sequence

import torch

from . import tamper


def ok(message: str) -> None:
    """Report a passed check on stdout."""
    print(f"✔ {message}")


def _fail(message: str) -> None:
    raise AssertionError(message)


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}, dtype {value.dtype}, on {value.device}"
    return f"{type(value).__name__} {value!r}"[:200]


def check_tensor(name: str, got: Any, *, shape: Sequence[int | None] | None = None,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                 finite: bool = True) -> None:
    """Check that ``got`` is a tensor with the expected shape, dtype, device and finite values.

    ``None`` inside ``shape`` matches any size along that dimension.
    """
    tamper.verify()
    if not isinstance(got, torch.Tensor):
        _fail(f"{name}: expected a torch.Tensor, got {_describe(got)}.")
    if shape is not None:
        shape = tuple(shape)
        got_shape = tuple(got.shape)
        if len(got_shape) != len(shape) or any(e is not None and e != g for e, g in zip(shape, got_shape)):
            shown = tuple("any" if e is None else e for e in shape)
            _fail(f"{name}: expected shape {shown}, got {got_shape}.")
    if dtype is not None and got.dtype != dtype:
        _fail(f"{name}: expected dtype {dtype}, got {got.dtype}.")
    if device is not None and got.device.type != torch.device(device).type:
        _fail(f"{name}: expected a tensor on {torch.device(device).type}, got one on {got.device.type}.")
    if finite and got.is_floating_point() and not torch.isfinite(got).all():
        bad = (~torch.isfinite(got)).sum().item()
        _fail(f"{name}: expected only finite values, got {bad} NaN or Inf entries out of {got.numel()}.")
    ok(f"{name}: shape {tuple(got.shape)}, dtype {got.dtype}, device {got.device.type}")


def check_close(name: str, got: Any, expected: Any, *, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    """Check ``|got - expected| <= atol + rtol * |expected|`` elementwise, in float64 on the CPU."""
    tamper.verify()
    got_t = torch.as_tensor(got.detach() if isinstance(got, torch.Tensor) else got).to("cpu", torch.float64)
    exp_t = torch.as_tensor(expected.detach() if isinstance(expected, torch.Tensor) else expected).to("cpu", torch.float64)
    if got_t.shape != exp_t.shape:
        _fail(f"{name}: expected shape {tuple(exp_t.shape)}, got {tuple(got_t.shape)}.")
    if not torch.isfinite(got_t).all():
        _fail(f"{name}: expected finite values, got NaN or Inf.")
    err = (got_t - exp_t).abs()
    allowed = atol + rtol * exp_t.abs()
    if (err > allowed).any():
        i = int(torch.argmax(err - allowed).item())
        idx = tuple(int(v) for v in torch.unravel_index(torch.tensor(i), got_t.shape)) if got_t.dim() else ()
        _fail(f"{name}: values differ. At index {idx} expected {exp_t.flatten()[i].item():.6g}, "
              f"got {got_t.flatten()[i].item():.6g} (tolerance atol={atol:g}, rtol={rtol:g}; "
              f"{int((err > allowed).sum())} of {err.numel()} entries off).")
    ok(f"{name}: values match within atol={atol:g}, rtol={rtol:g}")


def check_equal(name: str, got: Any, expected: Any) -> None:
    """Check exact equality (integers, labels, strings, shapes)."""
    tamper.verify()
    if isinstance(got, torch.Tensor) or isinstance(expected, torch.Tensor):
        g, e = torch.as_tensor(got).cpu(), torch.as_tensor(expected).cpu()
        if g.shape != e.shape:
            _fail(f"{name}: expected shape {tuple(e.shape)}, got {tuple(g.shape)}.")
        if not torch.equal(g.to(e.dtype), e):
            i = int((g.to(e.dtype) != e).flatten().nonzero()[0])
            _fail(f"{name}: expected {e.flatten()[i].item()} at flat index {i}, got {g.flatten()[i].item()}.")
    elif got != expected:
        _fail(f"{name}: expected {expected!r}, got {got!r}.")
    ok(f"{name}: as expected")


def check_true(condition: bool, message: str) -> None:
    """Check a property; ``message`` says what was expected (and may include what came instead)."""
    tamper.verify()
    if not condition:
        _fail(message)
    ok(message.split(":")[0] if ":" in message else message)


@contextlib.contextmanager
def _stderr_captured() -> Iterator[io.StringIO]:
    """Capture what is written to stderr, by Python (``sys.stderr``) and below it (file descriptor 2).

    nbgrader scores a test cell that writes to stderr as 0, so a correct function that prints a
    debug line or a progress bar would lose its points. The captured text is reported on stdout.
    """
    captured = io.StringIO()
    saved_fd = None
    with tempfile.TemporaryFile(mode="w+b") as below:
        try:
            sys.stderr.flush()
            saved_fd = os.dup(2)
            os.dup2(below.fileno(), 2)
        except (OSError, ValueError, AttributeError):   # no fd 2 (some embedded interpreters)
            saved_fd = None
        try:
            with contextlib.redirect_stderr(captured):
                yield captured
        finally:
            if saved_fd is not None:
                os.dup2(saved_fd, 2)
                os.close(saved_fd)
                size = below.seek(0, os.SEEK_END)
                below.seek(0)
                captured.write(below.read(4096).decode("utf-8", "replace"))   # enough for the note
                if size > 4096:
                    captured.write(f" ... ({size:,} bytes in all)")


def _report_notes(name: str, caught: list, stderr_text: str) -> None:
    for warning in caught:
        ok(f"note: {name} warned ({warning.category.__name__}: {str(warning.message)[:200]}); "
           "shown here so that the warning costs no points")
    text = stderr_text.strip()
    if text:
        shown = text if len(text) <= 300 else text[:300] + f" ... ({len(text):,} characters)"
        ok(f"note: {name} wrote to stderr, shown here instead: {shown}")


def student(fn: Callable) -> Callable:
    """Wrap a student function for a test cell: clear messages, and no harmless way to lose points.

    ``rotate_batch = student(rotate_batch)`` turns the stub's bare ``NotImplementedError`` into
    "rotate_batch is not implemented yet ...". Python warnings the function emits, and anything it
    writes to stderr (a debug print, a tqdm bar), are captured and reported on stdout as notes:
    nbgrader would otherwise score the whole test cell 0 for writing to stderr.
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        tamper.verify()
        with warnings.catch_warnings(record=True) as caught, _stderr_captured() as stderr_text:
            warnings.simplefilter("always")
            try:
                result = fn(*args, **kwargs)
            except NotImplementedError as error:
                raise NotImplementedError(
                    f"{fn.__name__} is not implemented yet: complete the cell that defines it "
                    f"(between '# YOUR CODE HERE' markers) and run that cell again.") from error
            finally:
                pending = list(caught)
        _report_notes(getattr(fn, "__name__", "the function"), pending, stderr_text.getvalue())
        return result
    return wrapper


def needs(fn: Callable, purpose: str) -> Callable:
    """Like :func:`student`, for code further down that depends on ``fn``.

    Any exception inside ``fn`` is re-raised with "<purpose> needs <fn>, which failed: ...".
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NotImplementedError as error:
            raise NotImplementedError(f"{purpose} needs your {fn.__name__}, which is not implemented yet: "
                                      f"complete that exercise first, then run this cell again.") from error
        except Exception as error:
            raise RuntimeError(f"{purpose} needs your {fn.__name__}, which failed with "
                               f"{type(error).__name__}: {error}") from error
    return wrapper


def require(namespace: dict, made_by: dict[str, str], *names: str) -> None:
    """Stop a notebook cell with a clear message when a result of an earlier cell is missing.

    ``namespace`` is the notebook's ``globals()``; ``made_by`` maps each result's name to the
    part of the notebook that makes it. A name that is absent, or still ``None`` because the cell
    that sets it failed, raises "This cell needs `name`: run <part> first ...". Notebooks bind it
    once: ``require = functools.partial(checks.require, globals(), MADE_BY)``.
    """
    for name in names:
        if namespace.get(name) is None:
            raise RuntimeError(f"This cell needs `{name}`: run {made_by[name]} first; it failed or was not run.")


tamper.snapshot()   # the originals, as imported: sslcourse.tamper.verify compares against them
