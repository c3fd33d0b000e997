"""The Engram stage (`training.engram`, `scripts/build_engram.py`): the table builder against a brute-force
computation, its determinism and streaming, forced collisions, the quantizer, gate and parametric stages, the script."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from conftest import tiny_encoder_config, tiny_evolver_config

from modeling_veltrix import VeltrixEncoderModel, VeltrixEvolverModel
from modeling_veltrix.configuration_veltrix import VeltrixEngramConfig
from modeling_veltrix.modeling_veltrix_engram import VeltrixEngramModel
from modeling_veltrix.training import (
    VeltrixTrainingRecipe,
    build_table,
    codebook_statistics,
    fit_standardisation,
    table_hit_rate,
    train_gate,
    train_parametric,
    train_quantizer,
)
from modeling_veltrix.weights_check import weights_fingerprint
from modeling_veltrix.worlds import build_world_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
WORLD_OPTIONS = {"image_size": 16, "num_balls": 1, "ball_radius": 2.0}
STEPS = 8
TABLE_BUFFERS = ("table_states", "table_counts", "table_step_sizes", "table_fingerprints", "table_collided")


def recipe(**overrides) -> VeltrixTrainingRecipe:
    values = dict(
        world="bouncing_balls",
        world_options=WORLD_OPTIONS,
        num_train_trajectories=8,
        num_eval_trajectories=4,
        trajectory_length=STEPS,
        context_length=3,
        rollout_window=3,
        engram_batch_size=4,
        quantizer={"max_steps": 40, "learning_rate": 1e-2, "batch_size": 4, "warmup_steps": 0},
        evolver={"max_steps": 3, "batch_size": 4, "warmup_steps": 0, "save_steps": 3},
    )
    return VeltrixTrainingRecipe(**{**values, **overrides})


def engram_config(**overrides) -> VeltrixEngramConfig:
    values = dict(
        unit_dim=8,
        num_units_per_step=16,
        hidden_size=16,
        fsq_levels=[3, 3, 3],
        ngram_orders=[1, 2],
        num_hash_heads=2,
        table_size=31,
        hit_threshold=1,
        gate_hidden_size=8,
    )
    return VeltrixEngramConfig(**{**values, **overrides})


def dataset(cache_dir: Path, num_trajectories: int, seed: int = 3):
    return build_world_dataset(
        "bouncing_balls",
        num_trajectories=num_trajectories,
        num_steps=STEPS,
        seed=seed,
        cache_dir=str(cache_dir),
        **WORLD_OPTIONS,
    ).with_format("torch")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny frozen encoder and evolver, an engram with a fitted standardisation, train and held-out data."""
    cache = tmp_path_factory.mktemp("engram_data")
    torch.manual_seed(0)
    encoder = VeltrixEncoderModel(tiny_encoder_config()).eval()
    evolver = VeltrixEvolverModel(tiny_evolver_config()).eval()
    train, held_out = dataset(cache, 8), dataset(cache, 4, seed=11)
    return encoder, evolver, train, held_out


def standardised_engram(encoder, train, **overrides) -> VeltrixEngramModel:
    torch.manual_seed(0)
    engram = VeltrixEngramModel(engram_config(**overrides))
    fit_standardisation(engram, encoder, train, batch_size=4)
    return engram


def brute_force_table(engram: VeltrixEngramModel, encoder, train) -> dict:
    """Per (order, head, slot): the list of (fingerprint, stored value, step size) in trajectory, step order; the
    value is the next state, or with `table_value="delta"` the change over the step."""
    batch = train[:]
    with torch.no_grad():
        units = encoder(batch["pixel_values"]).units
    histories = engram.histories(engram.codes(units))
    keys, valid = engram.ngram_keys(histories)
    slots = engram.slots(keys)
    entries = defaultdict(list)
    for b in range(units.shape[0]):
        for t in range(units.shape[1] - 1):
            step = float(batch["timestamps"][b, t + 1].double() - batch["timestamps"][b, t].double())
            for o in range(keys.shape[2]):
                if not valid[b, t, o]:
                    continue
                for h in range(slots.shape[-1]):
                    slot = int(slots[b, t, o, h])
                    value = units[b, t + 1].flatten().double()
                    if engram.config.table_value == "delta":
                        value = value - units[b, t].flatten().double()
                    entries[o, h, slot].append((int(keys[b, t, o, -1]), value, step))
    return entries


