"""Reproducible, resumable training: seeds derived per stage, checkpoints written atomically and checked on resume.

Seeds: `derive_seed(recipe.seed, name)` is the first 4 bytes (big-endian) of `sha256(f"{recipe.seed}/{name}")`. Each
component is initialised under `derive_seed(seed, "init/<component>")` and each stage trains under
`derive_seed(seed, "<stage>")` (`transformers.set_seed`: python `random`, numpy, torch; and the Trainer's `seed` and
`data_seed`), so a stage draws the same random numbers whether the stages before it were trained in this process or
loaded from an earlier one.

Checkpoints: `VeltrixTrainer` writes each checkpoint into `<checkpoints>/.staging/checkpoint-N` and renames it to
`<checkpoints>/checkpoint-N` only when complete, so a killed write leaves no `checkpoint-N`. On resume,
`last_valid_checkpoint` skips (with a warning) a checkpoint that lacks a file or holds a truncated one, and falls back
to the one before.
"""

import hashlib
import json
import logging
import os
import re
import shutil
import zipfile

import torch
from transformers import Trainer, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from ..weights_check import VeltrixRepositoryError, check_safetensors

logger = logging.getLogger(__name__)

STAGING = ".staging"
CHECKPOINT_FILES = ("model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json")
CHECKPOINT_PATTERN = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
RNG_STATE_PATTERN = re.compile(r"^rng_state(?:_(\d+))?\.pth$")
# DeepSpeed's `save_checkpoint` (the Trainer calls it with the checkpoint folder): `latest` holds the tag, the tag
# folder (`global_step<N>`) the optimizer-state shards and the model states.
DEEPSPEED_LATEST = "latest"
DEEPSPEED_OPTIMIZER_STATES = re.compile(r"^(bf16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt$")
DEEPSPEED_ZERO3_MODEL_STATES = re.compile(r"^zero_pp_rank_(\d+)_mp_rank_(\d+)_model_states\.pt$")
# accelerate's `save_fsdp_model` / `save_fsdp_optimizer` (model and optimizer index 0, as the Trainer calls them).
FSDP_FULL_MODEL = "pytorch_model_fsdp.bin"
FSDP_FULL_OPTIMIZER = "optimizer.bin"
FSDP_SHARDED_MODEL = "pytorch_model_fsdp_0"
FSDP_SHARDED_OPTIMIZER = "optimizer_0"
FSDP_PATTERN = re.compile(r"^(pytorch_model_fsdp.*|optimizer\.bin|optimizer_\d+(_rank\d+\.bin)?)$")


