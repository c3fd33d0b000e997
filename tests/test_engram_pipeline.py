"""The Engram memory as the optional `engram` component of `VeltrixPipeline`: `use_engram` of a call, the same outputs
after a save through every loader (installed package, `pipeline("world-rollout")`, a fresh process without the package
and `trust_remote_code=True`), and a clear error for a memory built for another encoder or evolver, a truncated
weights file or a configuration that disagrees with the saved tables."""

import inspect
import json
import re
import shutil

import pytest
import torch
from conftest import randomize_
from hub_helpers import NUM_FUTURE_STEPS, NUM_INFERENCE_STEPS, SEED, tiny_pipeline
from safetensors.torch import save_file
from transformers import AutoModel, pipeline

from modeling_veltrix import (
    VeltrixEngramConfig,
    VeltrixEngramModel,
    VeltrixIntervention,
    VeltrixPipeline,
    VeltrixRepositoryError,
    weights_fingerprint,
)
from modeling_veltrix.hub.remote_code_check import run_without_package
from modeling_veltrix.hub.source_inlining import inline_relative_imports


def tiny_engram_config(**overrides) -> VeltrixEngramConfig:
    """A memory for `hub_helpers.tiny_pipeline`'s evolver (16 units of width 8, 2 layers of width 16), with a
    parametric memory before layer 1 and a table that hits after one observation."""
    values = dict(
        unit_dim=8,
        num_units_per_step=16,
        fsq_levels=[3, 3],
        ngram_orders=[1, 2],
        table_size=13,
        hit_threshold=1,
        gate_hidden_size=8,
        injection_layers=[1],
        embedding_dim=4,
        parametric_table_size=11,
        hidden_size=16,
    )
    return VeltrixEngramConfig(**{**values, **overrides})


def filled_engram(pipe: VeltrixPipeline, **overrides) -> VeltrixEngramModel:
    """A memory of `tiny_engram_config(**overrides)` whose every slot holds a random state seen 5 times, with random
    gate and parametric weights, recording the fingerprints of `pipe`'s encoder and evolver."""
    torch.manual_seed(1)
    engram = randomize_(VeltrixEngramModel(tiny_engram_config(**overrides)), seed=1).eval()
    engram.table_counts.fill_(5)
    engram.table_states.normal_()
    engram.table_step_sizes.fill_(0.1)
    engram.config.encoder_fingerprint = weights_fingerprint(pipe.encoder)
    engram.config.evolver_fingerprint = weights_fingerprint(pipe.evolver)
    return engram


def with_engram(pipe: VeltrixPipeline, engram: VeltrixEngramModel) -> VeltrixPipeline:
    """`pipe`'s components and call defaults with `engram`."""
    defaults = {key: pipe.config[key] for key in ("default_num_future_steps", "default_num_inference_steps")}
    remembering = VeltrixPipeline(**{**pipe.components, "engram": engram}, **defaults)
    remembering.set_progress_bar_config(disable=True)
    return remembering


@pytest.fixture(scope="module")
def plain() -> VeltrixPipeline:
    """The tiny Hub pipeline without memory, with a non-zero velocity head (so the rollout moves)."""
    pipe = tiny_pipeline()
    torch.nn.init.normal_(pipe.evolver.velocity_head.weight, std=0.2, generator=torch.Generator().manual_seed(3))
    return pipe


@pytest.fixture(scope="module")
def remembering(plain) -> VeltrixPipeline:
    return with_engram(plain, filled_engram(plain))