@pytest.mark.parametrize("table_value", ["next_state", "delta"])
def test_table_means_match_a_brute_force_computation(world, table_value):
    encoder, _, train, held_out = world
    engram = standardised_engram(encoder, train, table_value=table_value)
    statistics = build_table(engram, encoder, train, batch_size=3)
    entries = brute_force_table(engram, encoder, train)
    assert int(engram.table_counts.sum()) == sum(len(values) for values in entries.values())
    assert statistics["transitions"] == len(train) * (STEPS - 1)
    for (o, h, slot), values in entries.items():
        assert engram.table_counts[o, h, slot] == len(values)
        expected = torch.stack([state for _, state, _ in values]).mean(dim=0)
        torch.testing.assert_close(engram.table_states[o, h, slot].double(), expected, rtol=1e-5, atol=1e-6)
        expected_step = sum(step for _, _, step in values) / len(values)
        assert engram.table_step_sizes[o, h, slot].item() == pytest.approx(expected_step, rel=1e-6)
        assert engram.table_fingerprints[o, h, slot] == values[0][0]
    used = engram.table_counts > 0
    assert int(used.sum()) == len(entries) == statistics["slots_used"]
    assert not engram.table_states[~used].any() and not engram.table_fingerprints[~used].any()
    rates = table_hit_rate(engram, encoder, held_out)
    assert 0 <= rates["hit_rate"] <= 1 and rates["recall_mse"] >= 0


def test_forced_collisions_are_counted(world):
    encoder, _, train, _ = world
    engram = standardised_engram(encoder, train, table_size=2)  # heads of 2 and 3 slots: collisions are certain
    statistics = build_table(engram, encoder, train, batch_size=4)
    entries = brute_force_table(engram, encoder, train)
    collided = foreign = 0
    for (o, h, slot), values in entries.items():
        first = values[0][0]
        others = sum(fingerprint != first for fingerprint, _, _ in values)
        assert bool(engram.table_collided[o, h, slot]) == (others > 0)
        collided, foreign = collided + (others > 0), foreign + others
    assert collided > 0
    assert statistics["collided_slots"] == collided == int(engram.table_collided.sum())
    assert statistics["foreign_observations"] == foreign
    assert statistics["collided_slot_fraction"] > 0


