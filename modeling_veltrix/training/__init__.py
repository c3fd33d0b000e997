"""Staged training of Veltrix with `transformers.Trainer`.

Stages (DESIGN §9): `encoder` (encoder + frame readout by reconstruction) -> `evolver` (frozen encoder; one-step
teacher forcing over whole trajectories plus an open-loop rollout over a local window, in latent and pixel space)
-> `decoder` (flow matching of frames on frozen units) -> Engram (`engram`: quantizer, table, gate; or the
parametric memory trained with the evolver). Besides, `probe` (`physics.load_or_train_probe`) trains a
physics probe on the frozen encoder's units, which the evolver stage's optional energy-conservation term
(`recipe.physics_loss_weight`, `physics.physics_conservation_loss`) reads, and the optional `joint` fine-tune
(`runner.train_joint`) trains encoder and evolver together on `L_traj + λ1 L_align + λ2 L_phys + λ3 L_recon`. The same
code runs on one CPU or under `accelerate launch`; each created component and each stage is seeded from `recipe.seed`
(`checkpoints.derive_seed`); checkpoints are written atomically and resumed from the last complete one; each finished
stage is saved with `save_pretrained` under `<output_dir>/<component>` (`runner`'s docstring lists the folders).
"""

from .checkpoints import VeltrixTrainer, checkpoint_problem, derive_seed, last_valid_checkpoint, seed_everything
from .engram import (
    VeltrixEngramPredictor,
    build_engram,
    build_table,
    codebook_statistics,
    create_engram,
    fit_standardisation,
    table_hit_rate,
    train_gate,
    train_parametric,
    train_quantizer,
)
from .physics import (
    VeltrixPhysicsProbe,
    VeltrixPhysicsProbeConfig,
    consecutive_pairs,
    create_probe,
    load_or_train_probe,
    physics_conservation_loss,
    probe_statistics,
)
from .recipe import (
    AUXILIARY_STAGES,
    COMPONENTS,
    RECIPE_STAGES,
    STAGE_COMPONENT,
    STAGES,
    VeltrixStageRecipe,
    VeltrixTrainingRecipe,
)
from .runner import (
    assemble_pipeline,
    build_datasets,
    check_compatible,
    check_preset,
    check_stage_prerequisites,
    load_or_create_models,
    run_trainer,
    train_joint,
    train_stage,
    train_stages,
    world_action_dim,
)
from .sources import TrajectorySourceInfo, TrajectorySourceOptions, load_trajectory_source
from .stages import (
    MODALITY_COLUMNS,
    VeltrixDecoderStage,
    VeltrixEncoderStage,
    VeltrixEvolverStage,
    VeltrixJointStage,
    VeltrixPredictor,
    VeltrixProbeStage,
    VeltrixReflowStage,
    build_reflow_pairs,
    observed_modalities,
)

__all__ = [
    "train_quantizer",
    "train_parametric",
    "train_gate",
    "table_hit_rate",
    "fit_standardisation",
    "create_engram",
    "codebook_statistics",
    "build_table",
    "build_engram",
    "VeltrixEngramPredictor",
    "AUXILIARY_STAGES",
    "COMPONENTS",
    "MODALITY_COLUMNS",
    "RECIPE_STAGES",
    "STAGES",
    "STAGE_COMPONENT",
    "VeltrixDecoderStage",
    "VeltrixEncoderStage",
    "VeltrixEvolverStage",
    "VeltrixJointStage",
    "VeltrixPhysicsProbe",
    "VeltrixPhysicsProbeConfig",
    "VeltrixPredictor",
    "VeltrixProbeStage",
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
    "create_probe",
    "derive_seed",
    "last_valid_checkpoint",
    "load_or_create_models",
    "load_or_train_probe",
    "observed_modalities",
    "consecutive_pairs",
    "physics_conservation_loss",
    "probe_statistics",
    "run_trainer",
    "train_joint",
    "seed_everything",
    "train_stage",
    "train_stages",
    "world_action_dim",
    "TrajectorySourceInfo",
    "TrajectorySourceOptions",
    "load_trajectory_source",
]