def inputs() -> dict[str, torch.Tensor]:
    frames = torch.rand(2, 3, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    total = frames.shape[1] + NUM_FUTURE_STEPS
    return {
        "frames": frames,
        "actions": torch.randn(2, total, 2, generator=torch.Generator().manual_seed(1)),
        "timestamps": torch.cumsum(torch.full((2, total), 0.1), dim=1),
    }


def rollout(pipe: VeltrixPipeline, **call) -> object:
    given = inputs()
    return pipe(
        given["frames"],
        actions=given["actions"],
        timestamps=given["timestamps"],
        generator=torch.Generator().manual_seed(SEED),
        output_type="pt",
        **call,
    )


@pytest.fixture(scope="module")
def saved(remembering, plain, tmp_path_factory):
    """(folder of the pipeline with memory, reference file): the frames and memory hits with the memory, and the
    frames without it (`expected_without`, those of the pipeline without memory)."""
    root = tmp_path_factory.mktemp("engram")
    remembering.save_pretrained(root / "pipeline")
    out = rollout(remembering)
    reference = {**inputs(), "expected": out.frames, "memory_hits": out.memory_hits}
    reference["expected_without"] = rollout(plain).frames
    save_file({key: value.contiguous() for key, value in reference.items()}, root / "reference.safetensors")
    return root / "pipeline", root / "reference.safetensors"


def test_use_engram_chooses_the_memory(remembering, plain):
    without = rollout(plain)
    assert without.memory_hits is None
    default, on = rollout(remembering), rollout(remembering, use_engram=True)
    assert torch.equal(default.frames, on.frames) and torch.equal(default.memory_hits, on.memory_hits)
    assert default.memory_hits.shape == (2, NUM_FUTURE_STEPS) and default.memory_hits.dtype == torch.bool
    assert default.memory_hits.all()  # every slot holds a state seen 5 times
    assert not torch.allclose(default.units, without.units)  # the memory moved the rollout
    off = rollout(remembering, use_engram=False)
    assert off.memory_hits is None
    assert torch.equal(off.units, without.units) and torch.equal(off.frames, without.frames)
    tuple_out = rollout(remembering, return_dict=False)
    assert torch.equal(tuple_out[-1], default.memory_hits) and len(tuple_out) == 4
    assert len(rollout(remembering, use_engram=False, return_dict=False)) == 3


def test_counterfactual_call_reports_the_factual_branch_hits(remembering):
    push = VeltrixIntervention(step=1, state_delta=torch.ones(2, 16, 8))
    out = rollout(remembering, interventions=push)
    factual = rollout(remembering)
    assert torch.equal(out.units, factual.units) and torch.equal(out.memory_hits, factual.memory_hits)
    assert not torch.allclose(out.counterfactual_units[:, 1:], out.units[:, 1:])


def test_bad_use_engram_is_named(remembering, plain):
    with pytest.raises(ValueError, match=r"`use_engram=True` needs a pipeline with an Engram memory"):
        rollout(plain, use_engram=True)
    with pytest.raises(ValueError, match=r"`use_engram` must be None or a bool, got 1"):
        rollout(remembering, use_engram=1)
    remembering.engram.to(torch.float64)
    try:
        with pytest.raises(ValueError, match=r"`engram` must be in the evolver's dtype torch.float32"):
            rollout(remembering)
    finally:
        remembering.engram.to(torch.float32)


def test_saved_folder_holds_the_memory_once(saved, plain, tmp_path):
    folder, _ = saved
    index = json.loads((folder / "model_index.json").read_text())
    assert index["engram"] == ["modeling_veltrix_engram", "VeltrixEngramModel"]
    assert sorted(p.name for p in (folder / "engram").iterdir()) == [
        "config.json",
        "model.safetensors",
        "modeling_veltrix_engram.py",
    ]
    config = json.loads((folder / "engram" / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "modeling_veltrix_engram.VeltrixEngramConfig",
        "AutoModel": "modeling_veltrix_engram.VeltrixEngramModel",
    }
    code = (folder / "engram" / "modeling_veltrix_engram.py").read_text()
    assert code == inline_relative_imports(inspect.getfile(VeltrixEngramModel))  # the module, self-contained
    assert "modeling_veltrix." not in code.replace("modeling_veltrix.hub.source_inlining", "")
    # Without memory, the component is saved as left out, and a folder saved before it existed still loads.
    plain.save_pretrained(tmp_path / "plain")
    index_path = tmp_path / "plain" / "model_index.json"
    index = json.loads(index_path.read_text())
    assert index["engram"] == [None, None] and not (tmp_path / "plain" / "engram").exists()
    del index["engram"]
    index_path.write_text(json.dumps(index))
    assert VeltrixPipeline.from_pretrained(tmp_path / "plain").engram is None


def test_installed_package_loads_the_memory(saved, remembering):
    folder, _ = saved
    reference = inputs()
    loaded = VeltrixPipeline.from_pretrained(folder)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.engram, VeltrixEngramModel)
    for name, buffer in remembering.engram.state_dict().items():
        assert torch.equal(loaded.engram.state_dict()[name], buffer), name
    out = rollout(loaded)
    expected = rollout(remembering)
    assert torch.equal(out.frames, expected.frames) and torch.equal(out.memory_hits, expected.memory_hits)
    engram = AutoModel.from_pretrained(folder / "engram")
    assert isinstance(engram, VeltrixEngramModel)
    assert engram.config.encoder_fingerprint == weights_fingerprint(loaded.encoder)

    task = pipeline("world-rollout", model=str(folder))
    task.model.pipeline.set_progress_bar_config(disable=True)
    steps = dict(actions=reference["actions"], timestamps=reference["timestamps"], output_type="pt", seed=SEED)
    results = task(reference["frames"], **steps)
    assert torch.equal(torch.stack([r["frames"] for r in results]), expected.frames)
    assert torch.equal(torch.stack([r["memory_hits"] for r in results]), expected.memory_hits)
    without = task(reference["frames"], use_engram=False, **steps)
    assert "memory_hits" not in without[0]
    assert torch.equal(torch.stack([r["frames"] for r in without]), rollout(remembering, use_engram=False).frames)


REMOTE_ENGRAM_CHECK = f"""
import os, sys, torch
from diffusers import DiffusionPipeline
from safetensors.torch import load_file
from transformers import AutoModel, pipeline
folder, ref, foreign = sys.argv[1], load_file(sys.argv[2]), sys.argv[3]
steps = dict(actions=ref["actions"], timestamps=ref["timestamps"], num_future_steps={NUM_FUTURE_STEPS})
steps.update(num_inference_steps={NUM_INFERENCE_STEPS}, output_type="pt")

pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
pipe.set_progress_bar_config(disable=True)
assert type(pipe.engram).__name__ == "VeltrixEngramModel", type(pipe.engram)
assert not type(pipe.engram).__module__.startswith("modeling_veltrix"), type(pipe.engram).__module__
out = pipe(ref["frames"], generator=torch.Generator().manual_seed({SEED}), **steps)
assert torch.equal(out.frames, ref["expected"]), "DiffusionPipeline"
assert torch.equal(out.memory_hits, ref["memory_hits"]), "DiffusionPipeline memory_hits"
off = pipe(ref["frames"], generator=torch.Generator().manual_seed({SEED}), use_engram=False, **steps)
assert torch.equal(off.frames, ref["expected_without"]), "DiffusionPipeline use_engram=False"

engram = AutoModel.from_pretrained(os.path.join(folder, "engram"), trust_remote_code=True)
assert type(engram).__name__ == "VeltrixEngramModel", type(engram)
assert torch.equal(engram.table_states, pipe.engram.table_states), "AutoModel engram"

rollout = pipeline(model=folder, trust_remote_code=True)
rollout.model.pipeline.set_progress_bar_config(disable=True)
results = rollout(ref["frames"], seed={SEED}, **steps)
assert torch.equal(torch.stack([r["frames"] for r in results]), ref["expected"]), "pipeline()"
assert torch.equal(torch.stack([r["memory_hits"] for r in results]), ref["memory_hits"]), "pipeline() memory_hits"

try:
    DiffusionPipeline.from_pretrained(foreign, trust_remote_code=True)
except ValueError as error:
    assert "encoder_fingerprint" in str(error), error
else:
    raise AssertionError("a memory of another encoder was accepted")
print("remote code reproduces the memory")
"""


def test_loads_with_trust_remote_code_where_the_package_cannot_be_imported(saved, tmp_path):
    folder, reference_file = saved
    foreign = tmp_path / "foreign"
    shutil.copytree(folder, foreign)
    set_engram_config(foreign, encoder_fingerprint="0" * 16)
    result = run_without_package(REMOTE_ENGRAM_CHECK, [str(folder), str(reference_file), str(foreign)], str(tmp_path))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "remote code reproduces the memory" in result.stdout


def set_engram_config(folder, **settings) -> str:
    """Overwrites settings of `<folder>/engram/config.json` (keeping its save id); returns the file's path."""
    path = folder / "engram" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **settings}))
    return str(path)


