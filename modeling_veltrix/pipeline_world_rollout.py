"""The transformers face of a saved Veltrix pipeline folder: the `world-rollout` task of `transformers.pipeline()` and
`VeltrixWorldConfig`, the `config.json` at the folder's root.

    >>> import modeling_veltrix  # registers the task, so no remote code is needed
    >>> rollout = pipeline("world-rollout", model="runs/demo/pipeline")
    >>> rollout(pixel_values, num_future_steps=24, seed=0)["frames"]  # (T, C, H, W) in [-1, 1] -> 24 PIL images
    >>> futures = rollout(pixel_values, sample=True, num_samples=4, seed=0)  # 4 sampled futures: a list of 4 dicts

Where this package is not installed, `pipeline(model=folder_or_repo_id, trust_remote_code=True)` finds the task in
the folder's `config.json` (`custom_pipelines`) and runs the folder's own copy of this code.
"""

import os
from collections.abc import Callable
from typing import ClassVar

import torch
from transformers import Pipeline, PreTrainedConfig
from transformers.pipelines import PIPELINE_REGISTRY

TASK = "world-rollout"
TASK_OUTPUT_TYPES = ("pil", "np", "pt")


def check_trajectory_input(name: str, value: object, ndim: int, batched: bool, feature: str) -> None:
    """Requires `value` None or a tensor with the batch axis exactly when `pixel_values` has it: `(T + n, feature)`
    for one trajectory, `(B, T + n, feature)` for a batch (no feature axis when `feature` is empty)."""
    if value is None:
        return
    axes = ("B, " if batched else "") + "T + n" + (f", {feature}" if feature else "")
    frames = "(B, T, C, H, W)" if batched else "(T, C, H, W)"
    got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
    if not isinstance(value, torch.Tensor) or value.dim() != ndim:
        raise ValueError(f"`{name}` must be a torch.Tensor ({axes}) for `pixel_values` {frames}, got {got}.")


