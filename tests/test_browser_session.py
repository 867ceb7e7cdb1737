"""A student's session in a real browser, for every released notebook: JupyterLab driven by Chromium.

`make lab` (``tests/lab_server.py``, the command students run) serves a temporary copy of the course,
and one headless Chromium (Debian's ``/usr/bin/chromium``, through Playwright) drives it. The server's
environment chooses the smoke preset the way a student does, ``SSLCOURSE_BUDGET=smoke`` (not
``SSLCOURSE_FAST``, which also switches the live plots off); its kernels and the Validate button's
nbgrader inherit it. For each notebook ``<id>`` of ``notebooks/``, one test:

1. opens the *filled-in copy* ``<id>/<id>-filled.ipynb``: the release with every answer cell's source
   taken from ``solutions/<id>/<id>.ipynb`` (matched by ``grade_id``, the ``### BEGIN/END SOLUTION``
   lines dropped), so its locked cells, checksums included, are the release's own;
2. clicks Run > Run All Cells and waits until every code cell has its execution count (an error output
   fails the test, quoting the cell); the setup cell must have printed the smoke preset;
3. sees a tqdm progress bar (an ipywidgets bar) at 100 % and a plot rendered as a decoded image;
4. moves the first ipywidgets slider one step with the keyboard (focus on its handle, ArrowRight) and
   waits until the cell's Output widget shows something else: the redrawn figure;
5. clicks nbgrader's Validate button (it saves the notebook, then the server validates it) and reads
   the "Validation Results" dialog: "Success! Your notebook passes all the tests.";
6. on the unanswered release ``<id>/<id>.ipynb`` (no Run All: its first stub would stop it), Validate's
   dialog must list failed cells. That Validate is clicked while the filled-in copy runs (step 2) on a
   second `make lab` of the same course (``release_lab`` says why), and read at the end.

Every notebook has an ipywidgets slider except ``00_foundations`` (no interactive cell; the test checks
that it still has none, so that a new one gets moved too). Screenshots go to
``tests/artifacts/browser/<id>-<n>-<step>.png`` (ignored by git), and ``<id>-session.txt`` holds the
seconds of each step, the dialogs' text and what the run wrote to stderr; a failure adds
``<id>-failure.png``. The module skips, saying why, where ``/usr/bin/chromium`` (``apt-get install
chromium``) or the ``playwright`` package is missing.

Each filled-in notebook runs twice (in the browser, then under Validate), and ``08_summary`` runs last,
over the runs 00-07 saved in the session's results folder, as for a student who did them all. On the
2-core development machine a notebook takes 70-160 s (01_denoising_autoencoders the longest), the module
about 16 minutes.
Run one notebook with ``pytest tests/test_browser_session.py -k 05_rotation``.
"""
from __future__ import annotations

import contextlib
import json
import re
import time
from pathlib import Path

import nbformat
import pytest

from conftest import RELEASE, REPO_ROOT, SOLUTIONS, assignment_ids, copy_course, notebook_path
from lab_server import running_lab

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO_ROOT / "tests" / "artifacts" / "browser"
ASSIGNMENTS = assignment_ids(RELEASE)
NO_SLIDER = {"00_foundations"}
NO_PROGRESS_BAR = {"08_summary"}  # it trains nothing: it reads the saved runs and probes their encoders
FILLED_SUFFIX = "-filled"
VIEWPORT = {"width": 1400, "height": 1000}
# Generous limits for a busy 2-core machine: a smoke notebook runs in well under a minute.
OPEN_SECONDS = 120
RUN_ALL_SECONDS = 600
VALIDATE_SECONDS = 600
WIDGET_SECONDS = 60
SOLUTION_MARKERS = ("### BEGIN SOLUTION", "### END SOLUTION")
# The notebook panel on show (Lumino hides the others with lm-mod-hidden).
PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"


