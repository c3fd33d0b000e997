"""Checks a weights file before a loader reads it, so that a damaged file gets an error naming it instead of a
library error (or a half-loaded model); the `from_pretrained` hook that applies the checks (complete files,
matching tensor names and shapes, finite values) to the encoder, the evolver, the Engram memory and the decoder, also
when they are loaded on their own (`AutoModel.from_pretrained(folder)`); and the fingerprint of a model's weights
that an Engram memory records of the models it was built for (`weights_fingerprint`)."""

import hashlib
import json
import logging
import os
import re
import struct

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import PreTrainedConfig, PreTrainedModel


class VeltrixRepositoryError(OSError):
    """A saved pipeline folder is incomplete, damaged, or written by an incompatible version; the message names the
    file."""


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A short SHA-256 of `model`'s parameters and persistent buffers (names, shapes, values cast to float16, so that
    a float32 model and its float16 copy agree): what an Engram memory records of the models it was built for."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        values = tensor.detach().cpu()
        values = values.to(torch.float16) if values.is_floating_point() else values
        digest.update(values.contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def check_safetensors(path: str) -> None:
    """Raises `VeltrixRepositoryError` naming `path` unless it is a complete safetensors file: its header parses
    and the file holds every byte that the header's tensors span."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise VeltrixRepositoryError(f"{path} is truncated: {size} bytes, not even a safetensors header.")
        (header_size,) = struct.unpack("<Q", prefix)
        if 8 + header_size > size:
            raise VeltrixRepositoryError(
                f"{path} is truncated: {size} bytes, its safetensors header alone needs {8 + header_size}."
            )
        try:
            header = json.loads(handle.read(header_size))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise VeltrixRepositoryError(f"{path} is not a safetensors file: its header is not JSON.") from error
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    needed = 8 + header_size + max(ends, default=0)
    if size < needed:
        raise VeltrixRepositoryError(f"{path} is truncated: {size} bytes, its tensors need {needed}.")


SHARD_SUFFIX = re.compile(r"-\d{5}-of-\d{5}$")


def weights_variant(file_name: str) -> str | None:
    """The variant of a safetensors weights file name, as `save_pretrained(variant=...)` writes it:
    `model.safetensors` / `model-00001-of-00002.safetensors` -> None, `diffusion_pytorch_model.fp16.safetensors` /
    `model.fp16-00001-of-00002.safetensors` -> "fp16"."""
    stem = SHARD_SUFFIX.sub("", file_name.removesuffix(".safetensors"))
    return stem.split(".", 1)[1] if "." in stem else None


def weight_files(folder: str, variant: str | None = None) -> list[str]:
    """The paths of the safetensors weights of `variant` (None: those saved without a variant) in the local model
    folder `folder`; empty where it holds none of any variant. Raises `VeltrixRepositoryError` naming the folder and
    the variants it holds when it holds weights of other variants only (as diffusers' loader refuses such a
    folder)."""
    if not os.path.isdir(folder):
        return []
    files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    chosen = [os.path.join(folder, f) for f in files if weights_variant(f) == variant]
    if files and not chosen:
        found = sorted({weights_variant(f) for f in files}, key=str)
        wanted = "without a variant" if variant is None else f"of the variant {variant!r}"
        raise VeltrixRepositoryError(
            f"{folder} holds no safetensors weights {wanted}, only those of the variant(s) {found}: pass "
            f"`variant=` one of {found} to `from_pretrained`."
        )
    return chosen


def saved_variant(folder: str) -> str | None:
    """The variant whose weights a check of `folder` reads when no variant is asked for: None where the folder holds
    weights saved without one, else the first of its variants."""
    variants = sorted(
        {weights_variant(f) for f in os.listdir(folder) if f.endswith(".safetensors")} if os.path.isdir(folder) else [],
        key=lambda variant: (variant is not None, variant or ""),
    )
    return variants[0] if variants else None


def saved_tensor_shapes(paths: list[str]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Tensor name -> (file, shape) of the safetensors files `paths` (the shards of one model), read from their
    headers alone."""
    shapes = {}
    for path in paths:
        with safe_open(path, framework="pt") as handle:
            for key in handle.keys():
                shapes[key] = (path, tuple(handle.get_slice(key).get_shape()))
    return shapes


def _listed(names: list[str], limit: int = 8) -> str:
    """At most `limit` names, then how many more."""
    more = len(names) - limit
    return ", ".join(names[:limit]) + (f" and {more} more" if more > 0 else "")


def check_weights_match(
    paths: list[str], expected: dict[str, tuple[int, ...]], allow_missing_and_unexpected: bool = False
) -> None:
    """Raises `VeltrixRepositoryError` naming the file(s) and tensors when the safetensors `paths` lack a tensor of
    `expected` (name -> shape, the model's state dict), hold one it does not have, or hold one of another shape.
    `allow_missing_and_unexpected` lets the first two pass (a partial checkpoint); shapes are always checked."""
    saved = saved_tensor_shapes(paths)
    where = ", ".join(paths)
    wrong = [
        f"{key} (file {saved[key][0]}: {list(saved[key][1])}, model: {list(shape)})"
        for key, shape in expected.items()
        if key in saved and saved[key][1] != shape
    ]
    if wrong:
        raise VeltrixRepositoryError(f"{where} holds tensors of the wrong shape: {_listed(wrong)}.")
    if allow_missing_and_unexpected:
        return
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise VeltrixRepositoryError(
            f"{where} does not match the model: missing tensors [{_listed(missing)}], unexpected tensors "
            f"[{_listed(unexpected)}]. Pass `strict_weights=False` to `from_pretrained` to load a partial "
            "checkpoint (missing tensors are then initialised, unexpected ones dropped)."
        )


def check_finite_weights(paths: list[str], model: torch.nn.Module) -> None:
    """Raises `VeltrixRepositoryError` naming the file(s) and tensors when a floating-point tensor of the loaded
    `model` holds NaN or infinity."""
    bad = [
        name
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point() and not torch.isfinite(tensor).all()
    ]
    if bad:
        raise VeltrixRepositoryError(f"{', '.join(paths)} holds non-finite (NaN or infinite) tensors: {_listed(bad)}.")


def check_finite_file(paths: list[str]) -> None:
    """Raises `VeltrixRepositoryError` naming the file(s) and tensors when a floating-point tensor stored in the
    safetensors `paths` holds NaN or infinity; reads one tensor at a time."""
    bad = []
    for path in paths:
        with safe_open(path, framework="pt") as handle:
            for key in handle.keys():
                tensor = handle.get_tensor(key)
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    bad.append(key)
    if bad:
        raise VeltrixRepositoryError(f"{', '.join(paths)} holds non-finite (NaN or infinite) tensors: {_listed(bad)}.")


def _expected_state_shapes(cls: type, folder: str, config: object | None) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the state dict of `cls` built from its saved config on the meta device (no memory, no
    initialisation)."""
    with torch.device("meta"):
        if issubclass(cls, PreTrainedModel):
            given = config if isinstance(config, PreTrainedConfig) else None
            model = cls(given if given is not None else cls.config_class.from_pretrained(folder))
        else:
            model = cls.from_config(cls.load_config(folder))
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def _load_partial_diffusers_model(
    cls: type, folder: str, paths: list[str], dtype: torch.dtype | None
) -> torch.nn.Module:
    """A diffusers model of `folder`'s config, initialised as new, then filled with the tensors of `paths` that it has
    (diffusers' own loader leaves missing tensors uninitialised memory); the missing and unexpected ones are logged."""
    model = cls.from_config(cls.load_config(folder))
    state = {}
    for path in paths:
        state.update(load_file(path))
    result = model.load_state_dict(state, strict=False)
    logging.getLogger(__name__).warning(
        "%s: loaded a partial checkpoint (strict_weights=False): initialised %s, dropped %s.",
        ", ".join(paths),
        _listed(sorted(result.missing_keys)),
        _listed(sorted(result.unexpected_keys)),
    )
    return (model if dtype is None else model.to(dtype=dtype)).eval()


class VeltrixCheckedLoadingMixin:
    """Checks the safetensors weights of a local folder (`<folder>[/<subfolder>]`) before and after
    `from_pretrained` loads them (Hub ids are checked by the Hub client's integrity checks, and
    `VeltrixPipeline.from_pretrained` loads their local snapshot):

    - every file is complete (`check_safetensors`);
    - the tensors match the model's: a missing or unexpected tensor, or one of another shape, raises
      `VeltrixRepositoryError` naming the file and the tensors, instead of a randomly initialised layer and a log line;
    - after loading, no tensor is NaN or infinite.

    `strict_weights=False` (a documented opt-out, to fine-tune from a partial checkpoint) lets missing and unexpected
    tensors through (the library initialises the missing ones and logs them); shapes and finiteness are still checked.
    """

    @classmethod
    def check_saved_weights(
        cls, folder: str, strict_weights: bool = True, config: object = None, variant: str | None = None
    ) -> list[str]:
        """Checks the safetensors files of `variant` (None: those saved without a variant, `weight_files`) of the
        local model folder `folder` without loading them: complete, and tensor names and shapes those of this class
        built from its saved config (`strict_weights=False`: names may differ). Returns the files' paths (empty where
        `folder` holds none)."""
        paths = weight_files(folder, variant)
        for path in paths:
            check_safetensors(path)
        if paths:
            expected = _expected_state_shapes(cls, folder, config)
            check_weights_match(paths, expected, allow_missing_and_unexpected=not strict_weights)
        return paths

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, strict_weights: bool = True, **kwargs):
        """The library's `from_pretrained`, with the checks above for a local folder; `strict_weights` (`bool`,
        defaults to `True`): `False` loads a partial checkpoint."""
        if not isinstance(strict_weights, bool):
            raise ValueError(f"`strict_weights` must be a bool, got {strict_weights!r}.")
        folder = os.path.join(str(pretrained_model_name_or_path), kwargs.get("subfolder") or "")
        paths = cls.check_saved_weights(folder, strict_weights, kwargs.get("config"), kwargs.get("variant"))
        if not paths:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        if (
            not strict_weights  # strict: the names matched exactly
            and not issubclass(cls, PreTrainedModel)
            and set(saved_tensor_shapes(paths)) != set(_expected_state_shapes(cls, folder, kwargs.get("config")))
        ):
            model = _load_partial_diffusers_model(cls, folder, paths, kwargs.get("torch_dtype") or kwargs.get("dtype"))
        else:
            model = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        check_finite_weights(paths, model)
        return model
