"""`scripts/benchmark_planning.py` end to end on its `--quick` settings (both tasks: training, Push-T data through the
own-data path, planning, the baselines, the landscape check, the report's targets), a rerun that reloads the trained
models, and the settings' checks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modeling_veltrix.benchmarks.planning import PlanningBenchmarkSettings

REPO = Path(__file__).resolve().parent.parent
SUCCESS_KEYS = {"veltrix_cem", "veltrix_mppi", "veltrix_gradient", "random", "oracle_cem"}


def run_benchmark(output: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(output.parent / "datasets")}
    command = [sys.executable, str(REPO / "scripts" / "benchmark_planning.py"), "--output", str(output), "--quick"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[Path, dict]:
    output = tmp_path_factory.mktemp("planning") / "report.json"
    result = run_benchmark(output)
    assert result.returncode == 0, result.stderr[-3000:]
    return output, json.loads(output.read_text())


def test_quick_run_reports_both_tasks_and_every_target(quick_run):
    output, report = quick_run
    names = [target["name"] for target in report["targets"]]
    assert names == [
        f"{figure}_{task}"
        for task in ("reach", "pusht")
        for figure in ("success_rate_over_random", "success_rate_over_oracle", "ms_per_plan")
    ]
    for task in ("reach", "pusht"):
        result = report["results"][task]
        # Closed-loop CEM runs on both tasks (the reach world and Push-T's simulator are stepped).
        assert set(result["success_rate"]) == SUCCESS_KEYS | {"veltrix_cem_mpc"}
        assert all(0.0 <= rate <= 1.0 for rate in result["success_rate"].values())
        assert set(result["ms_per_plan_evaluation_budget"]) == {"cem", "mppi", "gradient", "cem_mpc"}
        assert result["ms_per_plan_cem_timing_budget"]["median"] > 0
        assert set(result["median_final_distance"]) == SUCCESS_KEYS | {"veltrix_cem_mpc"}
        assert "closed_loop" in result["budget"]
        assert {target["veltrix"] for target in report["targets"] if "veltrix" in target} == {"veltrix_cem_mpc"}
        assert 0.0 <= result["landscape"]["true_actions_score_best"] <= 1.0
        assert result["num_episodes"] == 2
    assert (output.parent / "report_runs" / "pusht" / "pusht.npz").exists()
    assert report["environment"]["settings"]["num_samples"] == 8
    assert report["environment"]["settings"]["timing_samples"] == 8


def test_a_rerun_reloads_the_trained_models(quick_run):
    output, _ = quick_run
    result = run_benchmark(output)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("already trained") == 4  # encoder and evolver of both tasks


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"tasks": ("chess",)}, "tasks"),
        ({"methods": ("random",)}, "methods"),
        ({"num_episodes": 0}, "num_episodes"),
        ({"top_k": 400}, "top_k"),
        ({"reach_bound": -1.0}, "reach_bound"),
        ({"replan_every": 0}, "replan_every"),
        ({"replan_every": 26}, "replan_every"),
    ],
)
def test_bad_settings_raise_a_value_error_naming_them(values, message):
    with pytest.raises(ValueError, match=message):
        PlanningBenchmarkSettings(**values).check()
