"""Unit tests for sslcourse.budget (preset precedence), sslcourse.environment (paths, the one reader of os.environ), sslcourse.session (seeds, device)
and sslcourse.checks (expected-vs-got messages, stdout only)."""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from sslcourse import budget as budget_module
from sslcourse import checks, environment, session
from sslcourse.budget import PRESETS, Budget, choose_budget, make_budget

# --- budget -------------------------------------------------------------------------------


@pytest.mark.parametrize("accelerator", [True, False])
def test_grading_wins_over_everything(accelerator):
    env = {"NBGRADER_EXECUTION": "autograde", "SSLCOURSE_FAST": "0", "SSLCOURSE_BUDGET": "gpu"}
    chosen = choose_budget(env, has_accelerator=accelerator)
    assert chosen.name == "smoke"
    assert "nbgrader" in chosen.reason and "autograde" in chosen.reason


def test_validate_also_means_smoke():
    assert choose_budget({"NBGRADER_EXECUTION": "validate"}, has_accelerator=True).name == "smoke"


@pytest.mark.parametrize("value", ["1", "yes", "true"])
def test_fast_wins_over_forced_preset_and_hardware(value):
    chosen = choose_budget({"SSLCOURSE_FAST": value, "SSLCOURSE_BUDGET": "gpu"}, has_accelerator=True)
    assert chosen.name == "smoke" and "SSLCOURSE_FAST" in chosen.reason


@pytest.mark.parametrize("value", ["", "0"])
def test_fast_off_values_are_ignored(value):
    assert choose_budget({"SSLCOURSE_FAST": value}, has_accelerator=False).name == "cpu"


@pytest.mark.parametrize("forced, accelerator", [("cpu", True), ("gpu", False), ("smoke", True), (" GPU ", False)])
def test_forced_preset_wins_over_hardware(forced, accelerator):
    chosen = choose_budget({"SSLCOURSE_BUDGET": forced}, has_accelerator=accelerator)
    assert chosen.name == forced.strip().lower()
    assert "SSLCOURSE_BUDGET" in chosen.reason


def test_unknown_forced_preset_says_what_is_expected():
    with pytest.raises(ValueError, match=r"SSLCOURSE_BUDGET='fast'.*smoke, cpu, gpu"):
        choose_budget({"SSLCOURSE_BUDGET": "fast"}, has_accelerator=False)


@pytest.mark.parametrize("accelerator, expected", [(True, "gpu"), (False, "cpu")])
def test_hardware_decides_last(accelerator, expected):
    assert choose_budget({}, has_accelerator=accelerator).name == expected


def test_hardware_is_probed_when_not_given(monkeypatch):
    monkeypatch.setattr(budget_module, "accelerator_available", lambda: True)
    assert choose_budget({}).name == "gpu"
    monkeypatch.setattr(budget_module, "accelerator_available", lambda: False)
    assert choose_budget({}).name == "cpu"


def test_process_environment_is_read_by_default(monkeypatch):
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    monkeypatch.delenv("SSLCOURSE_FAST", raising=False)
    monkeypatch.setenv("SSLCOURSE_BUDGET", "cpu")
    assert choose_budget(has_accelerator=True).name == "cpu"
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    assert choose_budget(has_accelerator=True).name == "smoke"


def test_presets_grow_from_smoke_to_gpu():
    smoke, cpu, gpu = (make_budget(name) for name in PRESETS)
    assert smoke.offline_only and not cpu.offline_only and not gpu.offline_only
    assert smoke.train_images < cpu.train_images and gpu.train_images is None
    assert smoke.test_images < cpu.test_images and gpu.test_images is None
    assert smoke.batch_size <= cpu.batch_size <= gpu.batch_size
    assert gpu.backbone == "resnet18" and smoke.backbone == cpu.backbone == "convnet"


def test_make_budget_rejects_unknown_names():
    with pytest.raises(ValueError, match=r"Unknown budget preset 'huge'.*smoke, cpu, gpu"):
        make_budget("huge")


