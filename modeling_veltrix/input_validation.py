"""Input checks shared by every public entry point: each raises a `ValueError` that names the argument, what
was expected and what came, before any computation.

Inputs are checked once, at the public boundary. An entry point that has checked everything it passes on (the
pipeline's `check_inputs`) runs its inner model calls inside `inputs_checked()`, and the models' public entry points
skip their own checks there (`checks_enabled()`), so no tensor is checked twice and nothing is checked per Euler
step.
"""

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_state = threading.local()


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


def check_tensor(name: str, value: object, integer: bool = False) -> torch.Tensor:
    """Requires a floating-point `torch.Tensor` (an integer one with `integer=True`)."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"`{name}` must be a torch.Tensor, got {type(value).__name__}.")
    if integer and (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):
        raise ValueError(f"`{name}` must be an integer tensor, got {value.dtype}.")
    if not integer and not value.is_floating_point():
        raise ValueError(f"`{name}` must be a floating-point tensor, got dtype {value.dtype}.")
    return value


def check_shape(name: str, value: object, expected: tuple[int | str, ...], integer: bool = False) -> None:
    """Requires a floating tensor (an integer one with `integer=True`) of the given shape; a string entry (e.g. "B")
    matches any size."""
    tensor = check_tensor(name, value, integer)
    shape = tuple(tensor.shape)
    matches = len(shape) == len(expected) and all(
        isinstance(want, str) or want == got for want, got in zip(expected, shape, strict=True)
    )
    if not matches:
        wanted = "(" + ", ".join(str(e) for e in expected) + ")"
        raise ValueError(f"`{name}` must have shape {wanted}, got {shape}.")


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


def check_range(name: str, value: torch.Tensor, low: float, high: float) -> None:
    """Requires every entry in [low, high]."""
    if value.numel() and (float(value.min()) < low or float(value.max()) > high):
        raise ValueError(
            f"`{name}` must lie in [{low}, {high}], got values in [{float(value.min()):.4g}, {float(value.max()):.4g}]."
        )
