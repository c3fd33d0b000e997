"""The Hugging Face Hub repository layout of a saved `VeltrixPipeline`: one folder that every loader reads, and the
checks that run before a folder is loaded.

On top of what `DiffusionPipeline.save_pretrained` writes (each component's config and safetensors weights, the
scheduler config, `model_index.json`), `write_hub_code` adds the code, flattened so that every file stands alone
(see `source_inlining`):

    model_index.json          components named by their own code files, `_class_name` by the root file,
                              `_veltrix_format` (the layout version)
    pipeline_veltrix.py       the pipeline: diffusers' custom pipeline and the transformers `auto_map` target
    config.json               `VeltrixWorldConfig`: `auto_map` and `custom_pipelines` for `pipeline(model=folder)`
    encoder/                  config.json (`auto_map`: AutoConfig, AutoModel), model.safetensors,
                              modeling_veltrix_encoder.py
    evolver/                  likewise
    decoder/                  config.json, diffusion_pytorch_model.safetensors, modeling_veltrix_decoder.py
    scheduler/                scheduler_config.json

Weights are written once, in the component folders; the root holds code and configuration only.
"""

import inspect
import json
import os

from huggingface_hub import snapshot_download
from transformers import PreTrainedConfig, PreTrainedModel

from .pipeline_world_rollout import TASK, VeltrixWorldConfig, VeltrixWorldRolloutPipeline
from .source_inlining import inline_relative_imports
from .weights_check import VeltrixRepositoryError, check_safetensors

HUB_FORMAT = 1  # the layout version written to model_index.json; a loader reads layouts up to its own
FORMAT_KEY = "_veltrix_format"
MODEL_INDEX = "model_index.json"
LIBRARIES = ("diffusers", "transformers")
# Card media that no loader reads; `snapshot_download` of a repository id skips them.
NOT_LOADED = ["README.md", "*.gif", "*.png"]


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise VeltrixRepositoryError(f"{path} is missing.")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise VeltrixRepositoryError(f"{path} is not valid JSON: {error}.") from error


def _write_json(path: str, payload: dict) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
        handle.write("\n")


def module_name(cls: type) -> str:
    """The file name (without `.py`) under which `cls`'s code is saved: the last part of its module's name."""
    return cls.__module__.rsplit(".", 1)[-1]


def is_library_class(cls: type) -> bool:
    """Whether `cls` comes with diffusers or transformers (its code is not saved)."""
    return cls.__module__.split(".")[0] in LIBRARIES


def write_hub_code(pipeline, folder: str) -> None:
    """Adds the self-contained code files, `auto_map`s, the root `config.json` and the code references of
    `model_index.json` to `folder`, which `DiffusionPipeline.save_pretrained` has just written for `pipeline`."""
    root = module_name(type(pipeline))
    code_files = {root: os.path.join(folder, f"{root}.py")}
    index_path = os.path.join(folder, MODEL_INDEX)
    index = _read_json(index_path)
    for name, component in pipeline.components.items():
        if component is None or is_library_class(type(component)):
            continue
        cls = type(component)
        module = module_name(cls)
        if module in code_files:
            raise ValueError(
                f"The code of component `{name}` would be saved as {module}.py, a name already taken by "
                f"{code_files[module]}: the Hub loaders keep the code of all components in one namespace."
            )
        component_folder = os.path.join(folder, name)
        code_files[module] = os.path.join(component_folder, f"{module}.py")
        for stale in os.listdir(component_folder):  # what transformers copied for its own remote-code loader
            if stale.endswith(".py"):
                os.remove(os.path.join(component_folder, stale))
        with open(code_files[module], "w", encoding="utf-8") as handle:
            handle.write(inline_relative_imports(inspect.getfile(cls)))
        if isinstance(component, PreTrainedModel):
            config_path = os.path.join(component_folder, "config.json")
            config = _read_json(config_path)
            config["auto_map"] = {
                "AutoConfig": f"{module}.{type(component.config).__name__}",
                "AutoModel": f"{module}.{cls.__name__}",
            }
            _write_json(config_path, config)
        index[name] = [module, cls.__name__]
    with open(code_files[root], "w", encoding="utf-8") as handle:
        handle.write(inline_relative_imports(inspect.getfile(type(pipeline))))
    index["_class_name"] = [root, type(pipeline).__name__]
    index[FORMAT_KEY] = HUB_FORMAT
    _write_json(index_path, index)
    world = VeltrixWorldConfig()
    world.auto_map = {"AutoConfig": f"{root}.VeltrixWorldConfig", "AutoModel": f"{root}.VeltrixWorldModel"}
    world.custom_pipelines = {
        TASK: {"impl": f"{root}.{VeltrixWorldRolloutPipeline.__name__}", "pt": ["AutoModel"], "type": "video"}
    }
    world.save_pretrained(folder)