class VeltrixWorldRolloutPipeline(Pipeline):
    r"""Context frames in, future frames out: `rollout(pixel_values, actions=None, timestamps=None,
    num_future_steps=None, num_inference_steps=None, seed=None, output_type="pil", output_modalities=("frames",),
    use_engram=None, sample=False, num_samples=1)`.

    `pixel_values` is a `torch.Tensor` `(T, C, H, W)` (one trajectory) or `(B, T, C, H, W)` in [-1, 1]; `actions`
    (`(T + n, A)` or `(B, T + n, A)`) and `timestamps` (`(T + n,)` or `(B, T + n)`, seconds) cover context and future
    steps as in [`VeltrixPipeline`]. `num_future_steps` and `num_inference_steps` default to the pipeline's saved call
    defaults; `seed` fixes the decoder's noise. One trajectory gives a dict `{"frames", "timestamps"}` (frames: a list
    of `n` PIL images, an array `(n, H, W, C)` or a tensor `(n, C, H, W)`, in [0, 1] for the last two), a batch gives
    a list of such dicts. With `"text"` / `"audio"` in `output_modalities` (an encoder that models them), each dict
    also holds `"captions"` (`n` strings) / `"audio_features"` `(n, K, V)` and `"audio_codes"` `(n, K)`, read from the
    evolved states; without `"frames"`, no frames are rendered (`"frames"` is `None`). `use_engram` is the
    pipeline's: by default a folder with an Engram memory rolls out with it, and each dict then also holds
    `"memory_hits"` `(n,)` (bool), the future steps the memory remembered.

    `sample` and `num_samples` are the pipeline's: `sample=True` samples the future states from the evolver's
    stochastic head (one future, a dict as above), `num_samples=K > 1` samples K futures per trajectory; `seed` then
    fixes the evolver's noise too. With K > 1, one trajectory gives a list of K dicts (one per sampled future) and a
    batch a list of B such lists (as `num_return_sequences` in text generation); each of those dicts also holds
    `"sample_spread"` `(n,)`, the standard deviation across its trajectory's K futures per step (the same in all K).
    """

    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_processor = False
    _load_video_processor = False

    def _sanitize_parameters(
        self,
        actions: torch.Tensor | None = None,
        timestamps: torch.Tensor | None = None,
        num_future_steps: int | None = None,
        num_inference_steps: int | None = None,
        seed: int | None = None,
        output_type: str | None = None,
        output_modalities: tuple[str, ...] | None = None,
        use_engram: bool | None = None,
        sample: bool | None = None,
        num_samples: int | None = None,
    ) -> tuple[dict, dict, dict]:
        if output_type is not None and output_type not in TASK_OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {TASK_OUTPUT_TYPES}, got {output_type!r}.")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not -(2**63) <= seed < 2**64):
            raise ValueError(f"`seed` must be an int in [-2**63, 2**64) (torch.Generator.manual_seed), got {seed!r}.")
        preprocess = {"actions": actions, "timestamps": timestamps}
        forward = {"num_future_steps": num_future_steps, "num_inference_steps": num_inference_steps, "seed": seed}
        forward["output_type"] = output_type or "pil"
        forward["output_modalities"] = ("frames",) if output_modalities is None else output_modalities
        forward["use_engram"] = use_engram
        # Checked by the pipeline with its other call arguments, before anything is computed.
        forward["sample"] = False if sample is None else sample
        forward["num_samples"] = 1 if num_samples is None else num_samples
        return {k: v for k, v in preprocess.items() if v is not None}, forward, {}

    def preprocess(
        self, pixel_values: torch.Tensor, actions: torch.Tensor | None = None, timestamps: torch.Tensor | None = None
    ) -> dict:
        """Adds the batch axis to one trajectory's frames (T, C, H, W), actions (T + n, A) and timestamps (T + n)."""
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() not in (4, 5):
            shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
            raise ValueError(f"`pixel_values` must be a torch.Tensor (T, C, H, W) or (B, T, C, H, W), got {shape}.")
        batched = pixel_values.dim() == 5
        check_trajectory_input("actions", actions, 3 if batched else 2, batched, "A")
        check_trajectory_input("timestamps", timestamps, 2 if batched else 1, batched, "")
        if not batched:
            pixel_values = pixel_values.unsqueeze(0)
            actions = None if actions is None else actions.unsqueeze(0)
            timestamps = None if timestamps is None else timestamps.unsqueeze(0)
        return {"pixel_values": pixel_values, "actions": actions, "timestamps": timestamps, "batched": batched}

    def _forward(
        self,
        model_inputs: dict,
        num_future_steps: int | None,
        num_inference_steps: int | None,
        seed: int | None,
        output_type: str,
        output_modalities: tuple[str, ...],
        use_engram: bool | None,
        sample: bool,
        num_samples: int,
    ) -> dict:
        generator = None if seed is None else torch.Generator(device=self.device).manual_seed(seed)
        out = self.model(
            model_inputs["pixel_values"],
            actions=model_inputs["actions"],
            timestamps=model_inputs["timestamps"],
            num_future_steps=num_future_steps,
            num_inference_steps=num_inference_steps,
            generator=generator,
            output_type=output_type,
            output_modalities=output_modalities,
            use_engram=use_engram,
            sample=sample,
            num_samples=num_samples,
        )
        per_trajectory = {
            name: getattr(out, name)
            for name in ("frames", "timestamps", "captions", "audio_features", "audio_codes", "memory_hits")
            if getattr(out, name) is not None
        }
        return {
            "outputs": per_trajectory,
            "batch_size": len(out.timestamps),
            "batched": model_inputs["batched"],
            "num_samples": num_samples,
            "sample_spread": out.sample_spread,
        }

    def postprocess(self, model_outputs: dict) -> dict | list[dict] | list[list[dict]]:
        """Splits the pipeline's outputs (B·K futures, the K of trajectory b at rows b·K … b·K + K − 1) into one
        dict per future: with K = 1, a dict per trajectory (a list for a batch); with K > 1, a list of K dicts per
        trajectory, each with its trajectory's `"sample_spread"` (n,) (a list of those lists for a batch)."""
        outputs, k = model_outputs["outputs"], model_outputs["num_samples"]
        futures = [
            {"frames": None} | {name: value[i] for name, value in outputs.items()}
            for i in range(model_outputs["batch_size"])
        ]
        if k == 1:
            trajectories = futures
        else:
            spread = model_outputs["sample_spread"]
            trajectories = [
                [future | {"sample_spread": spread[i // k]} for future in futures[i : i + k]]
                for i in range(0, len(futures), k)
            ]
        return trajectories if model_outputs["batched"] else trajectories[0]


def implemented_in_this_process(task: str) -> bool:
    """Whether `task` is registered with this module's [`VeltrixWorldRolloutPipeline`], i.e. this very code (the
    installed package, which registers it on import) already implements it."""
    return PIPELINE_REGISTRY.supported_tasks.get(task, {}).get("impl") is VeltrixWorldRolloutPipeline


class VeltrixWorldConfig(PreTrainedConfig):
    r"""
    Configuration at the root of a saved Veltrix pipeline folder, read by `AutoConfig` / `AutoModel` /
    `transformers.pipeline()`. It has no hyper-parameters of its own: each component keeps its configuration in its
    folder, and the pipeline its call defaults in `model_index.json`.

    Args:
        custom_pipelines (`dict`, *optional*):
            The folder's remote-code tasks (`{"world-rollout": {"impl": "pipeline_veltrix.VeltrixWorldRolloutPipeline",
            "pt": ["AutoModel"]}}`), which let `pipeline(model=folder, trust_remote_code=True)` find its task. A
            task that this process has registered with this same code is dropped: transformers gives a
            `custom_pipelines` entry priority over a registered task and then demands `trust_remote_code`, and the
            installed code needs none (so `pipeline("world-rollout", model=folder)` runs it).

    Example:

    ```python
    >>> config = VeltrixWorldConfig()
    >>> config.model_type
    'veltrix_world'
    ```
    """

    model_type = "veltrix_world"

    custom_pipelines: dict | None = None
    # Checks a local saved pipeline folder when this config is read from it (`from_dict`, which `AutoConfig` and so
    # `pipeline("world-rollout", model=folder)` call with the folder as `name_or_path`), so that a damaged folder
    # raises its `VeltrixRepositoryError` there: transformers' model loader would wrap it in a `ValueError`. A folder
    # without a root `config.json` is not where the config came from (it was read from a `subfolder`, which
    # `VeltrixWorldModel.from_pretrained` checks). `pipeline_veltrix` registers `VeltrixPipeline.check_folder`.
    folder_check: ClassVar[Callable[[str], None] | None] = None

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs) -> "VeltrixWorldConfig":
        """`PreTrainedConfig.from_dict`, after `folder_check` of the local folder it was read from."""
        folder = kwargs.get("name_or_path")
        if (
            cls.folder_check is not None
            and isinstance(folder, (str, os.PathLike))
            and os.path.isfile(os.path.join(folder, "config.json"))
        ):
            cls.folder_check(os.fspath(folder))
        return super().from_dict(config_dict, **kwargs)

    def __post_init__(self, **kwargs):
        if self.custom_pipelines is not None:
            self.custom_pipelines = {
                task: spec for task, spec in self.custom_pipelines.items() if not implemented_in_this_process(task)
            }
        super().__post_init__(**kwargs)


__all__ = ["TASK", "VeltrixWorldConfig", "VeltrixWorldRolloutPipeline"]
