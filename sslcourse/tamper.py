"""Tampering with the grading: a static scan of submissions and a check at test time.

Threat model. A submission's code runs in the same kernel as the test cells, so it can replace
anything Python can reach: the course's check helpers (``checks.check_close = lambda *a: None``),
torch's comparison functions, builtins, or whole modules in ``sys.modules``. Two defences, each
covering what the other cannot:

* :func:`scan_source` / :func:`scan_notebook` read a submission's code *outside* its kernel (the
  grading report runs them on the submitted file), so nothing the submission does at run time can
  reach them. They flag assignments to attributes of modules and builtins, ``setattr`` /
  ``delattr`` on them, writes to ``sys.modules``, ``__builtins__`` and ``globals()``, module reloads,
  and dynamic code (``exec``, ``eval``, ``compile``, ``__import__``) that would hide all of that.
  A flag is not a verdict: it puts the submission on the instructor's list for manual review,
  naming the cell and the line.
* :func:`verify` runs inside the kernel, at every :func:`sslcourse.checks.student` call and every
  check: it compares the check helpers, the torch functions and tensor methods the checks rely on,
  and the builtins with the objects they were when the course's code was imported. A replaced
  one fails the test cell with "tampering detected", so the points are not collected silently.

Not covered: code that patches in a way the scan cannot see (e.g. through a C extension or a
file written and imported later) *and* leaves every object :func:`verify` watches in place, such as
hard-coding answers for the visible inputs (the hidden tests use other inputs for that), or
reading the hidden tests from disk (the sandbox of ``sslcourse autograde``, :mod:`sslcourse.sandbox`,
is the defence there: solutions/ and the gradebook are not in the kernel's file system).
"""
from __future__ import annotations

import ast
import builtins
import sys
from dataclasses import dataclass
from typing import Iterable

import torch

__all__ = ["Finding", "scan_source", "scan_notebook", "TamperingError", "snapshot", "verify"]

# Names whose attributes a submission has no business assigning.
_MODULE_ROOTS = {"torch", "F", "nn", "np", "numpy", "checks", "sslcourse", "builtins", "sys", "math", "os",
                 "importlib", "functools", "__builtins__", "random", "time", "warnings", "IPython",
                 "ipykernel"}
_DYNAMIC = {"exec", "eval", "compile", "__import__"}
_REFLECTIVE = {"setattr", "delattr"}
_ALLOWED_SETTINGS = ("torch.backends.",)        # performance switches a student may set


@dataclass(frozen=True)
class Finding:
    """One suspicious construct: the line of the cell's source and what it does."""

    line: int
    what: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.what}"


