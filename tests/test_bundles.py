"""Every published pipeline bundle in `pipelines/` builds from its preset with random weights and runs with its
default call arguments on its world's data."""

import json
from pathlib import Path

import pytest
import torch

from modeling_veltrix.training import assemble_pipeline, load_or_create_models
from modeling_veltrix.worlds import build_world_dataset

REPO = Path(__file__).parent.parent
BUNDLES = sorted(path.parent for path in (REPO / "pipelines").glob("*/bundle.json"))


def test_there_is_a_bundle():
    assert BUNDLES


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_bundle_runs_with_random_weights(bundle, tmp_path):
    spec = json.loads((bundle / "bundle.json").read_text())
    preset = REPO / spec["preset"]
    pipe = assemble_pipeline(load_or_create_models(str(preset), str(tmp_path)), str(preset))
    pipe.set_progress_bar_config(disable=True)
    defaults = dict(spec["call_defaults"])
    future, context = defaults.pop("num_future_steps"), spec["context_length"]
    data = build_world_dataset(
        spec["world"], num_trajectories=1, num_steps=context + future, seed=0, cache_dir=str(tmp_path / "cache")
    ).with_format("torch")[:1]
    out = pipe(
        data["pixel_values"][:, :context],
        actions=data["actions"],
        timestamps=data["timestamps"],
        num_future_steps=future,
        generator=torch.Generator().manual_seed(0),
        **defaults,
    )
    assert len(out.frames[0]) == future
    assert spec["card"]["library_name"] == "diffusers"
