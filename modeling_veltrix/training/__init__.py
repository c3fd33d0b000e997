"""Staged training of Veltrix with `transformers.Trainer`.

Stages (DESIGN §9): `encoder` (encoder + frame readout by reconstruction) -> `evolver` (frozen encoder; one-step
teacher forcing over whole trajectories plus an open-loop rollout over a local window, in latent and pixel space)
-> `decoder` (flow matching of frames on frozen units). The same code runs on one CPU or under `accelerate launch`;
checkpoints are resumable; each finished stage is saved with `save_pretrained` under `<output_dir>/<component>`.
"""

from .recipe import COMPONENTS, STAGE_COMPONENT, STAGES, VeltrixStageRecipe, VeltrixTrainingRecipe
from .runner import (
    assemble_pipeline,
    build_datasets,
    check_compatible,
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
    "VeltrixTrainingRecipe",
    "assemble_pipeline",
    "build_datasets",
    "build_reflow_pairs",
    "check_compatible",
    "load_or_create_models",
    "observed_modalities",
    "train_stage",
    "train_stages",
    "world_action_dim",
]
