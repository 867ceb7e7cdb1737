"""The kernel sandbox of ``sslcourse autograde``: each submission's kernel runs inside bubblewrap.

nbgrader itself is unchanged. :func:`prepare` writes a kernelspec named ``sslcourse-sandbox``
and a configuration file into a scratch folder; ``sslcourse autograde`` puts that folder on
``JUPYTER_PATH`` and asks nbgrader for the kernel (:func:`nbgrader_args`). The kernelspec runs
this file as a script (standard library only, so a kernel start costs no ``import torch``)::

    python .../sslcourse/sandbox.py --config SCRATCH/sandbox.json -f {connection_file}

which starts ``bwrap ... setpriv ... python -m ipykernel_launcher -f {connection_file}`` in the
folder nbgrader gives the kernel (``autograded/<student>/<id>/``), waits for it, and records how
it ended in ``reports/sandbox/<id>/<student>.json`` for the grading report.

What the kernel sees (an allow-list: a fresh root, nothing of the host unless named here)
    read-only   /usr (and the /bin, /lib... links), /etc (what the kernel's uid may read of it), the Python installation
                (``sys.base_prefix``), the virtual environment (``sys.prefix``), the ``sslcourse``
                package folder, and the dataset cache if it exists;
    read-write  its own submission folder (the working directory), and the runtime folder that
                holds its connection file and ZMQ sockets;
    private     a fresh /tmp (also HOME), /proc of its own PID namespace, a minimal /dev.
So the course's solutions/, gradebook.db, submitted/, other students' autograded/ folders and
the instructor's home are not there at all. No GPU device is visible: grading runs the smoke
preset on the CPU.

Other isolation
    network     its own network namespace (only its own loopback): no Internet, no host
                services on 127.0.0.1. ZMQ therefore uses IPC transport (pathname unix
                sockets in the runtime folder, which do cross network namespaces).
    processes   its own PID, IPC and UTS namespaces; ``--die-with-parent`` and the PID
                namespace end every process of the submission with the kernel. The process
                limit applies when grading as root (see ``user``).
    user        run as root (CI, a grading container), ``setpriv`` drops the kernel to an
                unprivileged uid (:data:`SANDBOX_UID`, no capabilities, no new privileges):
                root ignores RLIMIT_NPROC and could read whatever is mounted. The submission
                folder and the connection file are lent to that uid and given back after.
                With ``--jobs N`` worker ``w`` uses uid ``SANDBOX_UID - w`` (:func:`sandbox_uid`),
                so RLIMIT_NPROC, which counts a uid's processes, is each kernel's own: a fork
                bomb in one submission cannot starve another graded beside it.
                Run as another user, bwrap adds a user namespace instead.
    environment cleared; the kernel gets only :func:`sslcourse.environment.kernel_environment`.

Limits (:class:`Limits`; resource limits are inherited by every process of the submission)
    address space (importing torch maps about 3.4 GiB), processes, bytes per written file, CPU
    seconds per process, the size of /tmp, wall time for the whole kernel (after which the
    launcher kills it; nbgrader's ``Execute.timeout`` still bounds each cell), and output: the
    kernel's stdout and stderr stop reaching the notebook after ``output_mib`` (a line says so),
    and its terminal output after 1 MiB.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

__all__ = ["KERNEL_NAME", "SANDBOX_UID", "MAX_WORKERS", "sandbox_uid", "is_sandbox_uid", "kernel_name", "Limits",
           "why_not", "bwrap_command", "prepare", "nbgrader_args",
           "give_back_folders"]

KERNEL_NAME = "sslcourse-sandbox"
SANDBOX_UID = 65533          # "nobody"-like: owns nothing on the host (worker 0; worker w: SANDBOX_UID - w)
MAX_WORKERS = 64             # uids SANDBOX_UID - 63 .. SANDBOX_UID
BWRAP = "/usr/bin/bwrap"
SETPRIV = "/usr/bin/setpriv"
PACKAGE = Path(__file__).resolve().parent
TERMINAL_LIMIT = 2**20       # bytes of the kernel's own stdout/stderr passed on to the grader's terminal
OUTPUT_NOTE = "[sslcourse sandbox: output stopped after {} MiB]"


def sandbox_uid(worker: int = 0) -> int:
    """The uid worker ``worker`` of ``sslcourse autograde --jobs N`` drops its kernels to (as root)."""
    if not 0 <= worker < MAX_WORKERS:
        raise ValueError(f"sandbox worker must be in [0, {MAX_WORKERS}), got {worker}")
    return SANDBOX_UID - worker


def is_sandbox_uid(uid: int) -> bool:
    return SANDBOX_UID - MAX_WORKERS < uid <= SANDBOX_UID


def kernel_name(worker: int = 0) -> str:
    """The kernelspec of worker ``worker``: ``sslcourse-sandbox``, ``sslcourse-sandbox-1``, ..."""
    return KERNEL_NAME if worker == 0 else f"{KERNEL_NAME}-{worker}"


@dataclass(frozen=True)
class Limits:
    """What one submission's kernel may use (``sslcourse autograde --sandbox-<field> N``)."""

    memory_mib: int = 8192       # address space per process (RLIMIT_AS)
    processes: int = 64          # processes of the sandbox uid (RLIMIT_NPROC; when grading as root)
    file_mib: int = 1024         # largest file it may write (RLIMIT_FSIZE)
    cpu_s: int = 3600            # CPU seconds per process (RLIMIT_CPU)
    wall_s: int = 1800           # the whole kernel, start to end
    tmp_mib: int = 512           # size of its private /tmp
    output_mib: int = 16         # stdout + stderr that reaches the notebook


