"""Equal-size learned baselines of the evolver: predictors that replace it and nothing else.

Both take the evolver's inputs and give its outputs (`forward` for teacher forcing, `rollout` open loop, free or
conditional), so the evolver stage (`training.stages.VeltrixEvolverStage`) trains them with the same frozen encoder,
window losses, steps and optimiser. Both share the evolver's conditioning (`VeltrixConditionEmbedding` of the action
and the step size, applied by adaLN), its input checks and its velocity head `S_next = S + Δt · dS/dt` (zero at
init: an untrained baseline, like an untrained evolver, predicts no motion). They differ only in how a step sees the
past:

- `VeltrixTransformerPredictor` (architecture `"transformer"`, the shape of V-JEPA 2-AC's predictor): a causal
  Transformer over all state units, block-causal over time (every unit of step t attends to every unit of steps
  t - attention_window + 1 … t), `F.scaled_dot_product_attention`, rotary embeddings of the continuous time
  `timestamp / dt_reference` (so attention sees time differences, irregular ones included) and a learned embedding
  per unit. Rollouts keep a key/value cache of the last `attention_window - 1` steps.
- `VeltrixGRUPredictor` (architecture `"gru"`): the evolver's block with its selective SSM replaced by a GRU over
  time per unit, after the same unit mixing within a step (`VeltrixConvUnitMixer`).

`matched_baseline_config` sizes a baseline to the evolver's parameter count (within a tolerance, ±10 % by default)
by its MLP width.
"""

import abc
import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers import initialization as init

from ..configuration_veltrix import VeltrixEvolverConfig
from ..input_validation import CLOCK_DTYPE, checks_enabled, inputs_checked
from ..modeling_veltrix_evolver import (
    VeltrixConditionEmbedding,
    VeltrixEvolverModel,
    VeltrixEvolverOutput,
    VeltrixRolloutOutput,
    VeltrixStatePredictorMixin,
    check_rollout_state,
    regular_timestamps,
)
from ..modulation import modulate
from ..selective_ssm import VeltrixRMSNorm
from ..unit_mixing import VeltrixConvUnitMixer, VeltrixZeroInitLinear

ARCHITECTURES = ("transformer", "gru")
BASELINE_MODES = ("free", "conditional")


