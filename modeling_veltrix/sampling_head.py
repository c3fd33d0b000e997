"""The evolver's stochastic head: the whitepaper's `S_{t+1} = Φ(S_t, C_t) + ε` as a sampler, not a mean.

Given the evolver's per-step output `h` (after its final norm) and the step's adaLN condition `c`, the head samples
the state's change per reference interval, `x = (S_next − S) / Δt_steps`, in units of a per-channel `change_scale`
fitted to the training data. It is a conditional rectified flow (Liu et al. 2022; flow matching, Lipman et al.
2023): a velocity field `v(x_τ, τ | h, c)` carries Gaussian noise at τ = 0 to a sample at τ = 1 in
`config.sampling_steps` Euler steps; it is trained on `x_τ = (1 − τ)·ε + τ·x` with target `x − ε`. Its blocks mix
units within the step (the evolver's unit mixer) so that the units of one sample agree with each other, and are
adaLN-conditioned on `c` plus an embedding of τ. The velocity projection starts at zero.
"""

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn

from .configuration_veltrix import VeltrixEvolverConfig
from .modulation import modulate
from .selective_ssm import VeltrixRMSNorm
from .unit_mixing import UNIT_MIXER_CLASSES, VeltrixZeroInitLinear


class VeltrixSamplingBlock(nn.Module):
    """adaLN-conditioned block of the head: unit mixing within the step, then a SwiGLU MLP."""

    def __init__(self, config: VeltrixEvolverConfig):
        super().__init__()
        hidden = config.hidden_size
        self.mix_norm = VeltrixRMSNorm(hidden, config.rms_norm_eps)
        self.unit_mixer = UNIT_MIXER_CLASSES[config.unit_mixer](config)
        self.mlp_norm = VeltrixRMSNorm(hidden, config.rms_norm_eps)
        self.gate_up_proj = nn.Linear(hidden, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, hidden, bias=False)
        self.modulation = VeltrixZeroInitLinear(config.condition_size, 4 * hidden)

    def forward(self, h: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """h (N, U, H), condition (N, C) -> (N, U, H)."""
        shift_mix, scale_mix, shift_mlp, scale_mlp = self.modulation(condition)[:, None].chunk(4, dim=-1)
        h = h + self.unit_mixer(modulate(self.mix_norm(h), shift_mix, scale_mix))
        gate, up = self.gate_up_proj(modulate(self.mlp_norm(h), shift_mlp, scale_mlp)).chunk(2, dim=-1)
        return h + self.down_proj(F.silu(gate) * up)


class VeltrixSamplingHead(nn.Module):
    """Samples the next state's change per reference interval (N, U, D) from noise, given the evolver's normed
    output (N, U, H) and the step's condition (N, C)."""

    def __init__(self, config: VeltrixEvolverConfig):
        super().__init__()
        self.num_steps = config.sampling_steps
        self.condition_size = config.condition_size
        self.noisy_proj = nn.Linear(config.unit_dim, config.hidden_size)
        self.hidden_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.time_mlp = nn.Sequential(
            nn.Linear(config.condition_size, config.condition_size),
            nn.SiLU(),
            nn.Linear(config.condition_size, config.condition_size),
        )
        self.blocks = nn.ModuleList(VeltrixSamplingBlock(config) for _ in range(config.sampling_head_layers))
        self.norm_out = VeltrixRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.velocity_proj = VeltrixZeroInitLinear(config.hidden_size, config.unit_dim)
        self.register_buffer("change_scale", torch.ones(config.unit_dim))

    def velocity(
        self, noisy: torch.Tensor, flow_time: torch.Tensor, hidden: torch.Tensor, condition: torch.Tensor
    ) -> torch.Tensor:
        """The flow's velocity (N, U, D) at `noisy` (N, U, D) and flow time τ (N,) in [0, 1]."""
        time_features = get_timestep_embedding(1000 * flow_time, self.condition_size, flip_sin_to_cos=True)
        block_condition = F.silu(condition + self.time_mlp(time_features.to(condition.dtype)))
        h = self.noisy_proj(noisy) + self.hidden_proj(hidden)
        for block in self.blocks:
            h = block(h, block_condition)
        return self.velocity_proj(self.norm_out(h))

    def sample(self, hidden: torch.Tensor, condition: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """hidden (N, U, H), condition (N, C), noise (N, U, D) standard normal -> the sampled change per reference
        interval (N, U, D), by `num_steps` Euler steps of the flow (a deterministic function of the noise)."""
        x = noise
        for index in range(self.num_steps):
            flow_time = torch.full(noise.shape[:1], index / self.num_steps, dtype=noise.dtype, device=noise.device)
            x = x + self.velocity(x, flow_time, hidden, condition) / self.num_steps
        return x * self.change_scale

    def loss(
        self,
        hidden: torch.Tensor,
        condition: torch.Tensor,
        target_change: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The flow-matching loss (a scalar) of the true change per reference interval `target_change` (N, U, D)
        given hidden (N, U, H) and condition (N, C); noise and flow times drawn from `generator`."""
        target = target_change / self.change_scale
        noise = torch.randn(target.shape, generator=generator, dtype=target.dtype, device=target.device)
        flow_time = torch.rand(target.shape[:1], generator=generator, dtype=target.dtype, device=target.device)
        tau = flow_time[:, None, None]
        noisy = (1 - tau) * noise + tau * target
        return F.mse_loss(self.velocity(noisy, flow_time, hidden, condition), target - noise)


__all__ = ["VeltrixSamplingBlock", "VeltrixSamplingHead"]
