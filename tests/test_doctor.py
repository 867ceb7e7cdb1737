"""``sslcourse doctor``: every item on this machine, and each failure driven for real shows its fix.

Failures are made, not mocked, wherever the machine allows: an empty data folder, a results folder
under a regular file (tests run as root, where permission bits do not bind), a package shadowed on
PYTHONPATH, an unusable SSLCOURSE_DEVICE, nbgrader's extensions disabled with the real ``jupyter``
commands (and the printed fix run to mend them), bwrap looked for where it is not.
"""
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO_ROOT, run_tool, tool_env
from sslcourse import cli, doctor, sandbox

LABELS = ("python", "torch", "torchvision", "ipywidgets", "jupyterlab", "nbgrader", "device", "bf16", "threads",
          "budget", "data folder", "cached datasets", "CIFAR-10", "results folder", "Validate (lab)",
          "Validate (server)", "grading sandbox")
REINSTALL = 'pip install --force-reinstall --no-deps "nbgrader=='


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """This machine with an empty data folder, its own results folder and Jupyter configuration, smoke preset."""
    for name in ("NBGRADER_EXECUTION", "SSLCOURSE_BUDGET", "SSLCOURSE_DEVICE", "SSLCOURSE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SSLCOURSE_FAST", "1")
    monkeypatch.setenv("SSLCOURSE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("SSLCOURSE_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path / "jupyter"))   # no ~/.jupyter of this machine's
    return tmp_path


def run_doctor(capsys) -> tuple[int, list[str]]:
    code = cli.main(["doctor"])
    return code, capsys.readouterr().out.splitlines()


def line_of(lines: list[str], label: str) -> str:
    return next(line for line in lines if line.startswith(label.ljust(doctor.LABEL_WIDTH)))


def fix_of(lines: list[str], label: str) -> str | None:
    """The fix printed right under ``label``'s line, or None."""
    below = lines[lines.index(line_of(lines, label)) + 1]
    prefix = " " * doctor.LABEL_WIDTH + "fix: "
    return below.removeprefix(prefix) if below.startswith(prefix) else None


def test_report_on_this_machine_has_every_item_aligned_and_is_fine(machine, capsys):
    code, lines = run_doctor(capsys)
    assert code == 0 and lines[-1].startswith("everything looks fine"), "\n".join(lines)
    for label in LABELS:
        assert line_of(lines, label)[doctor.LABEL_WIDTH:].strip(), label     # a value in the aligned column
    assert str(machine / "data") in line_of(lines, "data folder")
    assert "made at the first saved run" in line_of(lines, "results folder")
    assert "embedded" in line_of(lines, "CIFAR-10") and fix_of(lines, "CIFAR-10") is None   # smoke: not needed
    assert "preset 'smoke'" in line_of(lines, "budget")
    assert "installed and enabled" in line_of(lines, "Validate (lab)")
    assert "validate_assignment enabled" in line_of(lines, "Validate (server)")
    assert "instructors" in line_of(lines, "grading sandbox")


def test_missing_cifar10_prints_the_import_fix_and_import_mends_it(machine, monkeypatch, capsys):
    monkeypatch.delenv("SSLCOURSE_FAST")
    monkeypatch.setenv("SSLCOURSE_BUDGET", "cpu")       # a preset that wants CIFAR-10
    code, lines = run_doctor(capsys)
    assert code == 1 and lines[-1].startswith("1 problem(s) found"), "\n".join(lines)
    assert "not there" in line_of(lines, "CIFAR-10")
    assert "sslcourse data --import ~/Downloads/cifar-10" in fix_of(lines, "CIFAR-10")
    assert "none yet" in line_of(lines, "cached datasets")

    folder = machine / "images"
    for split in ("train", "test"):
        (folder / split / "cat").mkdir(parents=True)
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / split / "cat" / "0.png")
    assert cli.main(["data", "--import", str(folder)]) == 0
    code, lines = run_doctor(capsys)
    assert code == 0 and line_of(lines, "CIFAR-10").endswith("cached") and fix_of(lines, "CIFAR-10") is None
    assert "cifar10" in line_of(lines, "cached datasets")


