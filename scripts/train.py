"""Train Veltrix stage by stage on a built-in world.

    python scripts/train.py --preset configuration/veltrix-tiny --output-dir runs/tiny --stage all
    accelerate launch scripts/train.py --preset configuration/veltrix-small --output-dir runs/small --stage evolver

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
import os

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
    return parser.parse_args()


def train_optional_stage(stage: str, models, train_dataset, recipe: VeltrixTrainingRecipe, output_dir, resume) -> None:
    """`probe`, or `joint` (with the probe, trained first if missing, when `joint_physics_weight > 0`)."""
    if stage == "probe" or recipe.joint_physics_weight > 0:
        probe = load_or_train_probe(models[0], train_dataset, recipe, output_dir, resume=resume)
    if stage == "joint":
        metrics = train_joint(
            models, train_dataset, recipe, output_dir, resume, probe if recipe.joint_physics_weight else None
        )
        print(f"[veltrix] stage joint finished: train_loss={metrics['train_loss']:.5g}")


def train_with_physics(stages, models, preset, train_dataset, recipe, output_dir, stage, resume) -> None:
    """The staged run; with `physics_loss_weight > 0` the evolver stage gets the probe, trained (after the encoder,
    when `all` trains it) if `<output_dir>/probe` is missing."""
    skip_finished = stage == "all" and resume
    if recipe.physics_loss_weight == 0 or "evolver" not in stages:
        train_stages(stages, models, preset, train_dataset, recipe, output_dir, skip_finished, resume=resume)
        return
    before = stages[: stages.index("evolver")]
    if before:
        train_stages(before, models, preset, train_dataset, recipe, output_dir, skip_finished, resume=resume)
    probe = load_or_train_probe(models[0], train_dataset, recipe, output_dir, resume=resume)
    rest = stages[len(before) :]
    train_stages(rest, models, preset, train_dataset, recipe, output_dir, skip_finished, resume=resume, probe=probe)


def main() -> None:
    """Checks the preset, the recipe, the output folder and the stages' prerequisites, then writes the recipe and
    trains."""
    args = parse_args()
    check_preset(args.preset)
    recipe = VeltrixTrainingRecipe.from_json_file(args.recipe or os.path.join(args.preset, "recipe.json"))
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        raise ValueError(f"`--output-dir` must be a folder, got {args.output_dir!r}, which is a file.")
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
    models = load_or_create_models(args.preset, args.output_dir, world_action_dim(recipe), seed=recipe.seed)
    os.makedirs(args.output_dir, exist_ok=True)
    recipe.to_json_file(os.path.join(args.output_dir, "recipe.json"))
    train_dataset, _ = build_datasets(recipe)
    if args.stage in OPTIONAL_STAGES:
        train_optional_stage(args.stage, models, train_dataset, recipe, args.output_dir, resume)
    else:
        train_with_physics(stages, models, args.preset, train_dataset, recipe, args.output_dir, args.stage, resume)
    if all(os.path.isdir(os.path.join(args.output_dir, component)) for component in COMPONENTS):
        assemble_pipeline(models, args.preset).save_pretrained(os.path.join(args.output_dir, "pipeline"))
        print(f"[veltrix] pipeline saved to {os.path.join(args.output_dir, 'pipeline')}")


if __name__ == "__main__":
    main()
