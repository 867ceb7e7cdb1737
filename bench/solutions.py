"""The solution notebook's exercise functions, for the benchmarks: one shared loader.

A benchmark must measure what students run: the recipe in ``sslcourse/recipes/<method>.py``
called with correct exercise functions. Those functions live only in the solution notebook
(graded code stays out of the package), so this helper executes the notebook's imports cell
and its solution cells (``nbgrader.solution: true``, code only) into a fresh namespace and
returns the functions asked for. No setup cell runs, so no dataset is loaded and nothing is
printed. The ipynb is read as plain JSON (no nbformat needed on a bare GPU machine), and
tracebacks point at ``<notebook>#<grade_id>``.
"""
from __future__ import annotations

import json
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
    path = notebook_path(assignment)
    if not path.exists():
        raise SystemExit(f"bench: expected the instructor notebook at {path}, found no file.")
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    namespace: dict = {"__name__": f"{assignment}_solutions"}
    ran_solution = False
    for cell in cells:
        nbgrader = cell.get("metadata", {}).get("nbgrader", {})
        grade_id = nbgrader.get("grade_id", "?")
        if cell["cell_type"] != "code" or not (grade_id == "imports" or nbgrader.get("solution")):
            continue
        source = "".join(cell["source"])
        if nbgrader.get("solution"):
            if "### BEGIN SOLUTION" not in source:
                raise SystemExit(f"bench: {path} holds no solutions (a student release?); "
                                 f"point it at solutions/{assignment}/{assignment}.ipynb.")
            ran_solution = True
        exec(compile(source, f"{path}#{grade_id}", "exec"), namespace)
    if not ran_solution:
        raise SystemExit(f"bench: {path} has no solution cells.")
    missing = [name for name in names if not callable(namespace.get(name))]
    if missing:
        raise SystemExit(f"bench: the solution cells of {path} define no function {', '.join(missing)}.")
    return {name: namespace[name] for name in names}