def derive_seed(seed: int, name: str) -> int:
    """A seed in [0, 2**32) for `name` (a stage, or `init/<component>`) from the recipe's `seed`: the first 4 bytes
    of `sha256(f"{seed}/{name}")`, the same on every machine and Python."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"`seed` must be an integer >= 0, got {seed!r}.")
    if not isinstance(name, str) or not name:
        raise ValueError(f"`name` must be a non-empty string, got {name!r}.")
    return int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:4], "big")


def seed_everything(seed: int, name: str) -> int:
    """Seeds python `random`, numpy and torch (`transformers.set_seed`) with `derive_seed(seed, name)`; returns it."""
    derived = derive_seed(seed, name)
    set_seed(derived)
    return derived


def _archive_problem(path: str) -> str | None:
    """Why the `torch.save` archive at `path` is unreadable (not a zip, or a member fails its CRC), or None. The
    archive is never unpickled."""
    if not zipfile.is_zipfile(path):
        return f"{path} is not a complete torch archive"
    with zipfile.ZipFile(path) as archive:
        bad = archive.testzip()
    return None if bad is None else f"{path} is damaged (member {bad} fails its CRC check)"


def _distributed_checkpoint_problem(path: str) -> str | None:
    """Why the `torch.distributed.checkpoint` folder at `path` (FSDP's sharded model or optimizer) is unusable, or
    None: it must hold `.metadata` (written last, through a rename) and at least one `.distcp` shard. Neither is read:
    `.metadata` is a pickle and the shards are raw bytes with no checksum."""
    if not os.path.isdir(path):
        return f"{path} is not a torch.distributed.checkpoint folder"
    names = os.listdir(path)
    if ".metadata" not in names:
        return f"{path} lacks .metadata (an unfinished torch.distributed.checkpoint write)"
    if not any(name.endswith(".distcp") for name in names):
        return f"{path} holds no .distcp shard"
    return None


def _state_problem(path: str, step: int) -> str | None:
    """Why `trainer_state.json` at `path` is unusable (not JSON, or another step than its folder's), or None."""
    try:
        with open(path, encoding="utf-8") as handle:
            state = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return f"{path} is not valid JSON ({error})"
    if not isinstance(state, dict) or state.get("global_step") != step:
        return f"{path} is not the state of step {step}"
    return None


def _deepspeed_layout(folder: str, files: list[str], world_size: int) -> tuple[tuple[str, ...], list[str]] | str:
    """What a DeepSpeed checkpoint needs besides the files every checkpoint has: the names that must be in `folder`
    and the archives (relative paths) to check; or why it cannot be resumed from. `world_size` is the number of
    processes that wrote it (from its RNG states): ZeRO writes one optimizer-state shard per data-parallel rank."""
    latest = os.path.join(folder, DEEPSPEED_LATEST)
    if DEEPSPEED_LATEST not in files:
        return f"{folder} lacks {DEEPSPEED_LATEST}, the file naming its DeepSpeed tag folder"
    try:
        with open(latest, encoding="utf-8") as handle:
            tag = handle.read().strip()  # as DeepSpeed's `load_checkpoint` reads it
    except (OSError, UnicodeDecodeError) as error:
        return f"{latest} is unreadable ({error})"
    if tag in ("", ".", "..") or tag != os.path.basename(tag) or (os.altsep and os.altsep in tag):
        return f"{latest} names no tag folder ({tag!r})"
    tag_folder = os.path.join(folder, tag)
    if not os.path.isdir(tag_folder):
        return f"{folder} lacks {tag}, the DeepSpeed tag folder that {latest} names"
    shards = os.listdir(tag_folder)
    optimizer_states = {
        (int(match.group(2)), int(match.group(3))): name
        for name in shards
        if (match := DEEPSPEED_OPTIMIZER_STATES.match(name))
    }
    if not optimizer_states:
        return f"{tag_folder} lacks the optimizer states (zero_pp_rank_<rank>_mp_rank_<mp>_optim_states.pt)"
    model_parallel = sorted({mp for _, mp in optimizer_states})
    data_parallel = max(world_size // len(model_parallel), max(rank for rank, _ in optimizer_states) + 1)
    expected = [(rank, mp) for mp in model_parallel for rank in range(data_parallel)]
    missing = [
        f"zero_pp_rank_{rank}_mp_rank_{mp:02d}_optim_states.pt"
        for rank, mp in expected
        if (rank, mp) not in optimizer_states
    ]
    # ZeRO-3 partitions the weights too (one model-states file per rank), and writes model.safetensors only with
    # `stage3_gather_16bit_weights_on_model_save`; ZeRO-1/2 write mp_rank_<mp>_model_states.pt and model.safetensors.
    zero3 = any(DEEPSPEED_ZERO3_MODEL_STATES.match(name) for name in shards)
    if zero3:
        model_states = [f"zero_pp_rank_{rank}_mp_rank_{mp:02d}_model_states.pt" for rank, mp in expected]
    else:
        model_states = [f"mp_rank_{mp:02d}_model_states.pt" for mp in model_parallel]
    missing += [name for name in model_states if name not in shards]
    if missing:
        return f"{tag_folder} lacks {missing}"
    archives = [os.path.join(tag, name) for name in (*sorted(optimizer_states.values()), *model_states)]
    return ((), archives) if zero3 else (("model.safetensors",), archives)


def checkpoint_problem(folder: str) -> str | None:
    """Why the Trainer checkpoint `folder` (`.../checkpoint-N`) cannot be resumed from, naming the file: a missing
    file, a truncated `model.safetensors`, a damaged optimizer/scheduler/RNG archive or a trainer state of another
    step. None when it is complete.

    Every checkpoint needs `scheduler.pt`, `trainer_state.json` (of step N) and its RNG states (`rng_state.pth`, or
    `rng_state_<rank>.pth` per process). The optimizer and the weights depend on who wrote it:

    - plain / DDP: `optimizer.pt` and `model.safetensors`;
    - DeepSpeed (a `latest` file or a `global_step*` folder): `latest` naming its tag folder (`global_stepN`), which
      holds one `*zero_pp_rank_<rank>_mp_rank_<mp>_optim_states.pt` per data-parallel rank and the model states
      (`mp_rank_<mp>_model_states.pt`; ZeRO-3: `zero_pp_rank_<rank>_mp_rank_<mp>_model_states.pt` per rank), plus
      `model.safetensors` except under ZeRO-3, whose Trainer writes it only when it gathers the weights;
    - FSDP (accelerate's `pytorch_model_fsdp*` / `optimizer.bin` / `optimizer_<i>` names): with `FULL_STATE_DICT`,
      `pytorch_model_fsdp.bin`, `optimizer.bin` and `model.safetensors`; with `SHARDED_STATE_DICT`, the
      `torch.distributed.checkpoint` folders `pytorch_model_fsdp_0/` and `optimizer_0/`.

    Nothing is unpickled: `torch.save` archives are checked as zips (member CRCs), `model.safetensors` by its header.
    A DeepSpeed checkpoint whose DeepSpeed config owns the learning-rate scheduler (no `scheduler.pt`) is refused."""
    match = CHECKPOINT_PATTERN.match(os.path.basename(os.path.normpath(folder)))
    if match is None or not os.path.isdir(folder):
        return f"{folder} is not a checkpoint-<step> folder"
    files = os.listdir(folder)
    rng_matches = sorted((m for name in files if (m := RNG_STATE_PATTERN.match(name))), key=lambda m: m.group(0))
    rng_states = [m.group(0) for m in rng_matches]
    world_size = max((int(m.group(1) or 0) + 1 for m in rng_matches), default=1)
    folders = []
    if DEEPSPEED_LATEST in files or any(
        name.startswith("global_step") and os.path.isdir(os.path.join(folder, name)) for name in files
    ):
        layout = _deepspeed_layout(folder, files, world_size)
        if isinstance(layout, str):
            return layout
        required, archives = layout
    elif any(FSDP_PATTERN.match(name) for name in files):
        if FSDP_FULL_MODEL in files or FSDP_FULL_OPTIMIZER in files:  # FULL_STATE_DICT
            required = (FSDP_FULL_MODEL, FSDP_FULL_OPTIMIZER, "model.safetensors")
            archives = [FSDP_FULL_MODEL, FSDP_FULL_OPTIMIZER]
        else:  # SHARDED_STATE_DICT, written with torch.distributed.checkpoint
            required = folders = (FSDP_SHARDED_MODEL, FSDP_SHARDED_OPTIMIZER)
            archives = []
    else:
        required, archives = ("model.safetensors", "optimizer.pt"), ["optimizer.pt"]
    missing = [name for name in (*required, "scheduler.pt", "trainer_state.json") if name not in files]
    if missing or not rng_states:
        return f"{folder} lacks {missing or ['rng_state.pth']}"
    if "model.safetensors" in files:
        try:
            check_safetensors(os.path.join(folder, "model.safetensors"))
        except VeltrixRepositoryError as error:
            return str(error)
    for name in folders:
        problem = _distributed_checkpoint_problem(os.path.join(folder, name))
        if problem:
            return problem
    for name in (*archives, "scheduler.pt", *rng_states):
        problem = _archive_problem(os.path.join(folder, name))
        if problem:
            return problem
    return _state_problem(os.path.join(folder, "trainer_state.json"), int(match.group(1)))


def last_valid_checkpoint(checkpoint_dir: str) -> str | None:
    """The checkpoint of `checkpoint_dir` with the highest step that `checkpoint_problem` accepts, or None. Each
    damaged checkpoint skipped, and an incomplete write left in `.staging`, is reported with `logger.warning`."""
    if not os.path.isdir(checkpoint_dir):
        return None
    staging = os.path.join(checkpoint_dir, STAGING)
    if os.path.isdir(staging) and os.listdir(staging):
        logger.warning("Ignoring %s: a checkpoint write that was interrupted (%s).", staging, os.listdir(staging))
    steps = sorted(
        (int(match.group(1)), name)
        for name in os.listdir(checkpoint_dir)
        if (match := CHECKPOINT_PATTERN.match(name)) and os.path.isdir(os.path.join(checkpoint_dir, name))
    )
    for _, name in reversed(steps):
        folder = os.path.join(checkpoint_dir, name)
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        logger.warning("Checkpoint %s cannot be resumed from: %s; falling back to the one before.", folder, problem)
    if steps:
        logger.warning("No usable checkpoint in %s: the stage trains from its start.", checkpoint_dir)
    return None


def _fsync_folder(folder: str) -> None:
    """Flushes every file of `folder` to disk, those of its subfolders too (DeepSpeed's `global_step<N>/`, FSDP's
    `optimizer_0/`), so the rename that publishes it cannot outrun its contents."""
    for parent, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(parent, name)
            if os.path.isfile(path):
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())


class VeltrixTrainer(Trainer):
    """A `Trainer` whose checkpoints appear complete or not at all: each is written into `<output_dir>/.staging`
    and renamed to `<output_dir>/checkpoint-N` once every file is written (then old ones are rotated)."""

    _staging = False

    def _get_output_dir(self, trial: object) -> str:
        run_dir = super()._get_output_dir(trial)
        return os.path.join(run_dir, STAGING) if self._staging else run_dir

    def _save_checkpoint(self, model: torch.nn.Module, trial: object) -> None:
        run_dir = super()._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = os.path.join(run_dir, STAGING)
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = False
        self.accelerator.wait_for_everyone()  # every process has written its RNG state
        if self.args.should_save:
            self._publish(os.path.join(staging, name), os.path.join(run_dir, name))
            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit, use_mtime=False)

    @staticmethod
    def _publish(written: str, target: str) -> None:
        """Renames the complete checkpoint `written` to `target` (replacing an older one of the same step)."""
        _fsync_folder(written)
        replaced = f"{written}.replaced"
        if os.path.isdir(target):
            os.replace(target, replaced)
        os.replace(written, target)
        shutil.rmtree(os.path.dirname(written), ignore_errors=True)
