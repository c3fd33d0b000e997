"""Train Veltrix stage by stage on a built-in world, or on your own trajectories (`--dataset`).

    python scripts/train.py --preset configuration/veltrix-tiny --output-dir runs/tiny --stage all
    accelerate launch scripts/train.py --preset configuration/veltrix-small --output-dir runs/small --stage evolver
    python scripts/train.py --preset configuration/veltrix-tiny --output-dir runs/mine --dataset my_frames.npz --fps 10
    python scripts/train.py --preset configuration/veltrix-tiny --output-dir runs/videos --dataset my_videos/

`--dataset` reads a `.npz` file (`frames (N, T, H, W, C)` uint8, optional `actions (N, T, A)`, `timestamps (N, T)`
or `(T,)`), a `.npy` file of frames, a `datasets` folder (`save_to_disk`, or one `datasets.load_dataset` reads; its
columns named by `--frames-column`, `--actions-column`, `--timestamps-column`) or a folder of videos (PyAV, one
trajectory per file, optional sidecars `<name>.actions.npy`, `<name>.timestamps.npy`), converted by
`training.sources.load_trajectory_source` into clips of `--clip-length` frames (default: the recipe's
`trajectory_length`, which the run's `recipe.json` then records) at the preset encoder's `image_size`, with a held-out
split of whole trajectories. Without actions the evolver learns its null condition (`action_dim=0`); without
timestamps `--fps` is required. Every problem of the source raises a `ValueError` before anything is written to
`--output-dir`; `<output-dir>/data_source.json` records the source and its conversion.

Stages: `encoder` (encoder + frame readout, reconstruction), `evolver` (frozen encoder; teacher forcing + open-loop
window), `decoder` (flow matching on frozen units), `reflow` (few-step fine-tune of the decoder on its own
(noise, sample) pairs), `all` (the four in order). Optional, outside `all`: `probe` (the physics probe of
`training.physics` on the frozen encoder's units, saved to `<output-dir>/probe`) and `joint` (encoder and evolver
fine-tuned together on `L_traj + λ1·L_align + λ2·L_phys + λ3·L_recon`, saved to `<output-dir>/joint/`, which later
loads prefer; retrain the decoder afterwards, its units changed). With the recipe's `physics_loss_weight > 0` the
evolver stage adds `L_phys`, and the probe is trained first when `<output-dir>/probe` is missing.

Each stage saves its model to `<output-dir>/<stage>`; an interrupted stage resumes from the last complete checkpoint
in `<output-dir>/checkpoints/<stage>` (a damaged one is skipped with a warning), and `--stage all` run again skips
the stages already saved. A stage that trains on another component needs it trained in `<output-dir>` (`evolver` and
`decoder` need the encoder, `reflow` the encoder and the decoder). When encoder, evolver and decoder exist, the
assembled `VeltrixPipeline` is saved to `<output-dir>/pipeline`.

The recipe's `seed` seeds everything: each component is created, and each stage trains, under a seed derived from
it and the component's or stage's name, so the same command gives the same weights, also after an interruption.
The preset, the recipe and the stages' prerequisites are checked before anything is trained or written;
`<output-dir>/recipe.json` is the checked recipe.
"""

import argparse
import dataclasses
import os

import datasets
from transformers.integrations import get_available_reporting_integrations
from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

from modeling_veltrix.configuration_veltrix import VeltrixEncoderConfig
from modeling_veltrix.repository_check import write_json_atomic
from modeling_veltrix.training import (
    COMPONENTS,
    STAGES,
    VeltrixTrainingRecipe,
    assemble_pipeline,
    build_datasets,
    check_preset,
    check_stage_prerequisites,
    load_or_create_models,
    train_stages,
    world_action_dim,
)
from modeling_veltrix.training.physics import load_or_train_probe
from modeling_veltrix.training.runner import train_joint, trained_component
from modeling_veltrix.training.sources import TrajectorySourceInfo, TrajectorySourceOptions, load_trajectory_source

