"""Runs the stages: builds the world datasets, creates or loads the models, trains each stage with `Trainer` and
assembles the trained pipeline.

Folders of `output_dir`: each stage of `STAGES` saves its component to `<output_dir>/<stage>`; the physics probe
(`physics.load_or_train_probe`) goes to `<output_dir>/probe`; the optional joint fine-tune (`train_joint`, after the
staged ones) saves both components it trains to `<output_dir>/joint/encoder` and `<output_dir>/joint/evolver` in one
atomic write, and `trained_component` (hence `load_or_create_models`) prefers those to `<output_dir>/encoder` and
`<output_dir>/evolver`. The joint fine-tune changes the encoder's units, which the decoder was trained on: train the
`decoder` stage again after it (delete `<output_dir>/joint` to go back to the staged components). Checkpoints of
every stage go to `<output_dir>/checkpoints/<stage>`.
"""

import logging
import os
import shutil
from collections.abc import Callable

import datasets
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from transformers import TrainingArguments

from ..configuration_veltrix import VeltrixEncoderConfig, VeltrixEvolverConfig
from ..modeling_veltrix_decoder import VeltrixDecoderModel
from ..modeling_veltrix_encoder import VeltrixEncoderModel
from ..modeling_veltrix_evolver import VeltrixEvolverModel
from ..pipeline_veltrix import VeltrixPipeline
from ..repository_check import check_component_config, component_mismatches, write_folder_atomically
from ..worlds import build_world_dataset, world_metadata
from .checkpoints import VeltrixTrainer, last_valid_checkpoint, seed_everything
from .physics import VeltrixPhysicsProbe
from .recipe import STAGE_COMPONENT, STAGES, VeltrixStageRecipe, VeltrixTrainingRecipe
from .stages import (
    VeltrixDecoderStage,
    VeltrixEncoderStage,
    VeltrixEvolverStage,
    VeltrixJointStage,
    VeltrixPredictor,
    VeltrixReflowStage,
    build_reflow_pairs,
)

logger = logging.getLogger(__name__)


def world_action_dim(recipe: VeltrixTrainingRecipe) -> int:
    """Width of the actions of the recipe's world (with its `world_options`)."""
    return world_metadata(recipe.world, **recipe.world_options).action_dim


def build_datasets(recipe: VeltrixTrainingRecipe) -> tuple[datasets.Dataset, datasets.Dataset]:
    """The recipe's world as (train, held-out) `datasets.Dataset`s in torch format; held-out uses another seed."""
    common = {"world": recipe.world, "num_steps": recipe.trajectory_length, **recipe.world_options}
    train = build_world_dataset(num_trajectories=recipe.num_train_trajectories, seed=recipe.train_seed, **common)
    held_out = build_world_dataset(num_trajectories=recipe.num_eval_trajectories, seed=recipe.eval_seed, **common)
    return train.with_format("torch"), held_out.with_format("torch")


# The file each preset component needs, and the class that must load it.
PRESET_FILES = {
    "encoder": ("config.json", VeltrixEncoderModel),
    "evolver": ("config.json", VeltrixEvolverModel),
    "decoder": ("config.json", VeltrixDecoderModel),
    "scheduler": ("scheduler_config.json", FlowMatchEulerDiscreteScheduler),
}
# The components a stage trains on, which must be trained before it.
STAGE_REQUIRES = {"encoder": (), "evolver": ("encoder",), "decoder": ("encoder",), "reflow": ("encoder", "decoder")}


def check_preset(preset_dir: str) -> None:
    """Raises a `ValueError` naming the file unless the preset folder holds every component's config
    (`encoder/config.json`, `evolver/config.json`, `decoder/config.json`, `scheduler/scheduler_config.json`), each
    valid JSON with only fields this version knows."""
    if not os.path.isdir(preset_dir):
        raise ValueError(f"`preset` must be a preset folder, got {preset_dir!r}, which is not a folder.")
    for component, (file, cls) in PRESET_FILES.items():
        path = os.path.join(preset_dir, component, file)
        if not os.path.isfile(path):
            raise ValueError(f"Preset {preset_dir} lacks {path}: the {component} config is required.")
        try:
            if component == "scheduler":
                cls.load_config(os.path.dirname(path))
            else:
                check_component_config(preset_dir, component, cls)
        except (OSError, ValueError) as error:  # VeltrixRepositoryError is an OSError
            raise ValueError(f"Preset {preset_dir}: {path} cannot be loaded: {error}") from None