def _root(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _dotted(node: ast.AST) -> str:
    try:
        return ast.unparse(node)
    except Exception:                                   # noqa: BLE001 (only for the message)
        return type(node).__name__


def _imported_names(tree: ast.AST) -> set[str]:
    """Every name an import statement binds (``import torch as t`` binds ``t``): module aliases."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


class _Scanner(ast.NodeVisitor):
    def __init__(self, roots: set[str]) -> None:
        self.findings: list[Finding] = []
        self.roots = roots

    def _flag(self, node: ast.AST, what: str) -> None:
        self.findings.append(Finding(getattr(node, "lineno", 0), what))

    def _check_target(self, target: ast.AST, node: ast.AST) -> None:
        if isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                self._check_target(element, node)
            return
        if isinstance(target, ast.Attribute) and _root(target) in self.roots \
                and not _dotted(target).startswith(_ALLOWED_SETTINGS):
            self._flag(node, f"assigns {_dotted(target)} (replaces part of a module the tests rely on)")
        elif isinstance(target, ast.Subscript):
            text = _dotted(target.value)
            if text in ("sys.modules", "__builtins__", "globals()", "vars(builtins)") or _root(target) == "__builtins__":
                self._flag(node, f"writes {_dotted(target)}")
        elif isinstance(target, ast.Name) and target.id in ("__builtins__",):
            self._flag(node, "rebinds __builtins__")

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            self._check_target(target, node)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._check_target(node.target, node)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._check_target(node.target, node)
        self.generic_visit(node)

    def visit_Delete(self, node: ast.Delete) -> None:
        for target in node.targets:
            if isinstance(target, ast.Attribute) and _root(target) in self.roots:
                self._flag(node, f"deletes {_dotted(target)}")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        name = node.func.id if isinstance(node.func, ast.Name) else (
            node.func.attr if isinstance(node.func, ast.Attribute) else None)
        if name in _DYNAMIC and isinstance(node.func, ast.Name):
            self._flag(node, f"calls {name}() (dynamic code the scan cannot read)")
        elif name in _REFLECTIVE and node.args and _root(node.args[0]) in self.roots | {"type"}:
            self._flag(node, f"calls {name}({_dotted(node.args[0])}, ...)")
        elif name == "reload":
            self._flag(node, f"reloads a module: {_dotted(node)}")
        elif name in ("update", "__setitem__", "pop", "clear") and isinstance(node.func, ast.Attribute) \
                and _dotted(node.func.value) in ("sys.modules", "builtins.__dict__", "globals()"):
            self._flag(node, f"changes {_dotted(node.func.value)}")
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name == "ctypes" or alias.name.startswith("importlib"):
                self._flag(node, f"imports {alias.name} (can rewrite objects the tests rely on)")
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module == "ctypes" or (node.module or "").startswith("importlib"):
            self._flag(node, f"imports from {node.module}")
        self.generic_visit(node)


def _parse(source: str) -> ast.Module:
    lines = [("" if line.lstrip().startswith(("%", "!")) else line) for line in source.splitlines()]
    return ast.parse("\n".join(lines))


def scan_source(source: str, modules: set[str] | None = None) -> list[Finding]:
    """Suspicious constructs in one code cell's source (IPython magics and shell lines are skipped).

    ``modules``: names known to be modules (imported in other cells); the cell's own imports,
    aliases included, and the usual module names count too.
    """
    try:
        tree = _parse(source)
    except SyntaxError as error:
        return [Finding(error.lineno or 0, f"does not parse ({error.msg}); read it by hand")]
    scanner = _Scanner(_MODULE_ROOTS | (modules or set()) | _imported_names(tree))
    scanner.visit(tree)
    return scanner.findings


def scan_notebook(nb, release=None) -> list[tuple[str, Finding]]:
    """``(cell, finding)`` for the code cells of a submission (nbformat node or dict).

    With ``release`` (the student release of the same notebook), cells whose source is the
    release's own are skipped: only what the student wrote is scanned.
    """
    def cells(notebook) -> Iterable[dict]:
        return notebook["cells"] if isinstance(notebook, dict) else notebook.cells

    released = set()
    if release is not None:
        released = {"".join(c["source"]) if isinstance(c["source"], list) else c["source"]
                    for c in cells(release) if c["cell_type"] == "code"}
    sources = [("".join(c["source"]) if isinstance(c["source"], list) else c["source"], c, i)
               for i, c in enumerate(cells(nb)) if c["cell_type"] == "code"]
    modules: set[str] = set()
    for source, _, _ in sources:             # an alias imported in one cell is a module in every cell
        try:
            modules |= _imported_names(_parse(source))
        except SyntaxError:
            pass
    found = []
    for source, cell, index in sources:
        if source in released:
            continue
        name = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id") or f"cell {index + 1}"
        found.extend((name, finding) for finding in scan_source(source, modules))
    return found


# --------------------------------------------------------------------------- at test time

class TamperingError(AssertionError):
    """An object the checks rely on was replaced while the notebook ran."""


_TORCH_FUNCTIONS = ("allclose", "equal", "isclose", "isfinite", "as_tensor", "tensor", "testing")
_TENSOR_METHODS = ("__eq__", "__ne__", "__lt__", "__gt__", "__le__", "__ge__", "__bool__", "all", "any", "abs",
                   "item", "sum", "max", "to", "double", "float", "tolist", "detach", "cpu", "numel", "dim")
_BUILTINS = ("isinstance", "len", "abs", "all", "any", "float", "int", "bool", "print", "max", "min", "sum",
             "type", "callable", "getattr", "hasattr", "repr", "str", "round", "zip", "range")

_snapshot: dict[str, object] = {}


def _watched() -> dict[str, object]:
    watched = {f"torch.{name}": getattr(torch, name, None) for name in _TORCH_FUNCTIONS}
    watched.update({f"torch.Tensor.{name}": torch.Tensor.__dict__.get(name, getattr(torch.Tensor, name, None))
                    for name in _TENSOR_METHODS})
    watched.update({f"builtins.{name}": getattr(builtins, name, None) for name in _BUILTINS})
    checks = sys.modules.get("sslcourse.checks")
    if checks is not None:
        watched.update({f"sslcourse.checks.{name}": getattr(checks, name, None)
                        for name in ("check_tensor", "check_close", "check_equal", "check_true", "student",
                                     "needs", "ok", "_fail")})
    watched["sys.modules['sslcourse.checks']"] = checks
    watched["sys.modules['torch']"] = sys.modules.get("torch")
    return watched


def snapshot() -> None:
    """Remember the watched objects, once: when :mod:`sslcourse.checks` is first imported.

    A later call (a reload of ``sslcourse.checks``) keeps the first snapshot, so reloading cannot
    launder a patched function into the originals; the reloaded helpers then fail :func:`verify`.
    """
    if not _snapshot:
        _snapshot.update(_watched())


def verify() -> None:
    """Raise :class:`TamperingError` naming every watched object that is no longer the original."""
    if not _snapshot:   # checks takes it on import, so only a reload of this module empties it
        raise TamperingError("tampering detected: the integrity snapshot of sslcourse.tamper is gone "
                             "(the module was reloaded). This test cannot give points; the instructor "
                             "will review the submission by hand.")
    now = _watched()
    changed = sorted(name for name, original in _snapshot.items() if now.get(name) is not original)
    if changed:
        raise TamperingError(f"tampering detected: {', '.join(changed)} no longer the course's original "
                             f"(replaced while the notebook ran). This test cannot give points; the "
                             f"instructor will review the submission by hand.")
