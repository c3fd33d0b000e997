"""Assemble a published pipeline's complete Hub repository and push it with `huggingface_hub`.

    python scripts/push_to_hub.py --bundle pipelines/veltrix-tiny-bouncing-balls --weights runs/demo \
        --repo-id my-org/veltrix-tiny-bouncing-balls --dry-run runs/hub-repo
    python scripts/push_to_hub.py --bundle pipelines/veltrix-tiny-bouncing-balls --weights runs/demo \
        --repo-id my-org/veltrix-tiny-bouncing-balls --private

`--weights` is a run folder written by `scripts/demo.py` (the trained encoder/, evolver/, decoder/ and the run's
metrics.json, recipe.json, rollout.gif, error_vs_horizon.png). The repository holds the weights (safetensors), the
configs, each component's self-contained code, the pipeline code, model_index.json, the root config.json of
`transformers.pipeline` and the model card. `--dry-run DIR` writes exactly that folder to DIR (a new or empty folder:
one that holds files is refused and left as it is), validates its card, reloads it and pushes nothing. Nothing
uploaded names a local path (configs, card, commit message). Without it the folder is pushed in one commit; the
token is huggingface_hub's business (`hf auth login` or `HF_TOKEN`), and `HF_ENDPOINT` picks another Hub.
"""

import argparse
import os
import tempfile

import torch
from huggingface_hub import HfApi

from modeling_veltrix import VeltrixPipeline
from modeling_veltrix.hub.bundle import VeltrixBundle, assemble_repository

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True, help="a bundle folder, pipelines/<name>")
    parser.add_argument("--weights", required=True, help="the run folder with the trained components and results")
    parser.add_argument("--repo-id", required=True, help="namespace/name of the Hub repository")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument(
        "--dry-run", metavar="DIR", help="write the repository to DIR (new or empty) and reload it; push nothing"
    )
    parser.add_argument("--template", default=os.path.join(REPO_ROOT, "model_card.md"), help="model card template")
    return parser.parse_args()


def reload_check(folder: str, bundle: VeltrixBundle) -> None:
    """Loads the written folder as a user would and rolls out one step, so a broken folder is never pushed."""
    pipeline = VeltrixPipeline.from_pretrained(folder)
    pipeline.set_progress_bar_config(disable=True)
    config = pipeline.encoder.config
    frames = torch.zeros(1, bundle.context_length, config.num_channels, config.image_size, config.image_size)
    out = pipeline(frames, num_future_steps=1, num_inference_steps=1, output_type="pt")
    print(f"[push_to_hub] {folder} reloads: one future frame of shape {tuple(out.frames.shape[2:])}")


def main() -> None:
    args = parse_args()
    if args.repo_id.count("/") != 1:
        raise SystemExit(f"--repo-id must be namespace/name, got {args.repo_id!r}.")
    if (
        args.dry_run
        and os.path.exists(args.dry_run)
        and not (os.path.isdir(args.dry_run) and not os.listdir(args.dry_run))
    ):
        raise SystemExit(
            f"--dry-run must name a new or empty folder, got {args.dry_run!r}, which holds files; nothing was written "
            "and nothing there is touched."
        )
    bundle = VeltrixBundle.from_folder(args.bundle, REPO_ROOT)
    if args.dry_run:
        assemble_repository(bundle, args.weights, args.dry_run, args.repo_id, args.template)
        reload_check(args.dry_run, bundle)
        print(f"[push_to_hub] dry run: the repository for {args.repo_id} is in {args.dry_run}; nothing was pushed")
        return
    with tempfile.TemporaryDirectory() as staging:
        folder = os.path.join(staging, bundle.name)
        assemble_repository(bundle, args.weights, folder, args.repo_id, args.template)
        reload_check(folder, bundle)
        api = HfApi()
        url = api.create_repo(args.repo_id, private=args.private, exist_ok=True)
        commit = api.upload_folder(repo_id=args.repo_id, folder_path=folder, commit_message=f"Upload {bundle.name}")
    print(f"[push_to_hub] pushed {bundle.name} to {url} (commit {commit.oid})")


if __name__ == "__main__":
    main()
