"""The evolver's in-place recurrent step through `torch.compile` (`VeltrixEvolverModel.compile_step`).

A batch-1 rollout step is a few hundred small operations, each paying eager PyTorch's per-call overhead; Inductor
fuses them into a few generated kernels and, with `freezing`, folds the weights in as constants. Frozen constants do
not follow later changes of the weights, so every call compares the parameters' identities, versions and storages with
those it compiled against and compiles again when they differ (an optimizer step, `load_state_dict`, `.to()`); a
submodule replaced by a new one is not seen: call `compile_step()` again after that.
"""

import inspect
import operator
import types
from collections.abc import Callable
from itertools import chain

import torch
from torch import nn
from torch._inductor import config as inductor_config
from transformers.utils import logging

logger = logging.get_logger(__name__)

DEFAULT_COMPILE_KWARGS: dict = {"dynamic": False}
"""`torch.compile`'s arguments for the step: static shapes (a compile per batch shape, up to Dynamo's recompile limit,
after which new shapes run eagerly) and, where torch has it (2.7+), no guards on the model's modules, whose weights
`VeltrixCompiledStep` watches itself (per-step guard checks on every parameter cost a few percent of a batch-1 step)."""
if hasattr(torch.compiler, "skip_guard_on_all_nn_modules_unsafe"):
    DEFAULT_COMPILE_KWARGS["options"] = {"guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe}
INDUCTOR_CONFIG = {"freezing": True, "cpp_wrapper": True}
"""Inductor settings the step compiles under: the weights frozen as constants, a C++ wrapper (less Python per call).
They are patched in around each call, since a compile happens inside a call (the first of each batch shape), and
`torch.compile(options=...)` does not reach `freezing`."""


def check_compile_kwargs(compile_kwargs: dict) -> dict:
    """`DEFAULT_COMPILE_KWARGS` updated by `compile_kwargs`, whose names must be `torch.compile`'s keyword arguments
    (the compiled function excepted)."""
    accepted = set(inspect.signature(torch.compile).parameters) - {"model"}
    unknown = sorted(set(compile_kwargs) - accepted)
    if unknown:
        raise ValueError(f"`compile_kwargs` must be `torch.compile` arguments {sorted(accepted)}, got {unknown}.")
    return DEFAULT_COMPILE_KWARGS | compile_kwargs


def check_watchable(model: nn.Module) -> None:
    """Raises a `ValueError` when a parameter of `model` is an inference tensor (made under `torch.inference_mode()`,
    for instance by a copy there): such tensors keep no version counter, so `WeightsWatch` could not see them change."""
    inference = [name for name, parameter in model.named_parameters() if parameter.is_inference()]
    if inference:
        raise ValueError(
            f"`compile_step` watches the weights for changes, but {inference[:3]} (and {len(inference)} in all) are "
            "inference tensors, made under `torch.inference_mode()`, whose changes cannot be seen: create, load or "
            "copy the model outside `torch.inference_mode()` (running it inside is fine)."
        )


class WeightsWatch:
    """Tells whether the parameters of a model's modules changed since `reset`: an entry of a module's parameter table
    replaced, or a parameter's values changed in place (version counter) or moved to other memory (storage). C-level
    maps over the tables: about 10 µs for a hundred parameters, against ~0.7 ms for a batch-1 step."""

    def __init__(self):
        self._tables: list[dict] = []
        self._entries: list[nn.Parameter | None] = []
        self._parameters: list[nn.Parameter] = []
        self._versions: list[int] = []
        self._storages: list[int] = []

    def reset(self, model: nn.Module) -> None:
        check_watchable(model)
        self._tables = [module._parameters for module in model.modules() if module._parameters]
        self._entries = list(chain.from_iterable(map(dict.values, self._tables)))
        self._parameters = [parameter for parameter in self._entries if parameter is not None]
        self._versions = list(map(_version, self._parameters))
        self._storages = list(map(torch.Tensor.data_ptr, self._parameters))

    def changed(self) -> bool:
        entries = list(chain.from_iterable(map(dict.values, self._tables)))
        return (
            len(entries) != len(self._entries)
            or not all(map(operator.is_, entries, self._entries))
            or list(map(_version, self._parameters)) != self._versions
            or list(map(torch.Tensor.data_ptr, self._parameters)) != self._storages
        )


_version = operator.attrgetter("_version")


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
        self._compiled_shapes: set[tuple] = set()
        self._weights = WeightsWatch()
        self._inductor_config = inductor_config.patch(INDUCTOR_CONFIG)

    def __call__(self, model: nn.Module, *args: object) -> object:
        if self._compiled is None or self._weights.changed():
            if self._compiled is not None:
                logger.warning_once(
                    "The evolver's weights changed since its step was compiled: compiling it again for the new ones."
                )
            self._weights.reset(model)
            self._compiled = torch.compile(fresh_function(self.step_function), **self.compile_kwargs)
            self._compiled_shapes = set()
        self.num_compiled_calls += 1
        # Inductor's settings are read when a graph compiles, which happens at the first call with new input shapes:
        # only those calls pay for patching them (a call that compiles for another reason, a new dtype or layout,
        # gets Inductor's defaults: the weights read at each call instead of frozen).
        shapes = tuple(getattr(arg, "shape", None) for arg in args)
        if shapes in self._compiled_shapes:
            return self._compiled(model, *args)
        with self._inductor_config:
            output = self._compiled(model, *args)
        self._compiled_shapes.add(shapes)
        return output

    def __reduce__(self) -> tuple:
        """Copies and pickles hold the settings only; the copy compiles at its first call."""
        return VeltrixCompiledStep, (self.step_function, self.compile_kwargs)


__all__ = [
    "DEFAULT_COMPILE_KWARGS",
    "INDUCTOR_CONFIG",
    "VeltrixCompiledStep",
    "check_compile_kwargs",
    "check_watchable",
]
