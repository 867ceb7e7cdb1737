"""The class report: every assignment of the course at a glance, read from nbgrader's gradebook.

The grading report (:mod:`sslcourse.report`) looks at one assignment, one submission per line. At class
scale an instructor asks other questions: how did the class do, which exercise did it struggle with,
how long does a submission take to grade, and who must be looked at by hand. ``sslcourse class-report
[ID ...]`` answers them in two files of the course's ``reports/`` folder:

``class.html``
    one self-contained page (the plots are PNG images embedded as base64, drawn with matplotlib's Agg
    backend; no other file, no JavaScript), with, per assignment: the histogram of the automatic
    scores (the maximum marked); the pass rate of each autograded test cell (the share of submissions
    that got all of the cell's points), hardest first and the hardest in red; the seconds each
    submission took to grade; and the submissions that need review, with why (from
    :func:`sslcourse.report.build_report`: tamper flags, what the sandbox stopped, stripped metadata,
    timeouts, dead kernels, no grade).
``class.csv``
    for the registrar: one row per student, one column per assignment (its automatic score), then the
    total and the maximum. A missing submission is an empty cell, not 0: "did not submit" and "scored
    nothing" are different facts. (``nbgrader export`` still writes nbgrader's own CSV of every grade.)

What it reads:

* the gradebook, through nbgrader's API (:class:`nbgrader.api.Gradebook`) at
  :func:`sslcourse.grading.gradebook_url` (``gradebook.db`` in the course, or ``--db URL``). Automatic
  points are the ``auto_score`` of the code grade cells, as in the grading report; manually graded
  answers are not in it.
* the time per submission: ``reports/times/<ID>.json``, ``{student: seconds}`` (written by the
  parallel ``sslcourse autograde``), else the ``"seconds"`` of each ``reports/sandbox/<ID>/<student>.json``
  (the sandbox's record of a kernel); the page says "not recorded" when neither exists.
* ``submitted/`` and ``autograded/`` through :func:`sslcourse.report.build_report`, for the flags.

Student ids, file names and error messages come from submissions, which may be hostile: every string
is HTML-escaped on the page, and a CSV cell that a spreadsheet would run as a formula is defused.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .files import atomic_write
from .grading import gradebook_url
from .report import SubmissionReport, build_report

__all__ = ["AssignmentGrades", "ClassReport", "read_gradebook", "read_times", "review_reasons", "registrar_csv",
           "class_html", "write_class_report"]

# A test cell passes when it got its points; nbgrader stores them as floats.
_FULL = 1e-9


# --- Reading -------------------------------------------------------------------------------------

@dataclass
class AssignmentGrades:
    """What the gradebook says about one assignment, as plain numbers (read once, the database closed)."""

    name: str
    max_score: float = 0.0                                    # automatic points available
    scores: dict[str, float] = field(default_factory=dict)    # student -> automatic points, per submission
    cells: dict[str, float] = field(default_factory=dict)     # test cell label -> its points
    passed: dict[str, int] = field(default_factory=dict)      # test cell label -> submissions with all its points

    def pass_rates(self) -> dict[str, float]:
        """The share of submissions that got all of each test cell's points (empty without submissions)."""
        if not self.scores:
            return {}
        return {label: self.passed.get(label, 0) / len(self.scores) for label in self.cells}


def _cell_label(notebook: str, cell: str, several_notebooks: bool) -> str:
    """Grade ids are unique within a notebook only: name the notebook too when the assignment has several."""
    return f"{notebook}: {cell}" if several_notebooks else cell


def _assignment_grades(gradebook, name: str) -> AssignmentGrades:
    """Read one assignment's test cells and submissions from an open gradebook."""
    assignment = gradebook.find_assignment(name)
    several = len(assignment.notebooks) > 1
    grades = AssignmentGrades(name)
    for notebook in assignment.notebooks:
        for cell in notebook.grade_cells:
            if cell.cell_type != "code":            # markdown grade cells are graded by hand
                continue
            grades.max_score += cell.max_score
            if cell.max_score > 0:                  # a cell worth nothing cannot be failed
                grades.cells[_cell_label(notebook.name, cell.name, several)] = cell.max_score
    grades.passed = dict.fromkeys(grades.cells, 0)
    for submission in gradebook.assignment_submissions(name):
        total = 0.0
        for notebook in submission.notebooks:
            for grade in notebook.grades:
                if grade.cell.cell_type != "code":
                    continue
                points = grade.auto_score or 0.0    # None: the cell was not autograded, so no points
                total += points
                label = _cell_label(notebook.name, grade.name, several)
                if label in grades.passed and points >= grade.max_score - _FULL:
                    grades.passed[label] += 1
        grades.scores[submission.student.id] = total
    return grades


