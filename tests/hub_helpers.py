"""Tiny pipelines for the Hub tests, their reference outputs, and the checks that reload them in another process."""

import textwrap

import torch
from conftest import randomize_, tiny_encoder_config, tiny_evolver_config
from diffusers import FlowMatchEulerDiscreteScheduler
from safetensors.torch import save_file

from modeling_veltrix import VeltrixDecoderModel, VeltrixEncoderModel, VeltrixEvolverModel, VeltrixPipeline

SEED = 7
NUM_FUTURE_STEPS = 3
NUM_INFERENCE_STEPS = 2


def tiny_pipeline(image_size: int = 16) -> VeltrixPipeline:
    """Random weights (perturbed so that zero-initialised layers act); a 4×4 unit grid at any `image_size`; call
    defaults NUM_FUTURE_STEPS / NUM_INFERENCE_STEPS."""
    torch.manual_seed(0)
    patch = image_size // 4
    decoder = VeltrixDecoderModel(
        sample_size=image_size,
        patch_size=patch,
        hidden_size=32,
        num_layers=1,
        num_attention_heads=2,
        cross_attention_dim=8,
        max_context_units=16,
    )
    pipe = VeltrixPipeline(
        encoder=VeltrixEncoderModel(tiny_encoder_config(image_size=image_size, patch_size=patch)).eval(),
        evolver=randomize_(VeltrixEvolverModel(tiny_evolver_config())).eval(),
        decoder=randomize_(decoder, std=0.05).eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(),
        default_num_future_steps=NUM_FUTURE_STEPS,
        default_num_inference_steps=NUM_INFERENCE_STEPS,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def save_reference(pipe: VeltrixPipeline, path: str) -> dict[str, torch.Tensor]:
    """Inputs and outputs of `pipe` to compare a reloaded copy with: a conditional rollout's frames, the encoder's
    units and the evolver's open-loop units; written to `path` (safetensors) and returned."""
    size = pipe.encoder.config.image_size
    frames = torch.rand(2, 3, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    total = frames.shape[1] + NUM_FUTURE_STEPS
    actions = torch.randn(2, total, 2, generator=torch.Generator().manual_seed(1))
    timestamps = torch.cumsum(torch.full((2, total), 0.1), dim=1)
    out = pipe(
        frames,
        actions=actions,
        timestamps=timestamps,
        num_future_steps=NUM_FUTURE_STEPS,
        num_inference_steps=NUM_INFERENCE_STEPS,
        generator=torch.Generator().manual_seed(SEED),
        output_type="pt",
    )
    units = pipe.encoder(frames).units
    reference = {
        "frames": frames,
        "actions": actions,
        "timestamps": timestamps,
        "expected": out.frames.contiguous(),
        "units": units.contiguous(),
        "rollout": pipe.evolver.rollout(units, NUM_FUTURE_STEPS).units.contiguous(),
    }
    save_file(reference, path)
    return reference


# Run with `sys.argv[1:] == [folder or repository id, reference file]` where the package cannot be imported: every
# remote-code loader must reproduce the reference. `AutoModel` reads a repository's components from its snapshot in
# the Hugging Face cache (transformers looks for remote code at a repository's root, not in `subfolder`).
REMOTE_CODE_CHECK = textwrap.dedent(
    f"""
    import os, sys, torch
    from diffusers import DiffusionPipeline
    from huggingface_hub import constants, snapshot_download
    from safetensors.torch import load_file
    from transformers import AutoModel, pipeline
    source, ref = sys.argv[1], load_file(sys.argv[2])
    steps = dict(actions=ref["actions"], timestamps=ref["timestamps"], num_future_steps={NUM_FUTURE_STEPS})
    steps.update(num_inference_steps={NUM_INFERENCE_STEPS})

    folder = source if os.path.isdir(source) else snapshot_download(source)
    # diffusers asks the Hub for the commit of a repository's pipeline code even offline (`model_info`), so
    # offline it reads the cached snapshot folder instead of the repository id.
    pipe = DiffusionPipeline.from_pretrained(folder if constants.HF_HUB_OFFLINE else source, trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    assert not type(pipe).__module__.startswith("modeling_veltrix"), type(pipe)
    out = pipe(ref["frames"], generator=torch.Generator().manual_seed({SEED}), output_type="pt", **steps)
    assert torch.equal(out.frames, ref["expected"]), "DiffusionPipeline"

    encoder = AutoModel.from_pretrained(os.path.join(folder, "encoder"), trust_remote_code=True)
    assert type(encoder).__name__ == "VeltrixEncoderModel"
    assert torch.equal(encoder(ref["frames"]).units, ref["units"]), "AutoModel encoder"
    evolver = AutoModel.from_pretrained(os.path.join(folder, "evolver"), trust_remote_code=True)
    assert type(evolver).__name__ == "VeltrixEvolverModel"
    assert torch.equal(evolver.rollout(ref["units"], {NUM_FUTURE_STEPS}).units, ref["rollout"]), "AutoModel evolver"

    rollout = pipeline(model=source, trust_remote_code=True)
    rollout.model.pipeline.set_progress_bar_config(disable=True)
    results = rollout(ref["frames"], seed={SEED}, output_type="pt", **steps)
    assert torch.equal(torch.stack([r["frames"] for r in results]), ref["expected"]), "pipeline()"
    print("remote code reproduces the reference")
    """
)

# The same with the installed package and no remote code: `VeltrixPipeline.from_pretrained` and the registered
# `world-rollout` task.
INSTALLED_PACKAGE_CHECK = textwrap.dedent(
    f"""
    import sys, torch
    from safetensors.torch import load_file
    from transformers import pipeline
    from modeling_veltrix import VeltrixPipeline
    source, ref = sys.argv[1], load_file(sys.argv[2])
    steps = dict(actions=ref["actions"], timestamps=ref["timestamps"], num_future_steps={NUM_FUTURE_STEPS})
    steps.update(num_inference_steps={NUM_INFERENCE_STEPS})
    pipe = VeltrixPipeline.from_pretrained(source)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(ref["frames"], generator=torch.Generator().manual_seed({SEED}), output_type="pt", **steps)
    assert torch.equal(out.frames, ref["expected"]), "VeltrixPipeline"
    rollout = pipeline("world-rollout", model=source)
    rollout.model.pipeline.set_progress_bar_config(disable=True)
    results = rollout(ref["frames"], seed={SEED}, output_type="pt", **steps)
    assert torch.equal(torch.stack([r["frames"] for r in results]), ref["expected"]), "world-rollout"
    print("the installed package reproduces the reference")
    """
)
