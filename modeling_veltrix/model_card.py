"""Renders the repository's `model_card.md` template into a pipeline folder's `README.md` with
`huggingface_hub.ModelCard`: Hub metadata (library, pipeline tag, tags, licence, model-index with the evaluation
results) and the per-horizon results table of a demo / evaluation run."""

import os

from huggingface_hub import EvalResult, ModelCard, ModelCardData

REPORTED_HORIZONS = (1, 2, 4, 8, 12, 16, 24, 32, 48)


def results_table(metrics: dict) -> str:
    """A markdown table of pixel MSE per reported horizon and predictor."""
    pixel = metrics["results"]["pixel_mse"]
    horizons = [h for h in REPORTED_HORIZONS if h <= len(metrics["results"]["horizons"])]
    lines = ["| horizon | " + " | ".join(pixel) + " |", "| --- |" + " --- |" * len(pixel)]
    for h in horizons:
        lines.append(f"| {h} | " + " | ".join(f"{pixel[name][h - 1]:.4f}" for name in pixel) + " |")
    return "\n".join(lines)


def render_model_card(template_path: str, metrics: dict, model_name: str, repo_path: str) -> ModelCard:
    """The filled model card of a demo run, from its `metrics.json` content."""
    environment, results = metrics["environment"], metrics["results"]
    shapes, data = environment["shapes"], environment["data"]
    world = data["world"]
    eval_results = [
        EvalResult(
            task_type="image-to-video",
            dataset_type=f"veltrix-worlds/{world}",
            dataset_name=f"Veltrix {world} (held-out seed {data['seed']})",
            metric_type="mse",
            metric_name=f"pixel MSE at horizon {h}",
            metric_value=round(results["pixel_mse"]["veltrix"][h - 1], 5),
        )
        for h in (1, shapes["training_window"], shapes["horizon"])
    ]
    card_data = ModelCardData(
        model_name=model_name,
        library_name="diffusers",
        pipeline_tag="image-to-video",
        license="apache-2.0",
        tags=["world-model", "veltrix", "state-space-model", "mamba2", "flow-matching"],
        eval_results=eval_results,
    )
    targets = ", ".join(f"`{t['name']}` = {t['value']:.3f} ({t['op']} {t['target']})" for t in metrics["targets"])
    return ModelCard.from_template(
        card_data,
        template_path=template_path,
        model_name=model_name,
        repo_path=repo_path,
        world=world,
        units_per_step=shapes["units_per_step"],
        unit_dim=shapes["unit_dim"],
        encoder_parameters=f"{results['parameters']['encoder']:,}",
        evolver_parameters=f"{results['parameters']['evolver']:,}",
        decoder_parameters=f"{results['parameters']['decoder']:,}",
        eval_seed=data["seed"],
        num_eval=shapes["held_out_trajectories"],
        context_length=shapes["context_length"],
        horizon=shapes["horizon"],
        window=shapes["training_window"],
        num_inference_steps=environment["sampling"]["num_inference_steps"],
        results_table=results_table(metrics),
        targets=targets,
        wall_clock=environment["wall_clock_s"],
        device=environment["device"],
        threads=environment["threads"],
    )


def save_model_card(card: ModelCard, folder: str) -> None:
    """Writes `<folder>/README.md` through a temporary file and a rename."""
    path = os.path.join(folder, "README.md")
    card.save(f"{path}.tmp")
    os.replace(f"{path}.tmp", path)
