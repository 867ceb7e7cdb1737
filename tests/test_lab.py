"""`make lab` serves the course: JupyterLab on notebooks/ with nbgrader's extensions working.

The server is started through the Makefile itself (headless, on a free loopback port, with a
token), so these tests check the command students run. They read the release, never write
it: the release notebooks' bytes are compared before and after. An optional real-browser check
opens a released notebook in Chromium through Playwright; it skips when ``/usr/bin/chromium``
(Debian's ``chromium`` package) or the ``playwright`` package is missing.
"""
from __future__ import annotations

import html
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import RELEASE, REPO_ROOT, assignment_ids, tool_env

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
STARTUP_SECONDS = 120


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Lab:
    """A running `make lab` server and a tiny authenticated HTTP client for it."""

    def __init__(self, base: str, token: str, process: subprocess.Popen, log: Path):
        self.base, self.token, self.process, self.log = base, token, process, log

    def request(self, path: str, data: dict | None = None, timeout: float = 30) -> tuple[int, str]:
        body = None if data is None else urllib.parse.urlencode(data).encode()
        request = urllib.request.Request(f"{self.base}{path}", data=body,
                                         headers={"Authorization": f"token {self.token}"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")

    def json(self, path: str, data: dict | None = None, timeout: float = 30):
        status, text = self.request(path, data, timeout)
        assert status == 200, f"GET {path} answered {status}: {text[:500]}"
        return json.loads(text)

    def shut_down_sessions(self) -> None:
        """Stop the kernels the tests started (the server stops faster without them)."""
        try:
            for session in self.json("/api/sessions"):
                urllib.request.urlopen(urllib.request.Request(
                    f"{self.base}/api/sessions/{session['id']}", method="DELETE",
                    headers={"Authorization": f"token {self.token}"}), timeout=30).close()
        except (OSError, AssertionError):
            pass  # the server is stopped next anyway

    def wait_for_idle_kernel(self, path: str, seconds: float) -> dict:
        """The session the lab opened for ``path``, once its kernel has started and is idle."""
        deadline = time.monotonic() + seconds
        sessions = []
        while time.monotonic() < deadline:
            sessions = self.json("/api/sessions")
            for session in sessions:
                if session.get("path") == path and session["kernel"]["execution_state"] == "idle":
                    return session
            time.sleep(1)
        raise AssertionError(f"no idle kernel for {path} after {seconds:.0f} s; sessions: {sessions}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def _release_snapshot() -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in RELEASE.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if shutil.which("make") is None:
        pytest.skip("`make` is not installed")
    scratch = tmp_path_factory.mktemp("lab")
    port, token = _free_port(), secrets.token_hex(16)
    args = (f"--no-browser --ServerApp.ip=127.0.0.1 --ServerApp.port={port} --ServerApp.port_retries=0 "
            f"--IdentityProvider.token={token}")
    # The JUPYTER_* folders keep the lab's workspaces, settings and secrets out of the home folder
    # (the extensions and kernels it needs live in the environment's own share/jupyter).
    env = tool_env(data=scratch / "data", results=scratch / "results", config_dir=scratch / "config",
                   JUPYTER_RUNTIME_DIR=str(scratch / "runtime"), JUPYTER_DATA_DIR=str(scratch / "user-data"))
    before = _release_snapshot()
    log = scratch / "lab.log"
    with open(log, "w") as sink:
        # -o: use the environment running these tests; bootstrapping is not what is tested here.
        process = subprocess.Popen(["make", "--no-print-directory", "-o", ".venv/.installed", "lab",
                                    f"LAB_ARGS={args}"], cwd=REPO_ROOT, env=env, stdout=sink,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    server = Lab(f"http://127.0.0.1:{port}", token, process, log)
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(f"`make lab` exited with {process.returncode}:\n{server.output()}", pytrace=False)
            try:
                if server.request("/api/status", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"`make lab` did not answer within {STARTUP_SECONDS} s:\n{server.output()}",
                            pytrace=False)
            time.sleep(0.5)
        yield server
    finally:
        if process.poll() is None:
            server.shut_down_sessions()
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
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