def filled_in_release(assignment: str):
    """The release of ``assignment`` with each solution cell's source replaced by the solution's answer."""
    release = nbformat.read(notebook_path(RELEASE, assignment), as_version=4)
    solution = nbformat.read(notebook_path(SOLUTIONS, assignment), as_version=4)
    answers = {cell.metadata["nbgrader"]["grade_id"]: cell for cell in solution.cells
               if cell.metadata.get("nbgrader", {}).get("solution")}
    missing = []
    for cell in release.cells:
        if cell.cell_type == "code":  # as released: no outputs, no execution counts (the run waits for them)
            cell.outputs, cell.execution_count = [], None
        meta = cell.metadata.get("nbgrader", {})
        if not meta.get("solution"):
            continue
        answer = answers.get(meta["grade_id"])
        if answer is None:
            missing.append(meta["grade_id"])
            continue
        cell.source = "\n".join(line for line in answer.source.split("\n") if line.strip() not in SOLUTION_MARKERS)
    assert not missing, (f"{assignment}: the release's answer cells {missing} have no solution cell with that "
                         f"grade_id; is notebooks/ out of date (make release)?")
    return release


# --- fixtures ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module; skips where Chromium or Playwright is missing."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium): no browser to run a student's session in")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed "
                                   "(pip install playwright; its own browsers are not needed)")
    playwright = sync_api.sync_playwright().start()
    try:
        # A page waiting for its Validate dialog keeps rendering while another one is driven.
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
                  "--disable-backgrounding-occluded-windows"])
        yield chromium
        chromium.close()
    finally:
        playwright.stop()


@pytest.fixture(scope="module")
def course(browser, tmp_path_factory) -> Path:
    """A course copy whose notebooks/<id>/ also holds the filled-in copy <id>-filled.ipynb."""
    root = copy_course(tmp_path_factory.mktemp("browser-course") / "course")
    for assignment in ASSIGNMENTS:
        nbformat.write(filled_in_release(assignment),
                       root / "notebooks" / assignment / f"{assignment}{FILLED_SUFFIX}.ipynb")
    return root


def _lab(course: Path, scratch: Path, data: Path, results: Path):
    # No news or update checks: their notification would cover part of the screenshots.
    settings = scratch / "config" / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    return running_lab(scratch, course=course, SSLCOURSE_BUDGET="smoke", SSLCOURSE_DATA=str(data),
                       SSLCOURSE_RESULTS=str(results), SSLCOURSE_REFERENCE="")


@pytest.fixture(scope="module")
def student_lab(course, tmp_path_factory, course_data_dir):
    """The student's `make lab`: runs the filled-in copies and validates them."""
    scratch = tmp_path_factory.mktemp("student-lab")
    with _lab(course, scratch, course_data_dir, course.parent / "results") as lab:
        yield lab


@pytest.fixture(scope="module")
def release_lab(course, tmp_path_factory, course_data_dir):
    """A second `make lab` on the same course, where the unanswered release is validated.

    nbgrader's Validate handler runs the whole notebook inside the server's request handler, which
    holds up everything else that server does; on its own server the release's validation runs
    while the student's server runs the filled-in copy (a smoke run leaves about half of two cores idle).
    Its saved runs, if any, go to a folder of its own.
    """
    scratch = tmp_path_factory.mktemp("release-lab")
    with _lab(course, scratch, course_data_dir, scratch / "results") as lab:
        yield lab


# --- one session ------------------------------------------------------------------------

