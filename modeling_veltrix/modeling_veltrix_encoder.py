"""MPE: the Veltrix encoder, frames -> bounded state units in the shared latent space.

Frames are cut into patches (ViT, Dosovitskiy et al. 2021) and mixed locally by depthwise-convolution blocks
(ConvNeXt-style, Liu et al. 2022). The units are then either the patch grid itself (`unit_layout="grid"`, one
unit per patch, finest) or `num_units` learned queries cross-attending to the patches (`"resampler"`, as in
Perceiver / Flamingo, coarser). Units pass through `tanh`, so the evolver works in a bounded space.

`decode_frames` is the direct frame readout `D_frames` from units back to pixels, trained with the encoder by
reconstruction; the flow-matching decoder (`VeltrixDecoderModel`) renders sharp frames from the same units.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_veltrix import VeltrixEncoderConfig
from .input_validation import check_finite, check_range, check_shape


def patchify(frames: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, H/p · W/p, p · p · C), patches in row-major order."""
    n, c, h, w = frames.shape
    patches = frames.reshape(n, c, h // patch_size, patch_size, w // patch_size, patch_size)
    return patches.permute(0, 2, 4, 3, 5, 1).reshape(n, (h // patch_size) * (w // patch_size), -1)


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int) -> torch.Tensor:
    """(N, G · G, p · p · C) -> (N, C, G · p, G · p), the inverse of `patchify` for a square grid."""
    n, num_patches, _ = patches.shape
    grid = round(num_patches**0.5)
    frames = patches.reshape(n, grid, grid, patch_size, patch_size, channels)
    return frames.permute(0, 5, 1, 3, 2, 4).reshape(n, channels, grid * patch_size, grid * patch_size)


class VeltrixLocalMixingBlock(nn.Module):
    """Residual depthwise convolution + LayerNorm + MLP over a (N, G, G, H) feature grid."""

    def __init__(self, hidden_size: int, kernel_size: int, mlp_ratio: float, eps: float):
        super().__init__()
        self.depthwise = nn.Conv2d(hidden_size, hidden_size, kernel_size, padding=kernel_size // 2, groups=hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        inner = int(hidden_size * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden_size, inner), nn.GELU(), nn.Linear(inner, hidden_size))

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        mixed = self.depthwise(grid.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return grid + self.mlp(self.norm(mixed))


class VeltrixCrossAttention(nn.Module):
    """Multi-head cross-attention of queries (N, Q, H) to keys/values (N, K, H), pre-normed, with an MLP."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.query_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.context_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.kv_proj = nn.Linear(hidden_size, 2 * hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)
        inner = int(hidden_size * mlp_ratio)
        self.mlp_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.mlp = nn.Sequential(nn.Linear(hidden_size, inner), nn.GELU(), nn.Linear(inner, hidden_size))

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        n, q_len, hidden = queries.shape
        head_dim = hidden // self.num_heads
        q = self.q_proj(self.query_norm(queries)).reshape(n, q_len, self.num_heads, head_dim).transpose(1, 2)
        k, v = (
            self.kv_proj(self.context_norm(context)).reshape(n, -1, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        )
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, q_len, hidden)
        queries = queries + self.out_proj(attended)
        return queries + self.mlp(self.mlp_norm(queries))


class VeltrixGridReadout(nn.Module):
    """Grid units (N, G·G, D) -> frames (N, C, H, W): local mixing over the unit grid, then each unit -> its patch."""

    def __init__(self, config: VeltrixEncoderConfig):
        super().__init__()
        self.grid_size = config.grid_size
        self.patch_size = config.patch_size
        self.num_channels = config.num_channels
        self.unit_proj = nn.Linear(config.unit_dim, config.hidden_size)
        self.blocks = nn.ModuleList(
            VeltrixLocalMixingBlock(
                config.hidden_size, config.mixing_kernel_size, config.mlp_ratio, config.layer_norm_eps
            )
            for _ in range(config.num_mixing_layers)
        )
        self.to_pixels = nn.Linear(config.hidden_size, config.patch_size**2 * config.num_channels)

    def forward(self, units: torch.Tensor) -> torch.Tensor:
        n = units.shape[0]
        grid = self.unit_proj(units).reshape(n, self.grid_size, self.grid_size, -1)
        for block in self.blocks:
            grid = block(grid)
        return unpatchify(self.to_pixels(grid.flatten(1, 2)), self.patch_size, self.num_channels)


class VeltrixResamplerReadout(nn.Module):
    """Resampled units (N, U, D) -> frames (N, C, H, W): positional patch queries cross-attend to the units."""

    def __init__(self, config: VeltrixEncoderConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.num_channels = config.num_channels
        self.patch_queries = nn.Parameter(torch.zeros(1, config.grid_size**2, config.hidden_size))
        self.unit_proj = nn.Linear(config.unit_dim, config.hidden_size)
        self.attention = VeltrixCrossAttention(
            config.hidden_size, config.num_attention_heads, config.mlp_ratio, config.layer_norm_eps
        )
        self.to_pixels = nn.Linear(config.hidden_size, config.patch_size**2 * config.num_channels)

    def forward(self, units: torch.Tensor) -> torch.Tensor:
        queries = self.patch_queries.expand(units.shape[0], -1, -1)
        patches = self.attention(queries, self.unit_proj(units))
        return unpatchify(self.to_pixels(patches), self.patch_size, self.num_channels)


class VeltrixEncoderPreTrainedModel(PreTrainedModel):
    config_class = VeltrixEncoderConfig
    base_model_prefix = "encoder"
    main_input_name = "pixel_values"
    _no_split_modules = ["VeltrixLocalMixingBlock", "VeltrixCrossAttention"]

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            # Fan-in scaled (PyTorch's default) rather than a fixed small std: the encoder is a short chain of
            # projections without residual normalisation around each, and a 0.02 std starves its gradients.
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            fan_in = module.weight[0].numel()
            init.uniform_(module.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
            return
        super()._init_weights(module)
        if isinstance(module, VeltrixEncoderModel):
            init.normal_(module.position_embedding, std=std)
            if module.unit_queries is not None:
                init.normal_(module.unit_queries, std=std)
        elif isinstance(module, VeltrixResamplerReadout):
            init.normal_(module.patch_queries, std=std)


@dataclass
class VeltrixEncoderOutput(ModelOutput):
    """
    Args:
        units (`torch.Tensor` of shape `(B, T, U, D)`): the bounded state units of every step.
        conditions (`torch.Tensor` of shape `(B, T, A)`, *optional*): the actions, passed through as conditions.
        reconstruction (`torch.Tensor` of shape `(B, T, C, H, W)`, *optional*): the frame readout of the units,
            returned when `return_loss=True`.
        loss (`torch.Tensor`, *optional*): the reconstruction MSE, returned when `return_loss=True`.
    """

    units: torch.Tensor | None = None
    conditions: torch.Tensor | None = None
    reconstruction: torch.Tensor | None = None
    loss: torch.Tensor | None = None


class VeltrixEncoderModel(VeltrixEncoderPreTrainedModel):
    """The Veltrix encoder (MPE): frames `(B, T, C, H, W)` in [-1, 1] -> units `(B, T, U, D)` in (-1, 1)."""

    def __init__(self, config: VeltrixEncoderConfig):
        super().__init__(config)
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, config.patch_size, stride=config.patch_size
        )
        self.position_embedding = nn.Parameter(torch.zeros(1, config.grid_size, config.grid_size, config.hidden_size))
        self.mixing_blocks = nn.ModuleList(
            VeltrixLocalMixingBlock(
                config.hidden_size, config.mixing_kernel_size, config.mlp_ratio, config.layer_norm_eps
            )
            for _ in range(config.num_mixing_layers)
        )
        if config.unit_layout == "resampler":
            self.unit_queries = nn.Parameter(torch.zeros(1, config.num_units, config.hidden_size))
            self.resampler = VeltrixCrossAttention(
                config.hidden_size, config.num_attention_heads, config.mlp_ratio, config.layer_norm_eps
            )
            self.readout = VeltrixResamplerReadout(config)
        else:
            self.unit_queries = None
            self.resampler = None
            self.readout = VeltrixGridReadout(config)
        self.unit_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.unit_proj = nn.Linear(config.hidden_size, config.unit_dim)
        self.post_init()

    def check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        """Validates `(B, T, C, H, W)` frames: shape, finiteness and the [-1, 1] range."""
        c, size = self.config.num_channels, self.config.image_size
        check_shape("pixel_values", pixel_values, ("B", "T", c, size, size))
        check_finite("pixel_values", pixel_values)
        check_range("pixel_values", pixel_values, -1.0, 1.0)

    def check_units(self, units: torch.Tensor) -> None:
        """Validates `(B, T, U, D)` units of this encoder."""
        check_shape("units", units, ("B", "T", self.config.num_units_per_step, self.config.unit_dim))
        check_finite("units", units)

    def encode_units(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) -> (B, T, U, D) without input checks (callers validate)."""
        b, t = pixel_values.shape[:2]
        frames = pixel_values.flatten(0, 1)
        grid = self.patch_embedding(frames).permute(0, 2, 3, 1) + self.position_embedding  # (N, G, G, H)
        for block in self.mixing_blocks:
            grid = block(grid)
        tokens = grid.flatten(1, 2)  # (N, G·G, H)
        if self.resampler is not None:
            tokens = self.resampler(self.unit_queries.expand(tokens.shape[0], -1, -1), tokens)
        units = torch.tanh(self.unit_proj(self.unit_norm(tokens)))
        return units.reshape(b, t, *units.shape[1:])

    def decode_frames(self, units: torch.Tensor) -> torch.Tensor:
        """Direct frame readout: units (B, T, U, D) -> frames (B, T, C, H, W)."""
        self.check_units(units)
        b, t = units.shape[:2]
        frames = self.readout(units.flatten(0, 1))
        return frames.reshape(b, t, *frames.shape[1:])

    def forward(
        self,
        pixel_values: torch.Tensor,
        actions: torch.Tensor | None = None,
        return_loss: bool = False,
        return_dict: bool = True,
    ) -> VeltrixEncoderOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.Tensor` of shape `(B, T, C, H, W)`): frames in [-1, 1].
            actions (`torch.Tensor` of shape `(B, T, A)`, *optional*): actions, passed through as conditions.
            return_loss (`bool`): also compute the frame readout and its reconstruction MSE.
        """
        self.check_pixel_values(pixel_values)
        b, t = pixel_values.shape[:2]
        if actions is not None:
            check_shape("actions", actions, (b, t, self.config.action_dim))
            check_finite("actions", actions)
        units = self.encode_units(pixel_values)
        reconstruction = loss = None
        if return_loss:
            reconstruction = self.decode_frames(units)
            loss = F.mse_loss(reconstruction, pixel_values)
        if not return_dict:
            return tuple(v for v in (loss, units, actions, reconstruction) if v is not None)
        return VeltrixEncoderOutput(units=units, conditions=actions, reconstruction=reconstruction, loss=loss)


__all__ = ["VeltrixEncoderModel", "VeltrixEncoderOutput", "VeltrixEncoderPreTrainedModel"]