def _check_component(folder: str, name: str, library: str) -> None:
    """The component folder exists, holds its config and, for a model, complete safetensors weights."""
    path = os.path.join(folder, name)
    if not os.path.isdir(path):
        raise VeltrixRepositoryError(f"{path} is missing: {MODEL_INDEX} lists the component `{name}`.")
    files = os.listdir(path)
    if not any(file.endswith(".json") for file in files):
        raise VeltrixRepositoryError(f"{path} holds no configuration (.json) file.")
    weights = [file for file in files if file.endswith(".safetensors")]
    if name == "scheduler" or (library in LIBRARIES and not weights):
        return  # a scheduler (or another library object without weights, e.g. a tokenizer) is configuration only
    if not weights:
        raise VeltrixRepositoryError(f"{path} holds no .safetensors weights.")
    for file in weights:
        check_safetensors(os.path.join(path, file))


def check_repository(folder: str) -> dict:
    """Checks a saved pipeline folder before anything is loaded from it and returns its `model_index.json`.

    Raises `VeltrixRepositoryError` naming the file when `model_index.json` is missing or written by a newer layout
    (`_veltrix_format`), or a component's folder, configuration or weights are missing or truncated.
    """
    index_path = os.path.join(folder, MODEL_INDEX)
    index = _read_json(index_path)
    found = index.get(FORMAT_KEY, 0)
    if not isinstance(found, int) or found > HUB_FORMAT:
        raise VeltrixRepositoryError(
            f"{index_path} was written in Veltrix repository format {found!r}; this code reads formats up to "
            f"{HUB_FORMAT}. Upgrade the `veltrix` package, or load the folder's own code with "
            "`DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`."
        )
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or entry[0] is None:
            continue
        _check_component(folder, name, entry[0])
    return index


def check_component_config(folder: str, name: str, cls: type) -> None:
    """Raises `VeltrixRepositoryError` naming `<folder>/<name>/config.json` when it sets a field that `cls` does not
    know: a configuration written by another, incompatible version (newer, or older with a setting since removed),
    whose extra settings would otherwise be dropped silently."""
    path = os.path.join(folder, name, "config.json")
    saved = _read_json(path)
    if issubclass(cls, PreTrainedModel):
        known = set(cls.config_class().to_dict()) | set(PreTrainedConfig().to_dict()) | {"auto_map", "torch_dtype"}
        unknown = sorted(set(saved) - known)
    else:
        _, unused, _ = cls.extract_init_dict(saved)
        unknown = sorted(key for key in unused if not key.startswith("_") and key != "auto_map")
    if unknown:
        raise VeltrixRepositoryError(
            f"{path} sets {unknown}, which {cls.__name__} of this version does not know: it was written by another, "
            "incompatible version, and loading it would drop those settings. Use the version that wrote it, or load "
            "the folder with its own code (`trust_remote_code=True`)."
        )


def resolve_repository(
    pretrained_model_name_or_path: str | os.PathLike,
    cache_dir: str | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
) -> str:
    """A local folder as it is, or a Hub repository id downloaded into (or found in) the Hugging Face cache."""
    path = str(pretrained_model_name_or_path)
    if os.path.isdir(path):
        return path
    if os.path.exists(path) or path.count("/") != 1:
        raise VeltrixRepositoryError(f"{path} is neither a folder nor a Hub repository id (`namespace/name`).")
    return snapshot_download(
        path,
        revision=revision,
        cache_dir=cache_dir,
        token=token,
        local_files_only=local_files_only,
        force_download=force_download,
        ignore_patterns=NOT_LOADED,
    )
