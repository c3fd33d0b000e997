"""Train Veltrix stage by stage on a built-in world.

    python scripts/train.py --preset configuration/veltrix-tiny --output-dir runs/tiny --stage all
    accelerate launch scripts/train.py --preset configuration/veltrix-small --output-dir runs/small --stage evolver

Stages: `encoder` (encoder + frame readout, reconstruction), `evolver` (frozen encoder; teacher forcing + open-loop
window), `decoder` (flow matching on frozen units), `reflow` (few-step fine-tune of the decoder on its own
(noise, sample) pairs), `all` (the four in order). Each stage saves its model to `<output-dir>/<stage>`; an
interrupted stage resumes from `<output-dir>/checkpoints/<stage>`. When encoder, evolver and decoder exist, the
assembled `VeltrixPipeline` is saved to `<output-dir>/pipeline`.
"""

import argparse
import os

from modeling_veltrix.training import (
    COMPONENTS,
    STAGES,
    VeltrixTrainingRecipe,
    assemble_pipeline,
    build_datasets,
    load_or_create_models,
    train_stages,
    world_action_dim,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", required=True, help="preset folder (configs per component + recipe.json)")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--stage", choices=(*STAGES, "all"), default="all")
    parser.add_argument("--recipe", default=None, help="recipe JSON overriding <preset>/recipe.json")
    parser.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints of the stage")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    recipe = VeltrixTrainingRecipe.from_json_file(args.recipe or os.path.join(args.preset, "recipe.json"))
    os.makedirs(args.output_dir, exist_ok=True)
    recipe.to_json_file(os.path.join(args.output_dir, "recipe.json"))
    train_dataset, _ = build_datasets(recipe)
    models = load_or_create_models(args.preset, args.output_dir, action_dim=world_action_dim(recipe))
    stages = STAGES if args.stage == "all" else (args.stage,)
    train_stages(stages, models, args.preset, train_dataset, recipe, args.output_dir, resume=not args.no_resume)
    if all(os.path.isdir(os.path.join(args.output_dir, component)) for component in COMPONENTS):
        assemble_pipeline(models, args.preset).save_pretrained(os.path.join(args.output_dir, "pipeline"))
        print(f"[veltrix] pipeline saved to {os.path.join(args.output_dir, 'pipeline')}")


if __name__ == "__main__":
    main()