@strict
class VeltrixBaselineConfig(PreTrainedConfig):
    r"""
    Configuration of an equal-size baseline of the evolver ([`VeltrixTransformerPredictor`] or
    [`VeltrixGRUPredictor`]). The fields shared with [`VeltrixEvolverConfig`] mean the same.

    Args:
        architecture (`str`, *optional*, defaults to `"transformer"`): `"transformer"` or `"gru"`.
        unit_dim (`int`, *optional*, defaults to 32): width `D` of the state units.
        num_units_per_step (`int`, *optional*, defaults to 64): units `U` per step (a perfect square for the GRU's
            convolutional unit mixer).
        action_dim (`int`, *optional*, defaults to 2): width of the actions (0: none).
        hidden_size (`int`, *optional*, defaults to 64): width of the residual stream.
        intermediate_size (`int`, *optional*, defaults to 128): width of the SwiGLU MLP.
        num_hidden_layers (`int`, *optional*, defaults to 2): number of blocks.
        num_attention_heads (`int`, *optional*, defaults to 4): attention heads of the Transformer.
        attention_window (`int`, *optional*, defaults to 16): steps a Transformer query attends to (its own and
            the `attention_window - 1` before it).
        rope_theta (`float`, *optional*, defaults to 10000.0): base of the rotary time embedding.
        mixing_kernel_size (`int`, *optional*, defaults to 3): odd kernel of the GRU's unit mixer.
        condition_size (`int`, *optional*, defaults to 64): width of the per-step condition.
        dt_reference (`float`, *optional*, defaults to 0.1): the reference interval in seconds.
        rms_norm_eps (`float`, *optional*, defaults to 1e-6): epsilon of the RMS norms.
        initializer_range (`float`, *optional*, defaults to 0.02): std of the normal initialisation.
    """

    model_type = "veltrix_baseline"

    architecture: str = "transformer"
    unit_dim: int = 32
    num_units_per_step: int = 64
    action_dim: int = 2
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    attention_window: int = 16
    rope_theta: float = 10000.0
    mixing_kernel_size: int = 3
    condition_size: int = 64
    dt_reference: float = 0.1
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"`architecture` must be one of {ARCHITECTURES}, got {self.architecture!r}.")
        for name in (
            "unit_dim",
            "num_units_per_step",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "attention_window",
            "rope_theta",
            "mixing_kernel_size",
            "condition_size",
            "dt_reference",
            "rms_norm_eps",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be > 0, got {getattr(self, name)}.")
        if self.action_dim < 0:
            raise ValueError(f"`action_dim` must be >= 0, got {self.action_dim}.")
        head_dim, remainder = divmod(self.hidden_size, self.num_attention_heads)
        if remainder or head_dim % 2:
            raise ValueError(
                f"`hidden_size` must be an even multiple of `num_attention_heads` ({self.num_attention_heads}) for "
                f"the rotary embedding, got {self.hidden_size}."
            )
        if self.architecture == "gru":
            if self.unit_grid_size**2 != self.num_units_per_step:
                raise ValueError(
                    f"`num_units_per_step` must be a perfect square for the GRU's unit mixer, got "
                    f"{self.num_units_per_step}."
                )
            if self.mixing_kernel_size % 2 == 0:
                raise ValueError(f"`mixing_kernel_size` must be odd, got {self.mixing_kernel_size}.")
        super().__post_init__(**kwargs)

    @property
    def unit_grid_size(self) -> int:
        """Side of the unit grid of the GRU's convolutional unit mixer."""
        return round(self.num_units_per_step**0.5)


@dataclass
class VeltrixBaselineCache:
    """Recurrent state of a baseline's rollout, whose size does not depend on the horizon: per layer the keys and
    values (B, heads, (attention_window - 1)·U, head_dim) of the last attended steps (Transformer) or the hidden
    state (1, B·U, H) (GRU); the time (B,) of the last step fed and, for the Transformer, how many steps the keys
    hold."""

    layer_states: list[tuple[torch.Tensor, ...]]
    last_timestamps: torch.Tensor


def rotary_embedding(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotates channel pairs of x (B, heads, N, head_dim) by angles `positions (B, N) · theta^(-2i/head_dim)`:
    the product of a rotated query and key depends on their positions' difference only (Su et al. 2021)."""
    half = x.shape[-1] // 2
    frequencies = theta ** (-torch.arange(half, dtype=torch.float32, device=x.device) / half)
    angles = positions.float()[:, None, :, None] * frequencies  # (B, 1, N, half)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    first, second = x[..., :half], x[..., half:]
    return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)


def block_causal_mask(num_steps: int, units_per_step: int, window: int, device: torch.device) -> torch.Tensor:
    """Boolean (T·U, T·U) mask of tokens ordered (step, unit): True where the query's step t attends the key's step
    s, i.e. 0 <= t - s < window."""
    steps = torch.arange(num_steps, device=device).repeat_interleave(units_per_step)
    lag = steps[:, None] - steps[None, :]
    return (lag >= 0) & (lag < window)


class VeltrixBaselinePreTrainedModel(PreTrainedModel):
    config_class = VeltrixBaselineConfig
    base_model_prefix = "predictor"
    main_input_name = "units"

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, VeltrixZeroInitLinear):
            init.zeros_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.GRU):
            for name, parameter in module.named_parameters():
                (init.zeros_ if name.startswith("bias") else init.xavier_uniform_)(parameter)


