"""Decoder benchmark: image quality and frames per second of the flow decoder against its Euler step count."""

import time

import torch

from ..evaluation import image_quality
from ..pipeline_veltrix import VeltrixPipeline
from ..worlds import build_world_dataset
from .reports import environment_record


@torch.no_grad()
def benchmark_decoder_steps(
    pipeline: VeltrixPipeline, frames: torch.Tensor, step_counts: tuple[int, ...], repeats: int = 5, seed: int = 0
) -> dict[str, dict]:
    """Decodes the encoder's units of `frames` (N, C, H, W) with every Euler step count, interleaved over
    `repeats` rounds (after one warm-up round); returns per step count the quality of the first round (same
    noise for every step count) and frames/s (median, min, max over the rounds)."""
    if repeats < 1:
        raise ValueError(f"`repeats` must be >= 1, got {repeats}.")
    units = pipeline.encoder(frames[:, None].to(pipeline.device)).units[:, 0]
    noise = pipeline.prepare_latents(units.shape[0], units.dtype, units.device, torch.Generator().manual_seed(seed))
    quality, seconds = {}, {n: [] for n in step_counts}
    for round_index in range(repeats + 1):
        for n in step_counts:
            started = time.perf_counter()
            decoded = pipeline.decode_units(units, n, latents=noise)
            elapsed = time.perf_counter() - started
            if round_index == 0:
                quality[n] = image_quality(decoded.cpu(), frames)
            else:
                seconds[n].append(elapsed)
    results = {}
    for n in step_counts:
        fps = sorted(units.shape[0] / s for s in seconds[n])
        results[str(n)] = {
            **quality[n],
            "frames_per_s": {"median": fps[len(fps) // 2], "min": fps[0], "max": fps[-1]},
        }
    return results


@torch.no_grad()
def run_decoder_benchmark(
    pipeline: VeltrixPipeline,
    world: str,
    eval_seed: int,
    num_trajectories: int,
    step_counts: tuple[int, ...],
    repeats: int,
    weights: str,
) -> dict:
    """The decoder report (BENCHMARKS.md shape): every 4th frame of `num_trajectories` held-out trajectories of
    `world` (seed `eval_seed`) decoded from their encoder units with each Euler step count (`benchmark_decoder_steps`),
    next to the encoder's direct readout; the target is PSNR at 4 steps over PSNR at 50 (`step_counts` must hold
    1, 4 and 50). `weights` says which weights were measured."""
    data = build_world_dataset(world, num_trajectories=num_trajectories, num_steps=32, seed=eval_seed)
    frames = data.with_format("torch")[:]["pixel_values"][:, ::4].flatten(0, 1)  # every 4th step: (N, C, H, W)

    units = pipeline.encoder(frames[:, None]).units
    readout = image_quality(pipeline.encoder.decode_frames(units)[:, 0], frames)
    per_steps = benchmark_decoder_steps(pipeline, frames, step_counts, repeats=repeats)
    psnr = {int(n): values["psnr"] for n, values in per_steps.items()}
    return {
        "environment": {
            **environment_record(pipeline),
            "shapes": {"frames": list(frames.shape), "units": list(units.shape[-2:])},
            "data": {
                "world": world,
                "split": "held-out",
                "seed": eval_seed,
                "trajectories": num_trajectories,
                "frames": "every 4th step of each trajectory",
            },
            "sampling": {
                "scheduler": type(pipeline.scheduler).__name__,
                "shift": pipeline.scheduler.config.shift,
                "noise": "standard normal, seed 0",
            },
            "weights": weights,
        },
        "results": {
            "per_num_inference_steps": per_steps,
            "encoder_readout": readout,
            "psnr_1_over_50": psnr[1] / psnr[50],
        },
        "targets": [{"name": "psnr_4_over_50", "value": psnr[4] / psnr[50], "op": ">=", "target": 0.95}],
    }
