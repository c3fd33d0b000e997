"""Published pipeline bundles (`pipelines/<name>/bundle.json`): what a Hub repository holds besides weights, and the
assembly of the complete repository from a bundle and a training run.

A bundle names the preset whose component and scheduler configs the pipeline uses, the built-in world it was
trained on, the context length its usage needs, its default call arguments and its model-card metadata:

    {"preset": "configuration/veltrix-tiny", "world": "bouncing_balls", "context_length": 8,
     "call_defaults": {"num_future_steps": 24, "num_inference_steps": 8},
     "card": {"library_name": "diffusers", "pipeline_tag": "video-to-video", "license": "apache-2.0", "tags": [...]}}

`assemble_repository` loads the trained components of a run folder (as `scripts/demo.py` or `scripts/train.py` write
it), saves the pipeline with the bundle's call defaults, adds the run's metrics, recipe, GIF and plot, and renders
the model card.
"""

import json
import os
import shutil
from dataclasses import dataclass

from ..pipeline_veltrix import VeltrixPipeline
from ..repository_check import check_repository, write_folder_atomically
from ..training import COMPONENTS, VeltrixTrainingRecipe, assemble_pipeline, load_or_create_models
from ..worlds import world_metadata
from .model_card import MEDIA, render_model_card, save_model_card, validate_model_card

BUNDLE_FILE = "bundle.json"
CALL_DEFAULTS = ("num_future_steps", "num_inference_steps")
CARD_KEYS = ("library_name", "pipeline_tag", "license", "tags", "datasets", "base_model")
RUN_FILES = ("metrics.json", "recipe.json", *MEDIA)


@dataclass
class VeltrixBundle:
    """One published pipeline's bundle; `from_folder` reads and checks `<folder>/bundle.json`."""

    name: str
    preset: str  # a preset folder (encoder/, evolver/, decoder/, scheduler/ configs), relative to the repository
    world: str
    context_length: int
    call_defaults: dict
    card: dict

    @classmethod
    def from_folder(cls, folder: str, repository_root: str) -> "VeltrixBundle":
        path = os.path.join(folder, BUNDLE_FILE)
        with open(path, encoding="utf-8") as handle:
            spec = json.load(handle)
        expected = {"preset", "world", "context_length", "call_defaults", "card"}
        if set(spec) != expected:
            raise ValueError(f"{path} must have exactly the keys {sorted(expected)}, got {sorted(spec)}.")
        preset = os.path.join(repository_root, spec["preset"])
        if not os.path.isdir(preset):
            raise ValueError(f"{path}: `preset` must be a preset folder, got {spec['preset']!r}.")
        world_metadata(spec["world"])  # raises ValueError for an unknown world
        if not isinstance(spec["context_length"], int) or spec["context_length"] < 1:
            raise ValueError(f"{path}: `context_length` must be an int >= 1, got {spec['context_length']!r}.")
        if set(spec["call_defaults"]) != set(CALL_DEFAULTS):
            raise ValueError(f"{path}: `call_defaults` must set exactly {CALL_DEFAULTS}, got {spec['call_defaults']}.")
        unknown = sorted(set(spec["card"]) - set(CARD_KEYS))
        if unknown:
            raise ValueError(f"{path}: `card` may set {CARD_KEYS}, got unknown {unknown}.")
        return cls(
            name=os.path.basename(os.path.normpath(folder)),
            preset=preset,
            world=spec["world"],
            context_length=spec["context_length"],
            call_defaults=spec["call_defaults"],
            card=spec["card"],
        )

    def build_pipeline(self, weights_dir: str) -> VeltrixPipeline:
        """The bundle's pipeline: the preset's components, with the trained weights of `weights_dir` where there
        are some (random weights elsewhere), the preset's scheduler and the bundle's call defaults."""
        models = load_or_create_models(self.preset, weights_dir, action_dim=world_metadata(self.world).action_dim)
        pipeline = assemble_pipeline(models, self.preset)
        defaults = {f"default_{key}": value for key, value in self.call_defaults.items()}
        return VeltrixPipeline(**pipeline.components, **defaults)


def assemble_repository(bundle: VeltrixBundle, weights_dir: str, output_dir: str, repo_id: str, template: str) -> None:
    """Writes the complete Hub repository of `bundle`, trained in the run folder `weights_dir` (as `scripts/demo.py`
    writes it), to `output_dir`, a new or empty folder, through a temporary folder renamed into place: the saved
    pipeline (weights, configs, code), the run's `metrics.json`, `recipe.json`, `rollout.gif` and
    `error_vs_horizon.png`, and the model card `README.md` (rendered from `template`, its snippets loading
    `repo_id`), which is validated.

    Raises `ValueError` when `output_dir` holds anything (nothing is ever deleted to make room), when the run lacks a
    trained component or one of those files, or was trained on another world than the bundle's.
    """
    if os.path.exists(output_dir) and not (os.path.isdir(output_dir) and not os.listdir(output_dir)):
        raise ValueError(
            f"`output_dir` must be a new or empty folder, got {output_dir}, which holds files: it is never replaced."
        )
    missing = [c for c in COMPONENTS if not os.path.isdir(os.path.join(weights_dir, c))]
    missing += [f for f in RUN_FILES if not os.path.isfile(os.path.join(weights_dir, f))]
    if missing:
        raise ValueError(
            f"`weights_dir` {weights_dir} must hold the trained {list(COMPONENTS)} and {RUN_FILES}, lacks {missing}."
        )
    recipe = VeltrixTrainingRecipe.from_json_file(os.path.join(weights_dir, "recipe.json"))
    if recipe.world != bundle.world:
        raise ValueError(
            f"The bundle {bundle.name} is for the world {bundle.world!r}, {weights_dir} trained {recipe.world!r}."
        )
    pipeline = bundle.build_pipeline(weights_dir)
    with open(os.path.join(weights_dir, "metrics.json"), encoding="utf-8") as handle:
        metrics = json.load(handle)
    with open(os.path.join(weights_dir, "recipe.json"), encoding="utf-8") as handle:
        recipe_dict = json.load(handle)
    card = render_model_card(template, pipeline, metrics, recipe_dict, bundle.name, repo_id, bundle.card)

    def write(staging: str) -> None:
        pipeline.save_pretrained(staging)
        for name in RUN_FILES:
            shutil.copyfile(os.path.join(weights_dir, name), os.path.join(staging, name))
        save_model_card(card, staging)
        validate_model_card(staging)
        check_repository(staging)

    write_folder_atomically(write, output_dir)