# --- Inside the kernel: the output cap ------------------------------------------------------

# Run by ipykernel before any cell (``--IPKernelApp.exec_lines``), in a namespace of its own, so
# the student's namespace stays clean. Every write to the kernel's stdout and stderr, Python and
# file-descriptor level alike, goes through the streams' ``write``. IPython swaps that attribute
# around every cell (to keep the output in its history), so ``write`` becomes a property of the
# stream's class: whatever IPython sets is kept as the inner writer, and every call is counted.
_CAP_OUTPUT = """
def _cap(limit, note):
    import sys
    state = {"written": 0, "told": False}

    def counted(write):
        def counted_write(string, *args, **kwargs):
            room = limit - state["written"]
            state["written"] += len(string)
            if len(string) <= room:
                return write(string, *args, **kwargs)
            if room > 0:
                write(string[:room])
            if not state["told"]:
                state["told"] = True
                write("\\n" + note + "\\n")
            return len(string)
        return counted_write

    for stream in (sys.stdout, sys.stderr):
        base = type(stream)

        def get(self, base=base):
            # IPython's tee wraps whatever it found here, so only the innermost writer counts.
            return self.__dict__.get("_sslcourse_inner") or counted(base.write.__get__(self))

        def set(self, inner, base=base):
            # The stream's own method, put back by IPython, means "no wrapper": keep counting.
            own = getattr(inner, "__func__", None) is base.write
            self.__dict__["_sslcourse_inner"] = None if own else inner

        stream.__class__ = type(base.__name__, (base,), {"write": property(get, set)})
_cap(LIMIT, NOTE)
"""


def _cap_output_line(limits: Limits) -> str:
    code = _CAP_OUTPUT.replace("LIMIT", str(limits.output_mib * 2**20)).replace(
        "NOTE", repr(OUTPUT_NOTE.format(limits.output_mib)))
    return f"exec({code!r}, {{}})"


# --- The bwrap command ------------------------------------------------------------------------

def _system_mounts() -> list[str]:
    """/usr and /etc read-only; /bin, /lib, ... as on the host (links into /usr, or read-only binds)."""
    args = ["--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]
    for name in ("/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"):
        if os.path.islink(name):
            args += ["--symlink", os.readlink(name), name]
        elif os.path.isdir(name):
            args += ["--ro-bind", name, name]
    return args


def _python_paths() -> list[Path]:
    """The interpreter, the environment's packages and this package (outside /usr and /etc)."""
    paths = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), PACKAGE,
             Path(sys.executable).resolve().parent}
    return [p for p in paths if not str(p).startswith(("/usr/", "/etc/")) and p.exists()]


def _parent_folders(paths: list[Path]) -> list[str]:
    """``--dir`` for every folder above the mount points, world-traversable.

    bwrap creates missing parents with the host's modes; under /root (0700) the unprivileged
    sandbox uid could then not reach a virtual environment mounted below it.
    """
    parents = sorted({str(parent) for path in paths for parent in path.parents
                      if str(parent) not in ("/", "/usr", "/etc", "/tmp")}, key=lambda p: (p.count("/"), p))
    args = []
    for parent in parents:
        args += ["--perms", "0755", "--dir", parent]
    return args


