"""Peak memory of converting an `.npz` source with `training.sources.load_trajectory_source`, at 1× and 10× the
demo's data (`configuration/veltrix-tiny/recipe.json`: 512 + 32 trajectories of 32 frames at 32×32×3).

    python tests/measure_source_memory.py --folder /tmp/veltrix_memory

Each size is written by one process and converted by another, which reports its peak RSS (`ru_maxrss`) and its RSS
after the imports; conversion writes the Arrow files to a fresh `datasets` cache under `--folder`.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

DEMO_TRAJECTORIES, FRAMES, SIZE = 544, 32, 32


def write(path: str, scale: int) -> None:
    """`frames (N, 32, 32, 32, 3)` uint8 and `actions (N, 32, 2)`, N = 544 · scale, written one part at a time."""
    import numpy as np

    num = DEMO_TRAJECTORIES * scale
    frames = np.lib.format.open_memmap(
        path + ".frames.npy", mode="w+", dtype=np.uint8, shape=(num, FRAMES, SIZE, SIZE, 3)
    )
    rng = np.random.default_rng(0)
    for start in range(0, num, 512):
        stop = min(start + 512, num)
        frames[start:stop] = rng.integers(0, 256, (stop - start, FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    frames.flush()
    np.savez(path, frames=frames, actions=np.zeros((num, FRAMES, 2), np.float32), timestamps=np.arange(FRAMES) * 0.1)
    os.remove(path + ".frames.npy")


def convert(path: str, cache: str) -> dict:
    """Converts `path`; returns the peak and after-import RSS in MiB, the seconds and the rows."""
    from modeling_veltrix.training.sources import TrajectorySourceOptions, load_trajectory_source

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    options = TrajectorySourceOptions(image_size=SIZE, clip_length=FRAMES, min_length=16, held_out=32)
    train, held_out, _ = load_trajectory_source(path, options, cache_dir=cache)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "peak_rss_mib": peak,
        "rss_after_imports_mib": baseline,
        "seconds": seconds,
        "rows": len(train) + len(held_out),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", required=True)
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10])
    args = parser.parse_args()
    os.makedirs(args.folder, exist_ok=True)
    results = {}
    for scale in args.scales:
        path = os.path.join(args.folder, f"frames_{scale}x.npz")
        cache = os.path.join(args.folder, f"cache_{scale}x")
        for step in ("write", "convert"):
            here = os.path.dirname(os.path.abspath(__file__))
            code = f"import sys, json; sys.path.insert(0, {here!r}); import measure_source_memory as m; "
            code += f"print(json.dumps(m.{step}({path!r}, {scale if step == 'write' else cache!r})))"
            output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
        results[f"{scale}x"] = json.loads(output.strip().splitlines()[-1]) | {"npz_bytes": os.path.getsize(path)}
        print(scale, results[f"{scale}x"], flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
