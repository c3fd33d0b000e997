"""Evolver speed, memory, continuous time and stability (issue 3; protocol in BENCHMARKS.md).

    python scripts/benchmark_evolver.py --output runs/benchmark_evolver.json           # about 10 min on 2 cores
    python scripts/benchmark_evolver.py --quick --output /tmp/benchmark_evolver.json   # smoke run, seconds
    python scripts/benchmark_evolver.py --device cuda --sections mixer model rollout --output runs/gpu.json

Measures, interleaved in one process (median and min–max over repetitions after a warm-up):
- the selective-SSM mixer against transformers' `Mamba2Mixer` (PyTorch path) at the same dimensions, tokens/s at
  1k–64k tokens, and its model-FLOPs utilisation against an fp32 matmul peak measured in the same rounds;
- the `veltrix-tiny` evolver against an equal-parameter SDPA `LlamaModel`, tokens/s at 1k–64k tokens;
- open-loop rollout steps/s at batch 1, eager and after `compile_step()` (the target's figure; `--eager-rollout-step`
  times the eager step only), and peak memory over 100–10 000 steps, against the Llama's KV cache;
- on the pendulum world, a small evolver trained at one frame rate and evaluated at twice that rate, and the effect
  of the Lyapunov-like stability regulariser far past the training window.
Targets: tok_s_64k_over_1k, speedup_vs_hf_mamba2_mixer_16k, mixer_mfu_16k, speedup_vs_sdpa_64k,
rollout_step_speed_over_llama, rollout_memory_growth_10k, error_ratio_double_rate (issues 3 and 17; the ratios of two
rates take their peaks over the same interleaved rounds). Writes JSON in the shape of BENCHMARKS.md; exits 0 whether
or not the targets are met.
"""

import argparse
import os

import torch
from transformers.utils import logging

from modeling_veltrix.benchmarks import save_report
from modeling_veltrix.benchmarks.evolver import SECTIONS, EvolverBenchmarkSettings, run_evolver_benchmarks

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="where the JSON goes")
    parser.add_argument("--quick", action="store_true", help="tiny lengths and few steps: a smoke run, not results")
    parser.add_argument(
        "--preset",
        default=os.path.join(REPO_ROOT, "configuration", "veltrix-tiny", "evolver"),
        help="evolver config folder of the model-level and rollout sections",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="where the speed sections run: cpu, or cuda (the mamba-ssm kernels where installed; the world section "
        "always trains on the CPU)",
    )
    parser.add_argument(
        "--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS), help="sections to run (default: all)"
    )
    parser.add_argument(
        "--eager-rollout-step",
        action="store_true",
        help="time the rollout eagerly only (default: also after `compile_step()`, the target's figure)",
    )
    args = parser.parse_args()
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA device")
    return args


def main() -> None:
    args = parse_args()
    # The HF Mamba2 mixer warns, on every construction, that its CUDA kernels are missing: we measure its PyTorch path.
    logging.set_verbosity_error()
    settings = (EvolverBenchmarkSettings.quick if args.quick else EvolverBenchmarkSettings.full)(
        args.preset,
        device=args.device,
        sections=tuple(args.sections),
        compiled_rollout_step=not args.eager_rollout_step,
    )
    report = run_evolver_benchmarks(settings)
    save_report(args.output, report)


if __name__ == "__main__":
    main()