class Session:
    """One notebook's pages and steps: timings, notes, screenshots, and failures naming the notebook and step."""

    def __init__(self, assignment: str, context):
        self.assignment, self.context = assignment, context
        self.page = None  # the page the current step works in (a failure shows it)
        self.timings: dict[str, float] = {}
        self.notes: list[str] = []
        self.step_name = "start"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for old in ARTIFACTS.glob(f"{assignment}-*"):
            old.unlink()

    @contextlib.contextmanager
    def step(self, name: str, page=None):
        from playwright.sync_api import Error as PlaywrightError

        self.step_name, start = name, time.monotonic()
        if page is not None:
            self.page = page
        try:
            yield
        except PlaywrightError as error:  # timeouts included: say which step and show the page
            self.fail(f"{error}".split("\n")[0])
        finally:
            self.timings[name] = time.monotonic() - start

    def fail(self, message: str) -> None:
        shot = self.screenshot("failure")
        pytest.fail(f"{self.assignment}, step '{self.step_name}': {message}\n(screenshot: {shot})", pytrace=False)

    def screenshot(self, name: str, page=None) -> Path | None:
        path = ARTIFACTS / f"{self.assignment}-{name}.png"
        try:
            (page or self.page).screenshot(path=str(path))
        except Exception:  # noqa: BLE001 - a failure report must not fail on its screenshot
            return None
        return path.relative_to(REPO_ROOT)

    def open(self, lab, path: str, workspace: str):
        """A new page on ``path`` in a workspace of its own (no tabs restored from an earlier notebook)."""
        self.page = self.context.new_page()
        self.page.goto(f"{lab.base}/lab/workspaces/{workspace}/tree/{path}?token={lab.token}")
        self.page.locator(f"{PANEL} .jp-Notebook .jp-Cell").first.wait_for(timeout=OPEN_SECONDS * 1000)
        name = path.rsplit("/", 1)[-1]
        self.page.locator(".lm-TabBar-tab.lm-mod-current", has_text=name).first.wait_for()
        return self.page

    def write_notes(self) -> Path:
        path = ARTIFACTS / f"{self.assignment}-session.txt"
        lines = [f"{self.assignment}: browser session steps (seconds)"]
        lines += [f"  {name:<44} {seconds:6.1f}" for name, seconds in self.timings.items()]
        path.write_text("\n".join(lines + [""] + self.notes) + "\n")
        return path


def panel(page):
    return page.locator(PANEL)


def to_view(element, where: str = "center") -> None:
    """Scroll ``element`` into view and let the cells around it render (content-visibility) before a screenshot."""
    element.evaluate(f"""e => new Promise(done => {{
        e.scrollIntoView({{block: '{where}'}});
        requestAnimationFrame(() => requestAnimationFrame(done));
    }})""")


# JupyterLab runs no request for an empty code cell, whose prompt stays "[ ]": those are not counted.
RUN_STATE = """panel => {
    const filled = cell => cell.querySelector('.cm-gap') ||
        [...cell.querySelectorAll('.jp-InputArea .cm-line')].some(line => line.textContent.trim());
    const prompts = [...panel.querySelectorAll('.jp-CodeCell')].filter(filled).map(
        cell => cell.querySelector('.jp-InputPrompt').textContent.trim());
    const errors = [...panel.querySelectorAll('.jp-CodeCell')].map((cell, index) => [cell, index]).filter(
        ([cell]) => cell.querySelector('[data-mime-type="application/vnd.jupyter.error"]'));
    return {cells: prompts.length, running: prompts.filter(p => p.includes('*')).length,
            done: prompts.filter(p => /\\[\\d+\\]/.test(p)).length,
            errors: errors.map(([cell, index]) => ({index,
                input: [...cell.querySelectorAll('.jp-InputArea .cm-line')].map(line => line.textContent).join('\\n'),
                output: cell.querySelector('[data-mime-type="application/vnd.jupyter.error"]').textContent}))};
}"""

RUN_FINISHED = f"""panel => {{
    const state = ({RUN_STATE})(panel);
    return state.cells > 0 && state.running === 0 && (state.done === state.cells || state.errors.length > 0);
}}"""

# A tqdm bar in JupyterLab is an ipywidgets HBox: "<desc>: 100%", the progress widget, "n/total [...]".
FINISHED_BAR = """panel => [...panel.querySelectorAll('.jp-OutputArea-output .widget-hprogress')].find(bar => {
    const box = bar.closest('.widget-hbox');
    const fill = bar.querySelector('.progress-bar');
    return box && /100%/.test(box.textContent) && fill && fill.style.width === '100%';
}) || null"""

