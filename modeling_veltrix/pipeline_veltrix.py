"""`VeltrixPipeline`: observe frames, evolve the world state, render the future; and `VeltrixWorldModel`, the same
pipeline as one transformers model for `AutoModel` and `pipeline("world-rollout")`.

encoder (MPE) -> evolver (TRE, open-loop rollout, anchored by the optional Engram memory) -> decoder (MGD, flow
matching sampled with `FlowMatchEulerDiscreteScheduler`). Every future frame of every trajectory is decoded in one
batch per Euler step.

This file imports only model modules: flattened with its relative imports, it becomes the root pipeline file of a
saved folder. It imports no component class: the components load with the classes that the installed package
registers (`register_component_class`), or, in a repository's copy of this file, with the repository's own component
files. The code files of a saved folder are written by the repository writers that installed packages declare
under the entry-point group `veltrix.repository_writers` (this package declares its Hub export in `setup.py`); where
none is installed (a repository's copy of this file), `save_pretrained` writes diffusers' layout alone.
"""

import dataclasses
import importlib
import inspect
import os
from dataclasses import dataclass
from functools import partial
from importlib.metadata import entry_points
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, ModelMixin
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import get_device, randn_tensor
from torch import nn
from transformers import PreTrainedModel

from .action_search import VeltrixPlanOutput
from .input_validation import (
    CLOCK_DTYPE,
    MAX_INFERENCE_STEPS,
    MAX_ROLLOUT_STEPS,
    check_count,
    check_finite,
    check_generator,
    check_shape,
    checks_enabled,
    input_device,
    inputs_checked,
)
from .pipeline_world_rollout import VeltrixWorldConfig
from .repository_check import (
    LIBRARIES,
    MODEL_INDEX,
    VeltrixRepositoryError,
    check_component_config,
    check_components_fit,
    check_one_save,
    check_repository,
    component_entries,
    content_save_id,
    engram_mismatches,
    loaded_fingerprint,
    resaved_since,
    resolve_repository,
    save_in_progress,
    saved_fingerprint,
    stamp_saved_folder,
    write_folder_atomically,
)
from .weights_check import check_finite_file, saved_variant

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# Entry-point group of the functions `writer(pipeline, folder)` that add what a Hub repository needs beyond
# diffusers' layout (code files, `auto_map`s) to a folder that `save_pretrained` has just written.
REPOSITORY_WRITERS = "veltrix.repository_writers"
OUTPUT_MODALITIES = ("frames", "audio", "text")


def check_step_count(name: str, value: object, maximum: int = MAX_ROLLOUT_STEPS) -> None:
    """Requires an int in [1, maximum] (`MAX_ROLLOUT_STEPS` for horizons), checked before anything is allocated."""
    check_count(name, value, maximum)


def to_model_dtype(value: object, device: torch.device, dtype: torch.dtype) -> object:
    """The pipeline's one explicit conversion: a floating tensor with data to `dtype` on `device`, an integer tensor
    to `device`; anything else (a list, a meta tensor) is returned as it came, for the checks to name."""
    if not isinstance(value, torch.Tensor) or value.is_meta or value.is_complex():
        return value
    return value.to(device=device, dtype=dtype) if value.is_floating_point() else value.to(device=device)


def convert_interventions(interventions: object, device: torch.device, dtype: torch.dtype) -> object:
    """`to_model_dtype` on the `actions` and `state_delta` of a `VeltrixIntervention` or of a list of them; anything
    else is returned as it came, for the evolver's checks to name."""
    if isinstance(interventions, (list, tuple)):
        return [convert_interventions(item, device, dtype) for item in interventions]
    if not dataclasses.is_dataclass(interventions) or isinstance(interventions, type):
        return interventions
    fields = {field.name for field in dataclasses.fields(interventions)}
    if not {"actions", "state_delta"} <= fields:
        return interventions
    return dataclasses.replace(
        interventions,
        actions=to_model_dtype(interventions.actions, device, dtype),
        state_delta=to_model_dtype(interventions.state_delta, device, dtype),
    )


@dataclass(frozen=True)
class LoadOptions:
    """The loading options of `VeltrixPipeline.from_pretrained` that reach the components: the resolved `dtype`
    (None, one floating dtype, or per component name with `"default"`) and the weights `variant`."""

    dtype: torch.dtype | dict[str, torch.dtype] | None = None
    variant: str | None = None


def resolve_dtype_argument(dtype: object, torch_dtype: object) -> torch.dtype | dict[str, torch.dtype] | None:
    """The dtype of a load given as `dtype` or as its older name `torch_dtype` (diffusers and transformers take
    both, and refuse both at once): None, a floating `torch.dtype`, or a dict of component name (or `"default"`) ->
    floating `torch.dtype`. Raises a `ValueError` naming the argument otherwise."""
    if dtype is not None and torch_dtype is not None:
        raise ValueError(
            f"Pass `dtype` or its older name `torch_dtype`, not both; got dtype={dtype!r}, torch_dtype={torch_dtype!r}."
        )
    name, value = ("torch_dtype", torch_dtype) if torch_dtype is not None else ("dtype", dtype)
    entries = value.items() if isinstance(value, dict) else [("", value)]
    if value is not None and (
        (isinstance(value, dict) and not value)
        or any(
            not isinstance(key, str) or not isinstance(item, torch.dtype) or not item.is_floating_point
            for key, item in entries
        )
    ):
        raise ValueError(
            f"`{name}` must be None, a floating torch.dtype or a non-empty dict of component name (or 'default') -> "
            f"floating torch.dtype, got {value!r}."
        )
    return value


def component_dtypes(dtype: torch.dtype | dict[str, torch.dtype], names: list[str]) -> dict[str, torch.dtype]:
    """Component name -> its dtype under a resolved `dtype`: the dtype itself, or the dict's entry, its
    `"default"`, or float32 (diffusers' rule)."""
    if not isinstance(dtype, dict):
        return dict.fromkeys(names, dtype)
    return {name: dtype.get(name, dtype.get("default", torch.float32)) for name in names}


def check_dtype_keys(dtype: torch.dtype | dict[str, torch.dtype] | None, entries: dict[str, list]) -> None:
    """Requires a per-component `dtype` to name only components of `entries` (or `"default"`) and to keep an Engram
    memory in its evolver's dtype (the rollout calls it in place); raises a `ValueError` naming `dtype`."""
    if not isinstance(dtype, dict):
        return
    unknown = sorted(set(dtype) - set(entries) - {"default"})
    if unknown:
        raise ValueError(
            f"`dtype` names components {unknown} that the folder does not have; expected keys among "
            f"{sorted(entries)} or 'default', got {sorted(dtype)}."
        )
    dtypes = component_dtypes(dtype, list(entries))
    if "engram" in dtypes and dtypes["engram"] != dtypes["evolver"]:
        raise ValueError(
            f"`dtype` must give the engram its evolver's dtype ({dtypes['evolver']}), got {dtypes['engram']}."
        )


def cast_components(components: dict[str, object], dtype: torch.dtype | dict[str, torch.dtype] | None) -> None:
    """Casts every model among `components` to its dtype under `dtype` (`component_dtypes`); None casts nothing."""
    if dtype is None:
        return
    for name, component_dtype in component_dtypes(dtype, list(components)).items():
        if isinstance(components[name], nn.Module):
            components[name].to(dtype=component_dtype)


