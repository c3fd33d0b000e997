"""The evolver's in-place recurrent step through `torch.compile` (`VeltrixEvolverModel.compile_step`).

A batch-1 rollout step is a few hundred small operations, each paying eager PyTorch's per-call overhead; Inductor
fuses them into a few generated kernels and, with `freezing`, folds the weights in as constants. Frozen constants do
not follow later changes of the weights, so every call compares the parameters' versions and storages with those it
compiled against and compiles again when they differ (training, `load_state_dict`, `.to()`).
"""

import inspect
import types
from collections.abc import Callable

import torch
from torch import nn
from transformers.utils import logging

logger = logging.get_logger(__name__)

DEFAULT_COMPILE_KWARGS = {"fullgraph": True, "dynamic": False, "options": {"freezing": True, "cpp_wrapper": True}}
"""`torch.compile`'s arguments for the step: one graph, static shapes (a compile per batch shape), Inductor with the
weights frozen as constants and a C++ wrapper (less Python per call)."""


def check_compile_kwargs(compile_kwargs: dict) -> dict:
    """`DEFAULT_COMPILE_KWARGS` updated by `compile_kwargs`, whose names must be `torch.compile`'s keyword arguments
    (the compiled function excepted)."""
    accepted = set(inspect.signature(torch.compile).parameters) - {"model"}
    unknown = sorted(set(compile_kwargs) - accepted)
    if unknown:
        raise ValueError(f"`compile_kwargs` must be `torch.compile` arguments {sorted(accepted)}, got {unknown}.")
    return DEFAULT_COMPILE_KWARGS | compile_kwargs


def weights_key(model: nn.Module) -> tuple[tuple[int, int], ...]:
    """What identifies the values of `model`'s parameters: each one's in-place version counter and storage."""
    return tuple((parameter._version, parameter.data_ptr()) for parameter in model.parameters())


def fresh_function(function: Callable) -> Callable:
    """A copy of `function` with a code object of its own: `torch.compile` keeps compiled graphs per code object, so
    the copy compiles anew instead of reusing graphs whose frozen weights are stale."""
    return types.FunctionType(
        function.__code__.replace(),
        function.__globals__,
        function.__name__,
        function.__defaults__,
        function.__closure__,
    )


class VeltrixCompiledStep:
    """`step_function(model, *tensors)` compiled with `compile_kwargs` for the weights `model` holds at each call.
    `num_compiled_calls` counts the calls it ran (benchmarks report that the compiled step was used)."""

    def __init__(self, step_function: Callable, compile_kwargs: dict):
        self.step_function = step_function
        self.compile_kwargs = compile_kwargs
        self.num_compiled_calls = 0
        self._compiled: Callable | None = None
        self._weights_key: tuple | None = None

    def __call__(self, model: nn.Module, *args: object) -> object:
        key = weights_key(model)
        if key != self._weights_key:
            if self._compiled is not None:
                logger.warning_once(
                    "The evolver's weights changed since its step was compiled: compiling it again for the new ones."
                )
            self._compiled = torch.compile(fresh_function(self.step_function), **self.compile_kwargs)
            self._weights_key = key
        self.num_compiled_calls += 1
        return self._compiled(model, *args)

    def __reduce__(self) -> tuple:
        """Copies and pickles hold the settings only; the copy compiles at its first call."""
        return VeltrixCompiledStep, (self.step_function, self.compile_kwargs)


__all__ = ["DEFAULT_COMPILE_KWARGS", "VeltrixCompiledStep", "check_compile_kwargs"]
