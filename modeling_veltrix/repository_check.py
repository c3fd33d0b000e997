"""Checks a saved pipeline folder before a loader reads it, so that a damaged or incompatible folder gets an error
naming the file instead of a library error (or a half-loaded model): its layout version, components, configs and
safetensors weights (`weights_check`), and whether the loaded components fit together (`check_components_fit`). Also
the atomic writes that saves use (`write_folder_atomically`, `write_json_atomic`) and the save id that tells one save
from a mix of two (`content_save_id`, `stamp_saved_folder`, `check_one_save`).

The layout of a saved pipeline folder (written by `VeltrixPipeline.save_pretrained`; the installed package adds the
code files with its Hub export):

    model_index.json          components, `_class_name`, `_veltrix_format` (the layout version), call defaults,
                              `_veltrix_save_id` (also in every component's configuration)
    pipeline_veltrix.py       the root pipeline file (diffusers' custom pipeline, the transformers `auto_map` target)
    config.json               `VeltrixWorldConfig`: `auto_map` and `custom_pipelines` for `pipeline(model=folder)`
    encoder/, evolver/        config.json (`auto_map`), model.safetensors, the component's own code file
    engram/                   the same, for a pipeline with an Engram memory (else `"engram": [null, null]` in
                              model_index.json)
    decoder/                  config.json, diffusion_pytorch_model.safetensors, its code file
    scheduler/                scheduler_config.json
"""

import ctypes
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from functools import partial
from types import SimpleNamespace

from huggingface_hub import snapshot_download
from safetensors.torch import load_file
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel

from .weights_check import VeltrixRepositoryError, check_safetensors, weights_fingerprint

HUB_FORMAT = 1  # the layout version written to model_index.json; a loader reads layouts up to its own
FORMAT_KEY = "_veltrix_format"
# The id of one save (`content_save_id`), written into model_index.json and every component's configuration by
# `VeltrixPipeline.save_pretrained` and checked by its `from_pretrained`: see `check_one_save`.
SAVE_ID_KEY = "_veltrix_save_id"
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

    Raises `VeltrixRepositoryError` naming the file when `model_index.json` is missing, has a malformed entry
    (`component_entries`) or was written by a newer layout (`_veltrix_format`), or a component's folder,
    configuration or weights are missing or truncated.
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
    for name, entry in component_entries(index, index_path).items():
        _check_component(folder, name, entry[0])
    return index


def component_entries(index: dict, index_path: str) -> dict[str, list]:
    """The components of a `model_index.json` (name -> `[library or code file, class name]`), without those left out
    (`[null, null]`). Raises `VeltrixRepositoryError` naming `index_path` and the entry when `_class_name` or a
    component entry is not a pair of strings."""
    class_name = index.get("_class_name")
    if not (isinstance(class_name, (str, list))):
        raise VeltrixRepositoryError(
            f"{index_path}: `_class_name` must be a class name or a [file, class name] pair, got {class_name!r}."
        )
    entries = {}
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list):
            continue  # bookkeeping (`_class_name`, `_veltrix_format`, ...) or a saved setting (a call default)
        if entry == [None, None]:
            continue
        if len(entry) != 2 or not all(isinstance(part, str) and part for part in entry):
            raise VeltrixRepositoryError(
                f"{index_path}: the component entry `{name}` must be a [library or code file, class name] pair of "
                f"strings (or [null, null] for a component left out), got {entry!r}."
            )
        entries[name] = entry
    return entries