def bwrap_command(*, cwd: Path, data: Path, runtime: Path, connection_file: str, env: dict[str, str],
                  limits: Limits, as_root: bool, program: list[str] | None = None,
                  uid: int = SANDBOX_UID) -> list[str]:
    """The whole command line: bwrap, its mounts and namespaces, then (as root) setpriv, then the kernel
    (or ``program``, which :func:`why_not` uses to try the very same sandbox)."""
    cmd = [BWRAP, "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
           "--die-with-parent", "--hostname", "sandbox", "--clearenv"]
    if not as_root:
        cmd += ["--unshare-user"]
    cmd += _system_mounts()
    cmd += ["--proc", "/proc", "--dev", "/dev",
            "--size", str(limits.tmp_mib * 2**20), "--perms", "1777", "--tmpfs", "/tmp"]
    read_only = sorted(_python_paths() + ([data] if data.is_dir() else []), key=lambda p: len(p.parts))
    writable = [runtime, cwd]
    cmd += _parent_folders(read_only + writable)
    for path in read_only:
        cmd += ["--ro-bind", str(path), str(path)]
    for path in writable:
        cmd += ["--bind", str(path), str(path)]
    cmd += ["--chdir", str(cwd)]
    for name, value in sorted(env.items()):
        cmd += ["--setenv", name, value]
    if as_root:
        cmd += [SETPRIV, f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
    if program is not None:
        return cmd + program
    return cmd + [sys.executable, "-m", "ipykernel_launcher", "-f", connection_file,
                  f"--IPKernelApp.exec_lines={_cap_output_line(limits)}"]


def _set_limits(limits: Limits) -> None:
    """Resource limits for bwrap and everything below it (soft = hard: the submission cannot raise them).

    RLIMIT_NPROC only when run as root: the kernel then runs as its worker's :func:`sandbox_uid`, whose
    processes are that kernel's alone. For another user it would count every process of that user on the host.
    """
    limited = [(resource.RLIMIT_AS, limits.memory_mib * 2**20), (resource.RLIMIT_FSIZE, limits.file_mib * 2**20),
               (resource.RLIMIT_CPU, limits.cpu_s), (resource.RLIMIT_CORE, 0)]
    if os.geteuid() == 0:
        limited.append((resource.RLIMIT_NPROC, limits.processes))
    for name, value in limited:
        resource.setrlimit(name, (value, value))


# --- Lending the submission folder to the sandbox uid (as root) -----------------------------

def _tree(top: Path) -> list[Path]:
    """``top`` and everything below it, without following links."""
    found = [top]
    if top.is_dir() and not top.is_symlink():
        for folder, dirs, files in os.walk(top):
            found += [Path(folder, name) for name in dirs + files]
    return found


def _lend(paths: list[Path], uid: int) -> list[tuple[Path, int, int]]:
    """chown the paths (recursively) to the sandbox uid ``uid``; returns the old owners."""
    owners = []
    for top in paths:
        for path in _tree(top):
            st = path.lstat()
            owners.append((path, st.st_uid, st.st_gid))
            os.lchown(path, uid, uid)
    return owners


def give_back_folders(folders: list[Path]) -> None:
    """Whatever a sandbox uid owns below ``folders`` belongs to us (the grader) again."""
    for folder in folders:
        for path in _tree(folder):
            try:
                if is_sandbox_uid(path.lstat().st_uid):
                    os.lchown(path, os.geteuid(), os.getegid())
            except OSError:
                pass


def _give_back(folder: Path, owners: list[tuple[Path, int, int]]) -> None:
    give_back_folders([folder])
    for path, uid, gid in owners:
        try:
            os.lchown(path, uid, gid)
        except OSError:
            pass


# --- The launcher ---------------------------------------------------------------------------

def _forward(stream, limit: int, dropped: list[int]) -> None:
    """Copy the kernel's own stdout/stderr to ours, up to ``limit`` bytes; count the rest."""
    passed = 0
    for chunk in iter(lambda: stream.read1(65536), b""):
        if passed < limit:
            sys.stderr.buffer.write(chunk[: limit - passed])
            sys.stderr.buffer.flush()
        dropped[0] += max(0, len(chunk) - max(0, limit - passed))
        passed += len(chunk)


def run(config: dict, connection_file: str, worker: int = 0) -> int:
    """Start the sandboxed kernel here (the submission folder), as worker ``worker``'s uid, wait at most
    ``wall_s``, clean up, log."""
    limits = Limits(**config["limits"])
    cwd, runtime, data = Path.cwd().resolve(), Path(config["runtime"]), Path(config["data"])
    as_root = os.geteuid() == 0
    # jupyter_client writes the connection file wherever it likes (often the host's /tmp, which the
    # sandbox replaces): the kernel reads a copy in the runtime folder.
    inside = runtime / f"sandbox-{Path(connection_file).name}"
    inside.write_bytes(Path(connection_file).read_bytes())
    inside.chmod(0o600)
    uid = sandbox_uid(worker)
    owners = _lend([cwd, inside], uid) if as_root else []
    cmd = bwrap_command(cwd=cwd, data=data, runtime=runtime, connection_file=str(inside), env=config["env"],
                        limits=limits, as_root=as_root, uid=uid)
    # Interrupts come as messages (the kernelspec's interrupt_mode), which ipykernel turns into a
    # SIGINT to itself. A SIGINT sent to our process group must not end bwrap, and with it the kernel;
    # ipykernel installs its own SIGINT handler while a cell runs, so ignoring it here is inherited harmlessly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    started = time.monotonic()
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             preexec_fn=lambda: _set_limits(limits))
    signal.signal(signal.SIGTERM, lambda *_: child.kill())
    dropped = [0]
    forwarder = threading.Thread(target=_forward, args=(child.stdout, TERMINAL_LIMIT, dropped), daemon=True)
    forwarder.start()
    wall_killed = False
    try:
        code = child.wait(timeout=limits.wall_s)
    except subprocess.TimeoutExpired:
        print(f"sslcourse sandbox: the kernel ran past {limits.wall_s} s and was killed", file=sys.stderr)
        wall_killed = True
        child.kill()
        code = child.wait()
    finally:
        forwarder.join(timeout=5)
        if as_root:
            _give_back(cwd, owners)
        inside.unlink(missing_ok=True)
    _log(config, cwd, {"exit_code": code, "wall_killed": wall_killed, "seconds": round(time.monotonic() - started, 1),
                       "terminal_bytes_dropped": dropped[0], "limits": asdict(limits)})
    return code