def check_variant(variant: object) -> None:
    """Requires None or a non-empty name without path separators, what `save_pretrained(variant=...)` writes into
    the weights file names (`model.<variant>.safetensors`)."""
    if variant is not None and (not isinstance(variant, str) or not variant or "/" in variant or os.sep in variant):
        raise ValueError(f"`variant` must be None or a non-empty name such as 'fp16', got {variant!r}.")


def check_use_safetensors(use_safetensors: object) -> None:
    """Requires `use_safetensors` None or True: a Veltrix repository holds safetensors weights only."""
    if use_safetensors is not None and use_safetensors is not True:
        raise ValueError(
            "`use_safetensors` must be None or True: Veltrix repositories hold safetensors weights only, and pickled "
            f"`.bin` weights are neither written nor read; got {use_safetensors!r}."
        )


def device_for_map(device_map: object) -> torch.device | None:
    """The one device on which a pipeline loaded with `device_map` runs (its components exchange tensors on one
    device): None (load on the CPU) for None and for `"balanced"` without an accelerator, the CPU for `"cpu"`, the
    accelerator for its name (`get_device()`, e.g. `"cuda"`) and for `"balanced"` with one accelerator. Raises a
    `ValueError` naming `device_map` for anything else, and for `"balanced"` over several accelerators."""
    if device_map is None:
        return None
    accelerator = get_device()
    supported = ["balanced", "cpu"] + ([accelerator] if accelerator != "cpu" else [])
    if not isinstance(device_map, str) or device_map not in supported:
        raise ValueError(f"`device_map` must be None or one of {supported}, got {device_map!r}.")
    if device_map != "balanced":
        return torch.device(device_map)
    count = torch.accelerator.device_count() if accelerator != "cpu" else 0
    if count > 1:
        raise ValueError(
            f"`device_map='balanced'` would spread the components over {count} {accelerator} devices, but they "
            f"exchange tensors on one device: pass device_map={accelerator!r} or call `enable_model_cpu_offload()`."
        )
    return torch.device(accelerator, 0) if count else None


def hf_device_map_of(
    device_map: str, device: torch.device | None, components: dict[str, object]
) -> str | dict[str, int] | None:
    """What diffusers records as `hf_device_map` for a pipeline loaded with `device_map`: the name itself for a
    device, for `"balanced"` the accelerator index of each model (None where it fell back to the CPU)."""
    if device_map != "balanced":
        return device_map
    if device is None:
        return None
    return {name: device.index for name, component in components.items() if isinstance(component, nn.Module)}


def pipeline_device_map(device_map: object) -> object:
    """A transformers `device_map` as `VeltrixPipeline.from_pretrained` takes it: `"auto"` -> `"balanced"` (one
    device: the accelerator where there is one), `{"": device}` -> that device's type; anything else as it came, for
    the pipeline's check to name."""
    if device_map == "auto":
        return "balanced"
    if isinstance(device_map, dict) and set(device_map) == {""}:
        device = device_map[""]
        if isinstance(device, int) and not isinstance(device, bool):
            return get_device()
        if isinstance(device, (str, torch.device)):
            return torch.device(device).type
    return device_map


@dataclass
class VeltrixPipelineOutput(BaseOutput):
    """
    Args:
        frames: the future frames; `"pil"`: a list (per trajectory) of lists of `PIL.Image.Image`; `"np"`: an
            array `(B, num_future_steps, H, W, C)` in [0, 1]; `"pt"`: a tensor `(B, num_future_steps, C, H, W)`
            in [0, 1]; `"latent"`: `None`.
            Also `None` when `"frames"` is not in `output_modalities`.
        units (`torch.Tensor` of shape `(B, num_future_steps, U, D)`): the evolved state units.
        timestamps (`torch.Tensor` of shape `(B, num_future_steps)`): the times of the future steps in seconds.
        captions (`list[list[str]]`, *optional*): with `"text"` in `output_modalities`, per trajectory the caption
            of every future step, read from the text subspace of its evolved state.
        audio_features (`torch.Tensor` of shape `(B, num_future_steps, K, V)`, *optional*): with `"audio"` in
            `output_modalities`, the audio features read from the audio subspace (`D_audio`).
        audio_codes (`torch.Tensor` of shape `(B, num_future_steps, K)`, *optional*): the nearest code of each
            codebook to those features.
        counterfactual_frames, counterfactual_units (*optional*): with `mode="counterfactual"`, the frames (same
            format as `frames`, decoded from the same noise) and units of the branch edited by the interventions;
            `frames` and `units` are then the factual branch.
        divergence (`torch.Tensor` of shape `(B, num_future_steps)`, *optional*): with `mode="counterfactual"`, the
            root-mean-square difference of the two branches' units per step.
        memory_hits (`torch.Tensor` of shape `(B, num_future_steps)`, *optional*): with the Engram memory in use
            (`use_engram`), whether its table remembered each future step's n-gram of codes (bool; of the factual
            branch with `mode="counterfactual"`); `None` without it.
        sample_spread (`torch.Tensor` of shape `(B, num_future_steps)`, *optional*): with `num_samples = K > 1`,
            per context and future step the standard deviation of the units across its K sampled futures, averaged
            over units and channels (the evolver's uncertainty); `None` otherwise.

    With `num_samples = K` (`sample=True`; K is 1 without sampling, and the `K` of the audio shapes counts codebooks),
    every per-trajectory output (`frames`, `units`, `timestamps`, `captions`, the audio outputs, the counterfactual
    outputs with `divergence`, and `memory_hits`) holds `B·K` futures where the shapes above say `B`, the K samples of
    context b at rows `b·K … b·K + K − 1` (as `num_return_sequences` in transformers' `generate`); `sample_spread`
    alone has one row per context.
    """

    frames: list[list[PIL.Image.Image]] | np.ndarray | torch.Tensor | None
    units: torch.Tensor
    timestamps: torch.Tensor
    captions: list[list[str]] | None = None
    audio_features: torch.Tensor | None = None
    audio_codes: torch.Tensor | None = None
    counterfactual_frames: list[list[PIL.Image.Image]] | np.ndarray | torch.Tensor | None = None
    counterfactual_units: torch.Tensor | None = None
    divergence: torch.Tensor | None = None
    memory_hits: torch.Tensor | None = None
    sample_spread: torch.Tensor | None = None


