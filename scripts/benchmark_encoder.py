"""Benchmark of the multimodal encoder (MPE, issue 5): orthogonal fusion exactness, and a small multimodal encoder
trained on the speaking / captioning bouncing-balls world, measured on held-out trajectories.

    python scripts/benchmark_encoder.py --output runs/benchmark_encoder.json
    python scripts/benchmark_encoder.py --output /tmp/quick.json --train-steps 20 --train-trajectories 16  # smoke

Figures (JSON shape of BENCHMARKS.md):
- `fusion_orthogonality_error`: max |QᵀQ - I| and max |Q_aᵀ Q_b| over block pairs, for a learned (moved) Q;
- `fusion_linear_roundtrip_error`: relative error of audio features -> φ_audio -> fused with the other modalities ->
  decompose -> D_audio;
- `retrieval_r1_over_chance_text_frame` (and audio -> frame): R@1 of retrieving a held-out step's frame embedding from
  its caption's (audio's) embedding among all held-out steps, divided by chance (1 / number of steps);
- `caption_event_accuracy`: the event clause of the caption read back from the text subspace equals the true one
  (results also hold the accuracy on steps where something happens, and the majority-class rate);
- PSNR of the frame readout keeping the first k resampled frame units, per k (results only).
The script exits 0 whether or not the targets are met.
"""

import argparse

from modeling_veltrix.benchmarks import save_report
from modeling_veltrix.benchmarks.encoder import run_encoder_benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="JSON file to write")
    parser.add_argument("--train-trajectories", type=int, default=128)
    parser.add_argument("--eval-trajectories", type=int, default=16)
    parser.add_argument("--num-steps", type=int, default=16, help="steps per trajectory")
    # The resampled frame units sit on a plateau (the mean frame) for about the first 1000 steps; 3000 steps of 64
    # take about 10 minutes on 2 CPU cores.
    parser.add_argument("--train-steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64, help="steps per batch (also the InfoNCE negatives)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    report = run_encoder_benchmark(
        args.train_trajectories, args.eval_trajectories, args.num_steps, args.train_steps, args.batch_size, args.seed
    )
    save_report(args.output, report)
    print(f"[benchmark_encoder] psnr by num_units: {report['results']['held_out']['psnr_by_num_units']}")


if __name__ == "__main__":
    main()
