"""The solution notebook's exercise functions, for the benchmarks: one shared loader
(:func:`sslcourse.pretrain.functions_from_notebook`, which ``sslcourse pretrain`` uses too).

A benchmark must measure what students run: the recipe in ``sslcourse/recipes/<method>.py``
called with correct exercise functions. Those functions live only in the solution notebook
(graded code stays out of the package), so this helper executes the notebook's imports cell
and its solution cells (``nbgrader.solution: true``, code only) into a fresh namespace and
returns the functions asked for. No setup cell runs, so no dataset is loaded and nothing is
printed. The ipynb is read as plain JSON (no nbformat needed on a bare GPU machine), and
tracebacks point at ``<notebook>#<grade_id>``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]


def notebook_path(assignment: str) -> Path:
    """``solutions/<assignment>/<assignment>.ipynb``."""
    return ROOT / "solutions" / assignment / f"{assignment}.ipynb"


def solution_functions(assignment: str, names: list[str] | tuple[str, ...]) -> dict[str, Callable]:
    """``{name: function}`` for each of ``names``, as the solution notebook of ``assignment`` defines them.

    Raises:
        SystemExit: the notebook is missing, holds no solutions (a student release), or defines
            no function of one of the names.
    """
    from sslcourse.pretrain import functions_from_notebook

    try:
        return functions_from_notebook(notebook_path(assignment), names)
    except ValueError as error:
        raise SystemExit(f"bench: {error}") from error
