"""The kernel sandbox of ``sslcourse autograde`` (sslcourse/sandbox.py), attacked by real submissions.

A temporary copy of the course gets one tiny assignment of our own, ``sbx``: one exercise
(``center``, a tensor function) and one autograded test cell worth 1 point, written with the
course's own ``sslcourse.checks`` as every notebook's are. Each student below submits the
release with the exercise answered, plus whatever the student tries; one
``sslcourse autograde sbx`` grades them all, in the sandbox, in this order:

=============  ======================================================  ==============================
student        the submission also                                     expected
=============  ======================================================  ==============================
a_perfect      nothing                                                 1 point
b_solutions    reads solutions/sbx/sbx.ipynb before defining center    0: the read raises
c_gradebook    reads gradebook.db                                      0: the read raises
d_neighbour    writes into a_perfect's submitted/ and autograded/      0, a_perfect's folders intact
e_data         writes into the dataset cache                           0, the cache unchanged
f_internet     opens a socket to 1.1.1.1:80                            0: no network
g_host         connects to a TCP server of the host on 127.0.0.1       0, the server sees no one
h_loop         an extra cell ``while True: pass``                      1: only that cell times out
i_memory       an extra cell that allocates without end                1: MemoryError in that cell
j_forkbomb     an extra cell forking sleeping children without end     contained at the process limit
                                                                       and flagged; its later cells
                                                                       may fail (no thread left)
k_exit         an extra cell ``os._exit(1)``                           0, the kernel died; reported
l_sysexit      an extra cell ``sys.exit()``                            1: IPython turns it into an error
m_crash        an extra cell that segfaults the interpreter            0, the kernel died; reported
n_output       an extra cell printing 300 MB                           1, the notebook stays small
o_nan          center returns NaN                                      0, "NaN" in the test's output
p_shape        center returns the wrong shape                          0, "expected shape" in it
q_bigfile      an extra cell writing a file past the size limit        1: OSError in that cell
r_deleted      the test cell deleted                                   0; reported as deleted
s_duplicated   the exercise cell (and its grade id) duplicated         reported; nbgrader refuses it,
                                                                       the others are still graded
z_last         nothing                                                 1 point (after every bomb)
=============  ======================================================  ==============================

The sandbox needs bubblewrap able to create namespaces; without it these tests are skipped
(`.ci/run` installs Debian's bubblewrap where it can).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from sslcourse import sandbox

from conftest import copy_course, run_tool, tool_env

WHY_NOT = sandbox.why_not()
needs_bwrap = pytest.mark.skipif(WHY_NOT is not None, reason=f"no kernel sandbox here: {WHY_NOT}")

ID = "sbx"
ANSWER = "def center(x):\n    return x - x.mean(dim=0)\n"
TEST = ("import torch\nfrom sslcourse import checks\n"
        "center_ = checks.student(center)\n"
        "x = torch.arange(6.0).reshape(3, 2)\n"
        "got = center_(x)\n"
        "checks.check_tensor('center(x)', got, shape=(3, 2))\n"
        "checks.check_close('center(x)', got, torch.tensor([[-2.0, -2.0], [0.0, 0.0], [2.0, 2.0]]))")
LIMITS = ["--sandbox-processes", "32", "--sandbox-memory-mib", "5120", "--sandbox-file-mib", "64",
          "--sandbox-output-mib", "4"]


def _meta(grade_id: str, *, solution: bool, grade: bool, points: int = 0) -> dict:
    meta = {"grade": grade, "grade_id": grade_id, "locked": not solution, "schema_version": 3,
            "solution": solution, "task": False}
    if grade:
        meta["points"] = points
    return {"nbgrader": meta}


def source_notebook():
    """solutions/sbx/sbx.ipynb: one exercise, one autograded test cell."""
    nb = new_notebook(cells=[
        new_code_cell("import torch", metadata=_meta("setup", solution=False, grade=False)),
        new_markdown_cell("Write `center(x)`: subtract the mean over the batch dimension."),
        new_code_cell("def center(x):\n    ### BEGIN SOLUTION\n    return x - x.mean(dim=0)\n    ### END SOLUTION",
                      metadata=_meta("center", solution=True, grade=False)),
        new_code_cell(TEST, metadata=_meta("test_center", solution=False, grade=True, points=1)),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def attacks(course: Path, data: Path, host_port: int) -> dict[str, tuple[str, str]]:
    """student -> (code before the answer in the exercise cell, an extra cell after it); see the table above."""
    neighbour = [course / "submitted" / "a_perfect" / ID / "hacked.txt",
                 course / "autograded" / "a_perfect" / ID / "hacked.txt"]
    return {
        "a_perfect": ("", ""),
        "b_solutions": (f"stolen = open({str(course / 'solutions' / ID / f'{ID}.ipynb')!r}).read()\n", ""),
        "c_gradebook": (f"stolen = open({str(course / 'gradebook.db')!r}, 'rb').read()\n", ""),
        "d_neighbour": ("".join(f"open({str(p)!r}, 'w').write('x')\n" for p in neighbour), ""),
        "e_data": (f"open({str(data / 'hacked.txt')!r}, 'w').write('x')\n", ""),
        "f_internet": ("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=3).close()\n", ""),
        "g_host": (f"import socket\nsocket.create_connection(('127.0.0.1', {host_port}), timeout=3).close()\n", ""),
        "h_loop": ("", "while True:\n    pass"),
        "i_memory": ("", "hoard = []\nwhile True:\n    hoard.append(bytearray(2**28))"),
        "j_forkbomb": ("", "import os\nwhile True:\n    if os.fork() == 0:\n        import time; time.sleep(60)"),
        "k_exit": ("", "import os\nos._exit(1)"),
        "l_sysexit": ("", "import sys\nsys.exit()"),
        "m_crash": ("", "import ctypes\nctypes.string_at(0)"),
        "n_output": ("", "for _ in range(30):\n    print('x' * 10**7)"),
        "o_nan": ("", "def center(x):\n    return x * float('nan')"),
        "p_shape": ("", "def center(x):\n    return x.mean(dim=0)"),
        "q_bigfile": ("", "with open('big.bin', 'wb') as f:\n    f.write(bytes(100 * 2**20))"),
        "r_deleted": ("", ""),
        "s_duplicated": ("", ""),
        "z_last": ("", ""),
    }


def submission(release, student: str, before: str, extra: str):
    nb = nbformat.from_dict(json.loads(json.dumps(release)))
    index = next(i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("solution"))
    nb.cells[index].source = before + ANSWER
    if extra:
        nb.cells.insert(index + 1, new_code_cell(extra))
    if student == "r_deleted":
        nb.cells = [c for c in nb.cells if not c.metadata.get("nbgrader", {}).get("grade")]
    if student == "s_duplicated":
        twin = nbformat.from_dict(json.loads(json.dumps(nb.cells[index])))
        twin.id = "twin"  # the grade id is what nbgrader trips on; nbformat itself renames duplicate cell ids
        nb.cells.insert(index + 1, twin)
    return nb


DUMP_SCORES = """
import json, sys
from nbgrader.api import Gradebook
with Gradebook(sys.argv[1]) as gb:
    print(json.dumps({s.student.id: s.score for s in gb.assignment_submissions(sys.argv[2])}))
