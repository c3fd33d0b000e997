"""Staged training of Veltrix with `transformers.Trainer`.

Stages (DESIGN §9): `encoder` (encoder + frame readout by reconstruction) -> `evolver` (frozen encoder; one-step
teacher forcing over whole trajectories plus an open-loop rollout over a local window, in latent and pixel space)
-> `decoder` (flow matching of frames on frozen units). The same code runs on one CPU or under `accelerate launch`;
each created component and each stage is seeded from `recipe.seed` (`checkpoints.derive_seed`); checkpoints are
written atomically and resumed from the last complete one; each finished stage is saved with `save_pretrained`
under `<output_dir>/<component>`.
"""

from .checkpoints import VeltrixTrainer, checkpoint_problem, derive_seed, last_valid_checkpoint, seed_everything
from .recipe import COMPONENTS, STAGE_COMPONENT, STAGES, VeltrixStageRecipe, VeltrixTrainingRecipe
from .runner import (
    assemble_pipeline,
    build_datasets,
    check_compatible,
    check_preset,
    check_stage_prerequisites,
    load_or_create_models,
    train_stage,
    train_stages,
    world_action_dim,
)
from .stages import (
    MODALITY_COLUMNS,
    VeltrixDecoderStage,
    VeltrixEncoderStage,
    VeltrixEvolverStage,
    VeltrixReflowStage,
    build_reflow_pairs,
    observed_modalities,
)

__all__ = [
    "COMPONENTS",
    "MODALITY_COLUMNS",
    "STAGES",
    "STAGE_COMPONENT",
    "VeltrixDecoderStage",
    "VeltrixEncoderStage",
    "VeltrixEvolverStage",
    "VeltrixReflowStage",
    "VeltrixStageRecipe",
    "VeltrixTrainer",
    "VeltrixTrainingRecipe",
    "assemble_pipeline",
    "build_datasets",
    "build_reflow_pairs",
    "check_compatible",
    "check_preset",
    "check_stage_prerequisites",
    "checkpoint_problem",
    "derive_seed",
    "last_valid_checkpoint",
    "load_or_create_models",
    "observed_modalities",
    "seed_everything",
    "train_stage",
    "train_stages",
    "world_action_dim",
]
