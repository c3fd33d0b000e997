"""Every published pipeline bundle in `pipelines/` builds from its preset with random weights, runs with its call
defaults on its world's data, and saves as a complete repository; malformed bundles are rejected by name."""

import json
from pathlib import Path

import pytest
import torch

from modeling_veltrix.hub.bundle import VeltrixBundle
from modeling_veltrix.repository_check import check_repository
from modeling_veltrix.worlds import build_world_dataset

REPO = Path(__file__).parent.parent
BUNDLES = sorted(path.parent for path in (REPO / "pipelines").glob("*/bundle.json"))


def test_there_is_a_bundle():
    assert BUNDLES


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_bundle_runs_with_random_weights(bundle, tmp_path):
    spec = VeltrixBundle.from_folder(str(bundle), str(REPO))
    pipe = spec.build_pipeline(str(tmp_path / "no-run"))  # nothing trained there: the preset's random weights
    pipe.set_progress_bar_config(disable=True)
    future = spec.call_defaults["num_future_steps"]
    assert pipe.config.default_num_future_steps == future
    assert pipe.config.default_num_inference_steps == spec.call_defaults["num_inference_steps"]
    data = build_world_dataset(
        spec.world, num_trajectories=1, num_steps=spec.context_length + future, seed=0, cache_dir=str(tmp_path / "c")
    ).with_format("torch")[:1]
    out = pipe(
        data["pixel_values"][:, : spec.context_length],
        actions=data["actions"],
        timestamps=data["timestamps"],
        generator=torch.Generator().manual_seed(0),
    )
    assert len(out.frames[0]) == future
    pipe.save_pretrained(tmp_path / "repository")
    assert check_repository(str(tmp_path / "repository"))["default_num_future_steps"] == future


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"extra": 1}, "exactly the keys"),
        ({"preset": "configuration/missing"}, "preset"),
        ({"world": "flatland"}, "flatland"),
        ({"context_length": 0}, "context_length"),
        ({"call_defaults": {"num_future_steps": 4}}, "call_defaults"),
        ({"card": {"licence": "mit"}}, "licence"),
    ],
)
def test_malformed_bundle_is_rejected(tmp_path, change, message):
    spec = json.loads((BUNDLES[0] / "bundle.json").read_text())
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "bundle.json").write_text(json.dumps({**spec, **change}))
    with pytest.raises(ValueError, match=message):
        VeltrixBundle.from_folder(str(folder), str(REPO))
