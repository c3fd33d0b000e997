"""`checkpoint_problem` on checkpoint folders laid out as each kind of Trainer job writes them (tiny fabricated files):
plain / DDP (`optimizer.pt`), DeepSpeed (`latest` naming `global_stepN/` with per-rank ZeRO optimizer-state shards
and the model states) and FSDP (accelerate's `pytorch_model_fsdp.bin` + `optimizer.bin`, or the sharded
`pytorch_model_fsdp_0/` + `optimizer_0/` folders). Complete ones are accepted; incomplete ones are refused with a
message naming what is missing, and `last_valid_checkpoint` falls back to the one before."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from modeling_veltrix.training import checkpoint_problem, last_valid_checkpoint

STEP = 4
WORLD_SIZE = 2


def archive(path: Path) -> None:
    """A small `torch.save` archive (a zip) at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state": torch.arange(4.0)}, path)


def common_files(folder: Path, step: int = STEP, world_size: int = WORLD_SIZE) -> None:
    """What every checkpoint holds: the scheduler, the trainer state of `step` and one RNG state per process."""
    folder.mkdir(parents=True, exist_ok=True)
    archive(folder / "scheduler.pt")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    for rank in range(world_size):
        archive(folder / f"rng_state_{rank}.pth")


def weights(folder: Path) -> None:
    save_file({"weight": torch.ones(2, 3)}, folder / "model.safetensors", metadata={"format": "pt"})


def ddp_checkpoint(root: Path, step: int = STEP) -> Path:
    folder = root / f"checkpoint-{step}"
    common_files(folder, step)
    weights(folder)
    archive(folder / "optimizer.pt")
    return folder


