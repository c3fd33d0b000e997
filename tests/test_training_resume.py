"""Reproducible, resumable training: the same recipe gives the same weights; a run killed mid-step, inside a
checkpoint write or between stages resumes to the weights of an uninterrupted run; a damaged last checkpoint falls
back to the one before; `scripts/train.py` checks the preset and the stages' prerequisites before writing anything."""

import os
import runpy
import signal
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from conftest import tiny_decoder, tiny_encoder_config, tiny_evolver_config
from diffusers import FlowMatchEulerDiscreteScheduler
from safetensors.torch import load_file
from test_training import tiny_recipe

from modeling_veltrix import VeltrixEncoderModel, VeltrixEvolverModel
from modeling_veltrix.training import STAGES, checkpoint_problem, derive_seed, last_valid_checkpoint, train_stage

REPO = Path(__file__).parent.parent
TRAIN = REPO / "scripts" / "train.py"
WORLD = {"image_size": 16, "num_balls": 1, "ball_radius": 2.0}

# Runs scripts/train.py; VELTRIX_TEST_KILL=<point>:<stage>:<step> SIGKILLs the process at one point:
# `step` after the backward pass of step <step>, before its optimizer step; `save` inside the checkpoint write of
# step <step>, after optimizer.pt, scheduler.pt and rng_state.pth and before trainer_state.json; `after` once the
# stage has saved its model, before the next stage starts.
DRIVER = """
import os, runpy, signal, sys
from transformers import Trainer, TrainerCallback
import modeling_veltrix.training.runner as runner

point, stage, step = os.environ.get("VELTRIX_TEST_KILL", "none:none:0").split(":")
step = int(step)


def kill_at(here, stage_name, global_step):
    if (here, stage_name, global_step) == (point, stage, step):
        os.kill(os.getpid(), signal.SIGKILL)


class KillMidStep(TrainerCallback):
    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        kill_at("step", os.path.basename(args.output_dir), state.global_step + 1)


trainer_init = Trainer.__init__


def trainer_init_with_kill(self, *args, **kwargs):
    trainer_init(self, *args, **kwargs)
    self.add_callback(KillMidStep())


save_rng_state = Trainer._save_rng_state


def save_rng_state_then_kill(self, output_dir):
    save_rng_state(self, output_dir)
    kill_at("save", os.path.basename(self.args.output_dir), self.state.global_step)


train_stage = runner.train_stage


def train_stage_then_kill(stage_name, *args, **kwargs):
    metrics = train_stage(stage_name, *args, **kwargs)
    kill_at("after", stage_name, 0)
    return metrics


Trainer.__init__ = trainer_init_with_kill
Trainer._save_rng_state = save_rng_state_then_kill
runner.train_stage = train_stage_then_kill
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path(sys.argv.pop(1), run_name="__main__")
"""


def write_tiny_preset(folder: Path, **recipe_overrides) -> Path:
    """A preset folder of the tests' tiny configs and a recipe of a few steps per stage (checkpoints at 2 and 4)."""
    tiny_encoder_config().save_pretrained(folder / "encoder")
    tiny_evolver_config().save_pretrained(folder / "evolver")
    tiny_decoder().save_config(folder / "decoder")
    FlowMatchEulerDiscreteScheduler().save_config(folder / "scheduler")
    values = dict(world_options=WORLD, num_train_trajectories=8, num_eval_trajectories=1, reflow_num_pairs=8)
    tiny_recipe(max_steps=4, **{**values, **recipe_overrides}).to_json_file(str(folder / "recipe.json"))
    return folder


def weights(run: Path) -> dict[str, torch.Tensor]:
    """Every tensor that the run's stages saved, keyed `<stage>/<file>/<name>`."""
    tensors = {}
    for stage in STAGES:
        for path in sorted((run / stage).glob("*.safetensors")):
            tensors |= {f"{stage}/{path.name}/{k}": v for k, v in load_file(path).items()}
    assert tensors, f"nothing trained in {run}"
    return tensors


