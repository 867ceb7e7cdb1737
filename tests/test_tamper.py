"""Tampering with the grading: the static scan flags it, the check at test time fails it."""
from __future__ import annotations

import builtins
import json

import pytest
import torch

from conftest import RELEASE, SOLUTIONS, assignment_ids, notebook_path
from sslcourse import checks, tamper

TAMPERING = {
    "silences a check": "checks.check_close = lambda *a, **k: None",
    "through an alias": "from sslcourse import checks as c\nc.check_true = print",
    "patches torch": "import torch\ntorch.allclose = lambda *a, **k: True",
    "setattr on a module": "import torch\nsetattr(torch, 'equal', lambda a, b: True)",
    "tensor comparison": "import torch\ntorch.Tensor.__eq__ = lambda a, b: True",
    "builtins": "import builtins\nbuiltins.isinstance = lambda *a: True",
    "__builtins__": "__builtins__['len'] = lambda x: 0",
    "sys.modules": "import sys\nsys.modules['sslcourse.checks'] = None",
    "reload": "import importlib\nimportlib.reload(checks)",
    "exec hides code": "exec('checks.ok = None')",
    "ctypes": "import ctypes",
}


@pytest.mark.parametrize("what", TAMPERING)
def test_scan_flags_tampering(what):
    findings = tamper.scan_source(TAMPERING[what])
    assert findings, f"the scan missed: {what}"
    assert all(f.line >= 1 and f.what for f in findings)


def test_scan_leaves_ordinary_student_code_alone():
    ordinary = """
import torch
import torch.nn.functional as F
torch.backends.cudnn.benchmark = True
def moco_step(moco, x_q, x_k):
    q = F.normalize(moco.query_encoder(x_q), dim=1)
    moco.pointer = (moco.pointer + len(q)) % len(moco.queue)
    cache = {}
    cache["q"] = q
    return q.sum(), {"pretext_acc": 50.0}
"""
    assert tamper.scan_source(ordinary) == []


@pytest.mark.parametrize("assignment", assignment_ids())
def test_the_solutions_raise_no_flag(assignment):
    solution = json.loads(notebook_path(SOLUTIONS, assignment).read_text())
    assert tamper.scan_notebook(solution) == []
    release = json.loads(notebook_path(RELEASE, assignment).read_text())
    assert tamper.scan_notebook(solution, release) == []


def test_scan_of_a_notebook_names_the_cell_and_skips_release_cells():
    nb = {"cells": [{"cell_type": "code", "metadata": {}, "source": "from sslcourse import checks as c\n"},
                    {"cell_type": "code", "metadata": {"nbgrader": {"grade_id": "my_answer"}},
                     "source": ["def f(x):\n", "    return x\n", "c.check_equal = f\n"]}]}
    found = tamper.scan_notebook(nb)
    assert [(cell, finding.line) for cell, finding in found] == [("my_answer", 3)]
    assert tamper.scan_notebook(nb, release=nb) == []


@pytest.mark.parametrize("target, name", [(checks, "check_close"), (torch, "allclose"), (builtins, "isinstance"),
                                          (torch.Tensor, "__eq__")])
def test_a_replaced_object_fails_every_check(monkeypatch, target, name):
    checks.check_true(True, "untouched: passes")
    original = getattr(target, name)
    monkeypatch.setattr(target, name, (lambda *a, **k: True) if name != "isinstance" else
                        (lambda obj, cls, _orig=original: _orig(obj, cls)))
    with pytest.raises(tamper.TamperingError, match=f"tampering detected: .*{name}"):
        checks.check_true(True, "after the patch")
    monkeypatch.undo()
    checks.check_true(True, "restored: passes again")


def test_a_student_function_cannot_run_once_checks_are_silenced(monkeypatch):
    monkeypatch.setattr(checks, "check_tensor", lambda *a, **k: None)
    with pytest.raises(tamper.TamperingError):
        checks.student(lambda x: x)(1)


def test_reloading_does_not_launder_a_patch(monkeypatch):
    import importlib

    import sslcourse.tamper as module

    saved = dict(module._snapshot)
    try:
        importlib.reload(module)          # empties the snapshot: every check now fails
        with pytest.raises(tamper.TamperingError, match="snapshot .* is gone"):
            module.verify()
    finally:
        module._snapshot.update(saved)
    checks.check_true(True, "snapshot restored")