OPTIONAL_STAGES = {"probe": ("encoder",), "joint": ("encoder", "evolver")}  # and the components each needs


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", required=True, help="preset folder (configs per component + recipe.json)")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--stage", choices=(*STAGES, "all", *OPTIONAL_STAGES), default="all")
    parser.add_argument("--recipe", default=None, help="recipe JSON overriding <preset>/recipe.json")
    parser.add_argument(
        "--no-resume", action="store_true", help="start the stages over: delete their existing checkpoints"
    )
    parser.add_argument(
        "--report-to",
        default="none",
        help="the Trainer's `report_to`: none, all, or integrations separated by commas (e.g. tensorboard)",
    )
    data = parser.add_argument_group("your own data, instead of the recipe's world")
    data.add_argument("--dataset", default=None, help=".npz / .npy file, `datasets` folder or folder of videos")
    data.add_argument("--frames-column", default=None, help="`datasets` source: frames column (pixel_values)")
    data.add_argument("--actions-column", default=None, help="`datasets` source: actions column (actions, optional)")
    data.add_argument("--timestamps-column", default=None, help="`datasets` source: timestamps column (optional)")
    data.add_argument("--fps", type=float, default=None, help="frame rate (Hz) giving the timestamps; videos: own")
    data.add_argument("--clip-length", type=int, default=None, help="frames per clip (the recipe's trajectory_length)")
    held_out = data.add_mutually_exclusive_group()
    held_out.add_argument("--held-out-fraction", type=float, default=None, help="held-out trajectories (0.1)")
    held_out.add_argument("--held-out-count", type=int, default=None, help="held-out trajectories, as a count")
    data.add_argument("--image-size", type=int, default=None, help="frame side (the preset encoder's image_size)")
    return parser.parse_args()


DATA_FLAGS = (
    "frames_column",
    "actions_column",
    "timestamps_column",
    "fps",
    "clip_length",
    "held_out_fraction",
    "held_out_count",
    "image_size",
)


def check_report_to(value: str) -> list[str]:
    """`--report-to` as the Trainer's list: `none` (nothing), `all`, or known integrations, installed."""
    names = [name.strip() for name in value.split(",") if name.strip()]
    if names == ["none"]:
        return []
    for name in names:
        if name not in (*INTEGRATION_TO_CALLBACK, "all"):
            raise ValueError(f"`--report-to` must be none, all or of {sorted(INTEGRATION_TO_CALLBACK)}, got {name!r}.")
        if name != "all" and name not in get_available_reporting_integrations():
            raise ValueError(f"`--report-to {name}` needs the {name} package, which is not installed.")
    if not names:
        raise ValueError("`--report-to` must not be empty: give none, all or an integration.")
    return names


def load_own_data(
    args: argparse.Namespace, recipe: VeltrixTrainingRecipe
) -> tuple[datasets.Dataset, TrajectorySourceInfo, VeltrixTrainingRecipe]:
    """`--dataset` converted (`load_trajectory_source`) at the encoder's image size and channels (the trained one in
    `--output-dir`, else the preset's), checked against the recipe's windows; returns the train split, the source's
    info and the recipe with `trajectory_length` (the clip length) and the trajectory counts of the data."""
    if recipe.physics_loss_weight or recipe.joint_physics_weight or args.stage == "probe":
        raise ValueError(
            "The physics probe and `physics_loss_weight` / `joint_physics_weight` need a built-in world's `physics` "
            f"column, which `--dataset` {args.dataset} does not have: set them to 0 and do not run `--stage probe`."
        )
    encoder_dir = trained_component(args.output_dir, "encoder") or os.path.join(args.preset, "encoder")
    encoder_config = VeltrixEncoderConfig.from_pretrained(encoder_dir)
    if args.image_size is not None and args.image_size != encoder_config.image_size:
        raise ValueError(
            f"`--image-size` {args.image_size} differs from the encoder's image_size {encoder_config.image_size} "
            f"({encoder_dir}): the preset's encoder and decoder are built for that size; change their configs."
        )
    if args.held_out_count is not None:
        held_out = args.held_out_count
    else:
        held_out = 0.1 if args.held_out_fraction is None else args.held_out_fraction
    options = TrajectorySourceOptions(
        image_size=encoder_config.image_size,
        num_channels=encoder_config.num_channels,
        clip_length=args.clip_length or recipe.trajectory_length,
        min_length=recipe.context_length + recipe.rollout_window,
        fps=args.fps,
        held_out=held_out,
        frames_column=args.frames_column,
        actions_column=args.actions_column,
        timestamps_column=args.timestamps_column,
        seed=recipe.train_seed,
    )
    train, held_out_dataset, info = load_trajectory_source(args.dataset, options)
    recipe = dataclasses.replace(
        recipe,
        trajectory_length=options.clip_length,
        num_train_trajectories=len(train),
        num_eval_trajectories=len(held_out_dataset),
    )
    return train, info, recipe


