"""scripts/benchmark_evolver.py --quick: the JSON has the shape of BENCHMARKS.md and every target of issues 3 and 17.

Timings are not asserted (shared machines); what is asserted does not depend on them: equal parameter counts of
the baseline, and the rollout memory that stays flat for the evolver while the KV cache grows.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from modeling_veltrix.benchmarks.evolver import EvolverBenchmarkSettings, run_evolver_benchmarks

REPO = Path(__file__).parent.parent
PRESET = REPO / "configuration" / "veltrix-tiny" / "evolver"
TARGETS = {
    "tok_s_64k_over_1k",
    "speedup_vs_hf_mamba2_mixer_16k",
    "mixer_mfu_16k",
    "speedup_vs_sdpa_64k",
    "rollout_step_speed_over_llama",
    "rollout_memory_growth_10k",
    "error_ratio_double_rate",
}


def test_quick_benchmark_writes_every_target(tmp_path):
    output = tmp_path / "benchmark.json"
    # One thread: a smoke run of tiny ops, which two OpenMP threads on a busy machine only slow down.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "datasets"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(REPO / "scripts" / "benchmark_evolver.py"), "--quick", "--output", str(output)]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())

    assert {"torch", "device", "threads", "kernel_path", "dtype", "tokens"} <= set(report["environment"])
    assert report["environment"]["kernel_path"] == "torch"
    assert set(report["results"]) == {"mixer", "model", "rollout", "world"}
    assert {t["name"] for t in report["targets"]} == TARGETS
    for target in report["targets"]:
        assert set(target) == {"name", "value", "op", "target", "measured_at"}
        assert math.isfinite(target["value"]) and target["op"] in (">=", "<=")

    results = report["results"]
    assert 0.9 <= results["model"]["parameters"]["ratio_llama_over_ours"] <= 1.1
    assert results["mixer"]["flops_per_token"]["total"] > 0
    scaling = results["model"]["length_scaling"]
    assert (scaling["from_length"], scaling["to_length"]) == (1024, 2048)
    assert results["rollout"]["speed_ratio_of_peaks"] > 0
    growth = results["rollout"]["memory_growth"]
    assert growth["ours"] <= 1.05 < growth["sdpa_llama_kv_cache"]
    ours_memory = results["rollout"]["memory_by_horizon"]["ours"]
    assert len({entry["cache_bytes"] for entry in ours_memory.values()}) == 1
    world = results["world"]["continuous_time"]
    assert world["error_ratio_double_rate"] == pytest.approx(world["double_rate_mse"] / world["native_rate_mse"])


def test_a_subset_of_sections_reports_only_its_targets_and_times_the_compiled_step():
    settings = EvolverBenchmarkSettings.quick(str(PRESET), sections=("rollout",), compiled_rollout_step=True)
    report = run_evolver_benchmarks(settings, log=lambda message: None)
    assert set(report["results"]) == {"rollout"}
    assert {t["name"] for t in report["targets"]} == {"rollout_step_speed_over_llama", "rollout_memory_growth_10k"}
    rollout = report["results"]["rollout"]
    assert rollout["kernel_path"] == "torch"
    assert rollout["speed_compared"] == "ours_compiled_step"
    assert rollout["compile_seconds"] > 0
    assert set(rollout["steps_per_s"]) == {"ours", "ours_compiled_step", "sdpa_llama_kv_cache"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"sections": ("mixer", "speed")}, "`sections` must be a non-empty subset"),
        ({"sections": ()}, "`sections` must be a non-empty subset"),
        pytest.param(
            {"device": "cuda"},
            "torch sees no CUDA device",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present"),
        ),
    ],
)
def test_bad_settings_are_refused_before_measuring(overrides, message):
    with pytest.raises(ValueError, match=message):
        run_evolver_benchmarks(EvolverBenchmarkSettings.quick(str(PRESET), **overrides), log=lambda message: None)