def test_table_is_deterministic_and_streaming(world, tmp_path):
    encoder, _, train, _ = world
    tables = []
    for batch_size in (1, 8, 8):
        engram = standardised_engram(encoder, train)
        build_table(engram, encoder, train, batch_size=batch_size)
        tables.append({name: getattr(engram, name).clone() for name in TABLE_BUFFERS})
    for name in TABLE_BUFFERS:
        assert torch.equal(tables[1][name], tables[2][name]), f"{name} differs between two identical builds"
        if tables[0][name].is_floating_point():
            torch.testing.assert_close(tables[0][name], tables[1][name], rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(tables[0][name], tables[1][name]), f"{name} differs between batch sizes 1 and 8"
    # The table's memory is fixed by the config, not by the data.
    small = standardised_engram(encoder, train)
    larger = standardised_engram(encoder, train)
    small_statistics = build_table(small, encoder, dataset(tmp_path, 2), batch_size=2)
    larger_statistics = build_table(larger, encoder, dataset(tmp_path, 12, seed=5), batch_size=2)
    assert small_statistics["table_bytes"] == larger_statistics["table_bytes"]
    assert larger_statistics["observations"] > small_statistics["observations"]


def test_quantizer_stage_lowers_its_loss_and_reports_the_codebook(world):
    encoder, _, train, _ = world
    torch.manual_seed(0)
    engram = VeltrixEngramModel(engram_config())
    losses = train_quantizer(engram, encoder, train, recipe())
    assert len(losses) == 40
    assert sum(losses[-5:]) < sum(losses[:5])
    with torch.no_grad():
        flat = encoder(train[:]["pixel_values"]).units.flatten(-2).flatten(0, 1)  # every training state (N, U·D)
    torch.testing.assert_close(engram.state_mean, flat.mean(dim=0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(engram.state_scale, flat.std(dim=0, correction=0), rtol=1e-3, atol=1e-5)
    statistics = codebook_statistics(engram, encoder, train, batch_size=4)
    assert 0 < statistics["utilisation"] <= 1
    assert 1 <= statistics["perplexity"] <= statistics["codes_used"] + 1e-9
    assert statistics["codes_used"] == round(statistics["utilisation"] * engram.config.num_codes)


def fixed_window_loss(engram, encoder, evolver, train, settings: VeltrixTrainingRecipe) -> float:
    batch = train[:]
    context, window = settings.context_length, settings.rollout_window
    with torch.no_grad():
        units = encoder(batch["pixel_values"]).units
        rollout = evolver.rollout(
            units[:, :context],
            window,
            actions=batch["actions"][:, : context + window],
            timestamps=batch["timestamps"][:, : context + window],
            engram=engram,
        )
    return torch.nn.functional.mse_loss(rollout.units, units[:, context : context + window]).item()


def test_gate_stage_lowers_its_loss_and_trains_only_the_gate(world):
    encoder, evolver, train, held_out = world
    engram = standardised_engram(encoder, train, fsq_levels=[5, 5, 5, 5])  # specific keys: the memory knows the way
    build_table(engram, encoder, train)
    assert table_hit_rate(engram, encoder, train)["hit_rate"] > 0.5
    # Windows of the whole trajectory and batches of the whole dataset: the same full-batch loss at every step.
    gate = {"max_steps": 8, "learning_rate": 3e-2, "batch_size": len(train), "warmup_steps": 0}
    settings = recipe(context_length=STEPS // 2, rollout_window=STEPS // 2, gate=gate)
    evolver_weights = {name: value.clone() for name, value in evolver.state_dict().items()}
    table = engram.table_states.clone()
    before = fixed_window_loss(engram, encoder, evolver, train, settings)
    losses = train_gate(engram, encoder, evolver, train, settings)
    after = fixed_window_loss(engram, encoder, evolver, train, settings)
    assert len(losses) == settings.gate.max_steps
    assert after < before and losses[-1] < losses[0]
    assert all(torch.equal(value, evolver.state_dict()[name]) for name, value in evolver_weights.items())
    assert torch.equal(table, engram.table_states)
    assert not any(parameter.requires_grad for parameter in evolver.parameters())
    rates = table_hit_rate(engram, encoder, held_out)
    assert 0 <= rates["hit_rate"] <= 1 and 0 <= rates["foreign_hit_rate"] <= 1


def test_parametric_stage_trains_the_injections_and_the_evolver(world, tmp_path):
    encoder, _, train, _ = world
    settings = recipe()
    config = engram_config(use_table=False, injection_layers=[1], embedding_dim=4, parametric_table_size=13)
    evolver, engram = train_parametric(encoder, tiny_evolver_config(), config, train, settings, str(tmp_path))
    # The value projections start at zero (an untrained memory adds nothing): training moved them.
    assert engram.injections["1"].value_proj.weight.abs().sum() > 0
    assert (tmp_path / "evolver" / "config.json").is_file()
    loaded = VeltrixEngramModel.from_pretrained(tmp_path / "evolver" / "engram")
    torch.testing.assert_close(loaded.embeddings.weight, engram.embeddings.weight)
    torch.testing.assert_close(loaded.state_scale, engram.state_scale)
    loaded_evolver = VeltrixEvolverModel.from_pretrained(tmp_path / "evolver")
    assert weights_fingerprint(loaded_evolver) == weights_fingerprint(evolver)


def write_run(run_dir: Path) -> tuple[VeltrixEncoderModel, VeltrixEvolverModel]:
    torch.manual_seed(0)
    encoder = VeltrixEncoderModel(tiny_encoder_config())
    evolver = VeltrixEvolverModel(tiny_evolver_config())
    encoder.save_pretrained(run_dir / "encoder")
    evolver.save_pretrained(run_dir / "evolver")
    recipe().to_json_file(str(run_dir / "recipe.json"))
    return encoder, evolver


def run_script(*arguments: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, str(REPO_ROOT / "scripts" / "build_engram.py"), *arguments]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)


def test_script_builds_saves_and_reports(tmp_path):
    run_dir, output = tmp_path / "run", tmp_path / "out"
    encoder, evolver = write_run(run_dir)
    config_file = tmp_path / "engram.json"
    config_file.write_text(json.dumps({"fsq_levels": [3, 3, 3], "ngram_orders": [1, 2], "table_size": 31}))
    result = run_script(
        "--run-dir", str(run_dir), "--output-dir", str(output), "--quick",
        "--engram-config", str(config_file), "--engram", "hit_threshold=1", "--set", "gate.max_steps=3",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    engram = VeltrixEngramModel.from_pretrained(output / "engram")
    assert engram.config.hit_threshold == 1 and engram.config.table_size == 31
    assert engram.config.encoder_fingerprint == weights_fingerprint(encoder)
    assert engram.config.evolver_fingerprint == weights_fingerprint(evolver)
    assert engram.table_counts.sum() > 0
    statistics = json.loads((output / "engram_statistics.json").read_text())
    for name in ("utilisation", "perplexity", "slots_used", "collided_slots", "held_out_hit_rate", "build_seconds"):
        assert name in statistics
    assert len(statistics["gate_losses"]) == 3
    saved = json.loads((output / "recipe.json").read_text())
    assert saved["gate"]["max_steps"] == 3 and saved["trajectory_length"] == 6
    assert not (output / "engram.tmp").exists()


def load_script():
    """scripts/build_engram.py as a module, to call its `main` in this process (no interpreter start per case)."""
    spec = importlib.util.spec_from_file_location("build_engram", REPO_ROOT / "scripts" / "build_engram.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "arguments, message",
    [
        (("--set", "nonsense"), "FIELD=VALUE"),
        (("--engram", "no_such_field=1"), "unknown fields"),
        (("--engram", "unit_dim=4"), "unit_dim"),
        (("--engram", 'table_size="big"'), "table_size"),
        (("--set", "gate.max_steps=0"), "gate.max_steps"),
        (("--set", "nostage.max_steps=1"), "not a stage"),
        (("--engram-config", "missing.json"), "--engram-config"),
    ],
)
def test_script_checks_its_arguments(tmp_path, monkeypatch, arguments, message):
    run_dir = tmp_path / "run"
    write_run(run_dir)
    command = ["build_engram.py", "--run-dir", str(run_dir), "--output-dir", str(tmp_path / "out"), "--quick"]
    monkeypatch.setattr(sys, "argv", [*command, *arguments])
    with pytest.raises(ValueError, match=re.escape(message)):
        load_script().main()
    assert not (tmp_path / "out").exists()


def test_script_needs_a_trained_run(tmp_path, monkeypatch):
    script = load_script()
    output = str(tmp_path / "out")
    missing = str(tmp_path / "missing")
    monkeypatch.setattr(sys, "argv", ["build_engram.py", "--run-dir", missing, "--output-dir", output])
    with pytest.raises(ValueError, match="--run-dir"):
        script.main()
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "recipe.json").write_text(json.dumps(asdict(recipe())))
    monkeypatch.setattr(sys, "argv", ["build_engram.py", "--run-dir", str(tmp_path / "bare"), "--output-dir", output])
    with pytest.raises(ValueError, match="no trained encoder"):
        script.main()