def _log(config: dict, cwd: Path, record: dict) -> None:
    """``<log>/<student>.json`` (the submission folder is ``autograded/<student>/<id>``)."""
    if not config.get("log"):
        return
    folder = Path(config["log"])
    folder.mkdir(parents=True, exist_ok=True)
    record = {"student": cwd.parent.name, "folder": str(cwd), **record}
    path = folder / f"{cwd.parent.name}.json"
    # By hand, not sslcourse.files.atomic_write: importing the package would import torch in every launcher.
    path.with_suffix(".tmp").write_text(json.dumps(record, indent=1))
    os.replace(path.with_suffix(".tmp"), path)


# --- Setting it up for nbgrader ------------------------------------------------------------------

def why_not() -> str | None:
    """None when bwrap can build this sandbox here, else why not (for the loud no-sandbox banner)."""
    if not sys.platform.startswith("linux"):
        return f"the sandbox needs Linux namespaces; this is {sys.platform}"
    if not os.access(BWRAP, os.X_OK):
        return f"{BWRAP} is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    as_root = os.geteuid() == 0
    if as_root and not os.access(SETPRIV, os.X_OK):
        return f"{SETPRIV} is not installed (Debian/Ubuntu: util-linux)"
    # The very command a kernel gets (every flag, mount and the uid drop), running Python to import
    # ipykernel: an old bwrap without a flag, or a container that forbids namespaces, shows up here.
    with tempfile.TemporaryDirectory(prefix="sslcourse-sandbox-check-") as scratch:
        cwd, runtime = Path(scratch, "submission"), Path(scratch, "runtime")
        cwd.mkdir()
        runtime.mkdir()
        if as_root:
            os.chmod(scratch, 0o755)
            for folder in (cwd, runtime):
                os.chown(folder, SANDBOX_UID, SANDBOX_UID)
        cmd = bwrap_command(cwd=cwd, data=Path("/nonexistent-sslcourse-data"), runtime=runtime, connection_file="",
                            env={"PATH": "/usr/bin:/bin", "PYTHONNOUSERSITE": "1"}, limits=Limits(), as_root=as_root,
                            program=[sys.executable, "-c", "import ipykernel, os; open('probe', 'w').write('ok')"])
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, preexec_fn=lambda: _set_limits(Limits()))
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"bwrap failed: {error}"
        if proc.returncode != 0 or not (cwd / "probe").exists():
            return f"bwrap cannot build the sandbox here: {(proc.stderr or proc.stdout).strip()[-300:]}"
    return None