"""


class Listener:
    """A TCP server on the host's 127.0.0.1 that counts connections."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.5)
        self.port, self.accepted, self.stop = self.sock.getsockname()[1], 0, False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop:
            try:
                self.sock.accept()[0].close()
                self.accepted += 1
            except OSError:
                pass

    def close(self):
        self.stop = True
        self.thread.join()
        self.sock.close()


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    if WHY_NOT is not None:
        pytest.skip(f"no kernel sandbox on this machine: {WHY_NOT}")
    course = copy_course(tmp_path_factory.mktemp("sandbox-course"))
    data = tmp_path_factory.mktemp("sandbox-data")
    data.chmod(0o755)  # a dataset cache is readable by all; pytest's tmp folders are not
    (data / "cache.npz").write_bytes(b"dataset")
    scratch = tmp_path_factory.mktemp("sandbox-env")
    env = tool_env(data=data, results=scratch / "results", config_dir=scratch / "jupyter-config")
    (course / "solutions" / ID).mkdir()
    nbformat.write(source_notebook(), course / "solutions" / ID / f"{ID}.ipynb")
    run_tool(["nbgrader", "generate_assignment", ID, "--force", f"--CourseDirectory.root={course}"],
             cwd=course, env=env)
    release = nbformat.read(course / "notebooks" / ID / f"{ID}.ipynb", as_version=4)
    listener = Listener()
    students = attacks(course, data, listener.port)
    for student, (before, extra) in students.items():
        folder = course / "submitted" / student / ID
        folder.mkdir(parents=True)
        nbformat.write(submission(release, student, before, extra), folder / f"{ID}.ipynb")
    try:
        proc = run_tool([sys.executable, "-m", "sslcourse.cli", "autograde", ID, "--course", str(course), *LIMITS,
                         "--", "--Execute.timeout=20", "--force"],
                        cwd=course, env=env, timeout=1200, check=False)
    finally:
        listener.close()
    dump = run_tool([sys.executable, "-c", DUMP_SCORES, f"sqlite:///{course / 'gradebook.db'}", ID],
                    cwd=course, env=env)
    report = {row["student"]: row for row in
              __import__("csv").DictReader((course / "reports" / f"{ID}.csv").open())}
    return {"course": course, "data": data, "output": proc.stdout, "returncode": proc.returncode,
            "listener": listener, "students": students, "report": report,
            "scores": json.loads(dump.stdout.strip().splitlines()[-1])}