def test_pick_returns_the_active_presets_value():
    values = {"smoke": 1, "cpu": 5, "gpu": 40}
    for name in PRESETS:
        assert make_budget(name).pick(**values) == values[name]
    with pytest.raises(TypeError):
        make_budget("cpu").pick(smoke=1, cpu=5)  # every preset must be given a value


def test_budget_is_frozen_and_printable():
    chosen = make_budget("smoke", reason="testing")
    assert isinstance(chosen, Budget)
    with pytest.raises(dataclasses.FrozenInstanceError):
        chosen.batch_size = 1
    text = str(chosen)
    assert "'smoke'" in text and "testing" in text and f"{chosen.train_images:,}" in text
    assert "all training images" in str(make_budget("gpu"))


# --- environment and session ------------------------------------------------------------------------------


@pytest.fixture
def clean_paths(monkeypatch):
    for name in ("SSLCOURSE_HOME", "SSLCOURSE_DATA", "SSLCOURSE_RESULTS", "SSLCOURSE_DEVICE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_paths_default_to_the_checkout(clean_paths):
    checkout = Path(environment.__file__).resolve().parents[1]
    if not (checkout / "solutions").is_dir():
        pytest.skip("sslcourse is not running from a course checkout")
    assert environment.course_home() == checkout
    assert environment.data_dir() == checkout / "data"
    assert environment.results_dir() == checkout / "results"


def test_home_moves_data_and_results(clean_paths, tmp_path):
    clean_paths.setenv("SSLCOURSE_HOME", str(tmp_path / "course"))
    assert environment.course_home() == tmp_path / "course"
    assert environment.data_dir() == tmp_path / "course" / "data"
    assert environment.results_dir() == tmp_path / "course" / "results"


def test_data_and_results_overrides_are_absolute(clean_paths, tmp_path):
    clean_paths.chdir(tmp_path)
    clean_paths.setenv("SSLCOURSE_DATA", "cache")
    clean_paths.setenv("SSLCOURSE_RESULTS", "runs")
    assert environment.data_dir() == tmp_path / "cache" and environment.data_dir().is_absolute()
    assert environment.results_dir() == tmp_path / "runs" and environment.results_dir().is_absolute()


def test_home_expands_the_user(clean_paths):
    clean_paths.setenv("SSLCOURSE_HOME", "~/somewhere")
    assert environment.course_home() == (Path.home() / "somewhere").resolve()


def test_environment_reads_each_rule_from_a_plain_mapping(tmp_path):
    env = environment.read({"NBGRADER_EXECUTION": "autograde", "SSLCOURSE_FAST": "0", "SSLCOURSE_BUDGET": " CPU ",
                            "SSLCOURSE_DATASET": "embedded", "SSLCOURSE_HOME": str(tmp_path),
                            "LD_PRELOAD": "/usr/lib/libjemalloc.so.2"})
    assert env.grading == "autograde" and not env.fast and env.budget == "cpu" and env.dataset == "embedded"
    assert env.data_dir == tmp_path / "data" and env.results_dir == tmp_path / "results"
    assert env.custom_allocator and not env.live_plots_allowed
    quiet = environment.read({"SSLCOURSE_HOME": str(tmp_path)})
    assert quiet.grading is None and quiet.dataset is None and quiet.live_plots_allowed
    assert not quiet.custom_allocator
    assert not environment.read({"SSLCOURSE_FAST": "1", "SSLCOURSE_HOME": str(tmp_path)}).live_plots_allowed
    assert environment.read({"MALLOC_ARENA_MAX_": "2", "SSLCOURSE_HOME": str(tmp_path)}).custom_allocator


def test_only_the_environment_module_reads_environment_variables():
    """Environment policy lives in one module: no other module of the package reads os.environ."""
    package = Path(environment.__file__).resolve().parent
    readers = []
    for path in sorted(package.rglob("*.py")):
        if path.name == "environment.py":
            continue
        text = path.read_text()
        if any(token in text for token in ("os.environ", "getenv(", "from os import environ")):
            readers.append(str(path.relative_to(package)))
    assert readers == [], f"modules reading os.environ outside sslcourse.environment: {readers}"


def _draws():
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_seed_everything_is_reproducible():
    first = session.seed_everything(7)
    draws = _draws(), torch.rand(2, generator=first).tolist()
    second = session.seed_everything(7)
    assert (_draws(), torch.rand(2, generator=second).tolist()) == draws
    session.seed_everything(8)
    assert _draws() != draws[0]


def test_seed_everything_returns_a_seeded_cpu_generator():
    generator = session.seed_everything(3)
    assert isinstance(generator, torch.Generator) and generator.device.type == "cpu"
    assert generator.initial_seed() == 3


def test_choose_device_honours_the_override(clean_paths):
    assert session.choose_device("cpu") == torch.device("cpu")
    clean_paths.setenv("SSLCOURSE_DEVICE", "cpu")
    assert session.choose_device() == torch.device("cpu")


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_choose_device_prefers_cuda_then_mps(clean_paths, cuda, mps, expected):
    clean_paths.setattr(torch.cuda, "is_available", lambda: cuda)
    clean_paths.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert session.choose_device().type == expected


# --- checks -------------------------------------------------------------------------------


def _fails(capsys, call, *expected_fragments):
    """Run a check that must fail; its message must hold every fragment, and stderr stays empty."""
    with pytest.raises(AssertionError) as failure:
        call()
    message = str(failure.value)
    for fragment in expected_fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert capsys.readouterr().err == ""
    return message


def _passes(capsys, call, *printed):
    call()
    out, err = capsys.readouterr()
    assert err == "", f"a check wrote to stderr: {err!r}"
    assert out.startswith("✔"), out
    for fragment in printed:
        assert fragment in out
    return out


def test_check_tensor_passes_on_stdout_only(capsys):
    _passes(capsys, lambda: checks.check_tensor("z", torch.zeros(2, 3), shape=(2, None), dtype=torch.float32,
                                                device="cpu"), "z", "(2, 3)", "float32", "cpu")


def test_check_tensor_failures_say_expected_and_got(capsys):
    x = torch.zeros(3, 4)
    _fails(capsys, lambda: checks.check_tensor("z", [1, 2]), "z: expected a torch.Tensor", "got list")
    _fails(capsys, lambda: checks.check_tensor("z", x, shape=(3, 5)), "expected shape (3, 5)", "got (3, 4)")
    _fails(capsys, lambda: checks.check_tensor("z", x, shape=(None,)), "expected shape ('any',)", "got (3, 4)")
    _fails(capsys, lambda: checks.check_tensor("z", x, dtype=torch.float64),
           "expected dtype torch.float64", "got torch.float32")
    _fails(capsys, lambda: checks.check_tensor("z", x, device="cuda"), "expected a tensor on cuda", "got one on cpu")
    x[0, 0], x[1, 1] = float("nan"), float("inf")
    _fails(capsys, lambda: checks.check_tensor("z", x), "expected only finite values", "got 2 NaN or Inf")
    _passes(capsys, lambda: checks.check_tensor("z", x, finite=False))


def test_check_close_compares_in_float64_within_tolerance(capsys):
    got = torch.tensor([1.0, 2.0], dtype=torch.float16, requires_grad=False)
    _passes(capsys, lambda: checks.check_close("v", got, [1.0, 2.0005], atol=1e-3), "atol=0.001")
    _passes(capsys, lambda: checks.check_close("scalar", 0.5, 0.5))
    leaf = torch.ones(2, requires_grad=True)
    _passes(capsys, lambda: checks.check_close("leaf", leaf * 2, torch.full((2,), 2.0)))


def test_check_close_failures_say_where_and_by_how_much(capsys):
    message = _fails(capsys, lambda: checks.check_close("v", torch.tensor([[1.0, 2.0], [3.0, 4.5]]),
                                                        torch.tensor([[1.0, 2.0], [3.0, 4.0]]), atol=1e-3),
                     "v: values differ", "At index (1, 1) expected 4, got 4.5", "1 of 4 entries off")
    assert "atol=0.001" in message
    _fails(capsys, lambda: checks.check_close("v", torch.zeros(3), torch.zeros(4)), "expected shape (4,)", "got (3,)")
    _fails(capsys, lambda: checks.check_close("v", torch.tensor([float("nan")]), [0.0]), "expected finite values")


def test_check_equal(capsys):
    _passes(capsys, lambda: checks.check_equal("labels", torch.tensor([0, 1, 2]), [0, 1, 2]))
    _passes(capsys, lambda: checks.check_equal("k", 4, 4))
    _fails(capsys, lambda: checks.check_equal("labels", torch.tensor([0, 1, 3]), torch.tensor([0, 1, 2])),
           "expected 2 at flat index 2, got 3")
    _fails(capsys, lambda: checks.check_equal("labels", torch.tensor([0, 1]), torch.tensor([0, 1, 2])),
           "expected shape (3,)", "got (2,)")
    _fails(capsys, lambda: checks.check_equal("name", "moco", "simclr"), "expected 'simclr', got 'moco'")


def test_check_true(capsys):
    out = _passes(capsys, lambda: checks.check_true(True, "labels are balanced: 4 of each"))
    assert "labels are balanced" in out
    _fails(capsys, lambda: checks.check_true(False, "labels are balanced: got 3 and 5"), "got 3 and 5")


def test_student_names_the_unfinished_function(capsys):
    def rotate_batch(x):
        raise NotImplementedError()

    wrapped = checks.student(rotate_batch)
    assert wrapped.__name__ == "rotate_batch"
    with pytest.raises(NotImplementedError, match="rotate_batch is not implemented yet"):
        wrapped(1)
    assert checks.student(lambda x: x + 1)(1) == 2

    def broken(x):
        raise KeyError("other errors pass through")

    with pytest.raises(KeyError):
        checks.student(broken)(1)
    assert capsys.readouterr().err == ""


def test_needs_names_the_purpose_and_the_function():
    def info_nce(x):
        raise ValueError("shapes do not match")

    with pytest.raises(RuntimeError, match=r"The MoCo experiment needs your info_nce, which failed with "
                                           r"ValueError: shapes do not match"):
        checks.needs(info_nce, "The MoCo experiment")(1)
    assert checks.needs(lambda x: 2 * x, "Anything")(3) == 6


def test_require_names_the_missing_result_and_the_part_that_makes_it(capsys):
    from sslcourse import checks

    made_by = {"history": "the training cell", "probe": "the probe cell"}
    namespace = {"history": [1.0], "probe": None}
    checks.require(namespace, made_by, "history")
    with pytest.raises(RuntimeError, match="needs `probe`: run the probe cell first"):
        checks.require(namespace, made_by, "history", "probe")
    with pytest.raises(RuntimeError, match="needs `history`: run the training cell first"):
        checks.require({}, made_by, "history")
    assert capsys.readouterr().err == ""


def test_student_reports_warnings_and_stderr_on_stdout(capfd):
    """A correct function that warns or prints to stderr must not make nbgrader score its test cell 0."""
    import os
    import sys
    import warnings

    def chatty(x):
        warnings.warn("careful with x")
        print("debug: x =", x, file=sys.stderr)
        os.write(2, b"from C\n")
        return 2 * x

    assert checks.student(chatty)(21) == 42
    out, err = capfd.readouterr()
    assert err == ""
    assert "chatty warned (UserWarning: careful with x)" in out
    assert "chatty wrote to stderr" in out and "debug: x = 21" in out and "from C" in out


def test_student_keeps_the_stub_message_and_reports_nothing_when_quiet(capfd):
    def stub(x):
        raise NotImplementedError()

    with pytest.raises(NotImplementedError, match="stub is not implemented yet"):
        checks.student(stub)(1)
    assert checks.student(lambda x: x)(3) == 3
    out, err = capfd.readouterr()
    assert err == "" and "note:" not in out