# (engram settings, what the error names): shapes that do not fit the evolver, memories of other models.
INCOMPATIBLE = {
    "units": (dict(num_units_per_step=8), "num_units_per_step=8, but the evolver has num_units_per_step=16"),
    "layers": (dict(injection_layers=[2]), "injects into evolver layers [2], but the evolver has 2 layers"),
    "width": (dict(hidden_size=32), "hidden_size=32, but the evolver has hidden_size=16"),
    "encoder": (dict(encoder_fingerprint="0" * 16), "`engram.encoder_fingerprint` is '0000000000000000'"),
    "evolver": (dict(evolver_fingerprint="1" * 16), "`engram.evolver_fingerprint` is '1111111111111111'"),
}


@pytest.mark.parametrize("case", sorted(INCOMPATIBLE))
def test_incompatible_memory_is_refused_on_construction(plain, case):
    settings, message = INCOMPATIBLE[case]
    engram = filled_engram(plain, **{k: v for k, v in settings.items() if not k.endswith("fingerprint")})
    for key, value in settings.items():
        if key.endswith("fingerprint"):
            setattr(engram.config, key, value)
    with pytest.raises(ValueError, match=re.escape(message)):
        with_engram(plain, engram)
    with pytest.raises(ValueError, match="`engram` must be None or a VeltrixEngramModel, got Linear"):
        with_engram(plain, torch.nn.Linear(2, 2))


