"""Input checks shared by every public entry point: each raises a `ValueError` that names the argument, what
was expected and what came, before any computation."""

import torch


def check_tensor(name: str, value: object) -> torch.Tensor:
    """Requires a floating-point `torch.Tensor`."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"`{name}` must be a torch.Tensor, got {type(value).__name__}.")
    if not value.is_floating_point():
        raise ValueError(f"`{name}` must be a floating-point tensor, got dtype {value.dtype}.")
    return value


def check_shape(name: str, value: object, expected: tuple[int | str, ...]) -> None:
    """Requires a floating tensor of the given shape; a string entry (e.g. "B") matches any size."""
    tensor = check_tensor(name, value)
    shape = tuple(tensor.shape)
    matches = len(shape) == len(expected) and all(
        isinstance(want, str) or want == got for want, got in zip(expected, shape, strict=True)
    )
    if not matches:
        wanted = "(" + ", ".join(str(e) for e in expected) + ")"
        raise ValueError(f"`{name}` must have shape {wanted}, got {shape}.")


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