RENDERED_PLOT = """panel => [...panel.querySelectorAll('.jp-OutputArea-output img')].find(
    img => img.complete && img.naturalWidth > 100 && img.naturalHeight > 50) || null"""

WIDGET_OUTPUT = "cell => [...cell.querySelectorAll('.widget-output')].map(o => o.innerHTML).join('\\n')"

OUTPUT_CHANGED = """([cell, before]) => {
    const now = [...cell.querySelectorAll('.widget-output')].map(o => o.innerHTML).join('\\n');
    const imgs = [...cell.querySelectorAll('.widget-output img')];
    return now !== before && imgs.length > 0 && imgs.every(img => img.complete && img.naturalWidth > 0);
}"""


def click_run_all(page) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()


def wait_for_run_all(session: Session, page) -> None:
    """Until every code cell has its execution count, or one shows an error (which fails the test)."""
    notebook = panel(page)
    try:
        page.wait_for_function(RUN_FINISHED, arg=notebook.element_handle(), timeout=RUN_ALL_SECONDS * 1000,
                               polling=1000)
    except Exception:  # noqa: BLE001 - report where it stands
        state = notebook.evaluate(RUN_STATE)
        session.fail(f"Run All did not finish within {RUN_ALL_SECONDS} s: {state['done']} of {state['cells']} "
                     f"code cells ran, {state['running']} still running or queued")
    state = notebook.evaluate(RUN_STATE)
    if state["errors"]:
        first = state["errors"][0]
        session.fail(f"code cell {first['index']} raised:\n--- input ---\n{first['input'][:2000]}\n"
                     f"--- error ---\n{first['output'][-3000:]}")


def click_validate(page) -> None:
    """nbgrader's toolbar button: it saves the notebook, then asks the server to validate it."""
    panel(page).locator(".validate-button").first.click()


def read_validation(session: Session, page, expect_success: bool, shot: str) -> str:
    """Wait for the Validate dialog on ``page``; check and return its text."""
    dialog = page.locator(".jp-Dialog")
    dialog.wait_for(timeout=VALIDATE_SECONDS * 1000)
    title = dialog.locator(".jp-Dialog-header").inner_text().strip()
    if title != "Validation Results":
        session.fail(f"Validate answered '{title}': {dialog.inner_text()[:3000]}")
    message = dialog.locator("#validation-message")
    kind = next((c for c in (message.get_attribute("class") or "").split() if c.startswith("validation-")), "?")
    text = message.inner_text()
    session.screenshot(shot, page)
    session.notes += [f"--- Validate ({shot}): {kind} ---", text[:4000], ""]
    dialog.get_by_role("button", name="Ok").click()
    dialog.wait_for(state="detached")
    if expect_success and (kind != "validation-success" or "Success! Your notebook passes all the tests." not in text):
        session.fail(f"Validate did not pass the filled-in notebook ({kind}):\n{text[:4000]}")
    if not expect_success and (kind != "validation-failed" or "The following cell failed:" not in text):
        session.fail(f"Validate did not fail the unanswered release ({kind}):\n{text[:4000]}")
    return text


def see_a_finished_progress_bar(session: Session, page) -> None:
    if session.assignment in NO_PROGRESS_BAR:
        bars = panel(page).locator(".widget-hprogress").count()
        assert bars == 0, (f"{session.assignment} now shows {bars} progress bars: remove it from NO_PROGRESS_BAR in "
                           f"{Path(__file__).name} so that the test checks that one finishes")
        session.notes.append("no progress bar in this notebook")
        return
    bar = page.wait_for_function(FINISHED_BAR, arg=panel(page).element_handle()).as_element()
    session.notes.append(f"progress bar: {bar.evaluate('b => b.closest(`.widget-hbox`).textContent')}")
    to_view(bar)
    session.screenshot("1-progress-bar", page)


