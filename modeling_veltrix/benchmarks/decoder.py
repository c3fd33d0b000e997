"""Decoder benchmark: image quality and frames per second of the flow decoder against its Euler step count."""

import time

import torch

from ..evaluation import image_quality
from ..pipeline_veltrix import VeltrixPipeline


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
