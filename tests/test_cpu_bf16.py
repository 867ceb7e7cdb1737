"""CPU bf16: detected, chosen by a cached measurement, forced by the environment, off under grading."""
from __future__ import annotations

import json
import os

import pytest
import torch

from sslcourse import cpu_bf16
from sslcourse.train.loop import _autocast


@pytest.fixture
def measured(monkeypatch, tmp_path):
    """No forced answer, a fresh data folder, a native processor and a counted fake benchmark."""
    monkeypatch.delenv("SSLCOURSE_CPU_BF16", raising=False)
    monkeypatch.delenv("SSLCOURSE_FAST", raising=False)
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    monkeypatch.setenv("SSLCOURSE_DATA", str(tmp_path))
    monkeypatch.setattr(cpu_bf16, "native_bf16", lambda: "AVX512-BF16")
    monkeypatch.setattr(cpu_bf16, "_load_average", lambda: 0.0)     # a quiet machine unless a test says otherwise
    monkeypatch.setattr(cpu_bf16, "_uncached_decision", None)
    calls = []

    def fake(speedup):
        def measure():
            calls.append(speedup)
            return {"float32": 0.2, "bf16": 0.2 / speedup}
        monkeypatch.setattr(cpu_bf16, "measure", measure)
    return fake, calls, tmp_path


def test_bf16_is_chosen_once_when_measured_faster(measured):
    fake, calls, folder = measured
    fake(2.0)
    assert cpu_bf16.use_bf16() and cpu_bf16.use_bf16()
    assert calls == [2.0]                                   # the second answer came from the cache
    record = json.loads((folder / "cpu_bf16.json").read_text())
    assert record["use_bf16"] and "AVX512-BF16" in record["key"]
    assert "measured 2.00x a float32 step, so used" in cpu_bf16.describe()
    assert isinstance(_autocast(torch.device("cpu"), True), torch.autocast)


def test_float32_stays_when_bf16_is_not_faster_enough(measured):
    fake, _, _ = measured
    fake(1.05)
    assert not cpu_bf16.use_bf16()
    assert not isinstance(_autocast(torch.device("cpu"), True), torch.autocast)
    assert isinstance(_autocast(torch.device("cpu"), "bf16"), torch.autocast)   # forced by the caller


def test_no_native_bf16_means_no_benchmark(measured, monkeypatch):
    fake, calls, _ = measured
    fake(3.0)
    monkeypatch.setattr(cpu_bf16, "native_bf16", lambda: None)
    assert not cpu_bf16.use_bf16() and calls == []
    assert "not native" in cpu_bf16.describe()


@pytest.mark.parametrize("variable, value, expected", [("SSLCOURSE_CPU_BF16", "1", True),
                                                       ("SSLCOURSE_CPU_BF16", "0", False),
                                                       ("SSLCOURSE_FAST", "1", False),
                                                       ("NBGRADER_EXECUTION", "autograde", False)])
def test_the_environment_forces_the_answer_without_a_benchmark(measured, monkeypatch, variable, value, expected):
    fake, calls, _ = measured
    fake(3.0)
    monkeypatch.setenv(variable, value)
    assert cpu_bf16.use_bf16() is expected and calls == []


def test_the_real_measurement_returns_two_step_times():
    seconds = cpu_bf16.measure(steps=1, batch=8, width=4)
    assert set(seconds) == {"float32", "bf16"} and all(v > 0 for v in seconds.values())
    assert cpu_bf16.native_bf16() in (None, "AMX", "AVX512-BF16")


def test_the_measurement_works_inside_no_grad_and_keeps_the_global_random_state():
    """The first feature extraction of a fresh machine measures inside torch.no_grad, mid-notebook."""
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    with torch.no_grad():
        seconds = cpu_bf16.measure(steps=1, batch=4, width=4)
    assert all(v > 0 for v in seconds.values())
    assert torch.equal(torch.rand(3), expected_next)


def test_a_measurement_on_a_busy_machine_is_not_cached(measured, monkeypatch):
    fake, calls, folder = measured
    fake(0.5)                                                   # what a loaded machine measured
    monkeypatch.setattr(cpu_bf16, "_load_average", lambda: 4.0 * (os.cpu_count() or 1))
    assert not cpu_bf16.use_bf16() and not cpu_bf16.use_bf16()
    assert calls == [0.5] and not (folder / "cpu_bf16.json").exists()   # decided once, for this process only
    assert "busy machine" in cpu_bf16.describe()
    monkeypatch.setattr(cpu_bf16, "_uncached_decision", None)   # the next session, on a quiet machine
    monkeypatch.setattr(cpu_bf16, "_load_average", lambda: 0.0)
    fake(2.0)
    assert cpu_bf16.use_bf16() and json.loads((folder / "cpu_bf16.json").read_text())["use_bf16"]