def max_difference(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> float:
    assert first.keys() == second.keys()
    return max((first[k].double() - second[k].double()).abs().max().item() for k in first)


def run_train(preset: Path, out: Path, kill: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(out.parent / "datasets")}
    env.pop("VELTRIX_TEST_KILL", None)
    if kill:
        env["VELTRIX_TEST_KILL"] = kill
    command = [sys.executable, "-c", DRIVER, str(TRAIN), "--preset", str(preset), "--output-dir", str(out)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def run_train_here(monkeypatch, preset: Path, out: Path, *extra: str) -> None:
    """Runs scripts/train.py in this process (no import cost)."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(out.parent / "datasets"))
    monkeypatch.setattr(sys, "argv", ["train.py", "--preset", str(preset), "--output-dir", str(out), *extra])
    runpy.run_path(str(TRAIN), run_name="__main__")


def test_derived_seeds_differ_per_name_and_are_stable():
    assert derive_seed(0, "encoder") == derive_seed(0, "encoder") == 3438319420
    assert len({derive_seed(seed, name) for seed in (0, 1) for name in (*STAGES, "init/encoder")}) == 10
    with pytest.raises(ValueError, match="seed"):
        derive_seed(-1, "encoder")


def test_same_recipe_twice_gives_the_same_weights(tmp_path, monkeypatch):
    """Two runs of train.py in one process: the global RNG has moved on between them, the weights must not."""
    preset = write_tiny_preset(tmp_path / "preset")
    for name in ("first", "second"):
        run_train_here(monkeypatch, preset, tmp_path / name)
        torch.rand(7)  # whatever ran in between
    assert max_difference(weights(tmp_path / "first"), weights(tmp_path / "second")) == 0.0
    assert (tmp_path / "first" / "pipeline" / "model_index.json").exists()


def test_killed_runs_resume_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    """SIGKILL mid-step (encoder step 3), inside a checkpoint write (evolver step 4) and between stages (after the
    evolver), each time rerunning the same command in a new process: the weights equal those of an uninterrupted run
    (here, in this process), bit for bit."""
    preset = write_tiny_preset(tmp_path / "preset")
    run_train_here(monkeypatch, preset, tmp_path / "reference")
    run = tmp_path / "run"
    checkpoints = run / "checkpoints"

    killed = run_train(preset, run, kill="step:encoder:3")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (checkpoints / "encoder" / "checkpoint-2").is_dir() and not (run / "encoder").exists()

    killed = run_train(preset, run, kill="save:evolver:4")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (checkpoints / "evolver" / "checkpoint-4").exists()  # the incomplete write never shows
    partial = checkpoints / "evolver" / ".staging" / "checkpoint-4"
    assert (partial / "optimizer.pt").exists() and not (partial / "trainer_state.json").exists()

    killed = run_train(preset, run, kill="after:evolver:0")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert "interrupted" in killed.stderr  # the resumed evolver stage reported the abandoned write
    assert (run / "evolver").is_dir() and not (run / "decoder").exists()

    finished = run_train(preset, run)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "already trained" in finished.stdout
    assert max_difference(weights(tmp_path / "reference"), weights(run)) == 0.0
    assert (run / "pipeline" / "model_index.json").exists()


@pytest.mark.parametrize(
    "damage",
    [
        lambda folder: os.truncate(folder / "model.safetensors", (folder / "model.safetensors").stat().st_size // 2),
        lambda folder: (folder / "trainer_state.json").unlink(),
        lambda folder: os.truncate(folder / "optimizer.pt", 100),
    ],
    ids=["truncated-safetensors", "missing-trainer-state", "truncated-optimizer"],
)
def test_damaged_last_checkpoint_falls_back_to_the_one_before(tmp_path, caplog, damage):
    dataset = datasets.Dataset.from_dict({"pixel_values": torch.rand(8, 12, 3, 16, 16).numpy() * 2 - 1}).with_format(
        "torch"
    )
    recipe = tiny_recipe(max_steps=4)

    def train(out: Path, resume: bool) -> dict[str, torch.Tensor]:
        models = (VeltrixEncoderModel(tiny_encoder_config()), VeltrixEvolverModel(tiny_evolver_config()), None)
        train_stage("encoder", models, dataset, recipe, str(out), resume=resume)
        return {name: value.clone() for name, value in models[0].state_dict().items()}

    uninterrupted = train(tmp_path, resume=False)
    last = tmp_path / "checkpoints" / "encoder" / "checkpoint-4"
    damage(last)
    with caplog.at_level("WARNING"):
        resumed = train(tmp_path, resume=True)  # from checkpoint-2: steps 3 and 4 again
    assert str(last) in caplog.text and "falling back" in caplog.text
    assert all(torch.equal(uninterrupted[name], resumed[name]) for name in uninterrupted)
    assert checkpoint_problem(str(last)) is None  # rewritten whole
    damage(last)
    assert checkpoint_problem(str(last)) is not None
    assert last_valid_checkpoint(str(last.parent)) == str(last.parent / "checkpoint-2")


def test_missing_preset_config_is_named(tmp_path, monkeypatch):
    preset = write_tiny_preset(tmp_path / "preset")
    (preset / "evolver" / "config.json").unlink()
    with pytest.raises(ValueError, match=r"evolver/config\.json"):
        run_train_here(monkeypatch, preset, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_stage_without_its_trained_encoder_is_refused(tmp_path, monkeypatch):
    preset = write_tiny_preset(tmp_path / "preset")
    with pytest.raises(ValueError, match="needs a trained encoder.*--stage encoder"):
        run_train_here(monkeypatch, preset, tmp_path / "run", "--stage", "evolver")
    assert not (tmp_path / "run").exists()


def test_bad_recipe_writes_nothing(tmp_path, monkeypatch):
    preset = write_tiny_preset(tmp_path / "preset")
    text = (preset / "recipe.json").read_text().replace('"logit_normal"', '"bogus"')
    (preset / "recipe.json").write_text(text)
    with pytest.raises(ValueError, match=r"recipe\.json.*decoder_time_sampling.*bogus"):
        run_train_here(monkeypatch, preset, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_starting_over_deletes_the_stale_checkpoints(tmp_path):
    """`resume=False` (`--no-resume`) must not leave an earlier run's later checkpoint for a future resume."""
    dataset = datasets.Dataset.from_dict({"pixel_values": torch.rand(8, 12, 3, 16, 16).numpy()}).with_format("torch")
    models = (VeltrixEncoderModel(tiny_encoder_config()), None, None)
    train_stage("encoder", models, dataset, tiny_recipe(max_steps=4), str(tmp_path), resume=False)
    train_stage("encoder", models, dataset, tiny_recipe(max_steps=2), str(tmp_path), resume=False)
    folder = tmp_path / "checkpoints" / "encoder"
    assert sorted(path.name for path in folder.iterdir()) == ["checkpoint-2"]
    assert last_valid_checkpoint(str(folder)) == str(folder / "checkpoint-2")