# Where a component trained in `output_dir` is looked for, best first: its fine-tunes before its stage.
COMPONENT_FOLDERS = {
    "encoder": (os.path.join("joint", "encoder"), "encoder"),
    "evolver": (os.path.join("joint", "evolver"), "evolver"),
    "decoder": ("reflow", "decoder"),
}


def trained_component(output_dir: str, component: str) -> str | None:
    """The folder of `component` trained already in `output_dir`, or None: for the encoder and the evolver their
    joint fine-tune (`<output_dir>/joint/<component>`) first, for the decoder its reflow fine-tune first."""
    for name in COMPONENT_FOLDERS.get(component, (component,)):
        path = os.path.join(output_dir, name)
        if os.path.isdir(path):
            return path
    return None


def check_stage_prerequisites(stages: tuple[str, ...], output_dir: str, skip_finished: bool = False) -> None:
    """Raises a `ValueError` when a stage of `stages` would train on a component that is neither trained in
    `output_dir` nor trained by an earlier stage of `stages` (e.g. `evolver` needs a trained encoder), saying which
    stage to run first."""
    unknown = [stage for stage in stages if stage not in STAGES]
    if unknown or not stages:
        raise ValueError(f"`stages` must be a non-empty sequence of {STAGES}, got {stages!r}.")
    ready = {component for component in ("encoder", "evolver", "decoder") if trained_component(output_dir, component)}
    for stage in stages:
        if skip_finished and os.path.isdir(os.path.join(output_dir, stage)):
            continue
        for component in STAGE_REQUIRES[stage]:
            if component not in ready:
                raise ValueError(
                    f"Stage `{stage}` needs a trained {component}, and {os.path.join(output_dir, component)} does "
                    f"not exist: train it first with `--stage {component}` (or run `--stage all`)."
                )
        ready.add(STAGE_COMPONENT[stage])


def load_or_create_models(
    model_dir: str, output_dir: str, action_dim: int | None = None, seed: int | None = None
) -> tuple[VeltrixEncoderModel, VeltrixEvolverModel, VeltrixDecoderModel]:
    """Loads each component trained already in `output_dir`, else creates it from the preset folder `model_dir`
    (checked by `check_preset`); `action_dim` overrides the preset's action width (a world's actions decide it).

    With `seed` (the recipe's), each created component is initialised under `derive_seed(seed, "init/<component>")`,
    so its weights do not depend on which of the others were loaded; without, the global torch RNG is used."""
    check_preset(model_dir)
    overrides = {} if action_dim is None else {"action_dim": action_dim}

    def create(component: str, build: Callable[[str], torch.nn.Module]) -> torch.nn.Module:
        """`build(<model_dir>/<component>)` under the component's seed; a bad config value names its file."""
        if seed is not None:
            seed_everything(seed, f"init/{component}")
        path = os.path.join(model_dir, component)
        try:
            return build(path)
        except (OSError, ValueError) as error:
            raise ValueError(f"Preset {model_dir}: {os.path.join(path, 'config.json')}: {error}") from None

    creators = {
        "encoder": lambda path: VeltrixEncoderModel(VeltrixEncoderConfig.from_pretrained(path, **overrides)),
        "evolver": lambda path: VeltrixEvolverModel(VeltrixEvolverConfig.from_pretrained(path, **overrides)),
        "decoder": lambda path: VeltrixDecoderModel.from_config(VeltrixDecoderModel.load_config(path)),
    }
    classes = {"encoder": VeltrixEncoderModel, "evolver": VeltrixEvolverModel, "decoder": VeltrixDecoderModel}
    models = []
    for component, build in creators.items():
        path = trained_component(output_dir, component)
        models.append(classes[component].from_pretrained(path) if path else create(component, build))
    encoder, evolver, decoder = models
    check_compatible(encoder, evolver, decoder)
    return encoder, evolver, decoder