class VeltrixTransformerBlock(nn.Module):
    """adaLN block: block-causal self-attention over all units of the attended steps -> SwiGLU MLP."""

    def __init__(self, config: VeltrixBaselineConfig):
        super().__init__()
        hidden = config.hidden_size
        self.num_heads, self.theta = config.num_attention_heads, config.rope_theta
        self.attention_norm = VeltrixRMSNorm(hidden, config.rms_norm_eps)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out_proj = nn.Linear(hidden, hidden)
        self.mlp_norm = VeltrixRMSNorm(hidden, config.rms_norm_eps)
        self.gate_up_proj = nn.Linear(hidden, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, hidden, bias=False)
        self.modulation = VeltrixZeroInitLinear(config.condition_size, 4 * hidden)

    def _queries_keys_values(
        self, h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """h (B, T, U, H), positions (B, T) -> rotated q, k and v, each (B, heads, T·U, head_dim)."""
        b, t, u, hidden = h.shape
        qkv = self.qkv(modulate(self.attention_norm(h), shift, scale)).reshape(b, t * u, 3, self.num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        token_positions = positions.repeat_interleave(u, dim=1)
        return rotary_embedding(q, token_positions, self.theta), rotary_embedding(k, token_positions, self.theta), v

    def _finish(
        self, h: torch.Tensor, attended: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor
    ) -> torch.Tensor:
        """Residual updates of the attention output (B, heads, T·U, head_dim) and the MLP on h (B, T, U, H)."""
        h = h + self.out_proj(attended.transpose(1, 2).reshape(h.shape))
        gate, up = self.gate_up_proj(modulate(self.mlp_norm(h), shift, scale)).chunk(2, dim=-1)
        return h + self.down_proj(F.silu(gate) * up)

    def forward(
        self, h: torch.Tensor, condition: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """h (B, T, U, H), condition (B, T, C), positions (B, T), mask (T·U, T·U) -> h and the keys and values."""
        shift_attention, scale_attention, shift_mlp, scale_mlp = self.modulation(condition)[..., None, :].chunk(4, -1)
        q, k, v = self._queries_keys_values(h, shift_attention, scale_attention, positions)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self._finish(h, attended, shift_mlp, scale_mlp), (k, v)

    def step(
        self, h: torch.Tensor, condition: torch.Tensor, positions: torch.Tensor, past: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One step h (B, U, H), condition (B, C), positions (B,), past keys and values -> h and the keys and
        values with this step's appended."""
        shift_attention, scale_attention, shift_mlp, scale_mlp = self.modulation(condition)[:, None, None].chunk(4, -1)
        q, k, v = self._queries_keys_values(h[:, None], shift_attention, scale_attention, positions[:, None])
        k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        attended = F.scaled_dot_product_attention(q, k, v)
        return self._finish(h[:, None], attended, shift_mlp, scale_mlp)[:, 0], (k, v)


class VeltrixGRUBlock(nn.Module):
    """adaLN block: unit mixing within a step -> a GRU over time per unit -> SwiGLU MLP (the evolver's block with its
    selective SSM replaced by a GRU)."""

    def __init__(self, config: VeltrixBaselineConfig):
        super().__init__()
        hidden = config.hidden_size
        self.mix_norm = VeltrixRMSNorm(hidden, config.rms_norm_eps)
        self.unit_mixer = VeltrixConvUnitMixer(config)
        self.gru_norm = VeltrixRMSNorm(hidden, config.rms_norm_eps)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.mlp_norm = VeltrixRMSNorm(hidden, config.rms_norm_eps)
        self.gate_up_proj = nn.Linear(hidden, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, hidden, bias=False)
        self.modulation = VeltrixZeroInitLinear(config.condition_size, 6 * hidden)

    def forward(
        self, h: torch.Tensor, condition: torch.Tensor, hidden_state: torch.Tensor | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor]]:
        """h (B, T, U, H), condition (B, T, C), the GRU's state (1, B·U, H) before the first step or None (zeros)
        -> h and the GRU's state after the last step."""
        b, t, u, hidden = h.shape
        shift_mix, scale_mix, shift_gru, scale_gru, shift_mlp, scale_mlp = self.modulation(condition)[
            ..., None, :
        ].chunk(6, dim=-1)
        mixed = self.unit_mixer(modulate(self.mix_norm(h), shift_mix, scale_mix).reshape(b * t, u, hidden))
        h = h + mixed.reshape(b, t, u, hidden)
        gru_in = modulate(self.gru_norm(h), shift_gru, scale_gru).transpose(1, 2).reshape(b * u, t, hidden)
        gru_out, hidden_state = self.gru(gru_in, hidden_state)
        h = h + gru_out.reshape(b, u, t, hidden).transpose(1, 2)
        gate, up = self.gate_up_proj(modulate(self.mlp_norm(h), shift_mlp, scale_mlp)).chunk(2, dim=-1)
        return h + self.down_proj(F.silu(gate) * up), (hidden_state,)


class VeltrixBaselinePredictor(VeltrixStatePredictorMixin, VeltrixBaselinePreTrainedModel, abc.ABC):
    """What both baselines share: the condition embedding, input projection, final norm and velocity head, teacher
    forcing (`forward`) and open-loop `rollout` from the cache of the context. Subclasses define `_layers_forward`
    over whole trajectories and `_layers_step` for one step."""

    def __init__(self, config: VeltrixBaselineConfig):
        super().__init__(config)
        self.condition_embedding = VeltrixConditionEmbedding(config)
        self.in_proj = nn.Linear(config.unit_dim, config.hidden_size)
        self.norm_f = VeltrixRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.velocity_head = VeltrixZeroInitLinear(config.hidden_size, config.unit_dim)

    @abc.abstractmethod
    def _layers_forward(
        self, hidden: torch.Tensor, condition: torch.Tensor, timestamps: torch.Tensor
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, ...]]]:
        """The blocks over a whole trajectory: hidden (B, T, U, H), condition (B, T, C), timestamps (B, T) -> hidden
        and each layer's rollout state after the last step."""

    @abc.abstractmethod
    def _layers_step(
        self, hidden: torch.Tensor, condition: torch.Tensor, timestamp: torch.Tensor, cache: VeltrixBaselineCache
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, ...]]]:
        """The blocks for one step: hidden (B, U, H), condition (B, C), timestamp (B,) -> hidden and the layers'
        states with this step added."""

    def forward(
        self,
        units: torch.Tensor,
        timestamps: torch.Tensor | None = None,
        actions: torch.Tensor | None = None,
        prediction_timestamps: torch.Tensor | None = None,
        use_cache: bool = False,
        return_dict: bool = True,
    ) -> VeltrixEvolverOutput | tuple:
        r"""Teacher forcing, as `VeltrixEvolverModel.forward`: for every step of units (B, T, U, D), the state at
        `prediction_timestamps` (defaults to the next timestamp; for the last step one more interval of the same
        length), from the steps up to it. `use_cache` also returns the rollout cache after the last step."""
        if checks_enabled():
            self._check_forward_inputs(units, timestamps, actions, prediction_timestamps)
        timestamps, step_sizes = self._teacher_forcing_clock(units, timestamps, prediction_timestamps)
        condition = self.condition_embedding(step_sizes, actions)
        hidden, layer_states = self._layers_forward(self.in_proj(units), condition, timestamps)
        predicted, velocities = self._velocity_to_units(units, hidden, step_sizes)
        cache = VeltrixBaselineCache(layer_states, timestamps[:, -1]) if use_cache else None
        if not return_dict:
            return tuple(v for v in (predicted, velocities, cache) if v is not None)
        return VeltrixEvolverOutput(predicted_units=predicted, velocities=velocities, cache=cache)

    def _step(
        self,
        units: torch.Tensor,
        cache: VeltrixBaselineCache,
        timestamp: torch.Tensor,
        prediction_timestamp: torch.Tensor,
        actions: torch.Tensor | None,
    ) -> tuple[torch.Tensor, VeltrixBaselineCache]:
        """Feeds the state (B, U, D) at `timestamp` (B,) and predicts the one at `prediction_timestamp`."""
        step_sizes = ((prediction_timestamp - timestamp) / self.config.dt_reference).to(units.dtype)
        condition = self.condition_embedding(step_sizes, actions)
        hidden, layer_states = self._layers_step(self.in_proj(units), condition, timestamp, cache)
        predicted, _ = self._velocity_to_units(units[:, None], hidden[:, None], step_sizes[:, None])
        return predicted[:, 0], VeltrixBaselineCache(layer_states, timestamp)

    def rollout(
        self,
        context: torch.Tensor,
        num_steps: int,
        actions: torch.Tensor | None = None,
        timestamps: torch.Tensor | None = None,
        mode: str | None = None,
    ) -> VeltrixRolloutOutput:
        r"""Open-loop rollout with `VeltrixEvolverModel.rollout`'s arguments and output, in modes `"free"` and
        `"conditional"` (a baseline has no counterfactual branch): context (B, T, U, D), actions
        (B, T + num_steps, A), timestamps (B, T + num_steps) -> units (B, num_steps, U, D)."""
        if mode is not None and mode not in BASELINE_MODES:
            raise ValueError(f"`mode` must be one of {BASELINE_MODES} for a baseline predictor, got {mode!r}.")
        if checks_enabled():
            self._check_rollout(context, num_steps, actions, timestamps, mode)
        b, t = context.shape[:2]
        output_dtype = context.dtype if timestamps is None else timestamps.dtype
        if timestamps is None:
            timestamps = regular_timestamps(b, t + num_steps, self.config.dt_reference, context, CLOCK_DTYPE)
        cache = self._context_cache(context, timestamps, actions)
        state, states = context[:, -1], []
        for k in range(num_steps):
            step_actions = None if actions is None else actions[:, t - 1 + k]
            state, cache = self._step(state, cache, timestamps[:, t - 1 + k], timestamps[:, t + k], step_actions)
            check_rollout_state(state, k)
            states.append(state)
        return VeltrixRolloutOutput(units=torch.stack(states, dim=1), timestamps=timestamps[:, t:].to(output_dtype))

    def _context_cache(
        self, context: torch.Tensor, timestamps: torch.Tensor, actions: torch.Tensor | None
    ) -> VeltrixBaselineCache:
        """The cache after all context steps but the last (which the first rollout step feeds)."""
        t = context.shape[1]
        if t == 1:
            return self._empty_cache(context, timestamps[:, 0] - self.config.dt_reference)
        with inputs_checked():
            return self(
                context[:, :-1],
                timestamps=timestamps[:, : t - 1],
                actions=None if actions is None else actions[:, : t - 1],
                prediction_timestamps=timestamps[:, 1:t],
                use_cache=True,
            ).cache

    @abc.abstractmethod
    def _empty_cache(self, context: torch.Tensor, last_timestamps: torch.Tensor) -> VeltrixBaselineCache:
        """The cache before any step (a context of one step)."""