def test_folders_that_cannot_be_written_print_their_fix(machine, monkeypatch, capsys):
    # Under a regular file no folder can ever be made, whoever runs the test (chmod does not bind root).
    blocker = machine / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("SSLCOURSE_RESULTS", str(blocker / "results"))
    monkeypatch.setenv("SSLCOURSE_DATA", str(blocker / "data"))
    code, lines = run_doctor(capsys)
    assert code == 1 and lines[-1].startswith("2 problem(s) found"), "\n".join(lines)
    assert "cannot be written" in line_of(lines, "results folder")
    assert fix_of(lines, "results folder").startswith("export SSLCOURSE_RESULTS=")
    assert fix_of(lines, "data folder").startswith("export SSLCOURSE_DATA=")


def test_a_missing_package_prints_pip_install(machine, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)     # what Python does for a module it cannot import
    code, lines = run_doctor(capsys)
    assert code == 1 and "not installed" in line_of(lines, "ipywidgets")
    assert fix_of(lines, "ipywidgets") == 'pip install "ipywidgets>=7.6"'


def test_an_old_package_prints_the_upgrade(machine, monkeypatch):
    old = type(sys)("ipywidgets")
    old.__version__ = "7.5.1"
    monkeypatch.setitem(sys.modules, "ipywidgets", old)
    check = doctor.check_package("ipywidgets", "7.6")
    assert "older" in check.value and check.fix == 'pip install --upgrade "ipywidgets>=7.6"'
    assert doctor.check_package("torch", "2.1").fix is None


def test_the_command_exits_1_when_a_package_cannot_be_imported(machine, tmp_path):
    """The installed command, end to end: a package shadowed on PYTHONPATH by one that fails to import."""
    shadow = tmp_path / "shadow" / "ipywidgets"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('ipywidgets is broken (a test shadows it)')\n")
    env = tool_env(data=tmp_path / "data", results=tmp_path / "results", config_dir=tmp_path / "jupyter",
                   SSLCOURSE_FAST="1", PYTHONPATH=f"{tmp_path / 'shadow'}:{REPO_ROOT}")
    proc = run_tool([sys.executable, "-m", "sslcourse.cli", "doctor"], cwd=tmp_path, env=env, timeout=300, check=False)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 1, proc.stdout
    assert "ipywidgets is broken" in line_of(lines, "ipywidgets")
    assert fix_of(lines, "ipywidgets") == 'pip install "ipywidgets>=7.6"'
    assert lines[-1].startswith("1 problem(s) found")


def test_an_unusable_device_or_preset_prints_unset(machine, monkeypatch, capsys):
    monkeypatch.setenv("SSLCOURSE_DEVICE", "cuda:99")
    monkeypatch.setenv("SSLCOURSE_BUDGET", "huge")
    monkeypatch.delenv("SSLCOURSE_FAST")
    code, lines = run_doctor(capsys)
    assert code == 1
    assert "cannot be used" in line_of(lines, "device") and fix_of(lines, "device").startswith("unset SSLCOURSE_DEVICE")
    assert "unknown" in line_of(lines, "bf16")
    assert fix_of(lines, "budget").startswith("unset SSLCOURSE_BUDGET")


def test_the_bf16_line_names_the_cpu_instructions(machine, monkeypatch):
    from sslcourse import cpu_bf16

    monkeypatch.setenv("SSLCOURSE_DEVICE", "cpu")
    monkeypatch.setattr(cpu_bf16, "native_bf16", lambda: None)
    assert "neither AVX512-BF16 nor AMX" in doctor.check_bf16().value
    monkeypatch.setattr(cpu_bf16, "native_bf16", lambda: "AMX")
    assert doctor.check_bf16().value.startswith("native (AMX)")


@pytest.mark.parametrize("name", [doctor.NBGRADER_LAB, doctor.VALIDATE_PLUGIN])
def test_a_disabled_lab_extension_prints_the_enable_that_mends_it(machine, monkeypatch, name):
    # The user's configuration first, as outside a virtual environment, so the test writes only in tmp.
    monkeypatch.setenv("JUPYTER_PREFER_ENV_PATH", "0")
    env = tool_env(data=machine / "data", results=machine / "results", config_dir=machine / "jupyter",
                   JUPYTER_PREFER_ENV_PATH="0")
    run_tool(["jupyter", "labextension", "disable", "--level=user", name], cwd=machine, env=env, timeout=300)
    check = doctor.check_validate_button()
    assert "disabled" in check.value and check.fix == f"jupyter labextension enable --level=user {name}"
    run_tool(shlex.split(check.fix), cwd=machine, env=env, timeout=300)
    assert doctor.check_validate_button().fix is None