def read_gradebook(url: str, assignments: list[str] | None = None) -> tuple[list[str], list[AssignmentGrades]]:
    """The students (sorted ids) and the grades of ``assignments`` (default: all, sorted by name).

    Raises ``FileNotFoundError`` for a sqlite gradebook that does not exist (nbgrader would create an
    empty one), and ``ValueError`` for an assignment the gradebook does not know.
    """
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        raise FileNotFoundError(f"no gradebook at {url[len('sqlite:///'):]}: autograde an assignment first")
    from nbgrader.api import Gradebook

    with Gradebook(url) as gradebook:
        known = sorted(assignment.name for assignment in gradebook.assignments)
        unknown = [name for name in assignments or () if name not in known]
        if unknown:
            raise ValueError(f"not in the gradebook: {', '.join(unknown)} (it has: {', '.join(known) or 'none'})")
        grades = [_assignment_grades(gradebook, name) for name in (assignments or known)]
        students = {student.id for student in gradebook.students}
    students |= {student for g in grades for student in g.scores}
    return sorted(students), grades


def _seconds(mapping) -> dict[str, float]:
    """The entries of ``mapping`` whose value is a finite number of seconds (bool is not one)."""
    if not isinstance(mapping, dict):
        return {}
    return {str(student): float(value) for student, value in mapping.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}


