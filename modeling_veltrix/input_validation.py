"""Input checks shared by every public entry point: each raises a `ValueError` that names the argument, what
was expected and what came, before any computation.

Inputs are checked once, at the public boundary. An entry point that has checked everything it passes on (the
pipeline's `check_inputs`) runs its inner model calls inside `inputs_checked()`, and the models' public entry points
skip their own checks there (`checks_enabled()`), so no tensor is checked twice and nothing is checked per Euler
step.

Policies that every entry point applies:
- dtype: a floating-point input must have the dtype of the model that reads it (`model.dtype`, float32 unless the
  model was cast); another dtype raises a `ValueError` naming the argument, the dtype expected and the one given.
  Nothing is converted silently. Timestamps are the one exception: they may also be float64, the dtype of the
  evolver's clock (times are kept and subtracted in float64 inside a rollout, and only the step sizes are cast to
  the model's dtype), so long clocks stay exact. The pipeline (`VeltrixPipeline.__call__`) is the one place that
  converts, explicitly and before its checks: floating `pixel_values`, `actions` and audio go to its components'
  dtype, timestamps to float64; a value that does not fit the dtype then fails the finiteness check.
- shapes: tensors only (a list or a numpy array raises), never meta tensors, never empty (a batch `B` or length `T`
  of 0 raises), on the model's device.
- horizons: `num_steps` / `num_future_steps` are ints in [1, `MAX_ROLLOUT_STEPS`], checked before anything is
  allocated; `num_inference_steps` in [1, `MAX_INFERENCE_STEPS`].
- time: consecutive timestamps must be strictly increasing, and every step between them, in units of the evolver's
  `dt_reference` and in the dtype the model computes in, must lie in [`MIN_STEP_INTERVALS`, `MAX_STEP_INTERVALS`]
  (so it is finite, non-zero and its logarithm is a usable feature).
"""

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_state = threading.local()

CLOCK_DTYPE = torch.float64
"""The dtype of a rollout's clock: times are held and subtracted in float64, only step sizes take the model's."""
MAX_ROLLOUT_STEPS = 100_000
# The most futures sampled from one context in one call.
MAX_NUM_SAMPLES = 1024
"""The longest horizon (`num_steps`, `num_future_steps`) a call takes; checked before anything is allocated."""
MAX_INFERENCE_STEPS = 1000
"""The most Euler steps of the flow decoder (`num_inference_steps`): the scheduler's 1000 training timesteps."""
MIN_STEP_INTERVALS = 1e-6
"""The shortest step between two timestamps, in units of the evolver's `dt_reference`."""
MAX_STEP_INTERVALS = 1e6
"""The longest step between two timestamps, in units of the evolver's `dt_reference`."""


def checks_enabled() -> bool:
    """False inside `inputs_checked()`: the caller has already validated what it passes on."""
    return not getattr(_state, "checked", False)


@contextmanager
def inputs_checked() -> Iterator[None]:
    """Within this block, model entry points skip the input checks that their caller has already run."""
    previous = getattr(_state, "checked", False)
    _state.checked = True
    try:
        yield
    finally:
        _state.checked = previous


