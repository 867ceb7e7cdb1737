"""A `make lab` server for the tests: started headless on a free loopback port with a token.

``tests/test_lab.py`` serves the work tree's ``notebooks/`` through it (the command students run);
``tests/test_browser_session.py`` serves a temporary course copy the same way and drives it with a
real browser. :class:`Lab` is a tiny authenticated HTTP client of the running server.
"""
from __future__ import annotations

import contextlib
import json
import os
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
from typing import Iterator

import pytest

from conftest import ENV_BIN, REPO_ROOT, tool_env

STARTUP_SECONDS = 120


def free_port() -> int:
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

    def delete(self, path: str, timeout: float = 30) -> None:
        urllib.request.urlopen(urllib.request.Request(f"{self.base}{path}", method="DELETE",
                                                      headers={"Authorization": f"token {self.token}"}),
                               timeout=timeout).close()

    def shut_down_sessions(self) -> None:
        """Stop the kernels the tests started (the server stops faster without them)."""
        try:
            for session in self.json("/api/sessions"):
                self.delete(f"/api/sessions/{session['id']}")
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


@contextlib.contextmanager
def running_lab(scratch: Path, *, course: Path = REPO_ROOT, **env_extra: str) -> Iterator[Lab]:
    """`make lab` in ``course`` (a course root: its ``notebooks/`` is served), stopped on exit.

    ``scratch`` holds the server's log and its ``JUPYTER_*`` folders, which keep the lab's
    workspaces, settings and secrets out of the home folder (the extensions and kernels it needs
    live in the environment's own share/jupyter); ``SSLCOURSE_DATA`` and ``SSLCOURSE_RESULTS``
    default to folders in it. ``env_extra`` goes into the server's environment, which its kernels
    and the Validate button's nbgrader inherit. Outside the work tree the Makefile of this
    repository runs with ``VENV`` set to the environment running the tests.
    """
    if shutil.which("make") is None:
        pytest.skip("`make` is not installed")
    port, token = free_port(), secrets.token_hex(16)
    args = (f"--no-browser --ServerApp.ip=127.0.0.1 --ServerApp.port={port} --ServerApp.port_retries=0 "
            f"--IdentityProvider.token={token}")
    env_extra = {"SSLCOURSE_DATA": str(scratch / "data"), "SSLCOURSE_RESULTS": str(scratch / "results"),
                 **env_extra}
    env = tool_env(data=Path(env_extra.pop("SSLCOURSE_DATA")), results=Path(env_extra.pop("SSLCOURSE_RESULTS")),
                   config_dir=scratch / "config", JUPYTER_RUNTIME_DIR=str(scratch / "runtime"),
                   JUPYTER_DATA_DIR=str(scratch / "user-data"), **env_extra)
    # -o: use the environment running these tests; bootstrapping is not what is tested here.
    make = ["make", "--no-print-directory"]
    if Path(course).resolve() == REPO_ROOT:
        make += ["-o", ".venv/.installed"]
    else:
        venv = ENV_BIN.parent
        make += ["-f", str(REPO_ROOT / "Makefile"), f"VENV={venv}", "-o", f"{venv}/.installed"]
    log = scratch / "lab.log"
    with open(log, "w") as sink:
        process = subprocess.Popen([*make, "lab", f"LAB_ARGS={args}"], cwd=course, env=env, stdout=sink,
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
