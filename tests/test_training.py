"""Staged training with transformers.Trainer: each stage trains its component only, saves it, resumes; the demo
runs end to end on a tiny recipe."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import randomize_, tiny_decoder, tiny_encoder_config, tiny_evolver_config
from diffusers import FlowMatchEulerDiscreteScheduler
from huggingface_hub import ModelCard
from PIL import Image

from modeling_veltrix import VeltrixEncoderModel, VeltrixEvolverModel, VeltrixPipeline
from modeling_veltrix.training import (
    COMPONENTS,
    STAGE_COMPONENT,
    STAGES,
    VeltrixStageRecipe,
    VeltrixTrainingRecipe,
    build_reflow_pairs,
    train_stage,
)
from modeling_veltrix.worlds import build_world_dataset

REPO = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    dataset = build_world_dataset(
        "bouncing_balls",
        num_trajectories=8,
        num_steps=12,
        seed=3,
        image_size=16,
        num_balls=1,
        ball_radius=2.0,
        cache_dir=str(tmp_path_factory.mktemp("cache")),
    )
    return dataset.with_format("torch")


def tiny_recipe(max_steps: int = 3, learning_rate: float = 1e-2, **overrides) -> VeltrixTrainingRecipe:
    stage = dict(max_steps=max_steps, batch_size=4, learning_rate=learning_rate, warmup_steps=0, save_steps=2)
    values = dict(
        trajectory_length=12,
        context_length=4,
        rollout_window=4,
        decoder_frames_per_trajectory=2,
        reflow_num_pairs=10,
        reflow_teacher_steps=2,
    )
    stages = {name: dict(stage) for name in ("encoder", "evolver", "decoder", "reflow")}
    return VeltrixTrainingRecipe(**{**values, **overrides}, **stages)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def changed(before: dict[str, torch.Tensor], model: torch.nn.Module) -> bool:
    return any(not torch.equal(before[name], value) for name, value in model.state_dict().items())


def test_stages_train_their_component_only(tmp_path, tiny_dataset):
    torch.manual_seed(0)
    models = (VeltrixEncoderModel(tiny_encoder_config()), VeltrixEvolverModel(tiny_evolver_config()), tiny_decoder())
    recipe = tiny_recipe()
    for stage in STAGES:
        before = [snapshot(model) for model in models]
        data = tiny_dataset
        if stage == "reflow":
            pipeline = VeltrixPipeline(*models, scheduler=FlowMatchEulerDiscreteScheduler())
            data = build_reflow_pairs(pipeline, tiny_dataset, recipe)
            assert len(data) == recipe.reflow_num_pairs
        metrics = train_stage(stage, models, data, recipe, str(tmp_path), resume=False)
        assert metrics["train_loss"] == metrics["train_loss"]  # finite, not NaN
        trained = COMPONENTS.index(STAGE_COMPONENT[stage])
        for other, model in enumerate(models):
            assert changed(before[other], model) == (other == trained), (stage, other)
        assert (tmp_path / stage / "config.json").exists()
    assert not list(tmp_path.glob("*.tmp"))


def test_reflow_pairs_are_the_teachers_samples(tiny_dataset):
    torch.manual_seed(0)
    models = (
        VeltrixEncoderModel(tiny_encoder_config()),
        VeltrixEvolverModel(tiny_evolver_config()),
        randomize_(tiny_decoder(), std=0.05),
    )
    pipeline = VeltrixPipeline(*models, scheduler=FlowMatchEulerDiscreteScheduler())
    recipe = tiny_recipe()
    pairs = build_reflow_pairs(pipeline, tiny_dataset, recipe)
    again = build_reflow_pairs(pipeline, tiny_dataset, recipe)
    assert torch.equal(pairs[:]["noise"], again[:]["noise"])  # deterministic for the recipe's seed
    row = pairs[:3]
    expected = pipeline.decode_units(row["units"], recipe.reflow_teacher_steps, latents=row["noise"])
    torch.testing.assert_close(row["pixel_values"], expected)


def test_resume_continues_from_the_last_checkpoint(tmp_path, tiny_dataset):
    models = (VeltrixEncoderModel(tiny_encoder_config()), VeltrixEvolverModel(tiny_evolver_config()), tiny_decoder())
    train_stage("encoder", models, tiny_dataset, tiny_recipe(max_steps=2), str(tmp_path))
    assert (tmp_path / "checkpoints" / "encoder" / "checkpoint-2").is_dir()
    train_stage("encoder", models, tiny_dataset, tiny_recipe(max_steps=4), str(tmp_path))
    state = json.loads((tmp_path / "checkpoints" / "encoder" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry][0] <= 2  # history kept


def test_unknown_stage(tmp_path, tiny_dataset):
    with pytest.raises(ValueError, match="stage"):
        train_stage("joint", (None, None, None), tiny_dataset, tiny_recipe(), str(tmp_path))


def test_stage_recipe_from_dict():
    recipe = VeltrixTrainingRecipe(evolver={"max_steps": 7})
    assert isinstance(recipe.evolver, VeltrixStageRecipe) and recipe.evolver.max_steps == 7


@pytest.mark.parametrize("preset_name", ["veltrix-tiny", "veltrix-tiny-speaking"])
def test_demo_end_to_end(tmp_path, preset_name):
    """The README's main job on a tiny recipe: trains, evaluates, writes the GIF/plot/metrics, reloads; the speaking
    preset also reads captions and audio back from encoded and evolved states."""
    preset = tmp_path / "preset"
    shutil.copytree(REPO / "configuration" / preset_name, preset)
    world_options = json.loads((preset / "recipe.json").read_text()).get("world_options", {})
    recipe = tiny_recipe(
        max_steps=2,
        learning_rate=1e-3,
        world_options=world_options,
        num_train_trajectories=8,
        num_eval_trajectories=3,
        trajectory_length=10,
        rollout_window=2,
    )
    recipe.to_json_file(str(preset / "recipe.json"))
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "datasets")}
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "demo.py"),
            "--output-dir",
            str(out),
            "--preset",
            str(preset),
            "--num-inference-steps",
            "2",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "reloaded pipeline: max abs difference of the rollout frames = 0" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"environment", "results", "targets"}
    assert metrics["environment"]["threads"] >= 1 and metrics["environment"]["kernel_path"] == "torch"
    assert {t["name"] for t in metrics["targets"]} == {
        "mse_over_copy_last_within_window",
        "mse_over_mean_frame_within_half_window",
    }
    for space in ("pixel_mse", "latent_mse"):
        assert set(metrics["results"][space]) == {"veltrix", "copy_last", "mean_frame"}
        assert all(len(v) == 6 for v in metrics["results"][space].values())  # 3 x the window of 2
    if preset_name == "veltrix-tiny-speaking":
        encoded, future = metrics["results"]["encoded_modalities"], metrics["results"]["future_modalities"]
        assert encoded["num_held_out_steps"] == 3 * 10 and encoded["audio_code_recovery_from_subspace"] == 1.0
        assert len(future["caption_event_accuracy_by_horizon"]) == len(future["audio_code_accuracy_by_horizon"]) == 2
    gif = Image.open(out / "rollout.gif")
    assert gif.n_frames == 6 and gif.size == (3 * 32 * 4, 3 * 32 * 4)
    assert (out / "error_vs_horizon.png").stat().st_size > 0
    assert (out / "pipeline" / "model_index.json").exists()
    card = ModelCard.load(out / "pipeline" / "README.md")
    assert card.data.library_name == "diffusers" and card.data.pipeline_tag == "video-to-video"
    assert {result.metric_name for result in card.data.eval_results} == {
        "pixel MSE at horizon 1",
        "pixel MSE at horizon 2",
        "pixel MSE at horizon 6",
    }
    assert "| horizon | veltrix | copy_last | mean_frame |" in card.text
    assert "{{" not in card.content
