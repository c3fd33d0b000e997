"""`scripts/benchmark_engram.py` end to end on its `--quick` settings (report shape, targets, plots, resume), its
ablations (random table, fixed gate, shuffled keys), the bypass variant, the manifold distance and the allocation
experiment's parameter split."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_engram import fill_table, make_engram

from modeling_veltrix.benchmarks.engram import (
    VARIANTS,
    EngramBenchmarkSettings,
    allocation_configs,
    evolver_parameters,
    manifold_distance,
    with_bypass,
    with_fixed_gate,
    with_random_table,
    with_shuffled_keys,
)
from modeling_veltrix.configuration_veltrix import VeltrixEvolverConfig
from modeling_veltrix.training import VeltrixTrainingRecipe

REPO = Path(__file__).resolve().parent.parent


def run_benchmark(output: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(output.parent / "datasets")}
    script = REPO / "scripts" / "benchmark_engram.py"
    command = [sys.executable, str(script), "--output", str(output), "--quick", *extra]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[Path, dict]:
    output = tmp_path_factory.mktemp("engram") / "report.json"
    result = run_benchmark(output)
    assert result.returncode == 0, result.stderr[-3000:]
    return output, json.loads(output.read_text())


def test_quick_run_reports_every_figure(quick_run):
    output, report = quick_run
    names = [target["name"] for target in report["targets"]]
    assert names == [
        "error_ratio_with_memory_10x_pendulum",
        "error_ratio_random_table_over_memory_10x_pendulum",
        "pixel_error_ratio_with_memory_10x_pendulum",
        "pixel_error_ratio_random_table_over_memory_10x_pendulum",
    ]
    results = report["results"]
    for variant in VARIANTS:
        assert f"latent_mse_{variant}_10x_pendulum" in results
        assert f"manifold_distance_{variant}_10x_pendulum" in results
        assert results[f"flops_per_step_{variant}_pendulum"] > 0
    for variant in ("memory", "random_table", "fixed_gate", "shuffled_keys", "bypass"):
        assert 0.0 <= results[f"hit_rate_{variant}_pendulum"] <= 1.0
    assert results["hit_rate_memory_pendulum"] > 0  # unseen codes snap to seen ones: a rollout is always addressed
    assert results["table_bytes_pendulum"] > 0 and 0 <= results["table_collided_slot_fraction_pendulum"] <= 1
    assert 0 < results["codebook_utilisation_pendulum"] <= 1
    world = json.loads((output.parent / "report_runs" / "pendulum" / "engram_benchmark.json").read_text())["result"]
    memory = world["variants"]["memory"]["latent_mse_at"]["10x"]
    plain = world["variants"]["no_memory"]["latent_mse_at"]["10x"]
    assert report["targets"][0]["value"] == pytest.approx(memory / plain)
    assert [point["share"] for point in results["allocation"]] == [0.0, 0.25]
    for path in results["plots"].values():
        assert Path(path).is_file()
    card = (output.parent / "report_runs" / "model_card.md").read_text()
    assert "benchmark_engram.py results: start" in card and "| pendulum | random_table |" in card


def test_rerun_loads_the_built_memory_and_allocation_points(quick_run):
    output, report = quick_run
    again = output.parent / "again.json"
    result = run_benchmark(again, "--output-dir", str(output.parent / "report_runs"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "memory loaded" in result.stdout and "scores loaded" in result.stdout
    assert "allocation pendulum: share" not in result.stdout
    assert json.loads(again.read_text())["targets"] == report["targets"]


def test_random_table_keeps_hits_and_statistics_but_not_values():
    engram = make_engram()
    fill_table(engram, count=0.0)
    with torch.no_grad():
        engram.table_counts[:, :, :20] = 3.0
        engram.table_states[:, :, :20] = engram.table_states[:, :, :20] * 2 + 1
    ablated = with_random_table(engram, seed=0)
    assert torch.equal(ablated.table_counts, engram.table_counts)
    occupied = engram.table_counts > 0
    original, noise = engram.table_states[occupied], ablated.table_states[occupied]
    assert not torch.allclose(original, noise)
    assert torch.allclose(noise.mean(), original.mean(), atol=0.1) and torch.allclose(
        noise.std(), original.std(), rtol=0.1
    )
    assert torch.equal(ablated.table_states[~occupied], engram.table_states[~occupied])


def test_shuffled_keys_permute_occupied_entries_only():
    engram = make_engram()
    fill_table(engram, count=0.0)
    with torch.no_grad():
        engram.table_counts[:, :, :10] = torch.arange(1.0, 11.0)
    ablated = with_shuffled_keys(engram, seed=0)
    for order in range(engram.table_counts.shape[0]):
        for head in range(engram.table_counts.shape[1]):
            counts = ablated.table_counts[order, head, :10]
            assert sorted(counts.tolist()) == list(range(1, 11)) and not torch.equal(counts, torch.arange(1.0, 11.0))
            assert torch.equal(ablated.table_counts[order, head, 10:], engram.table_counts[order, head, 10:])
            moved = [int(c) - 1 for c in counts]
            assert torch.equal(ablated.table_states[order, head, :10], engram.table_states[order, head, moved])


def test_fixed_gate_and_bypass_are_copies():
    engram = make_engram()
    assert with_fixed_gate(engram, 0.3).config.fixed_gate == pytest.approx(0.3) and engram.config.fixed_gate is None
    assert with_bypass(engram, 5).config.bypass_min_count == 5 and engram.config.bypass_min_count == 0


def test_manifold_distance_is_zero_on_reference_states():
    references = torch.randn(6, 4 * 2)
    units = references[:4].reshape(2, 2, 4, 2)
    assert manifold_distance(units, references).tolist() == pytest.approx([0.0, 0.0])
    shifted = manifold_distance(units + 10.0, references)
    assert bool((torch.tensor(shifted) > 1.0).all())


def test_allocation_keeps_the_parameter_budget():
    config = VeltrixEvolverConfig(unit_dim=8, num_units_per_step=16, hidden_size=32, intermediate_size=128)
    settings = EngramBenchmarkSettings(preset="p", recipe=VeltrixTrainingRecipe())
    budget = evolver_parameters(config)
    same, none, counts = allocation_configs(config, 0.0, settings)
    assert same is config and none is None and counts["compute"] == budget
    narrower, memory, counts = allocation_configs(config, 0.4, settings)
    assert memory.injection_layers == [0] and not memory.use_table and memory.hidden_size == narrower.hidden_size
    assert narrower.hidden_size < config.hidden_size
    assert counts["table"] + counts["compute"] == pytest.approx(budget, rel=0.02)
    assert counts["realised_share"] == pytest.approx(counts["table"] / budget, rel=0.02)
    assert abs(counts["realised_share"] - 0.4) < 0.15


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"worlds": ("fluid",)}, "worlds"),
        ({"horizon_multiple": 3}, "horizon_multiple"),
        ({"allocation_shares": (0.5, 0.25)}, "allocation_shares"),
        ({"allocation_shares": (1.0,)}, "allocation_shares"),
        ({"engram": {"table_size": -1}}, "table_size"),
        ({"engram": {"no_such_field": 1}}, "no_such_field"),
    ],
)
def test_settings_are_checked(overrides, match):
    with pytest.raises((ValueError, TypeError), match=match):
        EngramBenchmarkSettings(preset="p", recipe=VeltrixTrainingRecipe(), **overrides)
