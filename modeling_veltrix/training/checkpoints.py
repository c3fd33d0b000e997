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
    """Why the `torch.save` archive at `path` is unreadable (not a zip, or a member fails its CRC), or None."""
    if not zipfile.is_zipfile(path):
        return f"{path} is not a complete torch archive"
    with zipfile.ZipFile(path) as archive:
        bad = archive.testzip()
    return None if bad is None else f"{path} is damaged (member {bad} fails its CRC check)"


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


def checkpoint_problem(folder: str) -> str | None:
    """Why the Trainer checkpoint `folder` (`.../checkpoint-N`) cannot be resumed from, naming the file: a missing
    file, a truncated `model.safetensors`, a damaged optimizer/scheduler/RNG archive or a trainer state of another
    step. None when it is complete."""
    match = CHECKPOINT_PATTERN.match(os.path.basename(os.path.normpath(folder)))
    if match is None or not os.path.isdir(folder):
        return f"{folder} is not a checkpoint-<step> folder"
    files = os.listdir(folder)
    missing = [name for name in CHECKPOINT_FILES if name not in files]
    rng_states = [name for name in files if re.match(r"^rng_state(_\d+)?\.pth$", name)]
    if missing or not rng_states:
        return f"{folder} lacks {missing or ['rng_state.pth']}"
    try:
        check_safetensors(os.path.join(folder, "model.safetensors"))
    except VeltrixRepositoryError as error:
        return str(error)
    for name in ("optimizer.pt", "scheduler.pt", *rng_states):
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
    """Flushes every file of `folder` to disk, so the rename that publishes it cannot outrun its contents."""
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
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
