set -e
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
OUT=${OUT:-runs/own_data_example}
rm -rf "$OUT" && mkdir -p "$OUT"
python - "$OUT" <<'PY'
import sys
import av
import numpy as np
from modeling_veltrix.training.overrides import recipe_with_overrides

out = sys.argv[1]
# 12 trajectories of 16 frames, 48×48 RGB: a square drifting right; an action (its speed) per frame.
frames = np.zeros((12, 16, 48, 48, 3), np.uint8)
speed = np.random.default_rng(0).integers(1, 3, (12, 16, 1)).astype(np.float32)
for n in range(12):
    x = 0.0
    for t in range(16):
        x = (x + speed[n, t, 0]) % 40
        frames[n, t, 20:28, int(x) : int(x) + 8] = (255, 128, 0)
np.savez(f"{out}/squares.npz", frames=frames, actions=speed)  # no timestamps: --fps gives them
# The same trajectories as a folder of videos (one file per trajectory, frames only).
import os
os.makedirs(f"{out}/videos", exist_ok=True)
for n in range(12):
    with av.open(f"{out}/videos/square{n:02d}.mp4", mode="w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 48, 48, "yuv420p"
        for image in frames[n]:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
# A few steps per stage and windows of 2 + 2 frames in clips of 6 (`--quick`'s settings).
recipe = recipe_with_overrides("configuration/veltrix-tiny/recipe.json", True, {"reflow_num_pairs": 16})
recipe.to_json_file(f"{out}/recipe_quick.json")
PY
python scripts/train.py --preset configuration/veltrix-tiny --recipe "$OUT/recipe_quick.json" \
    --dataset "$OUT/squares.npz" --fps 10 --output-dir "$OUT/npz"
python scripts/train.py --preset configuration/veltrix-tiny --recipe "$OUT/recipe_quick.json" \
    --dataset "$OUT/videos" --held-out-count 2 --output-dir "$OUT/videos_run"
python - "$OUT" <<'PY'
import sys
import torch
from modeling_veltrix import VeltrixPipeline

out = sys.argv[1]
context = torch.zeros(1, 4, 3, 32, 32) - 1  # 4 black frames in [-1, 1]
pipe = VeltrixPipeline.from_pretrained(f"{out}/npz/pipeline")
frames = pipe(context, actions=torch.ones(1, 10, 1), num_future_steps=6, num_inference_steps=2, output_type="pt").frames
print("npz run, conditional rollout:", tuple(frames.shape))  # (1, 6, 3, 32, 32)
pipe = VeltrixPipeline.from_pretrained(f"{out}/videos_run/pipeline")
frames = pipe(context, num_future_steps=6, num_inference_steps=2, output_type="pt").frames  # frames only: free rollout
print("video run, free rollout:", tuple(frames.shape))
PY
