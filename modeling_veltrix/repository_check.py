"""Checks a saved pipeline folder before a loader reads it, so that a damaged or incompatible folder gets an error
naming the file instead of a library error (or a half-loaded model): its layout version, components, configs and
safetensors weights (`weights_check`). Also the atomic writes that saves use.

The layout of a saved pipeline folder (written by `VeltrixPipeline.save_pretrained`; the installed package adds the
code files with its Hub export):

    model_index.json          components, `_class_name`, `_veltrix_format` (the layout version), call defaults
    pipeline_veltrix.py       the root pipeline file (diffusers' custom pipeline, the transformers `auto_map` target)
    config.json               `VeltrixWorldConfig`: `auto_map` and `custom_pipelines` for `pipeline(model=folder)`
    encoder/, evolver/        config.json (`auto_map`), model.safetensors, the component's own code file
    decoder/                  config.json, diffusion_pytorch_model.safetensors, its code file
    scheduler/                scheduler_config.json
"""

import json
import os
import shutil
from collections.abc import Callable

from huggingface_hub import snapshot_download
from transformers import PreTrainedConfig, PreTrainedModel

from .weights_check import VeltrixRepositoryError, check_safetensors

HUB_FORMAT = 1  # the layout version written to model_index.json; a loader reads layouts up to its own
FORMAT_KEY = "_veltrix_format"
MODEL_INDEX = "model_index.json"
LIBRARIES = ("diffusers", "transformers")
# Card media that no loader reads; `snapshot_download` of a repository id skips them.
NOT_LOADED = ["README.md", "*.gif", "*.png"]


def read_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise VeltrixRepositoryError(f"{path} is missing.")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise VeltrixRepositoryError(f"{path} is not valid JSON: {error}.") from error


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
    index = read_json(index_path)
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
    saved = read_json(path)
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


def write_json_atomic(path: str, payload: dict) -> None:
    """Writes JSON (indented, keys sorted) to a temporary file next to `path`, then renames it, so no half-written
    file is left."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(tmp, path)


def write_folder_atomically(write: Callable[[str], None], target: str | os.PathLike) -> None:
    """Calls `write(staging)` on a fresh folder next to `target`, then renames it to `target`: `target` never holds a
    partial folder, and what it held before is replaced whole."""
    target = os.path.normpath(os.fspath(target))
    staging, previous = f"{target}.tmp", f"{target}.old"
    for path in (staging, previous):
        shutil.rmtree(path, ignore_errors=True)
    write(staging)
    if os.path.isdir(target):
        os.replace(target, previous)
    os.replace(staging, target)
    shutil.rmtree(previous, ignore_errors=True)