def check_component_config(folder: str, name: str, cls: type) -> None:
    """Raises `VeltrixRepositoryError` naming `<folder>/<name>/config.json` when it sets a field that `cls` does not
    know: a configuration written by another, incompatible version (newer, or older with a setting since removed),
    whose extra settings would otherwise be dropped silently."""
    path = os.path.join(folder, name, "config.json")
    saved = read_json(path)
    if issubclass(cls, PreTrainedModel):
        known = set(cls.config_class().to_dict()) | set(PreTrainedConfig().to_dict()) | {"auto_map", "torch_dtype"}
        known.add(SAVE_ID_KEY)
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
    subfolder: str = "",
) -> str:
    """A local folder as it is, or a Hub repository id downloaded into (or found in) the Hugging Face cache; with a
    `subfolder` (a relative path), that folder inside it (only its files are downloaded)."""
    path = str(pretrained_model_name_or_path)
    if not isinstance(subfolder, str) or os.path.isabs(subfolder) or ".." in subfolder.split("/"):
        raise ValueError(f"`subfolder` must be a relative path inside the repository, got {subfolder!r}.")
    subfolder = subfolder.strip("/")
    if os.path.isdir(path):
        if subfolder and not os.path.isdir(os.path.join(path, subfolder)):
            raise VeltrixRepositoryError(f"{path} has no folder {subfolder!r} (the `subfolder` argument).")
        return os.path.join(path, subfolder) if subfolder else path
    if os.path.exists(path) or path.count("/") != 1:
        raise VeltrixRepositoryError(f"{path} is neither a folder nor a Hub repository id (`namespace/name`).")
    snapshot = snapshot_download(
        path,
        revision=revision,
        cache_dir=cache_dir,
        token=token,
        local_files_only=local_files_only,
        force_download=force_download,
        allow_patterns=f"{subfolder}/*" if subfolder else None,
        ignore_patterns=NOT_LOADED,
    )
    return os.path.join(snapshot, subfolder) if subfolder else snapshot