def _read_json(path: Path):
    """A JSON file's content, or None when it cannot be read (a half-written or mangled file is no timing)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_times(course: Path | str, assignment: str) -> tuple[dict[str, float], str]:
    """Seconds per submission and where they came from; ``({}, "not recorded")`` when nothing says."""
    course = Path(course)
    times_file = course / "reports" / "times" / f"{assignment}.json"
    seconds = _seconds(_read_json(times_file)) if times_file.exists() else {}
    if seconds:
        return seconds, f"reports/times/{assignment}.json"
    # Before the parallel autograde wrote times, the sandbox's record of each kernel had them.
    for record in sorted((course / "reports" / "sandbox" / assignment).glob("*.json")):
        seconds.update(_seconds({record.stem: (_read_json(record) or {}).get("seconds")}))
    if seconds:
        return seconds, f"the sandbox's records, reports/sandbox/{assignment}/"
    return {}, "not recorded"


def review_reasons(report: SubmissionReport) -> list[str]:
    """Why a submission needs review, one line per reason (empty when it does not)."""
    reasons = [f"tamper: {flag}" for flag in report.tamper]
    reasons += [f"sandbox: {what}" for what in report.sandbox]
    reasons += report.structure             # stripped metadata, duplicated or deleted cells, not autograded
    if report.timed_out:
        reasons.append(f"timed out: {', '.join(report.timed_out)}")
    if report.kernel_died:
        reasons.append("the kernel died")
    if report.score is None:
        reasons.append("not graded: no score in the gradebook")
    return reasons


# --- The CSV for the registrar ---------------------------------------------------------------------

def _number(value: float) -> str:
    """Points as a spreadsheet reads them: 7, 7.5 (rounded to 3 decimals: sums of floats are not exact)."""
    value = round(value, 3)
    return str(int(value)) if value == int(value) else str(value)


def _spreadsheet_safe(text: str) -> str:
    """A cell starting with = + - @ runs as a formula in a spreadsheet; a student id must stay text."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def registrar_csv(students: list[str], grades: list[AssignmentGrades]) -> str:
    """One row per student: ``student``, one column per assignment, ``total``, ``maximum`` (empty: no submission)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["student", *(g.name for g in grades), "total", "maximum"])
    maximum = sum(g.max_score for g in grades)
    for student in students:
        scores = [g.scores.get(student) for g in grades]
        writer.writerow([_spreadsheet_safe(student), *("" if s is None else _number(s) for s in scores),
                         _number(sum(s for s in scores if s is not None)), _number(maximum)])
    return buffer.getvalue()


# --- The plots -------------------------------------------------------------------------------------

def _figure(width: float = 6.0, height: float = 2.8):
    """A Figure on an Agg canvas: no pyplot, so no window, no global state, nothing left open."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> str:
    """The figure as a base64 PNG, for an ``<img src="data:...">``."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _literal(text: str) -> str:
    """Text matplotlib draws as written: a ``$`` would start mathematics (and a bad formula stops the plot)."""
    return text.replace("$", r"\$")


def _integer_counts(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def score_histogram(grades: AssignmentGrades):
    """The automatic points of each submission, the maximum marked."""
    fig = _figure()
    ax = fig.add_subplot()
    top = max(grades.max_score, *grades.scores.values())
    ax.hist(list(grades.scores.values()), bins=np.linspace(0, top, 11) if top > 0 else 10,
            color="tab:blue", edgecolor="white")
    ax.axvline(grades.max_score, color="tab:red", linestyle="--", label=f"maximum: {_number(grades.max_score)}")
    ax.set(xlabel="automatic points", ylabel="submissions", title=_literal(f"{grades.name}: scores"))
    _integer_counts(ax)
    ax.legend(loc="upper left")
    return fig


def _hardest(rates: dict[str, float]) -> set[str]:
    """The test cells with the lowest pass rate (several on a tie), when some cell is harder than another."""
    lowest = min(rates.values())
    return {label for label, rate in rates.items() if rate == lowest} if lowest < max(rates.values()) else set()


def pass_rate_chart(grades: AssignmentGrades):
    """One bar per test cell, hardest on top and in red, with "passed / submissions" beside it."""
    rates = grades.pass_rates()
    order = sorted(rates, key=lambda label: (rates[label], label))
    hardest = _hardest(rates)
    fig = _figure(height=1.0 + 0.35 * len(order))
    ax = fig.add_subplot()
    positions = np.arange(len(order))
    ax.barh(positions, [100 * rates[label] for label in order],
            color=["tab:red" if label in hardest else "tab:blue" for label in order])
    for y, label in zip(positions, order):
        ax.text(100 * rates[label] + 1, y, f"{grades.passed[label]}/{len(grades.scores)}", va="center")
    ax.set_yticks(positions, [_literal(label) for label in order])
    ax.invert_yaxis()                       # the hardest, first in the order, at the top
    # xlim past 100: room for "n/N" beside a full bar
    ax.set(xlim=(0, 112), xticks=range(0, 101, 20), xlabel="% of submissions with the cell's full points",
           title=_literal(f"{grades.name}: pass rate per test cell"))
    return fig


def time_histogram(name: str, seconds: dict[str, float]):
    """Seconds per submission, the median marked."""
    fig = _figure()
    ax = fig.add_subplot()
    values = list(seconds.values())
    ax.hist(values, bins=min(20, max(5, len(values) // 2)), color="tab:green", edgecolor="white")
    median = float(np.median(values))
    ax.axvline(median, color="black", linestyle=":", label=f"median: {median:.0f} s")
    ax.set(xlabel="seconds to grade one submission", ylabel="submissions", title=_literal(f"{name}: time"))
    _integer_counts(ax)
    ax.legend(loc="upper right")
    return fig


# --- The page --------------------------------------------------------------------------------------

_STYLE = """
body { font-family: sans-serif; max-width: 60em; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
td.number { text-align: right; }
tr.hardest td { background: #fde2e2; }
section { border-top: 2px solid #888; margin-top: 2em; }
img { max-width: 100%; }
ul { margin: 0; padding-left: 1.2em; }
"""


def _e(text) -> str:
    """HTML-escape anything shown on the page (quotes too: some of it lands in attributes)."""
    return html.escape(str(text), quote=True)


def _image(fig, alt: str) -> str:
    return f'<p><img alt="{_e(alt)}" src="data:image/png;base64,{_png(fig)}"></p>'


def _scores_part(grades: AssignmentGrades) -> str:
    values = list(grades.scores.values())
    summary = (f"<p>{len(values)} submission(s) in the gradebook; automatic points out of "
               f"{_number(grades.max_score)}: median {_number(float(np.median(values)))}, "
               f"mean {_number(float(np.mean(values)))}.</p>")
    return summary + _image(score_histogram(grades), f"histogram of the scores of {grades.name}")


def _cells_part(grades: AssignmentGrades) -> str:
    rates = grades.pass_rates()
    if not rates:
        return "<h3>Test cells</h3><p>No autograded test cell with points.</p>"
    hardest = _hardest(rates)
    rows = "".join(
        f'<tr{" class=hardest" if label in hardest else ""}><td>{_e(label)}</td>'
        f'<td class="number">{_number(grades.cells[label])}</td>'
        f'<td class="number">{100 * rates[label]:.0f}%</td>'
        f'<td class="number">{grades.passed[label]}/{len(grades.scores)}</td></tr>'
        for label in sorted(rates, key=lambda label: (rates[label], label)))
    return ("<h3>Test cells</h3>" + _image(pass_rate_chart(grades), f"pass rate per test cell of {grades.name}")
            + "<table><tr><th>test cell</th><th>points</th><th>pass rate</th><th>passed</th></tr>"
            + rows + "</table>")


def _times_part(name: str, seconds: dict[str, float], source: str) -> str:
    if not seconds:
        return "<h3>Time per submission</h3><p>Time per submission: not recorded.</p>"
    values = list(seconds.values())
    return (f"<h3>Time per submission</h3><p>{len(values)} submission(s), from {_e(source)}: "
            f"total {sum(values) / 60:.1f} min, median {np.median(values):.0f} s, longest {max(values):.0f} s.</p>"
            + _image(time_histogram(name, seconds), f"time per submission of {name}"))


def _review_part(reports: list[SubmissionReport]) -> str:
    if not reports:
        return "<h3>Needs review</h3><p>No submission folder under <code>submitted/</code> to check.</p>"
    flagged = [r for r in reports if r.needs_review]
    if not flagged:
        return f"<h3>Needs review</h3><p>None of the {len(reports)} submission(s) needs review.</p>"
    rows = "".join(
        f"<tr><td>{_e(r.student)}</td>"
        f'<td class="number">{"not graded" if r.score is None else _e(_number(r.score))}</td>'
        f"<td><ul>{''.join(f'<li>{_e(reason)}</li>' for reason in review_reasons(r))}</ul></td></tr>"
        for r in flagged)
    return (f"<h3>Needs review</h3><p>{len(flagged)} of {len(reports)} submission(s); details in the grading "
            f"report (<code>sslcourse report ID</code>).</p>"
            "<table><tr><th>student</th><th>automatic points</th><th>why</th></tr>" + rows + "</table>")


def _assignment_section(grades: AssignmentGrades, times: tuple[dict[str, float], str],
                        reports: list[SubmissionReport]) -> str:
    parts = [f'<section id="{_e(grades.name)}"><h2>{_e(grades.name)}</h2>']
    if grades.scores:
        parts += [_scores_part(grades), _cells_part(grades)]
    else:
        parts.append("<p>No submission in the gradebook.</p>")
    parts += [_times_part(grades.name, *times), _review_part(reports), "</section>"]
    return "\n".join(parts)


def class_html(students: list[str], grades: list[AssignmentGrades], times: dict[str, tuple[dict[str, float], str]],
               reports: dict[str, list[SubmissionReport]]) -> str:
    """The whole page: an overview table, then one section per assignment."""
    overview = "".join(
        f'<tr><td><a href="#{_e(g.name)}">{_e(g.name)}</a></td><td class="number">{len(g.scores)}</td>'
        f'<td class="number">{_number(g.max_score)}</td>'
        f'<td class="number">{sum(r.needs_review for r in reports[g.name])}</td></tr>' for g in grades)
    return "\n".join([
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Class report</title>',
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Class report</h1><p>{len(students)} student(s), {len(grades)} assignment(s), from nbgrader's "
        "gradebook (automatic points only). The registrar's table is <code>class.csv</code> beside this page.</p>",
        "<table><tr><th>assignment</th><th>submissions</th><th>automatic points</th><th>to review</th></tr>"
        + overview + "</table>",
        *(_assignment_section(g, times[g.name], reports[g.name]) for g in grades),
        "</body></html>\n"])


# --- Both files ------------------------------------------------------------------------------------

@dataclass
class ClassReport:
    """What :func:`write_class_report` wrote, and what the command prints."""

    html: Path
    csv: Path
    students: list[str]
    assignments: list[str]
    to_review: dict[str, list[str]]         # assignment -> students whose submission needs review


def write_class_report(course: Path | str, assignments: list[str] | None = None,
                       db_url: str | None = None) -> ClassReport:
    """Write ``reports/class.html`` and ``reports/class.csv`` under ``course`` (default: every assignment)."""
    course = Path(course)
    students, grades = read_gradebook(gradebook_url(course, db_url), assignments)
    times = {g.name: read_times(course, g.name) for g in grades}
    reports = {g.name: build_report(course, g.name, db_url) for g in grades}
    page = course / "reports" / "class.html"
    atomic_write(page, lambda tmp: tmp.write_text(class_html(students, grades, times, reports), encoding="utf-8"))
    table = course / "reports" / "class.csv"
    atomic_write(table, lambda tmp: tmp.write_text(registrar_csv(students, grades), encoding="utf-8"))
    return ClassReport(page, table, students, [g.name for g in grades],
                       {name: [r.student for r in found if r.needs_review] for name, found in reports.items()})
