"""Runs the stages: builds the world datasets, creates or loads the models, trains each stage with `Trainer` and
assembles the trained pipeline."""

import os

import datasets
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from ..configuration_veltrix import VeltrixEncoderConfig, VeltrixEvolverConfig
from ..modeling_veltrix_decoder import VeltrixDecoderModel
from ..modeling_veltrix_encoder import VeltrixEncoderModel
from ..modeling_veltrix_evolver import VeltrixEvolverModel
from ..pipeline_veltrix import VeltrixPipeline
from ..repository_check import write_folder_atomically
from ..worlds import build_world_dataset, world_metadata
from .recipe import STAGE_COMPONENT, STAGES, VeltrixStageRecipe, VeltrixTrainingRecipe
from .stages import (
    VeltrixDecoderStage,
    VeltrixEncoderStage,
    VeltrixEvolverStage,
    VeltrixReflowStage,
    build_reflow_pairs,
)


def world_action_dim(recipe: VeltrixTrainingRecipe) -> int:
    """Width of the actions of the recipe's world."""
    return world_metadata(recipe.world).action_dim


def build_datasets(recipe: VeltrixTrainingRecipe) -> tuple[datasets.Dataset, datasets.Dataset]:
    """The recipe's world as (train, held-out) `datasets.Dataset`s in torch format; held-out uses another seed."""
    common = {"world": recipe.world, "num_steps": recipe.trajectory_length, **recipe.world_options}
    train = build_world_dataset(num_trajectories=recipe.num_train_trajectories, seed=recipe.train_seed, **common)
    held_out = build_world_dataset(num_trajectories=recipe.num_eval_trajectories, seed=recipe.eval_seed, **common)
    return train.with_format("torch"), held_out.with_format("torch")


def load_or_create_models(
    model_dir: str, output_dir: str, action_dim: int | None = None
) -> tuple[VeltrixEncoderModel, VeltrixEvolverModel, VeltrixDecoderModel]:
    """Loads each component trained already in `output_dir`, else creates it from the preset folder `model_dir`
    (`<model_dir>/{encoder,evolver,decoder}/config.json`); `action_dim` overrides the preset's action width
    (a world's actions decide it)."""
    overrides = {} if action_dim is None else {"action_dim": action_dim}

    def trained(component: str) -> str | None:
        path = os.path.join(output_dir, component)
        return path if os.path.isdir(path) else None

    encoder_path, evolver_path = trained("encoder"), trained("evolver")
    decoder_path = trained("reflow") or trained("decoder")
    encoder = (
        VeltrixEncoderModel.from_pretrained(encoder_path)
        if encoder_path
        else VeltrixEncoderModel(VeltrixEncoderConfig.from_pretrained(os.path.join(model_dir, "encoder"), **overrides))
    )
    evolver = (
        VeltrixEvolverModel.from_pretrained(evolver_path)
        if evolver_path
        else VeltrixEvolverModel(VeltrixEvolverConfig.from_pretrained(os.path.join(model_dir, "evolver"), **overrides))
    )
    decoder = (
        VeltrixDecoderModel.from_pretrained(decoder_path)
        if decoder_path
        else VeltrixDecoderModel.from_config(VeltrixDecoderModel.load_config(os.path.join(model_dir, "decoder")))
    )
    check_compatible(encoder, evolver, decoder)
    return encoder, evolver, decoder


def check_compatible(encoder: VeltrixEncoderModel, evolver: VeltrixEvolverModel, decoder: VeltrixDecoderModel) -> None:
    """The three components must agree on unit count and width, action width and frame format."""
    enc, evo, dec = encoder.config, evolver.config, decoder.config
    pairs = [
        ("evolver.num_units_per_step", evo.num_units_per_step, "encoder.num_units_per_step", enc.num_units_per_step),
        ("evolver.unit_dim", evo.unit_dim, "encoder.unit_dim", enc.unit_dim),
        ("evolver.action_dim", evo.action_dim, "encoder.action_dim", enc.action_dim),
        ("decoder.cross_attention_dim", dec.cross_attention_dim, "encoder.frame_unit_dim", enc.frame_unit_dim),
        ("decoder.sample_size", dec.sample_size, "encoder.image_size", enc.image_size),
        ("decoder.in_channels", dec.in_channels, "encoder.num_channels", enc.num_channels),
    ]
    for name, value, other, expected in pairs:
        if value != expected:
            raise ValueError(f"`{name}` must equal `{other}` ({expected}), got {value}.")
    if dec.max_context_units < enc.num_units_per_step:
        raise ValueError(
            f"`decoder.max_context_units` must be >= `encoder.num_units_per_step` ({enc.num_units_per_step}), "
            f"got {dec.max_context_units}."
        )


def train_stage(
    stage: str,
    models: tuple[VeltrixEncoderModel, VeltrixEvolverModel, VeltrixDecoderModel],
    train_dataset: datasets.Dataset,
    recipe: VeltrixTrainingRecipe,
    output_dir: str,
    resume: bool = True,
) -> dict[str, float]:
    """Trains one stage with `transformers.Trainer` and saves the trained component to `<output_dir>/<stage>`.

    `train_dataset` holds trajectories, or for `reflow` the pairs of `build_reflow_pairs`.

    Checkpoints go to `<output_dir>/checkpoints/<stage>`; with `resume=True` training continues from the last one.
    Returns the Trainer's training metrics.
    """
    if stage not in STAGES:
        raise ValueError(f"`stage` must be one of {STAGES}, got {stage!r}.")
    encoder, evolver, decoder = models
    module = {
        "encoder": lambda: VeltrixEncoderStage(encoder),
        "evolver": lambda: VeltrixEvolverStage(encoder, evolver, recipe),
        "decoder": lambda: VeltrixDecoderStage(encoder, decoder, recipe),
        "reflow": lambda: VeltrixReflowStage(decoder, recipe),
    }[stage]()
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
        save_total_limit=1,
        report_to=[],
        seed=recipe.seed,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = Trainer(model=module, args=args, train_dataset=train_dataset)
    last = get_last_checkpoint(checkpoint_dir) if resume and os.path.isdir(checkpoint_dir) else None
    result = trainer.train(resume_from_checkpoint=last)
    component = {"encoder": encoder, "evolver": evolver, "decoder": decoder}[STAGE_COMPONENT[stage]]
    if trainer.is_world_process_zero():
        write_folder_atomically(component.save_pretrained, os.path.join(output_dir, stage))
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
    models: tuple[VeltrixEncoderModel, VeltrixEvolverModel, VeltrixDecoderModel],
    preset_dir: str,
    train_dataset: datasets.Dataset,
    recipe: VeltrixTrainingRecipe,
    output_dir: str,
    skip_finished: bool = False,
    resume: bool = True,
) -> None:
    """Trains `stages` in order (building the reflow pairs when `reflow` comes); with `skip_finished`, a stage
    whose folder `<output_dir>/<stage>` exists is not trained again."""
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
        metrics = train_stage(stage, models, data, recipe, output_dir, resume=resume)
        print(f"[veltrix] stage {stage} finished: train_loss={metrics['train_loss']:.5g}")