def train_optional_stage(
    stage: str, models, train_dataset, recipe: VeltrixTrainingRecipe, output_dir, resume, report_to: list[str]
) -> None:
    """`probe`, or `joint` (with the probe, trained first if missing, when `joint_physics_weight > 0`)."""
    if stage == "probe" or recipe.joint_physics_weight > 0:
        probe = load_or_train_probe(models[0], train_dataset, recipe, output_dir, resume=resume)
    if stage == "joint":
        metrics = train_joint(
            models,
            train_dataset,
            recipe,
            output_dir,
            resume,
            probe if recipe.joint_physics_weight else None,
            report_to=report_to,
        )
        print(f"[veltrix] stage joint finished: train_loss={metrics['train_loss']:.5g}")


def train_with_physics(
    stages, models, preset, train_dataset, recipe, output_dir, stage, resume, report_to: list[str]
) -> None:
    """The staged run; with `physics_loss_weight > 0` the evolver stage gets the probe, trained (after the encoder,
    when `all` trains it) if `<output_dir>/probe` is missing."""
    skip_finished = stage == "all" and resume
    if recipe.physics_loss_weight == 0 or "evolver" not in stages:
        train_stages(
            stages, models, preset, train_dataset, recipe, output_dir, skip_finished, resume=resume, report_to=report_to
        )
        return
    before = stages[: stages.index("evolver")]
    if before:
        train_stages(
            before, models, preset, train_dataset, recipe, output_dir, skip_finished, resume=resume, report_to=report_to
        )
    probe = load_or_train_probe(models[0], train_dataset, recipe, output_dir, resume=resume)
    rest = stages[len(before) :]
    train_stages(
        rest, models, preset, train_dataset, recipe, output_dir, skip_finished, resume, probe, report_to=report_to
    )


def main() -> None:
    """Checks the preset, the recipe, the output folder and the stages' prerequisites, then writes the recipe and
    trains."""
    args = parse_args()
    check_preset(args.preset)
    recipe = VeltrixTrainingRecipe.from_json_file(args.recipe or os.path.join(args.preset, "recipe.json"))
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        raise ValueError(f"`--output-dir` must be a folder, got {args.output_dir!r}, which is a file.")
    report_to = check_report_to(args.report_to)
    given = [f"--{name.replace('_', '-')}" for name in DATA_FLAGS if getattr(args, name) is not None]
    if args.dataset is None and given:
        raise ValueError(f"{', '.join(given)} describe `--dataset`, which was not given.")
    resume = not args.no_resume
    if args.stage in OPTIONAL_STAGES:
        for component in OPTIONAL_STAGES[args.stage]:
            if trained_component(args.output_dir, component) is None:
                raise ValueError(
                    f"Stage `{args.stage}` needs a trained {component} in {args.output_dir}: train it first with "
                    f"`--stage {component}`."
                )
        stages = ()
    else:
        stages = STAGES if args.stage == "all" else (args.stage,)
        check_stage_prerequisites(stages, args.output_dir, args.stage == "all" and resume)
    if args.dataset is None:
        source_info, action_dim = None, world_action_dim(recipe)
    else:
        train_dataset, source_info, recipe = load_own_data(args, recipe)
        action_dim = source_info.action_dim
    models = load_or_create_models(args.preset, args.output_dir, action_dim, seed=recipe.seed)
    if models[1].config.action_dim != action_dim:
        raise ValueError(
            f"The evolver trained in {args.output_dir} takes actions of width {models[1].config.action_dim}, the "
            f"data have {action_dim}: use another `--output-dir`."
        )
    os.makedirs(args.output_dir, exist_ok=True)
    recipe.to_json_file(os.path.join(args.output_dir, "recipe.json"))
    if source_info is None:
        train_dataset, _ = build_datasets(recipe)
    else:
        write_json_atomic(os.path.join(args.output_dir, "data_source.json"), source_info.to_dict())
    if args.stage in OPTIONAL_STAGES:
        train_optional_stage(args.stage, models, train_dataset, recipe, args.output_dir, resume, report_to)
    else:
        train_with_physics(
            stages, models, args.preset, train_dataset, recipe, args.output_dir, args.stage, resume, report_to
        )
    if all(os.path.isdir(os.path.join(args.output_dir, component)) for component in COMPONENTS):
        assemble_pipeline(models, args.preset).save_pretrained(os.path.join(args.output_dir, "pipeline"))
        print(f"[veltrix] pipeline saved to {os.path.join(args.output_dir, 'pipeline')}")


if __name__ == "__main__":
    main()
