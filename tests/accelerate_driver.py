"""Runs `scripts/train.py` as `accelerate launch` would, with two test hooks on every `Trainer` it creates.

    accelerate launch --config_file configuration/accelerate/cpu_ddp.yaml tests/accelerate_driver.py \
        scripts/train.py --preset <preset> --output-dir <run> --stage encoder

- `VELTRIX_TEST_RANK_DIR=<folder>`: when a stage's training ends, each process writes the parameters it holds to
  `<folder>/<stage>/rank-<k>.safetensors` (the stage module's state dict), so a test can compare the ranks.
- `VELTRIX_TEST_KILL_AFTER_SAVE=<step>`: process 0 SIGKILLs itself right after the checkpoint of step `<step>` is
  published; the launcher then stops the other processes, as when a job is killed.

scripts/train.py itself is not changed: the script runs with `runpy`, as `python scripts/train.py` would.
"""

import os
import runpy
import signal
import sys

import torch
from safetensors.torch import save_file
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments


class VeltrixRankHooks(TrainerCallback):
    """The two hooks of the module docstring."""

    def on_train_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: torch.nn.Module | None = None,
        **kwargs: object,
    ) -> None:
        folder = os.environ.get("VELTRIX_TEST_RANK_DIR")
        if folder and model is not None:
            stage = os.path.basename(os.path.normpath(args.output_dir))
            os.makedirs(os.path.join(folder, stage), exist_ok=True)
            tensors = {name: value.detach().contiguous().clone() for name, value in model.state_dict().items()}
            save_file(tensors, os.path.join(folder, stage, f"rank-{args.process_index}.safetensors"))

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: object) -> None:
        step = os.environ.get("VELTRIX_TEST_KILL_AFTER_SAVE")
        if step and state.global_step == int(step) and args.process_index == 0:
            os.kill(os.getpid(), signal.SIGKILL)


trainer_init = Trainer.__init__


def trainer_init_with_hooks(self: Trainer, *args: object, **kwargs: object) -> None:
    trainer_init(self, *args, **kwargs)
    self.add_callback(VeltrixRankHooks())


Trainer.__init__ = trainer_init_with_hooks
script = sys.argv.pop(1)
sys.argv[0] = script
runpy.run_path(script, run_name="__main__")
