"""The model card of a published Veltrix pipeline: the repository's `model_card.md` template rendered with
`huggingface_hub.ModelCard` into the pipeline folder's `README.md`, and its offline validation.

The card carries the Hub metadata (`library_name`, `pipeline_tag`, `tags`, `license`, `datasets`, `model-index` with
the evaluation results), usage snippets that run as written, the per-horizon results of the run, its training recipe,
its limits, and the run's rollout GIF and error-vs-horizon plot.
"""

import os
import re

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results

REPORTED_HORIZONS = (1, 2, 4, 8, 12, 16, 24, 32, 48)
# The card metadata of a run that no bundle describes (the demo's); a bundle's `card` entry replaces any of them.
DEFAULT_CARD_METADATA = {
    "library_name": "diffusers",
    "pipeline_tag": "video-to-video",
    "license": "apache-2.0",
    "tags": ["world-model", "veltrix", "state-space-model", "mamba2", "flow-matching"],
}
REQUIRED_METADATA = ("library_name", "pipeline_tag", "license", "tags", "datasets", "model-index")
MEDIA = ("rollout.gif", "error_vs_horizon.png")


def results_table(metrics: dict) -> str:
    """A markdown table of pixel MSE per reported horizon and predictor."""
    pixel = metrics["results"]["pixel_mse"]
    horizons = [h for h in REPORTED_HORIZONS if h <= len(metrics["results"]["horizons"])]
    lines = ["| horizon | " + " | ".join(pixel) + " |", "| --- |" + " --- |" * len(pixel)]
    for h in horizons:
        lines.append(f"| {h} | " + " | ".join(f"{pixel[name][h - 1]:.4f}" for name in pixel) + " |")
    return "\n".join(lines)


def recipe_table(recipe: dict) -> str:
    """A markdown table of the recipe's training stages (those with optimisation settings, in recipe order)."""
    lines = ["| stage | steps | learning rate | batch size |", "| --- | --- | --- | --- |"]
    for stage, settings in recipe.items():
        if isinstance(settings, dict) and "max_steps" in settings:
            lines.append(
                f"| {stage} | {settings['max_steps']} | {settings['learning_rate']:g} | {settings['batch_size']} |"
            )
    return "\n".join(lines)


def world_dataset_id(world: str) -> str:
    """The name under which the card's metadata cites a built-in world's generated data."""
    return f"veltrix-worlds/{world}"


def render_model_card(
    template_path: str,
    pipeline,
    metrics: dict,
    recipe: dict,
    model_name: str,
    repo_id: str,
    card_metadata: dict | None = None,
) -> ModelCard:
    """The filled model card of a trained `pipeline` from the run's `metrics.json` and `recipe.json` contents.

    `repo_id` is what the usage snippets load (a Hub repository id, or a folder); `card_metadata` replaces entries of
    `DEFAULT_CARD_METADATA` (a bundle's `card`).
    """
    environment, results = metrics["environment"], metrics["results"]
    shapes, data = environment["shapes"], environment["data"]
    world = data["world"]
    metadata = {**DEFAULT_CARD_METADATA, "datasets": [world_dataset_id(world)], **(card_metadata or {})}
    eval_results = [
        EvalResult(
            task_type=metadata["pipeline_tag"],
            dataset_type=world_dataset_id(world),
            dataset_name=f"Veltrix {world} (held-out seed {data['seed']})",
            dataset_split=data["split"],
            metric_type="mse",
            metric_name=f"pixel MSE at horizon {h}",
            metric_value=round(results["pixel_mse"]["veltrix"][h - 1], 5),
        )
        for h in sorted({1, shapes["training_window"], shapes["horizon"]})
    ]
    card_data = ModelCardData(model_name=model_name, eval_results=eval_results, **metadata)
    targets = ", ".join(f"`{t['name']}` = {t['value']:.3f} ({t['op']} {t['target']})" for t in metrics["targets"])
    encoder, evolver = pipeline.encoder.config, pipeline.evolver.config
    reflow = recipe.get("reflow", {}).get("max_steps", 0)
    return ModelCard.from_template(
        card_data,
        template_path=template_path,
        model_name=model_name,
        repo_id=repo_id,
        world=world,
        image_size=encoder.image_size,
        num_channels=encoder.num_channels,
        action_dim=evolver.action_dim,
        units_per_step=shapes["units_per_step"],
        unit_dim=shapes["unit_dim"],
        encoder_parameters=f"{results['parameters']['encoder']:,}",
        evolver_parameters=f"{results['parameters']['evolver']:,}",
        decoder_parameters=f"{results['parameters']['decoder']:,}",
        context_length=shapes["context_length"],
        num_future_steps=pipeline.config.default_num_future_steps,
        num_inference_steps=pipeline.config.default_num_inference_steps,
        eval_seed=data["seed"],
        num_eval=shapes["held_out_trajectories"],
        horizon=shapes["horizon"],
        window=shapes["training_window"],
        horizon_over_window=round(shapes["horizon"] / shapes["training_window"], 2),
        eval_inference_steps=environment["sampling"]["num_inference_steps"],
        results_table=results_table(metrics),
        targets=targets,
        recipe_table=recipe_table(recipe),
        num_train=recipe["num_train_trajectories"],
        trajectory_length=recipe["trajectory_length"],
        train_seed=recipe["train_seed"],
        reflow_note=f", then reflow fine-tuning ({reflow} steps) for few-step sampling" if reflow else "",
        wall_clock=environment["wall_clock_s"],
        device=environment["device"],
        threads=environment["threads"],
        torch_version=environment["torch"],
    )


def save_model_card(card: ModelCard, folder: str) -> None:
    """Writes `<folder>/README.md` through a temporary file and a rename."""
    path = os.path.join(folder, "README.md")
    card.save(f"{path}.tmp")
    os.replace(f"{path}.tmp", path)


def validate_model_card(folder: str) -> ModelCard:
    """Checks `<folder>/README.md` offline the way the Hub reads it, and returns the loaded card.

    The YAML front matter must parse into `ModelCardData` and carry every `REQUIRED_METADATA` field; its
    `model-index` must parse into evaluation results and serialise back to itself; every image it shows must be a
    file in `folder`. Raises `ValueError` naming the field or file. (`ModelCard.validate` asks the Hub's
    `/api/validate-yaml` and needs a network.)
    """
    path = os.path.join(folder, "README.md")
    card = ModelCard.load(path)
    metadata = card.data.to_dict()
    missing = [key for key in REQUIRED_METADATA if not metadata.get(key)]
    if missing:
        raise ValueError(f"{path}: the metadata lacks {missing}.")
    model_name, eval_results = model_index_to_eval_results(metadata["model-index"])
    if eval_results_to_model_index(model_name, eval_results) != metadata["model-index"]:
        raise ValueError(f"{path}: `model-index` does not survive a parse and serialise round trip.")
    for image in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", card.text):
        if not os.path.isfile(os.path.join(folder, image)):
            raise ValueError(f"{path} shows {image}, which is not in {folder}.")
    return card
