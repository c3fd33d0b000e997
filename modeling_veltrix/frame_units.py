"""Frame units of the encoder (MPE): patches mixed locally (ConvNeXt-style depthwise blocks), the resampler's
cross-attention (Perceiver / Flamingo queries over the patches) and the direct frame readouts `D_frames` from units
back to pixels, one per unit layout (`"grid"`: one unit per patch; `"resampler"`: learned queries).

The mixing blocks and the cross-attention are `GradientCheckpointingLayer`s: `model.activation_checkpointing_enable()`
(or its deprecated alias `gradient_checkpointing_enable()`) recomputes their activations in the backward pass instead
of storing them.
"""

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import get_2d_sincos_pos_embed
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from .configuration_veltrix import VeltrixEncoderConfig


def grid_positions(grid_size: int, hidden_size: int, like: torch.Tensor) -> torch.Tensor:
    """Fixed 2-D sine-cosine positions of a `grid_size` x `grid_size` patch grid (MAE, He et al. 2022), in row-major
    order: `(1, G · G, hidden_size)` on `like`'s device and dtype. The resampler layout adds them to its patch
    tokens and readout queries: its units are not tied to grid slots, so where a patch is must be in its features."""
    positions = get_2d_sincos_pos_embed(hidden_size, grid_size, base_size=grid_size, device=like.device)
    return positions.to(like.dtype)[None]


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


class VeltrixLocalMixingBlock(GradientCheckpointingLayer):
    """Residual depthwise convolution + LayerNorm + MLP over a (N, G, G, H) feature grid."""

    def __init__(self, hidden_size: int, kernel_size: int, mlp_ratio: float, eps: float):
        super().__init__()
        self.depthwise = nn.Conv2d(hidden_size, hidden_size, kernel_size, padding=kernel_size // 2, groups=hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        inner = int(hidden_size * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden_size, inner), nn.GELU(), nn.Linear(inner, hidden_size))

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        """(N, G, G, H) -> (N, G, G, H)."""
        mixed = self.depthwise(grid.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return grid + self.mlp(self.norm(mixed))


class VeltrixCrossAttention(GradientCheckpointingLayer):
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
        """Queries (N, Q, H) attend to context (N, K, H) -> (N, Q, H)."""
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
        self.unit_proj = nn.Linear(config.frame_unit_dim, config.hidden_size)
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
    """Resampled units (N, U, D) -> frames (N, C, H, W): positional patch queries, each starting from a learned linear
    mix of the units (`unit_unpooling`, the mirror of the encoder's `unit_pooling`), cross-attend to the units."""

    def __init__(self, config: VeltrixEncoderConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.num_channels = config.num_channels
        self.patch_queries = nn.Parameter(torch.zeros(1, config.grid_size**2, config.hidden_size))
        self.unit_unpooling = nn.Parameter(
            torch.zeros(config.grid_size**2, config.num_resampled_units, config.hidden_size)
        )
        self.unit_proj = nn.Linear(config.frame_unit_dim, config.hidden_size)
        self.attention = VeltrixCrossAttention(
            config.hidden_size, config.num_attention_heads, config.mlp_ratio, config.layer_norm_eps
        )
        self.to_pixels = nn.Linear(config.hidden_size, config.patch_size**2 * config.num_channels)

    def forward(self, units: torch.Tensor) -> torch.Tensor:
        grid = round(self.patch_queries.shape[1] ** 0.5)
        projected = self.unit_proj(units)  # (N, U, H)
        queries = self.patch_queries + grid_positions(grid, self.patch_queries.shape[-1], units)
        queries = queries + torch.einsum("puh,nuh->nph", self.unit_unpooling, projected)
        patches = self.attention(queries, projected)
        return unpatchify(self.to_pixels(patches), self.patch_size, self.num_channels)
