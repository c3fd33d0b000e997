"""`accelerate launch` for real: `scripts/train.py` as a 2-process DDP job on the CPU (gloo), launched with the
`configuration/accelerate/cpu_ddp.yaml` a user would pass (`python -m accelerate.commands.launch` is
`accelerate launch` on this interpreter).

The encoder stage of the tests' tiny preset trains 4 steps on 8 trajectories, 2 per process (a global batch of 4),
and is checked against a 1-process run of batch 4: both ranks hold the same parameters at the end, equal to the
saved model (each rank dumps its own through `tests/accelerate_driver.py`); the loss and gradient-norm curves of the
Trainer's log history and the final weights match the 1-process run's; a job killed after its step-2 checkpoint,
launched again, resumes from it and ends with the uninterrupted job's loss curve and weights. The encoder stage is
deterministic (the tiny encoder has no nested dropout), so the only differences are float summation orders. With
`deepspeed` installed, the same job under `deepspeed_zero2.yaml` must match the DDP job. About 60 s on 2 CPU cores
(+25 s with DeepSpeed, more on its first launch, which compiles an op).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from safetensors.torch import load_file
from test_training_resume import run_train_here, write_tiny_preset

from modeling_veltrix.training import checkpoint_problem

REPO = Path(__file__).parent.parent
TRAIN = REPO / "scripts" / "train.py"
DRIVER = REPO / "tests" / "accelerate_driver.py"
CONFIGS = REPO / "configuration" / "accelerate"
CPU_DDP = CONFIGS / "cpu_ddp.yaml"
NUM_PROCESSES = 2
PER_PROCESS_BATCH = 2
STEPS = 4  # checkpoints at 2 and 4


def free_port() -> int:
    """A TCP port free now on this machine, for the job's rendezvous (two jobs must not share 29500)."""
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def write_preset(folder: Path, batch_size: int) -> Path:
    """The tiny preset with 8 trajectories and an encoder stage of `STEPS` steps of `batch_size` per process."""
    preset = write_tiny_preset(folder, num_train_trajectories=8)
    recipe = json.loads((preset / "recipe.json").read_text())
    recipe["encoder"]["batch_size"] = batch_size
    (preset / "recipe.json").write_text(json.dumps(recipe, indent=2))
    return preset