def check_compatible(encoder: VeltrixEncoderModel, evolver: VeltrixEvolverModel, decoder: VeltrixDecoderModel) -> None:
    """The three components must agree on unit count and width, action width and frame format
    (`repository_check.component_mismatches`, which loads check too)."""
    configs = {"encoder": encoder.config, "evolver": evolver.config, "decoder": decoder.config}
    mismatches = component_mismatches(configs)
    if mismatches:
        raise ValueError(" ".join(message for _, message in mismatches))


def train_stage(
    stage: str,
    models: tuple[VeltrixEncoderModel, VeltrixPredictor, VeltrixDecoderModel],
    train_dataset: datasets.Dataset,
    recipe: VeltrixTrainingRecipe,
    output_dir: str,
    resume: bool = True,
    probe: VeltrixPhysicsProbe | None = None,
    report_to: str | list[str] = "none",
) -> dict[str, float]:
    """Trains one stage with `transformers.Trainer` and saves the trained component to `<output_dir>/<stage>`.

    `train_dataset` holds trajectories, or for `reflow` the pairs of `build_reflow_pairs`. The `evolver` stage trains
    any `VeltrixPredictor` in the evolver's place (a baseline), and with `recipe.physics_loss_weight > 0` needs the
    physics `probe` (`training.physics.load_or_train_probe`).

    The stage trains under `derive_seed(recipe.seed, stage)` (python, numpy, torch, the Trainer's `seed` and
    `data_seed`). Checkpoints go to `<output_dir>/checkpoints/<stage>`, written atomically (`VeltrixTrainer`); with
    `resume=True` training continues from the last complete one (`last_valid_checkpoint`: a damaged one is skipped
    with a warning); with `resume=False` the stage starts over and its earlier checkpoints are deleted (a later resume
    must not pick up a stale one). `report_to` goes to the Trainer's `report_to` (e.g. "tensorboard"). Returns the
    Trainer's training metrics.
    """
    if stage not in STAGES:
        raise ValueError(f"`stage` must be one of {STAGES}, got {stage!r}.")
    recipe.validate()
    encoder, evolver, decoder = models
    module = {
        "encoder": lambda: VeltrixEncoderStage(encoder),
        "evolver": lambda: VeltrixEvolverStage(encoder, evolver, recipe, probe=probe),
        "decoder": lambda: VeltrixDecoderStage(encoder, decoder, recipe),
        "reflow": lambda: VeltrixReflowStage(decoder, recipe),
    }[stage]()
    if stage == "evolver" and module.sampling_weight:
        module.fit_change_scale(train_dataset.with_format("torch"))
    component = {"encoder": encoder, "evolver": evolver, "decoder": decoder}[STAGE_COMPONENT[stage]]
    return run_trainer(stage, module, component.save_pretrained, train_dataset, recipe, output_dir, resume, report_to)


def train_joint(
    models: tuple[VeltrixEncoderModel, VeltrixPredictor, VeltrixDecoderModel],
    train_dataset: datasets.Dataset,
    recipe: VeltrixTrainingRecipe,
    output_dir: str,
    resume: bool = True,
    probe: VeltrixPhysicsProbe | None = None,
    report_to: str | list[str] = "none",
) -> dict[str, float]:
    """The optional joint fine-tune after the staged ones: encoder and evolver trained together
    (`stages.VeltrixJointStage`, recipe `joint`; `probe` is needed with `recipe.joint_physics_weight > 0`), saved
    together to `<output_dir>/joint/{encoder,evolver}` (one atomic write), which `trained_component` then prefers.
    Seeds, checkpoints (`<output_dir>/checkpoints/joint`), `resume` and `report_to` as in `train_stage`. Returns the
    Trainer's training metrics."""
    recipe.validate()
    encoder, evolver, _ = models
    module = VeltrixJointStage(encoder, evolver, recipe, probe=probe)

    def save(folder: str) -> None:
        encoder.save_pretrained(os.path.join(folder, "encoder"))
        evolver.save_pretrained(os.path.join(folder, "evolver"))

    return run_trainer("joint", module, save, train_dataset, recipe, output_dir, resume, report_to)