class VeltrixTransformerPredictor(VeltrixBaselinePredictor):
    """The causal Transformer baseline (see the module docstring)."""

    _no_split_modules = ["VeltrixTransformerBlock"]

    def __init__(self, config: VeltrixBaselineConfig):
        super().__init__(config)
        self.unit_embedding = nn.Parameter(torch.zeros(config.num_units_per_step, config.hidden_size))
        self.layers = nn.ModuleList(VeltrixTransformerBlock(config) for _ in range(config.num_hidden_layers))
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if module is self:
            init.normal_(self.unit_embedding, std=self.config.initializer_range)

    def _positions(self, timestamps: torch.Tensor) -> torch.Tensor:
        """Rotary positions: time in reference intervals, from float64 clocks without loss."""
        return (timestamps.to(CLOCK_DTYPE) / self.config.dt_reference).float()

    def _layers_forward(
        self, hidden: torch.Tensor, condition: torch.Tensor, timestamps: torch.Tensor
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, ...]]]:
        t, u = hidden.shape[1:3]
        window = self.config.attention_window
        mask = block_causal_mask(t, u, window, hidden.device)
        hidden, positions, states = hidden + self.unit_embedding, self._positions(timestamps), []
        for layer in self.layers:
            hidden, (k, v) = layer(hidden, condition, positions, mask)
            kept = min(t, window - 1) * u  # a later step attends the last window - 1 steps
            states.append((k[:, :, k.shape[2] - kept :], v[:, :, v.shape[2] - kept :]))
        return hidden, states

    def _layers_step(
        self, hidden: torch.Tensor, condition: torch.Tensor, timestamp: torch.Tensor, cache: VeltrixBaselineCache
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, ...]]]:
        kept = (self.config.attention_window - 1) * self.config.num_units_per_step
        hidden, positions, states = hidden + self.unit_embedding, self._positions(timestamp), []
        for layer, past in zip(self.layers, cache.layer_states, strict=True):
            hidden, (k, v) = layer.step(hidden, condition, positions, past)
            states.append((k[:, :, max(0, k.shape[2] - kept) :], v[:, :, max(0, v.shape[2] - kept) :]))
        return hidden, states

    def _empty_cache(self, context: torch.Tensor, last_timestamps: torch.Tensor) -> VeltrixBaselineCache:
        b, heads = context.shape[0], self.config.num_attention_heads
        empty = context.new_zeros(b, heads, 0, self.config.hidden_size // heads)
        return VeltrixBaselineCache([(empty, empty) for _ in self.layers], last_timestamps)


class VeltrixGRUPredictor(VeltrixBaselinePredictor):
    """The GRU baseline (see the module docstring)."""

    _no_split_modules = ["VeltrixGRUBlock"]

    def __init__(self, config: VeltrixBaselineConfig):
        super().__init__(config)
        self.layers = nn.ModuleList(VeltrixGRUBlock(config) for _ in range(config.num_hidden_layers))
        self.post_init()

    def _layers_forward(
        self, hidden: torch.Tensor, condition: torch.Tensor, timestamps: torch.Tensor
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, ...]]]:
        states = []
        for layer in self.layers:
            hidden, state = layer(hidden, condition, None)
            states.append(state)
        return hidden, states

    def _layers_step(
        self, hidden: torch.Tensor, condition: torch.Tensor, timestamp: torch.Tensor, cache: VeltrixBaselineCache
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, ...]]]:
        hidden, states = hidden[:, None], []
        for layer, (state,) in zip(self.layers, cache.layer_states, strict=True):
            hidden, new_state = layer(hidden, condition[:, None], state)
            states.append(new_state)
        return hidden[:, 0], states

    def _empty_cache(self, context: torch.Tensor, last_timestamps: torch.Tensor) -> VeltrixBaselineCache:
        rows = context.shape[0] * self.config.num_units_per_step
        zeros = context.new_zeros(1, rows, self.config.hidden_size)
        return VeltrixBaselineCache([(zeros,) for _ in self.layers], last_timestamps)