def deepspeed_checkpoint(root: Path, step: int = STEP) -> Path:
    """As DeepSpeed ZeRO-2's `save_checkpoint` and the Trainer lay it out for 2 processes."""
    folder = root / f"checkpoint-{step}"
    common_files(folder, step)
    weights(folder)
    tag = folder / f"global_step{step}"
    for rank in range(WORLD_SIZE):
        archive(tag / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
    archive(tag / "mp_rank_00_model_states.pt")
    (folder / "latest").write_text(f"global_step{step}")
    (folder / "zero_to_fp32.py").write_text("# DeepSpeed's recovery script\n")
    return folder


def fsdp_checkpoint(root: Path, step: int = STEP) -> Path:
    """As the Trainer under accelerate's FSDP plugin with `FULL_STATE_DICT` lays it out."""
    folder = root / f"checkpoint-{step}"
    common_files(folder, step)
    weights(folder)
    archive(folder / "pytorch_model_fsdp.bin")
    archive(folder / "optimizer.bin")
    return folder


def sharded_fsdp_checkpoint(root: Path, step: int = STEP) -> Path:
    """`SHARDED_STATE_DICT`: torch.distributed.checkpoint folders, no model.safetensors."""
    folder = root / f"checkpoint-{step}"
    common_files(folder, step)
    for name in ("pytorch_model_fsdp_0", "optimizer_0"):
        (folder / name).mkdir()
        (folder / name / ".metadata").write_bytes(b"metadata")
        for rank in range(WORLD_SIZE):
            (folder / name / f"__{rank}_0.distcp").write_bytes(b"shard")
    return folder


@pytest.mark.parametrize("make", [ddp_checkpoint, deepspeed_checkpoint, fsdp_checkpoint, sharded_fsdp_checkpoint])
def test_complete_checkpoints_are_accepted(tmp_path, make):
    folder = make(tmp_path)
    assert checkpoint_problem(str(folder)) is None
    assert last_valid_checkpoint(str(tmp_path)) == str(folder)


def test_deepspeed_zero3_without_gathered_weights_is_accepted(tmp_path):
    """ZeRO-3 keeps the weights in per-rank model states; the Trainer writes no model.safetensors unless gathered."""
    folder = tmp_path / f"checkpoint-{STEP}"
    common_files(folder)
    tag = folder / f"global_step{STEP}"
    for rank in range(WORLD_SIZE):
        archive(tag / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
        archive(tag / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt")
    (folder / "latest").write_text(f"global_step{STEP}\n")
    assert checkpoint_problem(str(folder)) is None
    (tag / "zero_pp_rank_1_mp_rank_00_model_states.pt").unlink()
    assert "zero_pp_rank_1_mp_rank_00_model_states.pt" in checkpoint_problem(str(folder))


def remove(relative: str):
    def damage(folder: Path) -> None:
        path = folder / relative
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    return damage


def truncate(relative: str):
    def damage(folder: Path) -> None:
        path = folder / relative
        path.write_bytes(path.read_bytes()[:40])

    return damage


def latest_names(tag: str):
    return lambda folder: (folder / "latest").write_text(tag)


@pytest.mark.parametrize(
    "make, damage, named",
    [
        (ddp_checkpoint, remove("optimizer.pt"), "optimizer.pt"),
        (ddp_checkpoint, truncate("optimizer.pt"), "optimizer.pt"),
        (ddp_checkpoint, remove("model.safetensors"), "model.safetensors"),
        (deepspeed_checkpoint, latest_names("global_step9"), "global_step9"),
        (deepspeed_checkpoint, latest_names("../checkpoint-2"), "../checkpoint-2"),
        (deepspeed_checkpoint, remove("latest"), "latest"),
        (deepspeed_checkpoint, remove(f"global_step{STEP}"), f"global_step{STEP}"),
        (deepspeed_checkpoint, remove(f"global_step{STEP}/zero_pp_rank_0_mp_rank_00_optim_states.pt"), "optim_states"),
        (deepspeed_checkpoint, remove(f"global_step{STEP}/zero_pp_rank_1_mp_rank_00_optim_states.pt"), "rank_1"),
        (deepspeed_checkpoint, truncate(f"global_step{STEP}/zero_pp_rank_1_mp_rank_00_optim_states.pt"), "rank_1"),
        (deepspeed_checkpoint, remove(f"global_step{STEP}/mp_rank_00_model_states.pt"), "mp_rank_00_model_states"),
        (deepspeed_checkpoint, remove("model.safetensors"), "model.safetensors"),
        (deepspeed_checkpoint, remove("scheduler.pt"), "scheduler.pt"),
        (fsdp_checkpoint, remove("optimizer.bin"), "optimizer.bin"),
        (fsdp_checkpoint, truncate("optimizer.bin"), "optimizer.bin"),
        (fsdp_checkpoint, remove("pytorch_model_fsdp.bin"), "pytorch_model_fsdp.bin"),
        (fsdp_checkpoint, truncate("model.safetensors"), "model.safetensors"),
        (sharded_fsdp_checkpoint, remove("optimizer_0"), "optimizer_0"),
        (sharded_fsdp_checkpoint, remove("optimizer_0/.metadata"), "optimizer_0"),
        (sharded_fsdp_checkpoint, remove("pytorch_model_fsdp_0"), "pytorch_model_fsdp_0"),
    ],
    ids=[
        "ddp-no-optimizer",
        "ddp-truncated-optimizer",
        "ddp-no-weights",
        "deepspeed-latest-names-a-missing-tag",
        "deepspeed-latest-names-a-path",
        "deepspeed-no-latest",
        "deepspeed-no-tag-folder",
        "deepspeed-tag-without-optimizer-states",
        "deepspeed-missing-rank-shard",
        "deepspeed-truncated-rank-shard",
        "deepspeed-no-model-states",
        "deepspeed-no-weights",
        "deepspeed-no-scheduler",
        "fsdp-no-optimizer",
        "fsdp-truncated-optimizer",
        "fsdp-no-model",
        "fsdp-truncated-weights",
        "fsdp-sharded-no-optimizer",
        "fsdp-sharded-unfinished-optimizer",
        "fsdp-sharded-no-model",
    ],
)
def test_incomplete_checkpoints_are_refused_naming_the_missing_file(tmp_path, caplog, make, damage, named):
    before = make(tmp_path, step=2)
    last = make(tmp_path, step=STEP)
    damage(last)
    problem = checkpoint_problem(str(last))
    assert problem is not None and named in problem, problem
    with caplog.at_level("WARNING"):
        assert last_valid_checkpoint(str(tmp_path)) == str(before)
    assert str(last) in caplog.text and "falling back" in caplog.text


def test_deepspeed_tag_without_optimizer_states_is_refused(tmp_path):
    folder = deepspeed_checkpoint(tmp_path)
    for shard in (folder / f"global_step{STEP}").glob("*_optim_states.pt"):
        shard.unlink()
    problem = checkpoint_problem(str(folder))
    assert problem is not None and "optim_states" in problem and f"global_step{STEP}" in problem


def test_trainer_state_of_another_step_is_refused(tmp_path):
    for make in (ddp_checkpoint, deepspeed_checkpoint, fsdp_checkpoint):
        folder = make(tmp_path / make.__name__)
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": STEP - 1}))
        assert "not the state of step" in checkpoint_problem(str(folder))