def run_trainer(
    stage: str,
    module: torch.nn.Module,
    save: Callable[[str], None],
    train_dataset: datasets.Dataset,
    recipe: VeltrixTrainingRecipe,
    output_dir: str,
    resume: bool = True,
    report_to: str | list[str] = "none",
) -> dict[str, float]:
    """The machinery of every stage: trains the stage `module` (which returns `{"loss": ...}`) with `VeltrixTrainer`
    under `derive_seed(recipe.seed, stage)` and `recipe.<stage>`'s optimisation, with checkpoints in
    `<output_dir>/checkpoints/<stage>` (resumed, or deleted with `resume=False`), then (on the main process) writes
    `<output_dir>/<stage>` atomically with `save(folder)`, e.g. a component's `save_pretrained`. `report_to` is the
    Trainer's (`"none"`, `"tensorboard"`, ...; logs under `<output_dir>/checkpoints/<stage>`). Returns the Trainer's
    training metrics."""
    stage_seed = seed_everything(recipe.seed, stage)
    stage_recipe: VeltrixStageRecipe = getattr(recipe, stage)
    checkpoint_dir = os.path.join(output_dir, "checkpoints", stage)
    args = TrainingArguments(
        output_dir=checkpoint_dir,
        max_steps=stage_recipe.max_steps,
        per_device_train_batch_size=stage_recipe.batch_size,
        learning_rate=stage_recipe.learning_rate,
        weight_decay=stage_recipe.weight_decay,
        warmup_steps=stage_recipe.warmup_steps,
        lr_scheduler_type="cosine",
        logging_steps=max(1, stage_recipe.max_steps // 20),
        save_steps=stage_recipe.save_steps,
        save_total_limit=2,  # the one before the last is the fallback when the last is damaged
        report_to=report_to,
        seed=stage_seed,
        data_seed=stage_seed,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
    )
    if not resume and os.path.isdir(checkpoint_dir):
        logger.warning("Starting stage %s over: deleting its earlier checkpoints in %s.", stage, checkpoint_dir)
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    trainer = VeltrixTrainer(model=module, args=args, train_dataset=train_dataset)
    last = last_valid_checkpoint(checkpoint_dir) if resume else None
    result = trainer.train(resume_from_checkpoint=last)
    if trainer.is_world_process_zero():
        write_folder_atomically(save, os.path.join(output_dir, stage))
    return result.metrics


def assemble_pipeline(
    models: tuple[VeltrixEncoderModel, VeltrixEvolverModel, VeltrixDecoderModel], preset_dir: str
) -> VeltrixPipeline:
    """The trained components + the preset's scheduler as a `VeltrixPipeline` in eval mode."""
    encoder, evolver, decoder = (model.eval() for model in models)
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(preset_dir, subfolder="scheduler")
    return VeltrixPipeline(encoder=encoder, evolver=evolver, decoder=decoder, scheduler=scheduler)


def train_stages(
    stages: tuple[str, ...],
    models: tuple[VeltrixEncoderModel, VeltrixPredictor, VeltrixDecoderModel],
    preset_dir: str,
    train_dataset: datasets.Dataset,
    recipe: VeltrixTrainingRecipe,
    output_dir: str,
    skip_finished: bool = False,
    resume: bool = True,
    probe: VeltrixPhysicsProbe | None = None,
    report_to: str | list[str] = "none",
) -> None:
    """Trains `stages` in order (building the reflow pairs when `reflow` comes); with `skip_finished`, a stage
    whose folder `<output_dir>/<stage>` exists is not trained again. The recipe and each stage's prerequisites
    (`check_stage_prerequisites`) are checked before any stage trains. `probe` goes to the evolver stage (needed
    with `recipe.physics_loss_weight > 0`); `report_to` to the Trainer (as in `train_stage`)."""
    recipe.validate()
    check_stage_prerequisites(tuple(stages), output_dir, skip_finished)
    for stage in stages:
        if skip_finished and os.path.isdir(os.path.join(output_dir, stage)):
            print(f"[veltrix] stage {stage}: already trained, loaded from {os.path.join(output_dir, stage)}")
            continue
        data = (
            build_reflow_pairs(assemble_pipeline(models, preset_dir), train_dataset, recipe)
            if stage == "reflow"
            else train_dataset
        )
        print(f"[veltrix] stage {stage}: training {getattr(recipe, stage).max_steps} steps")
        metrics = train_stage(stage, models, data, recipe, output_dir, resume=resume, probe=probe, report_to=report_to)
        print(f"[veltrix] stage {stage} finished: train_loss={metrics['train_loss']:.5g}")
