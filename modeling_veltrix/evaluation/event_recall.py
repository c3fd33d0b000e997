"""Future event recall on the speaking world: does an evolved future state caption the events that happen?

The speaking preset's world (bouncing balls with captions and audio) names an event per step ("the red ball hits the
left wall", or "nothing happens"). A deterministic evolver that averages its uncertain futures regresses such a
discrete event to the majority class; sampled futures can commit to one. The recall is the caption event accuracy on
the future steps where something happens, for the evolver's mean prediction and for its sampled futures side by side.
"""

import os

from ..pipeline_veltrix import VeltrixPipeline
from ..training import (
    VeltrixTrainingRecipe,
    assemble_pipeline,
    build_datasets,
    load_or_create_models,
    train_stages,
    world_action_dim,
)
from .rollouts import evaluate_future_modalities

EVENT_RECALL_TARGET = 0.5
# Captions are read from the evolved states by the encoder's caption head: the frame decoder is not needed.
EVENT_RECALL_STAGES = ("encoder", "evolver")


def evaluate_event_recall(
    preset: str, recipe: VeltrixTrainingRecipe, output_dir: str, num_samples: int, seed: int = 0
) -> tuple[dict, VeltrixPipeline]:
    """Trains (or loads, resuming under `output_dir`) the speaking preset's encoder and evolver with `recipe` (the
    stages `EVENT_RECALL_STAGES`; the frame decoder stays untrained, captions need none), then reads captions from
    the evolved states of the first `recipe.rollout_window` future steps of every held-out trajectory: from the mean
    prediction (`deterministic`) and from `num_samples` sampled futures per context (`sampled`, when the evolver has
    a sampling head; noise from `seed`).

    Returns {"preset", "world", "deterministic": scores, "sampled": scores or None} with the scores of
    `evaluate_future_modalities` (among them `caption_event_accuracy_on_event_steps`, the event recall), and the
    trained pipeline.
    """
    if not recipe.world_options.get("captions"):
        raise ValueError(
            f"`recipe` must describe a captioning world (`world_options` with captions=True), got "
            f"world_options={recipe.world_options!r}."
        )
    train, held_out = build_datasets(recipe)
    models = load_or_create_models(preset, output_dir, world_action_dim(recipe), seed=recipe.seed)
    train_stages(EVENT_RECALL_STAGES, models, preset, train, recipe, output_dir, skip_finished=True)
    pipeline = assemble_pipeline(models, preset)
    pipeline.set_progress_bar_config(disable=True)
    arguments = (pipeline, held_out, recipe.context_length, recipe.rollout_window)
    sampled = None
    if pipeline.evolver.can_sample:
        sampled = evaluate_future_modalities(*arguments, num_samples=num_samples, seed=seed)
    result = {
        "preset": os.path.abspath(preset),
        "world": recipe.world,
        "deterministic": evaluate_future_modalities(*arguments, seed=seed),
        "sampled": sampled,
    }
    return result, pipeline


def event_recall_targets(result: dict) -> list[dict]:
    """`future_event_recall_speaking`: the sampled futures' event recall on eventful future steps (the mean
    prediction's when the evolver cannot sample), goal >= 0.5; the deterministic value is in the results."""
    scores = result["sampled"] or result["deterministic"]
    return [
        {
            "name": "future_event_recall_speaking",
            "value": scores["caption_event_accuracy_on_event_steps"],
            "op": ">=",
            "target": EVENT_RECALL_TARGET,
        }
    ]
