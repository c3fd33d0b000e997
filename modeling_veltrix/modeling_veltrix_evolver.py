"""TRE: the Veltrix trajectory evolver, `S_{t+Δt} = S_t + Δt · Φ(S_t, C_t, Δt)`.

A stack of blocks over state units `(B, T, U, D)`: unit mixing within a step, a temporal selective state-space
model over time per unit (Mamba-2 / SSD, Dao & Gu 2024) whose step size scales with the elapsed time, and a
SwiGLU MLP; every block is conditioned per step on the action and the step size by adaLN (Perez et al. 2018,
Peebles & Xie 2023). A zero-initialised head predicts `dS/dt`, so an untrained evolver predicts "nothing moves".

Whole sequences run the chunked (or sequential) SSD scan, recurrent steps the one-step update: in PyTorch, or on
CUDA with the mamba-ssm / causal-conv1d kernels when installed (`VeltrixEvolverModel.kernel_path` says which).
Rollouts run one recurrent step at a time with a `VeltrixEvolverCache` whose size does not depend on the horizon,
in the whitepaper's three modes: free (a learned null condition), conditional (actions) and counterfactual (the
same context, a branch with edited actions or state, and the branches' divergence). `lyapunov_penalty` (a
stability regulariser) and `midpoint_rollout` (a time-consistency objective) are optional training terms.
"""

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

from .action_search import (
    ActionSearch,
    EvolverCandidates,
    VeltrixPlannerSettings,
    VeltrixPlanOutput,
    action_bounds_tensors,
    check_plan_inputs,
)
from .compiled_step import VeltrixCompiledStep, check_compile_kwargs, check_watchable
from .configuration_veltrix import VeltrixEvolverConfig
from .input_validation import (
    CLOCK_DTYPE,
    MAX_NUM_SAMPLES,
    MAX_ROLLOUT_STEPS,
    check_count,
    check_finite,
    check_generator,
    check_increasing,
    check_shape,
    check_step_sizes,
    checks_enabled,
    input_device,
    inputs_checked,
    same_device,
)
from .modulation import modulate_with_gain
from .sampling_head import VeltrixSamplingHead
from .selective_ssm import VeltrixRMSNorm, VeltrixSelectiveSSM, step_layout
from .unit_mixing import UNIT_MIXER_CLASSES, VeltrixZeroInitLinear
from .weights_check import VeltrixCheckedLoadingMixin