def write_json_atomic(path: str, payload: dict) -> None:
    """Writes JSON (indented, keys sorted) to a uniquely named temporary file next to `path`, then renames it over
    `path`, so no half-written file is ever at `path`."""
    handle, tmp = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=os.path.dirname(path) or "."
    )
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(payload, stream, indent=2, sort_keys=True)
            stream.write("\n")
        os.chmod(tmp, 0o644)  # `mkstemp` makes it private; a saved file is as readable as any other
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _exchange(first: str, second: str) -> bool:
    """Swaps two existing paths in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`); False where the system or
    file system cannot, and nothing was changed."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None) if os.name == "posix" else None
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0


def _recover_interrupted_save(target: str, staging: str, previous: str) -> None:
    """Cleans what a killed save left next to `target`: a save killed between its two renames (where the atomic swap
    is not available) left no `target` but the complete old folder at `previous`, which is moved back first; then the
    leftovers `staging` (possibly partial) and `previous` are deleted. Nothing at `target` is ever deleted."""
    if not os.path.exists(target) and os.path.isdir(previous):
        os.replace(previous, target)
    for path in (staging, previous):
        shutil.rmtree(path, ignore_errors=True)


def write_folder_atomically(write: Callable[[str], None], target: str | os.PathLike) -> None:
    """Calls `write(staging)` on a fresh folder `<target>.tmp`, then swaps it in with renames; the old folder is
    deleted only after the new one is at `target`.

    Where Linux's atomic exchange is available, `target` always holds one complete folder, old or new. Elsewhere the
    old folder is renamed to `<target>.old` and the new one to `target`: a kill between the two renames leaves the
    old folder at `<target>.old`, which the next save moves back before anything else. A kill at any other point
    leaves the old or the new complete folder at `target`, and possibly a `.tmp` / `.old` sibling that the next save
    deletes. One saver at a time per `target`.
    """
    target = os.path.normpath(os.fspath(target))
    staging, previous = f"{target}.tmp", f"{target}.old"
    _recover_interrupted_save(target, staging, previous)
    write(staging)
    if os.path.isdir(target) and _exchange(staging, target):
        os.replace(staging, previous)  # `staging` now names the old folder
    else:
        if os.path.exists(target):
            os.replace(target, previous)
        os.replace(staging, target)
    shutil.rmtree(previous, ignore_errors=True)


def content_save_id(folder: str) -> str:
    """The save id of the pipeline folder `folder`: the SHA-256 of its content (every file's path and bytes, JSON
    files without `SAVE_ID_KEY` and `_name_or_path`), like the sha256 by which the Hub identifies each LFS file.

    A content id rather than a random one: saving the same pipeline twice writes identical files, so re-uploading an
    unchanged pipeline changes nothing on the Hub, while two different saves always differ. (Its limit: a load during
    which the folder is re-saved twice, ending with the very content it started with, cannot be told apart.)"""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            digest.update(os.path.relpath(path, folder).encode())
            if name.endswith(".json"):
                payload = {k: v for k, v in read_json(path).items() if k not in (SAVE_ID_KEY, "_name_or_path")}
                digest.update(json.dumps(payload, sort_keys=True).encode())
            else:
                with open(path, "rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(block)
    return digest.hexdigest()


def _config_files(folder: str, name: str) -> list[str]:
    """The JSON configuration files of the component folder `<folder>/<name>`."""
    path = os.path.join(folder, name)
    return sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".json"))


def stamp_saved_folder(folder: str, save_id: str) -> None:
    """Writes `save_id` into `model_index.json` and every component's configuration (`SAVE_ID_KEY`), and removes the
    loader's local path (`_name_or_path`) from every configuration of the folder, so nothing saved names the saver's
    disk."""
    index_path = os.path.join(folder, MODEL_INDEX)
    index = read_json(index_path)
    stamped = [index_path] + [f for name in component_entries(index, index_path) for f in _config_files(folder, name)]
    root_config = os.path.join(folder, "config.json")
    for path in stamped + ([root_config] if os.path.isfile(root_config) else []):
        payload = read_json(path)
        payload.pop("_name_or_path", None)
        if path in stamped:
            payload[SAVE_ID_KEY] = save_id
        write_json_atomic(path, payload)


def read_save_ids(folder: str, index: dict) -> dict[str, object]:
    """File -> the save id it holds (`None` where it holds none) of `model_index.json` and every component config."""
    index_path = os.path.join(folder, MODEL_INDEX)
    files = [f for name in component_entries(index, index_path) for f in _config_files(folder, name)]
    return {index_path: read_json(index_path).get(SAVE_ID_KEY)} | {f: read_json(f).get(SAVE_ID_KEY) for f in files}


def check_one_save(folder: str, index: dict) -> None:
    """Raises `VeltrixRepositoryError` naming the files when `model_index.json` (re-read now) and the component
    configs of `folder` do not all carry the save id of `index` (the `model_index.json` read before loading): the
    folder was re-saved while it was being loaded, or its component folders come from different saves. A folder
    written before save ids existed (no id in `index`) is not checked."""
    expected = index.get(SAVE_ID_KEY)
    if expected is None:
        return
    try:
        found = read_save_ids(folder, index)
    except (FileNotFoundError, VeltrixRepositoryError) as error:
        raise VeltrixRepositoryError(f"{folder} changed while it was being loaded: {error}") from error
    other = {path: value for path, value in found.items() if value != expected}
    if other:
        raise VeltrixRepositoryError(
            f"{folder} mixes saves: {os.path.join(folder, MODEL_INDEX)} was read with {SAVE_ID_KEY} {expected!r}, but "
            + ", ".join(f"{path} has {value!r}" for path, value in other.items())
            + ". It was re-saved while it was being loaded (load it again), or its components were copied from "
            "different saves (save the pipeline again)."
        )


def save_in_progress(folder: str) -> bool:
    """Whether a save of `folder` (`write_folder_atomically`) is under way: its staging or previous folder exists."""
    target = os.path.normpath(folder)
    return os.path.exists(f"{target}.tmp") or os.path.exists(f"{target}.old")


def resaved_since(folder: str, index: dict) -> bool:
    """Whether `folder`'s `model_index.json` no longer carries the save id of `index` (read earlier), or is gone for
    now: another process saved the folder in between."""
    try:
        return read_json(os.path.join(folder, MODEL_INDEX)).get(SAVE_ID_KEY) != index.get(SAVE_ID_KEY)
    except VeltrixRepositoryError:
        return True


# Settings that must agree between components: (component, setting, component it must equal, setting).
MATCHING_SETTINGS = (
    ("evolver", "num_units_per_step", "encoder", "num_units_per_step"),
    ("evolver", "unit_dim", "encoder", "unit_dim"),
    ("evolver", "action_dim", "encoder", "action_dim"),
    ("decoder", "cross_attention_dim", "encoder", "frame_unit_dim"),
    ("decoder", "sample_size", "encoder", "image_size"),
    ("decoder", "in_channels", "encoder", "num_channels"),
)


def component_mismatches(configs: dict[str, object]) -> list[tuple[str, str]]:
    """(component, message) for every setting of `MATCHING_SETTINGS` on which the component configs `configs`
    (component name -> config; a missing component or setting is skipped) disagree, and for a decoder that cannot
    attend to all of the encoder's units per step."""
    found = []
    for name, key, other, other_key in MATCHING_SETTINGS:
        value, expected = getattr(configs.get(name), key, None), getattr(configs.get(other), other_key, None)
        if None not in (value, expected) and value != expected:
            found.append((name, f"`{name}.{key}` must equal `{other}.{other_key}` ({expected}), got {value}."))
    capacity = getattr(configs.get("decoder"), "max_context_units", None)
    units = getattr(configs.get("encoder"), "num_units_per_step", None)
    if None not in (capacity, units) and capacity < units:
        found.append(
            (
                "decoder",
                f"`decoder.max_context_units` must be >= `encoder.num_units_per_step` ({units}), got {capacity}.",
            )
        )
    return found