@pytest.mark.parametrize("loader", ["VeltrixPipeline", "pipeline()"])
@pytest.mark.parametrize("case", sorted(INCOMPATIBLE))
def test_incompatible_memory_is_refused_on_load(saved, plain, tmp_path, case, loader):
    settings, message = INCOMPATIBLE[case]
    folder = tmp_path / "pipeline"
    shutil.copytree(saved[0], folder)
    fingerprints = {k: v for k, v in settings.items() if k.endswith("fingerprint")}
    if fingerprints:
        path = set_engram_config(folder, **fingerprints)
    else:  # a memory of another shape, saved into the folder
        filled_engram(plain, **settings).save_pretrained(folder / "engram")
        path = str(folder / "engram" / "config.json")
    with pytest.raises(VeltrixRepositoryError, match=re.escape(message)) as caught:
        if loader == "VeltrixPipeline":
            VeltrixPipeline.from_pretrained(folder)
        else:
            pipeline("world-rollout", model=str(folder))
    assert path in str(caught.value)


@pytest.mark.parametrize("loader", ["VeltrixPipeline", "pipeline()", "AutoModel"])
def test_truncated_memory_weights_are_named(saved, tmp_path, loader):
    folder = tmp_path / "pipeline"
    shutil.copytree(saved[0], folder)
    path = folder / "engram" / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(VeltrixRepositoryError, match=re.escape(f"{path} is truncated")):
        if loader == "VeltrixPipeline":
            VeltrixPipeline.from_pretrained(folder)
        elif loader == "pipeline()":
            pipeline("world-rollout", model=str(folder))
        else:
            AutoModel.from_pretrained(folder / "engram")


@pytest.mark.parametrize("loader", ["VeltrixPipeline", "AutoModel"])
def test_code_count_disagreeing_with_the_saved_tables_is_named(saved, tmp_path, loader):
    folder = tmp_path / "pipeline"
    shutil.copytree(saved[0], folder)
    set_engram_config(folder, fsq_levels=[3, 3, 3])  # one more quantized dimension than the saved projections
    with pytest.raises(VeltrixRepositoryError, match=r"wrong shape: .*quantizer\.project_in\.weight") as caught:
        if loader == "VeltrixPipeline":
            VeltrixPipeline.from_pretrained(folder)
        else:
            AutoModel.from_pretrained(folder / "engram")
    assert str(folder / "engram" / "model.safetensors") in str(caught.value)