BASELINE_CLASSES = {"transformer": VeltrixTransformerPredictor, "gru": VeltrixGRUPredictor}


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not) of `model`."""
    return sum(parameter.numel() for parameter in model.parameters())


def build_baseline(config: VeltrixBaselineConfig) -> VeltrixBaselinePredictor:
    """The baseline of `config.architecture`."""
    return BASELINE_CLASSES[config.architecture](config)


def matched_baseline_config(
    architecture: str, evolver_config: VeltrixEvolverConfig, tolerance: float = 0.1, **overrides
) -> VeltrixBaselineConfig:
    """A baseline config sharing the evolver's unit shape, actions, width, depth, heads, conditioning and reference
    interval, whose MLP width (`intermediate_size`, a multiple of 8) makes its parameter count the closest to the
    evolver's mean predictor's (without its stochastic head, which deterministic rollouts do not use). Raises a
    `ValueError` when even the closest is off by more than `tolerance` (relative)."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"`architecture` must be one of {ARCHITECTURES}, got {architecture!r}.")
    if not 0 < tolerance < 1:
        raise ValueError(f"`tolerance` must be in (0, 1), got {tolerance!r}.")
    mean_predictor_config = copy.deepcopy(evolver_config)
    mean_predictor_config.sampling_head_layers = 0  # the baselines match the mean predictor, not the sampler
    target = count_parameters(VeltrixEvolverModel(mean_predictor_config))
    shared = {
        name: getattr(evolver_config, name)
        for name in (
            "unit_dim",
            "num_units_per_step",
            "action_dim",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "mixing_kernel_size",
            "condition_size",
            "dt_reference",
            "rms_norm_eps",
            "initializer_range",
        )
    } | overrides

    def size(width: int) -> int:
        config = VeltrixBaselineConfig(architecture=architecture, **shared, intermediate_size=width)
        return count_parameters(build_baseline(config))

    # The count grows linearly with the MLP width: two sizes give the width that hits the target.
    low, high = size(8), size(16)
    width = max(8, 8 * round((8 + 8 * (target - low) / (high - low)) / 8))
    config = VeltrixBaselineConfig(architecture=architecture, **shared, intermediate_size=width)
    count = size(width)
    if abs(count - target) > tolerance * target:
        raise ValueError(
            f"No `intermediate_size` gives a {architecture} baseline within {tolerance:.0%} of the evolver's "
            f"{target} parameters (closest: {count} at intermediate_size={width})."
        )
    return config