def launch(
    preset: Path, out: Path, driver: bool = True, config: Path = CPU_DDP, **env: str
) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file <config> --num_processes 2 [tests/accelerate_driver.py] scripts/train.py
    --preset <preset> --output-dir <out> --stage encoder`; `env` adds the driver's variables."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    command += ["--num_processes", str(NUM_PROCESSES), "--main_process_port", str(free_port())]
    command += [str(DRIVER)] if driver else []
    command += [str(TRAIN), "--preset", str(preset), "--output-dir", str(out), "--stage", "encoder"]
    variables = {name: value for name, value in os.environ.items() if not name.startswith("VELTRIX_TEST_")}
    variables |= {"HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(out.parent / "datasets"), **env}
    return subprocess.run(command, cwd=REPO, env=variables, capture_output=True, text=True, timeout=300)


def succeeded(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"accelerate launch failed ({result.returncode}):\n{result.stderr[-6000:]}"


def log_history(run: Path, step: int = STEPS) -> list[dict]:
    """The per-step entries (with `loss`) of the Trainer's log history in the stage's checkpoint of `step`."""
    state = json.loads((run / "checkpoints" / "encoder" / f"checkpoint-{step}" / "trainer_state.json").read_text())
    return [entry for entry in state["log_history"] if "loss" in entry]


def saved_encoder(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "encoder" / "model.safetensors")


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    """The uninterrupted 2-process job; each rank's final parameters in `<run>/ranks/encoder/rank-<k>.safetensors`."""
    folder = tmp_path_factory.mktemp("ddp")
    preset = write_preset(folder / "preset", PER_PROCESS_BATCH)
    run = folder / "run"
    succeeded(launch(preset, run, VELTRIX_TEST_RANK_DIR=str(run / "ranks")))
    return run


def test_the_configs_load_and_say_what_they_run():
    """Every config loads with accelerate's own reader; the CPU one starts 2 processes on the CPU."""
    expected = {
        "cpu_single.yaml": ("NO", 1, True),
        "cpu_ddp.yaml": ("MULTI_GPU", NUM_PROCESSES, True),
        "multi_gpu_ddp.yaml": ("MULTI_GPU", 8, False),
        "fsdp.yaml": ("FSDP", 8, False),
        "deepspeed_zero2.yaml": ("DEEPSPEED", 8, False),
    }
    assert sorted(path.name for path in CONFIGS.glob("*.yaml")) == sorted(expected)
    for name, (distributed_type, num_processes, use_cpu) in expected.items():
        config = load_config_from_file(str(CONFIGS / name))
        assert (config.distributed_type, config.num_processes, config.use_cpu) == (
            distributed_type,
            num_processes,
            use_cpu,
        ), name
    assert yaml.safe_load((CONFIGS / "deepspeed_zero2.yaml").read_text())["deepspeed_config"]["zero_stage"] == 2


def check_ranks_hold_the_saved_parameters(run: Path) -> None:
    """Every rank's final parameters (dumped by the driver) equal each other and the saved `<run>/encoder`."""
    ranks = [load_file(run / "ranks" / "encoder" / f"rank-{k}.safetensors") for k in range(NUM_PROCESSES)]
    assert ranks[0].keys() == ranks[1].keys()
    assert all(torch.equal(ranks[0][name], ranks[1][name]) for name in ranks[0]), "the ranks' parameters differ"
    saved = saved_encoder(run)
    assert {f"encoder.{name}" for name in saved} == set(ranks[0])
    assert all(torch.equal(ranks[0][f"encoder.{name}"], value) for name, value in saved.items())
    checkpoint = run / "checkpoints" / "encoder" / f"checkpoint-{STEPS}"
    assert (checkpoint / f"rng_state_{NUM_PROCESSES - 1}.pth").is_file(), "the job did not run 2 processes"
    assert [entry["step"] for entry in log_history(run)] == list(range(1, STEPS + 1))


def test_both_ranks_end_with_the_saved_parameters(ddp_run):
    check_ranks_hold_the_saved_parameters(ddp_run)


def test_loss_curve_matches_one_process_with_the_same_global_batch(ddp_run, tmp_path, monkeypatch):
    preset = write_preset(tmp_path / "preset", NUM_PROCESSES * PER_PROCESS_BATCH)
    run_train_here(monkeypatch, preset, tmp_path / "run", "--stage", "encoder")
    ddp, single = log_history(ddp_run), log_history(tmp_path / "run")
    assert [entry["step"] for entry in ddp] == [entry["step"] for entry in single] == list(range(1, STEPS + 1))
    for key in ("loss", "grad_norm"):
        curve, reference = [entry[key] for entry in ddp], [entry[key] for entry in single]
        assert curve == pytest.approx(reference, rel=1e-4), key
    assert single[-1]["loss"] < 0.8 * single[0]["loss"], "the stage did not train"
    ddp_weights, single_weights = saved_encoder(ddp_run), saved_encoder(tmp_path / "run")
    assert ddp_weights.keys() == single_weights.keys()
    for name, value in ddp_weights.items():
        torch.testing.assert_close(value, single_weights[name], rtol=1e-4, atol=1e-5, msg=name)


def test_killed_job_resumes_under_accelerate_launch(ddp_run, tmp_path):
    """Process 0 is killed right after the step-2 checkpoint; the same `accelerate launch` command (without the test
    driver) resumes from it and ends with the uninterrupted job's weights and loss curve."""
    preset = write_preset(tmp_path / "preset", PER_PROCESS_BATCH)
    run = tmp_path / "run"
    killed = launch(preset, run, VELTRIX_TEST_KILL_AFTER_SAVE="2")
    assert killed.returncode != 0, "the job was not killed"
    checkpoints = run / "checkpoints" / "encoder"
    assert sorted(path.name for path in checkpoints.glob("checkpoint-*")) == ["checkpoint-2"]
    assert not (run / "encoder").exists()
    # A mark in the step-1 entry of checkpoint-2's log history: it reaches checkpoint-4 only if the job resumes from
    # checkpoint-2 (a job that started over would log step 1 again, unmarked); the weights cannot tell, training
    # being deterministic.
    state_file = checkpoints / "checkpoint-2" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["log_history"][0]["resumed_mark"] = True
    state_file.write_text(json.dumps(state))
    succeeded(launch(preset, run, driver=False))
    history = log_history(run)
    assert history[0].get("resumed_mark") is True, "the job did not resume from checkpoint-2"
    assert [entry["loss"] for entry in history] == pytest.approx(
        [entry["loss"] for entry in log_history(ddp_run)], rel=1e-6
    )
    reference = saved_encoder(ddp_run)
    resumed = saved_encoder(run)
    assert resumed.keys() == reference.keys()
    for name, value in resumed.items():
        torch.testing.assert_close(value, reference[name], rtol=0, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def deepspeed_run(tmp_path_factory) -> Path:
    """The job of `ddp_run` under `configuration/accelerate/deepspeed_zero2.yaml` (DeepSpeed's CPU accelerator)."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (optional: `pip install deepspeed`)")
    folder = tmp_path_factory.mktemp("zero2")
    preset = write_preset(folder / "preset", PER_PROCESS_BATCH)
    run = folder / "run"
    succeeded(launch(preset, run, config=CONFIGS / "deepspeed_zero2.yaml", VELTRIX_TEST_RANK_DIR=str(run / "ranks")))
    return run


def test_deepspeed_zero2_on_cpu_matches_ddp(deepspeed_run, ddp_run):
    """ZeRO-2 shards the optimizer states (one file per rank) and trains exactly as DDP does."""
    check_ranks_hold_the_saved_parameters(deepspeed_run)
    shards = deepspeed_run / "checkpoints" / "encoder" / f"checkpoint-{STEPS}" / f"global_step{STEPS}"
    assert sorted(path.name for path in shards.glob("zero_pp_rank_*_optim_states.pt")) == [
        f"zero_pp_rank_{k}_mp_rank_00_optim_states.pt" for k in range(NUM_PROCESSES)
    ]
    for key in ("loss", "grad_norm"):
        curve = [entry[key] for entry in log_history(deepspeed_run)]
        assert curve == pytest.approx([entry[key] for entry in log_history(ddp_run)], rel=1e-4), key
    reference = saved_encoder(ddp_run)
    for name, value in saved_encoder(deepspeed_run).items():
        torch.testing.assert_close(value, reference[name], rtol=1e-4, atol=1e-5, msg=name)


def test_deepspeed_checkpoints_can_be_resumed_from(deepspeed_run):
    """A ZeRO-2 checkpoint (`latest`, `global_step<N>/` with one optimizer-state shard per rank) is accepted."""
    checkpoint = deepspeed_run / "checkpoints" / "encoder" / f"checkpoint-{STEPS}"
    assert checkpoint_problem(str(checkpoint)) is None