def move_a_slider(session: Session, page) -> None:
    cells = panel(page).locator(".jp-Cell", has=page.locator(".widget-slider"))
    if session.assignment in NO_SLIDER:
        assert cells.count() == 0, (f"{session.assignment} now has an ipywidgets slider: remove it from NO_SLIDER "
                                    f"in {Path(__file__).name} so that the test moves it")
        session.notes.append("no ipywidgets slider in this notebook")
        return
    if cells.count() == 0:
        session.fail("no ipywidgets slider rendered (is the widget manager working?)")
    cell = cells.first
    slider = cell.locator(".widget-slider").first
    handle, readout = slider.locator(".noUi-handle"), slider.locator(".widget-readout")
    to_view(slider, "start")
    page.wait_for_function("cell => cell.querySelector('.widget-output img')", arg=cell.element_handle())
    before, value = cell.evaluate(WIDGET_OUTPUT), readout.text_content()
    session.screenshot("3-slider-before", page)
    handle.focus()
    at_max = handle.get_attribute("aria-valuenow") == handle.get_attribute("aria-valuemax")
    page.keyboard.press("ArrowLeft" if at_max else "ArrowRight")
    try:
        page.wait_for_function(OUTPUT_CHANGED, arg=[cell.element_handle(), before], timeout=WIDGET_SECONDS * 1000)
    except Exception:  # noqa: BLE001
        session.fail(f"moved the slider from {value} to {readout.text_content()}, but its output "
                     f"did not change within {WIDGET_SECONDS} s")
    if readout.text_content() == value:
        session.fail(f"the slider's output changed, but its value stayed {value}")
    label = slider.locator(".widget-label").text_content()
    session.notes.append(f"slider '{label}': {value} -> {readout.text_content()}")
    to_view(slider, "start")
    session.screenshot("4-slider-after", page)


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_student_session_in_the_browser(assignment, browser, student_lab, release_lab):
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(WIDGET_SECONDS * 1000)
    session = Session(assignment, context)
    filled = f"{assignment}/{assignment}{FILLED_SUFFIX}.ipynb"
    release = f"{assignment}/{assignment}.ipynb"
    started = time.monotonic()
    try:
        with session.step("open the filled-in copy, click Run All"):
            page = session.open(student_lab, filled, workspace=f"{assignment}-filled")
            student_lab.wait_for_idle_kernel(filled, seconds=OPEN_SECONDS)
            click_run_all(page)
        # Meanwhile the release is validated on a server of its own (see release_lab).
        with session.step("open the release, click Validate"):
            release_page = session.open(release_lab, release, workspace=f"{assignment}-release")
            click_validate(release_page)
        with session.step("wait for Run All to finish", page):
            wait_for_run_all(session, page)
            printed = panel(page).locator(".jp-OutputArea-output").all_text_contents()
            if not any("budget preset 'smoke'" in text for text in printed):
                session.fail("the setup cell did not print the smoke budget preset (SSLCOURSE_BUDGET=smoke)")
            stderr = panel(page).locator('[data-mime-type="application/vnd.jupyter.stderr"]').all_text_contents()
            session.notes += ["--- stderr outputs of the run ---", *(t[:1000] for t in stderr), ""]
        with session.step("a finished progress bar"):
            see_a_finished_progress_bar(session, page)
        with session.step("a plot rendered as an image"):
            image = page.wait_for_function(RENDERED_PLOT, arg=panel(page).element_handle()).as_element()
            to_view(image)
            session.screenshot("2-plot", page)
        with session.step("move a slider"):
            move_a_slider(session, page)
        with session.step("validate the filled-in copy"):
            click_validate(page)
            read_validation(session, page, expect_success=True, shot="5-validate-filled")

        with session.step("the release's Validate result (still waited for)", release_page):
            text = read_validation(session, release_page, expect_success=False, shot="6-validate-release")
            session.notes.insert(0, f"release: {text.count('The following cell failed:')} cells failed under Validate")
    finally:
        session.timings["wall time of the test"] = time.monotonic() - started
        notes = session.write_notes()
        context.close()
        student_lab.shut_down_sessions()
        release_lab.shut_down_sessions()
        print(notes.read_text())