def outputs(graded, student: str) -> str:
    """The errors and streams of the student's autograded notebook, for assertion messages."""
    path = graded["course"] / "autograded" / student / ID / f"{ID}.ipynb"
    if not path.exists():
        return f"(no autograded notebook for {student})"
    shown = []
    for cell in nbformat.read(path, as_version=4).cells:
        for out in cell.get("outputs", []):
            if out.output_type == "error":
                shown.append(f"{out.ename}: {out.evalue}")
            elif out.output_type == "stream":
                shown.append(out.text[:300])
    return "; ".join(shown)


pytestmark = pytest.mark.slow


def test_autograde_says_it_is_sandboxed(graded):
    assert "sandboxed kernels" in graded["output"] and "NO SANDBOX" not in graded["output"], graded["output"][-3000:]


@pytest.mark.parametrize("student", ["a_perfect", "z_last", "h_loop", "i_memory", "l_sysexit", "n_output",
                                     "q_bigfile"])
def test_full_points(graded, student):
    """A correct answer keeps its point; a looping, hoarding, exiting or flooding extra cell fails alone."""
    assert graded["scores"].get(student) == 1, (graded["scores"], outputs(graded, student))


@pytest.mark.parametrize("student, error", [("b_solutions", "FileNotFoundError"), ("c_gradebook", "FileNotFoundError"),
                                            ("d_neighbour", "FileNotFoundError"), ("e_data", "OSError"),
                                            ("f_internet", "OSError"), ("g_host", "ConnectionRefusedError")])
def test_attack_fails(graded, student, error):
    """The attempt raises in the exercise cell, so center is never defined and the test cell scores 0."""
    assert graded["scores"].get(student) == 0, (graded["scores"], outputs(graded, student))
    shown = outputs(graded, student)
    assert error in shown or "Error" in shown, shown


def test_attacks_left_no_trace(graded):
    course, data = graded["course"], graded["data"]
    assert not list(course.glob("*/a_perfect/*/hacked.txt"))
    assert sorted(p.name for p in data.iterdir()) == ["cache.npz"]
    assert graded["listener"].accepted == 0


def test_each_limit_hits_only_its_cell(graded):
    assert "CellTimeoutError" in outputs(graded, "h_loop")
    assert "MemoryError" in outputs(graded, "i_memory")
    assert "BlockingIOError" in outputs(graded, "j_forkbomb") or "Resource temporarily" in outputs(graded, "j_forkbomb")
    assert "File too large" in outputs(graded, "q_bigfile")
    assert not (graded["course"] / "autograded" / "q_bigfile" / ID / "big.bin").exists() or \
        (graded["course"] / "autograded" / "q_bigfile" / ID / "big.bin").stat().st_size <= 64 * 2**20


def test_huge_output_is_cut_and_the_notebook_stays_small(graded):
    path = graded["course"] / "autograded" / "n_output" / ID / f"{ID}.ipynb"
    assert path.stat().st_size < 8 * 2**20, path.stat().st_size
    assert sandbox.OUTPUT_NOTE.format(4) in path.read_text()


@pytest.mark.parametrize("student, wrong", [("o_nan", "NaN"), ("p_shape", "expected shape")])
def test_wrong_results_score_zero_with_the_reason(graded, student, wrong):
    assert graded["scores"].get(student) == 0, (graded["scores"], outputs(graded, student))
    assert wrong in outputs(graded, student)


def test_a_fork_bomb_is_contained_and_flagged(graded):
    """Its children hold every process slot of the sandbox until the kernel ends; then they end too."""
    entry = graded["report"]["j_forkbomb"]
    assert "hit the process limit" in entry["sandbox"] and entry["needs_review"] == "True", entry
    assert graded["scores"]["z_last"] == 1


@pytest.mark.parametrize("student", ["k_exit", "m_crash"])
def test_a_dead_kernel_scores_zero_is_reported_and_the_batch_goes_on(graded, student):
    assert graded["scores"].get(student) == 0, (graded["scores"], outputs(graded, student))
    assert graded["report"][student]["kernel_died"] == "True", graded["report"][student]
    assert graded["scores"]["z_last"] == 1 and set(graded["scores"]) >= set(graded["students"]) - {"s_duplicated"}


