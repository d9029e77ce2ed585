"""Cost-model fitting script: recovers known throughputs and prints a profile and a table."""

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

_SPEC = importlib.util.spec_from_file_location("fit_cost_model", REPO / "benchmarks" / "fit_cost_model.py")
fit_cost_model = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(fit_cost_model)

_PROFILE = {
    "eval": {"dense": 1e11, "fft": 1e10, "mix": 5e10, "overhead": 4e-3},
    "train": {"dense": 3e10, "fft": 3e9, "mix": 1e10, "overhead": 1e-2},
}


def _synthetic_times(channels, size, kernel_size, repeats):
    del repeats
    multiply_adds, fft_flops, mixing = fit_cost_model.operation_counts(channels, size, kernel_size)
    times = {}
    for mode, throughput in _PROFILE.items():
        times[f"dense_{mode}"] = multiply_adds / throughput["dense"]
        spectral = fft_flops / throughput["fft"] + mixing / throughput["mix"] + throughput["overhead"]
        times[f"spectral_{mode}"] = spectral
    return times


def _rows():
    rows = []
    for channels in (8, 32, 64):
        for size in (24, 48):
            for kernel_size in (3, 5):
                row = {"C": channels, "S": size, "k": kernel_size}
                row.update(_synthetic_times(channels, size, kernel_size, 1))
                rows.append(row)
    return rows


def test_fit_recovers_known_throughputs():
    profile = fit_cost_model.fit_profile(_rows())

    for mode, expected in _PROFILE.items():
        for name, value in expected.items():
            assert profile[mode][name] == pytest.approx(value, rel=1e-6), (mode, name)


def test_fit_drops_term_that_would_turn_negative():
    rows = _rows()
    for row in rows:
        _, _, mixing = fit_cost_model.operation_counts(row["C"], row["S"], row["k"])
        row["spectral_eval"] -= mixing / _PROFILE["eval"]["mix"]

    profile = fit_cost_model.fit_profile(rows)

    assert profile["eval"]["mix"] == float("inf")
    assert profile["eval"]["fft"] == pytest.approx(_PROFILE["eval"]["fft"], rel=1e-6)
    assert profile["eval"]["overhead"] == pytest.approx(_PROFILE["eval"]["overhead"], rel=1e-6)


def test_fit_rejects_negative_dense_times():
    rows = _rows()
    for row in rows:
        row["dense_eval"] = -row["dense_eval"]

    with pytest.raises(ValueError, match="dense times must be positive"):
        fit_cost_model.fit_profile(rows)


def test_fit_script_prints_profile_and_choices(monkeypatch, capsys):
    monkeypatch.setattr(fit_cost_model, "time_strategies", _synthetic_times)

    fit_cost_model.main(["--channels", "8", "64", "--sizes", "24", "48", "--kernels", "3", "5", "--threads", "1"])
    output = capsys.readouterr().out

    assert '"eval": {"dense": 1e+11' in output
    assert '"train": {"dense": 3e+10' in output
    assert "| 64 | 48 | 5 | train |" in output
    assert output.count("| spectral |") + output.count("| dense |") == 16
