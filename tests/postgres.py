"""A throw-away PostgreSQL server for the tests: started in a temporary folder, gone afterwards.

``throwaway_server()`` runs Debian's ``initdb`` and ``pg_ctl`` (package ``postgresql``), creates one
database and yields its SQLAlchemy URL::

    postgresql+psycopg2://postgres@/gradebook?host=/tmp/sslcourse-pg-XXXXXX

The server listens on a unix socket in its own folder only (no TCP port, so no clash with another
server or another test run) and trusts every local connection: it holds nothing but test data.
PostgreSQL refuses to run as root, so under root it runs as ``nobody`` (util-linux's ``setpriv``).
When any of this is missing, or the server does not start, the fixture skips with the reason.
"""
from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

DATABASE = "gradebook"
SUPERUSER = "postgres"


def _debian_bin_dirs() -> list[Path]:
    """Debian keeps the server binaries out of PATH, in one folder per major version: newest first."""
    def version(folder: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in folder.parent.name.split(".") if part.isdigit())
    return sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)


def server_bin_dir() -> Path | None:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres`` of one installation, newest first."""
    on_path = shutil.which("initdb")
    candidates = ([Path(on_path).resolve().parent] if on_path else []) + _debian_bin_dirs()
    return next((d for d in candidates if all((d / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres"))),
                None)


def as_server_user() -> tuple[list[str], int | None]:
    """The command prefix that drops root for the server, and the uid that must own its folder."""
    if os.geteuid() != 0:
        return [], None
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("PostgreSQL refuses to run as root and util-linux's setpriv is missing to drop to 'nobody'")
    nobody = pwd.getpwnam("nobody")
    return [setpriv, f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"], nobody.pw_uid


def _run(command: list[str], log: Path) -> bool:
    """Run a server tool with its output in ``log`` (a pipe would be held open by the forked server)."""
    with open(log, "ab") as out:
        return subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              timeout=120).returncode == 0


def _tail(log: Path, lines: int = 15) -> str:
    text = log.read_text(errors="replace") if log.exists() else "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _create_database(folder: Path) -> None:
    import psycopg2

    connection = psycopg2.connect(host=str(folder), user=SUPERUSER, dbname="postgres")
    connection.autocommit = True          # CREATE DATABASE refuses to run inside a transaction
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {DATABASE}")
    finally:
        connection.close()


@contextlib.contextmanager
def throwaway_server():
    """Start a PostgreSQL server, yield the SQLAlchemy URL of a fresh database on it; stop and delete it after."""
    pytest.importorskip("psycopg2", reason="the PostgreSQL driver psycopg2 is missing (pip install psycopg2-binary)")
    bin_dir = server_bin_dir()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl, postgres): apt-get install postgresql")
    prefix, owner = as_server_user()
    # Under /tmp, not pytest's tmp_path: 'nobody' must reach it, and a socket path must stay short.
    folder = Path(tempfile.mkdtemp(prefix="sslcourse-pg-"))
    data, log = folder / "data", folder / "server.log"
    if owner is not None:
        os.chown(folder, owner, -1)
    pg_ctl = [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log)]
    try:
        if not _run([*prefix, str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust",
                     "-E", "UTF8", "--no-sync"], folder / "initdb.log"):
            pytest.skip(f"initdb failed:\n{_tail(folder / 'initdb.log')}")
        # fsync off: a test database need not survive a power cut.
        options = f"-c listen_addresses='' -k {folder} -c fsync=off"
        if not _run([*pg_ctl, "-w", "-t", "60", "-o", options, "start"], folder / "pg_ctl.log"):
            pytest.skip(f"the PostgreSQL server did not start:\n{_tail(folder / 'pg_ctl.log')}\n{_tail(log)}")
        try:
            _create_database(folder)
            yield f"postgresql+psycopg2://{SUPERUSER}@/{DATABASE}?host={folder}"
        finally:
            _run([*pg_ctl, "-m", "immediate", "-w", "stop"], folder / "pg_ctl.log")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