def test_a_disabled_server_extension_prints_the_enable_that_mends_it(machine, monkeypatch):
    # nbgrader's own server configuration file at the user's level (the venv's stays untouched), read first;
    # then the real `jupyter server extension disable`, and the printed fix run as printed.
    user = machine / "jupyter"
    installed = Path(sys.prefix, "etc", "jupyter", "jupyter_server_config.d", "nbgrader.json")
    (user / "jupyter_server_config.d").mkdir(parents=True)
    shutil.copy(installed, user / "jupyter_server_config.d" / "nbgrader.json")
    monkeypatch.setenv("JUPYTER_PREFER_ENV_PATH", "0")
    env = tool_env(data=machine / "data", results=machine / "results", config_dir=user, JUPYTER_PREFER_ENV_PATH="0")
    run_tool(["jupyter", "server", "extension", "disable", "--user", doctor.VALIDATE_SERVER], cwd=machine, env=env,
             timeout=300)
    check = doctor.check_validate_server()
    assert "disabled" in check.value and check.fix == f"jupyter server extension enable --user {doctor.VALIDATE_SERVER}"
    run_tool(shlex.split(check.fix), cwd=machine, env=env, timeout=300)
    assert doctor.check_validate_server().fix is None


def test_an_unconfigured_server_extension_prints_the_reinstall(machine, monkeypatch):
    monkeypatch.setenv("JUPYTER_NO_CONFIG", "1")      # Jupyter reads no configuration folder at all
    check = doctor.check_validate_server()
    assert "not configured" in check.value and check.fix.startswith(REINSTALL)


def test_fixes_go_where_jupyter_reads_first(machine, monkeypatch):
    monkeypatch.setenv("JUPYTER_PREFER_ENV_PATH", "1")    # a virtual environment's own configuration wins
    assert doctor.labextension_level() == "sys_prefix"
    monkeypatch.setenv("JUPYTER_PREFER_ENV_PATH", "0")
    assert doctor.labextension_level() == "user"


def test_a_lab_extension_that_is_not_installed_prints_the_reinstall(machine, monkeypatch, tmp_path):
    monkeypatch.setattr(doctor, "labextensions_path", lambda: [str(tmp_path / "no-extensions")])
    check = doctor.check_validate_button()
    assert "not installed" in check.value and check.fix.startswith(REINSTALL)


def test_no_sandbox_is_a_note_for_instructors_not_a_failure(machine, monkeypatch, capsys):
    monkeypatch.setattr(sandbox, "BWRAP", "/nonexistent/bwrap")
    code, lines = run_doctor(capsys)
    assert code == 0, "\n".join(lines)
    assert "instructors" in line_of(lines, "grading sandbox")
    assert fix_of(lines, "grading sandbox") == "apt-get install bubblewrap"
    assert lines[-1] == "everything looks fine (1 note(s) for instructors above)"


def test_on_colab_jupyterlab_and_nbgrader_are_not_needed(machine, monkeypatch):
    monkeypatch.setattr(doctor, "colab_runtime", lambda: True)
    monkeypatch.setitem(sys.modules, "nbgrader", None)
    checks = [doctor.check_package("nbgrader", "0.9.6", False), doctor.check_validate_button(),
              doctor.check_validate_server()]
    assert all(check.fix is None for check in checks) and "Colab" in checks[1].value


def test_a_check_that_crashes_is_reported_and_the_report_goes_on(capsys):
    def check_explodes():
        raise RuntimeError("boom")

    assert doctor.run([check_explodes, doctor.check_threads]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert "RuntimeError: boom" in line_of(lines, "explodes") and fix_of(lines, "explodes")
    assert line_of(lines, "threads") and lines[-1] == "1 problem(s) found"

