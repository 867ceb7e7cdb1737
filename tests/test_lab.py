"""`make lab` serves the course: JupyterLab on notebooks/ with nbgrader's extensions working.

The server is started through the Makefile itself (``tests/lab_server.py``: headless, on a free
loopback port, with a token), so these tests check the command students run. They read the release, never write
it: the release notebooks' bytes are compared before and after. An optional real-browser check
opens a released notebook in Chromium through Playwright; it skips when ``/usr/bin/chromium``
(Debian's ``chromium`` package) or the ``playwright`` package is missing.
"""
from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest

from conftest import RELEASE, REPO_ROOT, assignment_ids
from lab_server import running_lab

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")


def _release_snapshot() -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in RELEASE.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    before = _release_snapshot()
    try:
        with running_lab(tmp_path_factory.mktemp("lab")) as server:
            yield server
    finally:
        after = _release_snapshot()
        changed = sorted(str(p.relative_to(REPO_ROOT)) for p in before if after.get(p) != before[p])
        for path in changed:  # put the release back as it was before failing
            path.write_bytes(before[path])
        assert not changed, f"the lab modified {changed}"


def _page_config(page: str) -> dict:
    match = re.search(r'<script id="jupyter-config-data" type="application/json">(.*?)</script>', page, re.S)
    assert match, "the /lab page carries no jupyter-config-data"
    return json.loads(html.unescape(match.group(1)))


def test_lab_page_loads_with_nbgrader_extension(lab):
    status, page = lab.request("/lab")
    assert status == 200, f"/lab answered {status}"
    config = _page_config(page)
    extensions = {e["name"]: e for e in config.get("federated_extensions", [])}
    assert "@jupyter/nbgrader" in extensions, f"nbgrader's lab extension is not installed: {sorted(extensions)}"
    disabled = config.get("disabledExtensions", [])
    assert not any(name.startswith("@jupyter/nbgrader") for name in disabled), f"nbgrader is disabled: {disabled}"
    # The check the lab extension itself makes when it loads: its version matches the server's.
    answer = lab.json(f"/nbgrader_version?version={_labextension_version('@jupyter/nbgrader')}")
    assert answer["success"], answer["message"]


def _labextension_version(name: str) -> str:
    from jupyter_core.paths import jupyter_path

    for folder in jupyter_path("labextensions"):
        package = Path(folder) / name / "package.json"
        if package.is_file():
            return json.loads(package.read_text())["version"]
    raise AssertionError(f"{name} is not installed in any of {jupyter_path('labextensions')}")


def test_lab_serves_the_release(lab):
    listing = lab.json("/api/contents/")
    served = sorted(item["name"] for item in listing["content"] if item["type"] == "directory")
    assert served == assignment_ids(RELEASE), "the lab should open on notebooks/, one folder per assignment"
    for assignment in served:
        notebook = lab.json(f"/api/contents/{assignment}/{assignment}.ipynb?content=1")
        assert notebook["type"] == "notebook" and notebook["content"]["cells"], f"{assignment} did not load"


def test_validate_button_runs_nbgrader(lab):
    """What the lab's Validate button posts: the release's stubs must fail their tests."""
    released = assignment_ids(RELEASE)
    if not released:
        pytest.skip("notebooks/ holds no assignment yet")
    assignment = released[0]
    answer = lab.json("/assignments/validate", data={"path": f"{assignment}/{assignment}.ipynb"}, timeout=600)
    assert answer["success"], f"validation crashed:\n{answer['value']}"
    result = answer["value"]
    assert result.get("failed"), f"{assignment}: Validate found no failing test on the unanswered release: {result}"


def test_browser_opens_a_released_notebook(lab):
    released = assignment_ids(RELEASE)
    if not released:
        pytest.skip("notebooks/ holds no assignment yet")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    assignment = released[0]
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page()
            page.goto(f"{lab.base}/lab/tree/{assignment}/{assignment}.ipynb?token={lab.token}")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
            tab = page.locator(".lm-TabBar-tabLabel", has_text=f"{assignment}.ipynb")
            assert tab.count() >= 1, "the notebook's tab did not open"
            page.get_by_role("button", name="Validate").first.wait_for(timeout=30_000)
            assert page.locator(".lm-MenuBar-itemLabel", has_text="Nbgrader").count() == 1, "no Nbgrader menu"
            session = lab.wait_for_idle_kernel(f"{assignment}/{assignment}.ipynb", seconds=90)
            assert session["kernel"]["name"] == "python3"
        finally:
            browser.close()
