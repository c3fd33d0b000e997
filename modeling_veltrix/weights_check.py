"""Checks a weights file before a loader reads it, so that a damaged file gets an error naming it instead of a
library error (or a half-loaded model); and the `from_pretrained` hook that applies the check to the encoder and
evolver, also when they are loaded on their own (`AutoModel.from_pretrained(folder)`)."""

import json
import os
import struct

SAFE_WEIGHTS_NAME = "model.safetensors"


class VeltrixRepositoryError(OSError):
    """A saved pipeline folder is incomplete, damaged, or written by an incompatible version; the message names the
    file."""


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


class VeltrixCheckedLoadingMixin:
    """Checks `<folder>[/<subfolder>]/model.safetensors` of a local folder with `check_safetensors` before
    `from_pretrained` loads it (Hub ids are checked by the Hub client's own integrity checks)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        folder = os.path.join(str(pretrained_model_name_or_path), kwargs.get("subfolder") or "")
        weights = os.path.join(folder, SAFE_WEIGHTS_NAME)
        if os.path.isfile(weights):
            check_safetensors(weights)
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