def regular_timestamps(
    batch_size: int, length: int, interval: float, like: torch.Tensor, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Timestamps `0, interval, 2·interval, ...` of shape (batch_size, length), computed in float64 and given in
    `dtype` (defaults to `like`'s) on `like`'s device."""
    steps = torch.arange(length, dtype=CLOCK_DTYPE, device=like.device) * interval
    return steps.to(like.dtype if dtype is None else dtype).expand(batch_size, length)


def check_rollout_state(state: torch.Tensor, step: int) -> None:
    """An output check of every rollout step (not an input check, so it also runs inside `inputs_checked()`): the
    new state must be finite, else the rollout stops at once naming the future step. A sum is finite when every entry
    is; one that is not is summed again in float64, which no float32 state overflows, so a state of large but finite
    entries passes. One reduction per step (the second only on the way to an error or past float32's range)."""
    if not math.isfinite(state.sum().item()) and not math.isfinite(state.sum(dtype=torch.float64).item()):
        raise ValueError(
            f"The evolved state of future step {step} is not finite (NaN or inf): the `timestamps`, `actions` or "
            "`interventions` of this rollout drive the evolver out of its float range."
        )


class VeltrixConditionEmbedding(nn.Module):
    """Per-step condition `c_t` from the action (or a learned null condition) and the step size to take."""

    def __init__(self, config: VeltrixEvolverConfig):
        super().__init__()
        self.action_proj = nn.Linear(config.action_dim, config.condition_size) if config.action_dim else None
        self.null_condition = nn.Parameter(torch.zeros(config.condition_size))
        self.step_proj = nn.Linear(2, config.condition_size)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(config.condition_size, config.condition_size))

    def forward(self, step_sizes: torch.Tensor, actions: torch.Tensor | None) -> torch.Tensor:
        """step_sizes (...,) in reference intervals, actions (..., A) or None -> (..., condition_size)."""
        step_features = torch.stack([step_sizes, torch.log(step_sizes)], dim=-1)
        action_term = self.null_condition if actions is None else self.action_proj(actions)
        return self.mlp(self.step_proj(step_features) + action_term)


class VeltrixEvolverBlock(GradientCheckpointingLayer):
    """adaLN-conditioned block: unit mixing within a step -> selective SSM over time -> SwiGLU MLP.

    With gradient checkpointing enabled (`model.gradient_checkpointing_enable()`), `forward` (the whole-sequence
    path) is recomputed in the backward pass when the model trains with gradients enabled; `step`, the recurrent path
    of rollouts, is never checkpointed."""

    def __init__(self, config: VeltrixEvolverConfig):
        super().__init__()
        hidden = config.hidden_size
        self.mix_norm = VeltrixRMSNorm(hidden, config.rms_norm_eps)
        self.unit_mixer = UNIT_MIXER_CLASSES[config.unit_mixer](config)
        self.ssm_norm = VeltrixRMSNorm(hidden, config.rms_norm_eps)
        self.ssm = VeltrixSelectiveSSM(config)
        self.mlp_norm = VeltrixRMSNorm(hidden, config.rms_norm_eps)
        self.gate_up_proj = nn.Linear(hidden, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, hidden, bias=False)
        self.modulation = VeltrixZeroInitLinear(config.condition_size, 6 * hidden)

    def _mix_units(self, h: torch.Tensor, shift: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        """h (B, T, U, H) -> residual update of the unit mixer."""
        b, t, u, hidden = h.shape
        mixed = self.unit_mixer(modulate_with_gain(self.mix_norm(h), shift, gain).reshape(b * t, u, hidden))
        return mixed.reshape(b, t, u, hidden)

    def _mlp(self, h: torch.Tensor, shift: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(modulate_with_gain(self.mlp_norm(h), shift, gain)).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)

    def _modulation(self, condition: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """condition (B, T, C) -> the (shift, gain = 1 + scale) pairs of the unit mixer, the SSM and the MLP, six
        (B, T, 1, H) tensors (or (B, C) -> six (B, 1, H)); the three gains are made by one addition."""
        return self.split_modulation(self.modulation(condition))

    @staticmethod
    def split_modulation(modulation: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The output of the `modulation` layer (..., 6H) -> `_modulation`'s six (..., 1, H) tensors."""
        shifts, scales = modulation.unflatten(-1, (3, 2, 1, -1)).unbind(-3)
        (shift_mix, shift_ssm, shift_mlp), (gain_mix, gain_ssm, gain_mlp) = shifts.unbind(-3), (1 + scales).unbind(-3)
        return shift_mix, gain_mix, shift_ssm, gain_ssm, shift_mlp, gain_mlp

    def forward(
        self, h: torch.Tensor, condition: torch.Tensor, gaps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """h (B, T, U, H), condition (B, T, C), gaps (B, T) -> h, conv state, SSM state (batched over B·U). Every
        tensor is passed positionally, as gradient checkpointing needs."""
        shift_mix, gain_mix, shift_ssm, gain_ssm, shift_mlp, gain_mlp = self._modulation(condition)
        h = h + self._mix_units(h, shift_mix, gain_mix)
        b, t, u, hidden = h.shape
        ssm_in = modulate_with_gain(self.ssm_norm(h), shift_ssm, gain_ssm).transpose(1, 2).reshape(b * u, t, hidden)
        unit_gaps = gaps[:, None, :].expand(b, u, t).reshape(b * u, t)
        ssm_out, conv_state, ssm_state = self.ssm(ssm_in, unit_gaps)
        h = h + ssm_out.reshape(b, u, t, hidden).transpose(1, 2)
        h = h + self._mlp(h, shift_mlp, gain_mlp)
        return h, conv_state, ssm_state

    def step(
        self,
        h: torch.Tensor,
        condition: torch.Tensor,
        gaps: torch.Tensor,
        conv_state: torch.Tensor,
        ssm_state: torch.Tensor,
        skip_mlp: bool = False,
        in_place: bool = False,
        modulation: tuple[torch.Tensor, ...] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step: h (B, U, H), condition (B, C), gaps (B,); states batched over B·U. `skip_mlp` leaves out the
        MLP, which only the output needs (the states are advanced without it); `in_place` updates the given states
        in place (`VeltrixSelectiveSSM.step`); `modulation`, `_modulation(condition)` made by the caller (then
        `condition` is not read)."""
        # `forward`'s operations without its time axis (the same numbers, fewer reshapes): (B, 1, H) modulations
        # broadcast over the units.
        if modulation is None:
            modulation = self._modulation(condition)
        shift_mix, gain_mix, shift_ssm, gain_ssm, shift_mlp, gain_mlp = modulation
        h = h + self.unit_mixer(modulate_with_gain(self.mix_norm(h), shift_mix, gain_mix))
        b, u, hidden = h.shape
        ssm_in = modulate_with_gain(self.ssm_norm(h), shift_ssm, gain_ssm).view(b * u, hidden)
        unit_gaps = gaps[:, None].expand(b, u).reshape(b * u)
        ssm_out, conv_state, ssm_state = self.ssm.step(ssm_in, unit_gaps, conv_state, ssm_state, in_place)
        h = h + ssm_out.view(b, u, hidden)
        if not skip_mlp:
            h = h + self._mlp(h, shift_mlp, gain_mlp)
        return h, conv_state, ssm_state


EVOLUTION_MODES = ("free", "conditional", "counterfactual")


@dataclass
class VeltrixEvolverCache:
    """Recurrent state of a rollout: per layer a conv state (B·U, conv_dim, conv_kernel - 1) and an SSM state
    (B·U, heads, head_dim, state_size), plus the time (B,) of the last observed step, and with an Engram memory the
    codes of the last steps (B, max_order), newest last. Its size does not depend on how many steps have been taken;
    steps return a new cache and leave the old one valid (branches can share it)."""

    conv_states: list[torch.Tensor]
    ssm_states: list[torch.Tensor]
    last_timestamps: torch.Tensor
    code_history: torch.Tensor | None = None

    def num_bytes(self) -> int:
        """Memory held by the cache's tensors, in bytes."""
        return sum(t.numel() * t.element_size() for t in self._state_tensors())

    def select(self, rows: torch.Tensor, num_units: int) -> "VeltrixEvolverCache":
        """The cache of the trajectories `rows` (n,) only (states are batched over B·U, `num_units` per
        trajectory)."""
        unit_rows = (rows[:, None] * num_units + torch.arange(num_units, device=rows.device)).flatten()
        history = None if self.code_history is None else self.code_history[rows]
        return VeltrixEvolverCache(
            [state[unit_rows] for state in self.conv_states],
            [state[unit_rows] for state in self.ssm_states],
            self.last_timestamps[rows],
            history,
        )

    def in_step_layout(self) -> "VeltrixEvolverCache":
        """A copy whose states lie in the memory orders the PyTorch step updates in place fastest (`step_layout`):
        the start of candidates that in-place steps roll forward (`action_search.EvolverCandidates`)."""
        conv_states, ssm_states = zip(*map(step_layout, self.conv_states, self.ssm_states), strict=True)
        history = None if self.code_history is None else self.code_history.clone()
        return VeltrixEvolverCache(list(conv_states), list(ssm_states), self.last_timestamps.clone(), history)

    def copy_(self, source: "VeltrixEvolverCache") -> "VeltrixEvolverCache":
        """Overwrites this cache's tensors in place with those of `source`, a cache of the same shapes (each tensor
        keeps its memory order); returns this cache."""
        for target, tensor in zip(self._state_tensors(), source._state_tensors(), strict=True):
            target.copy_(tensor)
        return self

    def _state_tensors(self) -> list[torch.Tensor]:
        history = [] if self.code_history is None else [self.code_history]
        return [*self.conv_states, *self.ssm_states, self.last_timestamps, *history]

    @staticmethod
    def merge(parts: list[tuple[torch.Tensor, "VeltrixEvolverCache"]], num_units: int) -> "VeltrixEvolverCache":
        """The cache of a batch whose trajectories `rows` (n,) of each part hold that part's cache (the inverse of
        `select` over a partition of the batch)."""
        rows = torch.cat([part_rows for part_rows, _ in parts])
        order = torch.argsort(rows)
        unit_order = (order[:, None] * num_units + torch.arange(num_units, device=rows.device)).flatten()
        caches = [cache for _, cache in parts]

        def joined(tensors: list[torch.Tensor], per_unit: bool) -> torch.Tensor:
            return torch.cat(tensors)[unit_order if per_unit else order]

        layers = range(len(caches[0].conv_states))
        history = None if caches[0].code_history is None else joined([c.code_history for c in caches], False)
        return VeltrixEvolverCache(
            [joined([c.conv_states[i] for c in caches], True) for i in layers],
            [joined([c.ssm_states[i] for c in caches], True) for i in layers],
            joined([c.last_timestamps for c in caches], False),
            history,
        )


@dataclass(frozen=True)
class VeltrixIntervention:
    """An edit of the counterfactual branch of `VeltrixEvolverModel.rollout(..., mode="counterfactual")`.

    Args:
        step (`int`):
            The first future step (0 = the first predicted state) the edit can change; before it the counterfactual
            branch is the factual one.
        actions (`torch.Tensor` of shape `(B, num_steps - step, A)`, *optional*):
            Replacement actions: entry `i` drives the transition that produces future step `step + i` (trajectory
            index `T + step + i - 1` of `rollout`'s `actions`). With a free factual branch, the counterfactual one
            is conditioned from `step` on.
        state_delta (`torch.Tensor` of shape `(B, U, D)`, *optional*):
            Added to the predicted state of future step `step` (an impulse on the state itself); later steps evolve
            from the edited state.
    """

    step: int
    actions: torch.Tensor | None = None
    state_delta: torch.Tensor | None = None


def _intervention_list(
    interventions: VeltrixIntervention | list[VeltrixIntervention] | None,
) -> list[VeltrixIntervention]:
    """`rollout`'s interventions (None, one, or a sequence) as a list."""
    if interventions is None:
        return []
    return [interventions] if isinstance(interventions, VeltrixIntervention) else list(interventions)


def _resolve_mode(mode: str | None, actions: torch.Tensor | None, interventions: object) -> str:
    """`rollout`'s mode: the given one, else "counterfactual" with interventions, "conditional" with actions, else
    "free"."""
    if mode is not None:
        return mode
    return "counterfactual" if interventions is not None else "conditional" if actions is not None else "free"


def _actions_at(actions: torch.Tensor | None, context_length: int) -> Callable[[int], torch.Tensor | None]:
    """`actions_at(k)`: the actions (B, A) of a rollout's trajectory actions (B, T + num_steps, A) that drive future
    step k (trajectory index T - 1 + k), or None without actions."""
    return lambda k: None if actions is None else actions[:, context_length - 1 + k]


def _noise_source(
    like: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None
) -> Callable[[int], torch.Tensor]:
    """`noise_at(k)`: standard normal noise shaped, typed and placed like `like` (B·K, U, D) for future step k, the
    same at every call with the same k (so a counterfactual branch draws its factual branch's noise): drawn from a
    generator seeded with k plus one base seed taken from `generator` (or the global RNG), so nothing is held per
    step. With a list of B generators (one per context), each context's K rows `b·K … b·K + K - 1` get their own base
    seed from generator b, and their noise is what the context would draw alone with generator b."""
    generators = generator if isinstance(generator, list) else [generator]
    base_seeds = [
        int(torch.randint(0, 2**62, (), generator=g, device="cpu" if g is None else g.device)) for g in generators
    ]
    rows = like.shape[0] // len(base_seeds)

    def noise_at(k: int) -> torch.Tensor:
        return torch.cat(
            [
                torch.randn(
                    (rows, *like.shape[1:]),
                    generator=torch.Generator(device=like.device).manual_seed(seed + k),
                    dtype=like.dtype,
                    device=like.device,
                )
                for seed in base_seeds
            ]
        )

    return noise_at


def _check_mode(mode: str | None, actions: torch.Tensor | None, interventions: object) -> None:
    """Checks `rollout`'s mode (or its default) against its actions and interventions."""
    mode = _resolve_mode(mode, actions, interventions)
    if mode not in EVOLUTION_MODES:
        raise ValueError(f"`mode` must be one of {EVOLUTION_MODES}, got {mode!r}.")
    if mode == "free" and actions is not None:
        raise ValueError("`actions` must be None for mode='free' (the null condition drives it).")
    if mode == "conditional" and actions is None:
        raise ValueError("`actions` of shape (B, T + num_steps, A) are required for mode='conditional', got None.")
    if mode == "counterfactual" and interventions is None:
        raise ValueError("`interventions` are required for mode='counterfactual'.")
    if mode != "counterfactual" and interventions is not None:
        raise ValueError(f"`interventions` are only used by mode='counterfactual', got mode={mode!r}.")


def _check_flag(name: str, value: object, optional: bool = False) -> None:
    """Requires a switch of `forward` to be a bool, or also None when `optional` (its default then comes from the
    config)."""
    if not isinstance(value, bool) and not (optional and value is None):
        expected = "a bool or None (the config's default)" if optional else "a bool"
        raise ValueError(f"`{name}` must be {expected}, got {value!r}.")


class VeltrixEvolverPreTrainedModel(VeltrixCheckedLoadingMixin, PreTrainedModel):
    config_class = VeltrixEvolverConfig
    base_model_prefix = "evolver"
    main_input_name = "units"
    _no_split_modules = ["VeltrixEvolverBlock"]
    # The blocks are `GradientCheckpointingLayer`s.
    supports_gradient_checkpointing = True
    # No token embeddings: as transformers' vision models name their patch embedding, the input embedding is the
    # projection of the units `(B, T, U, D)` to the hidden width (`get_input_embeddings`, `enable_input_require_grads`).
    _input_embed_layer = "in_proj"

    def _init_weights(self, module: nn.Module) -> None:
        """Initialises every parameter and buffer of `module` (also after a build on the meta device, where the
        constructors' values are lost): the library's defaults (normal linear and convolution weights, zero biases,
        unit norms), then the evolver's own. Only `transformers.initialization` functions are used, so tensors loaded
        by `from_pretrained` (flagged `_is_hf_initialized`) are left as loaded."""
        super()._init_weights(module)
        if isinstance(module, VeltrixSelectiveSSM):
            # S4D-real decay rates, log-uniform step sizes, unit skip (random but for D: see `reset_ssm_parameters`).
            module.reset_ssm_parameters()
        elif isinstance(module, VeltrixZeroInitLinear):
            # By design zero, weight and bias: identity adaLN modulation (scale = shift = 0), dS/dt = 0 and a zero
            # flow velocity, so an untrained evolver returns its input state unchanged.
            init.zeros_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, VeltrixConditionEmbedding):
            # The learned null condition of free evolution starts at zero (no action).
            init.zeros_(module.null_condition)
        elif isinstance(module, VeltrixSamplingHead):
            # Unit change scale until training sets it from the data (`fit_change_scale`); a persistent buffer.
            init.ones_(module.change_scale)


@dataclass
class VeltrixEvolverOutput(ModelOutput):
    """
    The output of `VeltrixEvolverModel.forward`; with `return_dict=False`, `to_tuple()` of it: the fields below in
    this order, those that are None left out (so the loss comes first when there is one).

    Args:
        sampling_loss (`torch.Tensor`, *optional*):
            The stochastic head's flow-matching loss (a scalar) of `sampling_targets`, when they are given.
        predicted_units (`torch.Tensor` of shape `(B, T, U, D)`):
            For every input step t, the predicted state at `prediction_timestamps[:, t]`.
        velocities (`torch.Tensor` of shape `(B, T, U, D)`):
            The predicted time derivative `dS/dt` (per second) at every step.
        cache (`VeltrixEvolverCache`, *optional*):
            The recurrent state after the last step, returned when `use_cache=True`.
        hidden_states (`tuple(torch.Tensor)`, *optional*):
            With `output_hidden_states=True`, `num_hidden_layers + 1` tensors of shape `(B, T, U, hidden_size)`: the
            input projection of the units, then the output of every block (before the final norm).
    """

    sampling_loss: torch.Tensor | None = None
    predicted_units: torch.Tensor | None = None
    velocities: torch.Tensor | None = None
    cache: VeltrixEvolverCache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass
class VeltrixRolloutOutput(ModelOutput):
    """
    Args:
        units (`torch.Tensor` of shape `(B, num_steps, U, D)`): the evolved future states.
        timestamps (`torch.Tensor` of shape `(B, num_steps)`): their times in seconds.
        memory_hits (`torch.Tensor` of shape `(B, num_steps)`, *optional*): with an Engram memory, whether its table
            remembered the step's n-gram (bool).
        memory_gates (`torch.Tensor` of shape `(B, num_steps)`, *optional*): the fusion weight α, averaged over
            units (0 on misses; 1 on bypassed steps).
        memory_bypassed (`torch.Tensor` of shape `(B, num_steps)`, *optional*): steps that took the remembered state
            and skipped the evolver's prediction (bool).
        sample_spread (`torch.Tensor` of shape `(B, num_steps)`, *optional*): with `num_samples > 1`, per context
            and step the standard deviation across its samples, averaged over units and channels (an uncertainty).

    With `num_samples = K`, the batch axis of `units`, `timestamps` and the memory's outputs holds `B·K` futures,
    the K samples of context b at rows `b·K … b·K + K − 1` (as `num_return_sequences` in transformers' `generate`).
    """

    units: torch.Tensor | None = None
    timestamps: torch.Tensor | None = None
    memory_hits: torch.Tensor | None = None
    memory_gates: torch.Tensor | None = None
    memory_bypassed: torch.Tensor | None = None
    sample_spread: torch.Tensor | None = None


@dataclass
class VeltrixCounterfactualRolloutOutput(VeltrixRolloutOutput):
    """
    Args:
        units (`torch.Tensor` of shape `(B, num_steps, U, D)`): the factual branch (the given actions).
        timestamps (`torch.Tensor` of shape `(B, num_steps)`): the times of both branches, in seconds.
        counterfactual_units (`torch.Tensor` of shape `(B, num_steps, U, D)`): the branch with the interventions.
        divergence (`torch.Tensor` of shape `(B, num_steps)`): per step, the root-mean-square difference of the two
            branches over units and channels; zero before the first intervened step.
    """

    counterfactual_units: torch.Tensor | None = None
    divergence: torch.Tensor | None = None


class VeltrixStatePredictorMixin:
    """What every predictor of the state shares, the evolver and the equal-size baselines that the evaluation tooling
    compares it with alike: the checks of trajectories of units, timestamps, actions and
    rollout arguments against `config` (`num_units_per_step`, `unit_dim`, `action_dim`, `dt_reference`), and the
    velocity parametrisation `S_next = S + Δt · dS/dt` of a zero-initialised velocity_head` after `norm_f`."""

    def _check_units(self, name: str, units: torch.Tensor, steps: bool) -> None:
        expected = (
            ("B", "T", self.config.num_units_per_step, self.config.unit_dim)
            if steps
            else ("B", self.config.num_units_per_step, self.config.unit_dim)
        )
        check_shape(name, units, expected, dtype=self.dtype, device=input_device(self))
        check_finite(name, units)

    def _check_timestamps(self, name: str, timestamps: torch.Tensor, shape: tuple[int, ...], increasing: bool) -> None:
        """Requires timestamps of `shape` in the model's dtype or float64 (the clock's), finite and, when
        `increasing`, strictly increasing along the last axis by steps that `check_step_sizes` accepts."""
        check_shape(name, timestamps, shape, dtype=(self.dtype, CLOCK_DTYPE), device=input_device(self))
        check_finite(name, timestamps)
        if increasing:
            check_increasing(name, timestamps)
            check_step_sizes(name, timestamps.diff(dim=-1), self.config.dt_reference, self.dtype)

    def _check_actions(self, name: str, actions: torch.Tensor | None, lead: tuple[int, ...]) -> None:
        """Requires `actions` (*lead, config.action_dim), finite, or None."""
        if actions is None:
            return
        if not self.config.action_dim:
            raise ValueError(f"`{name}` was given but this evolver takes no actions (config.action_dim=0).")
        check_shape(name, actions, (*lead, self.config.action_dim), dtype=self.dtype, device=input_device(self))
        check_finite(name, actions)

    def _velocity_to_units(
        self, units: torch.Tensor, hidden: torch.Tensor, step_sizes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """S_next = S + Δt · dS/dt; the head's output is the change per reference interval."""
        change_per_interval = self.velocity_head(self.norm_f(hidden))
        predicted = units + step_sizes[..., None, None] * change_per_interval
        return predicted, change_per_interval / self.config.dt_reference

    def _teacher_forcing_clock(
        self, units: torch.Tensor, timestamps: torch.Tensor | None, prediction_timestamps: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward`'s timestamps (B, T) (default: a regular grid of `dt_reference`) and step sizes (B, T) in
        reference intervals, in the units' dtype, to `prediction_timestamps` (default: the next timestamp, and for the
        last step one more interval of the same length, or of `dt_reference` for a single step)."""
        b, t = units.shape[:2]
        if timestamps is None:
            timestamps = regular_timestamps(b, t, self.config.dt_reference, units)
        if prediction_timestamps is None:
            last_gap = (
                timestamps[:, -1:] - timestamps[:, -2:-1]
                if t > 1
                else torch.full_like(timestamps[:, -1:], self.config.dt_reference)
            )
            prediction_timestamps = torch.cat([timestamps[:, 1:], timestamps[:, -1:] + last_gap], dim=1)
        return timestamps, ((prediction_timestamps - timestamps) / self.config.dt_reference).to(units.dtype)

    def _check_forward_inputs(
        self,
        units: torch.Tensor,
        timestamps: torch.Tensor | None,
        actions: torch.Tensor | None,
        prediction_timestamps: torch.Tensor | None,
    ) -> None:
        """Checks `forward`'s inputs (the default timestamps need no check)."""
        self._check_units("units", units, steps=True)
        b, t = units.shape[:2]
        if timestamps is not None:
            self._check_timestamps("timestamps", timestamps, (b, t), increasing=True)
        self._check_actions("actions", actions, (b, t))
        if prediction_timestamps is None:
            return
        self._check_timestamps("prediction_timestamps", prediction_timestamps, (b, t), increasing=False)
        if timestamps is None:
            timestamps = regular_timestamps(b, t, self.config.dt_reference, units, CLOCK_DTYPE)
        if not bool((prediction_timestamps > timestamps).all()):
            raise ValueError("`prediction_timestamps` must be later than `timestamps` at every step.")
        ahead = prediction_timestamps.to(CLOCK_DTYPE) - timestamps.to(CLOCK_DTYPE)
        check_step_sizes("prediction_timestamps", ahead, self.config.dt_reference, self.dtype)

    def check_rollout_inputs(
        self,
        batch_size: int,
        context_length: int,
        num_steps: int,
        actions: torch.Tensor | None = None,
        timestamps: torch.Tensor | None = None,
        mode: str | None = None,
        interventions: VeltrixIntervention | list[VeltrixIntervention] | None = None,
    ) -> None:
        """Checks `rollout`'s arguments but the context, given its batch size B and length T: `num_steps` (an int
        >= 1), `actions` (B, T + num_steps, A) and `timestamps` (B, T + num_steps) (finite; timestamps strictly
        increasing), `mode` against them and `interventions`, and the interventions. Needs no context, so a caller
        can check before encoding one, then call `rollout` inside `input_validation.inputs_checked()`."""
        check_count("num_steps", num_steps, MAX_ROLLOUT_STEPS)
        length = context_length + num_steps
        if timestamps is not None:
            self._check_timestamps("timestamps", timestamps, (batch_size, length), increasing=True)
        self._check_actions("actions", actions, (batch_size, length))
        _check_mode(mode, actions, interventions)
        if interventions is not None:
            self._check_interventions(interventions, batch_size, num_steps)

    def _check_interventions(self, interventions: object, batch_size: int, num_steps: int) -> None:
        """Checks `rollout`'s interventions (one or a non-empty sequence)."""
        if not isinstance(interventions, (VeltrixIntervention, list, tuple)) or not interventions:
            raise ValueError(
                f"`interventions` must be a VeltrixIntervention or a non-empty list of them, got {interventions!r}."
            )
        unit_shape = (batch_size, self.config.num_units_per_step, self.config.unit_dim)
        for index, intervention in enumerate(_intervention_list(interventions)):
            name = f"interventions[{index}]"
            if not isinstance(intervention, VeltrixIntervention):
                raise ValueError(f"`{name}` must be a VeltrixIntervention, got {type(intervention).__name__}.")
            step = intervention.step
            if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < num_steps:
                raise ValueError(f"`{name}.step` must be an int in [0, num_steps={num_steps}), got {step!r}.")
            if intervention.actions is None and intervention.state_delta is None:
                raise ValueError(f"`{name}` must set `actions`, `state_delta` or both.")
            self._check_actions(f"{name}.actions", intervention.actions, (batch_size, num_steps - step))
            if intervention.state_delta is not None:
                check_shape(
                    f"{name}.state_delta",
                    intervention.state_delta,
                    unit_shape,
                    dtype=self.dtype,
                    device=input_device(self),
                )
                check_finite(f"{name}.state_delta", intervention.state_delta)

    def _check_rollout(
        self,
        context: torch.Tensor,
        num_steps: int,
        actions: torch.Tensor | None,
        timestamps: torch.Tensor | None,
        mode: str | None = None,
        interventions: VeltrixIntervention | list[VeltrixIntervention] | None = None,
    ) -> None:
        """Checks a rollout's context (B, T, U, D), then the rest with `check_rollout_inputs`."""
        self._check_units("context", context, steps=True)
        b, t = context.shape[:2]
        self.check_rollout_inputs(b, t, num_steps, actions, timestamps, mode, interventions)


class VeltrixEvolverModel(VeltrixStatePredictorMixin, VeltrixEvolverPreTrainedModel):
    """The Veltrix evolver. `forward` predicts, in parallel over a trajectory of units, the state at the next
    timestamp from every step (teacher forcing); `step`, `rollout` and `rollout_stream` evolve a state recurrently,
    with a cache whose size does not depend on the horizon.

    Each public entry point checks its inputs, except inside `input_validation.inputs_checked()`, where a caller
    that has checked them (the pipeline, with `check_rollout_inputs`) runs it; internal calls never check again."""

    def __init__(self, config: VeltrixEvolverConfig):
        super().__init__(config)
        self.condition_embedding = VeltrixConditionEmbedding(config)
        self.in_proj = nn.Linear(config.unit_dim, config.hidden_size)
        self.layers = nn.ModuleList(VeltrixEvolverBlock(config) for _ in range(config.num_hidden_layers))
        self.norm_f = VeltrixRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.velocity_head = VeltrixZeroInitLinear(config.hidden_size, config.unit_dim)
        self.sampling_head = VeltrixSamplingHead(config) if config.sampling_head_layers else None
        self._compiled_step: VeltrixCompiledStep | None = None
        self.post_init()

    def compile_step(self, enabled: bool = True, **compile_kwargs) -> None:
        """Runs the recurrent steps that update their cache in place through `torch.compile` (`enabled=False`: eagerly
        again): the steps of `rollout` (free or conditional), `rollout_stream` and `plan` after the first, without
        gradients, a memory or sampling, on a device where the PyTorch step runs (CPU, or CUDA without the mamba-ssm
        kernels). Inductor compiles the step once per batch shape at its first call (tens of seconds on CPU), the
        weights frozen as constants; a later change of the weights is detected and compiles again.

        On 2 CPU cores a batch-1 step of `veltrix-tiny` runs about 3× faster compiled (`scripts/benchmark_evolver.py`
        measures it), and a plan of 300 candidates × 25 steps × 3 iterations of the reach task about 1.4× faster.

        Args:
            enabled (`bool`, defaults to `True`): compile, or go back to the eager step.
            **compile_kwargs: `torch.compile` arguments replacing the defaults (`compiled_step.DEFAULT_COMPILE_KWARGS`:
                static shapes, no guards on the modules); the step compiles under Inductor's `freezing` and
                `cpp_wrapper` (`compiled_step.INDUCTOR_CONFIG`). The model's attributes other than its weights are
                taken as fixed once compiled.
        """
        if not isinstance(enabled, bool):
            raise ValueError(f"`enabled` must be a bool, got {enabled!r}.")
        if not enabled:
            if compile_kwargs:
                raise ValueError(f"`compile_kwargs` apply only with `enabled=True`, got {sorted(compile_kwargs)}.")
            self._compiled_step = None
            return
        compile_kwargs = check_compile_kwargs(compile_kwargs)
        check_watchable(self)
        self._compiled_step = VeltrixCompiledStep(_in_place_step, compile_kwargs)

    @property
    def compiled_step_calls(self) -> int:
        """How many steps ran compiled since `compile_step()` (0 when the step is eager)."""
        return 0 if self._compiled_step is None else self._compiled_step.num_compiled_calls

    @property
    def can_sample(self) -> bool:
        """Whether the evolver has a stochastic head (`config.sampling_head_layers > 0`), which `sample=True`
        needs."""
        return self.sampling_head is not None

    @property
    def kernel_path(self) -> str:
        """`"mamba_ssm"` when whole sequences run the mamba-ssm / causal-conv1d CUDA kernels (model on CUDA, packages
        installed, `config.use_mamba_kernels`), else `"torch"` (logged once when CUDA lacks the packages)."""
        return "mamba_ssm" if self.layers[0].ssm.uses_cuda_kernels(self.device) else "torch"

    def forward(
        self,
        units: torch.Tensor,
        timestamps: torch.Tensor | None = None,
        actions: torch.Tensor | None = None,
        prediction_timestamps: torch.Tensor | None = None,
        use_cache: bool = False,
        return_dict: bool | None = None,
        engram: nn.Module | None = None,
        sampling_targets: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        output_hidden_states: bool | None = None,
    ) -> VeltrixEvolverOutput | tuple:
        r"""
        Args:
            units (`torch.Tensor` of shape `(B, T, U, D)`): observed (or encoded) states.
            timestamps (`torch.Tensor` of shape `(B, T)`, *optional*): strictly increasing times in seconds;
                defaults to a regular grid of `config.dt_reference`.
            actions (`torch.Tensor` of shape `(B, T, A)`, *optional*): the action applied at each step; `None`
                evolves freely under the learned null condition.
            prediction_timestamps (`torch.Tensor` of shape `(B, T)`, *optional*): the time each step predicts;
                defaults to the next timestamp, and for the last step one more interval of the same length.
            use_cache (`bool`): also return the recurrent state after the last step, to continue with `step`.
            return_dict (`bool`, *optional*): return a [`VeltrixEvolverOutput`] (else its `to_tuple()`); defaults
                to `config.return_dict`.
            engram (`VeltrixEngramModel`, *optional*): an Engram memory of this evolver; its parametric memory (if
                any) is added in front of its injection layers, and the cache keeps the codes of the last steps.
            sampling_targets (`torch.Tensor` of shape `(B, T, U, D)`, *optional*): the true states at
                `prediction_timestamps`; the output then carries the stochastic head's flow-matching loss of them
                (`sampling_loss`, needs `config.sampling_head_layers > 0`).
            generator (`torch.Generator`, *optional*): the source of that loss's noise and flow times.
            output_hidden_states (`bool`, *optional*): also return the hidden states (B, T, U, hidden_size) of the
                input projection and of every block; defaults to `config.output_hidden_states`.

        Returns:
            [`VeltrixEvolverOutput`], or its `to_tuple()` with `return_dict=False`.
        """
        if checks_enabled():
            self._check_forward_inputs(units, timestamps, actions, prediction_timestamps)
            self._check_engram(engram)
            self._check_sampling_targets(units, sampling_targets, generator)
            _check_flag("use_cache", use_cache)
            _check_flag("return_dict", return_dict, optional=True)
            _check_flag("output_hidden_states", output_hidden_states, optional=True)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        timestamps, step_sizes = self._teacher_forcing_clock(units, timestamps, prediction_timestamps)
        reference = self.config.dt_reference
        # Times may be float64 (the clock's dtype): differences are taken in it, step sizes cast to the model's.
        gaps = torch.cat([torch.ones_like(timestamps[:, :1]), timestamps.diff(dim=1) / reference], dim=1)
        gaps = gaps.to(units.dtype)
        condition = self.condition_embedding(step_sizes, actions)
        histories = None if engram is None else engram.histories(engram.codes(units))
        memory = self._memory(engram, histories)
        hidden = self.in_proj(units)
        all_hidden = [hidden] if output_hidden_states else None
        conv_states, ssm_states = [], []
        for index, layer in enumerate(self.layers):
            if memory is not None and engram.injects_into(index):
                hidden = hidden + engram.inject(index, hidden, memory)
            hidden, conv_state, ssm_state = layer(hidden, condition, gaps)
            conv_states.append(conv_state)
            ssm_states.append(ssm_state)
            if output_hidden_states:
                all_hidden.append(hidden)
        predicted, velocities = self._velocity_to_units(units, hidden, step_sizes)
        sampling_loss = None
        if sampling_targets is not None:
            target_change = (sampling_targets - units) / step_sizes[..., None, None]
            sampling_loss = self.sampling_head.loss(
                self.norm_f(hidden).flatten(0, 1), condition.flatten(0, 1), target_change.flatten(0, 1), generator
            )
        cache = None
        if use_cache:
            history = None if histories is None else histories[:, -1]
            cache = VeltrixEvolverCache(conv_states, ssm_states, timestamps[:, -1], history)
        output = VeltrixEvolverOutput(
            sampling_loss=sampling_loss,
            predicted_units=predicted,
            velocities=velocities,
            cache=cache,
            hidden_states=None if all_hidden is None else tuple(all_hidden),
        )
        return output if return_dict else output.to_tuple()

    def _check_sampling_targets(
        self, units: torch.Tensor, sampling_targets: torch.Tensor | None, generator: torch.Generator | None
    ) -> None:
        """Requires no `sampling_targets`, or a stochastic head and targets (B, T, U, D) shaped like `units`."""
        if sampling_targets is None:
            return
        self._require_sampling_head("sampling_targets")
        check_shape(
            "sampling_targets", sampling_targets, tuple(units.shape), dtype=self.dtype, device=input_device(self)
        )
        check_finite("sampling_targets", sampling_targets)
        check_generator("generator", generator, batch_size=None)

    def _require_sampling_head(self, name: str) -> None:
        if not self.can_sample:
            raise ValueError(
                f"`{name}` needs the stochastic head, but this evolver has none (config.sampling_head_layers=0)."
            )

    def _check_sampling(
        self,
        sample: bool,
        num_samples: int,
        generator: torch.Generator | list[torch.Generator] | None,
        batch_size: int | None = None,
    ) -> None:
        """Checks `sample` (a bool; True needs the head), `num_samples` (an int >= 1; > 1 needs `sample=True`) and
        `generator` (a list of `batch_size` generators, one per context, only where `batch_size` is given)."""
        if not isinstance(sample, bool):
            raise ValueError(f"`sample` must be a bool, got {sample!r}.")
        if sample:
            self._require_sampling_head("sample=True")
        check_count("num_samples", num_samples, MAX_NUM_SAMPLES)
        if num_samples > 1 and not sample:
            raise ValueError(
                f"`num_samples` > 1 needs `sample=True` (the mean prediction is one future), got num_samples="
                f"{num_samples} with sample=False."
            )
        check_generator("generator", generator, batch_size=batch_size)

    @staticmethod
    def _memory(engram: nn.Module | None, histories: torch.Tensor | None) -> torch.Tensor | None:
        """The parametric memory's vectors (..., E) of the code histories (..., max_order), or None without one."""
        if engram is None or not engram.has_parametric_memory:
            return None
        return engram.memory_vectors(histories)

    def _check_engram(self, engram: object) -> None:
        """Requires None or an Engram memory (`VeltrixEngramModel`) that fits this evolver, in its dtype and on its
        device."""
        if engram is None:
            return
        if not (isinstance(engram, PreTrainedModel) and callable(getattr(engram, "check_fits_evolver", None))):
            raise ValueError(f"`engram` must be None or a VeltrixEngramModel, got {type(engram).__name__}.")
        engram.check_fits_evolver(self.config)
        if engram.dtype != self.dtype or not same_device(engram.device, self.device):
            raise ValueError(
                f"`engram` must be in the evolver's dtype and on its device ({self.dtype}, {self.device}), got "
                f"{engram.dtype} on {engram.device}."
            )

    def _check_step_inputs(
        self,
        units: torch.Tensor,
        cache: VeltrixEvolverCache,
        timestamp: torch.Tensor,
        prediction_timestamp: torch.Tensor,
        actions: torch.Tensor | None,
        engram: nn.Module | None = None,
    ) -> None:
        """Checks `step`'s inputs."""
        self._check_units("units", units, steps=False)
        b = units.shape[0]
        self._check_cache(cache, b)
        if engram is not None:
            history = cache.code_history
            if history is None:
                raise ValueError(
                    "`cache` holds no code history: it was made without an `engram`, so it cannot go on with one."
                )
            check_shape("cache.code_history", history, (b, engram.config.max_order), integer=True)
        for name, value in (("timestamp", timestamp), ("prediction_timestamp", prediction_timestamp)):
            self._check_timestamps(name, value, (b,), increasing=False)
        if not bool((timestamp > cache.last_timestamps).all()):
            raise ValueError("`timestamp` must be later than the cache's last timestamp (`cache.last_timestamps`).")
        if not bool((prediction_timestamp > timestamp).all()):
            raise ValueError("`prediction_timestamp` must be later than `timestamp`.")
        reference, clock = self.config.dt_reference, CLOCK_DTYPE
        check_step_sizes("timestamp", timestamp.to(clock) - cache.last_timestamps.to(clock), reference, self.dtype)
        check_step_sizes(
            "prediction_timestamp", prediction_timestamp.to(clock) - timestamp.to(clock), reference, self.dtype
        )
        self._check_actions("actions", actions, (b,))

    def _check_cache(self, cache: object, batch_size: int) -> None:
        """Requires a `VeltrixEvolverCache` of this evolver for `batch_size` trajectories: one conv and one SSM state
        per layer, of this model's shapes, dtype and device, and finite last timestamps (B,)."""
        if not isinstance(cache, VeltrixEvolverCache):
            raise ValueError(
                "`cache` must be a VeltrixEvolverCache (from `forward(..., use_cache=True)` or `step`), "
                f"got {type(cache).__name__}."
            )
        last = cache.last_timestamps
        if isinstance(last, torch.Tensor) and last.dim() == 1 and last.shape[0] != batch_size:
            raise ValueError(
                f"`cache` holds the state of {last.shape[0]} trajectories, but `units` has {batch_size} (batch size)."
            )
        layers = len(self.layers)
        if not all(isinstance(states, (list, tuple)) for states in (cache.conv_states, cache.ssm_states)):
            raise ValueError("`cache.conv_states` and `cache.ssm_states` must be lists of tensors (one per layer).")
        if len(cache.conv_states) != layers or len(cache.ssm_states) != layers:
            raise ValueError(
                f"`cache` must hold {layers} conv and SSM states (one per layer), "
                f"got {len(cache.conv_states)} and {len(cache.ssm_states)}."
            )
        rows = batch_size * self.config.num_units_per_step
        for index, layer in enumerate(self.layers):
            ssm = layer.ssm
            conv_shape = (rows, ssm.conv_dim, ssm.conv_kernel - 1)
            ssm_shape = (rows, ssm.num_heads, ssm.head_dim, ssm.state_size)
            for name, state, shape in (
                ("conv_states", cache.conv_states, conv_shape),
                ("ssm_states", cache.ssm_states, ssm_shape),
            ):
                check_shape(f"cache.{name}[{index}]", state[index], shape, dtype=self.dtype, device=input_device(self))
        check_shape(
            "cache.last_timestamps",
            cache.last_timestamps,
            (batch_size,),
            dtype=(self.dtype, CLOCK_DTYPE),
            device=input_device(self),
        )
        check_finite("cache.last_timestamps", cache.last_timestamps)

    def step(
        self,
        units: torch.Tensor,
        cache: VeltrixEvolverCache,
        timestamp: torch.Tensor,
        prediction_timestamp: torch.Tensor,
        actions: torch.Tensor | None = None,
        engram: nn.Module | None = None,
        sample: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, VeltrixEvolverCache]:
        """Feeds one observed (or predicted) state and predicts the next.

        Args:
            units: (B, U, D) the state at `timestamp`.
            cache: the recurrent state after the previous step (from `forward(..., use_cache=True)` or `step`).
            timestamp: (B,) its time, later than `cache.last_timestamps`.
            prediction_timestamp: (B,) the time to predict, later than `timestamp`.
            actions: (B, A) the actions applied at this step, or `None` for the null condition.
            engram: an Engram memory, as in `rollout` (the cache must come from a call with the same memory): the
                step is a rollout step, fused with the memory's recall.
            sample: sample the next state with the stochastic head instead of predicting its mean.
            generator: the source of the sample's noise (B, U, D).

        Returns:
            The predicted state (B, U, D) at `prediction_timestamp` and the updated cache (`cache` stays valid).
        """
        if checks_enabled():
            self._check_engram(engram)
            self._check_step_inputs(units, cache, timestamp, prediction_timestamp, actions, engram)
            self._check_sampling(sample, 1, generator)
        noise = None
        if sample:
            noise = torch.randn(units.shape, generator=generator, dtype=units.dtype, device=units.device)
        if engram is None:
            return self._step(units, cache, timestamp, prediction_timestamp, actions, noise=noise)
        state, cache, _ = self._remembering_step(units, cache, timestamp, prediction_timestamp, actions, engram, noise)
        return state, cache

    def _step(
        self,
        units: torch.Tensor,
        cache: VeltrixEvolverCache,
        timestamp: torch.Tensor,
        prediction_timestamp: torch.Tensor,
        actions: torch.Tensor | None,
        engram: nn.Module | None = None,
        history: torch.Tensor | None = None,
        predict: bool = True,
        noise: torch.Tensor | None = None,
        in_place: bool = False,
        modulations: list[tuple[torch.Tensor, ...]] | None = None,
    ) -> tuple[torch.Tensor | None, VeltrixEvolverCache]:
        """`step` without input checks (rollouts check their inputs once) and without the memory's recall. With
        `engram`, `history` (B, max_order) holds the codes up to this step's (the parametric memory reads it, the
        cache keeps it). `predict=False` only advances the recurrent state: the last layer's MLP and the head, which
        only the prediction needs, are skipped, and None is returned in its place. With `noise` (B, U, D), the
        stochastic head samples the prediction from it. `in_place` (without gradients): the caller gives `cache` up,
        and its states are updated in place into the returned cache (nothing state-sized is allocated per step); such
        a step runs compiled after `compile_step()` when it predicts the mean without a memory. `modulations`
        (`_step_modulations`, without `noise`): every layer's modulations, made by the caller (the compiled step's
        body), so the condition is not embedded here."""
        compiled = self._compiled_step is not None and modulations is None and in_place and predict
        if compiled and engram is None and noise is None and not self.layers[0].ssm.uses_cuda_kernels(units.device):
            tensors = (cache.conv_states, cache.ssm_states, cache.last_timestamps, timestamp, prediction_timestamp)
            prediction, conv_states, ssm_states = self._compiled_step(self, units, *tensors, actions)
            return prediction, VeltrixEvolverCache(list(conv_states), list(ssm_states), timestamp)
        reference = self.config.dt_reference
        gaps = ((timestamp - cache.last_timestamps) / reference).to(units.dtype)
        step_sizes = ((prediction_timestamp - timestamp) / reference).to(units.dtype)
        condition = self.condition_embedding(step_sizes, actions) if modulations is None else None
        per_layer = modulations or [None] * len(self.layers)
        memory = self._memory(engram, None if history is None else history[:, None])
        hidden = self.in_proj(units)
        conv_states, ssm_states = [], []
        last = len(self.layers) - 1
        for index, (layer, conv_state, ssm_state, modulation) in enumerate(
            zip(self.layers, cache.conv_states, cache.ssm_states, per_layer, strict=True)
        ):
            if memory is not None and engram.injects_into(index):
                hidden = hidden + engram.inject(index, hidden[:, None], memory)[:, 0]
            skip_mlp = not predict and index == last
            hidden, conv_state, ssm_state = layer.step(
                hidden, condition, gaps, conv_state, ssm_state, skip_mlp, in_place, modulation
            )
            conv_states.append(conv_state)
            ssm_states.append(ssm_state)
        cache = VeltrixEvolverCache(conv_states, ssm_states, timestamp, history)
        if not predict:
            return None, cache
        if noise is not None:
            change_per_interval = self.sampling_head.sample(self.norm_f(hidden), condition, noise)
        else:
            # `_velocity_to_units` without the velocity, which a step does not return.
            change_per_interval = self.velocity_head(self.norm_f(hidden))
        return units + step_sizes[:, None, None] * change_per_interval, cache

    def _step_modulations(
        self, step_sizes: torch.Tensor, actions: torch.Tensor | None
    ) -> list[tuple[torch.Tensor, ...]]:
        """Every layer's `_modulation(condition_embedding(step_sizes, actions))`, step sizes (B,) in reference
        intervals and actions (B, A) or None, computed with the linear maps composed: the step and action projections
        act on the concatenated features, and the embedding's last linear layer and all layers' modulation layers,
        between which there is no nonlinearity, act as one product. Two matrix products instead of 3 + the layers'
        count; the composed weights cost more than they save eagerly, but the compiled step (`compile_step`) folds
        them into constants. Equal to the layer-by-layer computation up to rounding (tested)."""
        embedding = self.condition_embedding
        features = torch.stack([step_sizes, torch.log(step_sizes)], dim=-1)
        if actions is None:
            weight, bias = embedding.step_proj.weight, embedding.step_proj.bias + embedding.null_condition
        else:
            features = torch.cat([features, actions], dim=-1)
            weight = torch.cat([embedding.step_proj.weight, embedding.action_proj.weight], dim=1)
            bias = embedding.step_proj.bias + embedding.action_proj.bias
        activated = embedding.mlp[0](F.linear(features, weight, bias))
        last = embedding.mlp[1]
        modulation_weight = torch.cat([layer.modulation.weight for layer in self.layers])
        modulation_bias = torch.cat([layer.modulation.bias for layer in self.layers])
        modulation = F.linear(
            activated, modulation_weight @ last.weight, modulation_weight @ last.bias + modulation_bias
        )
        return [
            layer.split_modulation(part)
            for layer, part in zip(self.layers, modulation.chunk(len(self.layers), -1), strict=True)
        ]

    def _remembering_step(
        self,
        units: torch.Tensor,
        cache: VeltrixEvolverCache,
        timestamp: torch.Tensor,
        prediction_timestamp: torch.Tensor,
        actions: torch.Tensor | None,
        engram: nn.Module,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, VeltrixEvolverCache, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """A rollout step with an Engram memory: the state's code joins the history; the table's recall (if the
        memory has a table) is fused with the prediction by the gate, and trajectories with a confident hit take the
        remembered state and only advance their recurrent state (`_step(predict=False)`); with `noise` (B, U, D) the
        prediction is sampled. Returns the next state (B, U, D), the cache, and per trajectory (hit, mean α,
        bypassed)."""
        history = engram.push_codes(cache.code_history, engram.codes(units[:, None])[:, 0])
        if not engram.has_table:
            predicted, cache = self._step(
                units, cache, timestamp, prediction_timestamp, actions, engram, history, noise=noise
            )
            missed = torch.zeros(units.shape[0], dtype=torch.bool, device=units.device)
            return predicted, cache, (missed, torch.zeros_like(missed, dtype=units.dtype), missed)
        step_sizes = (prediction_timestamp - timestamp).to(units.dtype)
        recall = engram.recall(history, units, step_sizes)
        bypass = recall.confident
        if bool(bypass.any()):
            predicted, cache = self._bypassed_step(
                units, cache, timestamp, prediction_timestamp, actions, engram, history, bypass, noise
            )
        else:
            predicted, cache = self._step(
                units, cache, timestamp, prediction_timestamp, actions, engram, history, noise=noise
            )
        fused, alpha = engram.anchor(predicted, recall, step_sizes)
        bypassed = bypass[:, None, None]
        state = torch.where(bypassed, recall.states.to(units.dtype), fused)
        gate = torch.where(bypass, torch.ones_like(alpha[:, 0, 0]), alpha.mean(dim=(1, 2)))
        return state, cache, (recall.hits, gate, bypass)

    def _bypassed_step(
        self,
        units: torch.Tensor,
        cache: VeltrixEvolverCache,
        timestamp: torch.Tensor,
        prediction_timestamp: torch.Tensor,
        actions: torch.Tensor | None,
        engram: nn.Module,
        history: torch.Tensor,
        bypass: torch.Tensor,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, VeltrixEvolverCache]:
        """`_step` that predicts (or, with `noise` (B, U, D), samples) for the trajectories not in `bypass` (B,)
        bool and only advances the recurrent state of the others; their prediction is left as their input state (the
        caller replaces it)."""
        units_per_step = self.config.num_units_per_step
        parts, predicted = [], units.clone()
        for rows, predict in ((torch.nonzero(~bypass)[:, 0], True), (torch.nonzero(bypass)[:, 0], False)):
            if rows.numel() == 0:
                continue
            part_actions = None if actions is None else actions[rows]
            state, part_cache = self._step(
                units[rows],
                cache.select(rows, units_per_step),
                timestamp[rows],
                prediction_timestamp[rows],
                part_actions,
                engram,
                history[rows],
                predict,
                None if noise is None else noise[rows],
            )
            if predict:
                predicted = predicted.index_copy(0, rows, state)
            parts.append((rows, part_cache))
        return predicted, VeltrixEvolverCache.merge(parts, units_per_step)

    def _rollout_times(
        self, context: torch.Tensor, timestamps: torch.Tensor | None
    ) -> tuple[torch.Tensor, Callable[[int], torch.Tensor]]:
        """The context's timestamps (B, T) and `time_at(k)`, the time (B,) of trajectory index T - 1 + k (k = 0: the
        last context step, k >= 1: future step k - 1). Default timestamps are made one at a time, in float64 (the
        clock stays exact over any horizon), so a stream holds nothing that grows with the horizon."""
        b, t = context.shape[:2]
        if timestamps is not None:
            return timestamps[:, :t], lambda k: timestamps[:, t - 1 + k]
        interval = self.config.dt_reference
        grid = regular_timestamps(b, t, interval, context, CLOCK_DTYPE)
        # (t - 1 + k) · interval in float64 (a Python float): the product the grid's tensor makes, in one operation.
        return grid, lambda k: torch.full((b,), (t - 1 + k) * interval, dtype=CLOCK_DTYPE, device=context.device)

    def _prefill(
        self,
        context: torch.Tensor,
        context_times: torch.Tensor,
        actions: torch.Tensor | None,
        engram: nn.Module | None = None,
    ) -> VeltrixEvolverCache:
        """The cache after all context steps but the last, which the first rollout step feeds (so that a branch can
        fork before it); with a single context step, zero states whose first gap is one reference interval, as in
        `forward` (and, with `engram`, an empty code history)."""
        b, t = context.shape[:2]
        if t > 1:
            with inputs_checked():
                return self(
                    context[:, :-1],
                    timestamps=context_times[:, :-1],
                    actions=None if actions is None else actions[:, : t - 1],
                    prediction_timestamps=context_times[:, 1:],
                    use_cache=True,
                    engram=engram,
                ).cache
        rows = b * self.config.num_units_per_step
        conv_states, ssm_states = [], []
        for layer in self.layers:
            ssm = layer.ssm
            conv_states.append(context.new_zeros(rows, ssm.conv_dim, ssm.conv_kernel - 1))
            ssm_states.append(context.new_zeros(rows, ssm.num_heads, ssm.head_dim, ssm.state_size))
        history = None if engram is None else engram.empty_history(b, context.device)
        return VeltrixEvolverCache(conv_states, ssm_states, context_times[:, 0] - self.config.dt_reference, history)

    def _advance(
        self,
        state: torch.Tensor,
        cache: VeltrixEvolverCache,
        time_at: Callable[[int], torch.Tensor],
        actions_at: Callable[[int], torch.Tensor | None],
        state_deltas: dict[int, torch.Tensor],
        start: int,
        stop: int,
        engram: nn.Module | None = None,
        noise_at: Callable[[int], torch.Tensor] | None = None,
        in_place: bool = False,
    ) -> Iterator[tuple[torch.Tensor, VeltrixEvolverCache, tuple[torch.Tensor, ...] | None]]:
        """Open-loop future steps `start, ..., stop - 1`: step k feeds the state (B, U, D) at `time_at(k)` and
        predicts the one at `time_at(k + 1)` under `actions_at(k)` (sampled from `noise_at(k)` when given; fused
        with `engram`'s recall when given), then adds `state_deltas.get(k)`; yields the predicted state, the cache
        and, with a memory, (hits, mean α, bypassed) (B,) after each step. With `in_place` (for callers that drop
        each yielded cache before the next step; without a memory), the steps after the first that run without
        gradients update the cache the step before made instead of allocating new states."""
        record, next_time = None, time_at(start)
        for k in range(start, stop):
            noise = None if noise_at is None else noise_at(k)
            time, next_time = next_time, time_at(k + 1)  # each time is made once
            if engram is None:
                owned = in_place and k > start and not torch.is_grad_enabled()
                state, cache = self._step(state, cache, time, next_time, actions_at(k), noise=noise, in_place=owned)
            else:
                state, cache, record = self._remembering_step(
                    state, cache, time, next_time, actions_at(k), engram, noise
                )
            if k in state_deltas:
                state = state + state_deltas[k]
            check_rollout_state(state, k)
            yield state, cache, record

    def rollout(
        self,
        context: torch.Tensor,
        num_steps: int,
        actions: torch.Tensor | None = None,
        timestamps: torch.Tensor | None = None,
        mode: str | None = None,
        interventions: VeltrixIntervention | list[VeltrixIntervention] | None = None,
        engram: nn.Module | None = None,
        sample: bool = False,
        num_samples: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> VeltrixRolloutOutput | VeltrixCounterfactualRolloutOutput:
        r"""Evolves the state `num_steps` steps past the context, feeding each prediction back (open loop).

        Args:
            context (`torch.Tensor` of shape `(B, T, U, D)`): observed states.
            num_steps (`int`): how many future states to produce, 1 … `MAX_ROLLOUT_STEPS` (100 000).
            actions (`torch.Tensor` of shape `(B, T + num_steps, A)`, *optional*): the action at every step of the
                whole trajectory, context and future (the last one acts after the horizon and is unused).
            timestamps (`torch.Tensor` of shape `(B, T + num_steps)`, *optional*): strictly increasing times of
                the whole trajectory, in the model's dtype or float64 (kept exact by the float64 clock), each step
                1e-6 to 1e6 times `config.dt_reference`; defaults to a regular grid of `config.dt_reference`.
            mode (`str`, *optional*): the evolution mode (the whitepaper's three):
                - `"free"`: no actions; the learned null condition drives every step;
                - `"conditional"`: `actions` drive the steps;
                - `"counterfactual"`: from the same context, a factual branch (under `actions`, or free when None)
                  and a counterfactual branch edited by `interventions`; returns both and their divergence.
                Defaults to `"counterfactual"` when `interventions` are given, else `"conditional"` when `actions`
                are, else `"free"`.
            interventions ([`VeltrixIntervention`] or a list of them, *optional*): the edits of the counterfactual
                branch (replacement actions and/or a state impulse from a step on); required by, and only used by,
                `mode="counterfactual"`.
            engram ([`VeltrixEngramModel`], *optional*): an Engram memory built for this evolver. Its parametric
                memory (if any) is injected at every step; its table's recall of each step's n-gram of codes is fused
                with the prediction, `Ŝ = Ŝ_pred + α·(m − Ŝ_pred)`, and confident hits take the remembered state
                (`bypass_min_count`). The output then carries `memory_hits`, `memory_gates` and `memory_bypassed`
                of the factual branch.
            sample (`bool`): sample each next state with the stochastic head (`config.sampling_head_layers > 0`)
                instead of predicting its mean; the states fed back are the samples. The counterfactual branch
                draws the same noise as the factual one at every step, so the branches differ only through the
                interventions.
            num_samples (`int`): with `sample=True`, how many futures to sample from each context, in one batched
                pass from one prefill of the context (see [`VeltrixRolloutOutput`] for the layout).
            generator (`torch.Generator` or a list of B of them, *optional*): the source of the samples' noise:
                the same seed gives the same futures. With a list (one per context), context b's futures are drawn
                from generator b alone, as if it were rolled out alone with it.

        Returns:
            [`VeltrixRolloutOutput`], or [`VeltrixCounterfactualRolloutOutput`] for `mode="counterfactual"`.
        """
        if checks_enabled():
            self._check_rollout(context, num_steps, actions, timestamps, mode, interventions)
            self._check_engram(engram)
            self._check_sampling(sample, num_samples, generator, batch_size=context.shape[0])
        b, t = context.shape[:2]
        mode, edits = _resolve_mode(mode, actions, interventions), _intervention_list(interventions)
        output_dtype = context.dtype if timestamps is None else timestamps.dtype
        if timestamps is None:
            timestamps = regular_timestamps(b, t + num_steps, self.config.dt_reference, context, CLOCK_DTYPE)
        cache = self._prefill(context, timestamps[:, :t], actions, engram)
        if num_samples > 1:
            context, actions, timestamps, edits, cache = self._repeat_for_samples(
                num_samples, context, actions, timestamps, edits, cache
            )
        _, time_at = self._rollout_times(context, timestamps)
        actions_at = _actions_at(actions, t)
        noise_at = _noise_source(context[:, -1], generator) if sample else None
        fork_step = min((edit.step for edit in edits), default=num_steps)
        fork = (context[:, -1], cache)
        factual, records = [], []
        # Only a counterfactual branch forks from a cache the steps made; otherwise they may update it in place.
        in_place = engram is None and mode != "counterfactual"
        steps = self._advance(
            context[:, -1], cache, time_at, actions_at, {}, 0, num_steps, engram, noise_at, in_place=in_place
        )
        for k, (state, cache_after, record) in enumerate(steps):
            factual.append(state)
            records.append(record)
            if k + 1 == fork_step:
                fork = (state, cache_after)
        units = torch.stack(factual, dim=1)
        extra = {}
        if engram is not None:
            hits, gates, bypassed = (torch.stack(values, dim=1) for values in zip(*records, strict=True))
            extra = {"memory_hits": hits, "memory_gates": gates, "memory_bypassed": bypassed}
        if num_samples > 1:
            extra["sample_spread"] = units.unflatten(0, (b, num_samples)).std(dim=1).mean(dim=(2, 3))
        future_times = timestamps[:, t:].to(output_dtype)
        if mode != "counterfactual":
            return VeltrixRolloutOutput(units=units, timestamps=future_times, **extra)
        branch = self._counterfactual_branch(fork, fork_step, num_steps, edits, time_at, actions_at, engram, noise_at)
        counterfactual = torch.cat([units[:, :fork_step], branch], dim=1)
        divergence = (counterfactual - units).pow(2).mean(dim=(2, 3)).sqrt()
        return VeltrixCounterfactualRolloutOutput(
            units=units,
            timestamps=future_times,
            counterfactual_units=counterfactual,
            divergence=divergence,
            **extra,
        )

    def _repeat_for_samples(
        self,
        num_samples: int,
        context: torch.Tensor,
        actions: torch.Tensor | None,
        timestamps: torch.Tensor | None,
        edits: list[VeltrixIntervention],
        cache: VeltrixEvolverCache,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, list[VeltrixIntervention], VeltrixEvolverCache]:
        """A rollout's per-trajectory inputs and prefilled cache, each trajectory repeated `num_samples` times in a
        row (trajectory b at rows b·K … b·K + K − 1)."""
        rows = torch.arange(context.shape[0], device=context.device).repeat_interleave(num_samples)

        def repeated(value: torch.Tensor | None) -> torch.Tensor | None:
            return None if value is None else value[rows]

        edits = [
            replace(edit, actions=repeated(edit.actions), state_delta=repeated(edit.state_delta)) for edit in edits
        ]
        cache = cache.select(rows, self.config.num_units_per_step)
        return context[rows], repeated(actions), repeated(timestamps), edits, cache

    def _counterfactual_branch(
        self,
        fork: tuple[torch.Tensor, VeltrixEvolverCache],
        fork_step: int,
        num_steps: int,
        edits: list[VeltrixIntervention],
        time_at: Callable[[int], torch.Tensor],
        actions_at: Callable[[int], torch.Tensor | None],
        engram: nn.Module | None = None,
        noise_at: Callable[[int], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The counterfactual states (B, num_steps - fork_step, U, D) of future steps `fork_step` on, from `fork`
        (the state and cache that step feeds), under the factual `actions_at` as edited by `edits` (sampled from the
        factual branch's `noise_at`)."""

        def edited_actions_at(k: int) -> torch.Tensor | None:
            """The last intervention replacing the actions of step k wins; else the factual actions."""
            for edit in reversed(edits):
                if edit.actions is not None and k >= edit.step:
                    return edit.actions[:, k - edit.step]
            return actions_at(k)

        state_deltas = {}
        for edit in edits:
            if edit.state_delta is not None:
                previous = state_deltas.get(edit.step)
                state_deltas[edit.step] = edit.state_delta if previous is None else previous + edit.state_delta
        branch = self._advance(*fork, time_at, edited_actions_at, state_deltas, fork_step, num_steps, engram, noise_at)
        return torch.stack([state for state, _, _ in branch], dim=1)

    def rollout_stream(
        self,
        context: torch.Tensor,
        num_steps: int,
        actions: torch.Tensor | None = None,
        timestamps: torch.Tensor | None = None,
        engram: nn.Module | None = None,
        sample: bool = False,
        num_samples: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        r"""`rollout` (free or conditional) one future state at a time, in memory independent of the horizon: only
        the cache and the current state are held, and each state is handed to the caller.

        Takes `rollout`'s arguments (checked when called, before the first step) and returns an iterator over
        `(timestamp (B·K,), units (B·K, U, D))` for future steps 1 … `num_steps` (K = `num_samples`).
        """
        if checks_enabled():
            self._check_rollout(context, num_steps, actions, timestamps)
            self._check_engram(engram)
            self._check_sampling(sample, num_samples, generator, batch_size=context.shape[0])
        t = context.shape[1]
        context_times, time_at = self._rollout_times(context, timestamps)
        cache = self._prefill(context, context_times, actions, engram)
        if num_samples > 1:
            context, actions, timestamps, _, cache = self._repeat_for_samples(
                num_samples, context, actions, timestamps, [], cache
            )
            _, time_at = self._rollout_times(context, timestamps)
        noise_at = _noise_source(context[:, -1], generator) if sample else None
        actions_at = _actions_at(actions, t)
        # The caller never sees the cache, so the steps may update it in place (no state-sized allocation per step).
        states = self._advance(
            context[:, -1], cache, time_at, actions_at, {}, 0, num_steps, engram, noise_at, in_place=engram is None
        )
        output_dtype = context.dtype if timestamps is None else timestamps.dtype
        return ((time_at(k + 1).to(output_dtype), state) for k, (state, _, _) in enumerate(states))

    @torch.no_grad()
    def prefill(
        self, context: torch.Tensor, timestamps: torch.Tensor | None = None, actions: torch.Tensor | None = None
    ) -> VeltrixEvolverCache:
        """The recurrent cache after every step of `context (B, T, U, D)` but the last, which `step` (or
        `plan(cache=)`) then feeds: what a closed loop keeps between observations. `timestamps (B, T)` default to
        steps of `dt_reference`; `actions (B, T - 1, A)` drove the context (the null condition without them)."""
        if checks_enabled():
            self._check_units("context", context, steps=True)
            b, t = context.shape[:2]
            if timestamps is not None:
                self._check_timestamps("timestamps", timestamps, (b, t), increasing=True)
            self._check_actions("actions", actions, (b, t - 1))
        context_times, _ = self._rollout_times(context, timestamps)
        return self._prefill(context, context_times, actions)

    @torch.no_grad()
    def plan(
        self,
        context: torch.Tensor,
        goal: torch.Tensor,
        horizon: int,
        method: str = "cem",
        num_samples: int = 300,
        num_iterations: int = 3,
        top_k: int = 30,
        action_bounds: tuple | None = None,
        action_cost: float = 0.0,
        generator: torch.Generator | None = None,
        context_actions: torch.Tensor | None = None,
        timestamps: torch.Tensor | None = None,
        cache: VeltrixEvolverCache | None = None,
        goal_projection: Callable[[torch.Tensor], torch.Tensor] | None = None,
        initial_actions: torch.Tensor | None = None,
        **search_settings,
    ) -> VeltrixPlanOutput:
        r"""Searches the actions that bring the evolved state closest to `goal` in `horizon` steps (`action_search`).

        Args:
            context (`torch.Tensor` of shape `(B, T, U, D)`): the observed states; the plan starts at the last.
            goal (`torch.Tensor` of shape `(B, U, D)`): the state to reach at the last planned step.
            horizon (`int`): how many actions to plan, 1 … `MAX_ROLLOUT_STEPS`.
            method (`str`, defaults to `"cem"`): `"cem"`, `"mppi"` or `"gradient"`.
            num_samples (`int`, defaults to 300): candidate sequences per context and iteration.
            num_iterations (`int`, defaults to 3): refits (CEM, MPPI) or gradient steps.
            top_k (`int`, defaults to 30): CEM's elites, at most `num_samples`.
            action_bounds (`(low, high)`, *optional*): numbers or `(A,)` sequences bounding every action component.
            action_cost (`float`, defaults to 0): weight of the mean squared action in the objective.
            generator (`torch.Generator`, *optional*): the candidates' noise (CPU); the same seed, the same plan.
            context_actions (`torch.Tensor` of shape `(B, T - 1, A)`, *optional*): the actions that drove the context
                (the null condition without them).
            timestamps (`torch.Tensor` of shape `(B, T + horizon)`, *optional*): times of the context and planned
                steps; defaults to steps of `dt_reference`.
            cache (`VeltrixEvolverCache`, *optional*): the recurrent state after every step before `context[:, -1]`
                (from a closed loop that keeps stepping, see `planning.mpc`); then `context` is `(B, 1, U, D)`,
                `context_actions` is None, and the timestamps (if given) start at the last observed step.
            goal_projection (callable, *optional*): maps states `(..., U, D)` to what the distance compares (the
                pipeline passes the encoder's frame subspace); the whole state by default.
            initial_actions (`torch.Tensor` of shape `(B, horizon, A)`, *optional*): where the search starts (e.g.
                the previous plan shifted by the steps taken, or "hold still"); the centre of the bounds by default.
            **search_settings: `initial_std`, `temperature`, `learning_rate`, `min_std` of `VeltrixPlannerSettings`.

        Returns:
            [`VeltrixPlanOutput`]: the best actions `(B, horizon, A)`, their predicted states and times, their
            objective `(B,)` and the best objective after each iteration `(B, num_iterations)`.
        """
        settings = VeltrixPlannerSettings(
            method=method,
            num_samples=num_samples,
            num_iterations=num_iterations,
            top_k=top_k,
            action_cost=action_cost,
            **search_settings,
        )
        goal_shape = None
        if goal_projection is not None:
            goal_shape = ("B", self.config.num_units_per_step, self.config.unit_dim)
        check_plan_inputs(self, context, goal, horizon, context_actions, timestamps, generator, goal_shape)
        if goal.shape[0] != context.shape[0]:
            raise ValueError(f"`goal` must hold one state per context ({context.shape[0]}), got {goal.shape[0]}.")
        settings.check()
        self._check_actions("initial_actions", initial_actions, (context.shape[0], horizon))
        if cache is not None:
            if context.shape[1] != 1 or context_actions is not None:
                raise ValueError(
                    "With `cache`, `context` must be the last observed state (B, 1, U, D) and `context_actions` "
                    f"None, got context of shape {tuple(context.shape)}."
                )
            self._check_cache(cache, context.shape[0])
        bounds = action_bounds_tensors(action_bounds, self.config.action_dim, context)
        context_times, time_at = self._rollout_times(context, timestamps)
        if cache is None:
            cache = self._prefill(context, context_times, context_actions)
        elif timestamps is None:
            last = cache.last_timestamps.to(CLOCK_DTYPE) + self.config.dt_reference
            time_at = lambda k: last + k * self.config.dt_reference  # noqa: E731 - mirrors `_rollout_times`
        candidates = EvolverCandidates(
            self, context[:, -1], cache, time_at, goal, horizon, num_samples, action_cost, goal_projection
        )
        search = ActionSearch(
            candidates,
            context.shape[0],
            horizon,
            self.config.action_dim,
            settings,
            bounds,
            generator,
            context,
            initial_actions,
        )
        actions, units, objective, history = search.run()
        times = torch.stack([time_at(k) for k in range(1, horizon + 1)], dim=1)
        return VeltrixPlanOutput(
            actions=actions,
            units=units,
            timestamps=times.to(context.dtype if timestamps is None else timestamps.dtype),
            objective=objective,
            objective_per_iteration=history,
        )

    @torch.no_grad()
    def score_actions(
        self,
        context: torch.Tensor,
        goal: torch.Tensor,
        actions: torch.Tensor,
        context_actions: torch.Tensor | None = None,
        action_cost: float = 0.0,
        goal_projection: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """`plan`'s objective of given action sequences `(B, N, H, A)` from `context (B, T, U, D)` toward `goal (B, U,
        D)` (one batched rollout from the context's cache, timestamps of `dt_reference`): -> `(B, N)`. What a landscape
        check compares (does the true sequence score best among perturbations of it?)."""
        b = context.shape[0]
        if not isinstance(actions, torch.Tensor) or actions.dim() != 4 or actions.shape[0] != b:
            found = tuple(actions.shape) if isinstance(actions, torch.Tensor) else type(actions).__name__
            raise ValueError(f"`actions` must have shape ({b}, N, H, {self.config.action_dim}), got {found}.")
        n, horizon = actions.shape[1:3]
        goal_shape = None if goal_projection is None else ("B", self.config.num_units_per_step, self.config.unit_dim)
        check_plan_inputs(self, context, goal, horizon, context_actions, None, None, goal_shape)
        self._check_actions("actions", actions, (b, n, horizon))
        VeltrixPlannerSettings(action_cost=action_cost, num_samples=n, top_k=1).check()
        context_times, time_at = self._rollout_times(context, None)
        cache = self._prefill(context, context_times, context_actions)
        candidates = EvolverCandidates(
            self, context[:, -1], cache, time_at, goal, horizon, n, action_cost, goal_projection
        )
        scores, _ = candidates(actions.flatten(0, 1))
        return scores.view(b, n)


def _in_place_step(
    model: VeltrixEvolverModel,
    units: torch.Tensor,
    conv_states: list[torch.Tensor],
    ssm_states: list[torch.Tensor],
    last_timestamps: torch.Tensor,
    timestamp: torch.Tensor,
    prediction_timestamp: torch.Tensor,
    actions: torch.Tensor | None,
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """The step that `compile_step` compiles: the eager `_step` predicting the mean without a memory, its modulations
    from `_step_modulations` (whose composed weights freeze into constants), the cache given as its tensors, its states
    updated in place; returns the prediction and the states."""
    cache = VeltrixEvolverCache(conv_states, ssm_states, last_timestamps)
    step_sizes = ((prediction_timestamp - timestamp) / model.config.dt_reference).to(units.dtype)
    modulations = model._step_modulations(step_sizes, actions)
    prediction, cache = model._step(
        units, cache, timestamp, prediction_timestamp, actions, in_place=True, modulations=modulations
    )
    return prediction, cache.conv_states, cache.ssm_states


def midpoint_rollout(
    evolver: VeltrixEvolverModel,
    context: torch.Tensor,
    num_steps: int,
    actions: torch.Tensor | None = None,
    timestamps: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""The open-loop rollout at twice the frame rate: one unobserved midpoint inside every future interval.

    Training its states at the observed times against the observations (a time-consistency objective: two half
    steps must compose to one whole step) teaches, from data at a single frame rate, how the dynamics scale with
    the step size, so the evolver can be rolled out at other rates.

    Args:
        evolver ([`VeltrixEvolverModel`]): the model.
        context (`torch.Tensor` of shape `(B, T, U, D)`): observed states.
        num_steps (`int`): future observation intervals (>= 1).
        actions (`torch.Tensor` of shape `(B, T + num_steps, A)`, *optional*): as for `rollout`; an interval's
            action acts on its first half and none (zeros) on the second, as an impulse applied right after an
            observation (the built-in worlds' actions).
        timestamps (`torch.Tensor` of shape `(B, T + num_steps)`, *optional*): as for `rollout`.

    Returns:
        The states (B, num_steps, U, D) at the future observation times `timestamps[:, T:]`.
    """
    if checks_enabled():
        evolver._check_rollout(context, num_steps, actions, timestamps)
    b, t = context.shape[:2]
    if timestamps is None:
        timestamps = regular_timestamps(b, t + num_steps, evolver.config.dt_reference, context, CLOCK_DTYPE)
    ends = timestamps[:, t - 1 :]  # (B, num_steps + 1): the last context step, then the future observations
    fine = torch.stack([(ends[:, :-1] + ends[:, 1:]) / 2, ends[:, 1:]], dim=2).flatten(1)  # midpoint, end, ...
    fine_actions = None
    if actions is not None:
        acting = actions[:, t - 1 : t - 1 + num_steps]  # (B, num_steps, A): each interval's action
        halves = torch.stack([acting, torch.zeros_like(acting)], dim=2).flatten(1, 2)
        fine_actions = torch.cat([actions[:, : t - 1], halves, torch.zeros_like(acting[:, :1])], dim=1)
    with inputs_checked():
        rollout = evolver.rollout(
            context, 2 * num_steps, actions=fine_actions, timestamps=torch.cat([timestamps[:, :t], fine], dim=1)
        )
    return rollout.units[:, 1::2]


def _check_lyapunov_inputs(
    evolver: VeltrixEvolverModel,
    context: torch.Tensor,
    reference: torch.Tensor,
    actions: torch.Tensor | None,
    timestamps: torch.Tensor | None,
    perturbation: float,
    generator: torch.Generator | None,
) -> None:
    """Checks `lyapunov_penalty`'s inputs: those of its rollout, the reference rollout and the perturbation."""
    if isinstance(perturbation, bool) or not isinstance(perturbation, (int, float)) or not perturbation > 0:
        raise ValueError(f"`perturbation` must be a number > 0, got {perturbation!r}.")
    check_generator("generator", generator, batch_size=None)
    evolver._check_units("context", context, steps=True)
    b, t = context.shape[:2]
    unit_shape = (b, "K", evolver.config.num_units_per_step, evolver.config.unit_dim)
    check_shape("reference", reference, unit_shape, dtype=evolver.dtype, device=input_device(evolver))
    evolver.check_rollout_inputs(b, t, reference.shape[1], actions, timestamps)


def lyapunov_penalty(
    evolver: VeltrixEvolverModel,
    context: torch.Tensor,
    reference: torch.Tensor,
    actions: torch.Tensor | None = None,
    timestamps: torch.Tensor | None = None,
    perturbation: float = 1e-2,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Lyapunov-like stability regulariser: penalises open-loop steps that expand a small perturbation.

    A second rollout starts from `context + δ` (δ Gaussian, its root-mean-square `perturbation` times the context's)
    under the same actions and timestamps as `reference`. With `d_k` the root-mean-square distance of the two
    rollouts at future step k (and `d_{-1}` that of δ at the last context step), the penalty is
    `mean_k relu(log(d_k / d_{k-1}))²`: zero for steps that do not expand the perturbation, growing with the local
    expansion rate, i.e. a finite-difference estimate of the step map's largest Lyapunov exponent along δ.

    Args:
        evolver ([`VeltrixEvolverModel`]): the model being trained.
        context (`torch.Tensor` of shape `(B, T, U, D)`): the rollout's context.
        reference (`torch.Tensor` of shape `(B, K, U, D)`): `evolver.rollout(context, K, actions, timestamps).units`.
        actions, timestamps: as given to that rollout.
        perturbation (`float`): relative size of δ (> 0).
        generator (`torch.Generator`, *optional*): the source of δ.

    Returns:
        The penalty, a scalar tensor.
    """
    if checks_enabled():
        _check_lyapunov_inputs(evolver, context, reference, actions, timestamps, perturbation, generator)
    noise = torch.randn(context.shape, generator=generator, dtype=context.dtype, device=context.device)
    with torch.no_grad():
        rms = context.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
        delta = noise * (perturbation * rms / noise.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt())
    with inputs_checked():
        perturbed = evolver.rollout(context + delta, reference.shape[1], actions=actions, timestamps=timestamps)
    distances = torch.cat([delta[:, -1:], perturbed.units - reference], dim=1).pow(2).mean(dim=(2, 3)).sqrt()
    # A zero distance would give log(0); the clamp makes its growth -inf -> no penalty, and zero gradient.
    log_distances = torch.log(distances.clamp_min(torch.finfo(distances.dtype).tiny))
    return F.relu(log_distances.diff(dim=1)).pow(2).mean()


__all__ = [
    "EVOLUTION_MODES",
    "VeltrixCounterfactualRolloutOutput",
    "VeltrixEvolverCache",
    "VeltrixEvolverModel",
    "VeltrixEvolverOutput",
    "VeltrixEvolverPreTrainedModel",
    "VeltrixIntervention",
    "VeltrixRolloutOutput",
    "lyapunov_penalty",
    "midpoint_rollout",
]