def test_deleted_and_duplicated_cells_are_reported(graded):
    assert graded["scores"].get("r_deleted") == 0, graded["scores"]
    assert "deleted test cells: test_center" in graded["report"]["r_deleted"]["structure"]
    assert "duplicated grade cells: center" in graded["report"]["s_duplicated"]["structure"]


def test_the_report_names_the_sandbox_violations(graded):
    report = graded["report"]
    for student in ("b_solutions", "c_gradebook", "d_neighbour", "e_data", "f_internet", "g_host", "i_memory",
                    "j_forkbomb", "n_output", "q_bigfile"):
        assert report[student]["sandbox"], (student, report[student])
    assert not report["a_perfect"]["sandbox"] and report["a_perfect"]["needs_review"] == "False", report["a_perfect"]


def test_no_sandbox_process_survives(graded):
    uids = ",".join(str(sandbox.sandbox_uid(w)) for w in range(sandbox.MAX_WORKERS))
    ps = subprocess.run(["ps", "-o", "pid=,cmd=", "-u", uids], capture_output=True, text=True)
    assert ps.stdout.strip() == "", ps.stdout


def test_submission_folders_given_back(graded):
    """Lent to the sandbox uid while the kernel ran, the autograded folders belong to the grader again."""
    lent = [p for p in (graded["course"] / "autograded").rglob("*") if sandbox.is_sandbox_uid(p.lstat().st_uid)]
    assert not lent, lent


def test_command_line_mounts_no_course(tmp_path):
    """Unit check of the bwrap command: the course is not mounted, only the submission folder."""
    course = tmp_path / "course"
    cwd = course / "autograded" / "s" / ID
    cmd = sandbox.bwrap_command(cwd=cwd, data=tmp_path / "data", runtime=tmp_path / "rt",
                                connection_file=str(tmp_path / "rt" / "k.json"), env={"PATH": "/usr/bin"},
                                limits=sandbox.Limits(), as_root=True)
    mounted = [cmd[i + 1] for i, a in enumerate(cmd) if a in ("--bind", "--ro-bind")]
    assert str(cwd) in mounted and not any(m == str(course) or m == str(course / "solutions") for m in mounted)
    assert "--unshare-net" in cmd and "--clearenv" in cmd and sandbox.SETPRIV in cmd


# --- without bubblewrap: the pieces ----------------------------------------------------------

def test_kernel_environment_passes_course_settings_only(tmp_path):
    from sslcourse import environment
    env = environment.kernel_environment(python_bin=Path("/venv/bin"), package_parent=Path("/repo"), data=tmp_path,
                                         environ={"SSLCOURSE_CPU_BF16": "0", "SSLCOURSE_HOME": "/home/x",
                                                  "AWS_SECRET_ACCESS_KEY": "s3cret", "HOME": "/root",
                                                  "OMP_NUM_THREADS": "2", "JUPYTER_TOKEN": "t"})
    assert env["SSLCOURSE_CPU_BF16"] == "0" and env["OMP_NUM_THREADS"] == "2"
    assert "AWS_SECRET_ACCESS_KEY" not in env and "JUPYTER_TOKEN" not in env and "SSLCOURSE_HOME" not in env
    assert env["HOME"] == "/tmp" and env["SSLCOURSE_DATA"] == str(tmp_path) and env["PYTHONPATH"] == "/repo"
    assert env["NBGRADER_EXECUTION"] == "autograde", "nbgrader sets it only after this environment is made"


CAP_PROBE = """
import sys
class Stream:  # stands in for ipykernel's OutStream (a Python class, as it is)
    def __init__(self): self.parts = []
    def write(self, s): self.parts.append(s); return len(s)
    def flush(self): pass
out, err = Stream(), Stream()
sys.stdout, sys.stderr = out, err
exec({line!r})
original = type(out).__mro__[1].write.__get__(out)
sys.stdout.write = original                    # as IPython puts the stream's own method back after a cell
for _ in range(5):
    print("x" * 400)
print("late", file=sys.stderr)
sys.__stdout__.write(repr(("".join(out.parts) + "".join(err.parts))[-80:]) + " " + str(sum(map(len, out.parts + err.parts))))
"""