def check_tensor(
    name: str,
    value: object,
    integer: bool = False,
    dtype: torch.dtype | tuple[torch.dtype, ...] | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Requires a floating-point `torch.Tensor` (an integer one with `integer=True`) with data (not on the meta
    device), of `dtype` (one of them, for a tuple) and on `device` when given."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"`{name}` must be a torch.Tensor, got {type(value).__name__}.")
    if value.is_meta:
        raise ValueError(f"`{name}` must hold data, got a meta tensor of shape {tuple(value.shape)}.")
    if integer and (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):
        raise ValueError(f"`{name}` must be an integer tensor, got {value.dtype}.")
    if not integer and not value.is_floating_point():
        raise ValueError(f"`{name}` must be a floating-point tensor, got dtype {value.dtype}.")
    allowed = (dtype,) if isinstance(dtype, torch.dtype) else dtype
    if allowed and value.dtype not in allowed:
        wanted = f"{allowed[0]} (the model's)" + "".join(f" or {d}" for d in allowed[1:])
        raise ValueError(f"`{name}` must have dtype {wanted}, got {value.dtype}; it is not converted.")
    if device is not None and not same_device(value.device, device):
        raise ValueError(f"`{name}` must be on the model's device {device}, got {value.device}.")
    return value


def input_device(model: torch.nn.Module) -> torch.device | None:
    """The device a model's inputs must be on: its parameters' device, or None (not checked) while accelerate hooks
    move it (`enable_model_cpu_offload`), where its parameters sit elsewhere between calls."""
    return None if hasattr(model, "_hf_hook") else model.device


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices are the same, an unspecified index (`cuda`) matching any of its type."""
    a, b = torch.device(a), torch.device(b)
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def check_shape(
    name: str,
    value: object,
    expected: tuple[int | str, ...],
    integer: bool = False,
    dtype: torch.dtype | tuple[torch.dtype, ...] | None = None,
    device: torch.device | None = None,
) -> None:
    """Requires a floating tensor (an integer one with `integer=True`, of `dtype` and on `device` when given, see
    `check_tensor`) of the given shape; a string entry (e.g. "B") matches any size but 0."""
    tensor = check_tensor(name, value, integer, dtype, device)
    shape = tuple(tensor.shape)
    wanted = "(" + ", ".join(str(e) for e in expected) + ")"
    matches = len(shape) == len(expected) and all(
        isinstance(want, str) or want == got for want, got in zip(expected, shape, strict=True)
    )
    if not matches:
        raise ValueError(f"`{name}` must have shape {wanted}, got {shape}.")
    empty = [want for want, got in zip(expected, shape, strict=True) if isinstance(want, str) and got == 0]
    if empty:
        raise ValueError(f"`{name}` must not be empty: shape {wanted} needs {', '.join(empty)} >= 1, got {shape}.")


def check_count(name: str, value: object, maximum: int, minimum: int = 1) -> None:
    """Requires a Python int (not a bool) in [minimum, maximum]."""
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
        raise ValueError(f"`{name}` must be an int in [{minimum}, {maximum}], got {value!r}.")


def check_generator(name: str, value: object, batch_size: int | None) -> None:
    """Requires None, a `torch.Generator` or, when `batch_size` is given, a list of `batch_size` of them (one per
    trajectory, as diffusers pipelines take)."""
    if value is None or isinstance(value, torch.Generator):
        return
    if batch_size is None:
        raise ValueError(f"`{name}` must be a torch.Generator or None, got {type(value).__name__}.")
    if not isinstance(value, list) or not all(isinstance(g, torch.Generator) for g in value):
        raise ValueError(
            f"`{name}` must be a torch.Generator, a list of {batch_size} of them or None, got {value!r:.80}."
        )
    if len(value) != batch_size:
        raise ValueError(f"`{name}` must hold one torch.Generator per trajectory ({batch_size}), got {len(value)}.")


def check_indices(name: str, value: torch.Tensor, high: int) -> None:
    """Requires every entry of an integer tensor in [0, high)."""
    if value.numel() and (int(value.min()) < 0 or int(value.max()) >= high):
        raise ValueError(f"`{name}` must lie in [0, {high}), got values in [{int(value.min())}, {int(value.max())}].")


def check_finite(name: str, value: torch.Tensor) -> None:
    """Requires every entry to be finite (no NaN or inf)."""
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"`{name}` must be finite, got NaN or inf entries.")


def check_increasing(name: str, timestamps: torch.Tensor) -> None:
    """Requires (B, T) timestamps to be strictly increasing along T."""
    if timestamps.shape[-1] > 1 and not bool((timestamps.diff(dim=-1) > 0).all()):
        raise ValueError(f"`{name}` must be strictly increasing along the time axis.")


def check_step_sizes(name: str, steps: torch.Tensor, reference: float, dtype: torch.dtype) -> None:
    """Requires time steps (seconds; any shape) to lie in [`MIN_STEP_INTERVALS`, `MAX_STEP_INTERVALS`] reference
    intervals once divided by `reference` and cast to `dtype`, the dtype the model computes in."""
    if not steps.numel():
        return
    ratio = (steps / reference).to(dtype)
    low, high = float(ratio.min()), float(ratio.max())
    if not (MIN_STEP_INTERVALS <= low and high <= MAX_STEP_INTERVALS):
        raise ValueError(
            f"`{name}` must advance by {MIN_STEP_INTERVALS:g} to {MAX_STEP_INTERVALS:g} reference intervals per step "
            f"(dt_reference = {reference:g} s; step sizes in {dtype}), got steps of {low:.4g} to {high:.4g} intervals."
        )


def check_range(name: str, value: torch.Tensor, low: float, high: float) -> None:
    """Requires every entry in [low, high]."""
    if value.numel() and (float(value.min()) < low or float(value.max()) > high):
        raise ValueError(
            f"`{name}` must lie in [{low}, {high}], got values in [{float(value.min()):.4g}, {float(value.max()):.4g}]."
        )
