"""The Veltrix demo app (Gradio; runs as a Hugging Face Space's app.py): roll a world model out in the browser, and
plan with it.

    python scripts/app.py --model runs/demo/pipeline            # then open http://127.0.0.1:7860
    VELTRIX_MODEL=my-org/veltrix-tiny-bouncing-balls python scripts/app.py

The Roll out tab (the default): pick a built-in world and a seed, or upload frames (images, in order: the first
`context` are the context, any further ones the ground truth of the future); choose the horizon and the evolution mode
(`conditional`: the world's actions drive the future; `free`: no actions). The app shows ground truth | prediction |
error as an animation and the error-vs-horizon plot against copy-last-frame and mean-of-context. `--model` (or
`VELTRIX_MODEL`) is a pipeline folder or a Hub repository id. The app serves on `--host`, by default
`GRADIO_SERVER_NAME` (what a Space sets), else 127.0.0.1. Uploads are images only, at most 8 MB and 4 megapixels each
(checked before decoding); each request's pictures go to a temporary folder of which only the newest few are kept,
removed at exit.

The Plan tab plans with the model in the built-in reach task (`modeling_veltrix.planning.reach`: push the red ball to
where a goal frame shows it): pick an episode (its goal frame is shown at once) and the planner (method, candidates,
iterations, steps to the goal); the app plans open loop with `VeltrixPipeline.plan`, executes the plan in the true
world and shows simulator | plan (the decoder's rendering of the planned states) | error as an animation, with
whether the ball reached its goal, its final distance, the plan call's time and the objective per iteration. It needs
a model of that world (32-pixel RGB frames, 2-component actions).
"""

import argparse
import atexit
import os
import signal
import sys
from collections.abc import Callable

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # the app works offline and reports nothing

import gradio as gr  # noqa: E402

from modeling_veltrix import PLANNING_METHODS, VeltrixPipeline  # noqa: E402
from modeling_veltrix.evaluation.viewer import (  # noqa: E402
    MAX_IMAGE_PIXELS,
    MAX_UPLOAD_BYTES,
    MODES,
    OutputFolders,
    frames_from_images,
    view_rollout,
    world_trajectory,
)
from modeling_veltrix.planning.viewer import PlanView, goal_preview, view_plan  # noqa: E402
from modeling_veltrix.worlds import WORLDS  # noqa: E402

SUMMARY_HORIZONS = (1, 2, 4, 8, 16, 24, 32, 48, 64)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("VELTRIX_MODEL", "runs/demo/pipeline"))
    parser.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="address to serve on; defaults to GRADIO_SERVER_NAME (0.0.0.0 inside a Space), else 127.0.0.1",
    )
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    return parser.parse_args()


def summary(pixel_mse: dict) -> str:
    """A markdown table of the rollout's pixel MSE at a few horizons, or why there is none."""
    if not pixel_mse:
        return "No ground truth for this horizon: the animation shows the prediction alone."
    length = len(next(iter(pixel_mse.values())))
    rows = ["| horizon | " + " | ".join(pixel_mse) + " |", "| --- |" + " --- |" * len(pixel_mse)]
    for h in (h for h in SUMMARY_HORIZONS if h <= length):
        rows.append(f"| {h} | " + " | ".join(f"{values[h - 1]:.4f}" for values in pixel_mse.values()) + " |")
    return "\n".join(rows)


def make_roll_out(pipeline: VeltrixPipeline, outputs: OutputFolders) -> Callable:
    """The app's request handler around `pipeline`: one rollout, written to a fresh folder of `outputs`, shown as
    (GIF path, plot path, markdown table); a bad request (e.g. an upload that is not an image, too large or of too
    many pixels) is shown to the user as a `gr.Error`."""
    image_size = pipeline.encoder.config.image_size
    channels = pipeline.encoder.config.num_channels

    def roll_out(source, world, seed, uploads, context, horizon, mode, euler_steps):
        context, horizon, seed, euler_steps = int(context), int(horizon), int(seed), int(euler_steps)
        try:
            if source == "built-in world":
                data = world_trajectory(world, seed, context + horizon, image_size)
                frames, actions, timestamps = data["pixel_values"], data["actions"], data["timestamps"]
            else:
                frames, actions, timestamps = frames_from_images(uploads or [], image_size, channels), None, None
            view = view_rollout(
                pipeline,
                frames,
                context,
                horizon,
                mode,
                outputs.new(),
                actions=actions,
                timestamps=timestamps,
                num_inference_steps=euler_steps,
                seed=seed,
            )
        except ValueError as error:
            raise gr.Error(str(error)) from error
        return view.gif_path, view.plot_path, summary(view.pixel_mse)

    return roll_out


def whole(value):
    """A whole number from a number field, None (an emptied field) kept so that the check names the argument."""
    return None if value is None else int(value)


def plan_summary(view: PlanView) -> str:
    """The plan's outcome in markdown: success, ball 0's final distance to its goal, the plan call's time and the best
    objective after each iteration."""
    objective = ", ".join(f"{value:.4f}" for value in view.objective_per_iteration)
    return (
        f"**{'Reached' if view.success else 'Missed'}** the goal: the red ball ends {view.distance:.1f} px from it "
        "(success within one ball radius).\n\n"
        f"Plan call (search and rendering): {view.milliseconds:.0f} ms. Objective per iteration: {objective}."
    )


