"""Veltrix: a latent world model that evolves a world state instead of predicting the next token.

Importing the package registers
- the encoder, the evolver, the Engram memory and the root `VeltrixWorldModel` with `AutoConfig` / `AutoModel`, and
  the encoder, evolver and Engram memory for auto classes, so that their saved folders carry an `auto_map` and their
  code;
- the component classes with `VeltrixPipeline`, which then loads saved folders with this installed code;
- the `world-rollout` task of `transformers.pipeline()`, which then needs no `trust_remote_code`.

The Hub export (`hub.export.write_hub_code`), which makes `save_pretrained` write a self-contained Hub repository, is
declared in `setup.py` as an entry point (`veltrix.repository_writers`), so that this module imports no tooling.

The package root holds the model, exactly what a saved folder carries; the subpackages (`worlds`, `training`,
`evaluation`, `planning`, `hub`, `benchmarks`) are the tooling that uses it and are never published with it.
"""

from transformers import AutoConfig, AutoModel
from transformers.pipelines import PIPELINE_REGISTRY

from .action_search import PLANNING_METHODS, VeltrixPlannerSettings, VeltrixPlanOutput
from .configuration_veltrix import VeltrixEncoderConfig, VeltrixEngramConfig, VeltrixEvolverConfig
from .modeling_veltrix_decoder import VeltrixDecoderModel, VeltrixDecoderOutput, flow_matching_loss
from .modeling_veltrix_encoder import VeltrixEncoderModel, VeltrixEncoderOutput
from .modeling_veltrix_engram import VeltrixEngramModel, VeltrixEngramRecall
from .modeling_veltrix_evolver import (
    VeltrixCounterfactualRolloutOutput,
    VeltrixEvolverCache,
    VeltrixEvolverModel,
    VeltrixEvolverOutput,
    VeltrixIntervention,
    VeltrixRolloutOutput,
)
from .pipeline_veltrix import VeltrixPipeline, VeltrixPipelineOutput, VeltrixWorldModel
from .pipeline_world_rollout import TASK, VeltrixWorldConfig, VeltrixWorldRolloutPipeline
from .weights_check import VeltrixRepositoryError, weights_fingerprint

for _config_class, _model_class in (
    (VeltrixEncoderConfig, VeltrixEncoderModel),
    (VeltrixEvolverConfig, VeltrixEvolverModel),
    (VeltrixEngramConfig, VeltrixEngramModel),
    (VeltrixWorldConfig, VeltrixWorldModel),
):
    AutoConfig.register(_config_class.model_type, _config_class, exist_ok=True)
    AutoModel.register(_config_class, _model_class, exist_ok=True)
for _config_class, _model_class in (
    (VeltrixEncoderConfig, VeltrixEncoderModel),
    (VeltrixEvolverConfig, VeltrixEvolverModel),
    (VeltrixEngramConfig, VeltrixEngramModel),
):
    _config_class.register_for_auto_class()
    _model_class.register_for_auto_class("AutoModel")
for _model_class in (VeltrixEncoderModel, VeltrixEvolverModel, VeltrixEngramModel, VeltrixDecoderModel):
    VeltrixPipeline.register_component_class(_model_class)
PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=VeltrixWorldRolloutPipeline, pt_model=AutoModel, type="video")

__all__ = [
    "PLANNING_METHODS",
    "TASK",
    "VeltrixCounterfactualRolloutOutput",
    "VeltrixDecoderModel",
    "VeltrixDecoderOutput",
    "VeltrixEncoderConfig",
    "VeltrixEncoderModel",
    "VeltrixEncoderOutput",
    "VeltrixEngramConfig",
    "VeltrixEngramModel",
    "VeltrixEngramRecall",
    "VeltrixEvolverCache",
    "VeltrixEvolverConfig",
    "VeltrixEvolverModel",
    "VeltrixEvolverOutput",
    "VeltrixIntervention",
    "VeltrixPipeline",
    "VeltrixPipelineOutput",
    "VeltrixPlanOutput",
    "VeltrixPlannerSettings",
    "VeltrixRepositoryError",
    "VeltrixRolloutOutput",
    "VeltrixWorldConfig",
    "VeltrixWorldModel",
    "VeltrixWorldRolloutPipeline",
    "flow_matching_loss",
    "weights_fingerprint",
]
