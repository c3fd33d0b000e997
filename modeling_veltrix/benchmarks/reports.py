"""What every benchmark report carries (BENCHMARKS.md): where it was measured, and its atomic JSON file."""

import os
import platform

import diffusers
import torch
import transformers

from ..pipeline_veltrix import VeltrixPipeline
from ..repository_check import write_json_atomic


def environment_record(pipeline: VeltrixPipeline) -> dict:
    """Where a figure was measured: library versions, device, threads, kernel path, dtype."""
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "device": str(pipeline.device),
        "threads": torch.get_num_threads(),
        "kernel_path": "torch",
        "dtype": str(pipeline.evolver.dtype).replace("torch.", ""),
    }


def save_report(path: str, report: dict) -> None:
    """Writes a benchmark / evaluation report (BENCHMARKS.md shape) to `path` atomically, creating its folder,
    and prints each target with its value."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_json_atomic(path, report)
    for target in report["targets"]:
        print(f"{target['name']} = {target['value']:.4g} ({target['op']} {target['target']})")
    print(f"wrote {path}")