# What an Engram memory's configuration records of the models it was built for: (setting, component).
ENGRAM_FINGERPRINTS = (("encoder_fingerprint", "encoder"), ("evolver_fingerprint", "evolver"))


def engram_mismatches(
    engram: object, evolver_config: object | None, fingerprint_of: Callable[[str], str | None]
) -> list[str]:
    """A message for every way the Engram memory `engram` (a `VeltrixEngramModel`, possibly on the meta device) does
    not fit the pipeline it is given to: the state shape, and the injection layers and hidden width of its parametric
    memory, against the evolver of `evolver_config` (`engram.check_fits_evolver`; not checked without an evolver), and
    each fingerprint it records (`ENGRAM_FINGERPRINTS`, when set) against `fingerprint_of(component)`, the
    `weights_fingerprint` of the pipeline's component (None: no such component). `fingerprint_of` is called only for
    the fingerprints the memory records (it hashes every weight)."""
    found = []
    if evolver_config is not None:
        try:
            engram.check_fits_evolver(evolver_config)
        except ValueError as error:
            found.append(str(error))
    for key, name in ENGRAM_FINGERPRINTS:
        expected = getattr(engram.config, key, None)
        got = None if expected is None else fingerprint_of(name)
        if got is not None and got != expected:
            found.append(
                f"`engram.{key}` is {expected!r}: the memory was built for the {name} of that weights_fingerprint, "
                f"but the {name} given has weights_fingerprint {got!r}. Use the {name} it was built for, or rebuild "
                f"the memory for this {name}."
            )
    return found


def loaded_fingerprint(components: dict[str, object], name: str) -> str | None:
    """The `weights_fingerprint` of the loaded model `components[name]`; None where there is no such model."""
    model = components.get(name)
    return weights_fingerprint(model) if isinstance(model, nn.Module) else None


def saved_fingerprint(paths: list[str]) -> str:
    """The `weights_fingerprint` of the model saved as the safetensors files `paths` (its shards), read from the
    files: a model whose weights matched them tensor for tensor (`check_saved_weights`) has exactly these tensors."""
    tensors = {}
    for path in paths:
        tensors.update(load_file(path))
    return weights_fingerprint(SimpleNamespace(state_dict=lambda: tensors))


def check_components_fit(
    folder: str, components: dict[str, object], fingerprint_of: Callable[[str], str | None] | None = None
) -> None:
    """Raises `VeltrixRepositoryError` naming the component configs and settings when loaded components of `folder`
    do not fit together (`component_mismatches`: unit count and width, action size, the decoder's context width and
    capacity, frame size and channels; `engram_mismatches`: an Engram memory built for another evolver or encoder), so
    that an incompatible folder fails when it is loaded, not at its first call. `fingerprint_of(component)` gives the
    `weights_fingerprint` of a component's weights; by default that of the loaded model in `components`."""
    configs = {name: getattr(component, "config", None) for name, component in components.items()}
    found = component_mismatches(configs)
    engram = components.get("engram")
    if engram is not None:
        fingerprint_of = fingerprint_of or partial(loaded_fingerprint, components)
        found += [("engram", message) for message in engram_mismatches(engram, configs.get("evolver"), fingerprint_of)]
    clashes = [f"{os.path.join(folder, name, 'config.json')}: {message}" for name, message in found]
    if clashes:
        raise VeltrixRepositoryError(f"{folder} holds components that do not fit together: " + " ".join(clashes))
