"""Veltrix: a latent world model that evolves a world state instead of predicting the next token.

Importing the package registers the encoder and evolver with `AutoConfig` / `AutoModel`.
"""

from transformers import AutoConfig, AutoModel

from .configuration_veltrix import VeltrixEncoderConfig, VeltrixEvolverConfig
from .modeling_veltrix_decoder import VeltrixDecoderModel, VeltrixDecoderOutput, flow_matching_loss
from .modeling_veltrix_encoder import VeltrixEncoderModel, VeltrixEncoderOutput
from .modeling_veltrix_evolver import (
    VeltrixEvolverCache,
    VeltrixEvolverModel,
    VeltrixEvolverOutput,
    VeltrixRolloutOutput,
)
from .pipeline_veltrix import VeltrixPipeline, VeltrixPipelineOutput

AutoConfig.register(VeltrixEncoderConfig.model_type, VeltrixEncoderConfig, exist_ok=True)
AutoConfig.register(VeltrixEvolverConfig.model_type, VeltrixEvolverConfig, exist_ok=True)
AutoModel.register(VeltrixEncoderConfig, VeltrixEncoderModel, exist_ok=True)
AutoModel.register(VeltrixEvolverConfig, VeltrixEvolverModel, exist_ok=True)

__all__ = [
    "VeltrixDecoderModel",
    "VeltrixDecoderOutput",
    "VeltrixEncoderConfig",
    "VeltrixEncoderModel",
    "VeltrixEncoderOutput",
    "VeltrixEvolverCache",
    "VeltrixEvolverConfig",
    "VeltrixEvolverModel",
    "VeltrixEvolverOutput",
    "VeltrixPipeline",
    "VeltrixPipelineOutput",
    "VeltrixRolloutOutput",
    "flow_matching_loss",
]