def test_output_cap_counts_every_write_and_says_so_once():
    limits = sandbox.Limits(output_mib=1)
    line = sandbox._cap_output_line(limits).replace(str(2**20), "1000")
    proc = subprocess.run([sys.executable, "-c", CAP_PROBE.format(line=line)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    note = sandbox.OUTPUT_NOTE.format(1)
    shown, total = proc.stdout.rsplit(" ", 1)
    assert note in shown and "late" not in shown, shown
    assert int(total) == 1000 + len(note) + 2, total


def test_report_reads_what_the_sandbox_stopped(tmp_path):
    from sslcourse.report import _launcher_findings, sandbox_findings
    folder = tmp_path / "autograded" / "s" / ID
    assert sandbox_findings(f"FileNotFoundError: [Errno 2] No such file or directory: '{tmp_path}/gradebook.db'",
                            folder) == [f"tried to reach {tmp_path}/gradebook.db (not in its sandbox)"]
    assert sandbox_findings(f"FileNotFoundError: [Errno 2] No such file or directory: '{folder}/mine.txt'",
                            folder) == []
    assert sandbox_findings("OSError: [Errno 101] Network is unreachable", folder) == \
        ["tried to open a network connection"]
    assert sandbox_findings("ValueError: a plain mistake", folder) == []
    limits = {"wall_s": 1800}
    assert _launcher_findings({"exit_code": 0, "limits": limits}) == []
    assert _launcher_findings({"exit_code": 143, "limits": limits}) == [], "SIGTERM: the grader ended a slow shutdown"
    assert "SIGSEGV" in _launcher_findings({"exit_code": 139, "limits": limits})[0]
    assert "wall limit" in _launcher_findings({"exit_code": -9, "wall_killed": True, "limits": limits})[0]


def test_unknown_limit_is_refused():
    with pytest.raises(ValueError, match="unknown sandbox limits"):
        sandbox.limits_from({"memory": 10})
    assert sandbox.limits_from({"memory_mib": 10, "processes": None}) == sandbox.Limits(memory_mib=10)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root drops kernels to another uid")
def test_a_cache_the_sandbox_uid_cannot_read_is_replaced_by_a_private_one(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    sandbox.prepare(tmp_path / "scratch", data=data, env={"SSLCOURSE_DATA": str(data)}, log=None,
                    limits=sandbox.Limits())
    config = json.loads((tmp_path / "scratch" / "sandbox.json").read_text())
    assert config["env"]["SSLCOURSE_DATA"] == "/tmp/data" and not Path(config["data"]).exists(), config
    assert "not readable by other users" in capsys.readouterr().err


def test_why_not_tries_the_real_command_and_says_what_failed(tmp_path, monkeypatch):
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: Unknown option --size' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sandbox, "BWRAP", str(fake))
    if sys.platform.startswith("linux") and (os.geteuid() != 0 or os.access(sandbox.SETPRIV, os.X_OK)):
        assert "Unknown option --size" in sandbox.why_not()
    monkeypatch.setattr(sandbox, "BWRAP", str(tmp_path / "missing"))
    assert "not installed" in sandbox.why_not() or not sys.platform.startswith("linux")


def test_each_worker_has_its_own_kernelspec_and_uid(tmp_path):
    """--jobs N: worker w's kernels run as SANDBOX_UID - w, so RLIMIT_NPROC (per uid) is each kernel's own."""
    runtime = sandbox.prepare(tmp_path / "scratch", data=tmp_path / "data", env={}, log=None,
                              limits=sandbox.Limits(), workers=3)
    uids = set()
    for worker in range(3):
        spec = json.loads((tmp_path / "scratch" / "jupyter" / "kernels" / sandbox.kernel_name(worker)
                           / "kernel.json").read_text())
        assert spec["argv"][spec["argv"].index("--worker") + 1] == str(worker)
        args = sandbox.nbgrader_args(runtime, worker)
        assert f"--Execute.kernel_name={sandbox.kernel_name(worker)}" in args
        assert f"--KernelManager.ip={runtime}/kernel{worker}" in args
        cmd = sandbox.bwrap_command(cwd=tmp_path, data=tmp_path / "data", runtime=runtime, connection_file="",
                                    env={}, limits=sandbox.Limits(), as_root=True, uid=sandbox.sandbox_uid(worker))
        uids.add(next(a for a in cmd if a.startswith("--reuid=")))
    assert uids == {f"--reuid={sandbox.SANDBOX_UID - w}" for w in range(3)}
    assert all(sandbox.is_sandbox_uid(sandbox.sandbox_uid(w)) for w in range(sandbox.MAX_WORKERS))
    assert not sandbox.is_sandbox_uid(0) and not sandbox.is_sandbox_uid(sandbox.SANDBOX_UID + 1)
    with pytest.raises(ValueError, match="sandbox worker must be in"):
        sandbox.sandbox_uid(sandbox.MAX_WORKERS)