def _readable_by_all(folder: Path) -> bool:
    """The folder can be listed and entered, and every file in it read, by any user."""
    if folder.stat().st_mode & 0o005 != 0o005:
        return False
    return all(path.stat().st_mode & 0o004 for path in folder.iterdir() if path.is_file())


def prepare(scratch: Path, *, data: Path, env: dict[str, str], log: Path | None, limits: Limits,
            workers: int = 1) -> Path:
    """Write the kernelspecs (one per worker, :func:`kernel_name`) and their configuration under ``scratch``;
    returns the runtime folder.

    Put ``scratch / "jupyter"`` first on ``JUPYTER_PATH`` and the runtime folder in
    ``JUPYTER_RUNTIME_DIR``, and pass :func:`nbgrader_args` to nbgrader.
    """
    scratch = Path(scratch)
    runtime = scratch / "runtime"
    runtime.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chmod(scratch, 0o755)                         # the sandbox uid must reach runtime/
        # every worker's uid binds its kernel's sockets there; the sticky bit keeps each uid's files its own
        os.chmod(runtime, 0o1777)
    data = Path(data).resolve()
    if os.geteuid() == 0 and data.is_dir() and not _readable_by_all(data):
        # The sandbox uid could not even look into it, and every notebook would fail on its first
        # dataset: the kernels get a private, empty cache instead (the embedded set is rebuilt each time).
        print(f"sslcourse sandbox: the dataset cache {data} (or a file in it) is not readable by other users "
              f"(chmod -R o+rX it to share it); sandboxed kernels use a private empty cache instead", file=sys.stderr)
        env = {**env, "SSLCOURSE_DATA": "/tmp/data"}
        data = Path("/nonexistent-sslcourse-data")
    config = {"runtime": str(runtime), "data": str(data), "env": env,
              "log": str(log) if log else None, "limits": asdict(limits)}
    (scratch / "sandbox.json").write_text(json.dumps(config, indent=1))
    for worker in range(workers):
        sandbox_uid(worker)                              # refuses more workers than uids
        spec = scratch / "jupyter" / "kernels" / kernel_name(worker)
        spec.mkdir(parents=True, exist_ok=True)
        (spec / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, str(Path(__file__).resolve()), "--config", str(scratch / "sandbox.json"),
                     "--worker", str(worker), "-f", "{connection_file}"],
            "display_name": "Python 3 (sslcourse sandbox)", "language": "python", "interrupt_mode": "message",
            "metadata": {"debugger": False}}, indent=1))
    return runtime


def nbgrader_args(runtime: Path, worker: int = 0) -> list[str]:
    """What nbgrader needs to use the sandbox: the kernel, and ZMQ over unix sockets in ``runtime``.

    ``worker`` picks the kernelspec of one of several nbgrader processes running at once
    (``sslcourse autograde --jobs``: its own uid, see :func:`sandbox_uid`) and names its sockets apart:
    jupyter_client picks the first free socket names, and two kernels starting together would
    otherwise pick the same ones.
    """
    return [f"--Execute.kernel_name={kernel_name(worker)}", "--KernelManager.transport=ipc",
            f"--KernelManager.ip={runtime}/kernel{worker}", "--Execute.interrupt_on_timeout=True"]


def limits_from(values: dict[str, int | None]) -> Limits:
    """:class:`Limits` with the given fields changed (``None`` keeps the default)."""
    known = {f.name for f in fields(Limits)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown sandbox limits {sorted(unknown)}; expected some of {sorted(known)}")
    return Limits(**{k: v for k, v in values.items() if v is not None})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run an IPython kernel in the sslcourse sandbox.")
    parser.add_argument("-f", required=True, help="the connection file")
    parser.add_argument("--config", required=True, help="the sandbox.json written by prepare()")
    parser.add_argument("--worker", type=int, default=0, help="which autograde worker: its uid is SANDBOX_UID - worker")
    args = parser.parse_args(argv)
    return run(json.loads(Path(args.config).read_text()), args.f, args.worker)


if __name__ == "__main__":
    sys.exit(main())