def make_plan(pipeline: VeltrixPipeline, outputs: OutputFolders) -> Callable:
    """The Plan tab's request handler around `pipeline`: one reach episode planned and executed, written to a fresh
    folder of `outputs`, shown as (goal PNG path, simulator | plan | error GIF path, markdown summary); a bad request
    or a model of another world is shown as a `gr.Error`."""

    def plan(episode, method, num_samples, num_iterations, horizon, euler_steps):
        try:
            view = view_plan(
                pipeline,
                whole(episode),
                method,
                whole(num_samples),
                whole(num_iterations),
                outputs.new(),
                horizon=whole(horizon),
                num_inference_steps=whole(euler_steps),
            )
        except ValueError as error:
            raise gr.Error(str(error)) from error
        return view.goal_path, view.gif_path, plan_summary(view)

    return plan


def preview(episode, horizon):
    """The goal frame of the chosen episode and horizon, shown before planning (`gr.Error` for a bad choice)."""
    try:
        return goal_preview(whole(episode), whole(horizon))
    except ValueError as error:
        raise gr.Error(str(error)) from error


def build_app(pipeline: VeltrixPipeline, outputs: OutputFolders) -> gr.Blocks:
    """The app's page around `pipeline`, writing each request's pictures to a fresh folder of `outputs`; Gradio's
    own cache (uploads, results) is emptied of files older than an hour, every ten minutes and at shutdown. Two tabs:
    "Roll out" (the default) and "Plan"."""
    image_size = pipeline.encoder.config.image_size
    roll_out = make_roll_out(pipeline, outputs)
    plan = make_plan(pipeline, outputs)

    with gr.Blocks(title="Veltrix world model", delete_cache=(600, 3600)) as app:
        gr.Markdown("# Veltrix: roll a latent world model out, and plan with it")
        with gr.Tab("Roll out"):
            gr.Markdown(
                f"The model sees `context` frames ({image_size}×{image_size}), evolves its world state `horizon` "
                "steps and renders them. Left to right: ground truth | prediction | error."
            )
            with gr.Row():
                with gr.Column():
                    source = gr.Radio(
                        ["built-in world", "uploaded frames"], value="built-in world", label="frames from"
                    )
                    world = gr.Dropdown(sorted(WORLDS), value=sorted(WORLDS)[0], label="world")
                    seed = gr.Number(
                        value=0, precision=0, label="seed (the world's trajectory and the decoder's noise)"
                    )
                    uploads = gr.File(
                        file_count="multiple",
                        file_types=["image"],
                        label=f"frames (images, in order; at most {MAX_UPLOAD_BYTES // 2**20} MB and "
                        f"{MAX_IMAGE_PIXELS // 10**6} megapixels each)",
                    )
                    context = gr.Slider(1, 32, value=8, step=1, label="context frames")
                    horizon = gr.Slider(1, 64, value=pipeline.config.default_num_future_steps, step=1, label="horizon")
                    mode = gr.Radio(list(MODES), value=MODES[0], label="mode (free: no actions)")
                    euler = gr.Slider(
                        1, 50, value=pipeline.config.default_num_inference_steps, step=1, label="decoder Euler steps"
                    )
                    button = gr.Button("Roll out", variant="primary")
                with gr.Column():
                    animation = gr.Image(label="ground truth | prediction | error", type="filepath", format="gif")
                    plot = gr.Image(label="error vs horizon", type="filepath")
                    table = gr.Markdown()
            button.click(
                roll_out,
                inputs=[source, world, seed, uploads, context, horizon, mode, euler],
                outputs=[animation, plot, table],
            )
        with gr.Tab("Plan"):
            gr.Markdown(
                "Push the red ball to where the goal frame shows it. The model sees 8 frames of a held-out episode "
                "of the bouncing-balls world, searches impulses for the red ball that bring its state to the goal "
                "frame's, and the true world executes them. Left to right: simulator | plan (the model's rendering "
                "of the states it planned) | error."
            )
            with gr.Row():
                with gr.Column():
                    episode = gr.Number(value=0, precision=0, minimum=0, label="episode (its goal frame)")
                    steps = gr.Slider(1, 50, value=25, step=1, label="steps to the goal")
                    method = gr.Radio(list(PLANNING_METHODS), value=PLANNING_METHODS[0], label="planner")
                    candidates = gr.Slider(16, 512, value=300, step=1, label="candidates")
                    iterations = gr.Slider(1, 10, value=3, step=1, label="iterations")
                    plan_euler = gr.Slider(
                        1,
                        50,
                        value=pipeline.config.default_num_inference_steps,
                        step=1,
                        label="decoder Euler steps (rendering the plan)",
                    )
                    plan_button = gr.Button("Plan", variant="primary")
                with gr.Column():
                    goal = gr.Image(value=goal_preview(0, 25), label="goal frame", type="filepath")
                    plan_animation = gr.Image(label="simulator | plan | error", type="filepath", format="gif")
                    plan_table = gr.Markdown()
            for choice in (episode, steps):
                choice.change(preview, inputs=[episode, steps], outputs=goal)
            plan_button.click(
                plan,
                inputs=[episode, method, candidates, iterations, steps, plan_euler],
                outputs=[goal, plan_animation, plan_table],
            )
    return app


def main() -> None:
    args = parse_args()
    pipeline = VeltrixPipeline.from_pretrained(args.model)
    pipeline.set_progress_bar_config(disable=True)
    outputs = OutputFolders()
    atexit.register(outputs.cleanup)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))  # a stopped Space or server cleans up too
    build_app(pipeline, outputs).launch(server_name=args.host, server_port=args.port, max_file_size=MAX_UPLOAD_BYTES)


if __name__ == "__main__":
    main()