class VeltrixPipeline(DiffusionPipeline):
    r"""World rollout: context frames (and optionally actions and timestamps) in, future frames out.

    Args:
        encoder ([`VeltrixEncoderModel`]): frames -> state units.
        evolver ([`VeltrixEvolverModel`]): evolves the units through time.
        decoder ([`VeltrixDecoderModel`]): renders a step's units as a frame.
        scheduler ([`FlowMatchEulerDiscreteScheduler`]): the flow-matching sampler of the decoder.
        engram ([`VeltrixEngramModel`], *optional*): an Engram memory built for this encoder and evolver, which
            anchors the rollout (`use_engram` of a call). It must fit the evolver (`check_fits_evolver`) and, where
            its configuration records them, the fingerprints of the encoder and evolver it was built for
            (`weights_fingerprint`), or a `ValueError` names what was expected and what came.
        default_num_future_steps (`int`, defaults to 8): `num_future_steps` of a call that does not give it.
        default_num_inference_steps (`int`, defaults to 8): `num_inference_steps` of a call that does not give it.

    The two defaults are saved in `model_index.json`, so a published pipeline carries its call defaults.
    """

    model_cpu_offload_seq = "encoder->evolver->decoder"
    _optional_components: ClassVar[list[str]] = ["engram"]
    # The evolver calls the memory's methods (not its `forward`) at every step, which offload hooks do not see: it
    # stays on the execution device instead of joining the offload sequence.
    _exclude_from_cpu_offload: ClassVar[list[str]] = ["engram"]
    # Component classes that `from_pretrained` loads with, by class name; `modeling_veltrix/__init__.py` registers
    # the package's. A Hub repository's copy of this file registers none and loads the repository's own code.
    _installed_component_classes: ClassVar[dict[str, type]] = {}

    def __init__(
        self,
        encoder: PreTrainedModel,
        evolver: PreTrainedModel,
        decoder: ModelMixin,
        scheduler: FlowMatchEulerDiscreteScheduler,
        engram: PreTrainedModel | None = None,
        default_num_future_steps: int = 8,
        default_num_inference_steps: int = 8,
    ):
        super().__init__()
        check_step_count("default_num_future_steps", default_num_future_steps)
        check_step_count("default_num_inference_steps", default_num_inference_steps)
        if not isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
            raise ValueError(
                f"`scheduler` must be a FlowMatchEulerDiscreteScheduler (the decoder is a flow-matching model), "
                f"got {type(scheduler).__name__}."
            )
        self.check_engram(engram, encoder, evolver)
        self.register_modules(encoder=encoder, evolver=evolver, decoder=decoder, scheduler=scheduler, engram=engram)
        self.register_to_config(
            default_num_future_steps=default_num_future_steps, default_num_inference_steps=default_num_inference_steps
        )
        self.image_processor = VaeImageProcessor(do_resize=False, do_normalize=True)

    @staticmethod
    def check_engram(engram: object, encoder: PreTrainedModel, evolver: PreTrainedModel) -> None:
        """Requires `engram` None or an Engram memory that fits `evolver` and, where it records their fingerprints,
        was built for these `encoder` and `evolver` (`engram_mismatches`); raises a `ValueError` naming what was
        expected and what came."""
        if engram is None:
            return
        if not (isinstance(engram, PreTrainedModel) and callable(getattr(engram, "check_fits_evolver", None))):
            raise ValueError(f"`engram` must be None or a VeltrixEngramModel, got {type(engram).__name__}.")
        models = {"encoder": encoder, "evolver": evolver}
        mismatches = engram_mismatches(engram, evolver.config, partial(loaded_fingerprint, models))
        if mismatches:
            raise ValueError(" ".join(mismatches))

    @classmethod
    def register_component_class(cls, component_class: type) -> None:
        """Makes `from_pretrained` load the components that `model_index.json` names `component_class.__name__` with
        `component_class` (the installed code) rather than with the folder's code."""
        cls._installed_component_classes[component_class.__name__] = component_class

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        trust_remote_code: bool = False,
        torch_dtype: torch.dtype | dict[str, torch.dtype] | None = None,
        cache_dir: str | None = None,
        revision: str | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        force_download: bool = False,
        strict_weights: bool = True,
        dtype: torch.dtype | dict[str, torch.dtype] | None = None,
        variant: str | None = None,
        device_map: str | None = None,
        use_safetensors: bool | None = None,
    ) -> "VeltrixPipeline":
        """Loads a folder written by `save_pretrained`, or a Hub repository id (through the Hugging Face cache).

        The folder is checked first (`check_repository`): a missing `model_index.json`, component folder or weights
        file, a malformed `model_index.json` entry, a truncated weights file, or a layout or configuration written by
        an incompatible version raises `VeltrixRepositoryError` naming the file, and nothing is loaded. Each
        component's weights must then match it exactly, tensor by tensor, and be finite (`VeltrixCheckedLoadingMixin`;
        `strict_weights=False` lets missing and unexpected tensors through, to fine-tune from a partial checkpoint),
        and the components must fit together (unit width, action size, frame size and channels), or
        `VeltrixRepositoryError` names the files and tensors or settings.

        A load sees one save: `save_pretrained` writes the save's id (a hash of its content, `content_save_id`) into
        `model_index.json` and every component configuration, and the ids are compared after loading
        (`check_one_save`). A folder re-saved during the load is
        loaded once more; a folder whose components come from different saves raises `VeltrixRepositoryError`.

        Components whose classes are registered (`register_component_class`; the installed package registers its own)
        load with them and no code from the folder runs. Otherwise the folder's own code loads the pipeline, as
        `DiffusionPipeline.from_pretrained` does, which takes `trust_remote_code=True`.

        The loading options of `DiffusionPipeline.from_pretrained`:

        - `dtype` (`torch.dtype` or a dict component name -> `torch.dtype`, *optional*): the floating dtype of every
          component, or per component, with the key `"default"` for those not named (float32 without one). `None`
          leaves each component as its library loads it: the encoder, evolver and Engram memory in their saved dtype
          (transformers), the decoder in float32 (diffusers). `torch_dtype` is its older name; give one of the two.
        - `variant` (`str`, *optional*): load the weights saved with `save_pretrained(variant=...)`
          (`model.<variant>.safetensors`); without it, the weights saved without a variant (a folder holding only
          variant weights raises `VeltrixRepositoryError` naming its variants).
        - `device_map` (`str`, *optional*): `None` (load on the CPU), `"cpu"`, the accelerator (`"cuda"`, as
          diffusers' `get_device()` names it) or `"balanced"` (diffusers' strategy: on the one accelerator where
          there is one, on the CPU where there is none). It is recorded as `hf_device_map`; `"balanced"` on an
          accelerator then blocks `.to()` and CPU offloading until `reset_device_map()`, as in diffusers.
        - `use_safetensors` (`bool`, *optional*): `None` or `True`; Veltrix repositories hold safetensors weights
          only, so `False` (load pickled `.bin` weights) raises a `ValueError`.
        """
        if not isinstance(strict_weights, bool):
            raise ValueError(f"`strict_weights` must be a bool, got {strict_weights!r}.")
        dtype = resolve_dtype_argument(dtype, torch_dtype)
        check_variant(variant)
        device = device_for_map(device_map)
        check_use_safetensors(use_safetensors)
        folder = resolve_repository(
            pretrained_model_name_or_path,
            cache_dir=cache_dir,
            revision=revision,
            token=token,
            local_files_only=local_files_only,
            force_download=force_download,
        )
        options = LoadOptions(dtype=dtype, variant=variant)
        for attempt in range(2):
            index = None
            try:
                index = check_repository(folder)
                pipeline = cls._load_checked(folder, index, trust_remote_code, options, strict_weights)
                check_one_save(folder, index)
                break
            except Exception:
                changed = save_in_progress(folder) if index is None else resaved_since(folder, index)
                if attempt == 1 or not changed:
                    raise
        if device is not None:
            pipeline.to(device)
        if device_map is not None:
            pipeline.hf_device_map = hf_device_map_of(device_map, device, pipeline.components)
        pipeline.register_to_config(_name_or_path=str(pretrained_model_name_or_path))
        return pipeline

    @classmethod
    def check_folder(cls, folder: str) -> None:
        """Checks the local saved pipeline `folder` without loading a model: `check_repository`, then, for each
        component whose class is registered, its configuration, its weights' tensor names and shapes, and their
        values (finite), and that the components fit together; raises `VeltrixRepositoryError` naming the file.
        `VeltrixWorldConfig` runs it when it is read from a folder, so `pipeline("world-rollout", model=folder)`
        raises that error itself. It reads every weights file once more than a load does."""
        index = check_repository(folder)
        if cls._installed_component_classes:  # this code loads the pipeline (a folder's own copy registers none)
            cls._saved_settings(folder, index)
        configs, weights = {}, {}
        for name, (library, class_name) in component_entries(index, os.path.join(folder, MODEL_INDEX)).items():
            component_class = cls._installed_component_classes.get(class_name)
            if library in LIBRARIES or component_class is None:
                continue
            check_component_config(folder, name, component_class)
            component_folder = os.path.join(folder, name)
            variant = saved_variant(component_folder)
            weights[name] = component_class.check_saved_weights(component_folder, variant=variant)
            check_finite_file(weights[name])
            if not issubclass(component_class, PreTrainedModel):
                configs[name] = SimpleNamespace(
                    config=SimpleNamespace(**component_class.load_config(folder, subfolder=name))
                )
                continue
            config = component_class.config_class.from_pretrained(folder, subfolder=name)
            if callable(getattr(component_class, "check_fits_evolver", None)):
                with torch.device("meta"):  # the Engram memory checks its fit itself; on meta, nothing is allocated
                    configs[name] = component_class(config)
            else:
                configs[name] = SimpleNamespace(config=config)

        def fingerprint_of(name: str) -> str | None:
            return saved_fingerprint(weights[name]) if weights.get(name) else None

        check_components_fit(folder, configs, fingerprint_of)

    @classmethod
    def _load_checked(
        cls, folder: str, index: dict, trust_remote_code: bool, options: "LoadOptions", strict_weights: bool
    ) -> "VeltrixPipeline":
        """The pipeline of the checked `folder` (its `model_index.json` read as `index`), loaded with the registered
        component classes, or with the folder's own code where one is not registered, with the `options` of
        `from_pretrained` (dtype, variant)."""
        entries = component_entries(index, os.path.join(folder, MODEL_INDEX))
        check_dtype_keys(options.dtype, entries)
        installed = cls._installed_component_classes
        if any(library not in LIBRARIES and name not in installed for library, name in entries.values()):
            pipeline = DiffusionPipeline.from_pretrained(
                folder,
                trust_remote_code=trust_remote_code,
                dtype=options.dtype,
                variant=options.variant,
                use_safetensors=True,
            )
            check_components_fit(folder, pipeline.components)
            return pipeline
        components = cls._load_installed_components(folder, entries, strict_weights, options.variant)
        # Before the constructor, whose own check of the Engram memory would raise a `ValueError` naming no file.
        check_components_fit(folder, components)
        pipeline = cls(**components, **cls._saved_settings(folder, index))
        # After the checks: the Engram memory's fingerprints of the encoder and evolver are of their saved weights.
        cast_components(pipeline.components, options.dtype)
        return pipeline

    @classmethod
    def _load_installed_components(
        cls, folder: str, entries: dict[str, list], strict_weights: bool = True, variant: str | None = None
    ) -> dict[str, object]:
        """Each component of `model_index.json` (name -> [library or code file, class name]) loaded from its folder
        with the library's or the registered class (the registered ones with their weights checks, `strict_weights`
        and the weights `variant` as in `from_pretrained`)."""
        components = {}
        for name, (library, class_name) in entries.items():
            if library in LIBRARIES:
                component_class = getattr(importlib.import_module(library), class_name, None)
                if component_class is None:
                    raise VeltrixRepositoryError(
                        f"{os.path.join(folder, MODEL_INDEX)}: the component `{name}` names {library}.{class_name}, "
                        f"which {library} does not have."
                    )
                weights = {"variant": variant} if issubclass(component_class, (ModelMixin, PreTrainedModel)) else {}
                components[name] = component_class.from_pretrained(folder, subfolder=name, **weights)
            else:
                component_class = cls._installed_component_classes[class_name]
                check_component_config(folder, name, component_class)
                components[name] = component_class.from_pretrained(
                    folder, subfolder=name, strict_weights=strict_weights, variant=variant
                )
        return components

    @classmethod
    def _saved_settings(cls, folder: str, index: dict) -> dict:
        """The non-component `__init__` arguments saved in `model_index.json` (the call defaults)."""
        settings = {key: value for key, value in index.items() if not (key.startswith("_") or isinstance(value, list))}
        unknown = sorted(set(settings) - set(inspect.signature(cls.__init__).parameters))
        if unknown:
            raise VeltrixRepositoryError(
                f"{os.path.join(folder, MODEL_INDEX)} sets {unknown}, which {cls.__name__} of this version does not "
                "take: it was written by an incompatible version."
            )
        return settings

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str | None = None,
    ) -> None:
        """Writes what `DiffusionPipeline.save_pretrained` writes (safetensors weights and configs per component,
        `model_index.json`) plus, through the installed repository writers (`REPOSITORY_WRITERS`), a complete Hub
        repository (each component's self-contained code, the root pipeline file and the `config.json` that
        `transformers.pipeline` reads; layout in `repository_check`). Every configuration gets this save's id
        (`stamp_saved_folder`, which also drops the local `_name_or_path`), so that `from_pretrained` can tell one
        save from a mix of two. The folder is written next to `save_directory` and swapped into place
        (`write_folder_atomically`): the old folder is deleted only once the new one is in place, and
        `save_directory` never holds a partial repository.

        `variant` (e.g. `"fp16"`) names the weights files `model.<variant>.safetensors` /
        `diffusion_pytorch_model.<variant>.safetensors`, which `from_pretrained(..., variant=...)` loads. Veltrix
        writes safetensors only: `safe_serialization=False` (diffusers' pickled `.bin` weights) raises a `ValueError`
        that says so, and nothing is written."""
        if safe_serialization is not True:
            raise ValueError(
                "`safe_serialization` must be True: Veltrix repositories hold safetensors weights only (pickled `.bin` "
                "weights are neither written nor read, `from_pretrained` refuses `use_safetensors=False` alike). "
                f"Call `save_pretrained` without `safe_serialization`; got {safe_serialization!r}."
            )
        check_variant(variant)

        def write(staging: str) -> None:
            super(VeltrixPipeline, self).save_pretrained(
                staging, safe_serialization=True, variant=variant, max_shard_size=max_shard_size
            )
            for entry_point in entry_points(group=REPOSITORY_WRITERS):
                entry_point.load()(self, staging)
            stamp_saved_folder(staging, content_save_id(staging))

        write_folder_atomically(write, save_directory)

    def check_inputs(
        self,
        pixel_values: torch.Tensor,
        actions: torch.Tensor | None,
        timestamps: torch.Tensor | None,
        num_future_steps: int,
        num_inference_steps: int,
        output_type: str,
        output_modalities: tuple[str, ...] = ("frames",),
        mode: str | None = None,
        interventions: object = None,
        observed: dict[str, torch.Tensor] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        sample: bool = False,
        num_samples: int = 1,
        latents: torch.Tensor | None = None,
    ) -> None:
        """Validates every input of a call once, before anything is computed: the encoder's (`pixel_values` and the
        `observed` text and audio), the evolver's rollout inputs (actions and timestamps of context and future steps,
        mode, interventions, and `sample` / `num_samples` with the generator of its noise) and
        the pipeline's own (counts capped by `MAX_ROLLOUT_STEPS` / `MAX_INFERENCE_STEPS`, `output_type`,
        `output_modalities`, `generator`, `latents` (B·K, num_future_steps, C, H, W))."""
        if not isinstance(output_type, str) or output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        self.check_output_modalities(output_modalities)
        check_step_count("num_future_steps", num_future_steps)
        check_step_count("num_inference_steps", num_inference_steps, MAX_INFERENCE_STEPS)
        self.encoder.check_inputs(pixel_values, observed=observed)
        b, t = pixel_values.shape[:2]
        self.evolver.check_rollout_inputs(b, t, num_future_steps, actions, timestamps, mode, interventions)
        check_generator("generator", generator, batch_size=b)
        self.evolver._check_sampling(sample, num_samples, generator, batch_size=b)
        if latents is not None:
            config = self.decoder.config
            frame = (config.in_channels, config.sample_size, config.sample_size)
            check_shape(
                "latents",
                latents,
                (b * num_samples, num_future_steps, *frame),
                dtype=self.decoder.dtype,
                device=input_device(self.decoder),
            )
            check_finite("latents", latents)

    def check_output_modalities(self, output_modalities: tuple[str, ...]) -> None:
        """At least one of `OUTPUT_MODALITIES`, no repeats, and text or audio only from an encoder that has them."""
        if (
            not isinstance(output_modalities, (tuple, list))
            or not output_modalities
            or any(not isinstance(m, str) or m not in OUTPUT_MODALITIES for m in output_modalities)
            or len(set(output_modalities)) != len(output_modalities)
        ):
            raise ValueError(
                f"`output_modalities` must be a non-empty tuple of distinct entries of {OUTPUT_MODALITIES}, "
                f"got {output_modalities!r}."
            )
        encoded = tuple(self.encoder.config.modalities)
        missing = [m for m in output_modalities if m != "frames" and m not in encoded]
        if missing:
            raise ValueError(
                f"`output_modalities` asks for {missing}, which the encoder does not model (its modalities are "
                f"{list(encoded)})."
            )

    def prepare_latents(
        self,
        num_frames: int,
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None,
    ) -> torch.Tensor:
        """Gaussian noise (num_frames, C, H, W) at flow time σ = 1; with a list of G generators, each draws the
        noise of `num_frames / G` consecutive frames (in a call, those of one context's K sampled futures, K = 1
        without sampling)."""
        config = self.decoder.config
        frame = (config.in_channels, config.sample_size, config.sample_size)
        if not isinstance(generator, list):
            return randn_tensor((num_frames, *frame), generator=generator, device=device, dtype=dtype)
        if not generator or num_frames % len(generator):
            raise ValueError(
                f"`generator` must be a list whose length divides num_frames={num_frames}, got {len(generator)}."
            )
        share = (num_frames // len(generator), *frame)
        return torch.cat([randn_tensor(share, generator=g, device=device, dtype=dtype) for g in generator])

    def decode_units(
        self,
        units: torch.Tensor,
        num_inference_steps: int,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        previous_frame: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Samples frames (N, C, H, W) in [-1, 1] for state units (N, U, D) with `num_inference_steps` Euler steps,
        starting from `latents` (N, C, H, W) at σ = 1, or from noise drawn with `generator`. The decoder reads the
        units' frame subspace (`encoder.frame_subspace`). A decoder with `temporal_context` also takes each frame's
        `previous_frame` (N, C, H, W). The inputs are checked once here, not at every Euler step."""
        if checks_enabled():
            check_shape("units", units, ("N", "U", self.encoder.config.unit_dim), device=input_device(self.decoder))
            check_finite("units", units)
            check_step_count("num_inference_steps", num_inference_steps, MAX_INFERENCE_STEPS)
            check_generator("generator", generator, batch_size=units.shape[0])
            self._check_latents(units, latents, previous_frame)
        if latents is None:
            latents = self.prepare_latents(units.shape[0], units.dtype, units.device, generator)
        context = self.encoder.frame_subspace(units.to(self.encoder.dtype)).to(self.decoder.dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=units.device)
        with self.progress_bar(total=num_inference_steps) as progress_bar, inputs_checked():
            for t in self.scheduler.timesteps:
                velocity = self.decoder(latents, t.expand(latents.shape[0]), context, previous_frame).sample
                latents = self.scheduler.step(velocity, t, latents).prev_sample
                progress_bar.update()
        return latents.clamp(-1.0, 1.0)

    def _check_latents(
        self, units: torch.Tensor, latents: torch.Tensor | None, previous_frame: torch.Tensor | None
    ) -> None:
        """`decode_units`' optional noise and previous frames: (N, C, H, W) in the decoder's dtype, finite."""
        config = self.decoder.config
        shape = (units.shape[0], config.in_channels, config.sample_size, config.sample_size)
        for name, value in (("latents", latents), ("previous_frame", previous_frame)):
            if value is not None:
                check_shape(name, value, shape, dtype=self.decoder.dtype, device=input_device(self.decoder))
                check_finite(name, value)

    def decode_rollout(
        self,
        units: torch.Tensor,
        last_context_frame: torch.Tensor,
        num_inference_steps: int,
        latents: torch.Tensor,
    ) -> torch.Tensor:
        """Frames (B·n, C, H, W) for rolled-out units (B, n, U, D) from the noise `latents` (B·n, C, H, W): all
        steps in one batch, or, for a decoder with `temporal_context`, step by step in time (batched over
        trajectories), each conditioned on the frame decoded before it (the last context frame (B, C, H, W) for the
        first)."""
        b, n = units.shape[:2]
        if not self.decoder.config.temporal_context:
            return self.decode_units(units.flatten(0, 1), num_inference_steps, latents=latents)
        latents, decoded = latents.reshape(b, n, *latents.shape[1:]), []
        previous = last_context_frame.to(latents.dtype)
        for step in range(n):
            previous = self.decode_units(
                units[:, step], num_inference_steps, latents=latents[:, step], previous_frame=previous
            )
            decoded.append(previous)
        return torch.stack(decoded, dim=1).flatten(0, 1)

    @torch.no_grad()
    def __call__(
        self,
        pixel_values: torch.Tensor,
        actions: torch.Tensor | None = None,
        timestamps: torch.Tensor | None = None,
        num_future_steps: int | None = None,
        num_inference_steps: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        audio_values: torch.Tensor | None = None,
        audio_codes: torch.Tensor | None = None,
        audio_features: torch.Tensor | None = None,
        output_modalities: tuple[str, ...] = ("frames",),
        mode: str | None = None,
        interventions: object = None,
        use_engram: bool | None = None,
        sample: bool = False,
        num_samples: int = 1,
        latents: torch.Tensor | None = None,
    ) -> VeltrixPipelineOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.Tensor` of shape `(B, T, C, H, W)`): context frames in [-1, 1].
            actions (`torch.Tensor` of shape `(B, T + num_future_steps, A)`, *optional*): the action at every
                step, context and future; `None` evolves freely.
            timestamps (`torch.Tensor` of shape `(B, T + num_future_steps)`, *optional*): strictly increasing
                times in seconds of context and future steps, each step 1e-6 to 1e6 times the evolver's
                `dt_reference`; defaults to steps of `dt_reference`. The rollout's clock runs in float64.
            num_future_steps (`int`, *optional*): how many future steps to evolve and render, at most
                `MAX_ROLLOUT_STEPS` (100 000); defaults to `self.config.default_num_future_steps`.
            num_inference_steps (`int`, *optional*): Euler steps of the flow-matching decoder, at most
                `MAX_INFERENCE_STEPS` (1000); defaults to `self.config.default_num_inference_steps`.
            generator (`torch.Generator` or a list of `B` of them, *optional*): makes the noise reproducible (the
                same generators give the same output). A list holds one generator per context (trajectory), as
                diffusers' `randn_tensor` takes them: context b's decoder noise (with `num_samples = K`, that of
                all K futures of the context) is drawn from generator b alone, so without `sample=True` trajectory b
                renders as a call on that trajectory alone with generator b. With `sample=True` the evolver's noise
                comes from the same generators, one draw from each before the decoder's noise is drawn: with a list,
                context b's sampled futures too come from generator b alone. A list of another length than B raises
                a `ValueError`.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"`, `"pt"` or `"latent"` (units only).
            return_dict (`bool`, defaults to `True`): return a [`VeltrixPipelineOutput`] instead of a tuple.
            input_ids, attention_mask (`torch.Tensor` of shape `(B, T, L)`, *optional*): the context steps' captions
                as bytes (`byte_tokenize`), for an encoder with the text modality.
            audio_values (`(B, T, S)`), audio_codes (`(B, T, K)`), audio_features (`(B, T, K, V)`), *optional*: the
                context steps' audio, one of the three, for an encoder with the audio modality.
            output_modalities (`tuple[str, ...]`, defaults to `("frames",)`): what to read back from every evolved
                future state: `"frames"` (the flow decoder), `"audio"` (features and codes through `D_audio`),
                `"text"` (captions through the caption head). Text and audio need an encoder that models them.
            mode (`str`, *optional*): the evolution mode, `"free"`, `"conditional"` or `"counterfactual"` (see
                `VeltrixEvolverModel.rollout`); by default counterfactual when `interventions` are given, conditional
                when `actions` are, else free.
            interventions ([`VeltrixIntervention`] or a list of them, *optional*): the edits of the counterfactual
                branch (replacement future actions and/or a state impulse from a future step on). Both branches are
                rendered from the same noise, so their frames differ only by the intervention's effect.
            use_engram (`bool`, *optional*): whether the rollout is anchored by the pipeline's Engram memory (see
                `VeltrixEvolverModel.rollout(engram=)`); `out.memory_hits` then tells which future steps it
                remembered. Defaults to using the memory when the pipeline has one; `True` without one raises a
                `ValueError`, `False` rolls out as a pipeline without memory does.
            sample (`bool`, defaults to `False`): sample every future state from the evolver's stochastic head
                (`evolver.can_sample`, `config.sampling_head_layers > 0`) instead of predicting its mean; `True`
                with an evolver without the head raises a `ValueError`.
            num_samples (`int`, defaults to 1): with `sample=True`, how many futures K to sample from each context;
                all `B·K` are rendered, the K of context b at rows `b·K … b·K + K − 1` of every output (see
                [`VeltrixPipelineOutput`]), and `out.sample_spread` `(B, num_future_steps)` measures how far they
                spread. At most `MAX_NUM_SAMPLES`; `num_samples > 1` without `sample=True` raises a `ValueError`.
            latents (`torch.Tensor` of shape `(B·K, num_future_steps, C, H, W)`, *optional*): the decoder's initial
                noise (flow time σ = 1) of every future frame, in the layout of the `"pt"` frames (K = `num_samples`);
                given, it replaces the noise drawn from `generator` (which then seeds only the evolver's sampling),
                so the same latents give the same frames. Both branches of a counterfactual call start from it. A
                wrong shape raises a `ValueError` with the expected and the received shape.

        Floating inputs of any floating dtype are converted to the components' dtype (timestamps to float64) before
        they are checked; `out.timestamps` comes back in the dtype of the given timestamps. Every input is checked
        once, before anything is computed, and a bad one raises a `ValueError` naming it (`input_validation`).

        Examples:

        ```py
        >>> out = pipe(frames, num_future_steps=24, output_type="np")
        >>> out.frames.shape  # (B, 24, H, W, C)
        >>> out = pipe(frames, input_ids=ids, attention_mask=mask, output_modalities=("frames", "audio", "text"))
        >>> out.captions[0][0], out.audio_codes.shape  # ("the red ball hits the left wall. ...", (B, 8, K))
        >>> out = pipe(frames, sample=True, num_samples=4, generator=torch.Generator().manual_seed(0))
        >>> out.units.shape, out.sample_spread.shape  # ((B·4, 8, U, D), (B, 8))
        ```
        """
        engram = self.memory_for_call(use_engram)
        if num_future_steps is None:
            num_future_steps = self.config.default_num_future_steps
        if num_inference_steps is None:
            num_inference_steps = self.config.default_num_inference_steps
        observed = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "audio_values": audio_values,
            "audio_codes": audio_codes,
            "audio_features": audio_features,
        }
        device = self._execution_device
        # The one explicit conversion of input_validation's dtype policy, before the checks (which then see the values
        # as the models will): floating inputs to their component's dtype, timestamps to the float64 clock.
        timestamps_dtype = timestamps.dtype if isinstance(timestamps, torch.Tensor) else self.evolver.dtype
        pixel_values = to_model_dtype(pixel_values, device, self.encoder.dtype)
        latents = to_model_dtype(latents, device, self.decoder.dtype)
        actions = to_model_dtype(actions, device, self.evolver.dtype)
        timestamps = to_model_dtype(timestamps, device, CLOCK_DTYPE)
        interventions = convert_interventions(interventions, device, self.evolver.dtype)
        observed = {
            name: to_model_dtype(value, device, self.encoder.dtype)
            for name, value in observed.items()
            if value is not None
        }
        self.check_inputs(
            pixel_values,
            actions,
            timestamps,
            num_future_steps,
            num_inference_steps,
            output_type,
            output_modalities,
            mode,
            interventions,
            observed,
            generator,
            sample,
            num_samples,
            latents,
        )
        # Everything was checked above: the models skip their own checks (and the decoder its per-step ones).
        with inputs_checked():
            context = self.encoder(pixel_values, **observed).units
            rollout = self.evolver.rollout(
                context,
                num_future_steps,
                actions=actions,
                timestamps=timestamps,
                mode=mode,
                interventions=interventions,
                engram=engram,
                sample=sample,
                num_samples=num_samples,
                generator=generator,
            )
            units = rollout.units
            future_timestamps = rollout.timestamps.to(
                timestamps_dtype if timestamps_dtype.is_floating_point else units.dtype
            )
            counterfactual_units = getattr(rollout, "counterfactual_units", None)
            captions = future_audio_features = future_audio_codes = None
            if "text" in output_modalities:
                captions = self.encoder.generate_captions(units.to(self.encoder.dtype))
            if "audio" in output_modalities:
                future_audio_features, future_audio_codes = self.encoder.decode_audio(units.to(self.encoder.dtype))
            images = counterfactual_images = None
            if output_type != "latent" and "frames" in output_modalities:
                b, n = units.shape[:2]  # b = B·K futures
                if latents is None:
                    # A list of B generators draws the noise of consecutive rows: each its context's K futures.
                    latents = self.prepare_latents(b * n, self.decoder.dtype, units.device, generator)
                else:
                    latents = latents.flatten(0, 1)  # (B·K, n, C, H, W) -> (B·K·n, C, H, W), as drawn
                last_frame = pixel_values[:, -1].repeat_interleave(num_samples, dim=0)
                images = self.render_rollout(units, last_frame, num_inference_steps, latents, output_type)
                if counterfactual_units is not None:
                    counterfactual_images = self.render_rollout(
                        counterfactual_units, last_frame, num_inference_steps, latents, output_type
                    )
        self.maybe_free_model_hooks()
        counterfactual = {
            "counterfactual_frames": counterfactual_images,
            "counterfactual_units": counterfactual_units,
            "divergence": getattr(rollout, "divergence", None),
        }
        memory_hits = None if engram is None else rollout.memory_hits
        if not return_dict:
            # Those asked for, in this order.
            extras = (
                captions,
                future_audio_features,
                future_audio_codes,
                *counterfactual.values(),
                memory_hits,
                rollout.sample_spread,
            )
            return images, units, future_timestamps, *(value for value in extras if value is not None)
        return VeltrixPipelineOutput(
            frames=images,
            units=units,
            timestamps=future_timestamps,
            captions=captions,
            audio_features=future_audio_features,
            audio_codes=future_audio_codes,
            **counterfactual,
            memory_hits=memory_hits,
            sample_spread=rollout.sample_spread,
        )

    @torch.no_grad()
    def plan(
        self,
        pixel_values: torch.Tensor,
        goal: torch.Tensor,
        horizon: int,
        method: str = "cem",
        num_samples: int = 300,
        num_iterations: int = 3,
        top_k: int = 30,
        action_bounds: tuple | None = None,
        action_cost: float = 0.0,
        generator: torch.Generator | None = None,
        actions: torch.Tensor | None = None,
        timestamps: torch.Tensor | None = None,
        output_type: str = "latent",
        num_inference_steps: int | None = None,
        **search_settings,
    ) -> VeltrixPlanOutput:
        r"""Plans the actions that bring the world from the context frames to the goal (`VeltrixEvolverModel.plan`).

        The context is encoded once; candidate action sequences roll out from its cached recurrent state in one
        batched pass per iteration; the objective compares the last predicted state with the goal in the frame
        subspace (`encoder.frame_subspace`), what the decoder renders, plus `action_cost` times the mean squared action.

        Args:
            pixel_values (`torch.Tensor` of shape `(B, T, C, H, W)`): context frames in [-1, 1].
            goal (`torch.Tensor`): goal frames `(B, C, H, W)` in [-1, 1] (encoded here) or goal states `(B, U, D)`.
            horizon, method, num_samples, num_iterations, top_k, action_bounds, action_cost, generator: as in
                `VeltrixEvolverModel.plan`; `generator` also draws the decoder's noise when frames are rendered.
            actions (`torch.Tensor` of shape `(B, T - 1, A)`, *optional*): the actions that drove the context.
            timestamps (`torch.Tensor` of shape `(B, T + horizon)`, *optional*): times of context and planned steps.
            output_type (`str`, defaults to `"latent"`): `"latent"` returns states only; `"pil"`, `"np"` or `"pt"`
                also renders the planned trajectory into `out.frames` with the decoder.
            num_inference_steps (`int`, *optional*): the decoder's Euler steps when rendering.
            **search_settings: `initial_std`, `temperature`, `learning_rate`, `min_std` (`VeltrixPlannerSettings`).

        Returns:
            [`VeltrixPlanOutput`] with the best actions `(B, horizon, A)`, the predicted states and, when rendered,
            frames, and the objective per iteration.

        Examples:

        ```py
        >>> plan = pipe.plan(frames, goal_frame, horizon=25, method="cem", action_bounds=(-5.0, 5.0))
        >>> plan.actions.shape, plan.objective_per_iteration.shape  # ((B, 25, A), (B, 3))
        ```
        """
        if not isinstance(output_type, str) or output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        if num_inference_steps is None:
            num_inference_steps = self.config.default_num_inference_steps
        check_step_count("num_inference_steps", num_inference_steps, MAX_INFERENCE_STEPS)
        device = self._execution_device
        timestamps_dtype = timestamps.dtype if isinstance(timestamps, torch.Tensor) else self.evolver.dtype
        pixel_values = to_model_dtype(pixel_values, device, self.encoder.dtype)
        actions = to_model_dtype(actions, device, self.evolver.dtype)
        timestamps = to_model_dtype(timestamps, device, CLOCK_DTYPE)
        self.encoder.check_pixel_values(pixel_values)
        b = pixel_values.shape[0]
        config = self.encoder.config
        units_shape = (b, config.num_units_per_step, config.unit_dim)
        frame_shape = (b, config.num_channels, config.image_size, config.image_size)
        if not isinstance(goal, torch.Tensor) or tuple(goal.shape) not in (units_shape, frame_shape):
            found = tuple(goal.shape) if isinstance(goal, torch.Tensor) else type(goal).__name__
            raise ValueError(f"`goal` must be frames {frame_shape} or states {units_shape}, got {found}.")
        is_frame = tuple(goal.shape) == frame_shape
        goal = to_model_dtype(goal, device, self.encoder.dtype if is_frame else self.evolver.dtype)
        if is_frame:
            self.encoder.check_pixel_values(goal[:, None])
        with inputs_checked():
            context = self.encoder(pixel_values).units.to(self.evolver.dtype)
            if is_frame:
                goal = self.encoder(goal[:, None]).units[:, 0].to(self.evolver.dtype)
        planned = self.evolver.plan(
            context,
            goal,
            horizon,
            method=method,
            num_samples=num_samples,
            num_iterations=num_iterations,
            top_k=top_k,
            action_bounds=action_bounds,
            action_cost=action_cost,
            generator=generator,
            context_actions=actions,
            timestamps=timestamps,
            goal_projection=lambda units: self.encoder.frame_subspace(units.to(self.encoder.dtype)),
            **search_settings,
        )
        planned.timestamps = planned.timestamps.to(timestamps_dtype)
        if output_type != "latent":
            latents = self.prepare_latents(b * horizon, self.decoder.dtype, device, generator)
            planned.frames = self.render_rollout(
                planned.units, pixel_values[:, -1], num_inference_steps, latents, output_type
            )
        self.maybe_free_model_hooks()
        return planned

    def memory_for_call(self, use_engram: bool | None) -> nn.Module | None:
        """The Engram memory that a call with `use_engram` rolls out with: the pipeline's (None without one) when
        `use_engram` is None, the pipeline's for True, None for False. Raises a `ValueError` naming `use_engram` when
        it is not None or a bool, or True for a pipeline without memory, and naming `engram` when the memory is not
        in the evolver's dtype (the rollout runs without the evolver's own checks)."""
        if use_engram is not None and not isinstance(use_engram, bool):
            raise ValueError(f"`use_engram` must be None or a bool, got {use_engram!r}.")
        if use_engram and self.engram is None:
            raise ValueError(
                "`use_engram=True` needs a pipeline with an Engram memory (its `engram` component), but this "
                "pipeline has none; got use_engram=True."
            )
        if use_engram is False or self.engram is None:
            return None
        if self.engram.dtype != self.evolver.dtype:
            raise ValueError(
                f"`engram` must be in the evolver's dtype {self.evolver.dtype}, got {self.engram.dtype}: move the "
                "whole pipeline with `.to()`."
            )
        return self.engram

    def render_rollout(
        self,
        units: torch.Tensor,
        last_context_frame: torch.Tensor,
        num_inference_steps: int,
        latents: torch.Tensor,
        output_type: str,
    ) -> list[list[PIL.Image.Image]] | np.ndarray | torch.Tensor:
        """Rolled-out units (B, n, U, D) -> their frames from the noise `latents` (B·n, C, H, W), in `output_type`
        (`"pil"`: B lists of n images; `"np"` / `"pt"`: (B, n, ...) in [0, 1])."""
        b, n = units.shape[:2]
        decoded = self.decode_rollout(units, last_context_frame, num_inference_steps, latents)
        processed = self.image_processor.postprocess(decoded, output_type=output_type)
        if output_type == "pil":
            return [processed[i * n : (i + 1) * n] for i in range(b)]
        return processed.reshape(b, n, *processed.shape[1:])


class VeltrixWorldModel(PreTrainedModel):
    r"""A saved Veltrix pipeline as one transformers model, what `AutoModel.from_pretrained(folder)` and
    `pipeline("world-rollout", model=folder)` load.

    It has no weights of its own: `from_pretrained` loads the folder's [`VeltrixPipeline`] and holds its components as
    submodules (so `.to()` moves the pipeline), and the weights stay once, in the component folders.

    Args:
        config ([`VeltrixWorldConfig`]): the folder's root `config.json`.
        pipeline ([`VeltrixPipeline`]): the loaded pipeline.
    """

    config_class = VeltrixWorldConfig
    base_model_prefix = "world"
    main_input_name = "pixel_values"

    def __init__(self, config: VeltrixWorldConfig, pipeline: VeltrixPipeline):
        super().__init__(config)
        self.pipeline = pipeline
        for name, component in pipeline.components.items():
            if isinstance(component, nn.Module):
                self.add_module(name, component)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Initialises nothing: the wrapper owns no weights and its components arrive loaded (`post_init` would
        otherwise re-initialise the diffusers decoder, which transformers does not know as loaded)."""

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        config: VeltrixWorldConfig | None = None,
        trust_remote_code: bool = False,
        dtype: torch.dtype | dict[str, torch.dtype] | str | None = None,
        cache_dir: str | None = None,
        revision: str | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        force_download: bool = False,
        strict_weights: bool = True,
        torch_dtype: torch.dtype | dict[str, torch.dtype] | str | None = None,
        variant: str | None = None,
        device_map: str | dict[str, str | int | torch.device] | None = None,
        use_safetensors: bool | None = None,
        subfolder: str = "",
        proxies: dict[str, str] | None = None,
        **loader_kwargs,
    ) -> "VeltrixWorldModel":
        """Loads the [`VeltrixPipeline`] of a folder or Hub repository id (`VeltrixPipeline.from_pretrained`, with
        its checks; `strict_weights`, `variant` and `use_safetensors` as there) and wraps it, taking the loading
        options as transformers' `from_pretrained` and `pipeline(..., dtype=, device_map=, model_kwargs=)` pass
        them: `dtype` (or `torch_dtype`; `"auto"` keeps the saved dtypes) and `device_map`, one of `None`, `"auto"`
        (= the pipeline's `"balanced"`), `"balanced"`, `"cpu"`, the accelerator's name, or `{"": device}` (the whole
        model on `device`); the model then records `hf_device_map = {"": device}`, so that `pipeline()` runs it where
        it was loaded. `subfolder` loads the pipeline saved in that folder of the repository. `proxies` is accepted
        as `None` only: huggingface_hub (>= 1.0) takes proxies from the `HTTP(S)_PROXY` environment variables.
        `loader_kwargs` are what `AutoModel` and `pipeline()` pass for their own bookkeeping (`_from_auto`,
        `_from_pipeline`, `code_revision`, `adapter_kwargs`); anything else raises."""
        unexpected = sorted(set(loader_kwargs) - {"_from_auto", "_from_pipeline", "code_revision", "adapter_kwargs"})
        if unexpected:
            raise TypeError(f"{cls.__name__}.from_pretrained() got unexpected keyword arguments {unexpected}.")
        if proxies is not None:
            raise ValueError(
                f"`proxies` must be None (huggingface_hub reads proxies from the HTTP_PROXY and HTTPS_PROXY "
                f"environment variables), got {proxies!r}."
            )
        download = dict(cache_dir=cache_dir, revision=revision, token=token, local_files_only=local_files_only)
        if subfolder:
            pretrained_model_name_or_path = resolve_repository(
                pretrained_model_name_or_path, force_download=force_download, subfolder=subfolder, **download
            )
        pipeline = VeltrixPipeline.from_pretrained(
            pretrained_model_name_or_path,
            trust_remote_code=trust_remote_code,
            dtype=None if dtype == "auto" else dtype,
            torch_dtype=None if torch_dtype == "auto" else torch_dtype,
            force_download=force_download,
            strict_weights=strict_weights,
            variant=variant,
            device_map=pipeline_device_map(device_map),
            use_safetensors=use_safetensors,
            **download,
        )
        if config is None:
            config = VeltrixWorldConfig.from_pretrained(pretrained_model_name_or_path, **download)
        model = cls(config, pipeline).eval()
        if device_map is not None:
            model.hf_device_map = {"": str(pipeline.device)}
        return model

    def forward(self, pixel_values: torch.Tensor, **call_arguments) -> VeltrixPipelineOutput:
        """Runs the pipeline: frames (B, T, C, H, W) in [-1, 1] -> [`VeltrixPipelineOutput`]; `call_arguments` are
        those of `VeltrixPipeline.__call__` (an unknown one raises its `TypeError`)."""
        return self.pipeline(pixel_values, **call_arguments)

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        max_shard_size: int | str | None = None,
        variant: str | None = None,
        safe_serialization: bool = True,
    ) -> None:
        """Saves the whole repository through `VeltrixPipeline.save_pretrained` (`variant` and the safetensors-only
        `safe_serialization` as there)."""
        self.pipeline.save_pretrained(
            save_directory, safe_serialization=safe_serialization, variant=variant, max_shard_size=max_shard_size
        )


VeltrixWorldConfig.folder_check = VeltrixPipeline.check_folder

__all__ = ["VeltrixPipeline", "VeltrixPipelineOutput", "VeltrixWorldModel"]
